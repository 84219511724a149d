//! Serving the tenant: plain HTTP on loopback, HTTPS anywhere; graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::scim::{AppState, router};
use tenant::Tenant;
use tenant::error::{Result, TenantError};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// PEM certificate chain and private key; plain HTTP without them.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The externally visible base URL (default: from `listen`).
    pub public_url: Option<String>,
    pub max_body: usize,
    /// Without `public_url`, call a loopback address `localhost` (plain
    /// HTTP only): browsers take passkeys only from a domain name, and
    /// `http://localhost` is a secure context (the demo does this).
    pub loopback_as_localhost: bool,
}

/// Largest request body by default: enough for a Bulk of 1,000 operations
/// or a group with 100,000 members.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;

impl ServeOptions {
    pub fn base_url(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(u) => format!("{}/scim/v2", u.trim_end_matches('/')),
            None if self.loopback_as_localhost && self.tls.is_none() && bound.ip().is_loopback() => {
                format!("http://localhost:{}/scim/v2", bound.port())
            }
            None => format!("{}://{bound}/scim/v2", if self.tls.is_some() { "https" } else { "http" }),
        }
    }
}

/// When the first (leaf) certificate of a PEM chain expires (Unix time).
fn not_after(certs: &[CertificateDer<'static>]) -> Option<u64> {
    certificate_not_after(certs.first()?.as_ref())
}

/// When a DER certificate expires (Unix time); `None` if it does not parse.
pub(crate) fn certificate_not_after(der: &[u8]) -> Option<u64> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate.validity.not_after.to_unix_duration().as_secs())
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<(TlsAcceptor, Option<u64>)> {
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
        .with_single_cert(certs.clone(), key)
        .map_err(|e| io("the certificate and key do not fit together", &e))?;
    Ok((TlsAcceptor::from(Arc::new(config)), not_after(&certs)))
}

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers, counted from
/// the connection's start or from the end of the last answer: so also how
/// long an idle keep-alive connection stays open. idbridge's own clients
/// drop idle connections sooner ([`proto::http::CLIENT_POOL_IDLE`]).
pub const HEADER_READ_TIMEOUT: Duration = proto::http::SERVER_IDLE_CLOSE;
/// A connection that moves no byte for this long while a request is under
/// way (a slow body, a slow answer) is closed. Longer than the pass-through
/// agents' long polls (25 s), which send nothing while they wait.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed at once (logged).
pub const MAX_CONNECTIONS: usize = 4096;

/// The client's address, for handlers that need it (sign-in lockout, audit).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A connection's byte stream that fails once it has been idle too long,
/// so a silent client cannot hold a connection (and its slot) for ever.
struct IdleTimeout<S> {
    inner: S,
    idle_for: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, idle_for: Duration) -> Self {
        IdleTimeout { inner, idle_for, deadline: Box::pin(tokio::time::sleep(idle_for)) }
    }

    fn touched(&mut self) {
        self.deadline.as_mut().reset(tokio::time::Instant::now() + self.idle_for);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle too long")
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.touched();
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.touched();
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one accepted connection: the TLS handshake (bounded), then HTTP/1.1
/// with a header-read timeout, the idle timeout and the client's address for
/// the handlers. Runs in its own task, so a slow client holds up nobody.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    app: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let app = tower::ServiceExt::map_request(app, move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(axum::extract::ConnectInfo(PeerAddr(peer)));
        request
    });
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let result = match acceptor {
        Some(acceptor) => {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let io = hyper_util::rt::TokioIo::new(IdleTimeout::new(tls, IDLE_TIMEOUT));
            watcher.watch(http.serve_connection(io, service)).await
        }
        None => {
            let io = hyper_util::rt::TokioIo::new(IdleTimeout::new(tcp, IDLE_TIMEOUT));
            watcher.watch(http.serve_connection(io, service)).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// Binds, then serves until `shutdown` completes (in-flight requests finish).
/// `on_ready` gets the bound address and base URL.
pub async fn serve(
    tenant: Tenant,
    options: ServeOptions,
    on_ready: impl FnOnce(SocketAddr, &str),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if options.tls.is_none() && !options.listen.ip().is_loopback() {
        return Err(TenantError::Invalid(format!(
            "refusing plain HTTP on {}: bearer tokens and passwords would cross the network in clear. Give --tls-cert and --tls-key, or listen on 127.0.0.1 (and reach it from another machine through an SSH tunnel: ssh -L 8443:127.0.0.1:8443 HOST)",
            options.listen
        )));
    }
    let (acceptor, certificate_expiry) = match &options.tls {
        Some((cert, key)) => {
            let (acceptor, expiry) = tls_acceptor(cert, key)?;
            (Some(acceptor), expiry)
        }
        None => (None, None),
    };
    let tcp = TcpListener::bind(options.listen)
        .await
        .map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    " (another program listens there, perhaps an earlier `idbridge demo` or `tenant serve`: stop it, or choose another port with --listen)"
                }
                std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges: choose a port above 1024)",
                _ => "",
            };
            TenantError::Io { what: format!("cannot listen on {}{hint}", options.listen), error: e }
        })?;
    let bound = tcp.local_addr().map_err(|e| TenantError::Io { what: "local address".into(), error: e })?;
    let base_url = options.base_url(bound);
    let issuer = base_url.trim_end_matches("/scim/v2").to_string();
    if tenant.store().is_postgres() && options.public_url.is_none() {
        // Tokens name their issuer, and the console is registered for it:
        // nodes behind one load balancer must all say the same.
        tracing::warn!(
            issuer = %issuer,
            "the tenant's database is shared, but --public-url is not given: every node behind a load balancer needs the same --public-url (the address clients use)"
        );
    }
    let (settings, trusted_proxies, csrf_key) = {
        let conn = tenant.store().lock();
        (tenant::Settings::load(&conn)?, tenant::store::trusted_proxies(&conn)?, tenant::store::csrf_key(&conn)?)
    };
    let pta_timeout = std::time::Duration::from_secs(settings.pta_timeout_secs);
    let rate_limit = tenant::ratelimit::Limit {
        per_sec: settings.rate_limit_per_sec,
        burst: settings.rate_limit_per_sec.saturating_mul(2),
    };
    let mut registry = telemetry::Registry::default();
    telemetry::register_build_info(&mut registry, "tenant");
    let metrics = telemetry::TenantMetrics::register(&mut registry);
    if let Some(expiry) = certificate_expiry {
        metrics.set_tls_certificate_expiry(expiry);
    }
    // The admin console signs administrators in as a relying party of its own.
    tenant.register_console("idbridge", &issuer)?;
    tenant.register_security_info("idbridge", &issuer)?;
    tenant.register_saml_idp("idbridge", &issuer)?;
    let pta = tenant::pta::Broker::for_store(pta_timeout, tenant.store())?;
    // The name authenticators show next to the passkey.
    let rp_name = tenant.branding().map(|b| b.name).ok().filter(|n| !n.trim().is_empty());
    let passkeys = match tenant::passkeys::RelyingParty::for_issuer(&issuer, rp_name.as_deref().unwrap_or("idbridge")) {
        Ok(rp) => Some(Arc::new(rp)),
        Err(why) => {
            tracing::info!("no passkeys: {why}");
            None
        }
    };
    let state = Arc::new(AppState {
        store: tenant.store().clone(),
        tenant,
        base_url: base_url.clone(),
        issuer,
        max_body: options.max_body,
        lockout: tenant::signin::LockoutPolicy::default(),
        pta,
        federation: tenant::federation::oidc::RelyingParty::new(),
        passkeys,
        rate_limit: tenant::ratelimit::RateLimiter::new(rate_limit),
        trusted_proxies,
        csrf_key,
        metrics,
        registry: Arc::new(registry),
    });
    let app = router(state);
    on_ready(bound, &base_url);
    // Our own accept loop (not axum::serve): each connection's handshake and
    // requests run in a task of their own, with timeouts and a cap.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = MAX_CONNECTIONS, "too many connections; closing a new one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, watcher) = (acceptor.clone(), app.clone(), graceful.watcher());
        tokio::spawn(async move {
            serve_connection(tcp, peer, acceptor, app, watcher).await;
            drop(slot);
        });
    }
    // In-flight requests finish (a pass-through long poll within its 25 s);
    // idle keep-alive connections are closed.
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open 30 s after the stop signal; closing them");
    }
    Ok(())
}
