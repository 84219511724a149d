//! From Entra Connect to idbridge: the configuration Connect exports with
//! `Get-ADSyncServerConfiguration` becomes an `idbridge.toml`, a rules file
//! and a report (`idbridge migrate connect`).
//!
//! - [`export`]: reading the folder (bounded XML, errors name file and element).
//! - [`known`]: the out-of-box rules — what idbridge has in their place, and
//!   the fingerprints that tell an edited one from the original.
//! - [`names`]: attribute names across the bridge (metaverse, tenant).
//! - [`translate`]: the translation; every generated rule is loaded by
//!   `sync`'s rule loader before anything is returned.
//! - [`report`]: what became of every connector, rule and flow.

pub mod export;
pub mod known;
pub mod names;
pub mod report;
pub mod translate;

use std::path::Path;

pub use export::{ConnectExport, ExportError};
pub use report::{Outcome, Report};
pub use translate::{Migration, RULES_FILE};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("{0}: the export has no Active Directory connector, so there is no directory to synchronise")]
    NoDirectory(String),
    /// A translation that the rule loader refuses is a fault here, not in the export.
    #[error("the translated rules do not load ({0}); please report this with the export's rule")]
    Untranslatable(String),
}

/// Reads the export in `dir` and translates it.
pub fn migrate(dir: &Path) -> Result<Migration, MigrateError> {
    let export = export::read(dir)?;
    if !export.connectors.iter().any(|c| c.kind == export::ConnectorKind::ActiveDirectory) {
        return Err(MigrateError::NoDirectory(dir.display().to_string()));
    }
    let migration = translate::translate(&export);
    if !migration.rules.is_empty() {
        sync::rules::RuleSet::load(&[(RULES_FILE.to_string(), migration.rules.clone())])
            .map_err(|e| MigrateError::Untranslatable(e.to_string()))?;
    }
    Ok(migration)
}
