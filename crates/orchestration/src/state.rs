//! The sync state as configured: a SQLite file (one writer, locked) or a
//! PostgreSQL database shared by an active and a standby daemon (the
//! writer holds the lease). Readers (`status`, `history`, `errors`,
//! `explain`) open either without taking anything.

use std::time::Duration;

use config::{Config, StateLocation};
use store::lease::{Lease, LeaseInfo};
use store::{DatabaseSettings, PgStore, PgTls, SqliteStore, StateStore};

use crate::{Error, Result};

/// A store opened to run cycles, with what entitles it to write.
pub struct Writer {
    pub store: Box<dyn StateStore>,
    /// PostgreSQL: the lease its commits are fenced by (renewed while held).
    pub lease: Option<Lease>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("lease", &self.lease).finish_non_exhaustive()
    }
}

impl Writer {
    /// False once a PostgreSQL lease is lost (a SQLite lock is never lost).
    pub fn may_write(&self) -> bool {
        self.lease.as_ref().is_none_or(Lease::is_held)
    }
}

/// Who runs cycles on a state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveWriter {
    /// No daemon holds the state.
    None,
    /// A process on this machine holds the SQLite file's lock.
    Process { pid: String },
    /// The PostgreSQL lease: its holder (host and process), when taken, and
    /// milliseconds until it expires (≤ 0: expired, a standby may take over).
    Lease(LeaseInfo),
}

/// Where the configured state is, resolved: a file, or a database with
/// its connection settings (password read, TLS chosen, URL checked).
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite(std::path::PathBuf),
    Postgres(DatabaseSettings),
}

/// The configured state's backend.
pub fn backend(config: &Config) -> Result<Backend> {
    let url = match &config.sync.state {
        StateLocation::File(path) => return Ok(Backend::Sqlite(path.clone())),
        StateLocation::Postgres(url) => url,
    };
    let password = config.sync.database_password()?.map(|s| s.expose().to_string());
    let tls = match &config.sync.database_ca_file {
        Some(ca_file) => PgTls::Verified { ca_file: ca_file.clone() },
        None => PgTls::Plain,
    };
    let settings = DatabaseSettings {
        url: url.clone(),
        password,
        tls,
        timeout: Duration::from_secs(15),
        application_name: "idbridge-sync".into(),
    };
    settings
        .check()
        .map_err(|error| Error::OpenStore { state: url.clone(), error: ::sync::engine::StoreError(error.0) })?;
    Ok(Backend::Postgres(settings))
}

fn open_error(config: &Config) -> impl FnOnce(::sync::engine::StoreError) -> Error + '_ {
    move |error| Error::OpenStore { state: config.sync.state.to_string(), error }
}

/// Opens the state to read, alongside a running daemon.
pub fn open_reader(config: &Config) -> Result<Box<dyn StateStore>> {
    Ok(match backend(config)? {
        Backend::Postgres(db) => Box::new(PgStore::connect(&db).map_err(open_error(config))?),
        Backend::Sqlite(path) => Box::new(SqliteStore::open_for_reading(&path).map_err(open_error(config))?),
    })
}

/// This process, as a lease holder: host name and process id.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host} pid {}", std::process::id())
}

/// Opens the state to write: the SQLite file's lock, or the PostgreSQL
/// lease if it is free. `Ok(Err(holder))`: another daemon holds the lease.
pub fn open_writer(config: &Config) -> Result<std::result::Result<Writer, LeaseInfo>> {
    match backend(config)? {
        Backend::Postgres(db) => {
            let mut store = PgStore::connect(&db).map_err(open_error(config))?;
            let lease_for = Duration::from_secs(config.sync.lease_secs);
            match store.try_acquire_lease(&holder_name(), lease_for).map_err(open_error(config))? {
                Ok(lease) => Ok(Ok(Writer { store: Box::new(store), lease: Some(lease) })),
                Err(holder) => Ok(Err(holder)),
            }
        }
        Backend::Sqlite(path) => {
            Ok(Ok(Writer { store: Box::new(SqliteStore::open(&path).map_err(open_error(config))?), lease: None }))
        }
    }
}

/// [`open_writer`] for one-shot commands (`sync run --once`, `preview`):
/// a lease left by a process that died is waited out (at most its
/// duration); one a live daemon keeps renewing is refused.
pub async fn open_writer_now(config: &Config) -> Result<Writer> {
    let patience = Duration::from_secs(config.sync.lease_secs) + Duration::from_secs(1);
    let started = std::time::Instant::now();
    loop {
        let holder = match open_writer(config)? {
            Ok(writer) => return Ok(writer),
            Err(holder) => holder,
        };
        if started.elapsed() >= patience {
            return Err(crate::refused!(
                "the sync state {} is in use by the active daemon ({}, renewing its lease); a second writer would undo its cycles. Run this where no daemon is active, or stop the daemons first",
                config.sync.state,
                holder.holder
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Who runs cycles on the configured state.
pub fn active_writer(config: &Config) -> Result<ActiveWriter> {
    match backend(config)? {
        Backend::Postgres(db) => {
            let store = PgStore::connect(&db).map_err(open_error(config))?;
            Ok(match store.lease_holder().map_err(open_error(config))? {
                Some(info) if !info.expired() => ActiveWriter::Lease(info),
                _ => ActiveWriter::None,
            })
        }
        Backend::Sqlite(path) => Ok(match SqliteStore::writer(&path) {
            Some(pid) => ActiveWriter::Process { pid },
            None => ActiveWriter::None,
        }),
    }
}
