//! sourceAnchor write-back on Active Directory: a user whose
//! ms-DS-ConsistencyGuid is empty gets their objectGUID written there, so the
//! anchor stays the same if the user is later moved to another forest (where
//! the objectGUID would be new). The anchor value does not change by this:
//! it was the objectGUID before and is the same bytes after.

use std::collections::HashSet;

use directory::Entry;
use ldap3::Mod;

use crate::source::LdapSource;

const ATTRIBUTE: &str = "ms-DS-ConsistencyGuid";

impl LdapSource {
    /// Remembers a user whose ms-DS-ConsistencyGuid is empty (called while
    /// building objects, which may run concurrently with nothing else: the
    /// lock is never contended).
    pub(crate) fn note_empty_consistency_guid(&self, entry: &Entry) {
        let empty = entry.first_bytes(ATTRIBUTE).is_none_or(<[u8]>::is_empty);
        if let (true, Some(guid)) = (empty, entry.first_bytes("objectGUID"))
            && guid.len() == 16
            && let Ok(mut list) = self.anchor_backfill.lock()
        {
            list.push((entry.dn.to_string(), guid.to_vec()));
        }
    }

    /// Writes the remembered objectGUIDs. An add (not a replace), so a value
    /// someone set meanwhile is never overwritten; failures are logged, not
    /// fatal: the anchor in use is the objectGUID either way.
    pub(crate) async fn write_back_anchors(&mut self) {
        let pending: Vec<(String, Vec<u8>)> = match self.anchor_backfill.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(_) => return,
        };
        if pending.is_empty() {
            return;
        }
        let Some((session, _)) = self.server() else { return };
        let mut ldap = session.ldap.clone();
        let timeout = session.operation_timeout;
        let (mut written, mut failed, mut first_error) = (0usize, 0usize, None);
        for (dn, guid) in pending {
            let values: HashSet<Vec<u8>> = HashSet::from([guid]);
            let result =
                ldap.with_timeout(timeout).modify(&dn, vec![Mod::Add(ATTRIBUTE.as_bytes().to_vec(), values)]).await;
            match result {
                Ok(r) if r.rc == 0 => written += 1,
                // 20: a value is there already (set since the import): leave it.
                Ok(r) if r.rc == 20 => {}
                Ok(r) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("{dn}: LDAP result {} {}", r.rc, r.text));
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("{dn}: {e}"));
                }
            }
        }
        if written > 0 {
            tracing::info!(written, "wrote objectGUID into empty ms-DS-ConsistencyGuid (anchor write-back)");
        }
        if let Some(error) = first_error {
            tracing::warn!(
                failed,
                %error,
                "anchor write-back failed; the bind account needs write access to ms-DS-ConsistencyGuid on users (`idbridge init` prints the line that grants it)"
            );
        }
    }
}
