//! `/admin/v1`: tenant administration over HTTP for tools on other hosts
//! (`idbridge init` against a remote tenant). Admin-scoped tokens only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `GET` → [`DomainList`].
pub const DOMAINS_PATH: &str = "/admin/v1/domains";

/// `PUT` with [`SetDomainAuth`] → [`DomainInfo`] (201 when added, 200 when changed or unchanged).
pub fn domain_path(name: &str) -> String {
    format!("{DOMAINS_PATH}/{name}")
}

/// How a verified domain's users sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthType {
    /// Managed: passwords checked against synchronised hashes.
    ManagedPhs,
    /// Managed: passwords checked on-premises by pass-through agents.
    ManagedPta,
    /// Sign-in handed to the organisation's identity provider.
    Federated,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::ManagedPhs => "managed-phs",
            AuthType::ManagedPta => "managed-pta",
            AuthType::Federated => "federated",
        }
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown authentication type {0:?} (managed-phs, managed-pta, federated)")]
pub struct UnknownAuthType(pub String);

impl FromStr for AuthType {
    type Err = UnknownAuthType;
    fn from_str(s: &str) -> Result<Self, UnknownAuthType> {
        match s {
            "managed-phs" | "phs" | "managed" => Ok(AuthType::ManagedPhs),
            "managed-pta" | "pta" => Ok(AuthType::ManagedPta),
            "federated" => Ok(AuthType::Federated),
            other => Err(UnknownAuthType(other.to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub name: String,
    pub auth: AuthType,
    /// The tenant's first domain (made with it).
    pub initial: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainList {
    pub domains: Vec<DomainInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDomainAuth {
    pub auth: AuthType,
}

/// `POST` with [`PasswordReset`] → [`PasswordResetDone`]: an administrator's
/// reset of a synchronised user's password, written on-premises through a
/// pass-through agent first (password writeback). A refusal is an
/// [`crate::ErrorReply`]-style SCIM error whose detail says why (the
/// directory's policy, no agent online, writeback off for the domain).
pub fn password_reset_path(user_name: &str) -> String {
    format!("/admin/v1/users/{user_name}/password")
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordReset {
    pub new_password: String,
}

impl fmt::Debug for PasswordReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordReset { new_password: (hidden) }")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordResetDone {
    pub user_id: String,
    /// The tenant's own password record was replaced too (password hash sync users).
    pub record_replaced: bool,
}
