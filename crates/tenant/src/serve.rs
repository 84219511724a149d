//! Serving the tenant: plain HTTP on loopback, HTTPS anywhere; graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::{Result, TenantError};
use crate::http::{AppState, router};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// PEM certificate chain and private key; plain HTTP without them.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The externally visible base URL (default: from `listen`).
    pub public_url: Option<String>,
    pub max_body: usize,
}

/// Largest request body by default: enough for a Bulk of 1,000 operations
/// or a group with 100,000 members.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;

impl ServeOptions {
    pub fn base_url(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(u) => format!("{}/scim/v2", u.trim_end_matches('/')),
            None => format!("{}://{bound}/scim/v2", if self.tls.is_some() { "https" } else { "http" }),
        }
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor> {
    let io = |what: &str, e: &dyn std::fmt::Display| TenantError::Invalid(format!("{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| io(&format!("cannot read the certificate {}", cert.display()), &e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| io(&format!("bad certificate PEM in {}", cert.display()), &e))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| io(&format!("cannot read the private key {}", key.display()), &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| io("TLS", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io("the certificate and key do not fit together", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TLS connections; failed handshakes are logged and skipped.
#[allow(missing_debug_implementations)] // the rustls acceptor has no Debug
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.acceptor.accept(stream).await {
                Ok(tls) => return (tls, addr),
                Err(e) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The client's address, for handlers that need it (sign-in lockout, audit).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Binds, then serves until `shutdown` completes (in-flight requests finish).
/// `on_ready` gets the bound address and base URL.
pub async fn serve(
    store: Store,
    options: ServeOptions,
    on_ready: impl FnOnce(SocketAddr, &str),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if options.tls.is_none() && !options.listen.ip().is_loopback() {
        return Err(TenantError::Invalid(format!(
            "refusing plain HTTP on {}: bearer tokens would cross the network in clear. Give --tls-cert and --tls-key, or listen on 127.0.0.1",
            options.listen
        )));
    }
    let acceptor = match &options.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let tcp = TcpListener::bind(options.listen)
        .await
        .map_err(|e| TenantError::Io { what: format!("cannot listen on {}", options.listen), source: e })?;
    let bound = tcp.local_addr().map_err(|e| TenantError::Io { what: "local address".into(), source: e })?;
    let base_url = options.base_url(bound);
    let issuer = base_url.trim_end_matches("/scim/v2").to_string();
    let settings = crate::Settings::load(&store.lock())?;
    let pta_timeout = std::time::Duration::from_secs(settings.pta_timeout_secs);
    let rate_limit = crate::ratelimit::Limit {
        per_sec: settings.rate_limit_per_sec,
        burst: settings.rate_limit_per_sec.saturating_mul(2),
    };
    let state = Arc::new(AppState {
        store: Arc::new(store),
        base_url: base_url.clone(),
        issuer,
        max_body: options.max_body,
        lockout: crate::signin::LockoutPolicy::default(),
        pta: crate::pta::Broker::new(pta_timeout),
        federation: crate::federation::oidc::RelyingParty::new(),
        rate_limit: crate::ratelimit::RateLimiter::new(rate_limit),
    });
    let app = router(state).into_make_service_with_connect_info::<PeerAddr>();
    on_ready(bound, &base_url);
    let result = match acceptor {
        Some(acceptor) => axum::serve(TlsListener { tcp, acceptor }, app).with_graceful_shutdown(shutdown).await,
        None => axum::serve(tcp, app).with_graceful_shutdown(shutdown).await,
    };
    result.map_err(|e| TenantError::Io { what: "serving".into(), source: e })
}
