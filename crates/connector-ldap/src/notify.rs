//! Active Directory change notifications (`LDAP_SERVER_NOTIFICATION_OID`):
//! a persistent search on the naming context that the DC answers with an
//! entry each time an object under it changes. It only wakes the daemon:
//! what changed is still read by DirSync (or uSNChanged), the source of
//! truth. One search per wait; the next wait (after a cycle, or after a
//! dropped connection has been re-established) arms a new one.

use directory::Dn;
use ldap3::controls::RawControl;
use ldap3::{Scope, SearchEntry};

use crate::error::LdapError;
use crate::source::LdapSource;

pub const NOTIFICATION_CONTROL: &str = "1.2.840.113556.1.4.528";
/// `LDAP_SERVER_SHOW_DELETED_OID`: deletions are notified as tombstones.
const SHOW_DELETED_CONTROL: &str = "1.2.840.113556.1.4.417";

const PROTOCOL_ERROR: u32 = 2;
const UNAVAILABLE_CRITICAL_EXTENSION: u32 = 12;
const INSUFFICIENT_ACCESS: u32 = 50;
const UNWILLING_TO_PERFORM: u32 = 53;

/// How a notification wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Notified {
    /// An object in scope changed (or one whose place cannot be told).
    Change,
    /// Nothing in scope changed before the timeout.
    Quiet,
    /// The server refused the control (result code and message).
    Refused(u32, String),
}

/// Waits up to `timeout` for a change under the configured scope.
pub(crate) async fn wait_for_notification(
    source: &LdapSource,
    timeout: std::time::Duration,
) -> Result<Notified, LdapError> {
    let (session, profile) = source.session_profile()?;
    let Some(naming_context) = profile.naming_context.as_ref().or(profile.bases.first()) else {
        return Ok(Notified::Quiet);
    };
    let base = naming_context.to_string();
    let mut ldap = session.ldap.clone();
    let conn_err = |e: ldap3::LdapError| LdapError::Connection {
        url: session.url.clone(),
        operation: format!("waiting for change notifications under {base}"),
        reason: e.to_string(),
    };
    // AD accepts a subtree notification only on a naming context's head and
    // only with this filter; the scope is checked here, entry by entry.
    let controls = vec![
        RawControl { ctype: NOTIFICATION_CONTROL.to_string(), crit: true, val: None },
        RawControl { ctype: SHOW_DELETED_CONTROL.to_string(), crit: true, val: None },
    ];
    let mut stream = ldap
        .with_controls(controls)
        .streaming_search(&base, Scope::Subtree, "(objectClass=*)", vec!["isDeleted", "objectClass"])
        .await
        .map_err(conn_err)?;
    let msgid = stream.ldap_handle().last_id();
    let mut abandon_on_drop = crate::syncrepl::AbandonOnDrop::new(ldap.clone(), msgid);
    // A change committed after the last import began but before this search
    // was armed would never be notified: the DC's USN tells (at worst one
    // cycle more, which finds nothing).
    if let Some(before) = source.usn_before_import() {
        let dse = crate::connect::read_root_dse(&mut ldap.clone(), &session.url, session.operation_timeout).await?;
        if dse.highest_committed_usn.is_some_and(|now| now > before) {
            abandon_on_drop.disarm();
            let _ = ldap.abandon(msgid).await;
            let _ = stream.finish().await;
            return Ok(Notified::Change);
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let outcome = loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => break Notified::Quiet,
            Ok(Err(e)) => return Err(conn_err(e)),
            // The search ended: refused, or the server closed it.
            Ok(Ok(None)) => {
                let result = stream.finish().await;
                abandon_on_drop.disarm();
                // Refusals of the control or of the search; anything else
                // (the server ended it, the connection went) wakes the
                // daemon, whose cycle reconnects and re-arms.
                return Ok(match result.rc {
                    rc @ (PROTOCOL_ERROR
                    | INSUFFICIENT_ACCESS
                    | UNAVAILABLE_CRITICAL_EXTENSION
                    | UNWILLING_TO_PERFORM) => Notified::Refused(rc, result.text),
                    _ => Notified::Change,
                });
            }
            Ok(Ok(Some(item))) => item,
        };
        if next.is_ref() || next.is_intermediate() {
            continue;
        }
        if changed_in_scope(source, &SearchEntry::construct(next)) {
            break Notified::Change;
        }
    };
    abandon_on_drop.disarm();
    let _ = ldap.abandon(msgid).await;
    let _ = stream.finish().await;
    Ok(outcome)
}

/// Whether a notified entry may matter to the import: one under the
/// configured bases and OUs; a tombstone; or a person, group or contact
/// elsewhere (it may have just moved out of scope, which the import must
/// see as a deletion). Other objects outside the scope (computers, OUs,
/// system objects) do not wake the daemon. An entry whose DN cannot be
/// parsed does (the import decides).
fn changed_in_scope(source: &LdapSource, entry: &SearchEntry) -> bool {
    let has = |attr: &str, value: &str| {
        entry.attrs.get(attr).is_some_and(|values| values.iter().any(|v| v.eq_ignore_ascii_case(value)))
    };
    if has("isDeleted", "TRUE") {
        return true;
    }
    match Dn::parse(&entry.dn) {
        Ok(dn) if source.watches(&dn) => true,
        Ok(_) => {
            ["user", "group", "contact", "inetOrgPerson"].iter().any(|c| has("objectClass", c))
                && !has("objectClass", "computer")
        }
        Err(_) => true,
    }
}
