//! `idbridge init`: the set-up wizard. Asks (or takes from flags) where the
//! tenant is, which directory and which part of it to synchronise, how
//! objects are identified and how people sign in; checks connection, rights
//! and data before anything is written; shows the first sync's preview and
//! the change to `idbridge.toml`; then writes it.
//!
//! Steps run in order and `<` goes back one; a step whose check fails asks
//! again on a terminal and stops a script with exit code 3.

pub mod directory;
mod finish;
mod signin;
pub mod survey;
pub mod write;

use std::path::{Path, PathBuf};

use config::Config;
use write::{Draft, SourceDraft};

use crate::Error;

/// Why `init` ended without writing, or failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The administrator said no at the end (exit code 2).
    #[error("nothing was written (declined)")]
    Declined,
    /// A check that sync cannot do without failed (exit code 3).
    #[error("{0}")]
    Blocked(String),
    /// A step asks its questions again (its check failed on a terminal).
    #[error("ask again")]
    Retry,
    #[error(transparent)]
    Failed(#[from] Error),
}

impl InitError {
    /// The exit code `idbridge init` ends with: 2 declined, 3 a check failed, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::Declined => 2,
            InitError::Blocked(_) => 3,
            InitError::Retry | InitError::Failed(_) => 1,
        }
    }
}

macro_rules! from_via_error {
    ($($t:ty),*) => {$(
        impl From<$t> for InitError {
            fn from(e: $t) -> Self {
                InitError::Failed(e.into())
            }
        }
    )*};
}
from_via_error!(
    config::ConfigError,
    config::files::FileError,
    tenant::TenantError,
    sync::engine::StoreError,
    connector_scim::ScimTargetError,
    std::io::Error
);

impl From<toml_edit::TomlError> for InitError {
    fn from(e: toml_edit::TomlError) -> Self {
        InitError::Failed(Error::Refused(e.to_string()))
    }
}

impl From<connector_ldap::LdapError> for InitError {
    fn from(e: connector_ldap::LdapError) -> Self {
        InitError::Failed(Error::Refused(e.to_string()))
    }
}

pub type Result<T, E = InitError> = std::result::Result<T, E>;

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<InitError>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.with_context(|| what)
    }

    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| match e.into() {
            InitError::Failed(error) => {
                InitError::Failed(Error::Context { what: what().to_string(), source: Box::new(error) })
            }
            other => other,
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| InitError::Failed(Error::Refused(what.to_string())))
    }

    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| InitError::Failed(Error::Refused(what().to_string())))
    }
}

/// Ends the function with [`Error::Refused`] and this text.
macro_rules! bail {
    ($($arg:tt)*) => { return Err(InitError::Failed(Error::Refused(format!($($arg)*)))) };
}
pub(crate) use bail;

/// An answer, or "go back to the previous step" (`<` at any prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Value(T),
    Back,
}

/// How the wizard talks to the administrator: a terminal, or flags in a
/// script (the binary's prompter), or scripted answers in a test.
pub trait Ask: Send {
    /// Questions are asked (a terminal); otherwise answers come from flags.
    fn interactive(&self) -> bool;
    /// A step's heading.
    fn heading(&self, step: usize, total: usize, title: &str);
    fn say(&self, text: &str);
    fn good(&self, text: &str);
    fn warn(&self, text: &str);
    fn bad(&self, text: &str);
    /// Asks `question`. Scripted: the flag's value, else the default when
    /// defaults are accepted, else an error naming the flag. On a terminal
    /// the flag's value (or the default) is offered and Enter takes it;
    /// `-` answers empty; `<` goes back.
    fn ask(
        &mut self,
        question: &str,
        flag: &str,
        given: Option<String>,
        default: Option<String>,
        help: &str,
    ) -> Result<Answer<String>>;

    /// A password, not echoed (a terminal only).
    fn password(&mut self, prompt: &str) -> Result<String>;

    /// A yes/no question.
    fn confirm(&mut self, question: &str, flag: &str, given: Option<bool>, default: bool) -> Result<Answer<bool>> {
        loop {
            let shown = given.unwrap_or(default);
            let answer = self.ask(
                question,
                flag,
                given.map(|b| if b { "yes" } else { "no" }.to_string()),
                Some(if shown { "yes" } else { "no" }.to_string()),
                "answer yes or no",
            )?;
            let Answer::Value(v) = answer else { return Ok(Answer::Back) };
            match v.to_ascii_lowercase().as_str() {
                "y" | "yes" | "on" | "true" => return Ok(Answer::Value(true)),
                "n" | "no" | "off" | "false" => return Ok(Answer::Value(false)),
                other if self.interactive() => self.say(&format!("{other:?}: answer yes or no")),
                other => bail!("{flag} {other:?}: use yes or no"),
            }
        }
    }
}

/// The answers given as flags (`idbridge init --help` explains each).
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// The configuration file to write (edited in place when it exists).
    pub config: PathBuf,
    /// Take the default for every question that has one; fail naming the flag otherwise.
    pub accept_defaults: bool,
    /// Write without asking for confirmation at the end.
    pub yes: bool,

    /// The tenant's SCIM URL, e.g. https://tenant.example.com/scim/v2.
    pub tenant_url: Option<String>,
    /// A file holding a tenant token with the sync scope.
    pub tenant_token_file: Option<PathBuf>,
    /// A file holding an admin-scoped tenant token, so init sets the domains'
    /// sign-in on a remote tenant ("-": print the commands instead).
    pub tenant_admin_token_file: Option<String>,
    /// Set up a tenant on this machine in this data directory instead.
    pub local_tenant: Option<PathBuf>,
    /// The local tenant's listen address.
    pub tenant_listen: Option<String>,
    /// The local tenant's initial domain (first set-up only).
    pub initial_domain: Option<String>,

    /// A short name for the directory (a new name adds one; an existing name edits it).
    pub name: Option<String>,
    /// Directory server URL(s), comma-separated for failover: ldaps://dc1.corp.example,ldaps://dc2.corp.example.
    pub directory: Option<String>,
    /// Use StartTLS on ldap:// URLs (yes/no).
    pub starttls: Option<String>,
    /// A PEM file with the CA that signed the directory's certificate ("-" for the system's).
    pub ca_file: Option<String>,
    /// The account idbridge binds as ("-" for anonymous).
    pub bind_dn: Option<String>,
    /// A file holding that account's password.
    pub password_file: Option<PathBuf>,
    /// Where to read from (repeat for several); default: the server's default naming context.
    pub base_dn: Vec<String>,
    /// Only these OUs (DNs or numbers from the OU list; repeatable; default all).
    pub include_ou: Vec<String>,
    /// Leave these OUs out (DNs or numbers; repeatable).
    pub exclude_ou: Vec<String>,
    /// Only direct members of this group sync ("-" for no group filter).
    pub scope_group: Option<String>,
    /// An LDAP filter objects must also match ("-" for none).
    pub filter: Option<String>,
    /// How this directory's people match those of directories configured before it:
    /// none, mail, objectsid (objectSid ↔ msExchMasterAccountSID), sam (sAMAccountName + mailNickname), attribute:NAME.
    pub join: Option<String>,
    /// The sourceAnchor: consistencyguid (AD: ms-DS-ConsistencyGuid, filled from objectGUID),
    /// objectguid, entryuuid, nsuniqueid, or attribute:NAME.
    pub anchor: Option<String>,

    /// Sign-in method of a domain: DOMAIN=phs, DOMAIN=pta or DOMAIN=federated (repeatable).
    pub sign_in: Vec<String>,
    /// Send password hashes even where no domain uses PHS (a fallback; yes/no).
    pub password_hash_sync: Option<String>,
    /// Federated domains (local tenant): oidc or saml.
    pub federation_protocol: Option<String>,
    /// SAML: the identity provider's metadata file.
    pub federation_metadata: Option<PathBuf>,
    /// OIDC: the identity provider's issuer URL.
    pub federation_issuer: Option<String>,
    /// OIDC: the client id the identity provider gave the tenant.
    pub federation_client_id: Option<String>,
    /// OIDC: a file holding the client secret.
    pub federation_client_secret_file: Option<PathBuf>,

    /// Password writeback (yes/no): passwords changed or reset in the cloud
    /// are set in this directory by the pass-through agents; the bind account
    /// needs the Reset Password right (checked on AD).
    pub password_writeback: Option<String>,
    /// Staging mode: import and sync, export nothing (yes/no).
    pub staging: Option<String>,
    /// Also write a systemd unit for the sync daemon here ("-" for none).
    pub systemd_unit: Option<String>,
}

/// Where the tenant is.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantChoice {
    /// A running tenant: SCIM URL, token file, and an admin token (read
    /// from its file) when init may set the domains.
    Remote { url: String, token_file: PathBuf, admin_token: Option<String> },
    /// One set up on this machine when the file is written.
    Local { data: PathBuf, listen: String, initial_domain: String },
}

/// Everything decided so far.
struct Wizard {
    args: InitOptions,
    ask: Box<dyn Ask>,
    /// Absolute path of the configuration file and its directory.
    config_path: PathBuf,
    config_dir: PathBuf,
    existing: Option<String>,
    existing_config: Option<Config>,
    tenant: Option<TenantChoice>,
    source: SourceDraft,
    /// Filled by the directory step: what the server is.
    server: Option<directory::ServerFacts>,
    survey: Option<survey::Survey>,
    /// Sign-in method per domain, in the order shown.
    sign_in: Vec<(String, tenant::domains::AuthType)>,
    federation: Option<tenant::federation::Federation>,
    /// Passwords changed in the cloud are written back (pass-through and PHS domains).
    password_writeback: bool,
    staging: bool,
    systemd_unit: Option<PathBuf>,
    /// A bind password typed at the prompt, and the file it goes to (0600)
    /// when the configuration is written.
    typed_password: Option<(PathBuf, connector_ldap::Secret)>,
    /// A remote tenant's domains, read with the admin token.
    remote_domains: Vec<(String, tenant::domains::AuthType)>,
}

const STEPS: usize = 9;

/// Runs the wizard: asks through `ask`, checks, shows, and writes the
/// configuration at the end (or ends with [`InitError::Declined`] or
/// [`InitError::Blocked`]).
pub async fn run(args: InitOptions, ask: Box<dyn Ask>) -> Result<()> {
    let cwd = std::env::current_dir().map_err(|e| Error::Io { action: "read", path: ".".into(), error: e })?;
    let config_path = cwd.join(&args.config);
    let config_dir = config_path.parent().map(Path::to_path_buf).unwrap_or(cwd);
    let existing = match std::fs::read_to_string(&config_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(Error::Io { action: "read", path: config_path, error }.into()),
    };
    let existing_config = match &existing {
        Some(text) => Some(Config::parse(text).with_context(|| {
            format!("{} exists but is not a valid configuration; fix or move it first", config_path.display())
        })?),
        None => None,
    };
    let mut w = Wizard {
        args,
        ask,
        config_path,
        config_dir,
        existing,
        existing_config,
        tenant: None,
        source: SourceDraft::default(),
        server: None,
        survey: None,
        sign_in: Vec::new(),
        federation: None,
        password_writeback: false,
        staging: false,
        systemd_unit: None,
        typed_password: None,
        remote_domains: Vec::new(),
    };
    w.intro();
    let mut step = 0;
    while step < STEPS {
        let result = match step {
            0 => w.tenant_step().await,
            1 => w.connection_step().await,
            2 => w.base_step(),
            3 => w.ou_step().await,
            4 => w.filter_step(),
            5 => w.identity_step().await,
            6 => w.survey_step().await,
            7 => w.sign_in_step(),
            _ => w.finish_step().await,
        };
        match result {
            Ok(Answer::Value(())) if step + 1 == STEPS && w.another()? => step = 1,
            Ok(Answer::Value(())) => step += 1,
            Ok(Answer::Back) => step = step.saturating_sub(1),
            // The step's check failed on a terminal: it was said; ask again.
            Err(InitError::Retry) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Wizard {
    fn intro(&self) {
        let what = if self.existing.is_some() { "Editing" } else { "Creating" };
        self.ask.say(&format!("idbridge init: {what} {}", self.config_path.display()));
        if self.ask.interactive() {
            self.ask.say("Enter takes the value in [brackets]; '-' leaves a value empty; '<' goes back; '?' explains.");
            self.ask.say("Nothing is written until the last step, after the checks and a preview.");
        }
    }

    /// After writing, on a terminal: go on with another directory? (Scripts
    /// run `init` once per directory.) Starts over from the file just written.
    fn another(&mut self) -> Result<bool> {
        if !self.ask.interactive() {
            return Ok(false);
        }
        let Answer::Value(yes) = self.ask.confirm("Add or change another directory now", "", None, false)? else {
            return Ok(false);
        };
        if yes {
            let text = std::fs::read_to_string(&self.config_path).map_err(|error| Error::Io {
                action: "read",
                path: self.config_path.clone(),
                error,
            })?;
            self.existing_config = Some(Config::parse(&text)?);
            self.existing = Some(text);
            self.source = SourceDraft::default();
            self.server = None;
            self.survey = None;
            self.sign_in.clear();
            self.federation = None;
            self.args.name = None;
            self.args.directory = None;
        }
        Ok(yes)
    }

    /// A step's check failed: on a terminal, say so (the step is asked
    /// again); in a script, stop with exit code 3.
    fn failed(&self, problem: String) -> InitError {
        if self.ask.interactive() {
            self.ask.bad(&problem);
            InitError::Retry
        } else {
            InitError::Blocked(problem)
        }
    }

    /// The configuration as it would be written now.
    fn draft(&self) -> Draft {
        let tenant = self.tenant.as_ref().map(|t| match t {
            TenantChoice::Remote { url, token_file, .. } => (url.clone(), token_file.display().to_string()),
            TenantChoice::Local { listen, .. } => {
                (format!("http://{listen}/scim/v2"), self.local_token_file().display().to_string())
            }
        });
        Draft { tenant, source: self.source.clone(), staging: self.staging }
    }

    fn local_token_file(&self) -> PathBuf {
        self.config_dir.join("tenant.token")
    }

    fn merged(&self) -> Result<String> {
        write::merge(self.existing.as_deref(), &self.draft())
    }

    /// A path the administrator typed, made absolute (the daemon may run elsewhere).
    fn absolute(&self, typed: &str) -> PathBuf {
        let p = PathBuf::from(typed);
        if p.is_absolute() { p } else { std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p) }
    }

    fn existing_source(&self, name: &str) -> Option<&config::SourceConfig> {
        self.existing_config.as_ref().and_then(|c| c.sources.iter().find(|s| s.name == name))
    }

    /// Sources configured before, other than the one being edited.
    fn other_sources(&self) -> Vec<String> {
        self.existing_config
            .as_ref()
            .map(|c| c.sources.iter().filter(|s| s.name != self.source.name).map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    }
}

/// "yes"/"no" and friends, for flags that take them.
fn parse_yes_no(flag: &str, text: &str) -> Result<bool> {
    match text.to_ascii_lowercase().as_str() {
        "y" | "yes" | "on" | "true" => Ok(true),
        "n" | "no" | "off" | "false" => Ok(false),
        other => bail!("{flag} {other:?}: use yes or no"),
    }
}

/// Optional text: "-" or empty means none.
fn optional(text: String) -> Option<String> {
    let t = text.trim();
    if t.is_empty() || t == "-" { None } else { Some(t.to_string()) }
}
