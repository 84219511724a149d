//! Connecting: URL checks, TLS, failover across servers, simple bind, rootDSE.

use std::sync::Arc;
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::ber;
use crate::error::{Attempt, LdapError, bind_hint};
use crate::reader::{AcceptAnyCertificate, ReaderSettings, Readers, TlsMode};
use crate::rootdse::RootDse;
use crate::settings::LdapSettings;

/// A bound connection to one server, with what its rootDSE says.
#[derive(Debug)]
pub struct Session {
    pub ldap: Ldap,
    pub url: String,
    pub root_dse: RootDse,
    pub operation_timeout: Duration,
    /// Connections of our own for paged searches ([`crate::reader`]).
    pub(crate) readers: Arc<Readers>,
}

/// The parts of an LDAP URL that we connect to.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    host: String,
    port: u16,
}

/// Checks a URL the way ldap3 would use it (so its own panics cannot
/// trigger) and finds the host and port to connect to.
fn check_url(url: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = url.split_once("://").ok_or("expected ldap://host[:port] or ldaps://host[:port]")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "ldap" => 389,
        "ldaps" => 636,
        _ => return Err(format!("unsupported scheme {scheme:?} (use ldap or ldaps)")),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed '[' in the host")?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("{p:?} is not a port number"))?,
        None => default_port,
    };
    Ok(Endpoint { host: host.to_string(), port })
}

/// The host of an LDAP URL (for reaching other services of the same server).
pub fn host_of(url: &str) -> Option<String> {
    check_url(url).ok().map(|e| e.host)
}

fn tls_config(settings: &LdapSettings) -> Result<Option<Arc<rustls::ClientConfig>>, LdapError> {
    let Some(path) = &settings.tls.ca_file else {
        return Ok(None);
    };
    let shown = path.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| LdapError::CaFile { path: shown.clone(), reason: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| LdapError::CaFile { path: shown.clone(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(LdapError::CaFile { path: shown, reason: "no PEM certificate in the file".into() });
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| LdapError::CaFile { path: shown.clone(), reason: e.to_string() })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::Settings(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// The TLS configuration of the search connections ([`crate::reader`]):
/// the configured CA file's roots, else the system's; no verification at
/// all with `tls.insecure_skip_verify` (warned about at every connect).
fn reader_tls_config(
    settings: &LdapSettings,
    with_ca_file: Option<Arc<rustls::ClientConfig>>,
) -> Result<Arc<rustls::ClientConfig>, LdapError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::Settings(format!("TLS: {e}")))?;
    if settings.tls.insecure_skip_verify {
        return Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth(),
        ));
    }
    if let Some(config) = with_ca_file {
        return Ok(config);
    }
    let mut roots = rustls::RootCertStore::empty();
    // Certificates the system store cannot parse are skipped, as ldap3 does.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    Ok(Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
}

/// Connects to the first server that answers, binds, and reads the rootDSE.
///
/// Connection problems (refused, timeout, TLS failure) move on to the next
/// URL; a refused bind stops at once, since every server of one directory
/// would refuse the same credentials.
pub async fn connect(settings: &LdapSettings) -> Result<Session, LdapError> {
    if settings.urls.is_empty() {
        return Err(LdapError::Settings("no server URL configured".into()));
    }
    // ldap3 builds its own rustls configs from the process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = tls_config(settings)?;
    if settings.tls.insecure_skip_verify {
        tracing::warn!(
            "TLS certificate verification is DISABLED (tls.insecure_skip_verify = true): the connection can be intercepted; use tls.ca_file instead"
        );
    }
    let mut attempts = Vec::new();
    for url in &settings.urls {
        let endpoint = match check_url(url) {
            Ok(e) => e,
            Err(reason) => {
                attempts.push(Attempt { url: url.clone(), reason });
                continue;
            }
        };
        match connect_one(settings, url, &endpoint, tls.clone()).await {
            Ok(session) => {
                if !attempts.is_empty() {
                    tracing::warn!(server = %url, skipped = attempts.len(), "failed over to a later server");
                }
                return Ok(session);
            }
            Err(ConnectFailure::Fatal(e)) => return Err(e),
            Err(ConnectFailure::TryNext(reason)) => {
                tracing::warn!(server = %url, %reason, "server unreachable, trying the next one");
                attempts.push(Attempt { url: url.clone(), reason });
            }
        }
    }
    Err(LdapError::Unreachable { attempts })
}

enum ConnectFailure {
    TryNext(String),
    Fatal(LdapError),
}

async fn connect_one(
    settings: &LdapSettings,
    url: &str,
    endpoint: &Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Session, ConnectFailure> {
    // We open the socket ourselves: ldap3 leaves Nagle's algorithm on, and a
    // receive buffer that starts small lets the server fill it during a page
    // of a paged search, which stalls the transfer for ~200 ms (TCP persist timer).
    let tcp = match tokio::time::timeout(settings.connect_timeout, open_socket((&endpoint.host, endpoint.port))).await {
        Err(_) => return Err(ConnectFailure::TryNext(format!("no answer within {:?}", settings.connect_timeout))),
        Ok(Err(e)) => return Err(ConnectFailure::TryNext(describe_io_error(&e))),
        Ok(Ok(s)) => s,
    };
    let std_tcp = tcp.into_std().map_err(|e| ConnectFailure::TryNext(format!("socket setup failed: {e}")))?;
    let starttls = settings.tls.starttls && url.to_ascii_lowercase().starts_with("ldap://");
    let mut conn_settings = LdapConnSettings::new()
        .set_std_stream(ldap3::StdStream::Tcp(std_tcp))
        .set_conn_timeout(settings.connect_timeout)
        .set_starttls(starttls)
        .set_no_tls_verify(settings.tls.insecure_skip_verify);
    if let Some(config) = tls.clone()
        && !settings.tls.insecure_skip_verify
    {
        conn_settings = conn_settings.set_config(config);
    }
    let reader_tls = if url.to_ascii_lowercase().starts_with("ldaps://") {
        Some(TlsMode::Ldaps(reader_tls_config(settings, tls).map_err(ConnectFailure::Fatal)?))
    } else if starttls {
        Some(TlsMode::StartTls(reader_tls_config(settings, tls).map_err(ConnectFailure::Fatal)?))
    } else {
        None
    };
    let attempt =
        tokio::time::timeout(settings.connect_timeout * 2, LdapConnAsync::with_settings(conn_settings, url)).await;
    let (conn, mut ldap) = match attempt {
        Err(_) => {
            return Err(ConnectFailure::TryNext(format!("no answer within {:?}", settings.connect_timeout)));
        }
        Ok(Err(e)) => return Err(ConnectFailure::TryNext(describe_connect_error(&e))),
        Ok(Ok(pair)) => pair,
    };
    // The driver runs in its own task: a panic inside ldap3 ends that task and
    // surfaces here as a closed connection, never as a crash.
    tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            tracing::debug!(error = %e, "LDAP connection ended");
        }
    });
    let op_timeout = settings.operation_timeout;
    if let Some(bind_dn) = &settings.bind_dn {
        let password = settings.password.as_ref().map(|p| p.expose()).unwrap_or_default();
        if password.is_empty() {
            return Err(ConnectFailure::Fatal(LdapError::Settings(format!(
                "bind_dn {bind_dn:?} is set but no password was given (password_file or password_env)"
            ))));
        }
        // The bind is part of connecting: a server that accepts the socket but
        // never answers must not hold up failover for a whole operation timeout.
        let result = ldap.with_timeout(settings.connect_timeout).simple_bind(bind_dn, password).await;
        match result {
            Err(ldap3::LdapError::Timeout { .. }) => {
                return Err(ConnectFailure::TryNext(format!(
                    "the server accepted the connection but did not answer the bind within {:?} (hung or overloaded?)",
                    settings.connect_timeout
                )));
            }
            Err(e) => {
                return Err(ConnectFailure::TryNext(format!("bind did not complete: {e}")));
            }
            Ok(res) if res.rc != 0 => {
                return Err(ConnectFailure::Fatal(LdapError::Bind {
                    url: url.to_string(),
                    bind_dn: bind_dn.clone(),
                    code: res.rc,
                    message: if res.text.is_empty() { format!("LDAP result {}", res.rc) } else { res.text.clone() },
                    hint: bind_hint(res.rc, &res.text),
                }));
            }
            Ok(_) => {}
        }
    }
    let root_dse = match read_root_dse(&mut ldap, url, settings.connect_timeout).await {
        Ok(dse) => dse,
        // A server that cannot even show its rootDSE is not usable: try the next one.
        Err(LdapError::Connection { reason, .. }) => return Err(ConnectFailure::TryNext(reason)),
        Err(e) => return Err(ConnectFailure::Fatal(e)),
    };
    let readers = Readers::new(ReaderSettings {
        url: url.to_string(),
        host: endpoint.host.clone(),
        port: endpoint.port,
        tls: reader_tls,
        bind: settings.bind_dn.clone().map(|dn| (dn, settings.password.clone().unwrap_or_default())),
        connect_timeout: settings.connect_timeout,
    });
    Ok(Session { ldap, url: url.to_string(), root_dse, operation_timeout: op_timeout, readers })
}

/// Receive buffer for directory connections: one page of entries fits.
const RECEIVE_BUFFER: u32 = 4 << 20;

pub(crate) async fn open_socket((host, port): (&str, u16)) -> std::io::Result<tokio::net::TcpStream> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        // Best effort: the kernel may cap it (net.core.rmem_max); that is fine.
        let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
        match socket.connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the host name resolved to no address")))
}

fn describe_io_error(e: &std::io::Error) -> String {
    describe_text(e.to_string())
}

fn describe_connect_error(e: &ldap3::LdapError) -> String {
    describe_text(e.to_string())
}

fn describe_text(text: String) -> String {
    if text.contains("lookup address") || text.contains("Name or service not known") {
        "the host name does not resolve (check the URL, or DNS)".into()
    } else if text.contains("Connection refused") {
        "connection refused (is the server running and the port right?)".into()
    } else if text.contains("certificate")
        || text.contains("Certificate")
        || text.contains("tls")
        || text.contains("TLS")
    {
        format!("TLS failed: {text} (check tls.ca_file and that the URL host matches the certificate)")
    } else {
        text
    }
}

/// Reads the rootDSE (anonymously readable on every server we know).
pub async fn read_root_dse(ldap: &mut Ldap, url: &str, timeout: Duration) -> Result<RootDse, LdapError> {
    let attrs = RootDse::ATTRIBUTES.to_vec();
    let mut stream =
        ldap.with_timeout(timeout).streaming_search("", Scope::Base, "(objectClass=*)", attrs).await.map_err(|e| {
            LdapError::Connection { url: url.into(), operation: "reading the rootDSE".into(), reason: e.to_string() }
        })?;
    let mut dse = None;
    while let Some(item) = stream.next().await.map_err(|e| LdapError::Connection {
        url: url.into(),
        operation: "reading the rootDSE".into(),
        reason: e.to_string(),
    })? {
        if item.is_ref() || item.is_intermediate() {
            continue;
        }
        let (_, attrs) =
            ber::parse_entry(item.0).ok_or(LdapError::Protocol { url: url.into(), what: "rootDSE entry".into() })?;
        dse = Some(RootDse::from_attrs(attrs));
    }
    let res = stream.finish().await;
    if res.rc != 0 {
        return Err(LdapError::Search { url: url.into(), base: String::new(), code: res.rc, message: res.text });
    }
    dse.ok_or(LdapError::Protocol { url: url.into(), what: "empty rootDSE".into() })
}

#[cfg(test)]
mod tests {
    use super::{Endpoint, check_url};

    #[test]
    fn urls() {
        assert_eq!(check_url("ldap://127.0.0.1:3890"), Ok(Endpoint { host: "127.0.0.1".into(), port: 3890 }));
        assert_eq!(check_url("ldaps://dc1.example.com/"), Ok(Endpoint { host: "dc1.example.com".into(), port: 636 }));
        assert_eq!(check_url("ldap://[::1]"), Ok(Endpoint { host: "::1".into(), port: 389 }));
        assert!(check_url("ldap://host:99999").is_err());
        assert!(check_url("ldap://").is_err());
        assert!(check_url("ldap://:389").is_err());
        assert!(check_url("http://x").is_err());
        assert!(check_url("dc1").is_err());
    }
}
