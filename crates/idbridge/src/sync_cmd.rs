//! `idbridge sync …`: run the engine and see what it did.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use connector_ldap::{LdapSource, ServerKind};
use connector_scim::ScimTarget;
use store::SqliteStore;
use sync::engine::{CycleOptions, CycleStatus, run_cycle};
use sync::mapping::Flavor;

use config::Config;

/// Version of the built-in mapping; part of the configuration hash, so a new
/// mapping triggers a full sync by itself.
const MAPPING_VERSION: &str = "default-mapping-2";

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Run sync cycles: a daemon by default, one cycle with --once.
    Run {
        #[arg(long, default_value = "idbridge.toml")]
        config: PathBuf,
        /// One cycle, then exit.
        #[arg(long)]
        once: bool,
        /// Full import and full sync.
        #[arg(long)]
        full: bool,
        /// Let this many deletions through once, above the deletion threshold.
        #[arg(long)]
        allow_deletes: Option<usize>,
    },
    /// Full password resync: a full import of every source with
    /// password_hash_sync on, sending every user's password to the tenant again.
    ResyncPasswords {
        #[arg(long, default_value = "idbridge.toml")]
        config: PathBuf,
    },
    /// Import and sync without exporting, then show every pending export
    /// per object and attribute (old → new).
    Preview {
        #[arg(long, default_value = "idbridge.toml")]
        config: PathBuf,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
    /// Where every tenant attribute of one object comes from: value, flow,
    /// source object and attribute.
    Explain {
        #[arg(long, default_value = "idbridge.toml")]
        config: PathBuf,
        /// A userName (UPN), an on-premises DN, or an immutableId.
        object: String,
    },
    /// The last cycles and what is pending.
    Status {
        #[arg(long, default_value = "idbridge.toml")]
        config: PathBuf,
    },
    /// Objects that failed to export (retried every cycle).
    Errors {
        #[arg(long, default_value = "idbridge.toml")]
        config: PathBuf,
    },
    /// Past cycles.
    History {
        #[arg(long, default_value = "idbridge.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

fn open_store(config: &Config, config_path: &Path) -> Result<SqliteStore> {
    let path = if config.sync.state.is_absolute() {
        config.sync.state.clone()
    } else {
        config_path.parent().unwrap_or(Path::new(".")).join(&config.sync.state)
    };
    SqliteStore::open(&path).with_context(|| format!("opening the sync store {}", path.display()))
}

pub async fn run(command: SyncCommand) -> Result<()> {
    match command {
        SyncCommand::ResyncPasswords { config: path } => {
            let config = Config::load(&path)?;
            if !config.sources.iter().any(|s| s.password_hash_sync) {
                bail!("{}: no [[source]] has password_hash_sync = true", path.display());
            }
            if config.sync.staging {
                bail!("{}: staging mode is on, and a staging server sends no passwords", path.display());
            }
            eprintln!("full password resync: a full import of every source; every password is sent again");
            Box::pin(run(SyncCommand::Run { config: path, once: true, full: true, allow_deletes: None })).await
        }
        SyncCommand::Run { config: path, once, full, allow_deletes } => {
            let config = Config::load(&path)?;
            if config.sources.is_empty() {
                bail!("{}: no [[source]] is configured", path.display());
            }
            let tenant = config.tenant.as_ref().with_context(|| {
                format!("{}: a [tenant] section (url, token_file) is needed to sync", path.display())
            })?;
            let mut target = ScimTarget::new(
                &tenant.url,
                tenant.token()?,
                tenant.ca_file.as_deref(),
                Duration::from_secs(tenant.timeout_secs),
            )?;
            let mut store = open_store(&config, &path)?;
            let (rules, rules_text) = load_rules(&config, &path)?;
            // Several sources are synchronised one after the other; a source
            // with `[source.join]` joins objects of the sources before it.
            let mut sources = Vec::new();
            for src in &config.sources {
                let settings = src.to_settings()?;
                if let Some(join) = &src.join {
                    join.to_rules(&src.name)?;
                }
                let config_hash = src.sync_fingerprint(MAPPING_VERSION, &rules_text)?;
                let source = LdapSource::new(settings).with_context(|| format!("source {:?}", src.name))?;
                sources.push((src.name.clone(), source, config_hash));
            }
            let mut first = true;
            let mut failures: u32 = 0;
            loop {
                let mut outcome = Ok(false);
                for (name, source, config_hash) in &mut sources {
                    let result = one_cycle(
                        name,
                        source,
                        &mut store,
                        &mut target,
                        &config,
                        config_hash,
                        &rules,
                        full && first,
                        if first { allow_deletes } else { None },
                    )
                    .await
                    .with_context(|| format!("source {name:?}"));
                    if let Err(e) = &result
                        && let Err(record) = store.record_failed_run(name, &format!("{e:#}"))
                    {
                        tracing::warn!(error = %record, "the failed cycle could not be recorded");
                    }
                    outcome = match (outcome, result) {
                        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
                        (Ok(stopped), Ok(now)) => Ok(stopped || now),
                    };
                }
                let pause = match outcome {
                    Ok(stopped_by_threshold) => {
                        failures = 0;
                        first = false;
                        if once {
                            if stopped_by_threshold {
                                bail!("deletion threshold exceeded");
                            }
                            return Ok(());
                        }
                        Duration::from_secs(config.sync.interval_secs)
                    }
                    Err(e) if once => return Err(e),
                    Err(e) => {
                        // A daemon outlives a failed cycle: the next one reconnects and resumes.
                        failures += 1;
                        let wait = Duration::from_secs((1u64 << failures.min(6)).min(60))
                            .max(Duration::from_secs(config.sync.interval_secs));
                        eprintln!("error: {e:#}\nretrying in {} s", wait.as_secs());
                        wait
                    }
                };
                // OpenLDAP pushes changes (refreshAndPersist): wake up at once
                // instead of waiting the whole interval. Elsewhere, just wait.
                let healthy = failures == 0;
                let wait = async {
                    if pause.is_zero() {
                        return;
                    }
                    if let ([(_, source, _)], true) = (sources.as_mut_slice(), healthy) {
                        match source.wait_for_change(pause).await {
                            Ok(Some(_)) => return,
                            Ok(None) => {}
                            Err(e) => tracing::debug!(error = %e, "no change notification; waiting the interval"),
                        }
                    }
                    tokio::time::sleep(pause).await;
                };
                tokio::select! {
                    () = wait => {}
                    _ = tokio::signal::ctrl_c() => { eprintln!("stopping"); return Ok(()); }
                }
            }
        }
        SyncCommand::Preview { config: path, json, csv } => {
            let pending = preview(&path, &mut StageProgress::default()).await?;
            print_preview(&pending, json, csv);
            Ok(())
        }
        SyncCommand::Explain { config: path, object } => {
            let config = Config::load(&path)?;
            let store = open_store(&config, &path)?;
            let (rules, _) = load_rules(&config, &path)?;
            explain(&store, &rules, &object)
        }
        SyncCommand::Status { config: path } => {
            let config = Config::load(&path)?;
            let store = open_store(&config, &path)?;
            let (cs, mv, exported, pending) = store.counts()?;
            crate::out!(
                "connector space: {cs} objects\nmetaverse: {mv} objects\nin the tenant: {exported} objects\npending export: {pending}"
            );
            crate::out!("staging: {}", if config.sync.staging { "on (nothing is exported)" } else { "off" });
            match store.runs(1)?.first() {
                Some(r) => crate::out!("last cycle: #{} {} ({}), {}", r.id, r.status, r.source, r.report),
                None => crate::out!("last cycle: none yet"),
            }
            let phs: Vec<&str> =
                config.sources.iter().filter(|s| s.password_hash_sync).map(|s| s.name.as_str()).collect();
            if phs.is_empty() {
                crate::out!("password hash sync: off");
            } else {
                let last = store.runs(200)?.into_iter().find(|r| r.report["passwords"].as_u64().is_some_and(|n| n > 0));
                match last {
                    Some(r) => crate::out!(
                        "password hash sync: on ({}); last passwords sent: {} at {} ({})",
                        phs.join(", "),
                        r.report["passwords"],
                        r.finished,
                        r.source
                    ),
                    None => crate::out!("password hash sync: on ({}); no passwords sent yet", phs.join(", ")),
                }
                let mut pending = 0;
                for name in &phs {
                    pending += sync::engine::SyncStore::passwords_pending(&store, name)?.len();
                }
                let failed = store.errors()?.iter().filter(|e| e.stage == "password").count();
                crate::out!("passwords waiting to be sent: {pending}; users whose password failed: {failed}");
                if let Some(r) = store.runs(1)?.first()
                    && let Some(message) = r.report["passwordFailure"].as_str()
                {
                    crate::out!("last cycle's password hash sync failed: {message}");
                }
            }
            let errors = store.errors()?;
            crate::out!("objects with errors: {}", errors.len());
            Ok(())
        }
        SyncCommand::Errors { config: path } => {
            let config = Config::load(&path)?;
            let store = open_store(&config, &path)?;
            let errors = store.errors()?;
            if errors.is_empty() {
                crate::out!("no errors");
            }
            for e in errors {
                crate::out!("{}\t{}\t{} attempt(s)\t{}", e.object, e.stage, e.attempts, e.message);
            }
            Ok(())
        }
        SyncCommand::History { config: path, limit } => {
            let config = Config::load(&path)?;
            let store = open_store(&config, &path)?;
            let runs = store.runs(limit)?;
            if runs.is_empty() {
                crate::out!("no cycles yet");
            }
            for r in runs {
                crate::out!("#{}\t{}\t{}\t{}\t{}", r.id, r.finished, r.source, r.status, r.report);
            }
            Ok(())
        }
    }
}

/// What the first (or next) export would do, from an import and sync of
/// every source into the configured store in staging mode.
pub async fn preview(
    path: &Path,
    observer: &mut (dyn sync::engine::CycleObserver + Send),
) -> Result<Vec<sync::engine::PendingExport>> {
    let config = Config::load(path)?;
    let mut store = open_store(&config, path)?;
    let (rules, rules_text) = load_rules(&config, path)?;
    for src in &config.sources {
        let settings = src.to_settings()?;
        let config_hash = src.sync_fingerprint(MAPPING_VERSION, &rules_text)?;
        let mut source = LdapSource::new(settings).with_context(|| format!("source {:?}", src.name))?;
        let (_, profile) = source.connect().await.with_context(|| format!("connecting to source {:?}", src.name))?;
        let flavor = if profile.kind == ServerKind::ActiveDirectory { Flavor::ActiveDirectory } else { Flavor::Ldap };
        let options = CycleOptions {
            staging: true,
            deletion_threshold: config.sync.deletion_threshold,
            config_hash,
            rules: rules.clone(),
            scope_groups: src.scope_groups()?,
            join: src.join.as_ref().map(|j| j.to_rules(&src.name)).transpose()?,
            ..CycleOptions::default()
        };
        let mut nowhere = NoTarget;
        run_cycle(&src.name, flavor, &mut source, &mut store, &mut nowhere, &options, observer)
            .await
            .with_context(|| format!("import and sync of source {:?} for the preview", src.name))?;
    }
    Ok(sync::engine::pending_exports(&store, &rules)?)
}

/// A target that is never called (preview runs in staging mode).
struct NoTarget;

impl sync::engine::Target for NoTarget {
    async fn apply(
        &mut self,
        ops: &[sync::engine::ExportOp],
    ) -> Vec<Result<Option<String>, sync::engine::TargetError>> {
        ops.iter()
            .map(|_| Err(sync::engine::TargetError { message: "preview exports nothing".into(), not_found: false }))
            .collect()
    }
}

fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "∅".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn print_preview(pending: &[sync::engine::PendingExport], json: bool, csv: bool) {
    if json {
        for p in pending {
            let changes: Vec<serde_json::Value> =
                p.changes.iter().map(|(a, o, n)| serde_json::json!({"attribute": a, "old": o, "new": n})).collect();
            crate::out!(
                "{}",
                serde_json::json!({"action": p.action, "kind": p.kind.as_str(), "object": p.object, "waiting": p.waiting, "changes": changes})
            );
        }
        return;
    }
    if csv {
        crate::out!("action,kind,object,attribute,old,new");
        for p in pending {
            if p.changes.is_empty() {
                crate::out!("{},{},{},,,", p.action, p.kind, csv_field(&p.object));
            }
            for (a, o, n) in &p.changes {
                crate::out!(
                    "{},{},{},{},{},{}",
                    p.action,
                    p.kind,
                    csv_field(&p.object),
                    csv_field(a),
                    csv_field(&show(o)),
                    csv_field(&show(n))
                );
            }
        }
        return;
    }
    let (creates, updates, deletes) = pending.iter().fold((0, 0, 0), |(c, u, d), p| match p.action {
        "create" => (c + 1, u, d),
        "update" => (c, u + 1, d),
        _ => (c, u, d + 1),
    });
    crate::out!("{creates} to create, {updates} to update, {deletes} to delete");
    for p in pending {
        crate::out!(
            "{} {} {}{}",
            p.action,
            p.kind,
            p.object,
            if p.waiting { " (waiting for a referenced object)" } else { "" }
        );
        if p.action == "update" {
            for (a, o, n) in &p.changes {
                crate::out!("    {a}: {} → {}", show(o), show(n));
            }
        }
    }
}

/// The value at one of the outbound mapping's tenant paths.
fn explain(store: &SqliteStore, rules: &sync::rules::RuleSet, key: &str) -> Result<()> {
    use sync::engine::SyncStore;
    let Some((mv, source, cs_id)) = store.find(key)? else {
        bail!(
            "no synchronised object has the userName, DN or immutableId {key:?} (objects appear here after a sync cycle)"
        );
    };
    let Some((obj, deleted)) = store.cs_get(&source, &cs_id)? else {
        bail!("the source object of {key:?} is no longer in the connector space")
    };
    let flavor = if obj.entry.has("objectGUID") { Flavor::ActiveDirectory } else { Flavor::Ldap };
    let (projection, mut origin) = sync::mapping::project_explained(flavor, &obj, rules);
    let mut joined_lines = Vec::new();
    for join in store.joined(&mv)? {
        let dn = store.cs_get(&join.source, &join.id)?.map(|(o, _)| o.entry.dn.to_string()).unwrap_or_default();
        joined_lines.push(format!("joined:      {dn} in source {:?}", join.source));
        for key in join.attrs.keys() {
            let wins = join.authoritative.contains(key);
            if wins || !projection.attrs.contains_key(key) {
                let why = if wins { "authoritative" } else { "fills a gap" };
                origin.retain(|(m, _)| m != key);
                origin.push((key.clone(), format!("source {:?} object {dn} (joined, {why})", join.source)));
            }
        }
    }
    let exported = store.exported(&mv)?;
    crate::out!(
        "object:      {} ({}) in source {source:?}{}",
        obj.entry.dn,
        obj.kind,
        if deleted { ", deleted on-premises" } else { "" }
    );
    for line in &joined_lines {
        crate::out!("{line}");
    }
    crate::out!("immutableId: {}  (sourceAnchor, from the source's anchor attribute)", projection.anchor);
    match &exported {
        Some((tenant_id, _)) => crate::out!("tenant id:   {tenant_id}"),
        None => crate::out!("tenant id:   not exported yet (see `idbridge sync preview`)"),
    }
    let Some((_, resource)) = exported else { return Ok(()) };
    // The outbound rules, run on the metaverse object as it is now: which
    // rule and metaverse attribute each tenant attribute comes from.
    let Some(record) = store.mv_get(&mv)? else { return Ok(()) };
    let manager = match &record.manager {
        Some(m) => store.exported_id(m)?,
        None => None,
    };
    let members = store.exported_ids(&record.members)?;
    let view = sync::mapping::MvView { kind: record.kind, anchor: &record.anchor, attrs: &record.attrs };
    let (_, outbound) = sync::mapping::desired_resource_explained(&view, manager.as_deref(), &members, rules);
    crate::out!();
    crate::out!("{:<42} {:<36} from", "tenant attribute", "value");
    for (path, how) in &outbound {
        let Some(value) = sync::outbound::ScimPath::parse_any(path).ok().and_then(|p| p.get(&resource)) else {
            continue;
        };
        // "metaverse jobTitle (rule out-user)" → and where jobTitle came from.
        let upstream = how
            .strip_prefix("metaverse ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|attr| origin.iter().find(|(m, _)| m == attr))
            .map(|(_, from)| format!(" ← {from}"))
            .unwrap_or_default();
        let shown = match &value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(a) if a.len() > 3 => format!("[{} values]", a.len()),
            other => other.to_string(),
        };
        crate::out!("{path:<42} {:<36} {how}{upstream}", shown.chars().take(36).collect::<String>());
    }
    crate::out!(
        "\nflows: outbound rules (built in: crates/sync/src/default-outbound-rules.toml, plus [sync] rules) over the metaverse; inbound from the {} rules and the source attributes of {}",
        if flavor == Flavor::ActiveDirectory { "Active Directory" } else { "LDAP" },
        obj.entry.dn
    );
    Ok(())
}

/// Shows each stage of a cycle as a progress line.
#[derive(Default)]
pub(crate) struct StageProgress {
    current: Option<crate::progress::Progress>,
}

impl sync::engine::CycleObserver for StageProgress {
    fn stage(&mut self, name: &'static str, total: Option<u64>) {
        if let Some(p) = self.current.take() {
            p.finish();
        }
        self.current = Some(crate::progress::Progress::with_total(name, total));
    }

    fn advance(&mut self, n: u64) {
        if let Some(p) = self.current.as_mut() {
            p.inc_by(n);
        }
    }
}

impl Drop for StageProgress {
    fn drop(&mut self) {
        if let Some(p) = self.current.take() {
            p.finish();
        }
    }
}

/// One cycle and its report; `Ok(true)` when the deletion threshold stopped the export.
#[allow(clippy::too_many_arguments)]
async fn one_cycle(
    source_name: &str,
    source: &mut LdapSource,
    store: &mut SqliteStore,
    target: &mut ScimTarget,
    config: &Config,
    config_hash: &str,
    rules: &sync::rules::RuleSet,
    full: bool,
    allow_deletes: Option<usize>,
) -> Result<bool> {
    let (_, profile) = source.connect().await.with_context(|| format!("connecting to source {source_name:?}"))?;
    let flavor = if profile.kind == ServerKind::ActiveDirectory { Flavor::ActiveDirectory } else { Flavor::Ldap };
    let options = CycleOptions {
        full,
        staging: config.sync.staging,
        deletion_threshold: config.sync.deletion_threshold,
        allow_deletes,
        config_hash: config_hash.to_string(),
        rules: rules.clone(),
        scope_groups: config.source(Some(source_name))?.scope_groups()?,
        join: config.source(Some(source_name))?.join.as_ref().map(|j| j.to_rules(source_name)).transpose()?,
        password_sync: config.source(Some(source_name))?.password_hash_sync,
    };
    let started = std::time::Instant::now();
    let mut progress = StageProgress::default();
    let report = run_cycle(source_name, flavor, source, store, target, &options, &mut progress)
        .await
        .context("sync cycle failed")?;
    drop(progress);
    store.record_run(source_name, &report)?;
    eprintln!(
        "{}: {:?} import, {} imported, {} deleted on-premises, {} synced, {} out of scope; exported {} created, {} updated, {} deleted, {} passwords; {} errors ({:.1} s: import {:.1}, sync {:.1}, export {:.1})",
        report.status.as_str(),
        report.import_mode,
        report.imported,
        report.deleted_on_premises,
        report.synced,
        report.out_of_scope,
        report.created,
        report.updated,
        report.deleted,
        report.passwords_synced,
        report.errors.len(),
        started.elapsed().as_secs_f64(),
        report.stage_ms[0] as f64 / 1000.0,
        report.stage_ms[1] as f64 / 1000.0,
        report.stage_ms[2] as f64 / 1000.0
    );
    for (object, message) in &report.errors {
        eprintln!("  error: {object}: {message}");
    }
    if let CycleStatus::StoppedDeletionThresholdExceeded { pending, threshold } = report.status {
        eprintln!(
            "stopped: {pending} deletions pending, more than the threshold of {threshold}; nothing was exported. If they are right, run `idbridge sync run --once --allow-deletes {pending}`"
        );
        return Ok(true);
    }
    Ok(false)
}

/// The effective rules and a text that changes whenever they do (for the configuration hash).
fn load_rules(config: &Config, config_path: &Path) -> Result<(sync::rules::RuleSet, String)> {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let mut files = Vec::new();
    for path in &config.sync.rules {
        let full = if path.is_absolute() { path.clone() } else { base.join(path) };
        let text =
            std::fs::read_to_string(&full).with_context(|| format!("cannot read the rule file {}", full.display()))?;
        files.push((full.display().to_string(), text));
    }
    let set = sync::rules::RuleSet::load(&files).map_err(|e| anyhow::anyhow!("{e}"))?;
    let fingerprint = files.iter().map(|(n, t)| format!("{n}\n{t}")).collect::<Vec<_>>().join("\n--\n");
    Ok((set, fingerprint))
}
