//! Bearer tokens for the APIs: shown once, stored as SHA-256, scoped, revocable.

use std::fmt;
use std::str::FromStr;

use crate::db::{Connection, OptionalExtension, params};

use crate::error::{Result, TenantError};
use crate::util::{new_id, new_token, now, now_secs, sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Read the directory over SCIM.
    ScimRead,
    /// What the sync engine needs: SCIM read/write and the hybrid API.
    Sync,
    /// Everything.
    Admin,
    /// Read the tenant's metrics (`GET /metrics`), nothing else.
    Metrics,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ScimRead => "scim-read",
            Scope::Sync => "sync",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }

    pub fn can_write_scim(self) -> bool {
        matches!(self, Scope::Sync | Scope::Admin)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = TenantError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "scim-read" => Ok(Scope::ScimRead),
            "sync" => Ok(Scope::Sync),
            "admin" => Ok(Scope::Admin),
            "metrics" => Ok(Scope::Metrics),
            other => Err(TenantError::Invalid(format!("unknown scope {other:?} (scim-read, sync, admin, metrics)"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub scope: Scope,
    pub created: String,
    pub expires: Option<i64>,
    pub revoked: Option<String>,
    pub note: Option<String>,
}

/// Creates a token; returns its id and the token (the only time it exists in clear).
pub fn create(
    conn: &Connection,
    scope: Scope,
    expires_in_secs: Option<i64>,
    note: Option<&str>,
) -> Result<(String, String)> {
    let token = new_token().ok_or_else(|| TenantError::Invalid("the system random number generator failed".into()))?;
    let id = new_id();
    let expires = expires_in_secs.map(|s| now_secs() + s);
    conn.execute(
        "INSERT INTO tokens(id, hash, scope, created, expires, note) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, sha256(token.as_bytes()), scope.as_str(), now(), expires, note],
    )?;
    Ok((id, token))
}

/// Limits a token to users of these domains (password records over
/// `/hybrid/v1`): a sync token for one forest cannot set another's passwords.
pub fn restrict_domains(conn: &Connection, id: &str, domains: &[String]) -> Result<()> {
    let lower: Vec<String> = domains.iter().map(|d| d.trim().to_lowercase()).collect();
    conn.execute(
        "UPDATE tokens SET domains = ?2 WHERE id = ?1",
        params![id, serde_json::to_string(&lower).unwrap_or_default()],
    )?;
    Ok(())
}

/// The domains a token is limited to; `None` for all.
pub fn domains(conn: &Connection, id: &str) -> Result<Option<Vec<String>>> {
    let text: Option<Option<String>> =
        conn.query_row("SELECT domains FROM tokens WHERE id = ?1", params![id], |r| r.get(0)).optional()?;
    Ok(text.flatten().and_then(|t| serde_json::from_str(&t).ok()))
}

/// The token's id and scope, if it is valid now.
pub fn authenticate(conn: &Connection, token: &str) -> Result<Option<(String, Scope)>> {
    let row: Option<(String, String, Option<i64>, Option<String>)> = conn
        .query_row(
            "SELECT id, scope, expires, revoked FROM tokens WHERE hash = ?1",
            params![sha256(token.as_bytes())],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    // The lookup is by hash: comparing hashes leaks nothing useful about the token.
    match row {
        Some((id, scope, expires, None)) if expires.is_none_or(|e| e > now_secs()) => Ok(Some((id, scope.parse()?))),
        _ => Ok(None),
    }
}

pub fn list(conn: &Connection) -> Result<Vec<TokenInfo>> {
    let mut stmt = conn.prepare("SELECT id, scope, created, expires, revoked, note FROM tokens ORDER BY created")?;
    let rows = stmt
        .query_map(params![], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })?
        .collect::<crate::db::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(id, scope, created, expires, revoked, note)| {
            Ok(TokenInfo { id, scope: scope.parse()?, created, expires, revoked, note })
        })
        .collect()
}

pub fn revoke(conn: &Connection, id: &str) -> Result<()> {
    let n = conn.execute("UPDATE tokens SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL", params![id, now()])?;
    if n == 0 {
        return Err(TenantError::NotFound(format!("active token {id}")));
    }
    Ok(())
}

/// Parses `90d`, `12h`, `30m`, `3600s` or plain seconds.
pub fn parse_duration(text: &str) -> Result<i64> {
    let t = text.trim();
    let unit = |suffix: char, seconds: i64| t.strip_suffix(suffix).map(|n| (n, seconds));
    let (num, mult) = unit('d', 86_400)
        .or_else(|| unit('h', 3600))
        .or_else(|| unit('m', 60))
        .or_else(|| unit('s', 1))
        .unwrap_or((t, 1));
    num.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| n * mult)
        .ok_or_else(|| TenantError::Invalid(format!("{text:?} is not a duration (like 90d, 12h, 30m)")))
}

/// A sync daemon's fencing token on a write (see
/// `proto::hybrid::SYNC_FENCE_HEADER`): admitted, and remembered, if its
/// epoch is the highest seen for this token and lineage; `Err(highest)`
/// when a newer daemon has written since.
pub fn admit_sync_fence(
    conn: &Connection,
    token_id: &str,
    lineage: &str,
    epoch: i64,
) -> Result<std::result::Result<(), i64>> {
    let key = format!("sync-fence:{token_id}:{lineage}");
    let admitted = conn.execute(
        "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value
         WHERE CAST(meta.value AS BIGINT) <= CAST(excluded.value AS BIGINT)",
        params![key, epoch.to_string()],
    )?;
    if admitted > 0 {
        return Ok(Ok(()));
    }
    let highest = crate::store::get_meta(conn, &key)?.and_then(|v| v.parse().ok()).unwrap_or(i64::MAX);
    Ok(Err(highest))
}
