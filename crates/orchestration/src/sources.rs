//! A configured `[[source]]` as one `Source`: an LDAP directory or an LDIF
//! file, so the daemon, preview and IdFix treat both alike.

use std::time::Duration;

use config::{SourceConfig, SourceKind};
use connector_ldap::{LdapError, LdapSource};
use connector_ldif::{LdifSource, LdifSourceError};
use directory::Dn;
use sync::mapping::Flavor;
use sync::phs::Found;
use sync::{ImportSink, ImportSummary, Source, SourceId, Watermark};

use crate::{Result, directory_error};

/// What a configured source reads from.
#[derive(Debug)]
pub enum Directory {
    Ldap(Box<LdapSource>),
    Ldif(LdifSource),
}

/// A failed import of either kind.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Ldap(#[from] LdapError),
    #[error(transparent)]
    Ldif(#[from] LdifSourceError),
}

impl Directory {
    /// The source `src` configures (nothing is contacted yet).
    pub fn open(src: &SourceConfig) -> Result<Directory> {
        match (src.kind, &src.path) {
            (SourceKind::Ldif, Some(path)) => Ok(Directory::Ldif(LdifSource::new(path))),
            _ => {
                let ldap = LdapSource::new(src.to_settings()?).map_err(|e| directory_error(&src.name, e))?;
                Ok(Directory::Ldap(Box::new(ldap)))
            }
        }
    }

    /// Connects (or reconnects) and returns the mapping flavour: the
    /// server's, or plain LDAP's for a file.
    pub async fn connect(&mut self, name: &str) -> Result<Flavor> {
        match self {
            Directory::Ldap(ldap) => {
                let (_, profile) = ldap.connect().await.map_err(|e| directory_error(name, e))?;
                Ok(profile.kind.mapping_flavor())
            }
            Directory::Ldif(_) => Ok(Flavor::Ldap),
        }
    }

    /// Waits up to `timeout` for a change the server pushes; `false` when
    /// this source cannot tell (then the caller waits its interval). A lost
    /// connection ends the wait as a change: the cycle it starts reconnects
    /// and reads what happened meanwhile (or fails and backs off), and the
    /// next wait arms a new search — a restarted directory is not left
    /// unwatched for the rest of the interval.
    pub async fn wait_for_change(&mut self, timeout: Duration) -> bool {
        match self {
            Directory::Ldap(ldap) => match ldap.wait_for_change(timeout).await {
                Ok(Some(_)) => true,
                Ok(None) => false,
                Err(e @ (LdapError::Connection { .. } | LdapError::Unreachable { .. })) => {
                    tracing::info!(error = %e, "the change notification search was cut; starting a cycle to reconnect");
                    true
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no change notification; waiting the interval");
                    false
                }
            },
            Directory::Ldif(_) => false,
        }
    }
}

impl Source for Directory {
    type Error = DirectoryError;

    async fn full_import(
        &mut self,
        previous: Option<&Watermark>,
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<ImportSummary, DirectoryError> {
        match self {
            Directory::Ldap(s) => Ok(s.full_import(previous, sink).await?),
            Directory::Ldif(s) => Ok(s.full_import(previous, sink).await?),
        }
    }

    async fn delta_import(
        &mut self,
        since: &Watermark,
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<ImportSummary, DirectoryError> {
        match self {
            Directory::Ldap(s) => Ok(s.delta_import(since, sink).await?),
            Directory::Ldif(s) => Ok(s.delta_import(since, sink).await?),
        }
    }

    async fn reread(
        &mut self,
        objects: &[(SourceId, Dn)],
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<u64, DirectoryError> {
        match self {
            Directory::Ldap(s) => Ok(s.reread(objects, sink).await?),
            Directory::Ldif(s) => Ok(s.reread(objects, sink).await?),
        }
    }

    fn replicates_secrets(&self) -> bool {
        match self {
            Directory::Ldap(s) => s.replicates_secrets(),
            Directory::Ldif(s) => s.replicates_secrets(),
        }
    }

    async fn read_secrets(
        &mut self,
        objects: &[(SourceId, Dn)],
        population: usize,
    ) -> Result<Vec<(SourceId, Found)>, DirectoryError> {
        match self {
            Directory::Ldap(s) => Ok(s.read_secrets(objects, population).await?),
            Directory::Ldif(s) => Ok(s.read_secrets(objects, population).await?),
        }
    }
}
