//! `idbridge pta-agent register|run`: the pass-through authentication agent.
//! It makes its key pair where it runs (the private key never leaves the
//! machine), keeps an outbound long poll to the tenant — no inbound port —
//! opens each sealed sign-in request, checks the password by binding to the
//! directory, and answers with the outcome.
//!
//! `agent.toml`:
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
//! bind_dn = "svc-pta@corp.example.com"   # reads users; never binds as them
//! password_file = "svc-pta.password"
//! base_dns = ["DC=corp,DC=example,DC=com"]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use connector_ldap::validate::Validator;
use pta::{AgentKey, Sealed, Seen};
use serde::{Deserialize, Serialize};

use crate::config::SourceConfig;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Make this agent's key pair and register it with the tenant (one-time token).
    Register {
        /// The tenant's address, e.g. https://tenant.example.com
        #[arg(long)]
        tenant: String,
        /// A token from `idbridge tenant pta-token create`.
        #[arg(long, env = "IDBRIDGE_PTA_TOKEN")]
        token: String,
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// A name for this agent (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// PEM CA to trust for the tenant's HTTPS.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Serve sign-in requests until stopped (or revoked).
    Run {
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Long polls kept open at once (each takes a batch of requests).
        #[arg(long, default_value_t = 4)]
        pollers: usize,
    },
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credential {
    credential: String,
    /// Unix seconds.
    expires: i64,
}

fn relative(config: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() { file.to_path_buf() } else { config.parent().unwrap_or(Path::new(".")).join(file) }
}

fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("cannot read the CA file {}", path.display()))?;
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).context("the CA file is not PEM")?);
    }
    Ok(builder.build()?)
}

pub async fn run(command: AgentCommand) -> Result<()> {
    match command {
        AgentCommand::Register { tenant, token, config, name, ca_file } => {
            register(&tenant, &token, &config, name, ca_file).await
        }
        AgentCommand::Run { config, pollers } => serve(&config, pollers.max(1)).await,
    }
}

async fn register(
    tenant: &str,
    token: &str,
    config: &Path,
    name: Option<String>,
    ca_file: Option<PathBuf>,
) -> Result<()> {
    let tenant = tenant.trim_end_matches('/').to_string();
    // The agent's credential and users' sealed passwords travel to this address.
    tenant::util::check_web_url(&tenant).map_err(|why| anyhow::anyhow!("--tenant {tenant:?}: {why}"))?;
    let key = AgentKey::generate();
    let name = name.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "agent".into())
    });
    let client = http_client(ca_file.as_deref())?;
    let resp = client
        .post(format!("{tenant}/pta/v1/register"))
        .json(&serde_json::json!({"token": token, "public_key": key.public(), "name": name, "version": env!("CARGO_PKG_VERSION")}))
        .send()
        .await
        .with_context(|| format!("cannot reach the tenant at {tenant}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the tenant refused the registration ({status}): {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    let agent_id = body["agent_id"].as_str().context("the tenant's answer has no agent_id")?.to_string();
    let credential = Credential {
        credential: body["credential"].as_str().context("the tenant's answer has no credential")?.to_string(),
        expires: body["credential_expires"].as_i64().unwrap_or(0),
    };
    let (key_file, credential_file) = (PathBuf::from("agent.key"), PathBuf::from("agent.credential"));
    crate::files::write_secret(&relative(config, &key_file), &key.to_bytes())?;
    crate::files::write_secret(&relative(config, &credential_file), serde_json::to_string(&credential)?.as_bytes())?;
    // Keep everything else in the file (the [directory] section) as it is.
    let existing = std::fs::read_to_string(config).unwrap_or_default();
    let mut doc: toml::Table = if existing.trim().is_empty() {
        toml::Table::new()
    } else {
        toml::from_str(&existing).with_context(|| format!("{} is not TOML", config.display()))?
    };
    let section = AgentSection { tenant, id: agent_id.clone(), key_file, credential_file, ca_file };
    doc.insert("agent".into(), toml::Value::try_from(&section)?);
    let has_directory = doc.contains_key("directory");
    std::fs::write(config, toml::to_string(&doc)?).with_context(|| format!("cannot write {}", config.display()))?;
    eprintln!(
        "agent {agent_id} registered; its private key is in {} (never sent anywhere)",
        relative(config, &section.key_file).display()
    );
    if !has_directory {
        eprintln!(
            "now add a [directory] section to {} (urls, bind_dn, password_file, base_dns), then: idbridge pta-agent run --config {}",
            config.display(),
            config.display()
        );
    }
    Ok(())
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
}

async fn serve(config_path: &Path, pollers: usize) -> Result<()> {
    let text =
        std::fs::read_to_string(config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: AgentConfig = toml::from_str(&text).with_context(|| {
        format!(
            "in {}: an agent config has [agent] (written by `pta-agent register`) and [directory]",
            config_path.display()
        )
    })?;
    let key_path = relative(config_path, &config.agent.key_file);
    let key_bytes: [u8; 32] = std::fs::read(&key_path)
        .with_context(|| format!("cannot read the agent key {}", key_path.display()))?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{} is not an agent key (32 bytes)", key_path.display()))?;
    let credential_path = relative(config_path, &config.agent.credential_file);
    let credential: Credential = serde_json::from_str(
        &std::fs::read_to_string(&credential_path)
            .with_context(|| format!("cannot read {}", credential_path.display()))?,
    )
    .with_context(|| format!("{} is not an agent credential", credential_path.display()))?;
    let plain = if config.allow_plain_binds {
        connector_ldap::validate::PlainBinds::AllowInsecure
    } else {
        connector_ldap::validate::PlainBinds::Refuse
    };
    let validator = Validator::new(config.directory.to_settings()?, config.user_filter.clone(), plain)
        .with_context(|| format!("in {}", config_path.display()))?;
    tenant::util::check_web_url(&config.agent.tenant)
        .map_err(|why| anyhow::anyhow!("in {}: tenant {:?}: {why}", config_path.display(), config.agent.tenant))?;
    let agent = Arc::new(Agent {
        tenant: config.agent.tenant.trim_end_matches('/').to_string(),
        id: config.agent.id.clone(),
        key: AgentKey::from_bytes(key_bytes),
        credential: tokio::sync::RwLock::new(credential.credential.clone()),
        credential_path,
        http: http_client(config.agent.ca_file.as_deref())?,
        validator,
        seen: std::sync::Mutex::new(Seen::default()),
    });
    eprintln!("agent {} serving sign-ins for {} (directory {:?})", agent.id, agent.tenant, config.directory.name);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel::<Option<String>>(None);
    let mut tasks = Vec::new();
    for _ in 0..pollers {
        let (agent, stop_tx) = (agent.clone(), stop_tx.clone());
        tasks.push(tokio::spawn(async move { poll_loop(agent, stop_tx).await }));
    }
    {
        let agent = agent.clone();
        let expires = credential.expires;
        tasks.push(tokio::spawn(async move { rotate_loop(agent, expires).await }));
    }
    tokio::select! {
        _ = stop_rx.changed() => {
            let reason = stop_rx.borrow().clone().unwrap_or_default();
            bail!("{reason}")
        }
        () = crate::tenant_cmd::shutdown_signal() => {
            eprintln!("agent stopped");
            Ok(())
        }
    }
}

async fn poll_loop(agent: Arc<Agent>, stop: tokio::sync::watch::Sender<Option<String>>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let credential = agent.credential.read().await.clone();
        let resp = agent
            .http
            .get(format!("{}/pta/v1/poll", agent.tenant))
            .bearer_auth(&credential)
            .timeout(Duration::from_secs(40))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "the tenant cannot be reached; retrying in {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            let _ = stop.send(Some(format!(
                "the tenant no longer accepts this agent ({}); it was revoked or its credential expired — register it again",
                body["error"].as_str().unwrap_or("unauthorized")
            )));
            return;
        }
        let body: serde_json::Value = match resp.json().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "the tenant's answer was not JSON");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        let requests: Vec<Sealed> = serde_json::from_value(body["requests"].clone()).unwrap_or_default();
        for sealed in requests {
            let agent = agent.clone();
            tokio::spawn(async move { answer(agent, sealed).await });
        }
    }
}

async fn answer(agent: Arc<Agent>, sealed: Sealed) {
    let opened = {
        let mut seen = agent.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pta::open(&agent.key, &agent.id, &sealed, tenant::util::now_secs(), &mut seen)
    };
    let (credentials, answer_key) = match opened {
        Ok(c) => c,
        Err(e) => {
            // Not answered: a tampered, replayed or late request gets nothing.
            tracing::warn!(request = %sealed.request_id, error = %e, "refused a sign-in request");
            return;
        }
    };
    let outcome = agent.validator.validate(&credentials.username, &credentials.password).await;
    drop(credentials);
    tracing::debug!(request = %sealed.request_id, outcome = outcome.as_str(), "validated");
    let credential = agent.credential.read().await.clone();
    let sent = agent
        .http
        .post(format!("{}/pta/v1/respond", agent.tenant))
        .bearer_auth(&credential)
        .json(&serde_json::json!({
            "request_id": sealed.request_id,
            "outcome": outcome,
            "mac": answer_key.sign(&sealed.request_id, outcome),
        }))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not deliver an answer");
    }
}

/// Renews the credential when half its life is gone.
async fn rotate_loop(agent: Arc<Agent>, mut expires: i64) {
    let lifetime = tenant::pta::CREDENTIAL_LIFETIME_SECS;
    loop {
        let renew_at = expires - lifetime / 2;
        let wait = (renew_at - tenant::util::now_secs()).clamp(0, 3600);
        tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(3600))).await;
        if tenant::util::now_secs() < renew_at {
            continue;
        }
        let credential = agent.credential.read().await.clone();
        let resp = agent.http.post(format!("{}/pta/v1/rotate", agent.tenant)).bearer_auth(&credential).send().await;
        let body: serde_json::Value = match resp {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
            other => {
                tracing::warn!(answer = ?other.map(|r| r.status()), "credential rotation failed; retrying in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
        };
        let (Some(new), Some(new_expires)) = (body["credential"].as_str(), body["credential_expires"].as_i64()) else {
            continue;
        };
        let record = Credential { credential: new.to_string(), expires: new_expires };
        match serde_json::to_string(&record)
            .map_err(anyhow::Error::from)
            .and_then(|t| crate::files::write_secret(&agent.credential_path, t.as_bytes()))
        {
            Ok(()) => {
                *agent.credential.write().await = new.to_string();
                expires = new_expires;
                tracing::info!("agent credential rotated");
            }
            Err(e) => tracing::error!(error = %e, "the new credential could not be saved; keeping the old one"),
        }
    }
}
