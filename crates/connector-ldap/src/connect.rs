//! Connecting: URL checks, TLS, failover across servers, simple bind, rootDSE.

use std::sync::Arc;
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::ber;
use crate::error::{Attempt, LdapError, bind_hint};
use crate::rootdse::RootDse;
use crate::settings::LdapSettings;

/// A bound connection to one server, with what its rootDSE says.
#[derive(Debug)]
pub struct Session {
    pub ldap: Ldap,
    pub url: String,
    pub root_dse: RootDse,
    pub operation_timeout: Duration,
}

/// Checks a URL the way ldap3 would use it, so its own panics cannot trigger.
fn check_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("expected ldap://host[:port] or ldaps://host[:port]")?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "ldap" | "ldaps") {
        return Err(format!("unsupported scheme {scheme:?} (use ldap or ldaps)"));
    }
    let host = rest.split('/').next().unwrap_or_default();
    let host_only = if host.starts_with('[') {
        host.split(']').next().unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    if host_only.trim_start_matches('[').is_empty() {
        return Err("the URL has no host".into());
    }
    Ok(())
}

fn tls_config(settings: &LdapSettings) -> Result<Option<Arc<rustls::ClientConfig>>, LdapError> {
    let Some(path) = &settings.tls.ca_file else {
        return Ok(None);
    };
    let shown = path.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| LdapError::CaFile {
            path: shown.clone(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| LdapError::CaFile {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(LdapError::CaFile {
            path: shown,
            reason: "no PEM certificate in the file".into(),
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| LdapError::CaFile {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::Settings(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
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
        if let Err(reason) = check_url(url) {
            attempts.push(Attempt {
                url: url.clone(),
                reason,
            });
            continue;
        }
        match connect_one(settings, url, tls.clone()).await {
            Ok(session) => {
                if !attempts.is_empty() {
                    tracing::warn!(server = %url, skipped = attempts.len(), "failed over to a later server");
                }
                return Ok(session);
            }
            Err(ConnectFailure::Fatal(e)) => return Err(e),
            Err(ConnectFailure::TryNext(reason)) => {
                tracing::warn!(server = %url, %reason, "server unreachable, trying the next one");
                attempts.push(Attempt {
                    url: url.clone(),
                    reason,
                });
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
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Session, ConnectFailure> {
    let mut conn_settings = LdapConnSettings::new()
        .set_conn_timeout(settings.connect_timeout)
        .set_starttls(settings.tls.starttls && url.to_ascii_lowercase().starts_with("ldap://"))
        .set_no_tls_verify(settings.tls.insecure_skip_verify);
    if let Some(config) = tls
        && !settings.tls.insecure_skip_verify
    {
        conn_settings = conn_settings.set_config(config);
    }
    let attempt = tokio::time::timeout(
        settings.connect_timeout * 2,
        LdapConnAsync::with_settings(conn_settings, url),
    )
    .await;
    let (conn, mut ldap) = match attempt {
        Err(_) => {
            return Err(ConnectFailure::TryNext(format!(
                "no answer within {:?}",
                settings.connect_timeout
            )));
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
        let password = settings
            .password
            .as_ref()
            .map(|p| p.expose())
            .unwrap_or_default();
        if password.is_empty() {
            return Err(ConnectFailure::Fatal(LdapError::Settings(format!(
                "bind_dn {bind_dn:?} is set but no password was given (password_file or password_env)"
            ))));
        }
        let result = ldap
            .with_timeout(op_timeout)
            .simple_bind(bind_dn, password)
            .await;
        match result {
            Err(e) => {
                return Err(ConnectFailure::TryNext(format!(
                    "bind did not complete: {e}"
                )));
            }
            Ok(res) if res.rc != 0 => {
                return Err(ConnectFailure::Fatal(LdapError::Bind {
                    url: url.to_string(),
                    bind_dn: bind_dn.clone(),
                    code: res.rc,
                    message: if res.text.is_empty() {
                        format!("LDAP result {}", res.rc)
                    } else {
                        res.text.clone()
                    },
                    hint: bind_hint(res.rc, &res.text),
                }));
            }
            Ok(_) => {}
        }
    }
    let root_dse = read_root_dse(&mut ldap, url, op_timeout)
        .await
        .map_err(ConnectFailure::Fatal)?;
    Ok(Session {
        ldap,
        url: url.to_string(),
        root_dse,
        operation_timeout: op_timeout,
    })
}

fn describe_connect_error(e: &ldap3::LdapError) -> String {
    let text = e.to_string();
    if text.contains("lookup address") || text.contains("Name or service not known") {
        "the host name does not resolve (check the URL, or DNS)".into()
    } else if text.contains("Connection refused") {
        "connection refused (is the server running and the port right?)".into()
    } else if text.contains("certificate")
        || text.contains("Certificate")
        || text.contains("tls")
        || text.contains("TLS")
    {
        format!(
            "TLS failed: {text} (check tls.ca_file and that the URL host matches the certificate)"
        )
    } else {
        text
    }
}

/// Reads the rootDSE (anonymously readable on every server we know).
pub async fn read_root_dse(
    ldap: &mut Ldap,
    url: &str,
    timeout: Duration,
) -> Result<RootDse, LdapError> {
    let attrs = RootDse::ATTRIBUTES.to_vec();
    let mut stream = ldap
        .with_timeout(timeout)
        .streaming_search("", Scope::Base, "(objectClass=*)", attrs)
        .await
        .map_err(|e| LdapError::Connection {
            url: url.into(),
            operation: "reading the rootDSE".into(),
            reason: e.to_string(),
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
        let (_, attrs) = ber::parse_entry(item.0).ok_or(LdapError::Protocol {
            url: url.into(),
            what: "rootDSE entry".into(),
        })?;
        dse = Some(RootDse::from_attrs(attrs));
    }
    let res = stream.finish().await;
    if res.rc != 0 {
        return Err(LdapError::Search {
            url: url.into(),
            base: String::new(),
            code: res.rc,
            message: res.text,
        });
    }
    dse.ok_or(LdapError::Protocol {
        url: url.into(),
        what: "empty rootDSE".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn urls() {
        assert!(check_url("ldap://127.0.0.1:389").is_ok());
        assert!(check_url("ldaps://dc1.example.com").is_ok());
        assert!(check_url("ldap://[::1]:389").is_ok());
        assert!(check_url("ldap://").is_err());
        assert!(check_url("ldap://:389").is_err());
        assert!(check_url("http://x").is_err());
        assert!(check_url("dc1").is_err());
    }
}
