//! The sign-in log: one row per attempt (password, pass-through or
//! federated), with its outcome and reason, the application and the
//! address. Written with the attempt's audit entry; read by the console
//! with filters, newest first, a page at a time (keyset on `seq`, so a page
//! deep in a million rows costs what the first one does).

use crate::db::{Connection, params_from_iter};

use crate::error::Result;
use crate::util::{Where, now_secs};

/// How a sign-in was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Password,
    PassThrough,
    Federated,
    /// The second step: an authenticator app's code.
    AuthenticatorCode,
    /// The second step: a recovery code.
    RecoveryCode,
    /// A passkey, alone or as the second step.
    Passkey,
    /// An application answered from an earlier sign-in's session (SAML).
    SingleSignOn,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Password => "password",
            Method::PassThrough => "pass-through",
            Method::Federated => "federated",
            Method::AuthenticatorCode => "authenticator-code",
            Method::RecoveryCode => "recovery-code",
            Method::Passkey => "passkey",
            Method::SingleSignOn => "single-sign-on",
        }
    }
}

/// One attempt, as written.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub user_name: &'a str,
    pub method: Method,
    pub success: bool,
    /// `ok`, `wrong-password`, `locked-out`, `pta-no-agent`, …
    pub reason: &'a str,
    pub application: Option<&'a str>,
    pub address: Option<&'a str>,
}

pub fn record(conn: &Connection, a: &Attempt<'_>) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO signins(at, user_name, method, success, reason, application, address)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    stmt.execute(crate::db::params![
        now_secs(),
        a.user_name.to_lowercase(),
        a.method.as_str(),
        a.success,
        a.reason,
        a.application,
        a.address
    ])?;
    Ok(())
}

/// The applications sign-ins name, as (value in the log, display name):
/// OpenID Connect clients by id, SAML applications as `saml:ID`.
pub fn applications(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> =
        crate::oidc::clients::list(conn)?.into_iter().map(|c| (c.id, c.name)).collect();
    out.extend(
        crate::saml_idp::apps(conn)?.into_iter().map(|a| (format!("saml:{}", a.id), format!("{} (SAML)", a.name))),
    );
    Ok(out)
}

/// One row, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: i64,
    pub at: i64,
    pub user_name: String,
    pub method: String,
    pub success: bool,
    pub reason: String,
    pub application: Option<String>,
    pub address: Option<String>,
}

/// What to show. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exact user name (any case).
    pub user_name: Option<String>,
    /// `success`, `failure`, or a reason (`wrong-password`, …).
    pub outcome: Option<String>,
    pub application: Option<String>,
    /// Epoch seconds, inclusive.
    pub from: Option<i64>,
    /// Epoch seconds, exclusive.
    pub to: Option<i64>,
    /// Only entries older than this one (the next page).
    pub before: Option<i64>,
}

/// The newest `limit` entries that match, newest first.
pub fn query(conn: &Connection, f: &Filter, limit: usize) -> Result<Vec<Entry>> {
    let mut w = Where::default();
    if let Some(u) = &f.user_name {
        w.and("user_name = ?", u.trim().to_lowercase());
    }
    match f.outcome.as_deref() {
        Some("success") => w.and("success = ?", 1),
        Some("failure") => w.and("success = ?", 0),
        Some(reason) => w.and("reason = ?", reason.to_string()),
        None => {}
    }
    if let Some(a) = &f.application {
        w.and("application = ?", a.clone());
    }
    if let Some(t) = f.from {
        w.and("at >= ?", t);
    }
    if let Some(t) = f.to {
        w.and("at < ?", t);
    }
    if let Some(s) = f.before {
        w.and("seq < ?", s);
    }
    let limit = w.param(i64::try_from(limit).unwrap_or(i64::MAX));
    let sql = format!(
        "SELECT seq, at, user_name, method, success, reason, application, address FROM signins {}
         ORDER BY seq DESC LIMIT {limit}",
        w.sql()
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(w.values), |r| {
        Ok(Entry {
            seq: r.get(0)?,
            at: r.get(1)?,
            user_name: r.get(2)?,
            method: r.get(3)?,
            success: r.get(4)?,
            reason: r.get(5)?,
            application: r.get(6)?,
            address: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
}

/// Sign-ins per hour since `since` (epoch seconds): (hour start, successes, failures), oldest first.
pub fn per_hour(conn: &Connection, since: i64) -> Result<Vec<(i64, u64, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT (at / 3600) * 3600 AS hour, CAST(sum(success) AS BIGINT), CAST(count(*) - sum(success) AS BIGINT) FROM signins
         WHERE at >= ?1 GROUP BY hour ORDER BY hour",
    )?;
    let rows = stmt.query_map([since], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (hour, ok, failed) = row?;
        out.push((hour, u64::try_from(ok).unwrap_or(0), u64::try_from(failed).unwrap_or(0)));
    }
    Ok(out)
}

/// Sign-ins since `since` by outcome: (reason, count), most frequent first.
pub fn reasons_since(conn: &Connection, since: i64) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT reason, count(*) AS n FROM signins WHERE at >= ?1 GROUP BY reason ORDER BY n DESC, reason",
    )?;
    let rows = stmt.query_map([since], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (reason, n) = row?;
        out.push((reason, u64::try_from(n).unwrap_or(0)));
    }
    Ok(out)
}
