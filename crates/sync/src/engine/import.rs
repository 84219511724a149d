//! Stage 1, import: the source's changes into its connector space,
//! committed together with the new watermark; passwords captured on the way
//! stay in memory for this cycle only.

use std::collections::{HashMap, HashSet};

use super::{CycleError, CycleObserver, CycleOptions, PasswordFailure, SyncStore, Transaction};
use crate::source::{ImportMode, ImportSink, SinkError, Source, SourceChange, SourceId, SourceObject};

use super::store::StoreError;

/// What an import did.
#[derive(Debug)]
pub(super) struct Imported {
    pub mode: ImportMode,
    pub imported: u64,
    /// Deleted on-premises: reported by the source or found by reconciliation.
    pub deleted: u64,
    /// Passwords read this cycle, for the password stage.
    pub passwords: Vec<crate::phs::Captured>,
    /// Reading passwords failed as a whole (directory sync went on).
    pub password_failure: Option<PasswordFailure>,
}

/// Writes imported changes into the connector space as they stream in.
pub(super) struct ImportWriter<'a, St: SyncStore + ?Sized> {
    observer: &'a mut (dyn CycleObserver + Send),
    store: &'a mut St,
    source: &'a str,
    seen: HashSet<SourceId>,
    error: Option<StoreError>,
    imported: u64,
    deleted: u64,
    /// Users' passwords, when the source has password hash sync on. In
    /// memory for this cycle only.
    /// Keyed by the object: a user seen twice in one import keeps the last.
    /// With the order it was imported in: the password stage visits the
    /// metaverse in that order, which is the order its rows were written in
    /// (neighbours on disk rather than a random page per user).
    passwords: Option<HashMap<SourceId, (u64, crate::phs::Captured)>>,
    /// The source hands passwords out only by replication: users whose
    /// `pwdLastSet` changed (all of them with `all_passwords`) are marked
    /// pending and read after the import.
    replicated_passwords: bool,
    all_passwords: bool,
}

impl<St: SyncStore + ?Sized> ImportWriter<'_, St> {
    /// A replicated-password user whose password changed since the
    /// connector space last saw it (or every one, on a full resync).
    fn password_changed(&self, obj: &SourceObject) -> Result<bool, StoreError> {
        let Some(now) = obj.entry.first_text("pwdLastSet") else { return Ok(false) };
        if self.all_passwords {
            return Ok(true);
        }
        let before = self.store.cs_get(self.source, &obj.id)?;
        Ok(before.as_ref().and_then(|(o, _)| o.entry.first_text("pwdLastSet")) != Some(now))
    }
}

impl<St: SyncStore + ?Sized> ImportSink for ImportWriter<'_, St> {
    fn accept(&mut self, change: SourceChange) -> Result<(), SinkError> {
        self.observer.advance(1);
        let result = match change {
            SourceChange::Upsert(mut obj) => {
                self.imported += 1;
                self.seen.insert(obj.id.clone());
                // Secrets never reach the store, with or without password hash sync.
                let found = crate::phs::take_secrets(&mut obj.entry);
                if found.is_none()
                    && self.replicated_passwords
                    && self.passwords.is_some()
                    && obj.kind == directory::ObjectKind::User
                {
                    let changed = self.password_changed(&obj).and_then(|changed| {
                        if changed { self.store.set_password_pending(self.source, &obj.id, true) } else { Ok(()) }
                    });
                    if let Err(e) = changed {
                        let text = e.to_string();
                        self.error = Some(e);
                        return Err(SinkError(text));
                    }
                }
                if let (Some(found), Some(list), directory::ObjectKind::User) = (found, &mut self.passwords, obj.kind) {
                    // Committed with the import: if the cycle ends before the
                    // tenant confirms, the next one reads this user again.
                    if let Err(e) = self.store.set_password_pending(self.source, &obj.id, true) {
                        let text = e.to_string();
                        self.error = Some(e);
                        return Err(SinkError(text));
                    }
                    list.insert(
                        obj.id.clone(),
                        (
                            self.imported,
                            crate::phs::Captured {
                                id: obj.id.clone(),
                                must_change: crate::phs::must_change(&obj.entry),
                                found,
                            },
                        ),
                    );
                }
                self.store.cs_put(self.source, &obj)
            }
            SourceChange::Present { id } => {
                self.seen.insert(id);
                Ok(())
            }
            SourceChange::Delete { id, .. } => {
                self.deleted += 1;
                self.store.cs_delete(self.source, &id)
            }
        };
        result.map_err(|e| {
            let text = e.to_string();
            self.error = Some(e);
            SinkError(text)
        })
    }
}

/// Imports `source` into its connector space: a delta from the stored
/// watermark, or a full import (`full`), then passwords not yet confirmed
/// by the target are read again. Commits once, with the new watermark.
pub(super) async fn import<S, St>(
    source_name: &str,
    source: &mut S,
    store: &mut St,
    options: &CycleOptions,
    full: bool,
    observer: &mut (dyn CycleObserver + Send),
) -> Result<Imported, CycleError>
where
    S: Source,
    St: SyncStore + Send + ?Sized,
{
    let mut tx = Transaction::begin(&mut *store)?;
    let previous = tx.watermark(source_name)?;
    let watermark = if full { None } else { previous.clone() };
    observer.stage("import", None);
    let mut writer = ImportWriter {
        observer: &mut *observer,
        store: &mut *tx,
        source: source_name,
        seen: HashSet::new(),
        error: None,
        imported: 0,
        deleted: 0,
        passwords: (options.password_sync && !options.staging).then(HashMap::new),
        replicated_passwords: source.replicates_secrets(),
        all_passwords: options.full,
    };
    let mut password_failure = None;
    let mut result = match &watermark {
        Some(w) => source.delta_import(w, &mut writer).await,
        None => source.full_import(previous.as_ref(), &mut writer).await,
    };
    // Passwords read earlier but never confirmed by the tenant (a crash, an
    // unreachable tenant): read those users again.
    if result.is_ok() && writer.error.is_none() && writer.passwords.is_some() {
        let captured: HashSet<SourceId> = writer.passwords.iter().flat_map(|m| m.keys().cloned()).collect();
        let mut again = Vec::new();
        let mut must_change = HashMap::new();
        for id in writer.store.passwords_pending(source_name)? {
            if captured.contains(&id) {
                continue;
            }
            match writer.store.cs_get(source_name, &id)? {
                Some((obj, false)) => {
                    must_change.insert(id.clone(), crate::phs::must_change(&obj.entry));
                    again.push((id, obj.entry.dn));
                }
                _ => writer.store.set_password_pending(source_name, &id, false)?,
            }
        }
        if !again.is_empty() && writer.replicated_passwords {
            tracing::info!(source = source_name, users = again.len(), "reading passwords by replication");
            let population = writer.store.cs_count(source_name)?;
            match source.read_secrets(&again, population).await {
                Ok(found) => {
                    let asked: HashSet<&SourceId> = again.iter().map(|(id, _)| id).collect();
                    let list = writer.passwords.get_or_insert_with(HashMap::new);
                    let after = writer.imported;
                    for (id, found) in found {
                        if !asked.contains(&id) {
                            continue;
                        }
                        let captured = crate::phs::Captured {
                            must_change: must_change.get(&id).copied().unwrap_or(false),
                            id: id.clone(),
                            found,
                        };
                        list.insert(id, (after, captured));
                    }
                }
                // Directory sync goes on; the users stay pending and are
                // tried again next cycle.
                Err(e) => {
                    tracing::warn!(source = source_name, error = %e, "password hash sync: cannot read passwords");
                    password_failure = Some(PasswordFailure::Read(e.to_string()));
                }
            }
        } else if !again.is_empty() {
            tracing::info!(
                source = source_name,
                users = again.len(),
                "reading users again whose passwords the tenant has not confirmed"
            );
            if let Err(e) = source.reread(&again, &mut writer).await {
                result = Err(e);
            }
        }
    }
    let (seen, imported, deleted) = (std::mem::take(&mut writer.seen), writer.imported, writer.deleted);
    let mut passwords: Vec<_> = writer.passwords.take().map(|m| m.into_values().collect()).unwrap_or_default();
    passwords.sort_unstable_by_key(|(order, _)| *order);
    let passwords = passwords.into_iter().map(|(_, captured)| captured).collect();
    if let Some(e) = writer.error.take() {
        return Err(e.into());
    }
    let summary =
        result.map_err(|e| CycleError::Import { source_name: source_name.to_string(), message: e.to_string() })?;
    let mut reconciled = 0;
    if !summary.reconcile_within.is_empty() {
        for (id, dn) in tx.cs_index(source_name)? {
            if !seen.contains(&id) && summary.reconcile_within.iter().any(|b| dn.is_within(b)) {
                tx.cs_delete(source_name, &id)?;
                reconciled += 1;
            }
        }
    }
    tx.set_watermark(source_name, &summary.watermark)?;
    tx.commit()?;
    Ok(Imported { mode: summary.mode, imported, deleted: deleted + reconciled, passwords, password_failure })
}
