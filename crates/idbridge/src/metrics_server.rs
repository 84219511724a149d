//! `--metrics-listen`: the telemetry server beside a daemon.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;

/// A running metrics server; [`MetricsServer::stop`] ends it.
pub struct MetricsServer {
    task: tokio::task::JoinHandle<Result<(), telemetry::ServeError>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts serving `registry` and `health` on `addr`; says where on stderr.
pub async fn start(
    addr: SocketAddr,
    registry: telemetry::Registry,
    health: Arc<telemetry::Health>,
) -> Result<MetricsServer> {
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(telemetry::serve(
        addr,
        Arc::new(registry),
        health,
        move |a| {
            let _ = bound_tx.send(a);
        },
        async move {
            let _ = stopped.await;
        },
    ));
    match bound_rx.await {
        Ok(bound) => {
            eprintln!("metrics: http://{bound}/metrics (and /healthz, /readyz)");
            Ok(MetricsServer { task, stop })
        }
        Err(_) => match task.await? {
            Err(e) => Err(e.into()),
            Ok(()) => Err(anyhow::anyhow!("the metrics server stopped")),
        },
    }
}

impl MetricsServer {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
