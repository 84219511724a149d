//! SCIM errors (RFC 7644 §3.12): an HTTP status, a `scimType` and a detail.

use serde_json::{Value, json};

pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// The `scimType` values of RFC 7644 Table 9 (and `invalidValue` for bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScimType {
    InvalidFilter,
    TooMany,
    Uniqueness,
    Mutability,
    InvalidSyntax,
    InvalidPath,
    NoTarget,
    InvalidValue,
    InvalidVers,
    Sensitive,
}

impl ScimType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScimType::InvalidFilter => "invalidFilter",
            ScimType::TooMany => "tooMany",
            ScimType::Uniqueness => "uniqueness",
            ScimType::Mutability => "mutability",
            ScimType::InvalidSyntax => "invalidSyntax",
            ScimType::InvalidPath => "invalidPath",
            ScimType::NoTarget => "noTarget",
            ScimType::InvalidValue => "invalidValue",
            ScimType::InvalidVers => "invalidVers",
            ScimType::Sensitive => "sensitive",
        }
    }

    /// The HTTP status RFC 7644 pairs with this type.
    pub fn status(self) -> u16 {
        match self {
            ScimType::Uniqueness => 409,
            _ => 400,
        }
    }
}

/// A SCIM error, ready to be sent as a response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ScimError {
    pub status: u16,
    pub scim_type: Option<ScimType>,
    pub detail: String,
}

impl ScimError {
    pub fn new(scim_type: ScimType, detail: impl Into<String>) -> Self {
        ScimError { status: scim_type.status(), scim_type: Some(scim_type), detail: detail.into() }
    }

    /// An error with a status and no `scimType` (404, 401, 412, 500 …).
    pub fn status(status: u16, detail: impl Into<String>) -> Self {
        ScimError { status, scim_type: None, detail: detail.into() }
    }

    pub fn invalid_filter(detail: impl Into<String>) -> Self {
        ScimError::new(ScimType::InvalidFilter, detail)
    }

    pub fn invalid_path(detail: impl Into<String>) -> Self {
        ScimError::new(ScimType::InvalidPath, detail)
    }

    pub fn invalid_value(detail: impl Into<String>) -> Self {
        ScimError::new(ScimType::InvalidValue, detail)
    }

    pub fn no_target(detail: impl Into<String>) -> Self {
        ScimError::new(ScimType::NoTarget, detail)
    }

    pub fn mutability(detail: impl Into<String>) -> Self {
        ScimError::new(ScimType::Mutability, detail)
    }

    /// The JSON body of RFC 7644 §3.12 (`status` is a string there).
    pub fn to_json(&self) -> Value {
        let mut body = json!({ "schemas": [ERROR_SCHEMA], "status": self.status.to_string(), "detail": self.detail });
        if let (Some(t), Some(obj)) = (self.scim_type, body.as_object_mut()) {
            obj.insert("scimType".into(), Value::String(t.as_str().into()));
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let e = ScimError::new(ScimType::Uniqueness, "userName is taken");
        assert_eq!(
            e.to_json(),
            json!({"schemas": [ERROR_SCHEMA], "status": "409", "scimType": "uniqueness", "detail": "userName is taken"})
        );
        assert_eq!(ScimError::status(404, "no such user").to_json()["status"], "404");
        assert!(ScimError::status(404, "x").to_json().get("scimType").is_none());
    }
}
