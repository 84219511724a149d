//! The sync daemon's and the pass-through agent's metrics.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::{Labels, labels};

fn histogram() -> Histogram {
    Histogram::new([0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0])
}

/// The sync daemon's families.
#[derive(Debug, Clone)]
pub struct SyncMetrics {
    cycle_duration: Family<Labels, Histogram, fn() -> Histogram>,
    last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    objects: Family<Labels, Counter>,
    errors: Family<Labels, Gauge>,
    cycles: Family<Labels, Counter>,
    deletions_held: Family<Labels, Gauge>,
    export_requests: Family<Labels, Counter>,
    interval: Gauge,
    lease_held: Gauge,
}

impl SyncMetrics {
    pub fn register(registry: &mut Registry, interval_secs: u64) -> SyncMetrics {
        let m = SyncMetrics {
            cycle_duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            last_success: Family::default(),
            objects: Family::default(),
            errors: Family::default(),
            cycles: Family::default(),
            deletions_held: Family::default(),
            export_requests: Family::default(),
            interval: Gauge::default(),
            lease_held: Gauge::default(),
        };
        m.interval.set(i64::try_from(interval_secs).unwrap_or(i64::MAX));
        registry.register_with_unit(
            "idbridge_sync_cycle_duration",
            "Time per stage of a sync cycle (import, sync, export)",
            Unit::Seconds,
            m.cycle_duration.clone(),
        );
        registry.register_with_unit(
            "idbridge_sync_last_success_timestamp",
            "When a cycle of this source last succeeded (Unix time)",
            Unit::Seconds,
            m.last_success.clone(),
        );
        registry.register(
            "idbridge_sync_objects",
            "Objects handled, by stage and result (import: imported, deleted; sync: synced, out_of_scope; export: created, updated, deleted, unchanged, failed; passwords: sent)",
            m.objects.clone(),
        );
        registry.register("idbridge_sync_errors", "Objects waiting in the error queue", m.errors.clone());
        registry.register("idbridge_sync_cycles", "Cycles by result (success, failed, stopped)", m.cycles.clone());
        registry.register(
            "idbridge_sync_deletions_held",
            "Deletions the deletion threshold holds back until allowed (0: none waiting)",
            m.deletions_held.clone(),
        );
        registry.register(
            "idbridge_export_requests",
            "Requests to the tenant by HTTP status (\"error\": no answer)",
            m.export_requests.clone(),
        );
        registry.register_with_unit(
            "idbridge_sync_interval",
            "The daemon's pause between cycles",
            Unit::Seconds,
            m.interval.clone(),
        );
        registry.register(
            "idbridge_sync_lease_held",
            "1 while this daemon runs the cycles (always 1 with a SQLite state; 0 on a standby)",
            m.lease_held.clone(),
        );
        m
    }

    /// A finished cycle as its report tells it (the one the tenant gets),
    /// with the error queue's length after it, at Unix time `now`.
    pub fn cycle(&self, report: &proto::hybrid::SyncReport, errors_waiting: u64, now: f64) {
        let source = report.connector.as_str();
        for (stage, ms) in ["import", "sync", "export"].iter().zip(report.stage_ms) {
            self.cycle_duration
                .get_or_create(&labels([("source", source), ("stage", stage)]))
                .observe(ms as f64 / 1000.0);
        }
        let counts = [
            ("import", "imported", report.imported),
            ("import", "deleted", report.deleted_on_premises),
            ("sync", "synced", report.synced),
            ("sync", "out_of_scope", report.out_of_scope),
            ("export", "created", report.created),
            ("export", "updated", report.updated),
            ("export", "deleted", report.deleted),
            ("export", "unchanged", report.unchanged),
            ("export", "failed", report.failed),
            ("passwords", "sent", report.passwords),
        ];
        for (stage, result, n) in counts {
            self.objects.get_or_create(&labels([("source", source), ("stage", stage), ("result", result)])).inc_by(n);
        }
        let source_label = labels([("source", source)]);
        self.errors.get_or_create(&source_label).set(i64::try_from(errors_waiting).unwrap_or(i64::MAX));
        self.deletions_held.get_or_create(&source_label).set(i64::try_from(report.deletions_held).unwrap_or(i64::MAX));
        self.cycles.get_or_create(&labels([("source", source), ("result", report.status.as_str())])).inc();
        if report.status == "success" {
            self.last_success.get_or_create(&source_label).set(now);
        }
    }

    /// A cycle of `source` failed as a whole.
    pub fn failed(&self, source: &str) {
        self.cycles.get_or_create(&labels([("source", source), ("result", "failed")])).inc();
        // The family exists from the start, so an alert sees a source that never succeeded.
        let _ = self.last_success.get_or_create(&labels([("source", source)]));
    }

    /// One answer (or none: `None`) to a request to the tenant.
    pub fn export_response(&self, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.export_requests.get_or_create(&vec![("status".to_string(), status)]).inc();
    }

    pub fn set_interval(&self, secs: u64) {
        self.interval.set(i64::try_from(secs).unwrap_or(i64::MAX));
    }

    pub fn set_lease_held(&self, held: bool) {
        self.lease_held.set(i64::from(held));
    }
}

/// The pass-through agent's families.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    requests: Family<Labels, Counter>,
    last_poll: Gauge<f64, AtomicU64>,
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> AgentMetrics {
        let m = AgentMetrics { requests: Family::default(), last_poll: Gauge::default() };
        registry.register(
            "idbridge_pta_agent_requests",
            "Pass-through validations answered, by outcome",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "idbridge_pta_agent_last_poll_timestamp",
            "When the agent last reached the tenant (Unix time)",
            Unit::Seconds,
            m.last_poll.clone(),
        );
        m
    }

    pub fn answered(&self, outcome: &str) {
        self.requests.get_or_create(&labels([("outcome", outcome)])).inc();
    }

    pub fn polled(&self, now: f64) {
        self.last_poll.set(now);
    }
}
