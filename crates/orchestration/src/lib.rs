//! What the `idbridge` commands do, as library functions, so tests and
//! benchmarks call them instead of starting the binary: the sync daemon and
//! its run profiles ([`sync`]), source dumps ([`dump`]), IdFix runs against
//! a directory ([`idfix`]) and the demo ([`demo`]). The binary parses
//! arguments and prints; everything it prints comes from values these
//! functions return or events they report.

#[cfg(feature = "demo")]
pub mod demo;
pub mod dump;
pub mod group_writeback;
pub mod idfix;
pub mod idfix_index;
pub mod init;
pub mod sources;
pub mod state;
pub mod sync;

use std::path::PathBuf;

/// Why a command could not do its work. Each variant names what failed
/// (the file, the source, the tenant) and carries the underlying error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    File(#[from] config::files::FileError),
    #[error("cannot {action} {}: {error}", path.display())]
    Io { action: &'static str, path: PathBuf, error: std::io::Error },
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
    /// An I/O failure whose file the context names.
    #[error("{0}")]
    System(#[from] std::io::Error),
    #[error("source {source_name:?}: {error}")]
    Directory { source_name: String, error: Box<connector_ldap::LdapError> },
    #[error("opening the sync store {state}: {error}")]
    OpenStore { state: String, error: ::sync::engine::StoreError },
    /// A PostgreSQL state's lease was lost mid-run (another daemon took over).
    #[error("this daemon lost the sync lease: another daemon is active now")]
    LeaseLost,
    #[error(transparent)]
    Store(#[from] ::sync::engine::StoreError),
    #[error(transparent)]
    Rules(#[from] ::sync::rules::RuleError),
    #[error(transparent)]
    Tenant(#[from] connector_scim::ScimTargetError),
    #[error(transparent)]
    TenantStore(#[from] tenant::TenantError),
    #[error("source {source_name:?}: the sync cycle failed: {error}")]
    Cycle { source_name: String, error: ::sync::engine::CycleError },
    #[error("{what}: {error}")]
    Ldif { what: String, error: directory::LdifError },
    #[error("{what}: {error}")]
    Dn { what: String, error: directory::DnError },
    #[error("{0}")]
    Idfix(String),
    /// The groups the cloud manages could not be read (group writeback).
    #[error("reading the cloud-managed groups from the tenant: {0}")]
    CloudGroups(String),
    /// The command cannot run as asked; the text says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// What was being done when `source` failed.
    #[error("{what}: {source}")]
    Context { what: String, source: Box<Error> },
    /// The deletion threshold stopped a `--once` run's export.
    #[error("deletion threshold exceeded")]
    DeletionThreshold,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An [`Error::Refused`] with this text.
#[macro_export]
macro_rules! refused {
    ($($arg:tt)*) => { $crate::Error::Refused(format!($($arg)*)) };
}

/// Adds the action and path to an I/O result.
pub(crate) trait IoContext<T> {
    fn on(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn on(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|error| Error::Io { action, path: path.into(), error })
    }
}

pub(crate) fn directory_error(source_name: &str, error: connector_ldap::LdapError) -> Error {
    Error::Directory { source_name: source_name.to_string(), error: Box::new(error) }
}
