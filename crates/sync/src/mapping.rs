//! What the rules do not say: scoping of system objects, the computed
//! inbound attributes (userPrincipalName for LDAP, accountEnabled, the
//! DN-derived ones, references), projection, and the outbound resource built
//! from the outbound rules plus the structural parts (schemas, sourceAnchor,
//! references); and the minimal PATCH between two resources.

use std::collections::HashSet;

use directory::{Dn, Entry, ObjectKind, Sid, Value};
use serde_json::{Map, Value as Json, json};

use crate::rules::{Origin, RuleSet};
use crate::source::SourceObject;

/// What kind of directory an object came from; picks the inbound table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    ActiveDirectory,
    Ldap,
}

/// What inbound sync makes of one connector-space object.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    pub kind: ObjectKind,
    /// The immutableId.
    pub anchor: String,
    pub attrs: Map<String, Json>,
    /// The precedence of the rule behind each attribute (see
    /// [`crate::rules::Precedences`]): how it fares against another source's
    /// value for the same metaverse object.
    pub precedence: crate::rules::Precedences,
    /// DN-valued references, resolved to metaverse objects by the engine.
    pub manager: Option<Dn>,
    pub members: Vec<Dn>,
}

impl Projection {
    /// The normalized on-premises DN the projection came from (empty when
    /// it has none): what stores index metaverse objects by.
    pub fn source_dn_normalized(&self) -> String {
        self.attrs
            .get("onPremisesDistinguishedName")
            .and_then(Json::as_str)
            .and_then(|d| Dn::parse(d).ok())
            .map(|d| d.normalized())
            .unwrap_or_default()
    }
}

/// Why an object is not synchronised (scoping); `None` when it is in scope.
pub fn out_of_scope(flavor: Flavor, obj: &SourceObject) -> Option<&'static str> {
    let e = &obj.entry;
    if !matches!(obj.kind, ObjectKind::User | ObjectKind::Group | ObjectKind::Contact) {
        return Some("not a user, group or contact");
    }
    if e.first_text("isCriticalSystemObject").is_some_and(|v| v.eq_ignore_ascii_case("TRUE")) {
        return Some("critical system object");
    }
    // Its original is the cloud's group: importing it would make a second copy.
    if obj.kind == ObjectKind::Group && directory::cloud_group::written_back_from(e).is_some() {
        return Some("a group written back from the cloud");
    }
    if flavor == Flavor::ActiveDirectory
        && e.dn.rdns().iter().any(|r| r.value_of("CN").is_some_and(|v| v.eq_ignore_ascii_case("Builtin")))
    {
        return Some("built-in container");
    }
    if obj.kind == ObjectKind::User && flavor == Flavor::ActiveDirectory && user_name(flavor, e, "").is_none() {
        return Some("user without userPrincipalName");
    }
    None
}

/// The DNS domain of a DN's `dc=` parts.
pub fn dns_domain(dn: &Dn) -> Option<String> {
    let parts: Vec<&str> = dn.rdns().iter().filter_map(|r| r.value_of("dc")).collect();
    if parts.is_empty() { None } else { Some(parts.join(".").to_ascii_lowercase()) }
}

/// The sign-in name: AD's userPrincipalName; elsewhere mail, else uid@domain.
fn user_name(flavor: Flavor, e: &Entry, domain: &str) -> Option<String> {
    match flavor {
        Flavor::ActiveDirectory => e.first_text("userPrincipalName").map(str::to_string),
        Flavor::Ldap => e
            .first_text("mail")
            .map(str::to_string)
            .or_else(|| e.first_text("uid").filter(|_| !domain.is_empty()).map(|u| format!("{u}@{domain}"))),
    }
}

/// Why a joined object's value for an attribute was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinedWin {
    /// Its source is authoritative for the attribute (`[source.join] authoritative`).
    Authoritative,
    /// The rule that gave it has a lower precedence than what gave the value before.
    Precedence { joined: i32, before: Option<i32> },
    /// Nothing gave the attribute a value before.
    Gap,
}

/// Merges one joined object's contribution into a metaverse object's
/// attributes, per attribute: an authoritative source's value is taken; a
/// value is taken where there was none (unless a rule of lower precedence
/// settled the attribute empty with `AuthoritativeNull`); over an existing
/// value, the value whose rule has the lower precedence wins — on a tie,
/// or against a value the engine computed itself, the value already there
/// stays. `precedence` follows what was taken, so several joined objects
/// compete the same way. Returns what was taken and why.
pub fn merge_joined(
    attrs: &mut Map<String, Json>,
    precedence: &mut crate::rules::Precedences,
    joined: Map<String, Json>,
    joined_precedence: &crate::rules::Precedences,
    authoritative: &[String],
) -> Vec<(String, JoinedWin)> {
    let mut taken = Vec::new();
    for (k, v) in joined {
        let theirs = joined_precedence.get(&k).copied();
        let ours = precedence.get(&k).copied();
        let lower = |a: Option<i32>, b: Option<i32>| match (a, b) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let win = if authoritative.contains(&k) {
            Some(JoinedWin::Authoritative)
        } else if !attrs.contains_key(&k) {
            match ours {
                // Settled empty by AuthoritativeNull: only a lower precedence overrides it.
                Some(before) if !lower(theirs, Some(before)) => None,
                Some(before) => theirs.map(|joined| JoinedWin::Precedence { joined, before: Some(before) }),
                None => Some(JoinedWin::Gap),
            }
        } else if lower(theirs, ours) {
            theirs.map(|joined| JoinedWin::Precedence { joined, before: ours })
        } else {
            None
        };
        if let Some(win) = win {
            match win {
                JoinedWin::Authoritative => precedence.insert(k.clone(), i32::MIN),
                _ => match theirs {
                    Some(p) => precedence.insert(k.clone(), p),
                    None => precedence.remove(&k),
                },
            };
            attrs.insert(k.clone(), v);
            taken.push((k, win));
        }
    }
    taken
}

/// Inbound sync of one in-scope object of the source named `source`.
pub fn project(flavor: Flavor, source: &str, obj: &SourceObject, rules: &RuleSet) -> Projection {
    project_noting(flavor, source, obj, rules, None)
}

/// Inbound sync, with the origin of each metaverse attribute:
/// (metaverse attribute, source attribute or rule).
pub fn project_explained(
    flavor: Flavor,
    source: &str,
    obj: &SourceObject,
    rules: &RuleSet,
) -> (Projection, Vec<Origin>) {
    let mut origin = Vec::new();
    let projection = project_noting(flavor, source, obj, rules, Some(&mut origin));
    (projection, origin)
}

/// Notes an origin when they are being recorded (built only then).
fn note(origin: &mut Option<&mut Vec<Origin>>, make: impl FnOnce() -> Origin) {
    if let Some(origin) = origin.as_deref_mut() {
        origin.push(make());
    }
}

fn project_noting(
    flavor: Flavor,
    source: &str,
    obj: &SourceObject,
    rules: &RuleSet,
    mut origin: Option<&mut Vec<Origin>>,
) -> Projection {
    let e = &obj.entry;
    let mut attrs = Map::new();
    let mut precedence = crate::rules::Precedences::new();
    let object = crate::rules::InboundObject { kind: obj.kind, flavor, source, entry: e };
    let domain = dns_domain(&e.dn).unwrap_or_default();
    match obj.kind {
        ObjectKind::User => {
            rules.apply(object, &mut attrs, &mut precedence, origin.as_deref_mut());
            if flavor == Flavor::Ldap
                && !attrs.contains_key("userPrincipalName")
                && let Some(u) = user_name(flavor, e, &domain)
            {
                attrs.insert("userPrincipalName".into(), json!(u));
                let rule = if e.has("mail") { "mail (built in)" } else { "uid + \"@\" + the DN's domain (built in)" };
                note(&mut origin, || Origin::built_in("userPrincipalName", rule));
            }
            let enabled = match flavor {
                // userAccountControl bit 2: ACCOUNTDISABLE.
                Flavor::ActiveDirectory => {
                    e.first_text("userAccountControl").and_then(|v| v.parse::<i64>().ok()).is_none_or(|u| u & 2 == 0)
                }
                // ppolicy's permanent lock, or the sample data's marker.
                Flavor::Ldap => {
                    !e.has("pwdAccountLockedTime")
                        && !e.first_text("employeeType").is_some_and(|t| t.eq_ignore_ascii_case("disabled"))
                }
            };
            attrs.insert("accountEnabled".into(), json!(enabled));
            note(&mut origin, || {
                Origin::built_in(
                    "accountEnabled",
                    match flavor {
                        Flavor::ActiveDirectory => "userAccountControl (bit 2, ACCOUNTDISABLE, clear)",
                        Flavor::Ldap => "not pwdAccountLockedTime, not employeeType=disabled",
                    },
                )
            });
        }
        _ => rules.apply(object, &mut attrs, &mut precedence, origin.as_deref_mut()),
    }
    attrs.insert("onPremisesDistinguishedName".into(), json!(e.dn.to_string()));
    note(&mut origin, || Origin::built_in("onPremisesDistinguishedName", "the object's DN"));
    if !domain.is_empty() {
        attrs.insert("onPremisesDomainName".into(), json!(domain));
        note(&mut origin, || Origin::built_in("onPremisesDomainName", "the DN's dc= parts"));
    }
    if let Some(sid) = e.first_bytes("objectSid").and_then(|b| Sid::from_bytes(b).ok()) {
        attrs.insert("onPremisesSecurityIdentifier".into(), json!(sid.to_string()));
        note(&mut origin, || Origin::built_in("onPremisesSecurityIdentifier", "objectSid"));
    }
    let manager = e.first_text("manager").and_then(|m| Dn::parse(m).ok());
    let members = if obj.kind == ObjectKind::Group {
        MEMBER_ATTRIBUTES
            .iter()
            .flat_map(|a| e.values(a))
            .filter_map(Value::as_text)
            .filter_map(|m| Dn::parse(m).ok())
            .collect()
    } else {
        Vec::new()
    };
    Projection { kind: obj.kind, anchor: obj.anchor.immutable_id(), attrs, precedence, manager, members }
}

/// PATCH operations adding and removing members (tenant ids): one add
/// with every new member, one remove per member gone.
pub fn member_operations<S: AsRef<str>>(added: &[S], removed: &[S]) -> Vec<Json> {
    let mut ops = Vec::with_capacity(removed.len() + 1);
    if !added.is_empty() {
        let values: Vec<Json> = added.iter().map(|m| json!({"value": m.as_ref()})).collect();
        ops.push(json!({"op": "add", "path": "members", "value": values}));
    }
    for m in removed {
        ops.push(json!({"op": "remove", "path": format!("members[value eq \"{}\"]", m.as_ref())}));
    }
    ops
}

/// The source attributes a group's members come from.
pub const MEMBER_ATTRIBUTES: [&str; 2] = ["member", "uniqueMember"];

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const CONTACT_SCHEMA: &str = "urn:idbridge:params:scim:schemas:core:2.0:Contact";
pub const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const HYBRID_SCHEMA: &str = "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object";

/// A metaverse object as the outbound mapping sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MvView<'a> {
    pub kind: ObjectKind,
    pub anchor: &'a str,
    pub attrs: &'a Map<String, Json>,
}

/// Outbound sync: the tenant resource a metaverse object should be.
/// `manager` and `members` are tenant ids, already resolved.
pub fn desired_resource(mv: &MvView<'_>, manager: Option<&str>, members: &[String], rules: &RuleSet) -> Json {
    desired_resource_noting(mv, manager, members, rules, None)
}

/// The values of a tenant resource the tenant keeps unique (lower case;
/// see [`proto::unique`]).
pub fn unique_keys(kind: ObjectKind, resource: &Json) -> Vec<String> {
    let user_name = if kind == ObjectKind::User { resource.get("userName").and_then(Json::as_str) } else { None };
    let proxies = resource
        .get(HYBRID_SCHEMA)
        .and_then(|h| h.get("proxyAddresses"))
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect::<Vec<_>>())
        .unwrap_or_default();
    proto::unique::claims(user_name, proxies).into_iter().map(|c| c.key).collect()
}

/// The outbound flow targets of `rules` that may give a value
/// [`unique_keys`] reads (a `userName` or a `proxyAddresses`, in whatever
/// schema or case: taking one too many costs a flow, never a key).
pub fn unique_key_targets(rules: &RuleSet) -> HashSet<String> {
    rules
        .rules()
        .iter()
        .filter(|rule| rule.direction == crate::rules::Direction::Outbound)
        .flat_map(|rule| &rule.flows)
        .filter(|flow| {
            let parsed;
            let path = match rules.outbound_path(&flow.target) {
                Some(path) => Some(path),
                None => {
                    parsed = crate::outbound::ScimPath::parse(&flow.target).ok();
                    parsed.as_ref()
                }
            };
            path.is_some_and(|p| {
                p.attribute.eq_ignore_ascii_case("userName") || p.attribute.eq_ignore_ascii_case("proxyAddresses")
            })
        })
        .map(|flow| flow.target.clone())
        .collect()
}

/// `unique_keys(kind, &desired_resource(mv, ..))`, from the flows to
/// `targets` ([`unique_key_targets`]) alone: what ordering an export's
/// contested values needs of every object, without building the rest of
/// its resource. References never give a unique value, so none are needed.
pub fn desired_unique_keys(mv: &MvView<'_>, rules: &RuleSet, targets: &HashSet<String>) -> Vec<String> {
    let mut flows = Map::new();
    rules.apply_outbound_to(mv.kind, mv.attrs, &|target| targets.contains(target), &mut flows, None);
    let mut out = Map::new();
    set_flows(rules, flows, &mut out);
    unique_keys(mv.kind, &Json::Object(out))
}

/// Writes each outbound flow's value at its SCIM path (a target that is no
/// path was refused when the rules loaded, and is left out here).
fn set_flows(rules: &RuleSet, flows: Map<String, Json>, out: &mut Map<String, Json>) {
    for (target, value) in flows {
        match rules.outbound_path(&target) {
            Some(path) => path.set(out, value),
            None => {
                if let Ok(path) = crate::outbound::ScimPath::parse(&target) {
                    path.set(out, value);
                }
            }
        }
    }
}

/// Outbound sync, with the origin of each tenant attribute: (SCIM path,
/// metaverse attribute or rule). The outbound rules give the attributes;
/// the schemas, the sourceAnchor, references and `dirSyncEnabled` are built in.
pub fn desired_resource_explained(
    mv: &MvView<'_>,
    manager: Option<&str>,
    members: &[String],
    rules: &RuleSet,
) -> (Json, Vec<Origin>) {
    let mut origin = Vec::new();
    let resource = desired_resource_noting(mv, manager, members, rules, Some(&mut origin));
    (resource, origin)
}

fn desired_resource_noting(
    mv: &MvView<'_>,
    manager: Option<&str>,
    members: &[String],
    rules: &RuleSet,
    mut origin: Option<&mut Vec<Origin>>,
) -> Json {
    let mut flows = Map::new();
    rules.apply_outbound(mv.kind, mv.attrs, &mut flows, origin.as_deref_mut());
    let mut out = Map::new();
    let schemas = match mv.kind {
        ObjectKind::User => json!([USER_SCHEMA, ENTERPRISE_SCHEMA, HYBRID_SCHEMA]),
        ObjectKind::Group => json!([GROUP_SCHEMA, HYBRID_SCHEMA]),
        _ => json!([CONTACT_SCHEMA, HYBRID_SCHEMA]),
    };
    out.insert("schemas".into(), schemas);
    out.insert("externalId".into(), json!(mv.anchor));
    note(&mut origin, || Origin::built_in("externalId", "the sourceAnchor (built in)"));
    set_flows(rules, flows, &mut out);
    // Elements that got only a type (a constant `primary` without a value) are dropped.
    for list in out.values_mut().filter_map(Json::as_array_mut) {
        list.retain(|item| item.as_object().is_none_or(|o| o.keys().any(|k| k != "type" && k != "primary")));
    }
    out.retain(|_, v| !matches!(v, Json::Array(a) if a.is_empty()));
    if mv.kind != ObjectKind::User && !out.contains_key("displayName") {
        // SCIM groups need a display name.
        out.insert("displayName".into(), json!(mv.anchor));
        note(&mut origin, || Origin::built_in("displayName", "the sourceAnchor, for want of a name (built in)"));
    }
    let hybrid = out.entry(HYBRID_SCHEMA.to_string()).or_insert_with(|| json!({}));
    if let Some(h) = hybrid.as_object_mut() {
        h.insert("immutableId".into(), json!(mv.anchor));
        h.insert("dirSyncEnabled".into(), json!(true));
    }
    note(&mut origin, || Origin::built_in("hybrid:immutableId", "the sourceAnchor (built in)"));
    match mv.kind {
        ObjectKind::User => {
            if let Some(m) = manager {
                let ent = out.entry(ENTERPRISE_SCHEMA.to_string()).or_insert_with(|| json!({}));
                if let Some(e) = ent.as_object_mut() {
                    e.insert("manager".into(), json!({"value": m}));
                }
                note(&mut origin, || {
                    Origin::built_in("enterprise:manager", "manager (DN → that object's tenant id, built in)")
                });
            }
        }
        ObjectKind::Group => {
            let mut sorted: Vec<&String> = members.iter().collect();
            sorted.sort();
            sorted.dedup();
            if !sorted.is_empty() {
                out.insert("members".into(), Json::Array(sorted.into_iter().map(|m| json!({"value": m})).collect()));
                note(&mut origin, || Origin::built_in("members", "member (DNs → tenant ids, built in)"));
            }
        }
        _ => {}
    }
    Json::Object(out)
}

/// The SCIM PATCH operations that turn `exported` into `desired`: replace or
/// remove per attribute (extension attributes by their URN path), and group
/// members as deltas — never the whole member list.
pub fn patch_operations(exported: &Json, desired: &Json) -> Vec<Json> {
    let empty = Map::new();
    let old = exported.as_object().unwrap_or(&empty);
    let new = desired.as_object().unwrap_or(&empty);
    let mut ops = Vec::new();
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        if key == "schemas" {
            continue;
        }
        let (o, n) = (old.get(key), new.get(key));
        if o == n {
            continue;
        }
        if key == "members" {
            let ids = |v: Option<&Json>| -> Vec<String> {
                v.and_then(Json::as_array)
                    .map(|a| a.iter().filter_map(|m| m["value"].as_str().map(str::to_string)).collect())
                    .unwrap_or_default()
            };
            let (was, now) = (ids(o), ids(n));
            // Sets: a group may have hundreds of thousands of members.
            let (was_set, now_set): (HashSet<&String>, HashSet<&String>) = (was.iter().collect(), now.iter().collect());
            let added: Vec<&String> = now.iter().filter(|m| !was_set.contains(m)).collect();
            let removed: Vec<&String> = was.iter().filter(|m| !now_set.contains(m)).collect();
            ops.extend(member_operations(&added, &removed));
            continue;
        }
        let is_extension = key.starts_with("urn:");
        if is_extension {
            let (om, nm) =
                (o.and_then(Json::as_object).unwrap_or(&empty), n.and_then(Json::as_object).unwrap_or(&empty));
            let mut sub: Vec<&String> = om.keys().chain(nm.keys()).collect();
            sub.sort();
            sub.dedup();
            for k in sub {
                match (om.get(k), nm.get(k)) {
                    (a, b) if a == b => {}
                    (_, Some(v)) => ops.push(json!({"op": "replace", "path": format!("{key}:{k}"), "value": v})),
                    (Some(_), None) => ops.push(json!({"op": "remove", "path": format!("{key}:{k}")})),
                    (None, None) => {}
                }
            }
            continue;
        }
        match n {
            Some(v) => ops.push(json!({"op": "replace", "path": key, "value": v})),
            None => ops.push(json!({"op": "remove", "path": key})),
        }
    }
    ops
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_joined_value_wins_by_authority_gap_or_lower_precedence_and_ties_stay() {
        use crate::rules::Precedences;
        let projected = json!({"jobTitle": "Clerk", "department": "Sales", "userPrincipalName": "a@x", "mobile": null});
        let mut attrs: Map<String, Json> = projected.as_object().unwrap().clone();
        attrs.remove("mobile");
        let mut precedence: Precedences =
            [("jobTitle".to_string(), 200), ("department".to_string(), 200), ("mobile".to_string(), 60)].into();
        let joined: Map<String, Json> = json!({
            "jobTitle": "Novelist", "department": "Letters", "userPrincipalName": "b@x",
            "mobile": "+44", "city": "Bath", "mail": "jane@x"
        })
        .as_object()
        .unwrap()
        .clone();
        let theirs: Precedences = [
            ("jobTitle".to_string(), 50),
            ("department".to_string(), 200),
            ("userPrincipalName".to_string(), 100),
            ("mobile".to_string(), 70),
            ("city".to_string(), 200),
        ]
        .into();
        let mut taken = merge_joined(&mut attrs, &mut precedence, joined, &theirs, &["mail".to_string()]);
        taken.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            taken,
            vec![
                ("city".to_string(), JoinedWin::Gap),
                ("jobTitle".to_string(), JoinedWin::Precedence { joined: 50, before: Some(200) }),
                ("mail".to_string(), JoinedWin::Authoritative),
                ("userPrincipalName".to_string(), JoinedWin::Precedence { joined: 100, before: None }),
            ]
        );
        assert_eq!(
            (&attrs["department"], attrs.get("mobile")),
            (&json!("Sales"), None),
            "a tie stays; AuthoritativeNull at 60 holds"
        );
        // A second joined object competes with what the first left.
        let second: Map<String, Json> = json!({"jobTitle": "Poet"}).as_object().unwrap().clone();
        let tie: Precedences = [("jobTitle".to_string(), 50)].into();
        assert!(merge_joined(&mut attrs, &mut precedence, second, &tie, &[]).is_empty());
        assert_eq!(attrs["jobTitle"], "Novelist");
    }

    use super::*;
    use directory::Anchor;

    use crate::source::SourceId;

    fn obj(kind: ObjectKind, dn: &str, attrs: &[(&str, &str)]) -> SourceObject {
        let mut e = Entry::new(Dn::parse(dn).unwrap());
        for (k, v) in attrs {
            e.add(k, *v);
        }
        SourceObject { id: SourceId(vec![1]), anchor: Anchor(vec![1, 2, 3]), kind, entry: e }
    }

    #[test]
    fn ad_user_projects_and_maps() {
        let u = obj(
            ObjectKind::User,
            "CN=Jürgen,OU=Staff,DC=corp,DC=example,DC=com",
            &[
                ("userPrincipalName", "j@corp.example.com"),
                ("givenName", "Jürgen"),
                ("sn", "M"),
                ("userAccountControl", "514"),
                ("sAMAccountName", "jm"),
                ("manager", "CN=Boss,DC=corp,DC=example,DC=com"),
                ("proxyAddresses", "SMTP:j@corp.example.com"),
            ],
        );
        assert_eq!(out_of_scope(Flavor::ActiveDirectory, &u), None);
        let p = project(Flavor::ActiveDirectory, "ad", &u, &RuleSet::default());
        assert_eq!(p.attrs["accountEnabled"], false);
        assert_eq!(p.attrs["onPremisesDomainName"], "corp.example.com");
        assert_eq!(p.manager.map(|m| m.to_string()), Some("CN=Boss,DC=corp,DC=example,DC=com".into()));
        let r = desired_resource(
            &MvView { kind: p.kind, anchor: &p.anchor, attrs: &p.attrs },
            Some("t-boss"),
            &[],
            &RuleSet::default(),
        );
        assert_eq!(r["userName"], "j@corp.example.com");
        assert_eq!(r["active"], false);
        assert_eq!(r["externalId"], "AQID");
        assert_eq!(r[ENTERPRISE_SCHEMA]["manager"]["value"], "t-boss");
        assert_eq!(r[HYBRID_SCHEMA]["proxyAddresses"][0], "SMTP:j@corp.example.com");
        let critical = obj(
            ObjectKind::User,
            "CN=krbtgt,CN=Users,DC=x",
            &[("isCriticalSystemObject", "TRUE"), ("userPrincipalName", "k@x")],
        );
        assert_eq!(out_of_scope(Flavor::ActiveDirectory, &critical), Some("critical system object"));
    }

    #[test]
    fn outbound_rules_build_the_resource_and_can_be_overridden() {
        let u = obj(
            ObjectKind::User,
            "uid=ann,ou=people,dc=example,dc=org",
            &[
                ("uid", "ann"),
                ("cn", "Ann"),
                ("mail", "ann@example.org"),
                ("telephoneNumber", "+49 1"),
                ("mobile", "+49 2"),
                ("l", "Berlin"),
                ("title", "Engineer"),
                ("departmentNumber", "R&D"),
            ],
        );
        let p = project(Flavor::Ldap, "lab", &u, &RuleSet::default());
        let view = MvView { kind: p.kind, anchor: &p.anchor, attrs: &p.attrs };
        let r = desired_resource(&view, None, &[], &RuleSet::default());
        assert_eq!(r["emails"], json!([{"type": "work", "value": "ann@example.org", "primary": true}]));
        // Elements come in the order of their target paths (deterministic, so no spurious PATCH).
        assert_eq!(
            r["phoneNumbers"],
            json!([{"type": "mobile", "value": "+49 2"}, {"type": "work", "value": "+49 1"}])
        );
        assert_eq!(r["addresses"], json!([{"type": "work", "locality": "Berlin"}]));
        assert_eq!(r["active"], true);
        assert_eq!(r["title"], "Engineer");
        assert_eq!(r[ENTERPRISE_SCHEMA]["department"], "R&D");
        assert_eq!(r[HYBRID_SCHEMA]["immutableId"], "AQID");
        assert_eq!(r[HYBRID_SCHEMA]["dirSyncEnabled"], true);
        // No mail: the constant `primary` alone does not make an email.
        let mut no_mail = p.attrs.clone();
        no_mail.remove("mail");
        let bare = desired_resource(&MvView { attrs: &no_mail, ..view.clone() }, None, &[], &RuleSet::default());
        assert!(bare.get("emails").is_none(), "{bare}");

        // A rule file: the title is built from the department; a lower precedence number wins.
        let custom = RuleSet::load(&[(
            "site.toml".into(),
            r#"
[[rule]]
name = "site-title"
direction = "outbound"
objects = ["user"]
precedence = 50
flows = [{ target = "title", expression = "[jobTitle] & \" (\" & [department] & \")\"" }]
"#
            .into(),
        )])
        .unwrap();
        let (r, origin) = desired_resource_explained(&view, None, &[], &custom);
        assert_eq!(r["title"], "Engineer (R&D)");
        assert!(origin.iter().any(|o| o.attribute == "title" && o.to_string().contains("site-title")), "{origin:?}");

        for (bad, says) in [
            ("flows = [{ target = \"externalId\", source = [\"mail\"] }]", "set by the engine"),
            ("flows = [{ target = \"emails[value eq \\\"x\\\"].value\", source = [\"mail\"] }]", "type eq"),
            ("flavor = \"ldap\"\nflows = []", "flavor applies to inbound"),
        ] {
            let text = format!("[[rule]]\nname = \"bad\"\ndirection = \"outbound\"\nobjects = [\"user\"]\n{bad}\n");
            let err = RuleSet::load(&[("bad.toml".into(), text)]).unwrap_err().to_string();
            assert!(err.contains("bad.toml") && err.contains("rule \"bad\"") && err.contains(says), "{err}");
        }
    }

    #[test]
    fn unique_keys_from_their_flows_alone_are_those_of_the_whole_resource() {
        // Rules that give userName and proxyAddresses in every way a rule
        // can: a scoped rule of higher precedence, an expression, a merge
        // with the built-in flow, AuthoritativeNull, the schema's full URN.
        let custom = RuleSet::load(&[(
            "unique.toml".into(),
            format!(
                r#"
[[rule]]
name = "sales-user-name"
direction = "outbound"
objects = ["user"]
scope = "(department=Sales)"
precedence = 10
flows = [{{ target = "userName", expression = "LCase([mailNickname]) & \"@sales.example.org\"" }}]

[[rule]]
name = "contractors-keep-no-address"
direction = "outbound"
objects = ["user"]
precedence = 5
flows = [{{ target = "hybrid:proxyAddresses", expression = "IIF([employeeType] = \"contractor\", AuthoritativeNull, IgnoreThisFlow)" }}]

[[rule]]
name = "team-address"
direction = "outbound"
objects = ["user", "group"]
precedence = 20
flows = [
  {{ target = "{HYBRID_SCHEMA}:proxyAddresses", expression = "IIF([department] = \"Sales\", \"smtp:Team@Example.org\", IgnoreThisFlow)", merge = "merge-case-insensitive" }},
  {{ target = "title", constant = "Seller" }},
]
"#
            ),
        )])
        .unwrap();
        let targets = unique_key_targets(&custom);
        for wanted in ["userName", "hybrid:proxyAddresses", &format!("{HYBRID_SCHEMA}:proxyAddresses")] {
            assert!(targets.contains(wanted), "{wanted} in {targets:?}");
        }
        assert!(!targets.contains("title") && !targets.contains("displayName"), "{targets:?}");
        let objects = [
            (
                ObjectKind::User,
                json!({"userPrincipalName": "Ann@Example.org", "mailNickname": "Ann", "department": "Sales",
                "proxyAddresses": ["SMTP:Ann@Example.org", "smtp:ä@example.org", "x500:/o=x"]}),
            ),
            (
                ObjectKind::User,
                json!({"userPrincipalName": "bo@example.org", "mailNickname": "Bo", "department": "Legal",
                "proxyAddresses": ["SMTP:Bo@example.org"]}),
            ),
            (
                ObjectKind::User,
                json!({"userPrincipalName": "cy@example.org", "mailNickname": "Cy", "department": "Sales", "employeeType": "contractor",
                "proxyAddresses": ["SMTP:Cy@example.org"]}),
            ),
            (ObjectKind::User, json!({"displayName": "Zoë, no name at all"})),
            (
                ObjectKind::Group,
                json!({"displayName": "Sales", "department": "Sales", "proxyAddresses": ["SMTP:Sales@example.org"]}),
            ),
        ];
        let mut seen = HashSet::new();
        for rules in [RuleSet::default(), custom] {
            let targets = unique_key_targets(&rules);
            for (kind, attrs) in &objects {
                let attrs = attrs.as_object().unwrap();
                let view = MvView { kind: *kind, anchor: "AQID", attrs };
                let whole = unique_keys(*kind, &desired_resource(&view, Some("mgr"), &["m1".into()], &rules));
                assert_eq!(desired_unique_keys(&view, &rules, &targets), whole, "{attrs:?}");
                if attrs.contains_key("employeeType") && targets.len() > 2 {
                    // AuthoritativeNull settled the contractor's own addresses empty.
                    assert_eq!(whole, ["cy@sales.example.org", "team@example.org"]);
                }
                seen.extend(whole);
            }
        }
        // The rules above did give keys of each kind.
        for key in
            ["ann@sales.example.org", "ann@example.org", "ä@example.org", "team@example.org", "sales@example.org"]
        {
            assert!(seen.contains(key), "{key} in {seen:?}");
        }
    }

    #[test]
    fn ldap_user_name_falls_back_to_uid_at_domain() {
        let u = obj(ObjectKind::User, "uid=ann,ou=people,dc=example,dc=org", &[("uid", "ann"), ("cn", "Ann")]);
        let p = project(Flavor::Ldap, "lab", &u, &RuleSet::default());
        assert_eq!(p.attrs["userPrincipalName"], "ann@example.org");
        assert_eq!(p.attrs["accountEnabled"], true);
    }

    #[test]
    fn diff_makes_minimal_patches_and_member_deltas() {
        let old = json!({"schemas": [], "displayName": "A", "title": "x", "members": [{"value": "1"}, {"value": "2"}], HYBRID_SCHEMA: {"immutableId": "i", "mailNickname": "a"}});
        let new = json!({"schemas": [], "displayName": "B", "members": [{"value": "2"}, {"value": "3"}], HYBRID_SCHEMA: {"immutableId": "i", "proxyAddresses": ["SMTP:b@x"]}});
        let ops = patch_operations(&old, &new);
        assert!(ops.contains(&json!({"op": "replace", "path": "displayName", "value": "B"})));
        assert!(ops.contains(&json!({"op": "remove", "path": "title"})));
        assert!(ops.contains(&json!({"op": "add", "path": "members", "value": [{"value": "3"}]})));
        assert!(ops.contains(&json!({"op": "remove", "path": "members[value eq \"1\"]"})));
        assert!(ops.contains(&json!({"op": "remove", "path": format!("{HYBRID_SCHEMA}:mailNickname")})));
        assert!(ops.contains(
            &json!({"op": "replace", "path": format!("{HYBRID_SCHEMA}:proxyAddresses"), "value": ["SMTP:b@x"]})
        ));
        assert_eq!(ops.len(), 6);
        assert!(patch_operations(&new, &new).is_empty());
    }
}
