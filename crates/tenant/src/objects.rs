//! The directory's objects and its rules: create, read, replace,
//! patch, delete and list users, groups and contacts.
//!
//! - userName must use a verified domain.
//! - userName and SMTP proxyAddresses are unique across all objects (the
//!   `claims` table). A synchronised object (one with an immutableId) that
//!   wants a taken value gets it quarantined instead of failing; it is given
//!   back automatically once released.
//! - An incoming synchronised object joins an existing one by immutableId
//!   (hard match), else by userName or primary SMTP address of a cloud-only
//!   object (soft match), else it is created.
//! - Group members live in their own table: adding or removing one member
//!   never rewrites the group.

use std::collections::HashSet;

use crate::db::{Connection, OptionalExtension, params};
use scim::eval::{SortKey, get_ci, sort_key};
use scim::filter::{AttrPath, CompareOp, Filter};
use scim::patch::{PatchOp, PatchOperation, apply_patch};
use scim::resource::{Projection, validate};
use scim::schema::{CONTACT_TYPE, GROUP_TYPE, HYBRID_SCHEMA, ResourceType, USER_TYPE};
use scim::{ScimError, ScimType};
use serde_json::{Map, Value, json};

use crate::audit;
use crate::domains;
use crate::error::{Result, TenantError};
use crate::store::Settings;
use crate::util::{new_id, now, random_bytes};
use proto::hybrid::{HoldReason, ObjectName, QuarantineEntry, QuarantineList};

/// `execute` through the connection's statement cache (writes are hot in Bulk).
fn exec(conn: &Connection, sql: &str, params: impl crate::db::Params) -> crate::db::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `query_row` through the statement cache.
fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl crate::db::Params,
    f: impl FnOnce(&crate::db::Row<'_>) -> crate::db::Result<T>,
) -> crate::db::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Group,
    Contact,
}

impl Kind {
    pub fn rt(self) -> &'static ResourceType {
        match self {
            Kind::User => &USER_TYPE,
            Kind::Group => &GROUP_TYPE,
            Kind::Contact => &CONTACT_TYPE,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.rt().name
    }

    pub(crate) fn parse(s: &str) -> Option<Kind> {
        match s {
            "User" => Some(Kind::User),
            "Group" => Some(Kind::Group),
            "Contact" => Some(Kind::Contact),
            _ => None,
        }
    }

    pub fn from_endpoint(segment: &str) -> Option<Kind> {
        match segment {
            "Users" => Some(Kind::User),
            "Groups" => Some(Kind::Group),
            "Contacts" => Some(Kind::Contact),
            _ => None,
        }
    }
}

/// A stored object: canonical data without id, meta and members.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub kind: Kind,
    pub data: Value,
    pub version: i64,
    pub created: String,
    pub modified: String,
}

impl Stored {
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }
}

/// How a create ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    HardMatched,
    SoftMatched,
}

/// Who is acting, for the audit log, and where resources live, for `meta.location`.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub actor: &'a str,
    pub base_url: &'a str,
}

fn str_at<'v>(data: &'v Value, ext: Option<&str>, name: &str) -> Option<&'v str> {
    let container = match ext {
        Some(e) => get_ci(data, e)?,
        None => data,
    };
    get_ci(container, name).and_then(Value::as_str)
}

fn user_name(data: &Value) -> Option<&str> {
    str_at(data, None, "userName")
}

/// Whether an object is synchronised from on-premises (has an immutableId).
pub fn is_synchronised(data: &Value) -> bool {
    immutable_id(data).is_some()
}

/// A synchronised object's DN in its directory.
pub fn on_premises_dn(data: &Value) -> Option<&str> {
    str_at(data, Some(HYBRID_SCHEMA), "onPremisesDistinguishedName").filter(|s| !s.is_empty())
}

fn immutable_id(data: &Value) -> Option<&str> {
    str_at(data, Some(HYBRID_SCHEMA), "immutableId").filter(|s| !s.is_empty())
}

fn proxy_addresses(data: &Value) -> Vec<String> {
    get_ci(data, HYBRID_SCHEMA)
        .and_then(|h| get_ci(h, "proxyAddresses"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

use proto::unique::smtp_address;

fn primary_smtp(data: &Value) -> Option<String> {
    proxy_addresses(data).into_iter().find_map(|p| p.strip_prefix("SMTP:").map(str::to_lowercase))
}

fn is_admin(data: &Value) -> bool {
    get_ci(data, "roles").and_then(Value::as_array).is_some_and(|roles| {
        roles.iter().any(|r| {
            get_ci(r, "value")
                .and_then(Value::as_str)
                .is_some_and(|v| v.eq_ignore_ascii_case("admin") || v.eq_ignore_ascii_case("Global Administrator"))
        })
    })
}

fn dir_sync_enabled(data: &Value) -> bool {
    get_ci(data, HYBRID_SCHEMA).and_then(|h| get_ci(h, "dirSyncEnabled")).and_then(Value::as_bool).unwrap_or(false)
}

/// The values an object claims (see [`proto::unique`]).
fn claims_of(kind: Kind, data: &Value) -> Vec<proto::unique::Claim> {
    let user = if kind == Kind::User { user_name(data) } else { None };
    let proxies = proxy_addresses(data);
    proto::unique::claims(user, proxies.iter().map(String::as_str))
}

fn row_to_stored(r: &crate::db::Row<'_>) -> crate::db::Result<(String, String, String, i64, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn to_stored(
    (id, kind, data, version, created, modified): (String, String, String, i64, String, String),
) -> Result<Stored> {
    let kind = Kind::parse(&kind)
        .ok_or_else(|| TenantError::Invalid(format!("stored object {id} has unknown type {kind}")))?;
    let data = serde_json::from_str(&data)
        .map_err(|e| TenantError::Invalid(format!("stored object {id} is not JSON: {e}")))?;
    Ok(Stored { id, kind, data, version, created, modified })
}

const SELECT: &str = "SELECT id, type, data, version, created, modified FROM resources";

pub fn load(conn: &Connection, kind: Option<Kind>, id: &str) -> Result<Option<Stored>> {
    let row = query_one(conn, &format!("{SELECT} WHERE id = ?1"), params![id], row_to_stored).optional()?;
    let stored = row.map(to_stored).transpose()?;
    Ok(stored.filter(|s| kind.is_none_or(|k| k == s.kind)))
}

fn must_load(conn: &Connection, kind: Kind, id: &str) -> Result<Stored> {
    load(conn, Some(kind), id)?
        .ok_or_else(|| TenantError::Scim(ScimError::status(404, format!("{} {id} not found", kind.as_str()))))
}

fn check_version(stored: &Stored, if_match: Option<&str>) -> Result<()> {
    match if_match {
        None => Ok(()),
        Some(tags)
            if tags.split(',').map(str::trim).any(|t| {
                t == "*" || t == stored.etag() || t.trim_start_matches("W/") == stored.etag().trim_start_matches("W/")
            }) =>
        {
            Ok(())
        }
        Some(_) => Err(TenantError::Scim(ScimError::status(
            412,
            format!("{} {} has changed (now version {})", stored.kind.as_str(), stored.id, stored.etag()),
        ))),
    }
}

/// The direct members of group `?1` (an id): their ids and types. Members
/// refer to objects by key (`resources.num`, schema 26).
const MEMBERS_OF: &str = "SELECT r.id, r.type FROM members m JOIN resources r ON r.num = m.member_num
     WHERE m.group_num = (SELECT num FROM resources WHERE id = ?1)";

/// The groups object `?1` (an id) is a direct member of: their ids and data.
pub const GROUPS_OF: &str = "SELECT r.id, r.data FROM members m JOIN resources r ON r.num = m.group_num
     WHERE m.member_num = (SELECT num FROM resources WHERE id = ?1)";

/// The member ids of a group.
pub fn member_ids(conn: &Connection, group_id: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(MEMBERS_OF)?;
    let ids = stmt.query_map(params![group_id], |r| r.get(0))?.collect::<crate::db::Result<Vec<String>>>()?;
    Ok(ids)
}

/// The full SCIM representation of a stored object, then projected.
pub fn render(conn: &Connection, stored: &Stored, ctx: &Ctx<'_>, projection: &Projection) -> Result<Value> {
    let rt = stored.kind.rt();
    let mut out = match &stored.data {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    out.insert("id".into(), json!(stored.id));
    out.insert(
        "meta".into(),
        json!({
            "resourceType": rt.name,
            "created": stored.created,
            "lastModified": stored.modified,
            "location": format!("{}{}/{}", ctx.base_url, rt.endpoint, stored.id),
            "version": stored.etag(),
        }),
    );
    if stored.kind == Kind::Group && projection.wants(rt, None, "members") {
        let mut stmt = conn.prepare_cached(MEMBERS_OF)?;
        let members: Vec<Value> = stmt
            .query_map(params![stored.id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<crate::db::Result<Vec<_>>>()?
            .into_iter()
            .map(|(id, t)| {
                let endpoint = if t == "Group" { "/Groups" } else { "/Users" };
                json!({"value": id, "$ref": format!("{}{endpoint}/{id}", ctx.base_url), "type": t})
            })
            .collect();
        if !members.is_empty() {
            out.insert("members".into(), Value::Array(members));
        }
    }
    if stored.kind == Kind::User && projection.wants(rt, None, "groups") {
        let mut stmt = conn.prepare_cached(GROUPS_OF)?;
        let groups: Vec<Value> = stmt
            .query_map(params![stored.id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<crate::db::Result<Vec<_>>>()?
            .into_iter()
            .map(|(id, data)| {
                let display = serde_json::from_str::<Value>(&data).ok().and_then(|d| d.get("displayName").cloned()).unwrap_or(Value::Null);
                json!({"value": id, "$ref": format!("{}/Groups/{id}", ctx.base_url), "display": display, "type": "direct"})
            })
            .collect();
        if !groups.is_empty() {
            out.insert("groups".into(), Value::Array(groups));
        }
    }
    let errors = provisioning_errors(conn, &stored.id)?;
    if !errors.is_empty() {
        let hybrid = out.entry(HYBRID_SCHEMA.to_string()).or_insert_with(|| json!({}));
        if let Some(h) = hybrid.as_object_mut() {
            h.insert("provisioningErrors".into(), Value::Array(errors));
        }
        if let Some(Value::Array(schemas)) = out.get_mut("schemas")
            && !schemas.iter().any(|s| s == HYBRID_SCHEMA)
        {
            schemas.push(json!(HYBRID_SCHEMA));
        }
    }
    Ok(projection.apply(rt, Value::Object(out)))
}

/// The values object `id` waits for, the oldest first.
pub fn quarantine_of(conn: &Connection, id: &str) -> Result<Vec<QuarantineEntry>> {
    quarantine_entries(
        conn,
        "SELECT resource_id, attr, wanted, holder, since, reason FROM quarantine WHERE resource_id = ?1 ORDER BY since",
        params![id],
    )
}

fn provisioning_errors(conn: &Connection, id: &str) -> Result<Vec<Value>> {
    Ok(quarantine_of(conn, id)?
        .into_iter()
        .map(|e| {
            json!({
                "attribute": e.attribute,
                "value": e.value,
                "holder": e.holder.id,
                "reason": format!("the value is held by {}: {}; it is applied here automatically once released", e.holder, e.reason.explain()),
                "since": e.since,
            })
        })
        .collect())
}

/// Quarantine rows (resource_id, attr, wanted, holder, since, reason) as entries.
fn quarantine_entries(conn: &Connection, sql: &str, params: impl crate::db::Params) -> Result<Vec<QuarantineEntry>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?
        .collect::<crate::db::Result<Vec<_>>>()?;
    let mut entries = Vec::with_capacity(rows.len());
    for (object, attribute, value, holder, since, reason) in rows {
        entries.push(QuarantineEntry {
            object: object_name(conn, &object)?,
            attribute,
            value,
            holder: object_name(conn, &holder)?,
            reason: HoldReason::parse(&reason).unwrap_or(HoldReason::HeldFirst),
            since,
        });
    }
    Ok(entries)
}

/// An object as people recognise it (a gone object by its id alone).
fn object_name(conn: &Connection, id: &str) -> Result<ObjectName> {
    let stored = load(conn, None, id)?;
    let data = stored.as_ref().map(|s| &s.data);
    let name = data.and_then(|d| user_name(d).or_else(|| str_at(d, None, "displayName"))).unwrap_or(id).to_string();
    let immutable_id = data.and_then(immutable_id).map(str::to_string);
    Ok(ObjectName { id: id.to_string(), name, immutable_id })
}

/// The synchronised objects waiting for a value another object holds, the
/// longest waiting first (at most `limit`), and how many there are in all.
pub fn quarantined(conn: &Connection, limit: usize) -> Result<QuarantineList> {
    let total: i64 = query_one(conn, "SELECT count(*) FROM quarantine", params![], |r| r.get(0))?;
    let entries = quarantine_entries(
        conn,
        "SELECT resource_id, attr, wanted, holder, since, reason FROM quarantine ORDER BY since, resource_id, value LIMIT ?1",
        params![i64::try_from(limit).unwrap_or(i64::MAX)],
    )?;
    Ok(QuarantineList { total: u64::try_from(total).unwrap_or(0), entries })
}

fn set_user_name(data: &mut Value, value: &str) {
    if let Some(o) = data.as_object_mut() {
        o.insert("userName".into(), json!(value));
    }
}

fn set_proxies(data: &mut Value, proxies: Vec<String>) {
    let Some(o) = data.as_object_mut() else { return };
    let key =
        o.keys().find(|k| k.eq_ignore_ascii_case(HYBRID_SCHEMA)).cloned().unwrap_or_else(|| HYBRID_SCHEMA.to_string());
    let hybrid = o.entry(key).or_insert_with(|| json!({}));
    if let Some(h) = hybrid.as_object_mut() {
        if proxies.is_empty() {
            h.remove("proxyAddresses");
        } else {
            h.insert("proxyAddresses".into(), json!(proxies));
        }
    }
}

fn placeholder(conn: &Connection, wanted: &str) -> Result<String> {
    let initial = domains::initial(conn)?.name;
    let local: String = wanted
        .split('@')
        .next()
        .unwrap_or("user")
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(40)
        .collect();
    let local = if local.is_empty() { "user".to_string() } else { local };
    for _ in 0..100 {
        let n = u16::from_le_bytes(random_bytes::<2>()) % 10_000;
        let candidate = format!("{local}+{n:04}@{initial}");
        let taken: bool = query_one(
            conn,
            "SELECT EXISTS(SELECT 1 FROM claims WHERE value = ?1)",
            params![candidate.to_lowercase()],
            |r| r.get(0),
        )?;
        if !taken {
            return Ok(candidate);
        }
    }
    Err(TenantError::Invalid(format!("no free placeholder userName for {wanted}")))
}

fn check_user_name_domain(conn: &Connection, data: &Value) -> Result<()> {
    let Some(u) = user_name(data) else { return Ok(()) };
    let Some((local, domain)) = u.rsplit_once('@') else {
        return Err(ScimError::invalid_value(format!(
            "userName {u:?} must be an address in a verified domain (user@domain)"
        ))
        .into());
    };
    if local.is_empty() || domains::get(conn, domain)?.is_none() {
        return Err(ScimError::invalid_value(format!(
            "userName {u:?}: {domain:?} is not a verified domain of this tenant (see `idbridge tenant domain list`)"
        ))
        .into());
    }
    Ok(())
}

/// Writes an object: enforces the rules, claims its values (or quarantines
/// them), stores it, and gives released values to objects waiting for them.
/// `verified_domain`: the tenant's setting that a user's userName must be
/// in a verified domain (the caller has the settings: a Bulk request loads
/// them once, not once per object).
fn save(
    conn: &Connection,
    verified_domain: bool,
    kind: Kind,
    id: &str,
    mut attributes: Attributes,
    existing: Option<&Stored>,
    depth: u32,
) -> Result<Stored> {
    if kind == Kind::User && verified_domain {
        check_user_name_domain(conn, &attributes.data)?;
    }
    let synced = immutable_id(&attributes.data).is_some();
    // Values quarantined earlier stay wanted while the client leaves the attribute as it was.
    if let Some(old) = existing {
        let mut stmt = conn.prepare_cached("SELECT attr, wanted FROM quarantine WHERE resource_id = ?1")?;
        let waiting = stmt
            .query_map(params![id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<crate::db::Result<Vec<_>>>()?;
        for (attr, wanted) in waiting {
            match attr.as_str() {
                "userName" if user_name(&attributes.data) == user_name(&old.data) => {
                    set_user_name(attributes.changed(), &wanted);
                }
                "proxyAddresses" if proxy_addresses(&attributes.data) == proxy_addresses(&old.data) => {
                    let mut p = proxy_addresses(&attributes.data);
                    p.push(wanted);
                    set_proxies(attributes.changed(), p);
                }
                _ => {}
            }
        }
    }
    // A new object (a fresh id) has no quarantined values and no claims yet.
    if existing.is_some() {
        exec(conn, "DELETE FROM quarantine WHERE resource_id = ?1", params![id])?;
    }
    for proto::unique::Claim { attribute, key: lc, given } in claims_of(kind, &attributes.data) {
        let attr = attribute.as_str();
        let holder: Option<String> =
            query_one(conn, "SELECT resource_id FROM claims WHERE value = ?1", params![lc], |r| r.get(0)).optional()?;
        let Some(holder) = holder.filter(|h| h != id) else { continue };
        if !synced {
            return Err(ScimError::new(
                ScimType::Uniqueness,
                format!("{attr} {given:?} is already used by object {holder}"),
            )
            .into());
        }
        exec(
            conn,
            "INSERT INTO quarantine(resource_id, attr, value, wanted, holder, since, reason) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(resource_id, attr, value) DO UPDATE SET wanted = excluded.wanted, holder = excluded.holder,
               since = excluded.since, reason = excluded.reason",
            params![id, attr, lc, given, holder, now(), HoldReason::HeldFirst.as_str()],
        )?;
        tracing::info!(object = id, attribute = attr, value = %given, holder = %holder, "duplicate value quarantined");
        if attr == "userName" {
            let p = placeholder(conn, &given)?;
            set_user_name(attributes.changed(), &p);
        } else {
            let kept: Vec<String> = proxy_addresses(&attributes.data)
                .into_iter()
                .filter(|p| smtp_address(p).is_none_or(|a| a.to_lowercase() != lc))
                .collect();
            set_proxies(attributes.changed(), kept);
        }
    }
    let final_claims = claims_of(kind, &attributes.data);
    let old_claims: HashSet<String> = match existing {
        Some(_) => conn
            .prepare_cached("SELECT value FROM claims WHERE resource_id = ?1")?
            .query_map(params![id], |r| r.get(0))?
            .collect::<crate::db::Result<_>>()?,
        None => HashSet::new(),
    };
    let new_values: HashSet<&String> = final_claims.iter().map(|c| &c.key).collect();
    let released: Vec<String> = old_claims.iter().filter(|v| !new_values.contains(v)).cloned().collect();
    for v in &released {
        exec(conn, "DELETE FROM claims WHERE value = ?1", params![v])?;
    }
    for proto::unique::Claim { attribute, key: lc, .. } in &final_claims {
        let attr = attribute.as_str();
        if !old_claims.contains(lc) {
            exec(conn, "INSERT INTO claims(value, resource_id, attr) VALUES(?1, ?2, ?3)", params![lc, id, attr])
                .map_err(|e| match e {
                    e if e.is_constraint_violation() => TenantError::Scim(ScimError::new(
                        ScimType::Uniqueness,
                        format!("{attr} {lc:?} is already used"),
                    )),
                    other => other.into(),
                })?;
        }
    }
    let stamp = now();
    let (version, created) = match existing {
        Some(old) => (old.version + 1, old.created.clone()),
        None => (1, stamp.clone()),
    };
    let (data, text) = attributes.into_parts();
    let imm = immutable_id(&data).map(str::to_string);
    // `create` looked the immutableId up before it chose a new id.
    if let Some(imm) = imm.as_ref().filter(|_| existing.is_some()) {
        let other: Option<String> = conn
            .query_row("SELECT id FROM resources WHERE immutable_id = ?1 AND id != ?2", params![imm, id], |r| r.get(0))
            .optional()?;
        if let Some(other) = other {
            return Err(ScimError::new(
                ScimType::Uniqueness,
                format!("immutableId {imm:?} is already used by object {other}"),
            )
            .into());
        }
    }
    exec(conn,
        "INSERT INTO resources(id, type, data, version, created, modified, user_name_lc, external_id, immutable_id, display_name_lc)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT(id) DO UPDATE SET data = excluded.data, version = excluded.version, modified = excluded.modified,
           user_name_lc = excluded.user_name_lc, external_id = excluded.external_id, immutable_id = excluded.immutable_id,
           display_name_lc = excluded.display_name_lc",
        params![
            id,
            kind.as_str(),
            text,
            version,
            created,
            stamp,
            user_name(&data).map(str::to_lowercase),
            str_at(&data, None, "externalId"),
            imm,
            str_at(&data, None, "displayName").map(str::to_lowercase),
        ],
    )?;
    let saved = Stored { id: id.to_string(), kind, data, version, created, modified: stamp };
    if depth < 8 {
        release(conn, verified_domain, &released, depth)?;
    }
    Ok(saved)
}

/// Gives each released value to the waiting object with the lowest
/// immutableId ([`proto::unique::next_holder`]); the others go on waiting,
/// now for it.
fn release(conn: &Connection, verified_domain: bool, values: &[String], depth: u32) -> Result<()> {
    for v in values {
        let mut stmt = conn.prepare_cached(
            "SELECT q.resource_id, q.attr, q.wanted, COALESCE(r.immutable_id, '') FROM quarantine q
             JOIN resources r ON r.id = q.resource_id WHERE q.value = ?1",
        )?;
        let waiters = stmt
            .query_map(params![v], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
            })?
            .collect::<crate::db::Result<Vec<_>>>()?;
        let next = proto::unique::next_holder(waiters.iter().map(|w| (w.3.as_str(), w)));
        if let Some((waiter, attr, wanted, _)) = next
            && let Some(stored) = load(conn, None, waiter)?
        {
            let mut data = stored.data.clone();
            if attr == "userName" {
                set_user_name(&mut data, wanted);
            } else {
                let mut p = proxy_addresses(&data);
                p.push(wanted.clone());
                set_proxies(&mut data, p);
            }
            exec(conn, "DELETE FROM quarantine WHERE resource_id = ?1 AND value = ?2", params![waiter, v])?;
            exec(
                conn,
                "UPDATE quarantine SET holder = ?1, reason = ?2 WHERE value = ?3",
                params![waiter, HoldReason::LowestImmutableId.as_str(), v],
            )?;
            tracing::info!(object = %waiter, attribute = %attr, value = %wanted, "quarantined value released");
            // Pass the old state with the placeholder so other quarantined values stay wanted.
            let mut old = stored.clone();
            old.data = data.clone();
            save(conn, verified_domain, stored.kind, waiter, Attributes::without_text(data), Some(&old), depth + 1)?;
        }
    }
    Ok(())
}

/// The members in a body's `members`, as [`member_nums`]; each must exist
/// (and not be the group itself).
fn member_nums_in(conn: &Connection, members: Value, group_id: &str) -> Result<Vec<i64>> {
    let list = match members {
        Value::Array(list) => list,
        _ => Vec::new(),
    };
    let mut ids = Vec::with_capacity(list.len());
    let mut seen = HashSet::with_capacity(list.len());
    for m in list {
        let Some(id) = get_ci(&m, "value").and_then(Value::as_str) else {
            return Err(ScimError::invalid_value("every member needs a value (the member's id)").into());
        };
        if seen.insert(id.to_string()) {
            ids.push(id.to_string());
        }
    }
    member_nums(conn, &ids, group_id)
}

/// A group's `members`, taken out of its attributes: they are kept as
/// rows of their own, not in the stored JSON. `None` when the body has none.
fn split_members(kind: Kind, data: &mut Value) -> Option<Value> {
    if kind != Kind::Group {
        return None;
    }
    data.as_object_mut()?.remove("members")
}

const NUM_OF: &str = "SELECT num FROM resources WHERE id = ?1";

/// The key (`resources.num`) of an object by its id; members refer to
/// objects by it.
fn num_of(conn: &Connection, id: &str) -> Result<Option<i64>> {
    Ok(query_one(conn, NUM_OF, params![id], |r| r.get(0)).optional()?)
}

/// The keys of the members `ids`, each of which must exist. Every resource
/// is a user, a group or a contact (`save` writes the type from [`Kind`]),
/// so a member exists when its id does. Asked of the id's index alone (it
/// holds the key): reading the row for its type cost a random page of the
/// resources table per member — from disk once that table outgrows the cache.
fn member_nums(conn: &Connection, ids: &[String], group_id: &str) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(NUM_OF)?;
    let mut nums = Vec::with_capacity(ids.len());
    for id in ids {
        if id == group_id {
            return Err(ScimError::invalid_value("a group cannot be a member of itself").into());
        }
        match stmt.query_row(params![id], |r| r.get(0)).optional()? {
            Some(num) => nums.push(num),
            None => return Err(ScimError::invalid_value(format!("member {id:?} does not exist")).into()),
        }
    }
    Ok(nums)
}

/// The key of group `group_id`, which the caller has loaded or just saved.
fn group_num(conn: &Connection, group_id: &str) -> Result<i64> {
    num_of(conn, group_id)?.ok_or_else(|| TenantError::Invalid(format!("group {group_id} has no row")))
}

fn add_members(conn: &Connection, group_num: i64, member_nums: &[i64]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO members(group_num, member_num) VALUES(?1, ?2) ON CONFLICT(group_num, member_num) DO NOTHING",
    )?;
    for num in member_nums {
        stmt.execute(params![group_num, num])?;
    }
    Ok(())
}

fn clear_members(conn: &Connection, group_num: i64) -> Result<usize> {
    Ok(exec(conn, "DELETE FROM members WHERE group_num = ?1", params![group_num])?)
}

/// Removes the members `ids`; an id that names no object is no member.
fn remove_members(conn: &Connection, group_num: i64, ids: &[String]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM members WHERE group_num = ?1 AND member_num = (SELECT num FROM resources WHERE id = ?2)",
    )?;
    for id in ids {
        stmt.execute(params![group_num, id])?;
    }
    Ok(())
}

pub fn find_by_immutable_id(conn: &Connection, imm: &str) -> Result<Option<Stored>> {
    let row = query_one(conn, &format!("{SELECT} WHERE immutable_id = ?1"), params![imm], row_to_stored).optional()?;
    row.map(to_stored).transpose()
}

/// A cloud-only object of `kind` with this userName or primary SMTP address.
fn soft_match(conn: &Connection, kind: Kind, data: &Value) -> Result<Option<Stored>> {
    let mut candidates = Vec::new();
    if let Some(u) = user_name(data) {
        candidates.push(u.to_lowercase());
    }
    if let Some(p) = primary_smtp(data) {
        candidates.push(p);
    }
    for value in candidates {
        let holder: Option<String> = conn
            .query_row("SELECT resource_id FROM claims WHERE value = ?1", params![value], |r| r.get(0))
            .optional()?;
        if let Some(holder) = holder
            && let Some(s) = load(conn, Some(kind), &holder)?
            && immutable_id(&s.data).is_none()
            && !is_admin(&s.data)
        {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// A synchronised object is marked as such when it arrives (or is matched).
fn mark_synced(data: &mut Value) {
    if immutable_id(data).is_none() {
        return;
    }
    if let Some(o) = data.as_object_mut()
        && let Some(h) = o.entry(HYBRID_SCHEMA.to_string()).or_insert_with(|| json!({})).as_object_mut()
    {
        h.entry("dirSyncEnabled").or_insert(json!(true));
    }
}

/// A body checked against its resource type's schema and marked synced if
/// it is: the part of a create that reads no state, so a Bulk request does
/// it for every operation before it takes the writer. The JSON text the
/// store keeps is made here too: on the writer it was 7 % of its work in a
/// sync's export.
#[derive(Debug)]
pub struct Checked {
    kind: Kind,
    attributes: Attributes,
    /// A group's members, out of its attributes ([`split_members`]).
    members: Option<Value>,
}

impl Checked {
    pub fn new(kind: Kind, body: Value) -> Result<Checked> {
        let mut data = validate(kind.rt(), body)?;
        mark_synced(&mut data);
        let members = split_members(kind, &mut data);
        Ok(Checked { kind, attributes: Attributes::with_text(data), members })
    }
}

/// An object's attributes, with their JSON text while it is still theirs:
/// `save` stores the text and makes it only when it is not there. Changing
/// the attributes ([`Attributes::changed`]) drops the text.
#[derive(Debug)]
struct Attributes {
    data: Value,
    text: Option<String>,
}

impl Attributes {
    /// Attributes with their text made now.
    fn with_text(data: Value) -> Attributes {
        let text = Some(data.to_string());
        Attributes { data, text }
    }

    /// Attributes whose text `save` makes.
    fn without_text(data: Value) -> Attributes {
        Attributes { data, text: None }
    }

    /// The attributes, to change: their text is dropped.
    fn changed(&mut self) -> &mut Value {
        self.text = None;
        &mut self.data
    }

    /// The attributes and their text, made now if it is not there.
    fn into_parts(self) -> (Value, String) {
        let text = self.text.unwrap_or_else(|| self.data.to_string());
        (self.data, text)
    }
}

/// POST: create, or join an existing object (hard then soft match).
pub fn create(
    conn: &Connection,
    ctx: &Ctx<'_>,
    settings: Settings,
    kind: Kind,
    body: &Value,
) -> Result<(Stored, Outcome)> {
    create_checked(conn, ctx, settings, Checked::new(kind, body.clone())?)
}

/// [`create`] of a body already checked.
pub fn create_checked(
    conn: &Connection,
    ctx: &Ctx<'_>,
    settings: Settings,
    Checked { kind, attributes, members }: Checked,
) -> Result<(Stored, Outcome)> {
    let data = &attributes.data;
    if let Some(imm) = immutable_id(data).map(str::to_string) {
        if let Some(existing) = find_by_immutable_id(conn, &imm)? {
            if existing.kind != kind {
                return Err(ScimError::new(
                    ScimType::Uniqueness,
                    format!("immutableId {imm:?} belongs to a {}", existing.kind.as_str()),
                )
                .into());
            }
            if is_admin(&existing.data) {
                return Err(ScimError::new(
                    ScimType::Uniqueness,
                    "an administrator is never matched to a synchronised object",
                )
                .into());
            }
            if settings.block_hard_match_takeover && !dir_sync_enabled(&existing.data) {
                return Err(ScimError::new(ScimType::Uniqueness, format!("immutableId {imm:?} matches cloud-managed object {}, and hard-match takeover is blocked for this tenant", existing.id)).into());
            }
            let stored = replace_data(conn, &settings, &existing, attributes, members)?;
            audit::record(
                conn,
                ctx.actor,
                "hard-match",
                Some(kind.as_str()),
                Some(&stored.id),
                Some(&json!({"immutableId": imm})),
            )?;
            return Ok((stored, Outcome::HardMatched));
        }
        if !settings.block_soft_match
            && let Some(existing) = soft_match(conn, kind, data)?
        {
            let stored = replace_data(conn, &settings, &existing, attributes, members)?;
            audit::record(
                conn,
                ctx.actor,
                "soft-match",
                Some(kind.as_str()),
                Some(&stored.id),
                Some(&json!({"immutableId": imm})),
            )?;
            return Ok((stored, Outcome::SoftMatched));
        }
    }
    let id = new_id();
    let members = members.map(|m| member_nums_in(conn, m, &id)).transpose()?;
    let stored = save(conn, settings.require_verified_domain, kind, &id, attributes, None, 0)?;
    if let Some(nums) = members {
        add_members(conn, group_num(conn, &id)?, &nums)?;
    }
    audit::record(conn, ctx.actor, "create", Some(kind.as_str()), Some(&id), None)?;
    Ok((stored, Outcome::Created))
}

/// Replaces an object's attributes, and a group's members when `members`
/// gives them ([`split_members`]).
fn replace_data(
    conn: &Connection,
    settings: &Settings,
    existing: &Stored,
    attributes: Attributes,
    members: Option<Value>,
) -> Result<Stored> {
    let members = members.map(|m| member_nums_in(conn, m, &existing.id)).transpose()?;
    let stored =
        save(conn, settings.require_verified_domain, existing.kind, &existing.id, attributes, Some(existing), 0)?;
    if let Some(nums) = members {
        let group = group_num(conn, &existing.id)?;
        clear_members(conn, group)?;
        add_members(conn, group, &nums)?;
    }
    Ok(stored)
}

/// PUT: replace the object's attributes.
pub fn replace(
    conn: &Connection,
    ctx: &Ctx<'_>,
    kind: Kind,
    id: &str,
    body: Value,
    if_match: Option<&str>,
) -> Result<Stored> {
    let existing = must_load(conn, kind, id)?;
    check_version(&existing, if_match)?;
    let mut data = validate(kind.rt(), body)?;
    // immutableId never changes once set.
    if let (Some(old), new) = (immutable_id(&existing.data), immutable_id(&data))
        && new != Some(old)
    {
        return Err(ScimError::mutability(format!("immutableId of {id} is {old:?} and cannot change")).into());
    }
    let members = split_members(kind, &mut data);
    let stored = replace_data(conn, &Settings::load(conn)?, &existing, Attributes::without_text(data), members)?;
    audit::record(conn, ctx.actor, "replace", Some(kind.as_str()), Some(id), None)?;
    Ok(stored)
}

fn is_members_path(p: &AttrPath) -> bool {
    p.name.eq_ignore_ascii_case("members")
        && p.uri.as_deref().is_none_or(|u| u.eq_ignore_ascii_case(scim::schema::GROUP_SCHEMA))
}

/// PATCH. For groups, member operations go straight to the members table.
pub fn patch(
    conn: &Connection,
    ctx: &Ctx<'_>,
    kind: Kind,
    id: &str,
    ops: &[PatchOperation],
    if_match: Option<&str>,
) -> Result<Stored> {
    let existing = must_load(conn, kind, id)?;
    check_version(&existing, if_match)?;
    let mut other_ops = Vec::new();
    let mut member_changes = 0usize;
    for op in ops {
        let members_op = kind == Kind::Group
            && match &op.path {
                Some(p) => is_members_path(&p.attr) && p.sub_after_filter.is_none() && p.attr.sub.is_none(),
                None => false,
            };
        if members_op {
            member_changes += apply_member_op(conn, id, op)?;
            continue;
        }
        // A path-less op may carry members next to other attributes.
        if kind == Kind::Group
            && op.path.is_none()
            && let Some(Value::Object(v)) = &op.value
            && let Some((key, members)) = v.iter().find(|(k, _)| k.eq_ignore_ascii_case("members"))
        {
            let members_op = PatchOperation {
                op: op.op,
                path: Some(scim::PatchPath { attr: AttrPath::new("members"), filter: None, sub_after_filter: None }),
                value: Some(members.clone()),
            };
            member_changes += apply_member_op(conn, id, &members_op)?;
            let mut rest = v.clone();
            rest.remove(key);
            if !rest.is_empty() {
                other_ops.push(PatchOperation { op: op.op, path: None, value: Some(Value::Object(rest)) });
            }
            continue;
        }
        other_ops.push(op.clone());
    }
    let stored = if other_ops.is_empty() {
        // Only members changed: bump the version without rewriting the group.
        let stamp = now();
        exec(conn, "UPDATE resources SET version = version + 1, modified = ?2 WHERE id = ?1", params![id, stamp])?;
        Stored { version: existing.version + 1, modified: stamp, ..existing }
    } else {
        let data = apply_patch(kind.rt(), &existing.data, &other_ops)?;
        if let (Some(old), new) = (immutable_id(&existing.data), immutable_id(&data))
            && new != Some(old)
        {
            return Err(ScimError::mutability(format!("immutableId of {id} is {old:?} and cannot change")).into());
        }
        let data = validate(kind.rt(), data)?;
        save(
            conn,
            Settings::load(conn)?.require_verified_domain,
            kind,
            id,
            Attributes::without_text(data),
            Some(&existing),
            0,
        )?
    };
    audit::record(
        conn,
        ctx.actor,
        "patch",
        Some(kind.as_str()),
        Some(id),
        Some(&json!({"operations": ops.len(), "memberChanges": member_changes})),
    )?;
    Ok(stored)
}

fn values_of(value: Option<&Value>) -> Result<Vec<String>> {
    let items = match value {
        Some(Value::Array(a)) => a.clone(),
        Some(v @ Value::Object(_)) => vec![v.clone()],
        Some(Value::Null) | None => Vec::new(),
        Some(other) => {
            return Err(ScimError::invalid_value(format!("members must be objects with a value, got {other}")).into());
        }
    };
    items
        .iter()
        .map(|m| {
            get_ci(m, "value").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                TenantError::Scim(ScimError::invalid_value("every member needs a value (the member's id)"))
            })
        })
        .collect()
}

fn apply_member_op(conn: &Connection, group_id: &str, op: &PatchOperation) -> Result<usize> {
    let filter = op.path.as_ref().and_then(|p| p.filter.as_ref());
    let group = group_num(conn, group_id)?;
    match (op.op, filter) {
        (PatchOp::Add, None) => {
            let ids = values_of(op.value.as_ref())?;
            add_members(conn, group, &member_nums(conn, &ids, group_id)?)?;
            Ok(ids.len())
        }
        (PatchOp::Replace, None) => {
            let ids = values_of(op.value.as_ref())?;
            let nums = member_nums(conn, &ids, group_id)?;
            clear_members(conn, group)?;
            add_members(conn, group, &nums)?;
            Ok(ids.len())
        }
        (PatchOp::Remove, None) => match &op.value {
            Some(v) if !v.is_null() => {
                let ids = values_of(Some(v))?;
                remove_members(conn, group, &ids)?;
                Ok(ids.len())
            }
            _ => clear_members(conn, group),
        },
        (PatchOp::Remove, Some(filter)) => {
            // The common form, members[value eq "id"], needs no scan.
            if let Filter::Compare(p, CompareOp::Eq, Value::String(v)) = filter
                && p.name.eq_ignore_ascii_case("value")
            {
                remove_members(conn, group, std::slice::from_ref(v))?;
                return Ok(1);
            }
            let def = GROUP_TYPE
                .schema
                .attribute("members")
                .ok_or_else(|| TenantError::Invalid("schema without members".into()))?;
            let mut doomed = Vec::new();
            for m in member_ids(conn, group_id)? {
                let t: Option<String> =
                    query_one(conn, "SELECT type FROM resources WHERE id = ?1", params![m], |r| r.get(0)).optional()?;
                if filter.matches_value(def, &json!({"value": m, "type": t}))? {
                    doomed.push(m);
                }
            }
            remove_members(conn, group, &doomed)?;
            Ok(doomed.len())
        }
        (_, Some(_)) => {
            Err(ScimError::invalid_path("members[…] can only be removed; add or replace whole members").into())
        }
    }
}

pub fn delete(conn: &Connection, ctx: &Ctx<'_>, kind: Kind, id: &str, if_match: Option<&str>) -> Result<()> {
    let existing = must_load(conn, kind, id)?;
    check_version(&existing, if_match)?;
    let mut stmt = conn.prepare_cached("SELECT value FROM claims WHERE resource_id = ?1")?;
    let released: Vec<String> = stmt.query_map(params![id], |r| r.get(0))?.collect::<crate::db::Result<_>>()?;
    exec(conn, "DELETE FROM claims WHERE resource_id = ?1", params![id])?;
    exec(conn, "DELETE FROM quarantine WHERE resource_id = ?1", params![id])?;
    if let Some(num) = num_of(conn, id)? {
        exec(conn, "DELETE FROM members WHERE group_num = ?1", params![num])?;
        exec(conn, "DELETE FROM members WHERE member_num = ?1", params![num])?;
    }
    exec(conn, "DELETE FROM credentials WHERE resource_id = ?1", params![id])?;
    crate::mfa::forget_user(conn, id)?;
    exec(conn, "DELETE FROM sessions WHERE user_id = ?1", params![id])?;
    exec(conn, "DELETE FROM refresh_tokens WHERE user_id = ?1", params![id])?;
    // What the console kept about it: roles, its sessions, a sign-in block, lineage.
    exec(conn, "DELETE FROM roles WHERE principal_id = ?1", params![id])?;
    exec(conn, "DELETE FROM console_sessions WHERE user_id = ?1", params![id])?;
    exec(conn, "DELETE FROM blocked_users WHERE user_id = ?1", params![id])?;
    exec(conn, "DELETE FROM lineage WHERE resource_id = ?1", params![id])?;
    exec(conn, "DELETE FROM group_authority WHERE group_id = ?1", params![id])?;
    exec(conn, "DELETE FROM resources WHERE id = ?1", params![id])?;
    release(conn, Settings::load(conn)?.require_verified_domain, &released, 0)?;
    audit::record(conn, ctx.actor, "delete", Some(kind.as_str()), Some(id), None)?;
    Ok(())
}

/// A list request (RFC 7644 §3.4.2).
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub filter: Option<Filter>,
    pub sort_by: Option<AttrPath>,
    pub descending: bool,
    /// 1-based.
    pub start_index: usize,
    pub count: usize,
}

/// What SQL can narrow a filter's candidates to (the filter is still
/// evaluated on each candidate: SQL only has to return a superset).
enum Hint {
    /// `column = value` (indexed).
    Eq(&'static str, String),
    /// `sw`: a range on the indexed column.
    Prefix(&'static str, String),
    /// `co`: a substring test in SQL, without decoding every object.
    Contains(&'static str, String),
    /// `pr`: the column is set.
    Present(&'static str),
}

impl Hint {
    /// The condition, the type (`?1`) included, and its parameters after the type.
    fn sql(&self, conn: &Connection) -> (String, Vec<String>) {
        // The test on one column; externalId's is made for two (see `by_external_id`).
        let (column, test, args): (_, fn(&str) -> String, _) = match self {
            Hint::Eq(c, v) => (*c, |c| format!("{c} = ?2"), vec![v.clone()]),
            // Every string that starts with v sorts between v and v + U+10FFFF
            // (the largest code point; a noncharacter no name carries).
            Hint::Prefix(c, v) => {
                (*c, |c| format!("{c} >= ?2 AND {c} < ?3"), vec![v.clone(), format!("{v}\u{10FFFF}")])
            }
            Hint::Contains(c, v) => return (format!("type = ?1 AND {}", conn.contains(c, "?2")), vec![v.clone()]),
            Hint::Present(c) => return (format!("type = ?1 AND {c} IS NOT NULL"), Vec::new()),
        };
        match column {
            EXTERNAL_ID => (by_external_id(test), args),
            _ => (format!("type = ?1 AND {}", test(column)), args),
        }
    }
}

const EXTERNAL_ID: &str = "external_id";

/// A condition on externalId that indexes answer. The column is indexed only
/// where it differs from immutableId (schema 25): a synchronised object's
/// externalId is its immutableId, whose unique index finds it, and a second
/// index of the same random values cost every object created a B-tree page.
/// `condition` is the test on one column.
///
/// The type (`?1`) is compared as `type || ''`, which no index answers:
/// SQLite, without statistics, rates the type's index above the two the
/// `OR` needs, and would test every object of the type.
fn by_external_id(condition: impl Fn(&str) -> String) -> String {
    format!(
        "type || '' = ?1 AND (({} AND external_id IS DISTINCT FROM immutable_id) OR ({} AND external_id = immutable_id))",
        condition(EXTERNAL_ID),
        condition("immutable_id")
    )
}

/// The column a core attribute is kept in, and whether its values are compared case-insensitively.
fn column_of(p: &AttrPath) -> Option<(&'static str, bool)> {
    if p.sub.is_some() {
        return None;
    }
    let core = p.uri.as_deref().is_none_or(|u| !u.eq_ignore_ascii_case(HYBRID_SCHEMA));
    match p.name.to_ascii_lowercase().as_str() {
        "username" if core => Some(("user_name_lc", true)),
        "externalid" if core => Some((EXTERNAL_ID, false)),
        "id" if core => Some(("id", false)),
        "displayname" if core => Some(("display_name_lc", true)),
        "immutableid" => Some(("immutable_id", false)),
        _ => None,
    }
}

fn index_hint(filter: &Filter) -> Option<Hint> {
    let value = |v: &str, folded: bool| if folded { v.to_lowercase() } else { v.to_string() };
    match filter {
        // An equality is the best narrowing; then any other.
        Filter::And(a, b) => match (index_hint(a), index_hint(b)) {
            (Some(h @ Hint::Eq(..)), _) | (_, Some(h @ Hint::Eq(..))) => Some(h),
            (a, b) => a.or(b),
        },
        Filter::Compare(p, op, Value::String(v)) => {
            let (column, folded) = column_of(p)?;
            match op {
                CompareOp::Eq => Some(Hint::Eq(column, value(v, folded))),
                CompareOp::Sw if !v.is_empty() => Some(Hint::Prefix(column, value(v, folded))),
                CompareOp::Co if !v.is_empty() => Some(Hint::Contains(column, value(v, folded))),
                _ => None,
            }
        }
        Filter::Present(p) => column_of(p).map(|(column, _)| Hint::Present(column)),
        _ => None,
    }
}

/// Most objects one list request examines one by one (unindexed filter or sort).
pub const MAX_RENDERED_PER_LIST: usize = 20_000;

/// The search a list request starts with: the objects of type `?1`,
/// narrowed by an index where the filter allows (`?2`, `?3`), and its
/// arguments after the type.
fn list_sql(conn: &Connection, query: &Query) -> (String, Vec<String>) {
    let (condition, args) = match query.filter.as_ref().and_then(index_hint) {
        Some(hint) => hint.sql(conn),
        None => ("type = ?1".to_string(), Vec::new()),
    };
    // A sort on a kept column is done by SQL (missing values last in
    // both directions, as SCIM sorts them; ties in creation order).
    let order = match query.sort_by.as_ref().and_then(column_of).map(|(column, _)| column) {
        Some(column) => {
            let direction = if query.descending { "DESC" } else { "ASC" };
            format!("{column} IS NULL, {column} {direction}, created, id")
        }
        None => "created, id".to_string(),
    };
    (format!("{SELECT} WHERE {condition} ORDER BY {order}"), args)
}

/// Matching objects (total count, and the requested page in order).
pub fn list(conn: &Connection, ctx: &Ctx<'_>, kind: Kind, query: &Query) -> Result<(usize, Vec<Stored>)> {
    let rt = kind.rt();
    let kind_name = kind.as_str();
    let sorted_by_column = query.sort_by.as_ref().and_then(column_of).map(|(column, _)| column);
    let rows: Vec<Stored> = {
        let (sql, args) = list_sql(conn, query);
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut all: Vec<&dyn crate::db::ToSql> = vec![&kind_name];
        all.extend(args.iter().map(|a| a as &dyn crate::db::ToSql));
        let raw = stmt.query_map(all.as_slice(), row_to_stored)?.collect::<crate::db::Result<Vec<_>>>()?;
        raw.into_iter().map(to_stored).collect::<Result<_>>()?
    };
    // Work per request is bounded: a filter no index answers, or a sort,
    // renders every candidate.
    let renders = query.filter.is_some() || (query.sort_by.is_some() && sorted_by_column.is_none());
    if renders && rows.len() > MAX_RENDERED_PER_LIST {
        return Err(ScimError::new(
            ScimType::TooMany,
            format!(
                "this filter or sort would examine {} {} objects one by one (at most {MAX_RENDERED_PER_LIST}); filter with eq on userName, externalId, id, displayName or immutableId",
                rows.len(),
                kind.as_str()
            ),
        )
        .into());
    }
    let full = Projection::default();
    let mut matched: Vec<(Stored, Option<Value>)> = Vec::new();
    for s in rows {
        match &query.filter {
            None => matched.push((s, None)),
            Some(f) => {
                let view = render(conn, &s, ctx, &full)?;
                if f.matches(rt, &view)? {
                    matched.push((s, Some(view)));
                }
            }
        }
    }
    if let Some(path) = query.sort_by.as_ref().filter(|_| sorted_by_column.is_none()) {
        let mut keyed = Vec::with_capacity(matched.len());
        for (s, view) in matched {
            let view = match view {
                Some(v) => v,
                None => render(conn, &s, ctx, &full)?,
            };
            keyed.push((sort_key(rt, path, &view)?, s));
        }
        keyed.sort_by(|a, b| {
            let ord = match (&a.0, &b.0) {
                (SortKey::Missing, SortKey::Missing) => std::cmp::Ordering::Equal,
                (SortKey::Missing, _) => std::cmp::Ordering::Greater,
                (_, SortKey::Missing) => std::cmp::Ordering::Less,
                (x, y) => x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal),
            };
            if query.descending && !matches!((&a.0, &b.0), (SortKey::Missing, _) | (_, SortKey::Missing)) {
                ord.reverse()
            } else {
                ord
            }
        });
        matched = keyed.into_iter().map(|(_, s)| (s, None)).collect();
    }
    let total = matched.len();
    let start = query.start_index.max(1) - 1;
    let page = matched.into_iter().skip(start).take(query.count).map(|(s, _)| s).collect();
    Ok((total, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql`, its steps joined by ` | `.
    fn query_plan(conn: &Connection, sql: &str, args: &[&str]) -> String {
        let sqlite = conn.sqlite_connection().unwrap();
        let mut stmt = sqlite.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let steps: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap()
            .map(|step| step.unwrap())
            .collect();
        steps.join(" | ")
    }

    /// The first page of the objects `filter` matches.
    fn filtered(filter: &str) -> Query {
        Query {
            filter: Some(Filter::parse(filter).unwrap()),
            sort_by: None,
            descending: false,
            start_index: 1,
            count: 10,
        }
    }

    /// Every search by display name names the type too and is answered by
    /// the (type, display name) index: the index on the name alone is gone
    /// (schema 24), and a plan that scanned every group instead would pass
    /// every other test and crawl at 100,000 groups.
    #[test]
    fn display_name_searches_use_the_type_and_name_index() {
        let store = crate::store::Store::open_in_memory().unwrap();
        let conn = store.lock();
        let plan = |sql: &str, args: &[&str]| query_plan(&conn, sql, args);
        for filter in ["displayName eq \"Ünits\"", "displayName sw \"Ün\""] {
            let (sql, args) = list_sql(&conn, &filtered(filter));
            let mut all = vec!["Group"];
            all.extend(args.iter().map(String::as_str));
            let steps = plan(&sql, &all);
            assert!(
                steps.contains("INDEX resources_type_display_name (type=? AND display_name_lc"),
                "{filter}: {steps}"
            );
        }
        let steps = plan(crate::console::GROUP_BY_NAME, &["ünits"]);
        assert!(steps.contains("INDEX resources_type_display_name (type=? AND display_name_lc=?)"), "{steps}");
        let steps = plan(crate::cloud_groups::GROUP_BY_ID_OR_NAME, &["Ünits", "ünits"]);
        assert!(steps.contains("INDEX resources_type_display_name (type=? AND display_name_lc=?)"), "{steps}");
        assert!(!steps.contains("USING INDEX resources_type (type=?)"), "no scan of every group: {steps}");
        let indexes: i64 = conn
            .sqlite_connection()
            .unwrap()
            .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'resources_display_name'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(indexes, 0, "the index on the display name alone is dropped");
    }

    /// A group's members are found by id in the id's index alone (a
    /// covering index: it holds the key members refer to, so no row of the
    /// resources table is read per member), and a missing or self member is
    /// still refused.
    #[test]
    fn member_checks_read_the_id_index_only() {
        let store = crate::store::Store::open_in_memory().unwrap();
        let conn = store.lock();
        let steps = query_plan(&conn, NUM_OF, &["u1"]);
        assert!(steps.contains("USING COVERING INDEX"), "{steps}");
        for (id, kind) in [("u1", "User"), ("g1", "Group"), ("c1", "Contact")] {
            exec(
                &conn,
                "INSERT INTO resources(id, type, data, version, created, modified) VALUES(?1, ?2, '{}', 1, 'x', 'x')",
                params![id, kind],
            )
            .unwrap();
        }
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let nums = member_nums(&conn, &ids(&["c1", "u1", "g1"]), "g2").unwrap();
        let expected: Vec<i64> = ["c1", "u1", "g1"]
            .iter()
            .map(|id| query_one(&conn, "SELECT num FROM resources WHERE id = ?1", params![id], |r| r.get(0)).unwrap())
            .collect();
        assert_eq!(nums, expected);
        assert_eq!(nums.iter().collect::<HashSet<_>>().len(), 3, "{nums:?}");
        let missing = member_nums(&conn, &ids(&["u1", "ünknown"]), "g2").unwrap_err();
        assert!(missing.to_string().contains("\"ünknown\" does not exist"), "{missing}");
        let itself = member_nums(&conn, &ids(&["u1", "g1"]), "g1").unwrap_err();
        assert!(itself.to_string().contains("member of itself"), "{itself}");
    }

    /// Members refer to objects by key (schema 26): both directions of a
    /// membership are read through an index of keys, and the ids come from
    /// the resources table by its own key.
    #[test]
    fn memberships_are_read_through_key_indexes() {
        let store = crate::store::Store::open_in_memory().unwrap();
        let conn = store.lock();
        let steps = query_plan(&conn, GROUPS_OF, &["u1"]);
        assert!(steps.contains("SEARCH m USING COVERING INDEX members_by_member"), "{steps}");
        assert!(steps.contains("USING INTEGER PRIMARY KEY"), "{steps}");
        let steps = query_plan(&conn, MEMBERS_OF, &["g1"]);
        assert!(steps.contains("SEARCH m USING PRIMARY KEY"), "{steps}");
        assert!(steps.contains("USING INTEGER PRIMARY KEY"), "{steps}");
        assert!(!steps.contains("SCAN"), "{steps}");
    }

    /// externalId is indexed only where it differs from immutableId (schema
    /// 25): a search by it is still answered by indexes — the partial one and
    /// immutableId's — and finds every object whatever the two hold.
    #[test]
    fn external_id_searches_use_indexes_and_find_every_object() {
        let store = crate::store::Store::open_in_memory().unwrap();
        let mut conn = store.lock();
        let tx = conn.transaction().unwrap();
        // (id, externalId, immutableId): synchronised, a SCIM client's, both
        // different, synchronised without an externalId.
        let objects = [
            ("u1", Some("ÄAA"), Some("ÄAA")),
            ("u2", Some("BBB"), None),
            ("u3", Some("CCC"), Some("DDD")),
            ("u4", None, Some("EEE")),
        ];
        for (id, external, immutable) in objects {
            let mut data = json!({"userName": format!("{id}@x.test")});
            if let Some(e) = external {
                data["externalId"] = json!(e);
            }
            if let Some(i) = immutable {
                data[HYBRID_SCHEMA] = json!({"immutableId": i});
            }
            tx.execute(
                "INSERT INTO resources(id, type, data, version, created, modified, user_name_lc, external_id, immutable_id)
                 VALUES(?1, 'User', ?2, 1, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', ?3, ?4, ?5)",
                params![id, data.to_string(), format!("{id}@x.test"), external, immutable],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let ctx = Ctx { actor: "", base_url: "http://x" };
        let found = |filter: &str| -> Vec<String> {
            let (_, page) = list(&conn, &ctx, Kind::User, &filtered(filter)).unwrap();
            let mut ids: Vec<String> = page.into_iter().map(|s| s.id).collect();
            ids.sort();
            ids
        };
        assert_eq!(found("externalId eq \"ÄAA\""), ["u1"]);
        assert_eq!(found("externalId eq \"BBB\""), ["u2"]);
        assert_eq!(found("externalId eq \"CCC\""), ["u3"]);
        assert!(found("externalId eq \"DDD\"").is_empty(), "u3's immutableId is not its externalId");
        assert!(found("externalId eq \"EEE\"").is_empty(), "u4 has no externalId");
        assert_eq!(found("externalId sw \"Ä\""), ["u1"]);
        assert_eq!(found("externalId sw \"C\""), ["u3"]);
        assert!(found("externalId sw \"D\"").is_empty());
        assert_eq!(found("externalId pr"), ["u1", "u2", "u3"]);
        assert_eq!(found("externalId co \"B\""), ["u2"]);
        for filter in ["externalId eq \"ÄAA\"", "externalId sw \"Ä\""] {
            let (sql, args) = list_sql(&conn, &filtered(filter));
            let mut all = vec!["User"];
            all.extend(args.iter().map(String::as_str));
            let steps = query_plan(&conn, &sql, &all);
            assert!(steps.contains("INDEX resources_external_id_own (external_id"), "{filter}: {steps}");
            assert!(steps.contains("INDEX resources_immutable_id (immutable_id"), "{filter}: {steps}");
            assert!(!steps.contains("SCAN"), "{filter}: {steps}");
        }
    }

    /// An unindexed filter or a sort over more objects than one request may
    /// examine is refused (tooMany) instead of rendering them all.
    #[test]
    fn unindexed_lists_are_bounded() {
        let store = crate::store::Store::open_in_memory().unwrap();
        let mut conn = store.lock();
        let tx = conn.transaction().unwrap();
        for i in 0..=MAX_RENDERED_PER_LIST {
            tx.execute(
                "INSERT INTO resources(id, type, data, version, created, modified, user_name_lc)
                 VALUES(?1, 'User', ?2, 1, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', ?3)",
                params![format!("id{i}"), format!("{{\"userName\":\"zoë{i}@x.test\"}}"), format!("zoë{i}@x.test")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let ctx = Ctx { actor: "", base_url: "http://x" };
        let query = |filter: &str, sort: Option<&str>| Query {
            filter: (!filter.is_empty()).then(|| Filter::parse(filter).unwrap()),
            sort_by: sort.map(|s| AttrPath::parse(s).unwrap()),
            descending: false,
            start_index: 1,
            count: 10,
        };
        let too_many = list(&conn, &ctx, Kind::User, &query("title co \"x\"", None)).unwrap_err();
        assert!(too_many.to_string().contains("at most"), "{too_many}");
        // sw, co and pr on a kept column are narrowed in SQL first.
        let count = |f: &str| list(&conn, &ctx, Kind::User, &query(f, None)).map(|(total, _)| total).unwrap();
        assert_eq!(count("userName sw \"ZOË1999\""), 11);
        assert_eq!(count("userName co \"ë2000@\""), 1);
        assert_eq!(count("userName co \"ë2000\" and userName sw \"zoë2000\""), 2);
        assert_eq!(count("displayName pr"), 0);
        assert!(list(&conn, &ctx, Kind::User, &query("", Some("title"))).is_err());
        // A sort on a kept column is done by SQL, whatever the size.
        let (total, page) = list(&conn, &ctx, Kind::User, &query("", Some("userName"))).unwrap();
        assert_eq!(total, MAX_RENDERED_PER_LIST + 1);
        let names: Vec<String> = page.iter().map(|s| s.data["userName"].as_str().unwrap().to_string()).collect();
        assert_eq!(
            names[..3],
            ["zoë0@x.test", "zoë10000@x.test", "zoë10001@x.test"],
            "byte order, as the in-memory sort"
        );
        // Indexed and unfiltered lists are answered.
        let (total, page) = list(&conn, &ctx, Kind::User, &query("userName eq \"zoë7@x.test\"", None)).unwrap();
        assert_eq!((total, page.len()), (1, 1));
        assert_eq!(list(&conn, &ctx, Kind::User, &query("", None)).unwrap().0, MAX_RENDERED_PER_LIST + 1);
    }
}
