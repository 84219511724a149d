//! Groups the cloud manages, for group writeback: those created here (no
//! immutableId) and synchronised ones an administrator took over (source of
//! authority: `group_authority`).
//!
//! - The sync side reads them a page at a time (`/hybrid/v1/cloud-groups`)
//!   and writes them into each source's writeback OU; members are given as
//!   the on-premises DN of synchronised objects, the id of another cloud
//!   group, or the name of a cloud-only member (which has no on-premises
//!   counterpart and is reported, not written).
//! - A taken-over group keeps its immutableId, so the sync side knows it:
//!   its export skips the group while the cloud manages it (inbound changes
//!   wait), and after a hand-back sends what differs, so the directory's
//!   values win again.

use proto::hybrid::{CloudGroup, CloudGroupPage, CloudMember, TakenOver};
use serde_json::json;

use crate::db::{Connection, OptionalExtension, params};
use crate::error::{Result, TenantError};
use crate::objects::{self, Kind};
use crate::{audit, util};

/// The groups of one page, ordered by id, after `after`.
pub fn page(conn: &Connection, after: &str, limit: usize) -> Result<CloudGroupPage> {
    let limit = limit.clamp(1, proto::hybrid::MAX_CLOUD_GROUPS_PAGE);
    let rows: Vec<(String, Option<String>, i64)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT r.id, r.immutable_id, CASE WHEN a.group_id IS NULL THEN 0 ELSE 1 END
             FROM resources r LEFT JOIN group_authority a ON a.group_id = r.id
             WHERE r.type = 'Group' AND r.id > ?1
               AND (r.immutable_id IS NULL OR r.immutable_id = '' OR a.group_id IS NOT NULL)
             ORDER BY r.id LIMIT ?2",
        )?;
        stmt.query_map(params![after, limit as i64 + 1], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<crate::db::Result<_>>()?
    };
    let more = rows.len() > limit;
    let mut groups = Vec::with_capacity(rows.len().min(limit));
    for (id, immutable_id, taken) in rows.into_iter().take(limit) {
        let Some(stored) = objects::load(conn, Some(Kind::Group), &id)? else { continue };
        let taken_over = match immutable_id.filter(|i| !i.is_empty()) {
            Some(immutable_id) if taken == 1 => Some(TakenOver {
                immutable_id,
                on_premises_dn: objects::on_premises_dn(&stored.data).map(str::to_string),
            }),
            _ => None,
        };
        let text = |name: &str| stored.data.get(name).and_then(serde_json::Value::as_str).map(str::to_string);
        let mut members = Vec::new();
        for member_id in objects::member_ids(conn, &id)? {
            if let Some(member) = member_of(conn, &member_id)? {
                members.push(member);
            }
        }
        groups.push(CloudGroup { id, display_name: text("displayName").unwrap_or_default(), taken_over, members });
    }
    let next = if more { groups.last().map(|g| g.id.clone()) } else { None };
    Ok(CloudGroupPage { groups, next })
}

/// How a member is written on-premises.
fn member_of(conn: &Connection, id: &str) -> Result<Option<CloudMember>> {
    let Some(stored) = objects::load(conn, None, id)? else { return Ok(None) };
    if objects::is_synchronised(&stored.data)
        && let Some(dn) = objects::on_premises_dn(&stored.data)
    {
        return Ok(Some(CloudMember::OnPremises { dn: dn.to_string() }));
    }
    if stored.kind == Kind::Group {
        return Ok(Some(CloudMember::CloudGroup { id: stored.id }));
    }
    let name = ["userName", "displayName"]
        .iter()
        .find_map(|a| stored.data.get(*a).and_then(serde_json::Value::as_str))
        .unwrap_or(&stored.id)
        .to_string();
    Ok(Some(CloudMember::CloudOnly { name }))
}

/// A group by id or by display name (lower case). Two searches joined, not
/// one `OR`: SQLite plans an `OR` of the two as a scan of every group.
pub(crate) const GROUP_BY_ID_OR_NAME: &str = "SELECT id FROM resources WHERE type = 'Group' AND id = ?1
     UNION SELECT id FROM resources WHERE type = 'Group' AND display_name_lc = ?2 ORDER BY id LIMIT 6";

/// The group named `name` (display name, any case) or with id `name`.
fn find(conn: &Connection, name: &str) -> Result<objects::Stored> {
    let wanted = name.trim();
    let ids: Vec<String> = {
        let mut stmt = conn.prepare_cached(GROUP_BY_ID_OR_NAME)?;
        stmt.query_map(params![wanted, wanted.to_lowercase()], |r| r.get(0))?.collect::<crate::db::Result<_>>()?
    };
    match ids.as_slice() {
        [] => Err(TenantError::NotFound(format!("group {wanted:?}"))),
        [id] => objects::load(conn, Some(Kind::Group), id)?.ok_or_else(|| TenantError::NotFound(format!("group {id}"))),
        several => Err(TenantError::Invalid(format!(
            "several groups are named {wanted:?}; name one by its id: {}",
            several.join(", ")
        ))),
    }
}

/// Whether the cloud manages the synchronised group `id`.
pub fn is_taken_over(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .query_row("SELECT 1 FROM group_authority WHERE group_id = ?1", params![id], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some())
}

/// Hands the synchronised group `name` to the cloud: inbound sync stops
/// changing it, writeback maintains it on-premises. Returns its id.
pub fn take_over(conn: &Connection, actor: &str, name: &str) -> Result<String> {
    let group = find(conn, name)?;
    if !objects::is_synchronised(&group.data) {
        return Err(TenantError::Invalid(format!(
            "group {name:?} was created in the cloud: the cloud manages it already"
        )));
    }
    if is_taken_over(conn, &group.id)? {
        return Err(TenantError::Invalid(format!("group {name:?} is cloud-managed already")));
    }
    conn.execute(
        "INSERT INTO group_authority(group_id, since, actor) VALUES(?1, ?2, ?3)",
        params![group.id, util::now(), actor],
    )?;
    audit::record(conn, actor, "group-take-over", Some("Group"), Some(&group.id), Some(&json!({"name": name})))?;
    Ok(group.id)
}

/// Hands a taken-over group back to its directory: the next cycle's
/// export makes it what the directory says again. Returns its id.
pub fn hand_back(conn: &Connection, actor: &str, name: &str) -> Result<String> {
    let group = find(conn, name)?;
    if conn.execute("DELETE FROM group_authority WHERE group_id = ?1", params![group.id])? == 0 {
        return Err(TenantError::Invalid(format!(
            "group {name:?} is not a taken-over group (only a synchronised group the cloud took over can be handed back)"
        )));
    }
    audit::record(conn, actor, "group-hand-back", Some("Group"), Some(&group.id), Some(&json!({"name": name})))?;
    Ok(group.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Ctx, create};
    use crate::store::{Settings, Store};

    fn made(conn: &Connection, kind: Kind, mut body: serde_json::Value) -> String {
        let core = match kind {
            Kind::Group => "urn:ietf:params:scim:schemas:core:2.0:Group",
            _ => "urn:ietf:params:scim:schemas:core:2.0:User",
        };
        let hybrid = scim::schema::HYBRID_SCHEMA;
        let schemas = if body.get(hybrid).is_some() { json!([core, hybrid]) } else { json!([core]) };
        body["schemas"] = schemas;
        let settings = Settings { require_verified_domain: false, ..Settings::load(conn).unwrap() };
        let ctx = Ctx { actor: "test", base_url: "http://x" };
        create(conn, &ctx, settings, kind, &body).unwrap().0.id
    }

    #[test]
    fn cloud_groups_list_their_members_as_the_directory_can_hold_them_and_authority_moves() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        crate::domains::add(&conn, "example.org", crate::domains::AuthType::ManagedPhs, false).unwrap();
        let hybrid = "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object";
        let synced = made(
            &conn,
            Kind::User,
            json!({"userName": "zoë@example.org", hybrid: {
            "immutableId": "AAECAwQFBgcICQoLDA0ODw==", "onPremisesDistinguishedName": "uid=zoë,ou=people,dc=example,dc=org"}}),
        );
        let cloud_only = made(&conn, Kind::User, json!({"userName": "cloud@example.org"}));
        let inner = made(&conn, Kind::Group, json!({"displayName": "Ïnner"}));
        let outer = made(
            &conn,
            Kind::Group,
            json!({"displayName": "Outer",
            "members": [{"value": synced}, {"value": cloud_only}, {"value": inner}]}),
        );
        let on_premises = made(
            &conn,
            Kind::Group,
            json!({"displayName": "Staff", hybrid: {
            "immutableId": "EBESExQVFhcYGRobHB0eHw==", "onPremisesDistinguishedName": "cn=staff,dc=example,dc=org"}}),
        );

        let first = page(&conn, "", 1).unwrap();
        assert_eq!(first.groups.len(), 1);
        let all = page(&conn, "", 100).unwrap();
        assert_eq!(all.next, None);
        let ids: Vec<&str> = all.groups.iter().map(|g| g.id.as_str()).collect();
        assert!(ids.contains(&inner.as_str()) && ids.contains(&outer.as_str()), "{ids:?}");
        assert!(!ids.contains(&on_premises.as_str()), "a synchronised group is the directory's");
        let second = page(&conn, first.next.as_deref().unwrap(), 100).unwrap();
        assert_eq!(second.groups.len(), all.groups.len() - 1);
        let listed = all.groups.iter().find(|g| g.id == outer).unwrap();
        let mut members = listed.members.clone();
        members.sort_by_key(|m| format!("{m:?}"));
        assert_eq!(
            members,
            vec![
                CloudMember::CloudGroup { id: inner.clone() },
                CloudMember::CloudOnly { name: "cloud@example.org".into() },
                CloudMember::OnPremises { dn: "uid=zoë,ou=people,dc=example,dc=org".into() },
            ]
        );

        // Source of authority.
        assert!(take_over(&conn, "admin", "Outer").unwrap_err().to_string().contains("created in the cloud"));
        assert_eq!(take_over(&conn, "admin", "staff").unwrap(), on_premises);
        assert!(take_over(&conn, "admin", "Staff").unwrap_err().to_string().contains("already"));
        let all = page(&conn, "", 100).unwrap();
        let taken = all.groups.iter().find(|g| g.id == on_premises).unwrap();
        assert_eq!(
            taken.taken_over,
            Some(TakenOver {
                immutable_id: "EBESExQVFhcYGRobHB0eHw==".into(),
                on_premises_dn: Some("cn=staff,dc=example,dc=org".into())
            })
        );
        assert_eq!(hand_back(&conn, "admin", &on_premises).unwrap(), on_premises);
        assert!(hand_back(&conn, "admin", "Staff").is_err(), "handed back once");
        assert!(page(&conn, "", 100).unwrap().groups.iter().all(|g| g.id != on_premises));
        assert!(matches!(take_over(&conn, "admin", "nobody"), Err(TenantError::NotFound(_))));
        made(&conn, Kind::Group, json!({"displayName": "ïnner"}));
        assert!(take_over(&conn, "admin", "ÏNNER").unwrap_err().to_string().contains("several groups"));
    }
}
