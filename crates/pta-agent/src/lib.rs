//! The pass-through authentication agent. It makes its key pair where it
//! runs (the private key never leaves the machine), keeps outbound long polls
//! to the tenant — no inbound port — opens each sealed request, checks the
//! password by binding to the directory (a sign-in) or sets a new one
//! (password writeback: a change as the user, a reset as the service
//! account), and answers with the outcome and a MAC only it can make. Wire types: `proto::pta`; sealing:
//! the `pta` crate.
//!
//! `agent.toml` (relative paths are relative to this file):
//! ```toml
//! # user_filter = "(&(objectClass=user)(userPrincipalName={upn}))"
//! # allow_plain_binds = true   # lab only: users' passwords over plain ldap://
//! [agent]                      # written by `register`
//! tenant = "https://tenant.example.com"
//! id = "…"
//! key_file = "agent.key"       # 0600
//! credential_file = "agent.credential"   # 0600
//! # ca_file = "…"
//! [directory]                  # like a [[source]] of idbridge.toml
//! name = "corp"
//! urls = ["ldaps://dc1.corp.example.com"]
//! bind_dn = "svc-pta@corp.example.com"   # reads users (and resets passwords, with writeback)
//! password_file = "svc-pta.password"
//! base_dns = ["DC=corp,DC=example,DC=com"]
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use config::files::{FileError, write_secret};
use config::{ConfigError, SourceConfig, relative_to};
use connector_ldap::validate::{PlainBinds, Validator};
use proto::ErrorReply;
use proto::pta::{Answer, CREDENTIAL_LIFETIME_SECS, Credential, PollReply, Registration};
use pta::{AgentKey, Sealed, Seen};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    File(#[from] FileError),
    #[error("cannot read {what} {}: {error}", path.display())]
    Read { what: &'static str, path: PathBuf, error: std::io::Error },
    #[error("in {}: {why}", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("the tenant address {tenant:?}: {why}")]
    TenantUrl { tenant: String, why: proto::url::UrlError },
    #[error("the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    #[error("cannot reach the tenant at {tenant}: {error}")]
    Unreachable { tenant: String, error: reqwest::Error },
    #[error("the tenant refused the registration ({status}): {reason}")]
    Refused { status: u16, reason: String },
    #[error("in {}: {error}", path.display())]
    Directory { path: PathBuf, error: Box<connector_ldap::LdapError> },
    /// The tenant turned the agent away: revoked, or its credential expired.
    #[error(
        "the tenant no longer accepts this agent ({0}); it was revoked or its credential expired — register it again"
    )]
    Revoked(String),
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AgentSection {
    tenant: String,
    id: String,
    key_file: PathBuf,
    credential_file: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct AgentConfig {
    agent: AgentSection,
    directory: SourceConfig,
    #[serde(default)]
    user_filter: Option<String>,
    /// A lab without certificates: let users' passwords go to the directory
    /// over plain ldap:// (logged loudly at start). Never in production.
    #[serde(default)]
    allow_plain_binds: bool,
}

/// The credential file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredCredential {
    credential: String,
    /// Unix seconds.
    expires: i64,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn base_of(config: &Path) -> &Path {
    config.parent().unwrap_or(Path::new("."))
}

fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client> {
    // Idle connections are dropped before the tenant closes them, so an
    // answer to a sign-in does not go out on one it is closing (and get lost).
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(proto::http::CLIENT_POOL_IDLE);
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|error| AgentError::Read { what: "the CA file", path: path.into(), error })?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| AgentError::Invalid { path: path.into(), why: format!("not a PEM certificate ({e})") })?;
        builder = builder.add_root_certificate(ca);
    }
    builder.build().map_err(AgentError::Http)
}

/// What `register` needs.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    /// The tenant's address, e.g. `https://tenant.example.com`.
    pub tenant: String,
    /// A one-time token from `idbridge tenant pta-token create`.
    pub token: String,
    /// The agent's configuration file; its `[agent]` section is (re)written, the rest kept.
    pub config: PathBuf,
    /// A name for the agent (default: the host name).
    pub name: Option<String>,
    /// PEM CA to trust for the tenant's HTTPS.
    pub ca_file: Option<PathBuf>,
}

/// What `register` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub agent_id: String,
    pub key_file: PathBuf,
    /// Whether the configuration already has a `[directory]` section.
    pub has_directory: bool,
}

/// Makes the agent's key pair and registers its public key with the tenant.
pub async fn register(req: RegisterRequest) -> Result<Registered> {
    let tenant = req.tenant.trim_end_matches('/').to_string();
    // The agent's credential and users' sealed passwords travel to this address.
    proto::url::check_web_url(&tenant).map_err(|why| AgentError::TenantUrl { tenant: tenant.clone(), why })?;
    let key = AgentKey::generate();
    let name = req.name.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "agent".into())
    });
    let client = http_client(req.ca_file.as_deref())?;
    let registration = Registration {
        token: req.token,
        public_key: key.public(),
        name,
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
    };
    let resp = client
        .post(format!("{tenant}{}", proto::pta::REGISTER_PATH))
        .json(&registration)
        .send()
        .await
        .map_err(|error| AgentError::Unreachable { tenant: tenant.clone(), error })?;
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    if !status.is_success() {
        let reason = serde_json::from_slice::<ErrorReply>(&body).map(|e| e.error);
        return Err(AgentError::Refused {
            status: status.as_u16(),
            reason: reason.unwrap_or_else(|_| "no reason given".into()),
        });
    }
    let answer: Credential = serde_json::from_slice(&body).map_err(|e| AgentError::Refused {
        status: status.as_u16(),
        reason: format!("the answer is not a credential ({e})"),
    })?;
    let Some(agent_id) = answer.agent_id else {
        return Err(AgentError::Refused { status: status.as_u16(), reason: "the answer has no agent_id".into() });
    };
    let stored = StoredCredential { credential: answer.credential, expires: answer.credential_expires };
    let (key_file, credential_file) = (PathBuf::from("agent.key"), PathBuf::from("agent.credential"));
    let base = base_of(&req.config);
    write_secret(&relative_to(base, &key_file), &key.to_bytes())?;
    let stored_text = serde_json::to_string(&stored)
        .map_err(|e| AgentError::Invalid { path: credential_file.clone(), why: e.to_string() })?;
    write_secret(&relative_to(base, &credential_file), stored_text.as_bytes())?;
    // Keep everything else in the file (the [directory] section) as it is.
    let invalid = |why: String| AgentError::Invalid { path: req.config.clone(), why };
    let existing = std::fs::read_to_string(&req.config).unwrap_or_default();
    let mut doc: toml::Table = if existing.trim().is_empty() {
        toml::Table::new()
    } else {
        toml::from_str(&existing).map_err(|e| invalid(format!("not TOML: {e}")))?
    };
    // Absolute: `run` resolves relative paths against the config file, not the current directory.
    let ca_file = req.ca_file.map(|f| std::path::absolute(&f).unwrap_or(f));
    let section = AgentSection { tenant, id: agent_id.clone(), key_file, credential_file, ca_file };
    doc.insert("agent".into(), toml::Value::try_from(&section).map_err(|e| invalid(e.to_string()))?);
    let has_directory = doc.contains_key("directory");
    let text = toml::to_string(&doc).map_err(|e| invalid(e.to_string()))?;
    config::files::write_atomically(&req.config, text.as_bytes())?;
    Ok(Registered { agent_id, key_file: relative_to(base, &section.key_file), has_directory })
}

/// What the pollers share.
struct Agent {
    tenant: String,
    id: String,
    key: AgentKey,
    credential: tokio::sync::RwLock<String>,
    credential_path: PathBuf,
    http: reqwest::Client,
    validator: Validator,
    seen: std::sync::Mutex<Seen>,
    telemetry: Option<Telemetry>,
}

/// What the agent reports to monitoring (`--metrics-listen`): answers by
/// outcome, the last poll, and readiness (ready while the tenant answers
/// its polls).
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub metrics: telemetry::AgentMetrics,
    pub health: Arc<telemetry::Health>,
}

/// Serves sign-in requests with `pollers` long polls until `shutdown`
/// completes (`Ok`) or the tenant turns the agent away (`Revoked`).
pub async fn run(
    config_path: &Path,
    pollers: usize,
    telemetry: Option<Telemetry>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let text = std::fs::read_to_string(config_path).map_err(|error| AgentError::Read {
        what: "the agent configuration",
        path: config_path.into(),
        error,
    })?;
    let invalid = |why: String| AgentError::Invalid { path: config_path.into(), why };
    let mut config: AgentConfig = toml::from_str(&text).map_err(|e| {
        invalid(format!("an agent config has [agent] (written by `pta-agent register`) and [directory]: {e}"))
    })?;
    let base = base_of(config_path);
    config.directory.resolve_paths(base);
    let key_path = relative_to(base, &config.agent.key_file);
    let key_bytes: [u8; 32] = std::fs::read(&key_path)
        .map_err(|error| AgentError::Read { what: "the agent key", path: key_path.clone(), error })?
        .try_into()
        .map_err(|_| AgentError::Invalid { path: key_path.clone(), why: "not an agent key (32 bytes)".into() })?;
    let credential_path = relative_to(base, &config.agent.credential_file);
    let credential_text = std::fs::read_to_string(&credential_path).map_err(|error| AgentError::Read {
        what: "the agent credential",
        path: credential_path.clone(),
        error,
    })?;
    let credential: StoredCredential = serde_json::from_str(&credential_text).map_err(|e| AgentError::Invalid {
        path: credential_path.clone(),
        why: format!("not an agent credential ({e})"),
    })?;
    let plain = if config.allow_plain_binds { PlainBinds::AllowInsecure } else { PlainBinds::Refuse };
    let validator = Validator::new(config.directory.to_settings()?, config.user_filter.clone(), plain)
        .map_err(|error| AgentError::Directory { path: config_path.into(), error: Box::new(error) })?;
    proto::url::check_web_url(&config.agent.tenant)
        .map_err(|why| AgentError::TenantUrl { tenant: config.agent.tenant.clone(), why })?;
    let ca_file = config.agent.ca_file.as_deref().map(|f| relative_to(base, f));
    let agent = Arc::new(Agent {
        tenant: config.agent.tenant.trim_end_matches('/').to_string(),
        id: config.agent.id.clone(),
        key: AgentKey::from_bytes(key_bytes),
        credential: tokio::sync::RwLock::new(credential.credential.clone()),
        credential_path,
        http: http_client(ca_file.as_deref())?,
        validator,
        seen: std::sync::Mutex::new(Seen::default()),
        telemetry,
    });
    tracing::info!(agent = %agent.id, tenant = %agent.tenant, directory = %config.directory.name, "serving sign-ins");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel::<Option<String>>(None);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..pollers.max(1) {
        tasks.spawn(poll_loop(agent.clone(), stop_tx.clone()));
    }
    tasks.spawn(rotate_loop(agent.clone(), credential.expires));
    tokio::select! {
        _ = stop_rx.changed() => {
            let reason = stop_rx.borrow().clone().unwrap_or_default();
            Err(AgentError::Revoked(reason))
        }
        () = shutdown => Ok(()),
    }
}

async fn poll_loop(agent: Arc<Agent>, stop: tokio::sync::watch::Sender<Option<String>>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let credential = agent.credential.read().await.clone();
        let resp = agent
            .http
            .get(format!("{}{}", agent.tenant, proto::pta::POLL_PATH))
            .bearer_auth(&credential)
            .timeout(Duration::from_secs(proto::pta::MAX_POLL_WAIT_SECS + 15))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                if let Some(t) = &agent.telemetry {
                    t.health.set_not_ready(format!("the tenant cannot be reached: {e}"));
                }
                tracing::warn!(error = %e, "the tenant cannot be reached; retrying in {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let reason = resp.json::<ErrorReply>().await.map(|e| e.error).unwrap_or_else(|_| "unauthorized".into());
            let _ = stop.send(Some(reason));
            return;
        }
        let reply: PollReply = match resp.json().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "the tenant's answer was not a poll reply");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        if let Some(t) = &agent.telemetry {
            t.metrics.polled(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            );
            t.health.set_ready();
        }
        for sealed in reply.requests {
            tokio::spawn(answer(agent.clone(), sealed));
        }
    }
}

async fn answer(agent: Arc<Agent>, sealed: Sealed) {
    let opened = {
        let mut seen = agent.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pta::open(&agent.key, &agent.id, &sealed, now_secs(), &mut seen)
    };
    let (credentials, answer_key) = match opened {
        Ok(c) => c,
        Err(e) => {
            // Not answered: a tampered, replayed or late request gets nothing.
            tracing::warn!(request = %sealed.request_id, error = %e, "refused a sign-in request");
            if let Some(t) = &agent.telemetry {
                t.metrics.answered("refused_request");
            }
            return;
        }
    };
    let outcome = match &credentials.write {
        None => agent.validator.validate(&credentials.username, &credentials.password).await,
        Some(write) => {
            let outcome = agent.validator.write_password(&credentials.username, &credentials.password, write).await;
            tracing::info!(request = %sealed.request_id, outcome = outcome.as_str(), "password write");
            outcome
        }
    };
    drop(credentials);
    tracing::debug!(request = %sealed.request_id, outcome = outcome.as_str(), "answered");
    if let Some(t) = &agent.telemetry {
        t.metrics.answered(&outcome.as_str().replace('-', "_"));
    }
    let credential = agent.credential.read().await.clone();
    let mac = answer_key.sign(&sealed.request_id, outcome);
    let sent = agent
        .http
        .post(format!("{}{}", agent.tenant, proto::pta::RESPOND_PATH))
        .bearer_auth(&credential)
        .json(&Answer { request_id: sealed.request_id, outcome, mac })
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not deliver an answer");
    }
}

/// Renews the credential when half its life is gone.
async fn rotate_loop(agent: Arc<Agent>, mut expires: i64) {
    loop {
        let renew_at = expires - CREDENTIAL_LIFETIME_SECS / 2;
        let wait = (renew_at - now_secs()).clamp(0, 3600);
        tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(3600))).await;
        if now_secs() < renew_at {
            continue;
        }
        let credential = agent.credential.read().await.clone();
        let resp = agent
            .http
            .post(format!("{}{}", agent.tenant, proto::pta::ROTATE_PATH))
            .bearer_auth(&credential)
            .send()
            .await;
        let renewed: Credential = match resp {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "the tenant's rotation answer was not a credential; retrying in a minute");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    continue;
                }
            },
            other => {
                tracing::warn!(answer = ?other.map(|r| r.status()), "credential rotation failed; retrying in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
        };
        let record = StoredCredential { credential: renewed.credential.clone(), expires: renewed.credential_expires };
        let saved = serde_json::to_string(&record)
            .map_err(|e| e.to_string())
            .and_then(|t| write_secret(&agent.credential_path, t.as_bytes()).map_err(|e| e.to_string()));
        match saved {
            Ok(()) => {
                *agent.credential.write().await = renewed.credential;
                expires = renewed.credential_expires;
                tracing::info!("agent credential rotated");
            }
            Err(e) => tracing::error!(error = %e, "the new credential could not be saved; keeping the old one"),
        }
    }
}
