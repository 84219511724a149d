//! Reaching PostgreSQL from synchronous code, shared by the sync engine's
//! store and the tenant.
//!
//! The driver is `tokio-postgres` (with `tokio-postgres-rustls` for TLS):
//! the asynchronous driver is the well-kept one, and the sync and `postgres`
//! crates are thin wrappers over it anyway. Each connection is driven by a
//! thread of its own (a one-thread runtime), and callers wait for a query
//! with [`block`]: that never needs — or nests — the caller's runtime, so a
//! connection can be used from inside a daemon's runtime or from a blocking
//! task alike.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use tokio_postgres;
use tokio_postgres::Client;

/// Why the database could not be used: one line naming the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PgError(pub String);

/// How to reach the database.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// `postgres://user@host:port/database[?options]`, without a password.
    pub url: String,
    /// From a file or the environment, never the command line.
    pub password: Option<String>,
    pub tls: PgTls,
    /// For connecting, and for noticing a dead server on an open connection.
    pub timeout: Duration,
    /// Shown in `pg_stat_activity`.
    pub application_name: String,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// TLS to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// No TLS (a loopback or Unix-socket database, or `sslmode=disable` said outright).
    Plain,
    /// TLS required; the server's certificate must chain to this CA and name the host.
    Verified { ca_file: PathBuf },
}

impl DatabaseSettings {
    /// What can be known before connecting: the URL parses, holds no
    /// password, and a database beyond this machine is reached with TLS
    /// (or `sslmode=disable` says a plain connection is wanted).
    pub fn check(&self) -> Result<(), PgError> {
        let config = self.driver_config()?;
        if self.tls == PgTls::Plain && config.get_ssl_mode() != tokio_postgres::config::SslMode::Disable {
            for host in config.get_hosts() {
                if let tokio_postgres::config::Host::Tcp(name) = host {
                    let loopback = name == "localhost"
                        || name.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                    if !loopback {
                        return Err(PgError(format!(
                            "the database at {name} would be reached over the network without TLS: give a CA file to verify it with, or add sslmode=disable to the URL to accept a plain connection"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The driver's configuration; errors name what is wrong with the URL.
    fn driver_config(&self) -> Result<tokio_postgres::Config, PgError> {
        let mut config: tokio_postgres::Config =
            self.url.parse().map_err(|e| PgError(format!("the database URL is not valid: {}", describe(&e))))?;
        if config.get_password().is_some() {
            return Err(PgError(
                "the database URL holds a password: give it in a file or the environment instead".into(),
            ));
        }
        if let Some(password) = &self.password {
            config.password(password.as_bytes());
        }
        if self.tls != PgTls::Plain {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        config
            .connect_timeout(self.timeout)
            .keepalives(true)
            .keepalives_idle(self.timeout)
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(self.timeout)
            .application_name(&self.application_name);
        Ok(config)
    }
}

/// A driver error as one line naming the cause (the driver's own `Display`
/// says only "db error" for what the server reported).
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({}: {})", db.message(), db.severity(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A driver error as a [`PgError`].
pub fn pg(e: tokio_postgres::Error) -> PgError {
    PgError(describe(&e))
}

/// Waits for a client future. The connection's IO runs on its own thread,
/// so this never needs (or nests) the caller's runtime.
pub fn block<F: Future>(future: F) -> F::Output {
    futures_executor::block_on(future)
}

/// Opens a connection and starts the thread that drives it (it ends when
/// the client is dropped or the connection breaks).
pub fn connect(settings: &DatabaseSettings) -> Result<Client, PgError> {
    let mut config = settings.driver_config()?;
    // A prepared statement's generic plan is fixed when the tables are still
    // small (a first import fills them inside one transaction, before any
    // statistics): it would scan where an index lookup is right, making a
    // large first cycle quadratic. Plan each execution with its values.
    config.options("-c plan_cache_mode=force_custom_plan");
    let tls = settings.tls.clone();
    let (answer, connected) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("postgres-connection".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = answer.send(Err(PgError(format!("cannot start the database connection: {e}"))));
                    return;
                }
            };
            runtime.block_on(async move {
                match tls {
                    PgTls::Plain => drive(&config, tokio_postgres::NoTls, answer).await,
                    PgTls::Verified { ca_file } => match tls_connector(&ca_file) {
                        Ok(connector) => drive(&config, connector, answer).await,
                        Err(e) => {
                            let _ = answer.send(Err(e));
                        }
                    },
                }
            });
        })
        .map_err(|e| PgError(format!("cannot start the database connection: {e}")))?;
    connected.recv().map_err(|_| PgError("the database connection thread ended".into()))?
}

/// Connects, hands the client over, then drives the connection until it ends.
async fn drive<T>(config: &tokio_postgres::Config, tls: T, answer: std::sync::mpsc::SyncSender<Result<Client, PgError>>)
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    match config.connect(tls).await {
        Ok((client, connection)) => {
            let _ = answer.send(Ok(client));
            if let Err(e) = connection.await {
                tracing::warn!(error = %describe(&e), "the database connection broke");
            }
        }
        Err(e) => {
            let _ = answer.send(Err(PgError(format!("cannot connect to the database: {}", describe(&e)))));
        }
    }
}

fn tls_connector(ca_file: &std::path::Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| PgError(format!("cannot read the database CA file {}: {e}", ca_file.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| PgError(format!("the database CA file {}: {e}", ca_file.display())))?;
        roots.add(cert).map_err(|e| PgError(format!("the database CA file {}: {e}", ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(PgError(format!("the database CA file {} holds no certificate", ca_file.display())));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Applies the schema versions of `component` this build has and the
/// database lacks, in one transaction under an advisory lock (nodes that
/// start together migrate once); refuses a database whose schema is newer.
/// Versions are kept in `idbridge_schema`, one row per component.
pub fn migrate(client: &mut Client, component: &str, migrations: &[String]) -> Result<(), PgError> {
    block(async {
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock(7305571161)", &[]).await.map_err(pg)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS idbridge_schema (component TEXT PRIMARY KEY, version INT NOT NULL)",
        )
        .await
        .map_err(pg)?;
        let version: i32 = tx
            .query_opt("SELECT version FROM idbridge_schema WHERE component = $1", &[&component])
            .await
            .map_err(pg)?
            .map(|r| r.get(0))
            .unwrap_or(0);
        let known = i32::try_from(migrations.len()).map_err(|e| PgError(e.to_string()))?;
        if version > known {
            return Err(PgError(format!(
                "the database's {component} schema is version {version}, newer than this idbridge knows ({known}); upgrade idbridge"
            )));
        }
        let done = usize::try_from(version).map_err(|e| PgError(e.to_string()))?;
        // An upgrade may rebuild a large table: say why the start waits.
        if done > 0 && done < migrations.len() {
            tracing::info!(component, from = done, to = migrations.len(), "upgrading the database schema");
        }
        for (i, sql) in migrations.iter().enumerate().skip(done) {
            tx.batch_execute(sql)
                .await
                .map_err(|e| PgError(format!("{component} schema version {}: {}", i + 1, describe(&e))))?;
            let v = i32::try_from(i + 1).map_err(|e| PgError(e.to_string()))?;
            tx.execute(
                "INSERT INTO idbridge_schema(component, version) VALUES($1, $2)
                 ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                &[&component, &v],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)
    })
}

/// Listens on `channels` (PostgreSQL `LISTEN`) on a connection and thread
/// of its own, calling `on_notification(channel, payload)` for each
/// notification, for as long as the process runs. A broken connection is
/// re-opened with bounded back-off (one log line per failure); while it is
/// down no notification arrives, so callers also re-check on a timer.
pub fn listen<F>(settings: &DatabaseSettings, channels: &[&str], on_notification: F) -> Result<(), PgError>
where
    F: Fn(&str, &str) + Send + 'static,
{
    let config = settings.driver_config()?;
    let tls = settings.tls.clone();
    let listen_sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    std::thread::Builder::new()
        .name("postgres-listener".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                tracing::error!("cannot start the database listener");
                return;
            };
            runtime.block_on(async move {
                let mut backoff = Duration::from_millis(250);
                loop {
                    let result = match &tls {
                        PgTls::Plain => listen_once(&config, tokio_postgres::NoTls, &listen_sql, &on_notification).await,
                        PgTls::Verified { ca_file } => match tls_connector(ca_file) {
                            Ok(connector) => listen_once(&config, connector, &listen_sql, &on_notification).await,
                            Err(e) => Err(e),
                        },
                    };
                    match result {
                        Ok(()) => backoff = Duration::from_millis(250),
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in_ms = backoff.as_millis(), "the database listener is disconnected");
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                    tokio::time::sleep(backoff).await;
                }
            });
        })
        .map_err(|e| PgError(format!("cannot start the database listener: {e}")))?;
    Ok(())
}

/// One listening connection, until it ends: `Ok` if it ran and then
/// closed, `Err` if it could not be set up.
async fn listen_once<T, F>(
    config: &tokio_postgres::Config,
    tls: T,
    sql: &str,
    on_notification: &F,
) -> Result<(), PgError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
    F: Fn(&str, &str),
{
    let (client, mut connection) =
        config.connect(tls).await.map_err(|e| PgError(format!("cannot connect to the database: {}", describe(&e))))?;
    let (ready_tx, mut ready_rx) = tokio::sync::oneshot::channel();
    let listen = async {
        let result = client.batch_execute(sql).await;
        let _ = ready_tx.send(result);
        // Keep the client (and so the session) alive while the connection runs.
        std::future::pending::<()>().await;
    };
    tokio::pin!(listen);
    let mut ready = false;
    loop {
        tokio::select! {
            () = &mut listen => {}
            answer = &mut ready_rx, if !ready => {
                ready = true;
                match answer {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(pg(e)),
                    Err(_) => return Err(PgError("the database listener stopped".into())),
                }
            }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => on_notification(n.channel(), n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) if ready => {
                    tracing::warn!(error = %describe(&e), "the database listener's connection broke");
                    return Ok(());
                }
                Some(Err(e)) => return Err(pg(e)),
                None => return Ok(()),
            },
        }
    }
}
