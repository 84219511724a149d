//! What sync daemons report after each cycle: kept per connector (the last
//! [`KEEP`] of each), read by the admin API and the metrics.

use crate::db::{Connection, params};

use crate::error::Result;
use crate::util::now;

/// Reports kept per connector.
pub const KEEP: i64 = 1000;

/// Stores a (checked) report; older ones beyond [`KEEP`] go.
pub fn record(conn: &Connection, report: &proto::hybrid::SyncReport) -> Result<()> {
    let text = serde_json::to_string(report).unwrap_or_default();
    conn.execute(
        "INSERT INTO sync_reports(connector, received, status, report) VALUES(?1, ?2, ?3, ?4)",
        params![report.connector, now(), report.status, text],
    )?;
    conn.execute(
        "DELETE FROM sync_reports WHERE connector = ?1 AND id <= (SELECT id FROM sync_reports WHERE connector = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![report.connector, KEEP],
    )?;
    // A cycle that ran through: what an administrator allowed it is spent.
    if report.status == "success" {
        crate::console::spend_allowance(conn, &report.connector)?;
    }
    Ok(())
}

/// A stored report and when it arrived (RFC 3339).
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub received: String,
    pub report: proto::hybrid::SyncReport,
}

fn read(conn: &Connection, sql: &str, params: impl crate::db::Params) -> Result<Vec<Received>> {
    let rows = conn.query_map(sql, params, |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for (received, text) in rows {
        // A row this version cannot read is left out, never fails the listing.
        if let Ok(report) = serde_json::from_str(&text) {
            out.push(Received { received, report });
        }
    }
    Ok(out)
}

/// Each connector's latest report.
pub fn latest(conn: &Connection) -> Result<Vec<Received>> {
    read(
        conn,
        "SELECT received, report FROM sync_reports WHERE id IN (SELECT max(id) FROM sync_reports GROUP BY connector) ORDER BY connector",
        params![],
    )
}

/// A connector's latest `limit` reports, newest first.
pub fn history(conn: &Connection, connector: &str, limit: i64) -> Result<Vec<Received>> {
    read(
        conn,
        "SELECT received, report FROM sync_reports WHERE connector = ?1 ORDER BY id DESC LIMIT ?2",
        params![connector, limit],
    )
}

/// Each connector's last successful cycle: (connector, Unix time it finished).
pub fn last_success(conn: &Connection) -> Result<Vec<(String, f64)>> {
    use time::format_description::well_known::Rfc3339;
    let sql = format!(
        "SELECT connector, {} FROM sync_reports
         WHERE id IN (SELECT max(id) FROM sync_reports WHERE status = 'success' GROUP BY connector) ORDER BY connector",
        conn.json_text("report", "finished")
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params![], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (connector, finished) = row?;
        let unix = finished
            .and_then(|f| time::OffsetDateTime::parse(&f, &Rfc3339).ok())
            .map_or(0.0, |t| t.unix_timestamp() as f64);
        out.push((connector, unix));
    }
    Ok(out)
}
