//! One sync cycle: import → inbound sync → outbound sync and
//! export. IO happens only through the traits defined here.
//!
//! Crash safety: an import commits together with its watermark; sync commits
//! once it is done; each export is committed right after the target confirmed
//! it. Anything interrupted runs again next cycle, and running it again is
//! harmless: creating an object the tenant already has is a hard match on its
//! immutableId, and replaying a PATCH sets the same values again.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use directory::{Dn, ObjectKind};
use serde_json::Value as Json;

use crate::mapping::{self, Flavor, MvView, Projection};
use crate::source::{ImportMode, ImportSink, SinkError, Source, SourceChange, SourceId, SourceObject, Watermark};

/// A storage failure (the store's own error, as text).
#[derive(Debug, Clone, thiserror::Error)]
#[error("sync store: {0}")]
pub struct StoreError(pub String);

/// A target failure for one object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TargetError {
    pub message: String,
    /// The object is not (any more) in the target.
    pub not_found: bool,
}

/// A write transaction on a [`SyncStore`]: commits only when told, rolls
/// back when dropped otherwise — an error returned with `?`, a panic or a
/// cancelled future leaves nothing half-written and no transaction open.
pub struct Transaction<'a, St: SyncStore + ?Sized> {
    store: &'a mut St,
    open: bool,
}

impl<'a, St: SyncStore + ?Sized> Transaction<'a, St> {
    pub fn begin(store: &'a mut St) -> Result<Self, StoreError> {
        store.begin()?;
        Ok(Transaction { store, open: true })
    }

    pub fn commit(mut self) -> Result<(), StoreError> {
        self.open = false;
        let committed = self.store.commit();
        if committed.is_err() {
            // A failed COMMIT may leave the transaction open: never keep it.
            let _ = self.store.rollback();
        }
        committed
    }
}

impl<St: SyncStore + ?Sized> std::fmt::Debug for Transaction<'_, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("open", &self.open).finish_non_exhaustive()
    }
}

impl<St: SyncStore + ?Sized> std::ops::Deref for Transaction<'_, St> {
    type Target = St;
    fn deref(&self) -> &St {
        self.store
    }
}

impl<St: SyncStore + ?Sized> std::ops::DerefMut for Transaction<'_, St> {
    fn deref_mut(&mut self) -> &mut St {
        self.store
    }
}

impl<St: SyncStore + ?Sized> Drop for Transaction<'_, St> {
    fn drop(&mut self) {
        if self.open
            && let Err(e) = self.store.rollback()
        {
            tracing::warn!(error = %e, "sync store: rollback failed");
        }
    }
}

/// A metaverse object as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MvRecord {
    pub id: String,
    pub kind: ObjectKind,
    pub anchor: String,
    pub attrs: serde_json::Map<String, Json>,
    pub manager: Option<String>,
    pub members: Vec<String>,
    /// Its source object is gone: the tenant object is to be deleted.
    pub deleted: bool,
}

/// The engine's durable state.
pub trait SyncStore {
    /// Opens a write transaction. The engine never calls this directly: it
    /// goes through [`Transaction`], which rolls back when dropped.
    fn begin(&mut self) -> Result<(), StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Undoes everything since `begin`; a no-op when no transaction is open
    /// (the database may have rolled back by itself after an IO error).
    fn rollback(&mut self) -> Result<(), StoreError>;

    fn watermark(&self, source: &str) -> Result<Option<Watermark>, StoreError>;
    fn set_watermark(&mut self, source: &str, watermark: &Watermark) -> Result<(), StoreError>;
    /// A hash of the effective configuration the last full sync ran with.
    fn config_hash(&self, source: &str) -> Result<Option<String>, StoreError>;
    fn set_config_hash(&mut self, source: &str, hash: &str) -> Result<(), StoreError>;

    /// Stores an imported object; marks it for sync if it changed.
    fn cs_put(&mut self, source: &str, object: &SourceObject) -> Result<(), StoreError>;
    /// Marks an object as gone (it is removed once synced).
    fn cs_delete(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError>;
    /// Every known object's id and DN (for reconciliation).
    fn cs_index(&self, source: &str) -> Result<Vec<(SourceId, Dn)>, StoreError>;
    /// How many live objects the connector space of `source` holds.
    fn cs_count(&self, source: &str) -> Result<usize, StoreError> {
        Ok(self.cs_index(source)?.len())
    }
    fn cs_mark_all_pending(&mut self, source: &str) -> Result<(), StoreError>;
    fn cs_pending(&self, source: &str) -> Result<Vec<SourceId>, StoreError>;
    /// The object and whether it is marked deleted.
    fn cs_get(&self, source: &str, id: &SourceId) -> Result<Option<(SourceObject, bool)>, StoreError>;
    /// The object at `dn`, if the connector space has one.
    fn cs_find(&self, source: &str, dn: &Dn) -> Result<Option<SourceId>, StoreError>;
    /// Objects whose manager or member references point at `dn`.
    fn cs_referencing(&self, source: &str, dn: &Dn) -> Result<Vec<SourceId>, StoreError>;
    fn cs_mark_pending(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError>;
    /// Sync is done with the object: clears the mark, removes deleted ones.
    fn cs_done(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError>;

    /// The metaverse object projected from the source object at `dn`.
    fn mv_for_dn(&self, source: &str, dn: &Dn) -> Result<Option<String>, StoreError>;
    /// The metaverse objects of those of `dns` that have one (any order); a
    /// store may resolve a large group's members in one query.
    fn mv_for_dns(&self, source: &str, dns: &[Dn]) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::with_capacity(dns.len());
        for dn in dns {
            out.extend(self.mv_for_dn(source, dn)?);
        }
        Ok(out)
    }
    /// Creates or updates the metaverse object of a source object; marks it
    /// for export if it changed. Returns its id.
    fn mv_project(
        &mut self,
        source: &str,
        id: &SourceId,
        projection: &Projection,
        manager: Option<String>,
        members: Vec<String>,
    ) -> Result<String, StoreError>;
    /// The attributes of the live metaverse object linked to this source object.
    fn mv_attrs(&self, source: &str, id: &SourceId) -> Result<Option<serde_json::Map<String, Json>>, StoreError>;
    /// The source object left scope or was deleted: its metaverse object goes.
    fn mv_disconnect(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError>;

    /// Live metaverse objects of `kind` projected by another source whose
    /// `mv_attr` equals `value` (case-insensitively).
    fn join_candidates(
        &mut self,
        source: &str,
        kind: ObjectKind,
        mv_attr: &str,
        value: &str,
    ) -> Result<Vec<String>, StoreError>;
    /// The metaverse object this source object is joined to.
    fn join_link(&self, source: &str, id: &SourceId) -> Result<Option<String>, StoreError>;
    /// Joins (or updates the join of) a source object to `mv` with the
    /// attributes it contributes; marks `mv` for export if anything changed.
    fn join_put(
        &mut self,
        source: &str,
        id: &SourceId,
        mv: &str,
        attrs: &serde_json::Map<String, Json>,
        authoritative: &[String],
    ) -> Result<(), StoreError>;
    /// Removes a join; its metaverse object is exported without the contribution.
    fn join_remove(&mut self, source: &str, id: &SourceId) -> Result<(), StoreError>;
    /// Marks the source's objects without a join for another attempt.
    fn join_retry_unlinked(&mut self, source: &str) -> Result<(), StoreError>;
    /// Marks every metaverse object of `source` for export planning (the
    /// outbound rules changed: what the tenant should hold may differ).
    fn mv_mark_dirty(&mut self, source: &str) -> Result<(), StoreError>;

    /// Password hash sync: users whose password was read but not yet
    /// confirmed by the target (ids only — never the secret). They are read
    /// again next cycle, so a crash or an unreachable tenant loses nothing.
    fn passwords_pending(&self, source: &str) -> Result<Vec<SourceId>, StoreError>;
    fn set_password_pending(&mut self, source: &str, id: &SourceId, pending: bool) -> Result<(), StoreError>;

    /// Metaverse objects with something to export: users and contacts, then groups, then deletions.
    fn dirty(&self) -> Result<Vec<String>, StoreError>;
    fn mv_get(&self, id: &str) -> Result<Option<MvRecord>, StoreError>;
    /// The tenant id and the resource last confirmed by the tenant.
    fn exported(&self, mv: &str) -> Result<Option<(String, Json)>, StoreError>;
    /// Just the tenant id (cheaper than [`SyncStore::exported`]).
    fn exported_id(&self, mv: &str) -> Result<Option<String>, StoreError>;
    /// The tenant ids of those of `mvs` that are exported (any order); a
    /// store may answer a large group's members in one query.
    fn exported_ids(&self, mvs: &[String]) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::with_capacity(mvs.len());
        for m in mvs {
            out.extend(self.exported_id(m)?);
        }
        Ok(out)
    }
    /// The tenant confirmed `resource` for `mv`: remember it, clear dirty and errors.
    fn set_exported(&mut self, mv: &str, tenant_id: &str, resource: &Json) -> Result<(), StoreError>;
    /// The tenant object is gone: forget it (a deleted object's rows go too).
    fn forget_exported(&mut self, mv: &str) -> Result<(), StoreError>;
    fn record_error(&mut self, mv: &str, stage: &str, message: &str) -> Result<(), StoreError>;
    /// The error recorded under `key` is resolved.
    fn clear_error(&mut self, key: &str) -> Result<(), StoreError>;
}

/// One change to send to the target.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportOp {
    Create { kind: ObjectKind, resource: Json },
    Patch { kind: ObjectKind, id: String, operations: Vec<Json> },
    Delete { kind: ObjectKind, id: String },
}

/// The cloud side. `apply` sends a batch and answers per operation, in
/// order: the new object's id for a create, nothing otherwise.
pub trait Target {
    fn apply(&mut self, ops: &[ExportOp]) -> impl Future<Output = Vec<Result<Option<String>, TargetError>>> + Send;

    /// Password hash sync: stores these users' passwords in the target. A
    /// target without passwords refuses them all.
    fn push_credentials(
        &mut self,
        items: &[crate::phs::CredentialPush],
    ) -> impl Future<Output = Result<crate::phs::PushReport, TargetError>> + Send {
        let failed =
            items.iter().map(|i| (i.immutable_id.clone(), "this target does not take passwords".to_string())).collect();
        async move { Ok(crate::phs::PushReport { failed, ..Default::default() }) }
    }
}

#[derive(Debug, Clone)]
pub struct CycleOptions {
    /// Full import and full sync.
    pub full: bool,
    /// Import and sync only; export nothing.
    pub staging: bool,
    /// More deletions than this stop the export before anything is sent.
    pub deletion_threshold: usize,
    /// Let up to this many deletions through this once.
    pub allow_deletes: Option<usize>,
    /// Hash of the effective configuration; a change forces a full sync.
    pub config_hash: String,
    /// The inbound rules.
    pub rules: crate::rules::RuleSet,
    /// Group-based scoping: when not empty, only direct members of these
    /// groups are synchronised.
    pub scope_groups: Vec<Dn>,
    /// Join this source's objects to metaverse objects of other sources.
    pub join: Option<JoinRules>,
    /// Password hash sync for this source's users.
    pub password_sync: bool,
}

/// How a source's objects join metaverse objects projected by other sources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinRules {
    /// Tried in order; in a group every (source attribute, metaverse
    /// attribute) pair must match, and exactly one metaverse object must.
    pub groups: Vec<Vec<(String, String)>>,
    /// An object that joins nothing becomes its own metaverse object.
    pub project: bool,
    /// Metaverse attributes this source's values win for.
    pub authoritative: Vec<String>,
}

impl Default for CycleOptions {
    fn default() -> Self {
        CycleOptions {
            full: false,
            staging: false,
            deletion_threshold: 500,
            allow_deletes: None,
            config_hash: String::new(),
            rules: crate::rules::RuleSet::default(),
            scope_groups: Vec::new(),
            join: None,
            password_sync: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CycleStatus {
    Success,
    CompletedWithErrors,
    Staging,
    StoppedDeletionThresholdExceeded { pending: usize, threshold: usize },
}

impl CycleStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            CycleStatus::Success => "success",
            CycleStatus::CompletedWithErrors => "completed-with-errors",
            CycleStatus::Staging => "staging",
            CycleStatus::StoppedDeletionThresholdExceeded { .. } => "stopped-deletion-threshold-exceeded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleReport {
    pub import_mode: ImportMode,
    pub imported: u64,
    pub deleted_on_premises: u64,
    pub synced: u64,
    pub out_of_scope: u64,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub errors: Vec<(String, String)>,
    /// Passwords stored in the target this cycle (password hash sync).
    pub passwords_synced: u64,
    pub status: CycleStatus,
    /// Milliseconds spent in import, sync and export.
    pub stage_ms: [u64; 3],
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("import from {source_name} failed: {message}")]
    Import { source_name: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Told how a cycle advances (progress display); the engine does no IO itself.
pub trait CycleObserver {
    /// A stage begins: "import", "sync" or "export", with its size when known.
    fn stage(&mut self, name: &'static str, total: Option<u64>);
    /// `n` more objects of the current stage are done.
    fn advance(&mut self, n: u64);
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl CycleObserver for Quiet {
    fn stage(&mut self, _: &'static str, _: Option<u64>) {}
    fn advance(&mut self, _: u64) {}
}

/// Writes imported changes into the connector space as they stream in.
struct ImportWriter<'a, St: SyncStore> {
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
    passwords: Option<HashMap<SourceId, crate::phs::Captured>>,
    /// The source hands passwords out only by replication: users whose
    /// `pwdLastSet` changed (all of them with `all_passwords`) are marked
    /// pending and read after the import.
    replicated_passwords: bool,
    all_passwords: bool,
}

impl<St: SyncStore> ImportWriter<'_, St> {
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

impl<St: SyncStore> ImportSink for ImportWriter<'_, St> {
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
                        crate::phs::Captured {
                            id: obj.id.clone(),
                            dn: obj.entry.dn.clone(),
                            must_change: crate::phs::must_change(&obj.entry),
                            found,
                        },
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

/// Group-based scoping: the normalised DNs of the scope groups' direct
/// members, or `None` when there is no group scope. A change to a scope
/// group marks every object for sync, since any of them may have entered or
/// left scope.
fn scope_members<St: SyncStore>(
    store: &mut St,
    source: &str,
    groups: &[Dn],
    full: bool,
) -> Result<Option<HashSet<String>>, StoreError> {
    if groups.is_empty() {
        return Ok(None);
    }
    let pending: HashSet<SourceId> =
        if full { HashSet::new() } else { store.cs_pending(source)?.into_iter().collect() };
    let mut members = HashSet::new();
    let mut changed = false;
    for group in groups {
        let Some(id) = store.cs_find(source, group)? else {
            tracing::warn!(source, group = %group, "scope group not found in the source: none of its members sync");
            continue;
        };
        changed |= pending.contains(&id);
        if let Some((obj, false)) = store.cs_get(source, &id)? {
            for value in obj.entry.values("member").iter().chain(obj.entry.values("uniqueMember")) {
                if let Some(dn) = value.as_text().and_then(|t| Dn::parse(t).ok()) {
                    members.insert(dn.normalized());
                }
            }
        }
    }
    if changed {
        tracing::info!(source, "a scope group changed: every object is checked against the group scope");
        store.cs_mark_all_pending(source)?;
    }
    Ok(Some(members))
}

/// The metaverse object a source object joins: the first join group with
/// exactly one match. Several matches is an error on the object, recorded
/// and retried each cycle, never a guess.
fn find_join<St: SyncStore>(
    store: &mut St,
    source: &str,
    obj: &SourceObject,
    join: &JoinRules,
) -> Result<Option<String>, StoreError> {
    let error_key = format!("join:{source}:{}", obj.entry.dn);
    store.clear_error(&error_key)?;
    for group in &join.groups {
        let mut matches: Option<HashSet<String>> = None;
        for (source_attr, mv_attr) in group {
            let mut found = HashSet::new();
            for value in obj.entry.values(source_attr) {
                let text = match value {
                    directory::Value::Binary(b) => match directory::Sid::from_bytes(b) {
                        Ok(sid) => sid.to_string(),
                        Err(_) => continue,
                    },
                    other => match other.as_text() {
                        Some(t) if !t.is_empty() => t.to_string(),
                        _ => continue,
                    },
                };
                found.extend(store.join_candidates(source, obj.kind, mv_attr, &text)?);
            }
            matches = Some(match matches {
                None => found,
                Some(before) => before.intersection(&found).cloned().collect(),
            });
        }
        match matches.map(|m| m.into_iter().collect::<Vec<_>>()).as_deref() {
            Some([one]) => {
                tracing::debug!(dn = %obj.entry.dn, mv = %one, "joined");
                return Ok(Some(one.clone()));
            }
            Some(many) if many.len() > 1 => {
                let message = format!(
                    "{} metaverse objects match the join rule {:?}; make the join attributes unique, or add a more specific join group first",
                    many.len(),
                    group.iter().map(|(s, m)| format!("{s} = {m}")).collect::<Vec<_>>().join(" and ")
                );
                tracing::warn!(dn = %obj.entry.dn, "{message}");
                store.record_error(&error_key, "join", &message)?;
                return Ok(None);
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Apply-once flows: an attribute the metaverse object already has keeps its value.
fn keep_applied_once<St: SyncStore>(
    store: &St,
    source: &str,
    id: &SourceId,
    targets: &[&str],
    projection: &mut Projection,
) -> Result<(), StoreError> {
    if targets.is_empty() {
        return Ok(());
    }
    let Some(existing) = store.mv_attrs(source, id)? else { return Ok(()) };
    for target in targets {
        if let Some(v) = existing.get(*target).filter(|v| !v.is_null()) {
            projection.attrs.insert((*target).to_string(), v.clone());
        }
    }
    Ok(())
}

/// Runs one cycle for one source.
pub async fn run_cycle<S, St, T>(
    source_name: &str,
    flavor: Flavor,
    source: &mut S,
    store: &mut St,
    target: &mut T,
    options: &CycleOptions,
    observer: &mut (dyn CycleObserver + Send),
) -> Result<CycleReport, CycleError>
where
    S: Source,
    St: SyncStore + Send,
    T: Target,
{
    let config_changed = store.config_hash(source_name)?.as_deref() != Some(options.config_hash.as_str());
    let full = options.full || config_changed;
    if config_changed && !options.full {
        tracing::info!(
            source = source_name,
            "the configuration changed since the last full sync: running a full import and sync"
        );
    }

    // 1. Import, committed together with the watermark.
    let stage = std::time::Instant::now();
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
                    let dns: HashMap<&SourceId, &Dn> = again.iter().map(|(id, dn)| (id, dn)).collect();
                    let list = writer.passwords.get_or_insert_with(HashMap::new);
                    for (id, found) in found {
                        let Some(dn) = dns.get(&id) else { continue };
                        let captured = crate::phs::Captured {
                            dn: (*dn).clone(),
                            must_change: must_change.get(&id).copied().unwrap_or(false),
                            id: id.clone(),
                            found,
                        };
                        list.insert(id, captured);
                    }
                }
                // Directory sync goes on; the users stay pending and are
                // tried again next cycle.
                Err(e) => {
                    tracing::warn!(source = source_name, error = %e, "password hash sync: cannot read passwords");
                    password_failure = Some(format!("password hash sync: {e}"));
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
    let (seen, imported, deleted_on_premises) = (std::mem::take(&mut writer.seen), writer.imported, writer.deleted);
    let captured_passwords: Vec<_> = writer.passwords.take().map(|m| m.into_values().collect()).unwrap_or_default();
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
    let import_ms = stage.elapsed().as_millis() as u64;
    tracing::info!(
        source = source_name,
        imported,
        deleted = deleted_on_premises + reconciled,
        ms = import_ms,
        "import done"
    );
    let stage = std::time::Instant::now();

    // 2. Inbound sync: every pending connector-space object into the metaverse.
    let mut tx = Transaction::begin(&mut *store)?;
    if full {
        tx.cs_mark_all_pending(source_name)?;
    }
    if config_changed {
        tx.mv_mark_dirty(source_name)?;
    }
    let mut synced = 0;
    let mut out_of_scope = 0;
    let apply_once = options.rules.apply_once_targets();
    let scope = scope_members(&mut *tx, source_name, &options.scope_groups, full)?;
    if options.join.as_ref().is_some_and(|j| !j.project) {
        // What joined nothing may join an object another source projected since.
        tx.join_retry_unlinked(source_name)?;
    }
    // Bounded: each pass handles what the previous one newly pointed at.
    for pass in 0..4 {
        let pending = tx.cs_pending(source_name)?;
        if pending.is_empty() {
            break;
        }
        if pass == 0 {
            observer.stage("sync", Some(pending.len() as u64));
        }
        for id in pending {
            let Some((obj, deleted)) = tx.cs_get(source_name, &id)? else { continue };
            let reason = if deleted {
                Some("deleted on-premises")
            } else if scope.as_ref().is_some_and(|members| !members.contains(&obj.entry.dn.normalized())) {
                Some("not a direct member of a scope group")
            } else {
                mapping::out_of_scope(flavor, &obj)
            };
            if let Some(reason) = reason {
                tracing::debug!(dn = %obj.entry.dn, reason, "not synchronised");
                tx.join_remove(source_name, &id)?;
                tx.mv_disconnect(source_name, &id)?;
                out_of_scope += 1;
            } else {
                let mut projection = mapping::project(flavor, &obj, &options.rules);
                keep_applied_once(&*tx, source_name, &id, &apply_once, &mut projection)?;
                if let Some(join) = &options.join {
                    let linked = match tx.join_link(source_name, &id)? {
                        Some(mv) => Some(mv),
                        None => find_join(&mut *tx, source_name, &obj, join)?,
                    };
                    if let Some(mv) = linked {
                        tx.join_put(source_name, &id, &mv, &projection.attrs, &join.authoritative)?;
                        synced += 1;
                        tx.cs_done(source_name, &id)?;
                        observer.advance(1);
                        continue;
                    }
                    if !join.project {
                        tracing::debug!(dn = %obj.entry.dn, "joins no metaverse object; this source does not project");
                        out_of_scope += 1;
                        tx.cs_done(source_name, &id)?;
                        observer.advance(1);
                        continue;
                    }
                }
                let manager = match &projection.manager {
                    Some(dn) => tx.mv_for_dn(source_name, dn)?,
                    None => None,
                };
                let members = tx.mv_for_dns(source_name, &projection.members)?;
                let is_new = tx.mv_for_dn(source_name, &obj.entry.dn)?.is_none();
                tx.mv_project(source_name, &id, &projection, manager, members)?;
                synced += 1;
                if is_new {
                    // Objects that pointed at this one before it existed now can resolve it.
                    for other in tx.cs_referencing(source_name, &obj.entry.dn)? {
                        if other != id {
                            tx.cs_mark_pending(source_name, &other)?;
                        }
                    }
                }
            }
            tx.cs_done(source_name, &id)?;
            observer.advance(1);
        }
    }
    tx.set_config_hash(source_name, &options.config_hash)?;
    tx.commit()?;
    let sync_ms = stage.elapsed().as_millis() as u64;
    tracing::info!(source = source_name, synced, out_of_scope, ms = sync_ms, "sync done");
    let stage = std::time::Instant::now();

    let mut report = CycleReport {
        import_mode: summary.mode.clone(),
        imported,
        deleted_on_premises: deleted_on_premises + reconciled,
        synced,
        out_of_scope,
        created: 0,
        updated: 0,
        deleted: 0,
        unchanged: 0,
        errors: Vec::new(),
        passwords_synced: 0,
        status: CycleStatus::Success,
        stage_ms: [import_ms, sync_ms, 0],
    };
    if let Some(message) = password_failure {
        report.errors.push((format!("source {source_name}"), message));
    }
    if options.staging {
        report.status = CycleStatus::Staging;
        return Ok(report);
    }

    // 3. Outbound sync and export, one confirmed object at a time.
    // Only ids and references stay in memory; records are read per batch.
    let dirty = store.dirty()?;
    let mut nodes = Vec::with_capacity(dirty.len());
    for id in &dirty {
        if let Some(r) = store.mv_get(id)? {
            nodes.push(Node { id: r.id, deleted: r.deleted, refs: r.manager.into_iter().chain(r.members).collect() });
        }
    }
    let mut deletions = 0;
    for n in nodes.iter().filter(|n| n.deleted) {
        if store.exported_id(&n.id)?.is_some() {
            deletions += 1;
        }
    }
    let allowed = options.allow_deletes.unwrap_or(0).max(options.deletion_threshold);
    if deletions > allowed {
        tracing::warn!(
            pending = deletions,
            threshold = options.deletion_threshold,
            "more deletions pending than the deletion threshold: nothing was exported. Check the changes (idbridge sync preview) and run with --allow-deletes {deletions} if they are right"
        );
        report.status =
            CycleStatus::StoppedDeletionThresholdExceeded { pending: deletions, threshold: options.deletion_threshold };
        push_passwords(store, target, source_name, captured_passwords, &mut report).await?;
        return Ok(report);
    }
    // Levels: an object goes after the objects it refers to that are created
    // in this same run, so references resolve on the first pass. What still
    // waits (reference cycles) gets a second pass at the end.
    let mut exported_ids = HashSet::new();
    for n in &nodes {
        if store.exported_id(&n.id)?.is_some() {
            exported_ids.insert(n.id.clone());
        }
    }
    observer.stage("export", Some(nodes.len() as u64));
    let mut levels = dependency_levels(nodes, &exported_ids);
    for pass in 0..2 {
        let mut waiting = Vec::new();
        for ids in levels.iter().flat_map(|level| level.chunks(EXPORT_BATCH)) {
            let mut chunk = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(r) = store.mv_get(id)? {
                    chunk.push(r);
                }
            }
            let mut plans = Vec::with_capacity(chunk.len());
            for record in &chunk {
                plans.push(plan(store, record, &options.rules)?);
            }
            let ops: Vec<ExportOp> = plans.iter().filter_map(|p| p.op.clone()).collect();
            let mut results = target.apply(&ops).await.into_iter();
            let mut tx = Transaction::begin(&mut *store)?;
            for (record, plan) in chunk.iter().zip(plans) {
                let result = if plan.op.is_some() {
                    results.next().unwrap_or_else(|| {
                        Err(TargetError { message: "the target gave no answer".into(), not_found: false })
                    })
                } else {
                    Ok(None)
                };
                if plan.waiting && pass == 0 {
                    waiting.push(record.id.clone());
                }
                match confirm(&mut *tx, record, plan, result)? {
                    Ok(done) => match done {
                        Exported::Created => report.created += 1,
                        Exported::Updated => report.updated += 1,
                        Exported::Deleted => report.deleted += 1,
                        Exported::Unchanged => report.unchanged += 1,
                    },
                    Err(e) => {
                        let what = format!(
                            "{} {}",
                            record.kind,
                            record
                                .attrs
                                .get("onPremisesDistinguishedName")
                                .and_then(Json::as_str)
                                .unwrap_or(&record.anchor)
                        );
                        tracing::warn!(object = %what, error = %e, "export failed; retried next cycle");
                        report.errors.push((what, e.message));
                    }
                }
            }
            tx.commit()?;
            observer.advance(ids.len() as u64);
        }
        levels = vec![waiting];
    }
    report.stage_ms[2] = stage.elapsed().as_millis() as u64;
    tracing::info!(
        created = report.created,
        updated = report.updated,
        deleted = report.deleted,
        errors = report.errors.len(),
        ms = report.stage_ms[2],
        "export done"
    );
    push_passwords(store, target, source_name, captured_passwords, &mut report).await?;
    if !report.errors.is_empty() {
        report.status = CycleStatus::CompletedWithErrors;
    }
    Ok(report)
}

/// Password hash sync after export: each captured password goes to the
/// tenant user its object was exported as. Failures are object errors
/// (retried when the password is next seen), never the cycle's end.
async fn push_passwords<St: SyncStore, T: Target>(
    store: &mut St,
    target: &mut T,
    source_name: &str,
    captured: Vec<crate::phs::Captured>,
    report: &mut CycleReport,
) -> Result<(), StoreError> {
    use crate::phs::{CredentialPush, Found};
    if captured.is_empty() {
        return Ok(());
    }
    let mut batch = Vec::with_capacity(captured.len());
    let mut whose = std::collections::HashMap::new();
    let mut tx = Transaction::begin(&mut *store)?;
    for c in captured {
        let mv = match tx.join_link(source_name, &c.id)? {
            Some(mv) => Some(mv),
            None => tx.mv_for_dn(source_name, &c.dn)?,
        };
        let Some(mv) = mv else {
            // Out of scope: nobody to sign in as.
            tx.set_password_pending(source_name, &c.id, false)?;
            continue;
        };
        if tx.exported_id(&mv)?.is_none() {
            continue; // its export failed this cycle: stays pending, read again next cycle
        }
        let Some(record) = tx.mv_get(&mv)? else { continue };
        match c.found {
            Found::Secret(secret) => {
                whose.insert(record.anchor.clone(), (mv, c.dn, c.id));
                batch.push(CredentialPush { immutable_id: record.anchor, secret, must_change: c.must_change });
            }
            Found::Unusable(why) => {
                let message = format!("password hash sync: {why}");
                tracing::warn!(object = %c.dn, reason = %why, "password not synchronised");
                tx.record_error(&mv, "password", &message)?;
                tx.set_password_pending(source_name, &c.id, false)?;
                report.errors.push((format!("User {}", c.dn), message));
            }
        }
    }
    tx.commit()?;
    if batch.is_empty() {
        return Ok(());
    }
    match target.push_credentials(&batch).await {
        Ok(pushed) => {
            report.passwords_synced += pushed.stored;
            let mut tx = Transaction::begin(&mut *store)?;
            let failed: HashSet<&String> = pushed.failed.iter().map(|(id, _)| id).collect();
            for (immutable_id, (_, _, id)) in &whose {
                if !failed.contains(immutable_id) {
                    tx.set_password_pending(source_name, id, false)?;
                }
            }
            for (immutable_id, why) in &pushed.failed {
                if let Some((mv, dn, _)) = whose.get(immutable_id) {
                    let message = format!("password hash sync: {why}");
                    tx.record_error(mv, "password", &message)?;
                    report.errors.push((format!("User {dn}"), message));
                }
            }
            tx.commit()?;
            tracing::info!(
                source = source_name,
                stored = pushed.stored,
                unchanged = pushed.unchanged,
                "password hash sync done"
            );
        }
        Err(e) => {
            tracing::warn!(source = source_name, error = %e.message, "password hash sync failed; the passwords are sent again when next imported");
            report.errors.push(("password hash sync".into(), e.message));
        }
    }
    Ok(())
}

/// Orders records so that each comes after the not-yet-exported records it
/// refers to (manager, members); a reference cycle is cut where it closes.
fn dependency_levels(records: Vec<Node>, exported: &HashSet<String>) -> Vec<Vec<String>> {
    use std::collections::HashMap;
    let index: HashMap<&str, usize> = records.iter().enumerate().map(|(i, r)| (r.id.as_str(), i)).collect();
    let deps: Vec<Vec<usize>> = records
        .iter()
        .map(|r| {
            r.refs.iter().filter(|d| !exported.contains(*d)).filter_map(|d| index.get(d.as_str()).copied()).collect()
        })
        .collect();
    // Iterative depth-first levels; 0 = no pending dependency.
    let mut level: Vec<Option<usize>> = vec![None; records.len()];
    let mut on_stack = vec![false; records.len()];
    for start in 0..records.len() {
        if level[start].is_some() {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        on_stack[start] = true;
        while let Some((node, next)) = stack.pop() {
            if let Some(&dep) = deps[node].get(next) {
                stack.push((node, next + 1));
                if level[dep].is_none() && !on_stack[dep] {
                    on_stack[dep] = true;
                    stack.push((dep, 0));
                }
                continue;
            }
            // All dependencies visited (a cycle's back edge counts as level 0).
            let l = deps[node].iter().map(|d| level[*d].map_or(0, |x| x + 1)).max().unwrap_or(0);
            level[node] = Some(l);
            on_stack[node] = false;
        }
    }
    let depth = level.iter().filter_map(|l| *l).max().unwrap_or(0);
    let mut out: Vec<Vec<String>> = (0..=depth).map(|_| Vec::new()).collect();
    for (r, l) in records.into_iter().zip(level) {
        if let Some(bucket) = out.get_mut(l.unwrap_or(0)) {
            bucket.push(r.id);
        }
    }
    out
}

/// What export ordering needs of a metaverse object: its id and references.
#[derive(Debug)]
struct Node {
    id: String,
    deleted: bool,
    refs: Vec<String>,
}

/// Objects per batch sent to the target (SCIM Bulk allows 1,000 operations).
const EXPORT_BATCH: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exported {
    Created,
    Updated,
    Deleted,
    Unchanged,
}

/// What exporting one object takes, decided before anything is sent.
#[derive(Debug)]
struct Plan {
    op: Option<ExportOp>,
    desired: Option<Json>,
    tenant_id: Option<String>,
    /// A manager or member is not in the tenant yet.
    waiting: bool,
}

fn plan<St: SyncStore>(store: &St, record: &MvRecord, rules: &crate::rules::RuleSet) -> Result<Plan, StoreError> {
    let existing = store.exported(&record.id)?;
    if record.deleted {
        let op = existing.as_ref().map(|(id, _)| ExportOp::Delete { kind: record.kind, id: id.clone() });
        return Ok(Plan { op, desired: None, tenant_id: existing.map(|(id, _)| id), waiting: false });
    }
    let manager = match &record.manager {
        Some(m) => store.exported_id(m)?,
        None => None,
    };
    let members = store.exported_ids(&record.members)?;
    let waiting = (record.manager.is_some() && manager.is_none()) || members.len() < record.members.len();
    let desired = mapping::desired_resource(
        &MvView { kind: record.kind, anchor: &record.anchor, attrs: &record.attrs },
        manager.as_deref(),
        &members,
        rules,
    );
    Ok(match existing {
        None => Plan {
            op: Some(ExportOp::Create { kind: record.kind, resource: desired.clone() }),
            desired: Some(desired),
            tenant_id: None,
            waiting,
        },
        Some((id, exported)) => {
            let operations = mapping::patch_operations(&exported, &desired);
            let op =
                (!operations.is_empty()).then(|| ExportOp::Patch { kind: record.kind, id: id.clone(), operations });
            Plan { op, desired: Some(desired), tenant_id: Some(id), waiting }
        }
    })
}

/// Records the target's answer for one planned export (inside the caller's transaction).
fn confirm<St: SyncStore>(
    store: &mut St,
    record: &MvRecord,
    plan: Plan,
    result: Result<Option<String>, TargetError>,
) -> Result<Result<Exported, TargetError>, StoreError> {
    let created_id: Option<String> = match (result, &plan.op) {
        (Err(e), Some(ExportOp::Delete { .. })) if e.not_found => None,
        (Err(e), Some(ExportOp::Patch { .. })) if e.not_found => {
            // Deleted in the tenant behind our back: it is created again next cycle.
            store.forget_exported(&record.id)?;
            store.record_error(&record.id, "export", &format!("{e}; it will be created again"))?;
            return Ok(Err(TargetError { message: format!("{e}; it will be created again"), not_found: true }));
        }
        (Err(e), _) => {
            store.record_error(&record.id, "export", &e.message)?;
            return Ok(Err(e));
        }
        (Ok(id), _) => id,
    };
    let done = match (&plan.op, plan.desired) {
        (Some(ExportOp::Delete { .. }) | None, None) => {
            store.forget_exported(&record.id)?;
            Exported::Deleted
        }
        (Some(ExportOp::Create { .. }), Some(desired)) => {
            let Some(id) = created_id else {
                store.record_error(&record.id, "export", "the target created the object but gave no id")?;
                return Ok(Err(TargetError { message: "no id in the answer".into(), not_found: false }));
            };
            store.set_exported(&record.id, &id, &desired)?;
            Exported::Created
        }
        (op, Some(desired)) => {
            let id = plan.tenant_id.unwrap_or_default();
            store.set_exported(&record.id, &id, &desired)?;
            if op.is_some() { Exported::Updated } else { Exported::Unchanged }
        }
        (Some(_), None) => Exported::Unchanged,
    };
    if plan.waiting {
        // Stays dirty so the missing references are filled in (this cycle's second pass, or the next).
        store.record_error(&record.id, "export", "a referenced object (manager or member) is not in the tenant yet")?;
    }
    Ok(Ok(done))
}

/// One export the next cycle will send (for `sync preview`).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingExport {
    pub kind: ObjectKind,
    /// The on-premises DN, or the immutableId.
    pub object: String,
    pub action: &'static str,
    /// Per attribute: (path, old value, new value); members as added/removed ids.
    pub changes: Vec<(String, Json, Json)>,
    /// A referenced object is not in the tenant yet.
    pub waiting: bool,
}

fn old_value(exported: &Json, path: &str) -> Json {
    match path.rsplit_once(':') {
        Some((urn, attr)) if path.starts_with("urn:") => {
            exported.get(urn).and_then(|e| e.get(attr)).cloned().unwrap_or(Json::Null)
        }
        _ => exported.get(path).cloned().unwrap_or(Json::Null),
    }
}

/// What the next export would send, computed from the store without sending.
pub fn pending_exports<St: SyncStore>(
    store: &St,
    rules: &crate::rules::RuleSet,
) -> Result<Vec<PendingExport>, StoreError> {
    let mut out = Vec::new();
    for id in store.dirty()? {
        let Some(record) = store.mv_get(&id)? else { continue };
        let plan = plan(store, &record, rules)?;
        let object = record
            .attrs
            .get("onPremisesDistinguishedName")
            .and_then(Json::as_str)
            .unwrap_or(&record.anchor)
            .to_string();
        let exported = store.exported(&record.id)?.map(|(_, r)| r).unwrap_or(Json::Null);
        let (action, changes) = match &plan.op {
            Some(ExportOp::Create { resource, .. }) => {
                let mut changes = Vec::new();
                if let Some(obj) = resource.as_object() {
                    for (k, v) in obj.iter().filter(|(k, _)| *k != "schemas") {
                        changes.push((k.clone(), Json::Null, v.clone()));
                    }
                }
                ("create", changes)
            }
            Some(ExportOp::Patch { operations, .. }) => {
                let changes = operations
                    .iter()
                    .map(|op| {
                        let path = op["path"].as_str().unwrap_or_default().to_string();
                        match op["op"].as_str() {
                            Some("add") => (path, Json::Null, op["value"].clone()),
                            Some("remove") if path.starts_with("members[") => (path, json_str("member"), Json::Null),
                            Some("remove") => {
                                let old = old_value(&exported, &path);
                                (path, old, Json::Null)
                            }
                            _ => {
                                let old = old_value(&exported, &path);
                                (path, old, op["value"].clone())
                            }
                        }
                    })
                    .collect();
                ("update", changes)
            }
            Some(ExportOp::Delete { .. }) => ("delete", Vec::new()),
            None => continue,
        };
        out.push(PendingExport { kind: record.kind, object, action, changes, waiting: plan.waiting });
    }
    Ok(out)
}

fn json_str(s: &str) -> Json {
    Json::String(s.to_string())
}
