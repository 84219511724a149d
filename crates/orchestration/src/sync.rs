//! The sync engine as configured by `idbridge.toml`: the daemon loop with
//! back-off, one-shot and full runs, the full password resync, preview,
//! explain and status.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use config::{Config, SourceConfig};
use connector_scim::ScimTarget;
use serde_json::Value as Json;
use store::StateStore;
use store::lease::LeaseInfo;
use sync::engine::{CycleObserver, CycleOptions, CycleReport, CycleStatus, PendingExport, run_cycle};
use sync::mapping::Flavor;
use sync::rules::RuleSet;

use crate::sources::Directory;
use crate::state::{ActiveWriter, Writer};
use crate::{Error, IoContext, Result};

/// Version of the built-in mapping; part of the configuration fingerprint,
/// so a new mapping triggers a full sync by itself.
pub const MAPPING_VERSION: &str = "default-mapping-2";

/// The configuration at `path` and its sync store, to read (alongside a
/// running daemon).
pub fn open(path: &Path) -> Result<(Config, Box<dyn StateStore>)> {
    let config = Config::load(path)?;
    let store = crate::state::open_reader(&config)?;
    Ok((config, store))
}

/// The effective rules and a text that changes whenever they do (for the
/// configuration fingerprint).
pub fn load_rules(config: &Config) -> Result<(RuleSet, String)> {
    let mut files = Vec::new();
    for path in &config.sync.rules {
        let text = std::fs::read_to_string(path).on("read the rule file", path)?;
        files.push((path.display().to_string(), text));
    }
    let set = RuleSet::load(&files)?;
    let names: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
    for rule in set.rules() {
        if let Some(unknown) = rule.sources.iter().find(|s| !names.contains(&s.as_str())) {
            return Err(Error::Refused(format!(
                "{}: rule {:?}: sources names {unknown:?}, which is no [[source]] of this configuration (there are: {})",
                rule.file,
                rule.name,
                names.join(", ")
            )));
        }
    }
    let fingerprint = files.iter().map(|(n, t)| format!("{n}\n{t}")).collect::<Vec<_>>().join("\n--\n");
    Ok((set, fingerprint))
}

/// How `run` runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// One cycle per source, then return.
    pub once: bool,
    /// The first cycle is a full import and full sync.
    pub full: bool,
    /// Let this many deletions through the first cycle, above the deletion threshold.
    pub allow_deletes: Option<usize>,
}

/// What `run` tells its caller as it goes.
pub trait CycleEvents: Send {
    /// Told each stage's progress.
    fn observer(&mut self) -> &mut (dyn CycleObserver + Send);
    /// A source's cycle finished (recorded in the store already).
    fn finished(&mut self, source: &str, report: &CycleReport, elapsed: Duration);
    /// A daemon's round failed; the next one starts after `retry_in`.
    fn failed(&mut self, error: &Error, retry_in: Duration);
    /// PostgreSQL state: another daemon is active; this one waits (told
    /// again when the holder changes).
    fn standby(&mut self, _active: &LeaseInfo) {}
    /// PostgreSQL state: this daemon took the lease and runs cycles now.
    fn active(&mut self, _epoch: i64) {}
    /// A source's groups were written back (after its cycle).
    fn groups_written(&mut self, _report: &crate::group_writeback::GroupWriteback) {}
    /// The metrics and readiness to keep current (`--metrics-listen`).
    fn telemetry(&self) -> Option<&Telemetry> {
        None
    }
}

/// What a daemon reports to monitoring: metrics, and readiness (ready once
/// it runs cycles or waits as a standby; not ready, with the reason, while
/// its cycles fail or its state cannot be opened).
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub metrics: telemetry::SyncMetrics,
    pub health: std::sync::Arc<telemetry::Health>,
}

impl Telemetry {
    fn cycle(&self, report: &proto::hybrid::SyncReport, errors_waiting: usize) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        self.metrics.cycle(report, errors_waiting as u64, now);
        self.health.set_ready();
    }
}

/// The engine's settings for one configured source.
fn cycle_options(config: &Config, src: &SourceConfig, rules: &RuleSet, rules_text: &str) -> Result<CycleOptions> {
    Ok(CycleOptions {
        staging: config.sync.staging,
        deletion_threshold: config.sync.deletion_threshold,
        config_hash: src.sync_fingerprint(MAPPING_VERSION, rules_text)?,
        rules: rules.clone(),
        scope_groups: src.scope_groups()?,
        join: src.join.as_ref().map(|j| j.to_rules(&src.name)).transpose()?,
        password_sync: src.password_hash_sync,
        ..CycleOptions::default()
    })
}

/// Runs sync cycles for every configured source, one after the other (a
/// source with `[source.join]` joins objects of the sources before it):
/// once, or as a daemon until `shutdown` completes. A daemon outlives a
/// failed round: it backs off (doubling up to a minute, never below the
/// interval) and the next round reconnects and resumes.
///
/// With the state in PostgreSQL, a daemon first waits as a standby until
/// it holds the lease (at once if no other daemon is active), and goes
/// back to waiting if it loses it; `once` refuses while another is active.
pub async fn run(
    config_path: &Path,
    options: RunOptions,
    events: &mut dyn CycleEvents,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let config = Config::load(config_path)?;
    let mut target = tenant_target(&config, config_path)?;
    if let Some(t) = events.telemetry() {
        let metrics = t.metrics.clone();
        metrics.set_interval(config.sync.interval_secs);
        target.observe = Some(connector_scim::Observer(std::sync::Arc::new(move |status| {
            metrics.export_response(status);
        })));
    }
    let (rules, rules_text) = load_rules(&config)?;
    let mut sources = Vec::new();
    for src in &config.sources {
        let cycle = cycle_options(&config, src, &rules, &rules_text)?;
        sources.push((src.name.clone(), Directory::open(src)?, cycle));
    }
    tokio::pin!(shutdown);
    if options.once {
        let mut writer = crate::state::open_writer_now(&config).await?;
        if let Some(lease) = &writer.lease {
            let fence = lease.fence();
            target.fence =
                Some(proto::hybrid::SyncFence { lineage: fence.lineage().to_string(), epoch: fence.epoch() });
        }
        return cycles(&config, options, &mut writer, &mut sources, &mut target, events, &mut shutdown).await;
    }
    let standby_poll = Duration::from_secs(1);
    let mut last_holder: Option<String> = None;
    let mut failures: u32 = 0;
    let mut first = options;
    loop {
        let pause = match crate::state::open_writer(&config) {
            Ok(Ok(mut writer)) => {
                failures = 0;
                last_holder = None;
                if let Some(t) = events.telemetry() {
                    t.metrics.set_lease_held(true);
                }
                if let Some(lease) = &writer.lease {
                    let fence = lease.fence();
                    events.active(fence.epoch());
                    target.fence =
                        Some(proto::hybrid::SyncFence { lineage: fence.lineage().to_string(), epoch: fence.epoch() });
                }
                match cycles(&config, first, &mut writer, &mut sources, &mut target, events, &mut shutdown).await {
                    Err(Error::LeaseLost) => {
                        if let Some(t) = events.telemetry() {
                            t.metrics.set_lease_held(false);
                        }
                        // Only the first round of this process is the full one asked for.
                        first = RunOptions { full: false, allow_deletes: None, ..first };
                        standby_poll
                    }
                    other => return other,
                }
            }
            Ok(Err(holder)) => {
                if let Some(t) = events.telemetry() {
                    t.metrics.set_lease_held(false);
                    t.health.set_ready();
                }
                if last_holder.as_ref() != Some(&holder.holder) {
                    events.standby(&holder);
                    last_holder = Some(holder.holder.clone());
                }
                standby_poll
            }
            // A state that cannot be opened (the database is down): wait as a daemon does.
            Err(e) if matches!(config.sync.state, config::StateLocation::Postgres(_)) => {
                if let Some(t) = events.telemetry() {
                    t.health.set_not_ready(format!("the sync state cannot be opened: {e}"));
                }
                failures += 1;
                let wait = Duration::from_secs((1u64 << failures.min(5)).min(30));
                events.failed(&e, wait);
                wait
            }
            Err(e) => return Err(e),
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}

/// The daemon's rounds on an opened state, until shutdown (or one round
/// with `once`); [`Error::LeaseLost`] when a PostgreSQL lease is lost.
async fn cycles(
    config: &Config,
    options: RunOptions,
    writer: &mut Writer,
    sources: &mut [(String, Directory, CycleOptions)],
    target: &mut ScimTarget,
    events: &mut dyn CycleEvents,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<()> {
    let mut first = true;
    let mut failures: u32 = 0;
    let mut taken_over = std::sync::Arc::default();
    loop {
        if !writer.may_write() {
            return Err(Error::LeaseLost);
        }
        // The groups the cloud manages, once per round: taken-over groups
        // are left out of every export, and writeback writes them all. When
        // the tenant cannot say (it is down: the export will fail too), the
        // last round's taken-over groups stay out and nothing is written back.
        let cloud = match crate::group_writeback::read(target).await {
            Ok(c) => {
                taken_over = std::sync::Arc::new(c.taken_over());
                Some(c)
            }
            Err(e) => {
                tracing::warn!(error = %e, "group writeback waits for the next round");
                None
            }
        };
        let mut outcome = Ok(false);
        for (name, source, cycle) in sources.iter_mut() {
            let mut cycle = cycle.clone();
            cycle.cloud_managed = std::sync::Arc::clone(&taken_over);
            cycle.full = options.full && first;
            cycle.allow_deletes = if first { options.allow_deletes } else { None };
            if cycle.allow_deletes.is_none() {
                // Deletions an administrator allowed in the console, once.
                cycle.allow_deletes = target.deletion_allowance(name).await;
            }
            let mut fenced = Fenced { inner: &mut *target, lease: writer.lease.as_ref() };
            let interval = config.sync.interval_secs;
            let mut result = one_cycle(name, source, &mut *writer.store, &mut fenced, &cycle, interval, events).await;
            if result.is_ok()
                && !cycle.staging
                && !fenced.lost()
                && let Some(cloud) = &cloud
                && let Some(src) = config.sources.iter().find(|s| s.name == *name)
            {
                match crate::group_writeback::write_back(src, &*writer.store, cloud, cycle.deletion_threshold).await {
                    Ok(Some(written)) => events.groups_written(&written),
                    Ok(None) => {}
                    Err(e) => result = Err(e),
                }
            }
            if let Err(e) = &result
                && !fenced.lost()
            {
                let report = proto::hybrid::SyncReport {
                    status: "failed".into(),
                    error: Some(e.to_string()),
                    ..report_base(name, &cycle, interval)
                };
                send_report(fenced.inner, &report).await;
            }
            if let (Some(t), Err(e)) = (events.telemetry(), &result) {
                t.metrics.failed(name);
                t.health.set_not_ready(format!("source {name}: {e}"));
            }
            if let Err(e) = &result
                && writer.may_write()
                && let Err(record) = writer.store.record_failed_run(name, &e.to_string())
            {
                tracing::warn!(error = %record, "the failed cycle could not be recorded");
            }
            outcome = match (outcome, result) {
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
                (Ok(stopped), Ok(now)) => Ok(stopped || now),
            };
        }
        if !writer.may_write() {
            return Err(Error::LeaseLost);
        }
        answer_lineage(config, &*writer.store, target).await;
        let pause = match outcome {
            Ok(stopped_by_threshold) => {
                failures = 0;
                first = false;
                if options.once {
                    return if stopped_by_threshold { Err(Error::DeletionThreshold) } else { Ok(()) };
                }
                Duration::from_secs(config.sync.interval_secs)
            }
            Err(e) if options.once => return Err(e),
            Err(e) => {
                failures += 1;
                // 2 s doubling to a minute, whatever the interval: a daemon
                // woken by pushes may run with an hour's interval, and a
                // directory that restarts should be read again soon.
                let wait = Duration::from_secs((1u64 << failures.min(6)).min(60));
                events.failed(&e, wait);
                wait
            }
        };
        // OpenLDAP (refreshAndPersist) and AD (change notifications) push
        // changes: wake up at once — for a change in any source, under any
        // of its bases — instead of waiting the whole interval. Sources that
        // cannot push (files, servers refusing) are read by the cycle the
        // interval (or another source's push) starts.
        let healthy = failures == 0;
        let wait = async {
            if pause.is_zero() {
                return;
            }
            let deadline = tokio::time::Instant::now() + pause;
            if healthy {
                let watches: Vec<sync::ChangeWatch<'_, std::convert::Infallible>> = sources
                    .iter_mut()
                    .map(|(_, source, _)| -> sync::ChangeWatch<'_, std::convert::Infallible> {
                        Box::pin(async move { Ok(source.wait_for_change(pause).await) })
                    })
                    .collect();
                if sync::first_change(watches).await.unwrap_or(false) {
                    return;
                }
            }
            tokio::time::sleep_until(deadline).await;
        };
        tokio::select! {
            () = wait => {}
            () = shutdown.as_mut() => return Ok(()),
        }
    }
}

/// The export target: the configured tenant.
fn tenant_target(config: &Config, config_path: &Path) -> Result<ScimTarget> {
    let Some(tenant) = config.tenant.as_ref() else {
        return Err(Error::Refused(format!(
            "{}: a [tenant] section (url, token_file) is needed to sync",
            config_path.display()
        )));
    };
    Ok(ScimTarget::new(
        &tenant.url,
        tenant.token()?,
        tenant.ca_file.as_deref(),
        Duration::from_secs(tenant.timeout_secs),
    )?)
}

/// The objects waiting in the tenant for a value another object holds:
/// who holds it and why (`idbridge sync errors`).
pub async fn quarantine(config_path: &Path) -> Result<proto::hybrid::QuarantineList> {
    let config = Config::load(config_path)?;
    let target = tenant_target(&config, config_path)?;
    target
        .quarantine()
        .await
        .map_err(|e| Error::Refused(format!("the tenant did not list its quarantine: {}", e.message)))
}

/// A full password resync: one full cycle of every source, sending every
/// user's password to the tenant again.
pub async fn resync_passwords(config_path: &Path, events: &mut dyn CycleEvents) -> Result<()> {
    let config = Config::load(config_path)?;
    if !config.sources.iter().any(|s| s.password_hash_sync) {
        return Err(Error::Refused(format!("{}: no [[source]] has password_hash_sync = true", config_path.display())));
    }
    if config.sync.staging {
        return Err(Error::Refused(format!(
            "{}: staging mode is on, and a staging server sends no passwords",
            config_path.display()
        )));
    }
    let options = RunOptions { once: true, full: true, allow_deletes: None };
    run(config_path, options, events, std::future::pending()).await
}

/// The tenant as a lease holder sends to it: nothing once the lease is
/// known lost (the commit fence catches the rest: what a cycle sent
/// after losing the lease is never recorded as done, so the new holder
/// sends it again).
struct Fenced<'a> {
    inner: &'a mut ScimTarget,
    lease: Option<&'a store::lease::Lease>,
}

impl Fenced<'_> {
    fn lost(&self) -> bool {
        self.lease.is_some_and(|l| !l.is_held())
    }
}

const LEASE_LOST: &str = "this daemon lost the sync lease; nothing was sent";

impl<'a> sync::engine::Target for Fenced<'a> {
    fn apply(
        &mut self,
        ops: Vec<sync::engine::ExportOp>,
    ) -> impl Future<Output = sync::engine::Answers> + Send + use<'a> {
        let sending = if self.lost() { Err(ops.len()) } else { Ok(self.inner.apply(ops)) };
        async move {
            match sending {
                Ok(answers) => answers.await,
                Err(n) => {
                    let refused = sync::engine::TargetError { message: LEASE_LOST.into(), not_found: false };
                    vec![Err(refused); n]
                }
            }
        }
    }

    fn push_credentials(
        &mut self,
        items: Vec<sync::phs::CredentialPush>,
    ) -> impl Future<Output = Result<sync::phs::PushReport, sync::engine::TargetError>> + Send + use<'a> {
        let sending = if self.lost() { None } else { Some(self.inner.push_credentials(items)) };
        async move {
            match sending {
                Some(report) => report.await,
                None => Err(sync::engine::TargetError { message: LEASE_LOST.into(), not_found: false }),
            }
        }
    }
}

/// A report's fields every cycle has.
fn report_base(source: &str, options: &CycleOptions, interval_secs: u64) -> proto::hybrid::SyncReport {
    use time::format_description::well_known::Rfc3339;
    proto::hybrid::SyncReport {
        connector: source.to_string(),
        host: crate::state::holder_name(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        finished: time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default(),
        staging: options.staging,
        interval_secs,
        ..proto::hybrid::SyncReport::default()
    }
}

/// Answers the admin console's questions about where objects' values come
/// from (the explanation `idbridge sync explain` prints). A failure costs a
/// warning: the question stays and is answered next round.
async fn answer_lineage(config: &Config, store: &dyn StateStore, target: &ScimTarget) {
    let asked = match target.lineage_requests().await {
        Ok(asked) if asked.is_empty() => return,
        Ok(asked) => asked,
        Err(e) => {
            tracing::debug!(error = %e, "could not ask the tenant for lineage requests");
            return;
        }
    };
    let rules = match load_rules(config) {
        Ok((rules, _)) => rules,
        Err(e) => {
            tracing::warn!(error = %e, "lineage: the rules could not be loaded");
            return;
        }
    };
    let mut objects = Vec::with_capacity(asked.len());
    for anchor in asked.into_iter().take(proto::hybrid::MAX_LINEAGE_OBJECTS) {
        let explained = match explain_in(store, &rules, &anchor) {
            Ok(e) => e,
            Err(Error::Refused(_)) => {
                objects.push(proto::hybrid::ObjectLineage { immutable_id: anchor, ..Default::default() });
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "lineage: the object could not be explained");
                continue;
            }
        };
        objects.push(lineage_of(anchor, explained));
    }
    if let Err(e) = target.send_lineage(&proto::hybrid::LineageBatch { objects }).await {
        tracing::warn!(error = %e, "lineage: the answers did not reach the tenant");
    }
}

/// An explanation as the tenant stores it.
fn lineage_of(anchor: String, e: Explanation) -> proto::hybrid::ObjectLineage {
    let text = |t: String| t.chars().take(2048).collect::<String>();
    proto::hybrid::ObjectLineage {
        immutable_id: anchor,
        found: true,
        source: e.source,
        source_object: text(e.dn),
        joined: e
            .joined
            .into_iter()
            .take(proto::hybrid::MAX_LINEAGE_ATTRIBUTES)
            .map(|(dn, source)| text(format!("{source}: {dn}")))
            .collect(),
        attributes: e
            .attributes
            .into_iter()
            .take(proto::hybrid::MAX_LINEAGE_ATTRIBUTES)
            .map(|a| proto::hybrid::AttributeLineage {
                attribute: text(a.path),
                outbound: text(a.outbound.to_string()),
                inbound: a.inbound.map(|i| text(i.to_string())),
            })
            .collect(),
    }
}

/// What a finished cycle tells the tenant.
fn cycle_report(
    source: &str,
    options: &CycleOptions,
    interval_secs: u64,
    report: &CycleReport,
) -> proto::hybrid::SyncReport {
    let held = match report.status {
        CycleStatus::StoppedDeletionThresholdExceeded { pending, .. } => pending as u64,
        _ => 0,
    };
    proto::hybrid::SyncReport {
        status: if held > 0 { "stopped" } else { "success" }.into(),
        stage_ms: report.stage_ms,
        imported: report.imported,
        deleted_on_premises: report.deleted_on_premises,
        synced: report.synced,
        out_of_scope: report.out_of_scope,
        created: report.created,
        updated: report.updated,
        deleted: report.deleted,
        unchanged: report.unchanged,
        failed: report.error_count(),
        passwords: report.passwords_synced,
        deletions_held: held,
        errors: report
            .errors
            .iter()
            .take(proto::hybrid::MAX_REPORTED_ERRORS)
            .map(|(object, message)| proto::hybrid::ReportedError {
                object: object.chars().take(1024).collect(),
                message: message.chars().take(2048).collect(),
            })
            .collect(),
        error: report.password_failure.as_ref().map(|f| f.to_string().chars().take(4096).collect()),
        held_deletions: report
            .held_deletions
            .iter()
            .take(proto::hybrid::MAX_REPORTED_DELETIONS)
            .map(|(kind, object, cloud_id)| proto::hybrid::HeldDeletion {
                kind: format!("{kind:?}"),
                object: object.chars().take(1024).collect(),
                cloud_id: cloud_id.chars().take(256).collect(),
            })
            .collect(),
        ..report_base(source, options, interval_secs)
    }
}

/// Sends a report; a tenant that cannot take it costs a warning, never the cycle.
async fn send_report(target: &ScimTarget, report: &proto::hybrid::SyncReport) {
    if let Err(e) = target.report(report).await {
        tracing::warn!(error = %e, connector = %report.connector, "the cycle's report did not reach the tenant");
    }
}

/// One cycle, recorded and reported; `Ok(true)` when the deletion threshold stopped the export.
async fn one_cycle(
    source_name: &str,
    source: &mut Directory,
    store: &mut dyn StateStore,
    target: &mut Fenced<'_>,
    options: &CycleOptions,
    interval_secs: u64,
    events: &mut dyn CycleEvents,
) -> Result<bool> {
    let flavor = source.connect(source_name).await?;
    let started = Instant::now();
    let report = run_cycle(source_name, flavor, source, store, target, options, events.observer())
        .await
        .map_err(|error| Error::Cycle { source_name: source_name.to_string(), error })?;
    store.record_run(source_name, &report)?;
    let summary = cycle_report(source_name, options, interval_secs, &report);
    if !target.lost() {
        send_report(target.inner, &summary).await;
    }
    if let Some(t) = events.telemetry() {
        t.cycle(&summary, store.errors()?.len());
    }
    events.finished(source_name, &report, started.elapsed());
    Ok(matches!(report.status, CycleStatus::StoppedDeletionThresholdExceeded { .. }))
}

/// What the first (or next) export would do, from an import and sync of
/// every source into the configured store in staging mode.
pub async fn preview(path: &Path, observer: &mut (dyn CycleObserver + Send)) -> Result<Vec<PendingExport>> {
    let config = Config::load(path)?;
    let mut writer = crate::state::open_writer_now(&config).await?;
    let store = &mut *writer.store;
    let (rules, rules_text) = load_rules(&config)?;
    for src in &config.sources {
        let mut source = Directory::open(src)?;
        let flavor = source.connect(&src.name).await?;
        let options = CycleOptions { staging: true, ..cycle_options(&config, src, &rules, &rules_text)? };
        let mut nowhere = NoTarget;
        run_cycle(&src.name, flavor, &mut source, &mut *store, &mut nowhere, &options, observer)
            .await
            .map_err(|error| Error::Cycle { source_name: src.name.clone(), error })?;
    }
    Ok(sync::engine::pending_exports(&*store, &rules)?)
}

/// A target that is never called (preview runs in staging mode).
struct NoTarget;

impl sync::engine::Target for NoTarget {
    fn apply(
        &mut self,
        ops: Vec<sync::engine::ExportOp>,
    ) -> impl Future<Output = sync::engine::Answers> + Send + use<> {
        std::future::ready(
            ops.iter()
                .map(|_| Err(sync::engine::TargetError { message: "preview exports nothing".into(), not_found: false }))
                .collect(),
        )
    }
}

/// Where one tenant attribute's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainedAttribute {
    /// The tenant (SCIM) path.
    pub path: String,
    pub value: Json,
    /// The outbound flow that set it.
    pub outbound: sync::rules::Origin,
    /// Where the metaverse attribute the flow read came from (inbound), when it read one.
    pub inbound: Option<sync::rules::Origin>,
}

/// `explain`'s answer for one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub dn: String,
    pub kind: directory::ObjectKind,
    pub source: String,
    pub deleted_on_premises: bool,
    /// Objects of other sources joined to it: (DN, source).
    pub joined: Vec<(String, String)>,
    pub immutable_id: String,
    /// Not yet exported when `None`.
    pub tenant_id: Option<String>,
    pub attributes: Vec<ExplainedAttribute>,
    pub flavor: Flavor,
}

/// Where every tenant attribute of one object comes from: value, flow,
/// source object and attribute. `key`: a userName (UPN), an on-premises DN
/// or an immutableId.
pub fn explain(config_path: &Path, key: &str) -> Result<Explanation> {
    let (config, store) = open(config_path)?;
    let (rules, _) = load_rules(&config)?;
    explain_in(&*store, &rules, key)
}

/// [`explain`] on an open state with loaded rules.
pub fn explain_in(store: &dyn StateStore, rules: &RuleSet, key: &str) -> Result<Explanation> {
    let Some((mv, source, cs_id)) = store.find(key)? else {
        return Err(Error::Refused(format!(
            "no synchronised object has the userName, DN or immutableId {key:?} (objects appear here after a sync cycle)"
        )));
    };
    let Some((obj, deleted)) = store.cs_get(&source, &cs_id)? else {
        return Err(Error::Refused(format!("the source object of {key:?} is no longer in the connector space")));
    };
    let flavor = store.flavor(&source)?.unwrap_or(Flavor::Ldap);
    let (projection, mut origins) = sync::mapping::project_explained(flavor, &source, &obj, rules);
    let mut joined = Vec::new();
    // The store's merge, replayed to say which joined object gave what and why.
    let (mut merged, mut precedence) = (projection.attrs.clone(), projection.precedence.clone());
    for join in store.joined(&mv)? {
        let dn = store.cs_get(&join.source, &join.id)?.map(|(o, _)| o.entry.dn.to_string()).unwrap_or_default();
        let taken = sync::mapping::merge_joined(
            &mut merged,
            &mut precedence,
            join.attrs,
            &join.precedence,
            &join.authoritative,
        );
        for (key, win) in taken {
            origins.retain(|o| o.attribute != key);
            origins.push(sync::rules::Origin::joined(&key, &join.source, &dn, win));
        }
        joined.push((dn, join.source));
    }
    let exported = store.exported(&mv)?;
    let mut explanation = Explanation {
        dn: obj.entry.dn.to_string(),
        kind: obj.kind,
        source,
        deleted_on_premises: deleted,
        joined,
        immutable_id: projection.anchor.clone(),
        tenant_id: exported.as_ref().map(|(id, _)| id.clone()),
        attributes: Vec::new(),
        flavor,
    };
    let Some((_, resource)) = exported else { return Ok(explanation) };
    // The outbound rules, run on the metaverse object as it is now: which
    // rule and metaverse attribute each tenant attribute comes from.
    let Some(record) = store.mv_get(&mv)? else { return Ok(explanation) };
    let manager = match &record.manager {
        Some(m) => store.exported_id(m)?,
        None => None,
    };
    let members = store.exported_ids(&record.members)?;
    let view = sync::mapping::MvView { kind: record.kind, anchor: &record.anchor, attrs: &record.attrs };
    let (_, outbound) = sync::mapping::desired_resource_explained(&view, manager.as_deref(), &members, rules);
    for origin in outbound {
        let Some(value) = sync::outbound::ScimPath::parse_any(&origin.attribute).ok().and_then(|p| p.get(&resource))
        else {
            continue;
        };
        let inbound =
            origin.metaverse_attributes().find_map(|attr| origins.iter().find(|o| o.attribute == attr)).cloned();
        explanation.attributes.push(ExplainedAttribute {
            path: origin.attribute.clone(),
            value,
            outbound: origin,
            inbound,
        });
    }
    Ok(explanation)
}

/// `status`'s answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncStatus {
    pub connector_space: i64,
    pub metaverse: i64,
    pub exported: i64,
    pub pending_export: i64,
    pub staging: bool,
    pub last_cycle: Option<store::RunRow>,
    /// Sources with password hash sync on.
    pub password_sources: Vec<String>,
    /// The last cycle that sent passwords.
    pub last_passwords: Option<store::RunRow>,
    /// Users whose passwords wait to be sent.
    pub passwords_pending: usize,
    /// Users whose password failed.
    pub passwords_failed: usize,
    pub objects_with_errors: usize,
    /// Who runs cycles now.
    pub active: ActiveWriter,
}

/// The last cycle and what is pending.
pub fn status(config_path: &Path) -> Result<SyncStatus> {
    let (config, store) = open(config_path)?;
    let store::Counts { connector_space, metaverse, exported, pending_export } = store.counts()?;
    let password_sources: Vec<String> =
        config.sources.iter().filter(|s| s.password_hash_sync).map(|s| s.name.clone()).collect();
    let errors = store.errors()?;
    let mut status = SyncStatus {
        connector_space,
        metaverse,
        exported,
        pending_export,
        staging: config.sync.staging,
        last_cycle: store.runs(1)?.into_iter().next(),
        last_passwords: None,
        passwords_pending: 0,
        passwords_failed: errors.iter().filter(|e| e.stage == "password").count(),
        objects_with_errors: errors.len(),
        password_sources,
        active: crate::state::active_writer(&config)?,
    };
    if !status.password_sources.is_empty() {
        status.last_passwords = store.runs(200)?.into_iter().find(|r| r.report.passwords > 0);
        for name in &status.password_sources {
            status.passwords_pending += store.passwords_pending(name)?.len();
        }
    }
    Ok(status)
}
