//! The audit log: who changed what, when. Every write goes through `record`.

use crate::db::{Connection, params};
use serde_json::Value;

use crate::error::Result;
use crate::util::now;

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub detail: Option<Value>,
}

pub fn record(
    conn: &Connection,
    actor: &str,
    action: &str,
    resource_type: Option<&str>,
    resource_id: Option<&str>,
    detail: Option<&Value>,
) -> Result<()> {
    conn.execute(
        "INSERT INTO audit(at, actor, action, resource_type, resource_id, detail) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
        params![now(), actor, action, resource_type, resource_id, detail.map(Value::to_string)],
    )?;
    Ok(())
}

/// The newest `limit` entries, oldest first.
pub fn recent(conn: &Connection, limit: usize) -> Result<Vec<AuditEntry>> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, resource_type, resource_id, detail FROM
         (SELECT * FROM audit ORDER BY seq DESC LIMIT ?1) AS recent ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![limit as i64], entry)?;
    Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
}

/// What to show of the audit log. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// The object (user, group, domain, client, …) by id or name.
    pub resource_id: Option<String>,
    /// RFC 3339 (as stored, UTC), inclusive.
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
    /// Only entries older than this one (the next page).
    pub before: Option<i64>,
}

/// The newest `limit` entries that match, newest first.
pub fn query(conn: &Connection, f: &Filter, limit: usize) -> Result<Vec<AuditEntry>> {
    let mut w = crate::util::Where::default();
    for (clause, value) in [
        ("actor = ?", &f.actor),
        ("action = ?", &f.action),
        ("resource_id = ?", &f.resource_id),
        ("at >= ?", &f.from),
        ("at < ?", &f.to),
    ] {
        if let Some(v) = value {
            w.and(clause, v.clone());
        }
    }
    if let Some(s) = f.before {
        w.and("seq < ?", s);
    }
    let limit = w.param(i64::try_from(limit).unwrap_or(i64::MAX));
    let sql = format!(
        "SELECT seq, at, actor, action, resource_type, resource_id, detail FROM audit {} ORDER BY seq DESC LIMIT {limit}",
        w.sql()
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(crate::db::params_from_iter(w.values), entry)?;
    Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
}

fn entry(r: &crate::db::Row<'_>) -> crate::db::Result<AuditEntry> {
    let detail: Option<String> = r.get(6)?;
    Ok(AuditEntry {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        resource_type: r.get(4)?,
        resource_id: r.get(5)?,
        detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
    })
}
