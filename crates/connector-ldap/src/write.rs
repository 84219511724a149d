//! Writing to the directory: one modify request per change, so a change is
//! applied whole or not at all. Used by `idbridge idfix apply` and `undo`.

use std::collections::HashSet;

use directory::ldif::{ModOp, Modification};
use ldap3::Mod;

use crate::connect::Session;
use crate::error::LdapError;

/// LDAP result codes a caller may want to tell apart.
pub const NO_SUCH_ATTRIBUTE: u32 = 16;
pub const ATTRIBUTE_OR_VALUE_EXISTS: u32 = 20;
pub const INSUFFICIENT_ACCESS: u32 = 50;

/// Applies `mods` to `dn` in one modify request (atomic on the server).
/// A value-specific delete fails when the value is not there, which makes
/// "delete the old value, add the new one" a compare-and-swap.
pub async fn modify(session: &Session, dn: &str, mods: &[Modification]) -> Result<(), LdapError> {
    let mut request: Vec<Mod<Vec<u8>>> = Vec::with_capacity(mods.len());
    for m in mods {
        let values: HashSet<Vec<u8>> = m.values.iter().map(|v| v.as_bytes().to_vec()).collect();
        let attr = m.attr.as_bytes().to_vec();
        request.push(match m.op {
            ModOp::Add => Mod::Add(attr, values),
            ModOp::Delete => Mod::Delete(attr, values),
            ModOp::Replace => Mod::Replace(attr, values),
            ModOp::Increment => {
                return Err(LdapError::Settings(format!("{dn}: increment is not used for fixes")));
            }
        });
    }
    let mut ldap = session.ldap.clone();
    let result = ldap.with_timeout(session.operation_timeout).modify(dn, request).await.map_err(|e| {
        LdapError::Connection { url: session.url.clone(), operation: format!("modifying {dn}"), reason: e.to_string() }
    })?;
    if result.rc == 0 {
        return Ok(());
    }
    Err(LdapError::Modify { url: session.url.clone(), dn: dn.to_string(), code: result.rc, message: result.text })
}

/// The values of one attribute of one entry, in the server's order; `None`
/// when the entry does not exist.
pub async fn read_values(session: &Session, dn: &str, attribute: &str) -> Result<Option<Vec<Vec<u8>>>, LdapError> {
    let mut ldap = session.ldap.clone();
    let conn_err = |e: ldap3::LdapError| LdapError::Connection {
        url: session.url.clone(),
        operation: format!("reading {attribute} of {dn}"),
        reason: e.to_string(),
    };
    let mut stream = ldap
        .with_timeout(session.operation_timeout)
        .streaming_search(dn, ldap3::Scope::Base, "(objectClass=*)", vec![attribute])
        .await
        .map_err(conn_err)?;
    let mut found = None;
    while let Some(entry) = stream.next().await.map_err(conn_err)? {
        if entry.is_ref() || entry.is_intermediate() {
            continue;
        }
        if let Some((_, attrs)) = crate::ber::parse_entry(entry.0) {
            let values =
                attrs.into_iter().filter(|(n, _)| n.eq_ignore_ascii_case(attribute)).flat_map(|(_, v)| v).collect();
            found = Some(values);
        }
    }
    let res = stream.finish().await;
    match res.rc {
        0 => Ok(found),
        32 => Ok(None),
        rc => Err(crate::paged::search_error(&session.url, dn, rc, &res.text)),
    }
}
