//! Errors of the tenant. SCIM-level problems carry their SCIM error.

use scim::ScimError;

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// Not a `source`: the message already holds the cause (a report of
    /// the whole chain would say it twice).
    #[error("the tenant database failed: {0}")]
    Database(crate::db::DbError),
    /// The I/O error is part of the message, not a separate cause, so a
    /// report of the whole chain does not say it twice.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("{0}")]
    Scim(#[from] ScimError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    UnknownAuthType(#[from] proto::admin::UnknownAuthType),
    #[error("{0} not found")]
    NotFound(String),
}

impl TenantError {
    /// The SCIM error to answer with (internal errors become 500 without details).
    pub fn to_scim(&self) -> ScimError {
        match self {
            TenantError::Scim(e) => e.clone(),
            TenantError::Invalid(m) => ScimError::invalid_value(m.clone()),
            TenantError::UnknownAuthType(e) => ScimError::invalid_value(e.to_string()),
            TenantError::NotFound(m) => ScimError::status(404, format!("{m} not found")),
            TenantError::Database(e) if e.is_transient() => ScimError::status(503, "the directory is busy; retry"),
            other => {
                tracing::error!(error = %other, "internal error");
                ScimError::status(500, "internal error (see the tenant's log)")
            }
        }
    }
}

impl From<crate::db::DbError> for TenantError {
    fn from(e: crate::db::DbError) -> TenantError {
        TenantError::Database(e)
    }
}

impl From<rusqlite::Error> for TenantError {
    fn from(e: rusqlite::Error) -> TenantError {
        TenantError::Database(e.into())
    }
}

pub type Result<T> = std::result::Result<T, TenantError>;
