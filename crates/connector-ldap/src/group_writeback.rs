//! Group writeback: the groups the cloud manages, kept in the directory.
//!
//! - A group created in the cloud lives in the source's writeback OU as an
//!   AD universal security group (`group`, `groupType`, `sAMAccountName`) or
//!   an OpenLDAP/389 `groupOfNames`, marked with its cloud id
//!   ([`directory::cloud_group`]) so the writer finds it again after a
//!   rename and the import leaves it out. A rename in the cloud renames it;
//!   a group gone from the cloud is deleted — only when the caller read the
//!   whole cloud list, and not more than the deletion limit at once.
//! - A synchronised group the cloud took over stays where it is; only its
//!   members and display name follow the cloud.
//! - Members are DNs the caller resolved (synchronised users and groups of
//!   this directory) or other written-back groups, by cloud id.
//!
//! Every write is one LDAP operation (add, modify, rename, delete), so a
//! process killed between two leaves each group either as it was or as it
//! should be; the next round compares again and finishes. A group whose
//! write the directory refuses is reported and the rest go on.

use std::collections::{HashMap, HashSet};

use directory::{Dn, Rdn, cloud_group};
use ldap3::{Mod, Scope};

use crate::connect::Session;
use crate::error::LdapError;
use crate::paged::PagedSearch;
use crate::settings::{LdapSettings, ServerKind};

/// AD's `groupType` for a universal security group (0x80000008).
const UNIVERSAL_SECURITY_GROUP: &str = "-2147483640";

/// AD's limit on `cn`.
const MAX_CN_CHARS: usize = 64;

/// `groupOfNames` needs a member: an empty group holds the empty DN.
const NO_MEMBER: &str = "";

const ENTRY_ALREADY_EXISTS: u32 = 68;
const NO_SUCH_OBJECT: u32 = 32;

/// One group as the cloud has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudGroup {
    pub cloud_id: String,
    pub name: String,
    pub members: Vec<Member>,
    pub place: Place,
}

/// A member to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// A synchronised object of this directory.
    Dn(Dn),
    /// Another group written back, by its cloud id.
    CloudGroup(String),
}

/// Where a group lives on-premises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Created in the cloud: in the writeback OU, found by its mark.
    WritebackOu,
    /// A synchronised group the cloud took over: where it always was.
    At(Dn),
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WritebackReport {
    pub created: usize,
    pub updated: usize,
    pub renamed: usize,
    pub deleted: usize,
    pub unchanged: usize,
    /// Deletions not made because there were more than the limit.
    pub deletions_held: usize,
    /// Groups the directory refused, with why.
    pub failures: Vec<(String, String)>,
}

/// One round's request.
#[derive(Debug, Clone, Copy)]
pub struct Round<'a> {
    pub groups_ou: &'a Dn,
    pub groups: &'a [CloudGroup],
    /// The caller read the whole cloud list: marked groups not in it are
    /// gone from the cloud and may be deleted.
    pub complete: bool,
    /// At most this many deletions in one round; more are held.
    pub deletion_limit: usize,
}

/// A group found in the directory.
#[derive(Debug, Clone)]
struct Found {
    dn: Dn,
    members: Vec<String>,
    display_name: Option<String>,
}

/// Brings the directory's written-back groups to what `round` says.
pub async fn write_groups(settings: &LdapSettings, round: Round<'_>) -> Result<WritebackReport, LdapError> {
    let session = crate::connect::connect(settings).await?;
    let kind = settings.server_kind.unwrap_or_else(|| session.root_dse.kind());
    let ad = kind == ServerKind::ActiveDirectory;
    let mut report = WritebackReport::default();
    let mut written = match find_marked(&session, settings, round.groups_ou, ad).await {
        Err(LdapError::Search { code: NO_SUCH_OBJECT, url, base, .. }) => {
            return Err(LdapError::Settings(format!(
                "the writeback OU {base} does not exist on {url}: create it, or correct [source.writeback] groups_ou"
            )));
        }
        other => other?,
    };

    // Pass 1: each cloud-created group exists under its current name.
    let mut dn_of: HashMap<&str, Dn> = HashMap::new();
    let mut created: HashSet<&str> = HashSet::new();
    for group in round.groups.iter().filter(|g| g.place == Place::WritebackOu) {
        let wanted = round.groups_ou.child(Rdn::single("CN", cn_of(group)));
        match written.get(group.cloud_id.as_str()) {
            Some(found) if found.dn.rdn() == wanted.rdn() => {
                dn_of.insert(&group.cloud_id, found.dn.clone());
            }
            Some(found) => match rename(&session, &found.dn, &wanted).await? {
                Ok(()) => {
                    report.renamed += 1;
                    dn_of.insert(&group.cloud_id, wanted);
                }
                Err(message) => {
                    report.failures.push((group.name.clone(), message));
                    dn_of.insert(&group.cloud_id, found.dn.clone());
                }
            },
            None => match create(&session, ad, group, &wanted).await? {
                Ok(()) => {
                    report.created += 1;
                    written.insert(
                        group.cloud_id.clone(),
                        Found {
                            dn: wanted.clone(),
                            members: if ad { Vec::new() } else { vec![NO_MEMBER.to_string()] },
                            display_name: ad.then(|| group.name.clone()),
                        },
                    );
                    dn_of.insert(&group.cloud_id, wanted);
                    created.insert(group.cloud_id.as_str());
                }
                Err(message) => report.failures.push((group.name.clone(), message)),
            },
        }
    }

    // Pass 2: members and display name of every group (one
    // created in pass 1 gets its members now and counts as created).
    for group in round.groups {
        let new = created.contains(group.cloud_id.as_str());
        let (dn, found) = match &group.place {
            Place::WritebackOu => {
                let Some(dn) = dn_of.get(group.cloud_id.as_str()) else { continue };
                let Some(found) = written.get(group.cloud_id.as_str()) else { continue };
                (dn.clone(), found.clone())
            }
            Place::At(dn) => match read_group(&session, &dn.to_string()).await? {
                Some(found) => (dn.clone(), found),
                None => {
                    report.failures.push((
                        group.name.clone(),
                        format!("the on-premises group {dn} is gone; hand the group back or delete it in the cloud"),
                    ));
                    continue;
                }
            },
        };
        let members: Vec<String> = group
            .members
            .iter()
            .filter_map(|m| match m {
                Member::Dn(dn) => Some(dn.to_string()),
                Member::CloudGroup(id) => dn_of.get(id.as_str()).map(Dn::to_string),
            })
            .collect();
        let mods = changes(ad, group, &found, &members);
        if mods.is_empty() {
            report.unchanged += usize::from(!new);
            continue;
        }
        match modify(&session, &dn, mods).await? {
            Ok(()) => report.updated += usize::from(!new),
            Err(message) => report.failures.push((group.name.clone(), message)),
        }
    }

    // Pass 3: groups gone from the cloud.
    if round.complete {
        let wanted: HashSet<&str> =
            round.groups.iter().filter(|g| g.place == Place::WritebackOu).map(|g| g.cloud_id.as_str()).collect();
        let gone: Vec<&Found> =
            written.iter().filter(|(id, _)| !wanted.contains(id.as_str())).map(|(_, found)| found).collect();
        if gone.len() > round.deletion_limit {
            report.deletions_held = gone.len();
            tracing::warn!(
                pending = gone.len(),
                limit = round.deletion_limit,
                "more written-back groups to delete than the deletion threshold: none deleted"
            );
        } else {
            for found in gone {
                match delete(&session, &found.dn).await? {
                    Ok(()) => report.deleted += 1,
                    Err(message) => report.failures.push((found.dn.to_string(), message)),
                }
            }
        }
    }
    let mut ldap = session.ldap.clone();
    let _ = ldap.unbind().await;
    Ok(report)
}

/// The group's `cn`: its name, cut to AD's limit; the cloud id when empty.
fn cn_of(group: &CloudGroup) -> String {
    let name: String = group.name.trim().chars().take(MAX_CN_CHARS).collect();
    if name.is_empty() { group.cloud_id.clone() } else { name }
}

/// AD's `sAMAccountName`: the name without the characters AD refuses, and
/// the end of the cloud id, so two groups of one name never collide.
fn sam_account_name(group: &CloudGroup) -> String {
    let clean: String = group
        .name
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| if "\"/\\[]:;|=,+*?<>@ ".contains(c) { '_' } else { c })
        .take(40)
        .collect();
    let id: String = group.cloud_id.chars().filter(char::is_ascii_hexdigit).collect();
    let tail: String = id.chars().skip(id.chars().count().saturating_sub(12)).collect();
    format!("{clean}_{tail}")
}

fn failed(session: &Session, operation: String) -> impl Fn(ldap3::LdapError) -> LdapError + '_ {
    move |e| LdapError::Connection { url: session.url.clone(), operation: operation.clone(), reason: e.to_string() }
}

/// `Ok(Err(text))`: the directory refused (reported, the round goes on).
type Refusable = Result<Result<(), String>, LdapError>;

fn refusal(rc: u32, text: &str, what: &str) -> Result<(), String> {
    if rc == 0 {
        return Ok(());
    }
    let detail = if text.is_empty() { String::new() } else { format!(": {text}") };
    Err(format!("{what} refused (LDAP result {rc}){detail}"))
}

async fn create(session: &Session, ad: bool, group: &CloudGroup, dn: &Dn) -> Refusable {
    let set = |values: &[&str]| values.iter().map(|v| v.as_bytes().to_vec()).collect::<HashSet<Vec<u8>>>();
    let cn = cn_of(group);
    let mark = cloud_group::mark(&group.cloud_id);
    let mut attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> = vec![(b"cn".to_vec(), set(&[&cn]))];
    if ad {
        attrs.push((b"objectClass".to_vec(), set(&["top", "group"])));
        attrs.push((b"sAMAccountName".to_vec(), set(&[&sam_account_name(group)])));
        attrs.push((b"groupType".to_vec(), set(&[UNIVERSAL_SECURITY_GROUP])));
        attrs.push((cloud_group::AD_ATTRIBUTE.as_bytes().to_vec(), set(&[&mark])));
        attrs.push((b"displayName".to_vec(), set(&[&group.name])));
    } else {
        attrs.push((b"objectClass".to_vec(), set(&["top", "groupOfNames"])));
        attrs.push((cloud_group::LDAP_ATTRIBUTE.as_bytes().to_vec(), set(&[&mark])));
        // Members come in pass 2; the schema wants one now.
        attrs.push((b"member".to_vec(), set(&[NO_MEMBER])));
    }
    let text = dn.to_string();
    let mut ldap = session.ldap.clone();
    let result = ldap
        .with_timeout(session.operation_timeout)
        .add(&text, attrs)
        .await
        .map_err(failed(session, format!("adding {text}")))?;
    if result.rc == ENTRY_ALREADY_EXISTS {
        return Ok(Err(format!(
            "{text} exists and is not a group written back from the cloud; rename one of them (LDAP result 68)"
        )));
    }
    Ok(refusal(result.rc, &result.text, &format!("adding {text}")))
}

async fn rename(session: &Session, from: &Dn, to: &Dn) -> Refusable {
    let Some(rdn) = to.rdn() else { return Ok(Err(format!("{to} has no name"))) };
    let (from_text, rdn_text) = (from.to_string(), rdn.to_string());
    let mut ldap = session.ldap.clone();
    let result = ldap
        .with_timeout(session.operation_timeout)
        .modifydn(&from_text, &rdn_text, true, None)
        .await
        .map_err(failed(session, format!("renaming {from_text}")))?;
    Ok(refusal(result.rc, &result.text, &format!("renaming {from_text} to {rdn_text}")))
}

async fn modify(session: &Session, dn: &Dn, mods: Vec<Mod<Vec<u8>>>) -> Refusable {
    let text = dn.to_string();
    let mut ldap = session.ldap.clone();
    let result = ldap
        .with_timeout(session.operation_timeout)
        .modify(&text, mods)
        .await
        .map_err(failed(session, format!("modifying {text}")))?;
    Ok(refusal(result.rc, &result.text, &format!("modifying {text}")))
}

async fn delete(session: &Session, dn: &Dn) -> Refusable {
    let text = dn.to_string();
    let mut ldap = session.ldap.clone();
    let result = ldap
        .with_timeout(session.operation_timeout)
        .delete(&text)
        .await
        .map_err(failed(session, format!("deleting {text}")))?;
    // Already gone (an earlier round deleted it): done.
    if result.rc == NO_SUCH_OBJECT {
        return Ok(Ok(()));
    }
    Ok(refusal(result.rc, &result.text, &format!("deleting {text}")))
}

/// The modifications that bring `found` to `group` with `members` (DNs as
/// text): one request, or none when nothing differs.
fn changes(ad: bool, group: &CloudGroup, found: &Found, members: &[String]) -> Vec<Mod<Vec<u8>>> {
    let mut mods = Vec::new();
    let one = |v: &str| HashSet::from([v.as_bytes().to_vec()]);
    if ad && found.display_name.as_deref() != Some(group.name.as_str()) && !group.name.is_empty() {
        mods.push(Mod::Replace(b"displayName".to_vec(), one(&group.name)));
    }
    let key = |text: &str| Dn::parse(text).map(|d| d.normalized()).unwrap_or_else(|_| text.to_ascii_lowercase());
    let mut wanted: HashMap<String, &str> = members.iter().map(|m| (key(m), m.as_str())).collect();
    if !ad && wanted.is_empty() {
        wanted.insert(String::new(), NO_MEMBER);
    }
    let have: HashMap<String, &str> = found.members.iter().map(|m| (key(m), m.as_str())).collect();
    let added: HashSet<Vec<u8>> =
        wanted.iter().filter(|(k, _)| !have.contains_key(*k)).map(|(_, v)| v.as_bytes().to_vec()).collect();
    let removed: HashSet<Vec<u8>> =
        have.iter().filter(|(k, _)| !wanted.contains_key(*k)).map(|(_, v)| v.as_bytes().to_vec()).collect();
    // Adds first: a groupOfNames is never without a member in between.
    if !added.is_empty() {
        mods.push(Mod::Add(b"member".to_vec(), added));
    }
    if !removed.is_empty() {
        mods.push(Mod::Delete(b"member".to_vec(), removed));
    }
    mods
}

const READ_ATTRIBUTES: [&str; 4] = ["member", "displayName", cloud_group::AD_ATTRIBUTE, cloud_group::LDAP_ATTRIBUTE];

/// The marked groups under `ou`, by cloud id.
async fn find_marked(
    session: &Session,
    settings: &LdapSettings,
    ou: &Dn,
    ad: bool,
) -> Result<HashMap<String, Found>, LdapError> {
    let filter = if ad {
        format!("(&(objectClass=group)({}={}*))", cloud_group::AD_ATTRIBUTE, cloud_group::PREFIX)
    } else {
        format!("(&(objectClass=groupOfNames)({}={}*))", cloud_group::LDAP_ATTRIBUTE, cloud_group::PREFIX)
    };
    let mut search = PagedSearch::new(
        session,
        &ou.to_string(),
        Scope::Subtree,
        &filter,
        READ_ATTRIBUTES.iter().map(|a| a.to_string()).collect(),
        Vec::new(),
        settings.page_size,
        session.operation_timeout,
    );
    let mut out = HashMap::new();
    while let Some(raw) = search.next().await? {
        let Some((id, found)) = found_of(session, raw).await? else { continue };
        out.insert(id, found);
    }
    Ok(out)
}

/// One group by DN, `None` when it does not exist.
async fn read_group(session: &Session, dn: &str) -> Result<Option<Found>, LdapError> {
    let mut ldap = session.ldap.clone();
    let conn_err = failed(session, format!("reading {dn}"));
    let mut stream = ldap
        .with_timeout(session.operation_timeout)
        .streaming_search(dn, Scope::Base, "(objectClass=*)", READ_ATTRIBUTES.to_vec())
        .await
        .map_err(&conn_err)?;
    let mut found = None;
    while let Some(entry) = stream.next().await.map_err(&conn_err)? {
        if entry.is_ref() || entry.is_intermediate() {
            continue;
        }
        if let Some(raw) = crate::ber::parse_entry(entry.0) {
            found = Some(raw);
        }
    }
    let res = stream.finish().await;
    match res.rc {
        0 => {}
        32 => return Ok(None),
        rc => return Err(crate::paged::search_error(&session.url, dn, rc, &res.text)),
    }
    let Some(raw) = found else { return Ok(None) };
    Ok(found_of(session, raw).await?.map(|(_, f)| f).or(Some(Found {
        dn: Dn::parse(dn).unwrap_or_default(),
        members: Vec::new(),
        display_name: None,
    })))
}

/// A searched entry as a [`Found`], with its cloud id when it is marked
/// (an unmarked one gets an empty id); members read in ranges when AD
/// sends them so.
async fn found_of(session: &Session, raw: crate::ber::RawEntry) -> Result<Option<(String, Found)>, LdapError> {
    let (dn_text, attrs) = raw;
    let Ok(dn) = Dn::parse(&dn_text) else { return Ok(None) };
    let text = |values: &[Vec<u8>]| values.first().and_then(|v| String::from_utf8(v.clone()).ok());
    let mut found = Found { dn, members: Vec::new(), display_name: None };
    let mut id = String::new();
    for (name, values) in attrs {
        if let Some((base, next)) = crate::source::ranged(&name)
            && base.eq_ignore_ascii_case("member")
        {
            found.members.extend(values.iter().filter_map(|v| String::from_utf8(v.clone()).ok()));
            if let Some(low) = next {
                let rest = crate::source::fetch_range(session, &dn_text, "member", low, None).await?;
                found.members.extend(rest.into_iter().filter_map(|v| String::from_utf8(v).ok()));
            }
            continue;
        }
        match name.to_ascii_lowercase().as_str() {
            "member" => found.members.extend(values.into_iter().filter_map(|v| String::from_utf8(v).ok())),
            "displayname" => found.display_name = text(&values),
            n if n == cloud_group::AD_ATTRIBUTE.to_ascii_lowercase()
                || n == cloud_group::LDAP_ATTRIBUTE.to_ascii_lowercase() =>
            {
                if let Some(cloud) = values
                    .iter()
                    .find_map(|v| std::str::from_utf8(v).ok().and_then(cloud_group::cloud_id).map(str::to_string))
                {
                    id = cloud;
                }
            }
            _ => {}
        }
    }
    Ok(Some((id, found)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> CloudGroup {
        CloudGroup {
            cloud_id: "0190f3a2-7c4e-7b21-9d3e-1f2a3b4c5d6e".into(),
            name: name.into(),
            members: Vec::new(),
            place: Place::WritebackOu,
        }
    }

    #[test]
    fn names_are_cut_cleaned_and_never_empty() {
        assert_eq!(cn_of(&group("  Sales  ")), "Sales");
        assert_eq!(cn_of(&group("")), "0190f3a2-7c4e-7b21-9d3e-1f2a3b4c5d6e");
        assert_eq!(cn_of(&group(&"é".repeat(100))).chars().count(), MAX_CN_CHARS);
        assert_eq!(sam_account_name(&group("Ventes, Zürich [EU]")), "Ventes__Zürich__EU__1f2a3b4c5d6e");
    }

    #[test]
    fn member_changes_are_a_difference_and_an_empty_group_of_names_keeps_a_placeholder() {
        let found = Found {
            dn: Dn::parse("cn=g,ou=groups,dc=example,dc=org").unwrap_or_default(),
            members: vec!["uid=a,ou=people,dc=example,dc=org".into(), "uid=b,ou=people,dc=example,dc=org".into()],
            display_name: None,
        };
        let wanted = vec!["UID=A, OU=People,DC=example,DC=org".to_string(), "uid=c,ou=people,dc=example,dc=org".into()];
        let mods = changes(false, &group("g"), &found, &wanted);
        assert_eq!(mods.len(), 2, "{mods:?}");
        assert!(matches!(&mods[0], Mod::Add(_, v) if v.contains(b"uid=c,ou=people,dc=example,dc=org".as_slice())));
        assert!(matches!(&mods[1], Mod::Delete(_, v) if v.contains(b"uid=b,ou=people,dc=example,dc=org".as_slice())));
        let emptied = changes(false, &group("g"), &found, &[]);
        assert!(matches!(&emptied[0], Mod::Add(_, v) if v.contains(b"".as_slice())));
        assert!(changes(false, &group("g"), &Found { members: wanted.clone(), ..found.clone() }, &wanted).is_empty());
    }
}
