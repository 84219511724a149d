//! Typed settings of an LDAP source. The binary builds them from `idbridge.toml`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use directory::Dn;

/// A password held in memory only; never printed.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Reads a password from a file; one trailing newline is dropped.
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Secret> {
        let mut text = std::fs::read_to_string(path)?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        Ok(Secret(text))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How to protect the connection.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Upgrade `ldap://` connections with StartTLS.
    pub starttls: bool,
    /// PEM file with the CA certificate(s) to trust; system roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate and hostname verification. Logged loudly at every connect.
    pub insecure_skip_verify: bool,
}

/// What kind of server; detected from the rootDSE unless forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// Microsoft Active Directory or Samba AD.
    ActiveDirectory,
    OpenLdap,
    #[serde(rename = "389-ds")]
    Ds389,
    Other,
}

impl ServerKind {
    /// The one place that decides which built-in mapping a server's objects
    /// get: Active Directory's (objectGUID anchors, userAccountControl,
    /// sAMAccountName) or plain LDAP's.
    pub fn mapping_flavor(self) -> sync::mapping::Flavor {
        match self {
            ServerKind::ActiveDirectory => sync::mapping::Flavor::ActiveDirectory,
            ServerKind::OpenLdap | ServerKind::Ds389 | ServerKind::Other => sync::mapping::Flavor::Ldap,
        }
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::ActiveDirectory => "Active Directory",
            ServerKind::OpenLdap => "OpenLDAP",
            ServerKind::Ds389 => "389 Directory Server",
            ServerKind::Other => "generic LDAP",
        })
    }
}

/// Everything an LDAP source needs.
#[derive(Debug, Clone)]
pub struct LdapSettings {
    /// Server URLs (`ldap://`, `ldaps://`), tried in order.
    pub urls: Vec<String>,
    /// Simple bind DN (or AD UPN); anonymous when `None`.
    pub bind_dn: Option<String>,
    pub password: Option<Secret>,
    pub tls: TlsSettings,
    pub connect_timeout: Duration,
    pub operation_timeout: Duration,
    /// Subtrees to import; the server's default naming context when empty.
    pub base_dns: Vec<Dn>,
    /// Only objects within one of these OUs (when not empty).
    pub include_ous: Vec<Dn>,
    /// Never objects within these OUs.
    pub exclude_ous: Vec<Dn>,
    /// Attributes to read; all user attributes when `None`. The id and anchor
    /// attributes are always added.
    pub attributes: Option<Vec<String>>,
    /// Extra LDAP filter ANDed with the object-kind filter.
    pub filter: Option<String>,
    pub page_size: u32,
    /// Force the server kind instead of detecting it.
    pub server_kind: Option<ServerKind>,
    /// Attribute used as sourceAnchor instead of the server kind's default.
    pub anchor_attribute: Option<String>,
    /// Active Directory: write each user's objectGUID into an empty
    /// ms-DS-ConsistencyGuid after import (the sourceAnchor then survives a
    /// move to another forest). Needs write access to that attribute.
    pub anchor_write_back: bool,
    /// Active Directory: read users' password hashes by replication
    /// (password hash sync); the bind account needs replication rights.
    pub replicate_secrets: bool,
}

impl Default for LdapSettings {
    fn default() -> Self {
        LdapSettings {
            urls: Vec::new(),
            bind_dn: None,
            password: None,
            tls: TlsSettings::default(),
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(120),
            base_dns: Vec::new(),
            include_ous: Vec::new(),
            exclude_ous: Vec::new(),
            attributes: None,
            filter: None,
            page_size: 1000,
            server_kind: None,
            anchor_attribute: None,
            anchor_write_back: false,
            replicate_secrets: false,
        }
    }
}
