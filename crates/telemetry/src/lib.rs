//! Prometheus metrics of idbridge's parts, and the small server that
//! exposes them beside a daemon (`--metrics-listen ADDR`): `GET /metrics`
//! (OpenMetrics text), `GET /healthz` (the process is alive) and
//! `GET /readyz` (ready, or 503 with the reason).
//!
//! Metric families follow Prometheus naming; labels never carry a user
//! name or other personal data (sources, stages, outcomes, routes and
//! status codes only). The `prometheus-client` crate (the Prometheus
//! project's own) does the encoding; each part registers its families
//! into one [`Registry`].

mod server;
mod sync;
mod tenant;

use std::sync::Mutex;

pub use prometheus_client::registry::Registry;
pub use server::{ServeError, serve};
pub use sync::{AgentMetrics, SyncMetrics};
pub use tenant::{SignInMethod, SignInOutcome, TenantMetrics};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Label pairs (names are fixed by the families; values never personal).
pub type Labels = Vec<(String, String)>;

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
}

/// `idbridge_build_info{version, component} 1`.
pub fn register_build_info(registry: &mut Registry, component: &str) {
    let info = Family::<Labels, Gauge>::default();
    info.get_or_create(&labels([("version", env!("CARGO_PKG_VERSION")), ("component", component)])).set(1);
    registry.register("idbridge_build_info", "The running idbridge version", info);
}

/// Readiness as `/readyz` reports it: ready, or why not.
#[derive(Debug)]
pub struct Health {
    not_ready: Mutex<Option<String>>,
}

impl Health {
    /// Not ready until told, with `reason`.
    pub fn starting(reason: &str) -> Health {
        Health { not_ready: Mutex::new(Some(reason.to_string())) }
    }

    pub fn ready() -> Health {
        Health { not_ready: Mutex::new(None) }
    }

    pub fn set_ready(&self) {
        if let Ok(mut r) = self.not_ready.lock() {
            *r = None;
        }
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        if let Ok(mut r) = self.not_ready.lock() {
            *r = Some(reason.into());
        }
    }

    /// `Err(reason)` when not ready.
    pub fn check(&self) -> Result<(), String> {
        match self.not_ready.lock() {
            Ok(r) => r.clone().map_or(Ok(()), Err),
            Err(_) => Err("internal error".into()),
        }
    }
}

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        text.clear();
    }
    text
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
