//! The tenant's core: the cloud directory idbridge exports into, without
//! HTTP (that is `tenant-http`). Users, groups and contacts with verified
//! domains in SQLite; sign-in; federation; pass-through authentication.
//!
//! - [`Tenant`]: the service the command line, the wizard and the demo
//!   administer the tenant through.
//! - [`store`]: the database, migrations, settings.
//! - [`objects`]: the directory rules (uniqueness, quarantine, matching, members).
//! - [`domains`], [`tokens`], [`audit`]: administration.
//! - [`console`], [`signin_log`]: what the admin console reads and does
//!   beyond SCIM (roles, its sessions, helpdesk actions, the sign-in log).
//! - [`credentials`], [`signin`]: password hash sync records and checking
//!   passwords with smart lockout.
//! - [`oidc`]: signing keys, tokens and registered relying parties.
//! - [`federation`]: federated domains (OpenID Connect and SAML identity providers).
//! - [`mfa`], [`passkeys`]: second factors (authenticator apps, recovery
//!   codes) and passkeys (WebAuthn), alone or after a password; [`policy`]:
//!   who must give one, and the registration campaign.
//! - [`pta`]: the broker pass-through agents take sign-ins from.

pub mod audit;
pub mod branding;
pub mod cloud_groups;
pub mod console;
pub mod credentials;
pub mod db;
pub mod domains;
pub mod error;
pub mod federation;
pub mod lineage;
pub mod mfa;
pub mod net;
pub mod objects;
pub mod oidc;
pub mod passkeys;
pub mod password_reset;
pub mod policy;
pub mod pta;
pub mod ratelimit;
pub mod saml_idp;
pub mod secrets;
pub mod service;
pub mod signin;
pub mod signin_log;
pub mod store;
pub mod sync_reports;
pub mod tokens;
pub mod util;
pub mod writeback;

pub use error::{Result, TenantError};
pub use service::{BrandingUpdate, Tenant};
pub use store::{Location, Settings, Store};

use std::path::Path;

/// The database file inside a tenant's data directory.
pub const DB_FILE: &str = "tenant.db";

/// Opens the tenant in `data_dir`, creating it (directory, database, initial
/// domain) on first use. Returns the store and whether it was just created.
pub fn open_or_create(data_dir: &Path, initial_domain: &str) -> Result<(Store, bool)> {
    let fresh = !data_dir.join(DB_FILE).exists();
    if fresh {
        // Only a directory made here is restricted: `--data` may name a shared one.
        if !data_dir.exists() {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| TenantError::Io { what: format!("cannot create {}", data_dir.display()), error: e })?;
            restrict_permissions(data_dir)?;
        }
        create_private_file(&data_dir.join(DB_FILE))?;
    }
    let store = Store::open(&data_dir.join(DB_FILE))?;
    let created = ensure_initial_domain(&store, initial_domain)?;
    Ok((store, fresh || created))
}

/// Opens the tenant at `location`, creating it on first use (see
/// [`open_or_create`]; in PostgreSQL the first node to start creates it).
pub fn open_or_create_at(location: &Location, initial_domain: &str) -> Result<(Store, bool)> {
    match location {
        Location::Directory(dir) => open_or_create(dir, initial_domain),
        Location::Postgres { settings, secrets_key } => {
            let store = Store::open_postgres(settings, secrets_key)?;
            let created = ensure_initial_domain(&store, initial_domain)?;
            Ok((store, created))
        }
    }
}

/// Makes the initial domain if there is none (in one write transaction, so
/// nodes starting together make it once); `true` when made.
fn ensure_initial_domain(store: &Store, initial_domain: &str) -> Result<bool> {
    let mut conn = store.lock();
    let tx = conn.transaction()?;
    if domains::list(&tx)?.iter().any(|d| d.initial) {
        return Ok(false);
    }
    domains::add(&tx, initial_domain, domains::AuthType::ManagedPhs, true)?;
    audit::record(
        &tx,
        "idbridge",
        "tenant-created",
        None,
        None,
        Some(&serde_json::json!({"initialDomain": initial_domain})),
    )?;
    tx.commit()?;
    Ok(true)
}

/// Opens an existing tenant (for administration commands).
pub fn open_existing(data_dir: &Path) -> Result<Store> {
    let db = data_dir.join(DB_FILE);
    if !db.exists() {
        return Err(TenantError::Invalid(format!(
            "there is no tenant in {} (start one with `idbridge tenant serve --data {}`)",
            data_dir.display(),
            data_dir.display()
        )));
    }
    Store::open(&db)
}

/// Opens an existing tenant at `location` (for administration commands).
pub fn open_existing_at(location: &Location) -> Result<Store> {
    match location {
        Location::Directory(dir) => open_existing(dir),
        Location::Postgres { settings, secrets_key } => {
            let store = Store::open_postgres(settings, secrets_key)?;
            if !domains::list(&store.read())?.iter().any(|d| d.initial) {
                return Err(TenantError::Invalid(format!(
                    "there is no tenant in {} (start one with `idbridge tenant serve --database {}`)",
                    settings.url, settings.url
                )));
            }
            Ok(store)
        }
    }
}

/// The database holds signing keys and secrets: created for its owner only
/// (SQLite gives its -wal and -shm files the same mode).
fn create_private_file(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map(|_| ())
        .map_err(|e| TenantError::Io { what: format!("cannot create {}", path.display()), error: e })
}

#[cfg(unix)]
fn restrict_permissions(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| TenantError::Io { what: format!("cannot restrict {}", dir.display()), error: e })
}

#[cfg(not(unix))]
fn restrict_permissions(_dir: &Path) -> Result<()> {
    Ok(())
}
