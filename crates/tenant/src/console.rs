//! What the admin console needs from the directory beyond SCIM: roles and
//! who holds them, the console's own sessions, and the helpdesk's actions
//! (unlock, revoke sessions, block cloud sign-in), plus the deletions an
//! administrator allowed a stopped sync connector.
//!
//! Every check of who may do what is made here, on the server
//! ([`Role::may`]); the pages only hide what a role cannot use.

use std::collections::HashSet;

use crate::db::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::error::{Result, TenantError};
use crate::objects::{self, Kind, Stored};
use crate::util::{now, now_secs, random_token, sha256};

/// An administrator role, from the most to the least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Everything.
    GlobalAdmin,
    /// Reads users and groups, unlocks, revokes sessions.
    Helpdesk,
    /// Reads everything, changes nothing.
    Reader,
}

/// What a console request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    /// Unlock a user, revoke a user's sessions.
    Helpdesk,
    /// Everything else that changes the tenant.
    Administer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::GlobalAdmin, Role::Helpdesk, Role::Reader];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::GlobalAdmin => "global-admin",
            Role::Helpdesk => "helpdesk",
            Role::Reader => "reader",
        }
    }

    pub fn parse(text: &str) -> Result<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text).ok_or_else(|| {
            TenantError::Invalid(format!("unknown role {text:?}: give global-admin, helpdesk or reader"))
        })
    }

    pub fn may(self, permission: Permission) -> bool {
        match (self, permission) {
            (Role::GlobalAdmin, _) | (_, Permission::Read) => true,
            (Role::Helpdesk, Permission::Helpdesk) => true,
            (Role::Helpdesk | Role::Reader, _) => false,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a role is assigned to: a user or a group (its members, nested
/// groups included, hold the role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: Kind,
    pub id: String,
    /// The user's name or the group's display name, as stored.
    pub name: String,
}

/// One assignment, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub principal: Principal,
    pub role: Role,
    pub assigned: String,
}

/// The user with this user name (any case).
pub fn user_by_name(conn: &Connection, user_name: &str) -> Result<Option<Stored>> {
    let id: Option<String> = conn
        .query_row(
            "SELECT id FROM resources WHERE type = 'User' AND user_name_lc = ?1",
            params![user_name.trim().to_lowercase()],
            |r| r.get(0),
        )
        .optional()?;
    match id {
        Some(id) => objects::load(conn, Some(Kind::User), &id),
        None => Ok(None),
    }
}

/// Groups by display name (lower case), for a role given by name.
pub(crate) const GROUP_BY_NAME: &str =
    "SELECT id FROM resources WHERE type = 'Group' AND display_name_lc = ?1 ORDER BY id LIMIT 3";

/// A user by user name or id, or a group by display name or id; an unknown or
/// ambiguous name is an error that says so.
pub fn find_principal(conn: &Connection, kind: Kind, name: &str) -> Result<Principal> {
    match kind {
        Kind::User => {
            let user = match objects::load(conn, Some(Kind::User), name)? {
                Some(user) => user,
                None => user_by_name(conn, name)?.ok_or_else(|| TenantError::NotFound(format!("user {name}")))?,
            };
            Ok(Principal { kind, name: display_of(&user), id: user.id })
        }
        Kind::Group => {
            if let Some(group) = objects::load(conn, Some(Kind::Group), name)? {
                return Ok(Principal { kind, name: display_of(&group), id: group.id });
            }
            let mut stmt = conn.prepare(GROUP_BY_NAME)?;
            let ids = stmt
                .query_map(params![name.trim().to_lowercase()], |r| r.get::<_, String>(0))?
                .collect::<crate::db::Result<Vec<_>>>()?;
            match ids.as_slice() {
                [] => Err(TenantError::NotFound(format!("group {name}"))),
                [id] => Ok(Principal { kind, id: id.clone(), name: name.trim().to_string() }),
                _ => Err(TenantError::Invalid(format!(
                    "several groups are called {name:?} ({}, …): give the group's id instead",
                    ids.join(", ")
                ))),
            }
        }
        Kind::Contact => Err(TenantError::Invalid("roles go to users and groups, not contacts".into())),
    }
}

/// How an object is named on a page: userName, else displayName, else its id.
pub fn display_of(object: &Stored) -> String {
    ["userName", "displayName"]
        .iter()
        .find_map(|k| object.data.get(*k).and_then(Value::as_str))
        .map_or_else(|| object.id.clone(), str::to_string)
}

/// Assigns `role`; `false` when the principal had it already.
pub fn assign(conn: &Connection, principal: &Principal, role: Role) -> Result<bool> {
    let changed = conn.execute(
        "INSERT INTO roles(principal_type, principal_id, role, assigned) VALUES(?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        params![principal.kind.as_str(), principal.id, role.as_str(), now()],
    )?;
    Ok(changed > 0)
}

/// Removes `role`; `false` when the principal did not have it.
pub fn remove(conn: &Connection, principal: &Principal, role: Role) -> Result<bool> {
    let changed = conn.execute(
        "DELETE FROM roles WHERE principal_type = ?1 AND principal_id = ?2 AND role = ?3",
        params![principal.kind.as_str(), principal.id, role.as_str()],
    )?;
    Ok(changed > 0)
}

/// Every assignment, by role then name. An assignment whose user or group
/// is gone is listed with its id as the name (it grants nothing).
pub fn list(conn: &Connection) -> Result<Vec<Assignment>> {
    let mut stmt = conn.prepare("SELECT principal_type, principal_id, role, assigned FROM roles")?;
    let rows = stmt
        .query_map(params![], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get(3)?))
        })?
        .collect::<crate::db::Result<Vec<(String, String, String, String)>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (kind, id, role, assigned) in rows {
        let (Ok(role), Some(kind)) = (Role::parse(&role), Kind::parse(&kind)) else { continue };
        let name = objects::load(conn, Some(kind), &id)?.map_or_else(|| format!("{id} (deleted)"), |o| display_of(&o));
        out.push(Assignment { principal: Principal { kind, id, name }, role, assigned });
    }
    out.sort_by(|a, b| (a.role, &a.principal.name).cmp(&(b.role, &b.principal.name)));
    Ok(out)
}

/// Groups are nested at most this deep for roles (deeper nesting grants nothing).
const MAX_GROUP_DEPTH: usize = 32;

/// The groups `user_id` is in, directly or through nested groups.
pub fn groups_of(conn: &Connection, user_id: &str) -> Result<Vec<String>> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut frontier = vec![user_id.to_string()];
    let mut stmt = conn.prepare_cached(crate::objects::GROUPS_OF)?;
    for _ in 0..MAX_GROUP_DEPTH {
        let mut next = Vec::new();
        for id in &frontier {
            for group in stmt.query_map(params![id], |r| r.get::<_, String>(0))? {
                let group = group?;
                if seen.insert(group.clone()) {
                    next.push(group);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    let mut groups: Vec<String> = seen.into_iter().collect();
    groups.sort();
    Ok(groups)
}

/// The most powerful role `user_id` holds, directly or through a group;
/// `None` for a disabled, blocked or unknown user.
pub fn role_of(conn: &Connection, user_id: &str) -> Result<Option<Role>> {
    let Some(user) = objects::load(conn, Some(Kind::User), user_id)? else { return Ok(None) };
    if user.data.get("active") == Some(&Value::Bool(false)) || is_blocked(conn, user_id)? {
        return Ok(None);
    }
    let mut best: Option<Role> = None;
    let mut consider = |kind: &str, id: &str| -> Result<()> {
        let mut stmt = conn.prepare_cached("SELECT role FROM roles WHERE principal_type = ?1 AND principal_id = ?2")?;
        for role in stmt.query_map(params![kind, id], |r| r.get::<_, String>(0))? {
            if let Ok(role) = Role::parse(&role?) {
                best = Some(best.map_or(role, |b| b.min(role)));
            }
        }
        Ok(())
    };
    consider("User", user_id)?;
    for group in groups_of(conn, user_id)? {
        consider("Group", &group)?;
    }
    Ok(best)
}

// ---- The console's sessions ----

/// How long a console session lasts (8 hours), however active.
pub const SESSION_SECS: i64 = 8 * 3600;

/// A console session unused this long (30 minutes) ends.
pub const IDLE_SECS: i64 = 30 * 60;

/// A console session: who, and the token its forms must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: String,
    pub csrf: String,
}

/// A new session for `user_id`: the cookie's value (only its hash is kept).
pub fn open_session(conn: &Connection, user_id: &str) -> Result<String> {
    let token = random_token();
    let now = now_secs();
    conn.execute("DELETE FROM console_sessions WHERE expires <= ?1", params![now])?;
    conn.execute(
        "INSERT INTO console_sessions(hash, user_id, csrf, created, expires, last_seen) VALUES(?1, ?2, ?3, ?4, ?5, ?4)",
        params![sha256(token.as_bytes()), user_id, random_token(), now, now + SESSION_SECS],
    )?;
    Ok(token)
}

/// The live session behind a cookie value; using it keeps it from idling out.
pub fn session(conn: &Connection, token: &str) -> Result<Option<Session>> {
    let (hash, now) = (sha256(token.as_bytes()), now_secs());
    let found = conn
        .query_row(
            "SELECT user_id, csrf FROM console_sessions WHERE hash = ?1 AND expires > ?2 AND last_seen > ?2 - ?3",
            params![hash, now, IDLE_SECS],
            |r| Ok(Session { user_id: r.get(0)?, csrf: r.get(1)? }),
        )
        .optional()?;
    if found.is_some() {
        conn.execute("UPDATE console_sessions SET last_seen = ?2 WHERE hash = ?1", params![hash, now])?;
    }
    Ok(found)
}

pub fn close_session(conn: &Connection, token: &str) -> Result<()> {
    conn.execute("DELETE FROM console_sessions WHERE hash = ?1", params![sha256(token.as_bytes())])?;
    Ok(())
}

// ---- Helpdesk actions ----

/// The user's lockout counters (per location, and per address for this
/// name) that currently lock: epoch seconds until which, the latest.
pub fn locked_until(conn: &Connection, user_name: &str) -> Result<Option<i64>> {
    let name = user_name.to_lowercase();
    let (prefix, suffix) = (format!("user:{name}|"), format!("|{name}"));
    let (prefix_len, suffix_len) = (prefix.chars().count(), suffix.chars().count());
    let until: Option<i64> = conn.query_row(
        "SELECT max(locked_until) FROM lockouts WHERE locked_until > ?3
         AND (substr(key, 1, CAST(?4 AS INTEGER)) = ?1
              OR (key LIKE 'addrname:%' AND length(key) >= CAST(?5 AS INTEGER) AND substr(key, length(key) - CAST(?5 AS INTEGER) + 1) = ?2))",
        params![prefix, suffix, now_secs(), prefix_len, suffix_len],
        |r| r.get(0),
    )?;
    Ok(until)
}

/// Clears every lockout counter of the user (all locations); the number cleared.
pub fn unlock(conn: &Connection, user_name: &str) -> Result<usize> {
    let name = user_name.to_lowercase();
    let (prefix, suffix) = (format!("user:{name}|"), format!("|{name}"));
    let (prefix_len, suffix_len) = (prefix.chars().count(), suffix.chars().count());
    Ok(conn.execute(
        "DELETE FROM lockouts WHERE substr(key, 1, CAST(?3 AS INTEGER)) = ?1
         OR (key LIKE 'addrname:%' AND length(key) >= CAST(?4 AS INTEGER) AND substr(key, length(key) - CAST(?4 AS INTEGER) + 1) = ?2)",
        params![prefix, suffix, prefix_len, suffix_len],
    )?)
}

/// Ends every session of the user: sign-in sessions, refresh tokens (all
/// families) and console sessions. The number ended.
pub fn revoke_sessions(conn: &Connection, user_id: &str) -> Result<usize> {
    let mut ended = conn.execute("DELETE FROM sessions WHERE user_id = ?1", params![user_id])?;
    ended += conn.execute("DELETE FROM refresh_tokens WHERE user_id = ?1", params![user_id])?;
    ended += conn.execute("DELETE FROM console_sessions WHERE user_id = ?1", params![user_id])?;
    Ok(ended)
}

pub fn is_blocked(conn: &Connection, user_id: &str) -> Result<bool> {
    let found: Option<i64> =
        conn.query_row("SELECT 1 FROM blocked_users WHERE user_id = ?1", params![user_id], |r| r.get(0)).optional()?;
    Ok(found.is_some())
}

/// Blocks or unblocks cloud sign-in (the directory's `active` is left to
/// the sync: a blocked user stays blocked whatever on-premises says).
/// Blocking ends the user's sessions too. `false` when nothing changed.
pub fn set_blocked(conn: &Connection, actor: &str, user_id: &str, blocked: bool) -> Result<bool> {
    if blocked {
        let changed = conn.execute(
            "INSERT INTO blocked_users(user_id, blocked_by, since) VALUES(?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![user_id, actor, now()],
        )?;
        revoke_sessions(conn, user_id)?;
        Ok(changed > 0)
    } else {
        Ok(conn.execute("DELETE FROM blocked_users WHERE user_id = ?1", params![user_id])? > 0)
    }
}

// ---- Deletions an administrator allowed ----

/// Lets the connector's next cycle delete up to `count` objects once (as
/// `idbridge sync run --allow-deletes COUNT` does); replaces an earlier allowance.
pub fn allow_deletions(conn: &Connection, actor: &str, connector: &str, count: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO deletion_allowances(connector, count, allowed_by, allowed_at) VALUES(?1, ?2, ?3, ?4)
         ON CONFLICT(connector) DO UPDATE SET count = excluded.count, allowed_by = excluded.allowed_by,
         allowed_at = excluded.allowed_at",
        params![connector, i64::try_from(count).unwrap_or(i64::MAX), actor, now()],
    )?;
    Ok(())
}

/// The deletions the connector may make in its next cycle, if allowed.
pub fn deletion_allowance(conn: &Connection, connector: &str) -> Result<Option<u64>> {
    let count: Option<i64> = conn
        .query_row("SELECT count FROM deletion_allowances WHERE connector = ?1", params![connector], |r| r.get(0))
        .optional()?;
    Ok(count.and_then(|c| u64::try_from(c).ok()))
}

/// A cycle of the connector finished without a threshold stop: its allowance is spent.
pub fn spend_allowance(conn: &Connection, connector: &str) -> Result<()> {
    conn.execute("DELETE FROM deletion_allowances WHERE connector = ?1", params![connector])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_when_idle_or_closed() {
        let store = crate::Store::open_in_memory().unwrap();
        let conn = store.lock();
        let token = open_session(&conn, "user-1").unwrap();
        let live = session(&conn, &token).unwrap().unwrap();
        assert_eq!(live.user_id, "user-1");
        assert!(session(&conn, "another value").unwrap().is_none());
        // Unused for longer than IDLE_SECS: gone.
        conn.execute("UPDATE console_sessions SET last_seen = last_seen - ?1", [IDLE_SECS + 1]).unwrap();
        assert!(session(&conn, &token).unwrap().is_none());
        let token = open_session(&conn, "user-1").unwrap();
        close_session(&conn, &token).unwrap();
        assert!(session(&conn, &token).unwrap().is_none());
    }

    #[test]
    fn roles_grant_what_they_say() {
        assert!(Role::GlobalAdmin.may(Permission::Administer));
        assert!(Role::Helpdesk.may(Permission::Helpdesk) && !Role::Helpdesk.may(Permission::Administer));
        assert!(Role::Reader.may(Permission::Read) && !Role::Reader.may(Permission::Helpdesk));
        assert_eq!(Role::parse("helpdesk").ok(), Some(Role::Helpdesk));
        assert!(Role::parse("root").is_err());
        // The most powerful wins.
        assert_eq!(Role::Reader.min(Role::GlobalAdmin), Role::GlobalAdmin);
    }
}
