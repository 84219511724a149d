//! Verified domains and how their users sign in.

use crate::db::{Connection, OptionalExtension, params};

use crate::error::{Result, TenantError};
use crate::util::now;

pub use proto::admin::AuthType;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub auth: AuthType,
    pub initial: bool,
    pub added: String,
    /// Passwords chosen in the cloud are set on-premises (through an agent).
    pub password_writeback: bool,
}

/// A DNS name of at least two labels: letters, digits, hyphens.
pub fn check_domain_name(name: &str) -> Result<String> {
    let lower = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = lower.split('.').collect();
    let ok = lower.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok { Ok(lower) } else { Err(TenantError::Invalid(format!("{name:?} is not a domain name (like example.com)"))) }
}

pub fn add(conn: &Connection, name: &str, auth: AuthType, initial: bool) -> Result<Domain> {
    let name = check_domain_name(name)?;
    if initial && auth == AuthType::Federated {
        return Err(TenantError::Invalid("the initial domain cannot be federated".into()));
    }
    if auth == AuthType::Federated && !initial {
        return Err(TenantError::Invalid(format!(
            "add {name} as managed, then `idbridge tenant domain federate {name} --protocol oidc …` with its identity provider"
        )));
    }
    if get(conn, &name)?.is_some() {
        return Err(TenantError::Invalid(format!("domain {name} is already verified")));
    }
    let added = now();
    conn.execute(
        "INSERT INTO domains(name, auth, initial, added) VALUES(?1, ?2, ?3, ?4)",
        params![name, auth.as_str(), initial, added],
    )?;
    Ok(Domain { name, auth, initial, added, password_writeback: false })
}

type Row = (String, String, bool, String, bool);

fn row(r: &crate::db::Row<'_>) -> crate::db::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_domain((name, auth, initial, added, password_writeback): Row) -> Result<Domain> {
    Ok(Domain { name, auth: auth.parse()?, initial, added, password_writeback })
}

pub fn get(conn: &Connection, name: &str) -> Result<Option<Domain>> {
    let r = conn
        .query_row(
            "SELECT name, auth, initial, added, password_writeback FROM domains WHERE name = ?1",
            params![name.to_ascii_lowercase()],
            row,
        )
        .optional()?;
    r.map(to_domain).transpose()
}

pub fn list(conn: &Connection) -> Result<Vec<Domain>> {
    let mut stmt =
        conn.prepare("SELECT name, auth, initial, added, password_writeback FROM domains ORDER BY initial DESC, name")?;
    let rows = stmt.query_map(params![], row)?.collect::<crate::db::Result<Vec<_>>>()?;
    rows.into_iter().map(to_domain).collect()
}

pub fn initial(conn: &Connection) -> Result<Domain> {
    let r = conn
        .query_row(
            "SELECT name, auth, initial, added, password_writeback FROM domains WHERE initial = 1",
            params![],
            row,
        )
        .optional()?;
    r.map(to_domain).transpose()?.ok_or_else(|| TenantError::Invalid("the tenant has no initial domain".into()))
}

pub fn set_auth(conn: &Connection, name: &str, auth: AuthType) -> Result<()> {
    let d = get(conn, name)?.ok_or_else(|| TenantError::NotFound(format!("domain {name}")))?;
    if d.initial && auth == AuthType::Federated {
        return Err(TenantError::Invalid("the initial domain cannot be federated".into()));
    }
    if auth == AuthType::Federated {
        return Err(TenantError::Invalid(format!(
            "a federated domain needs its identity provider: use `idbridge tenant domain federate {} --protocol oidc …`",
            d.name
        )));
    }
    conn.execute("UPDATE domains SET auth = ?2 WHERE name = ?1", params![d.name, auth.as_str()])?;
    Ok(())
}

/// Turns password writeback on or off for a domain's users.
pub fn set_password_writeback(conn: &Connection, name: &str, on: bool) -> Result<Domain> {
    let mut d = get(conn, name)?.ok_or_else(|| TenantError::NotFound(format!("domain {name}")))?;
    if on && d.auth == AuthType::Federated {
        return Err(TenantError::Invalid(format!(
            "{} is federated: its users change passwords at their identity provider",
            d.name
        )));
    }
    conn.execute("UPDATE domains SET password_writeback = ?2 WHERE name = ?1", params![d.name, on])?;
    d.password_writeback = on;
    Ok(d)
}

/// Removes a domain that no user's userName uses.
pub fn remove(conn: &Connection, name: &str) -> Result<()> {
    let d = get(conn, name)?.ok_or_else(|| TenantError::NotFound(format!("domain {name}")))?;
    if d.initial {
        return Err(TenantError::Invalid("the initial domain cannot be removed".into()));
    }
    let in_use: i64 =
        conn.query_row("SELECT count(*) FROM resources WHERE user_name_lc LIKE '%@' || ?1", params![d.name], |r| {
            r.get(0)
        })?;
    if in_use > 0 {
        return Err(TenantError::Invalid(format!(
            "{in_use} object(s) still use {} in their userName; change them first",
            d.name
        )));
    }
    conn.execute("DELETE FROM domains WHERE name = ?1", params![d.name])?;
    Ok(())
}
