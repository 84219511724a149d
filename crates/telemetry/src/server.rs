//! `/metrics`, `/healthz` and `/readyz` beside a daemon. Bounded: at most
//! 32 connections, each with 10 s to send its headers and 30 s in all;
//! only GET, no body read. Meant for a monitoring network or loopback: it
//! has no authentication (the tenant serves its metrics behind a token
//! instead).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::{CONTENT_TYPE, Health, Registry, encode};

const MAX_CONNECTIONS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: SocketAddr, error: std::io::Error },
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn route(request: &Request<Incoming>, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET {
        return answer(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => answer(StatusCode::OK, CONTENT_TYPE, encode(registry)),
        "/healthz" => answer(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => match health.check() {
            Ok(()) => answer(StatusCode::OK, TEXT, "ready\n".into()),
            Err(reason) => answer(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("not ready: {reason}\n")),
        },
        _ => answer(StatusCode::NOT_FOUND, TEXT, "/metrics, /healthz or /readyz\n".into()),
    }
}

/// Binds `addr` (the error names it), then serves until `shutdown`
/// completes; returns the bound address through `bound` first.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<Health>,
    bound: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr).await.map_err(|error| ServeError::Listen { addr, error })?;
    bound(listener.local_addr().unwrap_or(addr));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        // Over the limit: the connection is closed at once.
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let (registry, health) = (registry.clone(), health.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = route(&request, &registry, &health);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_health_and_readiness_over_http() {
        let mut registry = Registry::default();
        crate::register_build_info(&mut registry, "test");
        let sync = crate::SyncMetrics::register(&mut registry, 5);
        let report = proto::hybrid::SyncReport {
            connector: "corp".into(),
            status: "success".into(),
            created: 3,
            ..Default::default()
        };
        sync.cycle(&report, 0, 1_700_000_000.0);
        let health = Arc::new(Health::starting("no cycle yet"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            "127.0.0.1:0".parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            Arc::new(registry),
            health.clone(),
            move |a| {
                let _ = tx.send(a);
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        let Ok(addr) = rx.await else { return };
        let get = |path: &str| {
            let url = format!("http://{addr}{path}");
            async move {
                let r = reqwest::get(url).await.ok()?;
                Some((r.status().as_u16(), r.text().await.ok()?))
            }
        };
        let (status, text) = get("/metrics").await.unwrap_or_default();
        assert_eq!(status, 200);
        assert!(
            text.contains("idbridge_sync_objects_total{source=\"corp\",stage=\"export\",result=\"created\"} 3"),
            "{text}"
        );
        assert!(text.contains("idbridge_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(get("/healthz").await.map(|r| r.0), Some(200));
        assert_eq!(get("/readyz").await, Some((503, "not ready: no cycle yet\n".into())));
        health.set_ready();
        assert_eq!(get("/readyz").await.map(|r| r.0), Some(200));
        assert_eq!(get("/nothing").await.map(|r| r.0), Some(404));
        let _ = stop_tx.send(());
        assert!(matches!(server.await, Ok(Ok(()))));
    }
}
