//! `idbridge.toml`: the configuration file. Only this crate reads it; the
//! other libraries get typed settings built from it.
//!
//! Relative paths in a loaded file (secret files, CA files, the state file,
//! rule files) are relative to the file's own directory, never to the
//! current directory: [`Config::load`] makes them absolute.

pub mod files;

use std::path::{Path, PathBuf};
use std::time::Duration;

use connector_ldap::{LdapSettings, Secret, ServerKind, TlsSettings};
use directory::Dn;
use serde::{Deserialize, Serialize};

/// What is wrong with a configuration; the message names the file, the
/// source and the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} {}: {error}", path.display())]
    Read { what: String, path: PathBuf, error: std::io::Error },
    #[error("in {}: {error}", path.display())]
    InFile { path: PathBuf, error: Box<ConfigError> },
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("source {source_name:?}: {what} entry {value:?}: {error}")]
    Dn { source_name: String, what: String, value: String, error: directory::DnError },
    /// A setting that is missing, conflicting or out of range; the text says which and how to fix it.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

fn invalid<T>(text: impl Into<String>) -> Result<T> {
    Err(ConfigError::Invalid(text.into()))
}

/// `file` as given if absolute, else relative to `base` (the config file's directory).
pub fn relative_to(base: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() { file.to_path_buf() } else { base.join(file) }
}

fn resolve(base: &Path, file: &mut Option<PathBuf>) {
    if let Some(f) = file.as_mut() {
        *f = relative_to(base, f);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Where synchronised objects go.
    pub tenant: Option<TenantConfig>,
    #[serde(default)]
    pub sync: SyncConfig,
}

/// The export target: the tenant's SCIM API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The SCIM root, e.g. `https://tenant.example.com/scim/v2`.
    pub url: String,
    /// File holding a bearer token with the `sync` scope (preferred).
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// PEM CA to trust for HTTPS (system roots otherwise).
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_tenant_timeout")]
    pub timeout_secs: u64,
}

fn default_tenant_timeout() -> u64 {
    60
}

/// Where the sync engine keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "PathBuf")]
pub enum StateLocation {
    /// A SQLite file (one daemon).
    File(PathBuf),
    /// A PostgreSQL database, `postgres://user@host[:port]/database[?options]`
    /// (an active and a standby daemon share it).
    Postgres(String),
}

impl From<PathBuf> for StateLocation {
    fn from(path: PathBuf) -> Self {
        match path.to_str() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                StateLocation::Postgres(url.to_string())
            }
            _ => StateLocation::File(path),
        }
    }
}

impl std::fmt::Display for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateLocation::File(path) => write!(f, "{}", path.display()),
            StateLocation::Postgres(url) => f.write_str(url),
        }
    }
}

/// How the engine runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// The sync store: a SQLite file, or a `postgres://` URL.
    #[serde(default = "default_state")]
    pub state: StateLocation,
    /// PostgreSQL state: the password, from a file …
    pub database_password_file: Option<PathBuf>,
    /// … or an environment variable (never in the URL).
    pub database_password_env: Option<String>,
    /// PostgreSQL state: TLS, verified against this PEM CA (host name included).
    pub database_ca_file: Option<PathBuf>,
    /// PostgreSQL state: seconds the active daemon's lease lasts without
    /// renewal; a standby takes over within about this long after the
    /// active one dies.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Seconds between delta cycles in daemon mode.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// More deletions than this in one export stop it before anything is sent.
    #[serde(default = "default_threshold")]
    pub deletion_threshold: usize,
    /// Import and sync, but export nothing (a standby server).
    #[serde(default)]
    pub staging: bool,
    /// Rule files that add to or override the built-in inbound rules (by rule name).
    #[serde(default)]
    pub rules: Vec<PathBuf>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            state: default_state(),
            database_password_file: None,
            database_password_env: None,
            database_ca_file: None,
            lease_secs: default_lease(),
            interval_secs: default_interval(),
            deletion_threshold: default_threshold(),
            staging: false,
            rules: Vec::new(),
        }
    }
}

fn default_state() -> StateLocation {
    StateLocation::File(PathBuf::from("idbridge-sync.db"))
}
fn default_lease() -> u64 {
    5
}
fn default_interval() -> u64 {
    5
}
fn default_threshold() -> usize {
    500
}

impl SyncConfig {
    /// The PostgreSQL state's password, if one is configured.
    pub fn database_password(&self) -> Result<Option<Secret>> {
        read_secret(
            "[sync]",
            "database_password",
            self.database_password_file.as_deref(),
            self.database_password_env.as_deref(),
        )
    }
}

impl TenantConfig {
    pub fn token(&self) -> Result<String> {
        let secret = read_secret("[tenant]", "token", self.token_file.as_deref(), self.token_env.as_deref())?;
        match secret {
            Some(s) => Ok(s.expose().trim().to_string()),
            None => invalid(
                "[tenant]: give token_file or token_env (a token made with `idbridge tenant token create --scope sync`)",
            ),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A short name used in logs and state (e.g. "corp").
    pub name: String,
    /// What the source is: an LDAP directory (the default) or an LDIF file.
    #[serde(default)]
    pub kind: SourceKind,
    /// `kind = "ldif"`: the file (every import reads it whole and reconciles).
    pub path: Option<PathBuf>,
    /// Server URLs, tried in order (failover).
    #[serde(default)]
    pub urls: Vec<String>,
    pub bind_dn: Option<String>,
    /// File holding the bind password (preferred).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the bind password.
    pub password_env: Option<String>,
    #[serde(default)]
    pub base_dns: Vec<String>,
    #[serde(default)]
    pub include_ous: Vec<String>,
    #[serde(default)]
    pub exclude_ous: Vec<String>,
    /// Attributes to read; empty means all user attributes.
    #[serde(default)]
    pub attributes: Vec<String>,
    pub filter: Option<String>,
    /// Group-based scoping: only direct members of these groups (DNs) sync.
    #[serde(default)]
    pub scope_groups: Vec<String>,
    /// Join this source's objects to those of sources listed before it.
    pub join: Option<JoinConfig>,
    /// Group writeback: the groups the cloud manages, written into this
    /// directory (`[source.writeback]`).
    pub writeback: Option<WritebackConfig>,
    /// Password hash sync: send users' password hashes (sambaNTPassword,
    /// ipaNTHash, userPassword) to the tenant. The bind account must be
    /// allowed to read them.
    #[serde(default)]
    pub password_hash_sync: bool,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    #[serde(default = "default_operation_timeout")]
    pub operation_timeout_secs: u64,
    pub server_kind: Option<ServerKind>,
    pub anchor_attribute: Option<String>,
    /// AD: write objectGUID into empty ms-DS-ConsistencyGuid attributes, so
    /// the anchor survives moving the user to another forest.
    #[serde(default)]
    pub anchor_write_back: bool,
    #[serde(default)]
    pub tls: TlsConfig,
}

/// `[source.writeback]`: where the cloud's groups are written.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WritebackConfig {
    /// The OU (DN) that holds the groups created in the cloud; it must
    /// exist, and the bind account must be allowed to create, change and
    /// delete groups in it.
    pub groups_ou: String,
}

/// What a `[[source]]` reads from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    Ldap,
    /// An LDIF file (the demo's directory, an export).
    Ldif,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub starttls: bool,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn default_page_size() -> u32 {
    1000
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_operation_timeout() -> u64 {
    120
}

impl Config {
    /// Reads, checks and resolves relative paths against the file's directory.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            what: "the config file".into(),
            path: path.to_path_buf(),
            error,
        })?;
        let mut config = Config::parse(&text)
            .map_err(|error| ConfigError::InFile { path: path.to_path_buf(), error: Box::new(error) })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Checks the text; relative paths stay as written.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text)?;
        if config.sources.is_empty() {
            return invalid("no [[source]] is configured");
        }
        let sync = &config.sync;
        if matches!(sync.state, StateLocation::File(_))
            && (sync.database_password_file.is_some()
                || sync.database_password_env.is_some()
                || sync.database_ca_file.is_some())
        {
            return invalid(
                "[sync]: database_password_file, database_password_env and database_ca_file are for a state = \"postgres://…\"",
            );
        }
        if !(2..=3600).contains(&sync.lease_secs) {
            return invalid(format!("[sync]: lease_secs = {} is out of range (2 to 3600)", sync.lease_secs));
        }
        let mut names = std::collections::HashSet::new();
        for s in &config.sources {
            if !names.insert(s.name.as_str()) {
                return invalid(format!("two sources are named {:?}; names must be unique", s.name));
            }
            match (s.kind, &s.path) {
                (SourceKind::Ldif, None) => {
                    return invalid(format!("source {:?}: kind = \"ldif\" needs path = \"FILE.ldif\"", s.name));
                }
                (SourceKind::Ldap, Some(_)) => {
                    return invalid(format!(
                        "source {:?}: path is for kind = \"ldif\"; an LDAP source has urls",
                        s.name
                    ));
                }
                _ => {}
            }
            if let Some(w) = &s.writeback {
                if s.kind == SourceKind::Ldif {
                    return invalid(format!(
                        "source {:?}: [source.writeback] needs a directory server, not a file",
                        s.name
                    ));
                }
                match Dn::parse(&w.groups_ou) {
                    Ok(dn) if !dn.is_root() => {}
                    _ => {
                        return invalid(format!(
                            "source {:?}: writeback.groups_ou = {:?} is not the DN of an OU",
                            s.name, w.groups_ou
                        ));
                    }
                }
            }
        }
        Ok(config)
    }

    /// Makes every relative path absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        for source in &mut self.sources {
            source.resolve_paths(base);
        }
        if let Some(tenant) = self.tenant.as_mut() {
            resolve(base, &mut tenant.token_file);
            resolve(base, &mut tenant.ca_file);
        }
        if let StateLocation::File(path) = &mut self.sync.state {
            *path = relative_to(base, path);
        }
        resolve(base, &mut self.sync.database_password_file);
        resolve(base, &mut self.sync.database_ca_file);
        for rules in &mut self.sync.rules {
            *rules = relative_to(base, rules);
        }
    }

    /// The source named `name`, or the only one.
    pub fn source(&self, name: Option<&str>) -> Result<&SourceConfig> {
        let names = || self.sources.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => match self.sources.iter().find(|s| s.name == n) {
                Some(s) => Ok(s),
                None => invalid(format!("no source named {n:?}; configured: {}", names())),
            },
            None => match self.sources.as_slice() {
                [only] => Ok(only),
                [] => invalid("no source configured"),
                _ => invalid(format!("several sources are configured ({}); choose one with --source NAME", names())),
            },
        }
    }
}

fn parse_dns(what: &str, source: &str, values: &[String]) -> Result<Vec<Dn>> {
    values
        .iter()
        .map(|v| {
            Dn::parse(v).map_err(|error| ConfigError::Dn {
                source_name: source.to_string(),
                what: what.to_string(),
                value: v.clone(),
                error,
            })
        })
        .collect()
}

/// `[source.join]`: how a source's objects join metaverse objects of other sources.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// Join groups, tried in order: `[[{ source = "mail", metaverse = "mail" }], ...]`.
    pub groups: Vec<Vec<JoinPair>>,
    /// An object that joins nothing becomes its own tenant object (default false).
    #[serde(default)]
    pub project: bool,
    /// Metaverse attributes this source's values win for.
    #[serde(default)]
    pub authoritative: Vec<String>,
    /// References this source's objects give instead of the projecting
    /// source's: `manager` (users), `members` (groups).
    #[serde(default)]
    pub references: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JoinPair {
    pub source: String,
    pub metaverse: String,
}

impl JoinConfig {
    pub fn to_rules(&self, source: &str) -> Result<sync::engine::JoinRules> {
        if self.groups.is_empty() || self.groups.iter().any(Vec::is_empty) {
            return invalid(format!(
                "source {source:?}: join.groups needs at least one group, each with at least one pair"
            ));
        }
        for pair in self.groups.iter().flatten() {
            if pair.metaverse.is_empty() || !pair.metaverse.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return invalid(format!(
                    "source {source:?}: join metaverse attribute {:?}: letters, digits and '_' only",
                    pair.metaverse
                ));
            }
        }
        let mut references = sync::engine::JoinedReferences::default();
        for r in &self.references {
            match r.as_str() {
                "manager" => references.manager = true,
                "members" => references.members = true,
                other => {
                    return invalid(format!(
                        "source {source:?}: join.references: {other:?} is not \"manager\" or \"members\""
                    ));
                }
            }
        }
        Ok(sync::engine::JoinRules {
            references,
            groups: self
                .groups
                .iter()
                .map(|g| g.iter().map(|p| (p.source.clone(), p.metaverse.clone())).collect())
                .collect(),
            project: self.project,
            authoritative: self.authoritative.clone(),
        })
    }
}

/// Reads a bind password from a file or an environment variable.
pub fn resolve_password(source: &str, file: Option<&Path>, env: Option<&str>) -> Result<Option<Secret>> {
    read_secret(&format!("source {source:?}"), "password", file, env)
}

/// Reads a secret from `{setting}_file` or `{setting}_env`; `owner` names
/// where the settings are (`source "corp"`, `[tenant]`) in messages.
pub fn read_secret(owner: &str, setting: &str, file: Option<&Path>, env: Option<&str>) -> Result<Option<Secret>> {
    match (file, env) {
        (Some(_), Some(_)) => invalid(format!("{owner}: set {setting}_file or {setting}_env, not both")),
        (Some(path), None) => Secret::from_file(path).map(Some).map_err(|error| ConfigError::Read {
            what: format!("{owner}: {setting}_file"),
            path: path.to_path_buf(),
            error,
        }),
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
            _ => invalid(format!("{owner}: the environment variable {var} ({setting}_env) is not set")),
        },
        (None, None) => Ok(None),
    }
}

impl SourceConfig {
    /// Makes the source's relative file paths absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.path);
        resolve(base, &mut self.password_file);
        resolve(base, &mut self.tls.ca_file);
    }

    /// SHA-256 (hex) over a canonical JSON form of what decides the sync's
    /// result — scope, attributes, join, anchor, password hash sync — and
    /// the rules' text. Connection settings (URLs, timeouts, TLS, page size)
    /// are left out: changing them needs no full sync.
    pub fn sync_fingerprint(&self, mapping_version: &str, rules_text: &str) -> Result<String> {
        let dns = |what: &str, values: &[String]| -> Result<Vec<String>> {
            Ok(parse_dns(what, &self.name, values)?.iter().map(Dn::normalized).collect())
        };
        // serde_json's maps are sorted by key: the text is canonical.
        let mut canonical = serde_json::json!({
            "mapping": mapping_version,
            "base_dns": dns("base_dns", &self.base_dns)?,
            "include_ous": dns("include_ous", &self.include_ous)?,
            "exclude_ous": dns("exclude_ous", &self.exclude_ous)?,
            "attributes": self.attributes_to_read(),
            "filter": self.filter,
            "scope_groups": dns("scope_groups", &self.scope_groups)?,
            "join": self.join,
            "password_hash_sync": self.password_hash_sync,
            "server_kind": self.server_kind.map(|k| k.to_string()),
            "anchor_attribute": self.anchor_attribute,
            "rules": rules_text,
        });
        // Only when set: LDAP sources keep the fingerprint they had (no full sync on upgrade).
        if self.kind == SourceKind::Ldif
            && let Some(map) = canonical.as_object_mut()
        {
            map.insert("kind".into(), serde_json::json!("ldif"));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.to_string().as_bytes());
        Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The group-scope DNs, checked.
    pub fn scope_groups(&self) -> Result<Vec<Dn>> {
        parse_dns("scope_groups", &self.name, &self.scope_groups)
    }

    /// The configured attributes, plus what password hash sync needs
    /// (`pwdReset` is operational, so it must be asked for by name; AD's
    /// `pwdLastSet` tells which users' passwords to replicate).
    fn attributes_to_read(&self) -> Option<Vec<String>> {
        if !self.password_hash_sync {
            return if self.attributes.is_empty() { None } else { Some(self.attributes.clone()) };
        }
        let mut list = if self.attributes.is_empty() { vec!["*".to_string()] } else { self.attributes.clone() };
        for extra in ["userPassword", "sambaNTPassword", "ipaNTHash", "pwdReset", "pwdLastSet"] {
            if !list.iter().any(|a| a.eq_ignore_ascii_case(extra)) {
                list.push(extra.to_string());
            }
        }
        Some(list)
    }

    pub fn to_settings(&self) -> Result<LdapSettings> {
        let password = resolve_password(&self.name, self.password_file.as_deref(), self.password_env.as_deref())?;
        if self.bind_dn.is_some() && password.is_none() {
            return invalid(format!(
                "source {:?}: bind_dn is set but neither password_file nor password_env is",
                self.name
            ));
        }
        Ok(LdapSettings { password, ..self.to_settings_without_password()? })
    }

    /// The settings with no password (the caller supplies it).
    pub fn to_settings_without_password(&self) -> Result<LdapSettings> {
        if self.kind == SourceKind::Ldif {
            return invalid(format!(
                "source {:?} is an LDIF file ({}), not a directory server",
                self.name,
                self.path.as_deref().unwrap_or(Path::new("?")).display()
            ));
        }
        if self.urls.is_empty() {
            return invalid(format!(
                "source {:?}: urls is empty; give at least one ldap:// or ldaps:// URL",
                self.name
            ));
        }
        let password = None;
        Ok(LdapSettings {
            urls: self.urls.clone(),
            bind_dn: self.bind_dn.clone(),
            password,
            tls: TlsSettings {
                starttls: self.tls.starttls,
                ca_file: self.tls.ca_file.clone(),
                insecure_skip_verify: self.tls.insecure_skip_verify,
            },
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            operation_timeout: Duration::from_secs(self.operation_timeout_secs),
            base_dns: parse_dns("base_dns", &self.name, &self.base_dns)?,
            include_ous: parse_dns("include_ous", &self.name, &self.include_ous)?,
            exclude_ous: parse_dns("exclude_ous", &self.name, &self.exclude_ous)?,
            attributes: self.attributes_to_read(),
            filter: self.filter.clone(),
            page_size: self.page_size,
            server_kind: self.server_kind,
            anchor_attribute: self.anchor_attribute.clone(),
            anchor_write_back: self.anchor_write_back,
            replicate_secrets: self.password_hash_sync,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sync_fingerprint_follows_what_changes_the_result_only() {
        let source = |extra: &str| {
            let text = format!(
                "[[source]]\nname = \"corp\"\nurls = [\"ldap://a\"]\nbase_dns = [\"dc=example,dc=org\"]\n{extra}"
            );
            Config::parse(&text).unwrap().sources.remove(0)
        };
        let base = source("").sync_fingerprint("m1", "rules").unwrap();
        assert_eq!(base.len(), 64);
        assert!(base.chars().all(|c| c.is_ascii_hexdigit()));
        // Connection settings and the DN's spelling: no full sync.
        assert_eq!(source("operation_timeout_secs = 5\npage_size = 10").sync_fingerprint("m1", "rules").unwrap(), base);
        let spelled =
            Config::parse("[[source]]\nname = \"corp\"\nurls = [\"ldaps://b\"]\nbase_dns = [\"DC=Example, DC=org\"]\n")
                .unwrap()
                .sources
                .remove(0);
        assert_eq!(spelled.sync_fingerprint("m1", "rules").unwrap(), base);
        // Scope, rules, mapping: a full sync.
        assert_ne!(source("filter = \"(ou=Zoë)\"").sync_fingerprint("m1", "rules").unwrap(), base);
        assert_ne!(source("").sync_fingerprint("m1", "rules changed").unwrap(), base);
        assert_ne!(source("").sync_fingerprint("m2", "rules").unwrap(), base);
        assert_ne!(source("password_hash_sync = true").sync_fingerprint("m1", "rules").unwrap(), base);
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../../idbridge.example.toml");
        let config = Config::parse(text).unwrap();
        assert_eq!(config.sources.len(), 1);
        assert_eq!(config.sources[0].tls.ca_file.as_deref(), Some(Path::new("/etc/idbridge/corp-ca.pem")));
    }

    #[test]
    fn the_examples_parse() {
        for text in [include_str!("../../../examples/openldap.toml"), include_str!("../../../examples/samba-ad.toml")] {
            let config = Config::parse(text).unwrap();
            assert!(config.tenant.is_some());
            assert_eq!(config.sync.deletion_threshold, 500);
        }
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let err = Config::parse("[[source]]\nname = \"a\"\nurls = []\nbogus = 1\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bogus") && text.contains("line 4"), "{text}");
        let err = Config::parse(
            "[[source]]\nname = \"a\"\nurls = [\"ldap://x\"]\n[[source]]\nname = \"a\"\nurls = [\"ldap://y\"]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unique"));
    }

    #[test]
    fn an_ldif_source_needs_a_path_and_it_is_relative_to_the_file() {
        let text = "[[source]]\nname = \"demo\"\nkind = \"ldif\"\npath = \"directory.ldif\"\n";
        let mut config = Config::parse(text).unwrap();
        config.resolve_paths(Path::new("/srv/demo"));
        assert_eq!(config.sources[0].path.as_deref(), Some(Path::new("/srv/demo/directory.ldif")));
        assert!(config.sources[0].to_settings().is_err(), "an LDIF file is no server");
        let err = Config::parse("[[source]]\nname = \"x\"\nkind = \"ldif\"\n").unwrap_err();
        assert!(err.to_string().contains("needs path"), "{err}");
        let err = Config::parse("[[source]]\nname = \"x\"\nkind = \"ldap\"\npath = \"a.ldif\"\n").unwrap_err();
        assert!(err.to_string().contains("urls"), "{err}");
    }

    #[test]
    fn password_sources() {
        assert!(resolve_password("s", Some(Path::new("/nonexistent/pw")), None).is_err());
        assert!(resolve_password("s", None, Some("IDBRIDGE_SURELY_UNSET_VAR")).is_err());
        assert!(resolve_password("s", Some(Path::new("/x")), Some("Y")).is_err());
    }
}
