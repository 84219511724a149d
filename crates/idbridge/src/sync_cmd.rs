//! `idbridge sync …`: run the engine and see what it did. The work is
//! `orchestration::sync`; this module parses and prints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use orchestration::state::ActiveWriter;
use orchestration::sync::{CycleEvents, Explanation, RunOptions, SyncStatus};
use store::{RunRow, RunSummary};
use sync::engine::{CycleObserver, CycleReport, CycleStatus, PendingExport};

use crate::progress::StageProgress;
use crate::when::{local_time, seconds};

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
        /// Serve /metrics (Prometheus), /healthz and /readyz on this
        /// address, e.g. 127.0.0.1:9464 (no authentication: a monitoring
        /// network or loopback).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
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
    /// The last cycle and what is pending.
    Status {
        #[arg(long, default_value = "idbridge.toml")]
        config: PathBuf,
        /// One JSON object (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Objects that failed to export (retried every cycle), and objects waiting in the tenant
    /// for a value another object holds: who holds it and why.
    Errors {
        #[arg(long, default_value = "idbridge.toml")]
        config: PathBuf,
    },
    /// Past cycles, newest first.
    History {
        #[arg(long, default_value = "idbridge.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON object per line (for scripts).
        #[arg(long)]
        json: bool,
    },
}

/// Prints each cycle's report as it finishes, with a progress line per stage.
#[derive(Default)]
struct PrintedCycles {
    progress: StageProgress,
    telemetry: Option<orchestration::sync::Telemetry>,
}

impl CycleEvents for PrintedCycles {
    fn observer(&mut self) -> &mut (dyn CycleObserver + Send) {
        &mut self.progress
    }

    fn finished(&mut self, _source: &str, report: &CycleReport, elapsed: Duration) {
        self.progress.done();
        print_report(report, elapsed);
    }

    fn failed(&mut self, error: &orchestration::Error, retry_in: Duration) {
        self.progress.done();
        eprintln!("error: {error}\nretrying in {} s", retry_in.as_secs());
    }

    fn standby(&mut self, active: &store::lease::LeaseInfo) {
        eprintln!(
            "standby: {} is the active daemon (since {}); taking over if its lease expires",
            active.holder,
            local_time(&active.acquired_at)
        );
    }

    fn telemetry(&self) -> Option<&orchestration::sync::Telemetry> {
        self.telemetry.as_ref()
    }

    fn groups_written(&mut self, report: &orchestration::group_writeback::GroupWriteback) {
        let w = &report.written;
        eprintln!(
            "{}: group writeback: {} created, {} updated, {} renamed, {} deleted, {} unchanged",
            report.source, w.created, w.updated, w.renamed, w.deleted, w.unchanged
        );
        if w.deletions_held > 0 {
            eprintln!(
                "{}: group writeback: {} groups gone from the cloud were not deleted (more than the deletion threshold)",
                report.source, w.deletions_held
            );
        }
        for (group, message) in &w.failures {
            eprintln!("{}: group writeback: {group}: {message}", report.source);
        }
        for m in report.skipped_members.iter().take(20) {
            eprintln!("{}: group writeback: {}: member {} left out ({})", report.source, m.group, m.member, m.why);
        }
        if report.skipped_members.len() > 20 {
            eprintln!(
                "{}: group writeback: {} more members left out",
                report.source,
                report.skipped_members.len() - 20
            );
        }
    }

    fn active(&mut self, epoch: i64) {
        eprintln!("active: this daemon holds the sync lease (epoch {epoch}) and runs the cycles");
    }
}

fn print_report(report: &CycleReport, elapsed: Duration) {
    eprintln!(
        "{}: {:?} import, {} imported, {} deleted on-premises, {} synced, {} out of scope; exported {} created, {} updated, {} deleted, {} passwords; {} errors ({:.3} s: import {:.3}, sync {:.3}, export {:.3})",
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
        report.error_count(),
        elapsed.as_secs_f64(),
        seconds(report.stage_ms[0]),
        seconds(report.stage_ms[1]),
        seconds(report.stage_ms[2]),
    );
    for (object, message) in &report.errors {
        eprintln!("  error: {object}: {message}");
    }
    if let Some(failure) = &report.password_failure {
        eprintln!("  error: {failure}");
    }
    if let CycleStatus::StoppedDeletionThresholdExceeded { pending, threshold } = report.status {
        eprintln!(
            "stopped: {pending} deletions pending, more than the threshold of {threshold}; nothing was exported. If they are right, run `idbridge sync run --once --allow-deletes {pending}`"
        );
    }
}

/// Ends on Ctrl-C, saying so.
async fn interrupted() {
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping");
}

pub async fn run(command: SyncCommand) -> Result<()> {
    match command {
        SyncCommand::ResyncPasswords { config } => {
            eprintln!("full password resync: a full import of every source; every password is sent again");
            Ok(orchestration::sync::resync_passwords(&config, &mut PrintedCycles::default()).await?)
        }
        SyncCommand::Run { config, once, full, allow_deletes, metrics_listen } => {
            let options = RunOptions { once, full, allow_deletes };
            let mut events = PrintedCycles::default();
            let mut server = None;
            if let Some(addr) = metrics_listen {
                let mut registry = telemetry::Registry::default();
                telemetry::register_build_info(&mut registry, "sync");
                let metrics = telemetry::SyncMetrics::register(&mut registry, 0);
                let health = std::sync::Arc::new(telemetry::Health::starting("no cycle yet"));
                events.telemetry = Some(orchestration::sync::Telemetry { metrics, health: health.clone() });
                server = Some(crate::metrics_server::start(addr, registry, health).await?);
            }
            let result = orchestration::sync::run(&config, options, &mut events, interrupted()).await;
            if let Some(server) = server {
                server.stop().await;
            }
            Ok(result?)
        }
        SyncCommand::Preview { config, json, csv } => {
            let mut progress = StageProgress::default();
            let pending = orchestration::sync::preview(&config, &mut progress).await?;
            progress.done();
            print_preview(&pending, json, csv);
            Ok(())
        }
        SyncCommand::Explain { config, object } => {
            print_explanation(&orchestration::sync::explain(&config, &object)?);
            Ok(())
        }
        SyncCommand::Status { config, json } => {
            let status = orchestration::sync::status(&config)?;
            if json {
                crate::out!("{}", status_json(&status));
            } else {
                print_status(&status);
            }
            Ok(())
        }
        SyncCommand::Errors { config } => {
            let (_, store) = orchestration::sync::open(&config)?;
            let errors = store.errors()?;
            for e in &errors {
                crate::out!("{}\t{}\t{} attempt(s)\t{}", e.object, e.stage, e.attempts, e.message);
            }
            let waiting = orchestration::sync::quarantine(&config)
                .await
                .context("the engine's errors are above; the tenant's quarantine could not be listed")?;
            print_quarantine(&waiting);
            if errors.is_empty() && waiting.total == 0 {
                crate::out!("no errors");
            }
            Ok(())
        }
        SyncCommand::History { config, limit, json } => {
            let (_, store) = orchestration::sync::open(&config)?;
            let runs = store.runs(limit)?;
            if runs.is_empty() && !json {
                crate::out!("no cycles yet");
            }
            for r in runs {
                if json {
                    crate::out!("{}", run_json(&r));
                } else {
                    crate::out!(
                        "#{}  {}  {:<8}  {}  {}",
                        r.id,
                        local_time(&r.finished),
                        r.source,
                        r.status,
                        summary(&r.report)
                    );
                }
            }
            Ok(())
        }
    }
}

/// The values synchronised objects wait for, who holds each and why.
fn print_quarantine(list: &proto::hybrid::QuarantineList) {
    if list.total == 0 {
        return;
    }
    crate::out!("waiting in the tenant for a value another object holds ({} in all):", list.total);
    for e in &list.entries {
        crate::out!(
            "{} wants {} {:?}, held by {}: {}; waiting since {}",
            e.object,
            e.attribute,
            e.value,
            e.holder,
            e.reason.explain(),
            e.since
        );
    }
    if list.total > list.entries.len() as u64 {
        crate::out!("… and {} more", list.total - list.entries.len() as u64);
    }
}

/// One line of what a recorded cycle did.
fn summary(s: &RunSummary) -> String {
    if let Some(error) = &s.error {
        return error.clone();
    }
    let mut parts = vec![
        format!("{} imported", s.imported),
        format!("{} synced", s.synced),
        format!("{} created, {} updated, {} deleted", s.created, s.updated, s.deleted),
        format!("{} passwords", s.passwords),
        format!("{} errors", s.errors),
    ];
    if s.deleted_on_premises > 0 {
        parts.insert(1, format!("{} deleted on-premises", s.deleted_on_premises));
    }
    if let Some(mode) = &s.import_mode
        && mode != "Delta"
    {
        parts.insert(0, mode.to_lowercase());
    }
    if let Some(ms) = s.stage_ms {
        parts.push(format!("{:.1} s", seconds(ms.iter().sum())));
    }
    let mut text = parts.join(", ");
    if let Some(failure) = &s.password_failure {
        text.push_str(&format!("; {failure}"));
    }
    text
}

fn run_json(r: &RunRow) -> serde_json::Value {
    serde_json::json!({"id": r.id, "source": r.source, "finished": r.finished, "status": r.status, "report": r.report})
}

fn status_json(s: &SyncStatus) -> serde_json::Value {
    serde_json::json!({
        "connectorSpace": s.connector_space, "metaverse": s.metaverse, "exported": s.exported,
        "pendingExport": s.pending_export, "staging": s.staging,
        "lastCycle": s.last_cycle.as_ref().map(run_json),
        "passwordHashSync": {
            "sources": s.password_sources, "lastSent": s.last_passwords.as_ref().map(run_json),
            "pending": s.passwords_pending, "failed": s.passwords_failed,
        },
        "objectsWithErrors": s.objects_with_errors,
        "active": active_json(&s.active),
    })
}

fn active_json(active: &ActiveWriter) -> serde_json::Value {
    match active {
        ActiveWriter::None => serde_json::Value::Null,
        ActiveWriter::Process { pid } => serde_json::json!({"pid": pid}),
        ActiveWriter::Lease(l) => serde_json::json!({
            "holder": l.holder, "epoch": l.epoch, "since": l.acquired_at, "renewed": l.renewed_at,
            "expiresInMs": l.expires_in_ms,
        }),
    }
}

fn print_status(s: &SyncStatus) {
    crate::out!(
        "connector space: {} objects\nmetaverse: {} objects\nin the tenant: {} objects\npending export: {}",
        s.connector_space,
        s.metaverse,
        s.exported,
        s.pending_export
    );
    crate::out!("staging: {}", if s.staging { "on (nothing is exported)" } else { "off" });
    match &s.active {
        ActiveWriter::None => crate::out!("active daemon: none"),
        ActiveWriter::Process { pid } => crate::out!("active daemon: pid {pid} on this machine"),
        ActiveWriter::Lease(l) => crate::out!(
            "active daemon: {} (lease epoch {}, since {}, renewed {}, expires in {:.1} s)",
            l.holder,
            l.epoch,
            local_time(&l.acquired_at),
            local_time(&l.renewed_at),
            l.expires_in_ms as f64 / 1000.0
        ),
    }
    match &s.last_cycle {
        Some(r) => crate::out!(
            "last cycle: #{} {} ({}), {}: {}",
            r.id,
            r.status,
            r.source,
            local_time(&r.finished),
            summary(&r.report)
        ),
        None => crate::out!("last cycle: none yet"),
    }
    if s.password_sources.is_empty() {
        crate::out!("password hash sync: off");
    } else {
        let sources = s.password_sources.join(", ");
        match &s.last_passwords {
            Some(r) => crate::out!(
                "password hash sync: on ({sources}); last passwords sent: {} at {} ({})",
                r.report.passwords,
                local_time(&r.finished),
                r.source
            ),
            None => crate::out!("password hash sync: on ({sources}); no passwords sent yet"),
        }
        crate::out!(
            "passwords waiting to be sent: {}; users whose password failed: {}",
            s.passwords_pending,
            s.passwords_failed
        );
        if let Some(message) = s.last_cycle.as_ref().and_then(|r| r.report.password_failure.as_ref()) {
            crate::out!("last cycle's password hash sync failed: {message}");
        }
    }
    crate::out!("objects with errors: {}", s.objects_with_errors);
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

fn print_preview(pending: &[PendingExport], json: bool, csv: bool) {
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

fn print_explanation(e: &Explanation) {
    crate::out!(
        "object:      {} ({}) in source {:?}{}",
        e.dn,
        e.kind,
        e.source,
        if e.deleted_on_premises { ", deleted on-premises" } else { "" }
    );
    for (dn, source) in &e.joined {
        crate::out!("joined:      {dn} in source {source:?}");
    }
    crate::out!("immutableId: {}  (sourceAnchor, from the source's anchor attribute)", e.immutable_id);
    match &e.tenant_id {
        Some(id) => crate::out!("tenant id:   {id}"),
        None => {
            crate::out!("tenant id:   not exported yet (see `idbridge sync preview`)");
            return;
        }
    }
    crate::out!();
    crate::out!("{:<42} {:<36} from", "tenant attribute", "value");
    for a in &e.attributes {
        let upstream = a.inbound.as_ref().map(|o| format!(" ← {o}")).unwrap_or_default();
        let shown = match &a.value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(list) if list.len() > 3 => format!("[{} values]", list.len()),
            other => other.to_string(),
        };
        crate::out!("{:<42} {:<36} {}{upstream}", a.path, shown.chars().take(36).collect::<String>(), a.outbound);
    }
    crate::out!(
        "\nflows: outbound rules (built in: crates/sync/src/default-outbound-rules.toml, plus [sync] rules) over the metaverse; inbound from the {} rules and the source attributes of {}",
        if e.flavor == sync::mapping::Flavor::ActiveDirectory { "Active Directory" } else { "LDAP" },
        e.dn
    );
}
