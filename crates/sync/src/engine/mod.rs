//! One sync cycle in four stages — [`import`](self::import) →
//! [`inbound`](self::inbound) sync → [`export`](self::export) →
//! [`passwords`](self::passwords) — over the store and target traits defined
//! here. The engine does IO only through these traits.
//!
//! Crash safety: an import commits together with its watermark; sync commits
//! once it is done; each export is committed right after the target confirmed
//! it. Anything interrupted runs again next cycle, and running it again is
//! harmless: creating an object the tenant already has is a hard match on its
//! immutableId, and replaying a PATCH sets the same values again.

mod export;
mod import;
mod inbound;
pub mod memory;
mod passwords;
mod store;
mod target;
#[cfg(test)]
mod tests;

use directory::{Dn, ObjectKind};

pub use export::{PendingExport, pending_exports};
pub use store::{
    ConnectorSpace, CsEncoder, CsRead, DirtyObject, EncodedCs, EncodedExported, EncodedMv, ExportLog, ExportedEncoder,
    JoinContribution, JoinedRefs, MemberChanges, Metaverse, MvAttrsRead, MvEncoder, MvRecord, Projected, Reads,
    StoreError, SyncStore, Transaction, Transactional,
};
pub use target::{Answers, ExportOp, Resource, Target, TargetError};

use crate::mapping::Flavor;
use crate::source::{ImportMode, Source};

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
    /// The immutableIds of synchronised groups the cloud manages (taken
    /// over): their exports wait, left pending, until handed back.
    pub cloud_managed: std::sync::Arc<std::collections::HashSet<String>>,
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
    /// References this source's joined objects give instead of the
    /// projecting object's.
    pub references: JoinedReferences,
}

/// Which references a joined source gives (`[source.join] references`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinedReferences {
    pub manager: bool,
    pub members: bool,
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
            cloud_managed: std::sync::Arc::default(),
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
    /// Per object: (what, why). Retried next cycle.
    pub errors: Vec<(String, String)>,
    /// Passwords stored in the target this cycle (password hash sync).
    pub passwords_synced: u64,
    /// Password hash sync failed as a whole this cycle (directory sync went on).
    pub password_failure: Option<PasswordFailure>,
    pub status: CycleStatus,
    /// Milliseconds spent in import, sync and export.
    pub stage_ms: [u64; 3],
    /// With a threshold stop: the objects the held deletions would delete
    /// (kind, name or anchor, target id), at most [`MAX_HELD_LISTED`].
    pub held_deletions: Vec<(ObjectKind, String, String)>,
}

/// Most held deletions a report lists (all are counted).
pub const MAX_HELD_LISTED: usize = 1000;

impl CycleReport {
    /// Objects that failed, plus password hash sync when it failed as a whole.
    pub fn error_count(&self) -> u64 {
        self.errors.len() as u64 + u64::from(self.password_failure.is_some())
    }
}

/// Why password hash sync failed as a whole (not for one user): the users
/// stay pending and their passwords are sent next cycle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordFailure {
    /// The directory would not hand out passwords (rights, replication off).
    #[error("password hash sync: {0}")]
    Read(String),
    /// The target refused or could not be reached.
    #[error("password hash sync: {0}")]
    Target(String),
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

/// Where item `n` lies in a list kept end to end, given where each item ends.
fn span(ends: &[usize], n: usize) -> Option<std::ops::Range<usize>> {
    let start = match n.checked_sub(1) {
        Some(previous) => *ends.get(previous)?,
        None => 0,
    };
    Some(start..*ends.get(n)?)
}

/// The 64-bit hash the export's references and contested keys, and the
/// sync stage's waiting references, are kept as (fixed keys: the same in
/// every run).
fn hash64(text: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl CycleObserver for Quiet {
    fn stage(&mut self, _: &'static str, _: Option<u64>) {}
    fn advance(&mut self, _: u64) {}
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
    St: SyncStore + Send + ?Sized,
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

    let stage = std::time::Instant::now();
    let imported = import::import(source_name, source, store, options, full, observer).await?;
    let import_ms = stage.elapsed().as_millis() as u64;
    tracing::info!(
        source = source_name,
        imported = imported.imported,
        deleted = imported.deleted,
        ms = import_ms,
        "import done"
    );

    let stage = std::time::Instant::now();
    let synced = inbound::sync_inbound(source_name, flavor, store, options, full, config_changed, observer)?;
    let sync_ms = stage.elapsed().as_millis() as u64;
    tracing::info!(
        source = source_name,
        synced = synced.synced,
        out_of_scope = synced.out_of_scope,
        ms = sync_ms,
        "sync done"
    );

    let mut report = CycleReport {
        import_mode: imported.mode,
        imported: imported.imported,
        deleted_on_premises: imported.deleted,
        synced: synced.synced,
        out_of_scope: synced.out_of_scope,
        created: 0,
        updated: 0,
        deleted: 0,
        unchanged: 0,
        errors: Vec::new(),
        passwords_synced: 0,
        password_failure: imported.password_failure,
        status: CycleStatus::Success,
        stage_ms: [import_ms, sync_ms, 0],
        held_deletions: Vec::new(),
    };
    if options.staging {
        report.status = CycleStatus::Staging;
        return Ok(report);
    }

    let stage = std::time::Instant::now();
    let sent = export::export(store, target, options, observer, &mut report).await?;
    report.stage_ms[2] = stage.elapsed().as_millis() as u64;
    if sent {
        tracing::info!(
            created = report.created,
            updated = report.updated,
            deleted = report.deleted,
            errors = report.errors.len(),
            ms = report.stage_ms[2],
            "export done"
        );
    }
    // Passwords go even when the threshold held the export back: they only
    // reach users the tenant already has.
    passwords::push_passwords(store, target, source_name, imported.passwords, &mut report).await?;
    if sent && (!report.errors.is_empty() || report.password_failure.is_some()) {
        report.status = CycleStatus::CompletedWithErrors;
    }
    Ok(report)
}
