//! Registered relying parties (`idbridge tenant client add`).

use crate::db::{Connection, OptionalExtension, params};

use super::keys::Alg;
use crate::error::{Result, TenantError};
use crate::util::{new_id, new_token, now, sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub name: String,
    /// Public clients (no secret) must use PKCE.
    pub public: bool,
    pub redirect_uris: Vec<String>,
    pub id_token_alg: Alg,
    /// Where the browser may go after logout (compared exactly).
    pub post_logout_uris: Vec<String>,
    /// Signing in to this application takes a second factor.
    pub require_mfa: bool,
}

/// Registers a client; returns it and, for a confidential client, its secret (shown once).
pub fn add(
    conn: &Connection,
    name: &str,
    redirect_uris: &[String],
    public: bool,
    alg: Alg,
) -> Result<(Client, Option<String>)> {
    if name.trim().is_empty() {
        return Err(TenantError::Invalid("a client needs a name".into()));
    }
    if redirect_uris.is_empty() {
        return Err(TenantError::Invalid("a client needs at least one --redirect-uri".into()));
    }
    for uri in redirect_uris {
        check_redirect_uri(uri)?;
    }
    let id = new_id();
    let secret = if public {
        None
    } else {
        Some(new_token().ok_or_else(|| TenantError::Invalid("the system random number generator failed".into()))?)
    };
    conn.execute(
        "INSERT INTO clients(id, name, secret_hash, redirect_uris, id_token_alg, created) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id,
            name,
            secret.as_ref().map(|s| sha256(s.as_bytes())),
            serde_json::to_string(redirect_uris).unwrap_or_default(),
            alg.as_str(),
            now()
        ],
    )?;
    let client = Client {
        id,
        name: name.to_string(),
        public,
        redirect_uris: redirect_uris.to_vec(),
        id_token_alg: alg,
        post_logout_uris: Vec::new(),
        require_mfa: false,
    };
    Ok((client, secret))
}

/// Sets where a client may send the browser after logout.
pub fn set_post_logout_uris(conn: &Connection, id: &str, uris: &[String]) -> Result<()> {
    for uri in uris {
        crate::util::check_web_url(uri)
            .map_err(|why| TenantError::Invalid(format!("post-logout URI {uri:?}: {why}")))?;
    }
    let changed = conn.execute(
        "UPDATE clients SET post_logout_uris = ?2 WHERE id = ?1",
        params![id, serde_json::to_string(uris).unwrap_or_default()],
    )?;
    if changed == 0 {
        return Err(TenantError::NotFound(format!("client {id}")));
    }
    Ok(())
}

/// Whether signing in to a client takes a second factor.
pub fn set_require_mfa(conn: &Connection, id: &str, required: bool) -> Result<()> {
    if conn.execute("UPDATE clients SET require_mfa = ?2 WHERE id = ?1", params![id, i64::from(required)])? == 0 {
        return Err(TenantError::NotFound(format!("client {id}")));
    }
    Ok(())
}

/// Absolute http(s) URL without a fragment; plain http only for loopback.
pub fn check_redirect_uri(uri: &str) -> Result<()> {
    crate::util::check_web_url(uri)
        .map(|_| ())
        .map_err(|why| TenantError::Invalid(format!("redirect URI {uri:?}: {why}")))
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<Client>> {
    Ok(conn
        .query_row(
            "SELECT id, name, secret_hash IS NULL, redirect_uris, id_token_alg, post_logout_uris, require_mfa FROM clients WHERE id = ?1",
            params![id],
            |r| {
                let uris: String = r.get(3)?;
                let alg: String = r.get(4)?;
                let after_logout: String = r.get(5)?;
                Ok(Client {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    public: r.get(2)?,
                    redirect_uris: serde_json::from_str(&uris).unwrap_or_default(),
                    id_token_alg: Alg::parse(&alg).unwrap_or(Alg::Rs256),
                    post_logout_uris: serde_json::from_str(&after_logout).unwrap_or_default(),
                    require_mfa: r.get::<_, i64>(6)? != 0,
                })
            },
        )
        .optional()?)
}

pub fn list(conn: &Connection) -> Result<Vec<Client>> {
    let mut stmt = conn.prepare("SELECT id FROM clients ORDER BY created")?;
    let ids: Vec<String> = stmt.query_map(params![], |r| r.get(0))?.collect::<crate::db::Result<_>>()?;
    ids.iter().filter_map(|id| get(conn, id).transpose()).collect()
}

/// Checks a confidential client's secret (constant-time over the hashes).
pub fn check_secret(conn: &Connection, id: &str, secret: &str) -> Result<bool> {
    let stored: Option<Option<Vec<u8>>> =
        conn.query_row("SELECT secret_hash FROM clients WHERE id = ?1", params![id], |r| r.get(0)).optional()?;
    let Some(Some(hash)) = stored else { return Ok(false) };
    let given = sha256(secret.as_bytes());
    Ok(hash.len() == given.len() && hash.iter().zip(&given).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0)
}

pub fn remove(conn: &Connection, id: &str) -> Result<()> {
    if conn.execute("DELETE FROM clients WHERE id = ?1", params![id])? == 0 {
        return Err(TenantError::NotFound(format!("client {id}")));
    }
    conn.execute("DELETE FROM refresh_tokens WHERE client_id = ?1", params![id])?;
    Ok(())
}

/// A new secret for a confidential client (shown once); the old one stops working.
pub fn rotate_secret(conn: &Connection, id: &str) -> Result<String> {
    let client = get(conn, id)?.ok_or_else(|| TenantError::NotFound(format!("client {id}")))?;
    if client.public {
        return Err(TenantError::Invalid(format!("{} is a public client: it has no secret", client.name)));
    }
    let secret = new_token().ok_or_else(|| TenantError::Invalid("the system random number generator failed".into()))?;
    conn.execute("UPDATE clients SET secret_hash = ?2 WHERE id = ?1", params![id, sha256(secret.as_bytes())])?;
    Ok(secret)
}
