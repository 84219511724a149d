//! The `Source` contract: how an on-premises directory streams its objects in.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;

use directory::{Anchor, Dn, Entry, ObjectKind};
use serde::{Deserialize, Serialize};

/// The server's own never-changing identity of an object (AD objectGUID,
/// OpenLDAP entryUUID, 389 nsUniqueId). The connector space is keyed by it;
/// deletes and presence are reported by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceId(pub Vec<u8>);

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        f.write_str(&text)
    }
}

/// An object as imported: its identity, its sourceAnchor, its kind, and all
/// its (selected) attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceObject {
    pub id: SourceId,
    /// The sourceAnchor; may differ from `id` (ms-DS-ConsistencyGuid).
    pub anchor: Anchor,
    pub kind: ObjectKind,
    pub entry: Entry,
}

/// One item of an import stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceChange {
    /// The object exists with exactly these attributes (added, changed, renamed or moved).
    Upsert(SourceObject),
    /// The object is gone from the source's scope (deleted, or moved out of scope).
    Delete { id: SourceId, dn: Option<Dn> },
    /// The object still exists and did not change (syncrepl present phase).
    Present { id: SourceId },
}

/// Why a sink refused a change (e.g. the store failed); the import stops.
#[derive(Debug, thiserror::Error)]
#[error("the import target refused a change: {0}")]
pub struct SinkError(pub String);

/// Receives the changes of an import, one at a time, so no step holds the
/// whole directory in memory.
pub trait ImportSink {
    fn accept(&mut self, change: SourceChange) -> Result<(), SinkError>;
}

impl<F: FnMut(SourceChange) -> Result<(), SinkError>> ImportSink for F {
    fn accept(&mut self, change: SourceChange) -> Result<(), SinkError> {
        self(change)
    }
}

/// Opaque position in a source's change stream, persisted by the engine
/// between runs and committed together with the batch it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark(pub String);

/// What kind of import actually ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportMode {
    Full,
    Delta,
    /// A delta was asked for but could not be done; a full import ran instead.
    FullFallback {
        reason: String,
    },
}

/// The end of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub mode: ImportMode,
    /// Where the next delta import starts.
    pub watermark: Watermark,
    /// Subtrees in which every known object that this import did not report
    /// (by Upsert or Present) is gone: all bases after a full import, the
    /// bases that ran a syncrepl present phase after a delta. Empty otherwise.
    pub reconcile_within: Vec<Dn>,
    pub upserts: u64,
    pub deletes: u64,
    pub presents: u64,
}

/// An on-premises directory (or file) that objects are imported from.
pub trait Source {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reads every in-scope object. `previous` is the last watermark, if
    /// any: a source may keep scope decisions in it (the LDAP connector pins
    /// its OU selection by id there), never the delta position.
    fn full_import(
        &mut self,
        previous: Option<&Watermark>,
        sink: &mut (dyn ImportSink + Send),
    ) -> impl Future<Output = Result<ImportSummary, Self::Error>> + Send;

    /// Reads what changed since `since`; falls back to a full import (and says
    /// so in [`ImportSummary::mode`]) when the watermark is no longer usable.
    fn delta_import(
        &mut self,
        since: &Watermark,
        sink: &mut (dyn ImportSink + Send),
    ) -> impl Future<Output = Result<ImportSummary, Self::Error>> + Send;

    /// Reads these objects again and hands each to `sink` as an upsert (gone
    /// ones are skipped). Password hash sync uses it for users whose password
    /// the tenant has not confirmed. A source that cannot does nothing; the
    /// engine then keeps them pending.
    fn reread(
        &mut self,
        objects: &[(SourceId, Dn)],
        sink: &mut (dyn ImportSink + Send),
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send {
        let _ = (objects, sink);
        async { Ok(0) }
    }

    /// True if this source keeps password hashes out of reach of its
    /// imports (Active Directory: only replication hands them out). The
    /// engine then marks users whose `pwdLastSet` changed and asks
    /// [`Source::read_secrets`] for their passwords.
    fn replicates_secrets(&self) -> bool {
        false
    }

    /// The passwords of these users, read the way the directory allows (AD:
    /// `DRSGetNCChanges`). A user missing from the answer stays pending.
    /// `population`: how many objects the source holds in scope, so it can
    /// choose between asking per user and one pass over everything.
    fn read_secrets(
        &mut self,
        objects: &[(SourceId, Dn)],
        population: usize,
    ) -> impl Future<Output = Result<Vec<(SourceId, crate::phs::Found)>, Self::Error>> + Send {
        let _ = (objects, population);
        async { Ok(Vec::new()) }
    }
}

/// After an import, the known objects (id and last DN) that lie within one of
/// the summary's `reconcile_within` subtrees and were not seen: they are gone.
pub fn deleted_by_reconciliation<'a>(
    known: impl IntoIterator<Item = (&'a SourceId, &'a Dn)>,
    seen: &HashSet<SourceId>,
    reconcile_within: &[Dn],
) -> Vec<SourceId> {
    known
        .into_iter()
        .filter(|(id, dn)| !seen.contains(*id) && reconcile_within.iter().any(|base| dn.is_within(base)))
        .map(|(id, _)| id.clone())
        .collect()
}

/// One change watch (a base DN's persistent search, or a whole source's):
/// `Ok(true)` when it saw a change, `Ok(false)` when it timed out or cannot tell.
pub type ChangeWatch<'a, E> = std::pin::Pin<Box<dyn Future<Output = Result<bool, E>> + Send + 'a>>;

/// Waits on several change watches at once: `Ok(true)` as soon as one sees
/// a change (the others are dropped, which ends their searches); once all
/// have finished without one, `Ok(false)` — or the first error, if any
/// failed, so the caller can say why it fell back to its interval.
pub async fn first_change<E>(mut watches: Vec<ChangeWatch<'_, E>>) -> Result<bool, E> {
    let mut error = None;
    std::future::poll_fn(move |cx| {
        let mut i = 0;
        while let Some(watch) = watches.get_mut(i) {
            match watch.as_mut().poll(cx) {
                std::task::Poll::Ready(Ok(true)) => return std::task::Poll::Ready(Ok(true)),
                std::task::Poll::Ready(outcome) => {
                    if let Err(e) = outcome {
                        error.get_or_insert(e);
                    }
                    drop(watches.swap_remove(i));
                }
                std::task::Poll::Pending => i += 1,
            }
        }
        if watches.is_empty() {
            std::task::Poll::Ready(error.take().map_or(Ok(false), Err))
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciliation_finds_unseen() {
        let dn = |s: &str| Dn::parse(s).unwrap();
        let (a, b) = (dn("cn=x,ou=a,dc=org"), dn("cn=y,ou=b,dc=org"));
        let known = [(SourceId(vec![1]), a.clone()), (SourceId(vec![2]), a.clone()), (SourceId(vec![3]), b)];
        let seen: HashSet<_> = [SourceId(vec![1])].into_iter().collect();
        let gone = deleted_by_reconciliation(known.iter().map(|(i, d)| (i, d)), &seen, &[dn("ou=a,dc=org")]);
        assert_eq!(gone, vec![SourceId(vec![2])]);
        assert_eq!(SourceId(vec![0xab, 1]).to_string(), "ab01");
    }

    #[test]
    fn the_first_change_wins_and_errors_are_kept_until_every_watch_is_done() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let after = |ms: u64, outcome: Result<bool, &'static str>| -> ChangeWatch<'static, &'static str> {
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                outcome
            })
        };
        let never = || -> ChangeWatch<'static, &'static str> { Box::pin(std::future::pending()) };
        assert_eq!(rt.block_on(first_change(vec![never(), after(10, Ok(true))])), Ok(true));
        assert_eq!(rt.block_on(first_change(vec![after(1, Err("down")), after(20, Ok(true))])), Ok(true));
        assert_eq!(rt.block_on(first_change(vec![after(1, Ok(false)), after(5, Ok(false))])), Ok(false));
        assert_eq!(rt.block_on(first_change(vec![after(5, Err("down")), after(1, Ok(false))])), Err("down"));
        assert_eq!(rt.block_on(first_change(Vec::<ChangeWatch<'_, &str>>::new())), Ok(false));
    }
}
