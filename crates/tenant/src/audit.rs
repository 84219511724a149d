//! The audit log: who changed what, when. Every write goes through `record`.

use rusqlite::{Connection, params};
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
         (SELECT * FROM audit ORDER BY seq DESC LIMIT ?1) ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![limit as i64], |r| {
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
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
