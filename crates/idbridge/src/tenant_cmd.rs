//! `idbridge tenant …`: run and administer the cloud side.

#[cfg(feature = "cloud")]
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use tenant::domains::AuthType;
use tenant::federation::{Federation, OidcIdp, SamlIdp};
use tenant::tokens::{self, Scope};
use tenant::{BrandingUpdate, Tenant};
#[cfg(feature = "cloud")]
use tenant_http::{DEFAULT_MAX_BODY, ServeOptions, serve};

/// Who the audit log names for changes made here.
const ACTOR: &str = "cli";

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Run the tenant (SCIM API under /scim/v2).
    #[cfg(feature = "cloud")]
    Serve {
        #[command(flatten)]
        data: TenantData,
        #[arg(long, default_value = "127.0.0.1:8443", value_parser = crate::parse_listen)]
        listen: SocketAddr,
        /// PEM certificate chain for HTTPS (plain HTTP is only allowed on loopback).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The URL clients use, if not the listen address (behind a proxy).
        #[arg(long)]
        public_url: Option<String>,
        /// The tenant's initial domain, set on first start.
        #[arg(long, default_value = "tenant.idbridge.test")]
        initial_domain: String,
    },
    /// Bearer tokens for the APIs.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Verified domains.
    Domain {
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// Groups: source of authority for group writeback.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// SAML applications: the tenant as their identity provider (/saml/{app}/metadata, /saml/{app}/sso).
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Tenant-wide switches.
    Settings {
        #[command(flatten)]
        data: TenantData,
        /// Never join a synchronised object to a cloud object by userName or SMTP address.
        #[arg(long, value_parser = parse_on_off)]
        block_soft_match: Option<bool>,
        /// Never let an immutableId match take over a cloud-managed object.
        #[arg(long, value_parser = parse_on_off)]
        block_hard_match_takeover: Option<bool>,
        /// userName must be an address in a verified domain (on by default).
        #[arg(long, value_parser = parse_on_off)]
        require_verified_domain: Option<bool>,
        /// Users who must change their on-premises password may choose a new one at sign-in.
        #[arg(long, value_parser = parse_on_off)]
        allow_cloud_password_change: Option<bool>,
        /// How long a pass-through sign-in waits for an agent (seconds; read at tenant start).
        #[arg(long)]
        pta_timeout_secs: Option<u64>,
        /// Requests per second one bearer token may make, bursts of twice that;
        /// more are answered 429 with Retry-After (0 = no limit; read at tenant start).
        #[arg(long)]
        rate_limit_per_sec: Option<u32>,
        /// Reverse proxies whose X-Forwarded-For names the client (comma-separated
        /// addresses or ranges, e.g. 10.0.0.0/8; empty for none; read at tenant start).
        #[arg(long)]
        trusted_proxies: Option<String>,
    },
    /// Who must give a second factor at sign-in, and the registration
    /// campaign; without options, shows the policy.
    SignInPolicy {
        #[command(flatten)]
        data: TenantData,
        /// Require a second factor of every user.
        #[arg(long, value_parser = parse_on_off)]
        everyone: Option<bool>,
        /// Require it of the members of these groups (comma-separated names or ids; nested
        /// groups count; empty for none).
        #[arg(long)]
        groups: Option<String>,
        /// Require it of everyone with an admin console role.
        #[arg(long, value_parser = parse_on_off)]
        administrators: Option<bool>,
        /// Ask users without a method to register one after the password.
        #[arg(long, value_parser = parse_on_off)]
        registration_campaign: Option<bool>,
        /// How many times a person may answer the campaign "not now" (a number, or unlimited).
        #[arg(long)]
        campaign_skips: Option<String>,
        /// Accept a federated identity provider's multi-factor sign-in instead of asking again.
        #[arg(long, value_parser = parse_on_off)]
        accept_federated_mfa: Option<bool>,
    },
    /// OpenID Connect clients (relying parties).
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// The sign-in page's look.
    Branding {
        #[command(subcommand)]
        command: BrandingCommand,
    },
    /// Pass-through authentication: a one-time registration token for an agent.
    PtaToken {
        #[command(subcommand)]
        command: PtaTokenCommand,
    },
    /// Pass-through authentication agents and their status.
    PtaAgents {
        #[command(flatten)]
        data: TenantData,
    },
    /// Stop a pass-through agent at once (its credential stops working).
    PtaAgent {
        #[command(subcommand)]
        command: PtaAgentCommand,
    },
    /// Administrator roles for the admin console (/admin).
    Role {
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// One user's sign-in methods.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Token signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit log, newest last.
    Audit {
        #[command(flatten)]
        data: TenantData,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (only this once) on standard output.
    Create {
        #[command(flatten)]
        data: TenantData,
        /// scim-read, sync or admin.
        #[arg(long)]
        scope: String,
        /// Lifetime, like 90d or 12h (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        note: Option<String>,
        /// Only users of this domain get password records from this token
        /// (repeat for several; default: every domain). A sync token can set
        /// any allowed user's password: treat it like an admin credential.
        #[arg(long = "domain")]
        domains: Vec<String>,
    },
    /// The tokens: id, scope, when made, whether active, expired or revoked (never the token itself).
    List {
        #[command(flatten)]
        data: TenantData,
    },
    /// Revoke a token by its id: it stops working at once.
    Revoke {
        #[command(flatten)]
        data: TenantData,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register a client; prints its id (and secret, once) on standard output.
    Add {
        #[command(flatten)]
        data: TenantData,
        #[arg(long)]
        name: String,
        /// Where the browser returns with the code (repeat for several).
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// A public client (no secret; PKCE required), e.g. a single-page or native app.
        #[arg(long)]
        public: bool,
        /// ID token signature: RS256 (default) or ES256.
        #[arg(long, default_value = "RS256")]
        alg: String,
        /// Where the browser may go after logout (exact match; repeat for several).
        #[arg(long = "post-logout-uri")]
        post_logout_uris: Vec<String>,
        /// Signing in to this application takes a second factor.
        #[arg(long)]
        require_mfa: bool,
    },
    /// Whether signing in to a client takes a second factor (on|off).
    RequireMfa {
        #[command(flatten)]
        data: TenantData,
        id: String,
        /// on or off.
        #[arg(value_parser = parse_on_off, action = clap::ArgAction::Set)]
        required: bool,
    },
    /// The registered clients: id, type, signature, second factor, redirect URIs.
    List {
        #[command(flatten)]
        data: TenantData,
    },
    /// Remove a client by its id; its refresh tokens are revoked.
    Remove {
        #[command(flatten)]
        data: TenantData,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BrandingCommand {
    /// Set some of the fields (the others keep their values) and show them all.
    Set {
        #[command(flatten)]
        data: TenantData,
        /// The organisation's name, shown when there is no logo.
        #[arg(long)]
        name: Option<String>,
        /// Accent colour, #rgb or #rrggbb.
        #[arg(long)]
        color: Option<String>,
        /// Page background colour, #rgb or #rrggbb.
        #[arg(long)]
        background_color: Option<String>,
        /// Logo image URL (https:// or a path on the tenant).
        #[arg(long)]
        logo_url: Option<String>,
        /// Background image URL (https:// or a path on the tenant).
        #[arg(long)]
        background_url: Option<String>,
        /// A line of text under the sign-in form.
        #[arg(long)]
        text: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Second factors (authenticator apps) and recovery codes.
    Methods {
        #[command(subcommand)]
        command: MethodsCommand,
    },
    /// Reset a synchronised user's password: set on-premises through a
    /// pass-through agent of the running tenant (password writeback), then
    /// in the tenant. The directory's policy decides; a refusal says why.
    ResetPassword {
        /// The user's userName (UPN).
        user: String,
        /// The running tenant's address, like https://tenant.example.com.
        #[arg(long)]
        url: String,
        /// A file holding an admin-scoped token (`idbridge tenant token create --scope admin`).
        #[arg(long)]
        token_file: PathBuf,
        /// A file holding the new password; without it a random one is made and printed once.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// PEM CA certificate to trust for the tenant's HTTPS.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MethodsCommand {
    /// A user's second factors and how many recovery codes are left.
    List {
        #[command(flatten)]
        data: TenantData,
        /// The user, by user name (UPN) or id.
        #[arg(long)]
        user: String,
    },
    /// Remove one (a lost device); with the last go the recovery codes.
    Remove {
        #[command(flatten)]
        data: TenantData,
        /// The user, by user name (UPN) or id.
        #[arg(long)]
        user: String,
        /// The method's id, from `list`.
        #[arg(long)]
        method: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Give a user, or every member of a group, a role.
    Assign(RoleArgs),
    /// Take a role away.
    Remove(RoleArgs),
    /// Who holds which role.
    List {
        #[command(flatten)]
        data: TenantData,
    },
}

#[derive(Debug, clap::Args)]
pub struct RoleArgs {
    #[command(flatten)]
    data: TenantData,
    /// The user, by user name (UPN).
    #[arg(long, conflicts_with = "group", required_unless_present = "group")]
    user: Option<String>,
    /// The group, by display name or id.
    #[arg(long)]
    group: Option<String>,
    /// global-admin (everything), helpdesk (read users, unlock, revoke sessions) or reader (read only).
    #[arg(long)]
    role: String,
}

#[derive(Debug, Subcommand)]
pub enum PtaTokenCommand {
    /// Print a one-time token for `idbridge pta-agent register`.
    Create {
        #[command(flatten)]
        data: TenantData,
        /// How long it can be used, like 1h or 2d.
        #[arg(long, default_value = "1h")]
        expires: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PtaAgentCommand {
    /// Revoke an agent by its id: it stops at its next request to the tenant.
    Revoke {
        #[command(flatten)]
        data: TenantData,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make the prepared key (or a new one) the signing key; the old one stays
    /// published and keeps verifying until its tokens expire.
    Rotate {
        #[command(flatten)]
        data: TenantData,
        /// RS256 or ES256.
        #[arg(long, default_value = "RS256")]
        alg: String,
    },
    /// Publish the next signing key now (JWKS, SAML metadata) without signing
    /// with it, so applications that pin keys take it up before `rotate`.
    Prepare {
        #[command(flatten)]
        data: TenantData,
        /// RS256 or ES256.
        #[arg(long, default_value = "RS256")]
        alg: String,
    },
    /// The published keys: active, prepared, retired (and until when).
    List {
        #[command(flatten)]
        data: TenantData,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Hand a synchronised group to the cloud: inbound sync stops changing
    /// it, and group writeback (`[source.writeback]`) maintains it on-premises.
    TakeOver {
        #[command(flatten)]
        data: TenantData,
        /// The group's display name or id.
        name: String,
    },
    /// Hand a taken-over group back to its directory: the next cycle makes it
    /// what the directory says again.
    HandBack {
        #[command(flatten)]
        data: TenantData,
        /// The group's display name or id.
        name: String,
    },
}

// Parsed once per run: the size of the add variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// Register a SAML service provider.
    Add {
        #[command(flatten)]
        data: TenantData,
        /// Short name in its URLs (/saml/NAME/…): letters, digits, '-'.
        #[arg(long)]
        name: String,
        /// The name people see on My Apps (default: --name).
        #[arg(long)]
        display_name: Option<String>,
        /// The service provider's SAML metadata (a file): its entity id, HTTP-POST ACS URLs,
        /// HTTP-Redirect logout URL, signing certificates and AuthnRequestsSigned. Flags given
        /// as well override it (certificates add to it).
        #[arg(long)]
        saml_metadata: Option<PathBuf>,
        /// The service provider's entity id (the Issuer of its requests).
        #[arg(long, required_unless_present = "saml_metadata")]
        entity_id: Option<String>,
        /// An Assertion Consumer Service URL (repeatable; matched exactly; the first is the default).
        #[arg(long = "acs-url", required_unless_present = "saml_metadata")]
        acs_urls: Vec<String>,
        /// Where LogoutResponses of Single Logout go (HTTP-Redirect); without one, the person
        /// sees the tenant's "signed out" page.
        #[arg(long)]
        slo_url: Option<String>,
        /// persistent (stable per user and application), email, or unspecified
        /// (default: the metadata's first NameIDFormat, else persistent).
        #[arg(long)]
        name_id: Option<String>,
        /// NAME=SOURCE: send the user's SOURCE (userName, displayName, name.givenName, emails,
        /// hybrid:immutableId …; groups for group names, groupIds) as attribute NAME (repeatable;
        /// default email, displayName, givenName, surname).
        #[arg(long = "attribute")]
        attributes: Vec<String>,
        /// Sign the Response as well as the Assertion.
        #[arg(long)]
        sign_response: bool,
        /// Only members (directly or nested) of this group may use it — display name or id (repeatable).
        #[arg(long = "allow-group")]
        allowed_groups: Vec<String>,
        /// Refuse AuthnRequests not signed with a --sp-certificate key. (LogoutRequests
        /// must be signed whenever the application has a certificate.)
        #[arg(long)]
        require_signed_requests: bool,
        /// The service provider's signing certificate, PEM or DER (repeatable: rollover).
        #[arg(long = "sp-certificate")]
        sp_certificates: Vec<PathBuf>,
    },
    /// The registered applications.
    List {
        #[command(flatten)]
        data: TenantData,
    },
    /// Remove an application by its short name.
    Remove {
        #[command(flatten)]
        data: TenantData,
        name: String,
    },
}

// Parsed once per run: the size of the federate variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Add a verified domain.
    Add {
        #[command(flatten)]
        data: TenantData,
        name: String,
        /// managed-phs, managed-pta or federated.
        #[arg(long, default_value = "managed-phs")]
        auth: String,
    },
    /// The verified domains and how their users sign in.
    List {
        #[command(flatten)]
        data: TenantData,
    },
    /// Change how a domain's users sign in, and whether passwords chosen in
    /// the cloud are written back on-premises.
    Set {
        #[command(flatten)]
        data: TenantData,
        name: String,
        /// managed-phs, managed-pta (federate with `domain federate`).
        #[arg(long, required_unless_present = "password_writeback")]
        auth: Option<String>,
        /// Synchronised users' password changes and resets are set in the
        /// on-premises directory through a pass-through agent (on|off).
        #[arg(long, value_parser = parse_on_off)]
        password_writeback: Option<bool>,
    },
    /// Remove a verified domain.
    Remove {
        #[command(flatten)]
        data: TenantData,
        name: String,
    },
    /// Hand a domain's sign-ins to the organisation's identity provider.
    Federate {
        #[command(flatten)]
        data: TenantData,
        name: String,
        /// oidc (the tenant is an OpenID Connect relying party of the IdP) or
        /// saml (a SAML 2.0 service provider).
        #[arg(long)]
        protocol: String,
        /// SAML: the IdP's metadata document (entity id, SSO URL, certificate).
        #[arg(long)]
        metadata: Option<PathBuf>,
        /// SAML: the IdP's single sign-on URL (HTTP-Redirect binding).
        #[arg(long)]
        sso_url: Option<String>,
        /// SAML: a PEM file with the IdP's signing certificate(s).
        #[arg(long)]
        signing_cert: Option<PathBuf>,
        /// SAML: the IdP's entity id.
        #[arg(long)]
        entity_id: Option<String>,
        /// SAML: an attribute with the user's UPN, tried when no user has the NameID as immutableId.
        #[arg(long)]
        upn_attribute: Option<String>,
        /// The IdP's issuer URL, exactly as its tokens name it.
        #[arg(long)]
        issuer: Option<String>,
        /// The client id the IdP gave this tenant.
        #[arg(long)]
        client_id: Option<String>,
        /// A file holding the client secret (one line).
        #[arg(long)]
        client_secret_file: Option<PathBuf>,
        /// The claim carrying the user's immutableId.
        #[arg(long, default_value = "immutable_id")]
        immutable_id_claim: String,
        /// A claim with the user's UPN, tried when no user has the immutableId.
        #[arg(long)]
        upn_claim: Option<String>,
    },
    /// Back to managed sign-in (password hash sync).
    Unfederate {
        #[command(flatten)]
        data: TenantData,
        name: String,
    },
}

fn parse_on_off(s: &str) -> std::result::Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}

/// Where the tenant's data is: `--data DIR` (SQLite, the embedded
/// default) or `--database postgres://…` (shared by several tenant nodes).
#[derive(Debug, Clone, clap::Args)]
pub struct TenantData {
    /// The tenant's data directory (SQLite; created on first start).
    #[arg(long, required_unless_present = "database", conflicts_with = "database")]
    data: Option<PathBuf>,
    /// A PostgreSQL database shared by several tenant nodes:
    /// postgres://USER@HOST:PORT/DATABASE (the password never goes here).
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// A file holding the database password.
    #[arg(long, requires = "database", conflicts_with = "database_password_env", value_name = "FILE")]
    database_password_file: Option<PathBuf>,
    /// An environment variable holding the database password.
    #[arg(long, requires = "database", value_name = "VAR")]
    database_password_env: Option<String>,
    /// CA certificates (PEM) the database server's certificate must chain
    /// to; TLS is then required. A database off this machine needs one
    /// (or sslmode=disable in the URL).
    #[arg(long, requires = "database", value_name = "FILE")]
    database_ca_file: Option<PathBuf>,
    /// With --database: the key file that seals signing keys and secrets.
    /// Every node needs a copy of the same file; made (0600) if missing.
    #[arg(long, requires = "database", value_name = "FILE")]
    secrets_key: Option<PathBuf>,
}

impl TenantData {
    /// The location, with the password read and the URL checked.
    pub fn location(&self) -> Result<tenant::Location> {
        let Some(url) = &self.database else {
            let dir = self.data.clone().context("give --data DIR or --database URL")?;
            return Ok(tenant::Location::Directory(dir));
        };
        let secrets_key = self
            .secrets_key
            .clone()
            .context("--database needs --secrets-key FILE (the same key file on every tenant node)")?;
        let password = match (&self.database_password_file, &self.database_password_env) {
            (Some(file), _) => Some(
                connector_ldap::Secret::from_file(file)
                    .with_context(|| format!("cannot read the database password file {}", file.display()))?
                    .expose()
                    .to_string(),
            ),
            (None, Some(var)) => Some(
                std::env::var(var)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .with_context(|| format!("the environment variable {var} (--database-password-env) is not set"))?,
            ),
            (None, None) => None,
        };
        let tls = match &self.database_ca_file {
            Some(ca_file) => pgconn::PgTls::Verified { ca_file: ca_file.clone() },
            None => pgconn::PgTls::Plain,
        };
        let settings = pgconn::DatabaseSettings {
            url: url.clone(),
            password,
            tls,
            timeout: std::time::Duration::from_secs(15),
            application_name: "idbridge-tenant".into(),
        };
        settings.check().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(tenant::Location::Postgres { settings, secrets_key })
    }

    /// How the commands that follow name this location (`--data DIR` or `--database URL …`).
    #[cfg_attr(not(feature = "cloud"), allow(dead_code))]
    pub fn arguments(&self) -> String {
        match (&self.database, &self.data) {
            (Some(url), _) => {
                let mut text = format!("--database {url}");
                if let Some(f) = &self.database_password_file {
                    text.push_str(&format!(" --database-password-file {}", f.display()));
                }
                if let Some(v) = &self.database_password_env {
                    text.push_str(&format!(" --database-password-env {v}"));
                }
                if let Some(f) = &self.database_ca_file {
                    text.push_str(&format!(" --database-ca-file {}", f.display()));
                }
                if let Some(f) = &self.secrets_key {
                    text.push_str(&format!(" --secrets-key {}", f.display()));
                }
                text
            }
            (None, Some(dir)) => format!("--data {}", dir.display()),
            (None, None) => String::new(),
        }
    }
}

fn open(data: &TenantData) -> Result<Tenant> {
    let location = data.location()?;
    Tenant::open_existing_at(&location).with_context(|| format!("opening the tenant in {location}"))
}

pub async fn run(command: TenantCommand) -> Result<()> {
    match command {
        #[cfg(feature = "cloud")]
        TenantCommand::Serve { data, listen, tls_cert, tls_key, public_url, initial_domain } => {
            let location = data.location()?;
            let (tenant, fresh) = Tenant::open_or_create_at(&location, &initial_domain)
                .with_context(|| format!("opening the tenant in {location}"))?;
            if fresh {
                eprintln!(
                    "created a new tenant in {location} with the initial domain {initial_domain}.\nGet an admin token with:\n  idbridge tenant token create {} --scope admin",
                    data.arguments()
                );
            }
            let options = ServeOptions {
                listen,
                tls: tls_cert.zip(tls_key),
                public_url,
                max_body: DEFAULT_MAX_BODY,
                loopback_as_localhost: false,
            };
            serve(
                tenant,
                options,
                |addr, base| eprintln!("tenant listening on {addr}; SCIM API at {base}"),
                shutdown_signal(),
            )
            .await?;
            eprintln!("tenant stopped");
            Ok(())
        }
        TenantCommand::Token { command } => match command {
            TokenCommand::Create { data, scope, expires, note, domains } => {
                let scope: Scope = scope.parse()?;
                let secs = expires.as_deref().map(tokens::parse_duration).transpose()?;
                let (id, token) = open(&data)?.create_token(ACTOR, scope, secs, note.as_deref(), &domains)?;
                crate::out!("{token}");
                eprintln!("token {id} ({scope}) created; it is shown only this once");
                Ok(())
            }
            TokenCommand::List { data } => {
                let tokens = open(&data)?.tokens()?;
                crate::out!("{:<36}  {:<9}  {:<24}  {:<8}  note", "id", "scope", "created", "state");
                for t in tokens {
                    let state = if t.revoked.is_some() {
                        "revoked"
                    } else if t.expires.is_some_and(|e| e <= tenant::util::now_secs()) {
                        "expired"
                    } else {
                        "active"
                    };
                    crate::out!(
                        "{:<36}  {:<9}  {:<24}  {:<8}  {}",
                        t.id,
                        t.scope.as_str(),
                        t.created,
                        state,
                        t.note.unwrap_or_default()
                    );
                }
                Ok(())
            }
            TokenCommand::Revoke { data, id } => {
                open(&data)?.revoke_token(ACTOR, &id)?;
                eprintln!("token {id} revoked");
                Ok(())
            }
        },
        TenantCommand::App { command } => match command {
            AppCommand::Add {
                data,
                name,
                display_name,
                saml_metadata,
                entity_id,
                acs_urls,
                slo_url,
                name_id,
                attributes,
                sign_response,
                allowed_groups,
                require_signed_requests,
                sp_certificates,
            } => {
                let metadata = match &saml_metadata {
                    Some(path) => {
                        let text =
                            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                        tenant::saml_idp::parse_sp_metadata(&text)
                            .with_context(|| format!("--saml-metadata {}", path.display()))?
                    }
                    None => tenant::saml_idp::SpMetadata::default(),
                };
                let mut certificates = metadata.certificates;
                for path in &sp_certificates {
                    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                    certificates.extend(tenant::federation::saml::certificates_from(&bytes));
                }
                let require_signed = require_signed_requests || metadata.authn_requests_signed;
                if require_signed && certificates.is_empty() {
                    anyhow::bail!(
                        "signed requests are required, but there is no certificate to check them: give --sp-certificate"
                    );
                }
                let name_id_format = match &name_id {
                    Some(text) => tenant::saml_idp::NameIdFormat::parse(text)
                        .with_context(|| format!("--name-id {text:?}: persistent, email or unspecified"))?,
                    None => metadata.name_id_format.unwrap_or(tenant::saml_idp::NameIdFormat::Persistent),
                };
                let entity_id = entity_id.unwrap_or(metadata.entity_id);
                let acs_urls = if acs_urls.is_empty() { metadata.acs_urls } else { acs_urls };
                let slo_url = slo_url.or(metadata.slo_url);
                let mut pairs = Vec::new();
                for a in &attributes {
                    let Some((n, s)) = a.split_once('=') else { anyhow::bail!("--attribute {a:?}: write NAME=SOURCE") };
                    pairs.push((n.trim().to_string(), s.trim().to_string()));
                }
                let app = tenant::saml_idp::App {
                    id: name.clone(),
                    name: display_name.unwrap_or_else(|| name.clone()),
                    entity_id,
                    acs_urls,
                    name_id_format,
                    attributes: pairs,
                    sign_response,
                    allowed_groups,
                    require_signed,
                    sp_certificates: certificates,
                    slo_url,
                };
                open(&data)?.add_saml_app(ACTOR, &app)?;
                eprintln!(
                    "application {name}: metadata at <tenant URL>/saml/{name}/metadata, sign-in at <tenant URL>/saml/{name}/sso, sign-out at <tenant URL>/saml/{name}/slo"
                );
                Ok(())
            }
            AppCommand::List { data } => {
                for app in open(&data)?.saml_apps()? {
                    crate::out!(
                        "{}  {}  {}  {}{}",
                        app.id,
                        app.entity_id,
                        app.name_id_format.word(),
                        app.acs_urls.join(" "),
                        app.slo_url.map(|u| format!("  logout: {u}")).unwrap_or_default()
                    );
                }
                Ok(())
            }
            AppCommand::Remove { data, name } => {
                open(&data)?.remove_saml_app(ACTOR, &name)?;
                eprintln!("application {name} removed");
                Ok(())
            }
        },
        TenantCommand::Group { command } => match command {
            GroupCommand::TakeOver { data, name } => {
                let id = open(&data)?.take_over_group(ACTOR, &name)?;
                eprintln!(
                    "group {name} ({id}) is cloud-managed now: the sync leaves it alone, and sources with [source.writeback] write it on-premises"
                );
                Ok(())
            }
            GroupCommand::HandBack { data, name } => {
                let id = open(&data)?.hand_back_group(ACTOR, &name)?;
                eprintln!(
                    "group {name} ({id}) is managed on-premises again: the next sync cycle makes it what the directory says"
                );
                Ok(())
            }
        },
        TenantCommand::Domain { command } => match command {
            DomainCommand::Add { data, name, auth } => {
                let auth: AuthType = auth.parse()?;
                let d = open(&data)?.add_domain(ACTOR, &name, auth)?;
                eprintln!("domain {} added ({})", d.name, d.auth);
                Ok(())
            }
            DomainCommand::List { data } => {
                let domains = open(&data)?.domains()?;
                crate::out!("{:<40}  {:<12}  {:<7}  password-writeback", "domain", "sign-in", "initial");
                for d in domains {
                    crate::out!(
                        "{:<40}  {:<12}  {:<7}  {}",
                        d.name,
                        d.auth.as_str(),
                        if d.initial { "yes" } else { "" },
                        on_off(d.password_writeback)
                    );
                }
                Ok(())
            }
            DomainCommand::Set { data, name, auth, password_writeback } => {
                let tenant = open(&data)?;
                if let Some(auth) = auth {
                    let auth: AuthType = auth.parse()?;
                    tenant.set_domain_auth(ACTOR, &name, auth)?;
                    eprintln!("domain {name} now signs in with {auth}");
                }
                if let Some(on) = password_writeback {
                    let domain = tenant.set_password_writeback(ACTOR, &name, on)?;
                    eprintln!("domain {}: password writeback {}", domain.name, on_off(on));
                    if on {
                        eprintln!(
                            "passwords are written through the pass-through agents (`idbridge tenant pta-agents`); each agent's service account needs the right to reset passwords for administrators' resets"
                        );
                    }
                }
                Ok(())
            }
            DomainCommand::Federate {
                data,
                name,
                protocol,
                metadata,
                sso_url,
                signing_cert,
                entity_id,
                upn_attribute,
                issuer,
                client_id,
                client_secret_file,
                immutable_id_claim,
                upn_claim,
            } => {
                let federation = match protocol.as_str() {
                    "oidc" => {
                        let need =
                            |v: Option<String>, flag: &str| v.with_context(|| format!("--protocol oidc needs {flag}"));
                        let secret_file = client_secret_file.context("--protocol oidc needs --client-secret-file")?;
                        let secret = std::fs::read_to_string(&secret_file)
                            .with_context(|| format!("cannot read the client secret file {}", secret_file.display()))?
                            .trim()
                            .to_string();
                        Federation::Oidc(OidcIdp {
                            issuer: need(issuer, "--issuer URL")?,
                            client_id: need(client_id, "--client-id ID")?,
                            client_secret: secret,
                            immutable_id_claim,
                            upn_claim,
                        })
                    }
                    "saml" => {
                        let (entity_id, sso_url, signing_certificates) = match metadata {
                            Some(file) => {
                                let text = std::fs::read_to_string(&file)
                                    .with_context(|| format!("cannot read the metadata file {}", file.display()))?;
                                tenant::federation::saml::from_metadata(&text)
                                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
                            }
                            None => {
                                let cert = signing_cert
                                    .context("--protocol saml needs --metadata FILE or --signing-cert FILE")?;
                                let pem = std::fs::read_to_string(&cert)
                                    .with_context(|| format!("cannot read the certificate file {}", cert.display()))?;
                                (
                                    entity_id.context("--protocol saml needs --metadata FILE or --entity-id ID")?,
                                    sso_url.context("--protocol saml needs --metadata FILE or --sso-url URL")?,
                                    pem,
                                )
                            }
                        };
                        Federation::Saml(SamlIdp { entity_id, sso_url, signing_certificates, upn_attribute })
                    }
                    other => anyhow::bail!("unknown federation protocol {other:?}: use oidc or saml"),
                };
                let d = open(&data)?.federate(ACTOR, &name, &federation)?;
                let hint = match federation {
                    Federation::Oidc(_) => "register this redirect URI there: <tenant URL>/federation/oidc/callback",
                    Federation::Saml(_) => {
                        "register the service provider there: entity id <tenant URL>/federation/saml, ACS (HTTP-POST) <tenant URL>/federation/saml/acs"
                    }
                };
                eprintln!(
                    "domain {} now signs in at its identity provider ({}); {hint}",
                    d.name,
                    federation.protocol()
                );
                Ok(())
            }
            DomainCommand::Unfederate { data, name } => {
                let d = open(&data)?.unfederate(ACTOR, &name)?;
                eprintln!("domain {} now signs in with {} (managed)", d.name, d.auth);
                Ok(())
            }
            DomainCommand::Remove { data, name } => {
                open(&data)?.remove_domain(ACTOR, &name)?;
                eprintln!("domain {name} removed");
                Ok(())
            }
        },
        TenantCommand::Settings {
            data,
            block_soft_match,
            block_hard_match_takeover,
            require_verified_domain,
            allow_cloud_password_change,
            pta_timeout_secs,
            rate_limit_per_sec,
            trusted_proxies,
        } => {
            let tenant = open(&data)?;
            let mut s = tenant.settings()?;
            if block_soft_match.is_none()
                && block_hard_match_takeover.is_none()
                && require_verified_domain.is_none()
                && allow_cloud_password_change.is_none()
                && pta_timeout_secs.is_none()
                && rate_limit_per_sec.is_none()
                && trusted_proxies.is_none()
            {
                let proxies = tenant.trusted_proxies()?;
                crate::out!(
                    "block-soft-match: {}\nblock-hard-match-takeover: {}\nrequire-verified-domain: {}\nallow-cloud-password-change: {}\npta-timeout-secs: {}\nrate-limit-per-sec: {}\ntrusted-proxies: {}",
                    on_off(s.block_soft_match),
                    on_off(s.block_hard_match_takeover),
                    on_off(s.require_verified_domain),
                    on_off(s.allow_cloud_password_change),
                    s.pta_timeout_secs,
                    if s.rate_limit_per_sec == 0 { "off".to_string() } else { s.rate_limit_per_sec.to_string() },
                    if proxies.is_empty() {
                        "none (X-Forwarded-For is ignored)".to_string()
                    } else {
                        proxies.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    }
                );
                return Ok(());
            }
            if let Some(v) = pta_timeout_secs.filter(|v| *v == 0 || *v > 120) {
                anyhow::bail!("--pta-timeout-secs {v}: give 1 to 120 seconds");
            }
            if let Some(text) = &trusted_proxies {
                let proxies = tenant::net::parse_list(text).map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}"))?;
                tenant.set_trusted_proxies(ACTOR, &proxies)?;
            }
            s.allow_cloud_password_change = allow_cloud_password_change.unwrap_or(s.allow_cloud_password_change);
            s.pta_timeout_secs = pta_timeout_secs.unwrap_or(s.pta_timeout_secs);
            s.rate_limit_per_sec = rate_limit_per_sec.unwrap_or(s.rate_limit_per_sec);
            s.require_verified_domain = require_verified_domain.unwrap_or(s.require_verified_domain);
            s.block_soft_match = block_soft_match.unwrap_or(s.block_soft_match);
            s.block_hard_match_takeover = block_hard_match_takeover.unwrap_or(s.block_hard_match_takeover);
            tenant.save_settings(ACTOR, &s)?;
            eprintln!("settings saved");
            Ok(())
        }
        TenantCommand::SignInPolicy {
            data,
            everyone,
            groups,
            administrators,
            registration_campaign,
            campaign_skips,
            accept_federated_mfa,
        } => {
            let tenant = open(&data)?;
            let (mut policy, _) = tenant.sign_in_policy()?;
            let changing = everyone.is_some()
                || groups.is_some()
                || administrators.is_some()
                || registration_campaign.is_some()
                || campaign_skips.is_some()
                || accept_federated_mfa.is_some();
            let (policy, named) = if changing {
                policy.everyone = everyone.unwrap_or(policy.everyone);
                policy.administrators = administrators.unwrap_or(policy.administrators);
                policy.registration_campaign = registration_campaign.unwrap_or(policy.registration_campaign);
                policy.accept_federated_mfa = accept_federated_mfa.unwrap_or(policy.accept_federated_mfa);
                if let Some(text) = groups {
                    policy.groups =
                        text.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect();
                }
                if let Some(text) = campaign_skips {
                    policy.campaign_skips = match text.trim() {
                        "unlimited" => None,
                        n => Some(n.parse::<u32>().map_err(|_| {
                            anyhow::anyhow!("--campaign-skips {n}: give a number of times, or unlimited")
                        })?),
                    };
                }
                let saved = tenant.set_sign_in_policy(ACTOR, policy)?;
                eprintln!("sign-in policy saved");
                saved
            } else {
                tenant.sign_in_policy()?
            };
            let names: Vec<&str> = named.iter().map(|g| g.name.as_str()).collect();
            crate::out!(
                "everyone: {}\ngroups: {}\nadministrators: {}\nregistration-campaign: {}\ncampaign-skips: {}\naccept-federated-mfa: {}",
                on_off(policy.everyone),
                if names.is_empty() { "none".to_string() } else { names.join(", ") },
                on_off(policy.administrators),
                on_off(policy.registration_campaign),
                policy.campaign_skips.map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
                on_off(policy.accept_federated_mfa)
            );
            Ok(())
        }
        TenantCommand::Client { command } => client(command),
        TenantCommand::PtaToken { command: PtaTokenCommand::Create { data, expires } } => {
            let secs = tokens::parse_duration(&expires)?;
            let token = open(&data)?.create_pta_token(ACTOR, secs)?;
            crate::out!("{token}");
            eprintln!(
                "one-time agent registration token, valid {expires}: idbridge pta-agent register --tenant URL --token TOKEN"
            );
            Ok(())
        }
        TenantCommand::PtaAgents { data } => {
            let agents = open(&data)?.pta_agents()?;
            crate::out!("{:<36}  {:<20}  {:<8}  {:<24}  version", "id", "name", "status", "last seen");
            let now = tenant::util::now_secs();
            for a in agents {
                let status = if a.revoked.is_some() {
                    "revoked"
                } else if a.credential_expires <= now {
                    "expired"
                } else if a.last_seen.is_some_and(|t| now - t < 60) {
                    "online"
                } else {
                    "offline"
                };
                let seen = a.last_seen.map(|t| tenant::util::rfc3339(t, 0)).unwrap_or_else(|| "never".into());
                crate::out!(
                    "{:<36}  {:<20}  {:<8}  {:<24}  {}",
                    a.id,
                    a.name,
                    status,
                    seen,
                    a.version.unwrap_or_default()
                );
            }
            Ok(())
        }
        TenantCommand::PtaAgent { command: PtaAgentCommand::Revoke { data, id } } => {
            open(&data)?.revoke_pta_agent(ACTOR, &id)?;
            eprintln!("agent {id} revoked: it stops at its next request to the tenant");
            Ok(())
        }
        TenantCommand::Branding {
            command: BrandingCommand::Set { data, name, color, background_color, logo_url, background_url, text },
        } => {
            let update = BrandingUpdate { name, color, background_color, logo_url, background_url, text };
            let b = open(&data)?.set_branding(ACTOR, &update).map_err(|e| match e {
                // "color …", "logo-url …": the flag's name.
                tenant::TenantError::Invalid(m) => anyhow::anyhow!("--{m}"),
                other => other.into(),
            })?;
            crate::out!(
                "name: {}\ncolor: {}\nbackground-color: {}\nlogo-url: {}\nbackground-url: {}\ntext: {}",
                b.name,
                b.color,
                b.background_color,
                b.logo_url.unwrap_or_default(),
                b.background_url.unwrap_or_default(),
                b.text.unwrap_or_default()
            );
            Ok(())
        }
        TenantCommand::Role { command } => role(command),
        TenantCommand::User { command: UserCommand::Methods { command } } => methods(command),
        TenantCommand::User {
            command: UserCommand::ResetPassword { user, url, token_file, password_file, ca_file },
        } => reset_password(&user, &url, &token_file, password_file.as_deref(), ca_file.as_deref()).await,
        TenantCommand::Keys { command: KeysCommand::Rotate { data, alg } } => {
            let alg = tenant::oidc::keys::Alg::parse(&alg).context("--alg: use RS256 or ES256")?;
            let key = open(&data)?.rotate_key(ACTOR, alg)?;
            eprintln!(
                "{} signing key {} signs from now on; the previous one stays published for verification",
                alg.as_str(),
                key.kid
            );
            Ok(())
        }
        TenantCommand::Keys { command: KeysCommand::Prepare { data, alg } } => {
            let alg = tenant::oidc::keys::Alg::parse(&alg).context("--alg: use RS256 or ES256")?;
            let key = open(&data)?.prepare_key(ACTOR, alg)?;
            eprintln!(
                "{} key {} is published (JWKS, SAML metadata) and signs after the next `idbridge tenant keys rotate`",
                alg.as_str(),
                key.kid
            );
            Ok(())
        }
        TenantCommand::Keys { command: KeysCommand::List { data } } => {
            for k in open(&data)?.keys()? {
                let until = k.published_until.map(|t| format!("  published until {}", tenant::util::rfc3339(t, 0)));
                crate::out!(
                    "{}  {}  {:<8}  made {}{}",
                    k.kid,
                    k.alg,
                    k.state,
                    tenant::util::rfc3339(k.created, 0),
                    until.unwrap_or_default()
                );
            }
            Ok(())
        }
        TenantCommand::Audit { data, limit, json } => {
            for e in open(&data)?.audit(limit)? {
                if json {
                    crate::out!(
                        "{}",
                        serde_json::json!({"seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action, "type": e.resource_type, "id": e.resource_id, "detail": e.detail})
                    );
                } else {
                    crate::out!(
                        "{:>6}  {}  {:<36}  {:<14} {} {}{}",
                        e.seq,
                        e.at,
                        e.actor,
                        e.action,
                        e.resource_type.unwrap_or_default(),
                        e.resource_id.unwrap_or_default(),
                        e.detail.map(|d| format!("  {d}")).unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
    }
}

fn client(command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Add { data, name, redirect_uris, public, alg, post_logout_uris, require_mfa } => {
            let alg = tenant::oidc::keys::Alg::parse(&alg).context("--alg: use RS256 or ES256")?;
            let tenant = open(&data)?;
            let (client, secret) = tenant.add_client(ACTOR, &name, &redirect_uris, public, alg, &post_logout_uris)?;
            if require_mfa {
                tenant.set_client_require_mfa(ACTOR, &client.id, true)?;
            }
            crate::out!("client_id: {}", client.id);
            if let Some(secret) = secret {
                crate::out!("client_secret: {secret}");
                eprintln!("the secret is shown only this once");
            }
            Ok(())
        }
        ClientCommand::RequireMfa { data, id, required } => {
            open(&data)?.set_client_require_mfa(ACTOR, &id, required)?;
            eprintln!(
                "client {id}: {}",
                if required { "signing in takes a second factor" } else { "the tenant's sign-in policy applies" }
            );
            Ok(())
        }
        ClientCommand::List { data } => {
            let clients = open(&data)?.clients()?;
            crate::out!("{:<36}  {:<12}  {:<5}  {:<3}  redirect URIs", "id", "type", "alg", "mfa");
            for c in clients {
                crate::out!(
                    "{:<36}  {:<12}  {:<5}  {:<3}  {}  ({})",
                    c.id,
                    if c.public { "public" } else { "confidential" },
                    c.id_token_alg.as_str(),
                    if c.require_mfa { "yes" } else { "-" },
                    c.redirect_uris.join(" "),
                    c.name
                );
            }
            Ok(())
        }
        ClientCommand::Remove { data, id } => {
            open(&data)?.remove_client(ACTOR, &id)?;
            eprintln!("client {id} removed; its refresh tokens are revoked");
            Ok(())
        }
    }
}

/// `tenant user reset-password`: the admin API of the running tenant does
/// it (only the running tenant has the agents' long polls).
async fn reset_password(
    user: &str,
    url: &str,
    token_file: &std::path::Path,
    password_file: Option<&std::path::Path>,
    ca_file: Option<&std::path::Path>,
) -> Result<()> {
    let root = url.trim_end_matches('/').trim_end_matches("/scim/v2");
    proto::url::check_web_url(root).map_err(|e| anyhow::anyhow!("--url {root}: {e}"))?;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading the token file {}", token_file.display()))?
        .trim()
        .to_string();
    let (new_password, generated) = match password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the password file {}", path.display()))?;
            (text.trim_end_matches(['\r', '\n']).to_string(), false)
        }
        None => (tenant::writeback::random_password(), true),
    };
    if new_password.is_empty() {
        anyhow::bail!("the password file is empty");
    }
    let mut client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        client = client.add_root_certificate(
            reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
        );
    }
    let client = client.build().context("the HTTP client")?;
    let endpoint = format!("{root}{}", proto::admin::password_reset_path(user));
    let response = client
        .post(&endpoint)
        .bearer_auth(&token)
        .json(&proto::admin::PasswordReset { new_password: new_password.clone() })
        .send()
        .await
        .with_context(|| format!("the tenant at {root} did not answer"))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    if status != 200 {
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("the password of {user} was not reset (HTTP {status}): {detail}");
    }
    let done: proto::admin::PasswordResetDone =
        serde_json::from_slice(&body).context("the tenant's answer is not a reset result")?;
    eprintln!(
        "the password of {user} was set on-premises{}",
        if done.record_replaced { " and in the tenant" } else { "" }
    );
    if generated {
        // Only the password on stdout, once: give it to the user.
        crate::out!("{new_password}");
    }
    Ok(())
}

fn methods(command: MethodsCommand) -> Result<()> {
    match command {
        MethodsCommand::List { data, user } => {
            let (user, methods, left) = open(&data)?.user_methods(&user)?;
            crate::out!("{:<36}  {:<7}  {:<24}  {:<24}  label", "id", "kind", "registered", "last used");
            for m in &methods {
                crate::out!(
                    "{:<36}  {:<7}  {:<24}  {:<24}  {}",
                    m.id,
                    m.kind.as_str(),
                    tenant::util::rfc3339(m.created, 0),
                    m.last_used.map(|t| tenant::util::rfc3339(t, 0)).unwrap_or_else(|| "never".into()),
                    m.label
                );
            }
            eprintln!("{}: {} method(s), {left} unused recovery code(s)", user.name, methods.len());
            Ok(())
        }
        MethodsCommand::Remove { data, user, method } => {
            let (user, removed) = open(&data)?.remove_user_method(ACTOR, &user, &method)?;
            if !removed {
                anyhow::bail!("{} has no method {method} (see `idbridge tenant user methods list`)", user.name);
            }
            eprintln!("removed method {method} of {}", user.name);
            Ok(())
        }
    }
}

fn role(command: RoleCommand) -> Result<()> {
    use tenant::console::Role;
    use tenant::objects::Kind;
    let (args, assign) = match command {
        RoleCommand::List { data } => {
            let list = open(&data)?.roles()?;
            crate::out!("{:<13}  {:<6}  {:<36}  {:<24}  name", "role", "type", "id", "since");
            for a in list {
                crate::out!(
                    "{:<13}  {:<6}  {:<36}  {:<24}  {}",
                    a.role.as_str(),
                    a.principal.kind.as_str(),
                    a.principal.id,
                    a.assigned,
                    a.principal.name
                );
            }
            return Ok(());
        }
        RoleCommand::Assign(args) => (args, true),
        RoleCommand::Remove(args) => (args, false),
    };
    let role = Role::parse(&args.role).map_err(|e| anyhow::anyhow!("--role: {e}"))?;
    let (kind, who) = match (args.user, args.group) {
        (Some(user), _) => (Kind::User, user),
        (None, Some(group)) => (Kind::Group, group),
        (None, None) => anyhow::bail!("give --user UPN or --group NAME"),
    };
    let tenant = open(&args.data)?;
    let (principal, changed) = if assign {
        tenant.assign_role(ACTOR, kind, &who, role)?
    } else {
        tenant.remove_role(ACTOR, kind, &who, role)?
    };
    let what = format!("{} {}", principal.kind.as_str().to_lowercase(), principal.name);
    match (assign, changed) {
        (true, true) => eprintln!("{what} is now {role}"),
        (true, false) => eprintln!("{what} was {role} already"),
        (false, true) => eprintln!("{what} is no longer {role}"),
        (false, false) => anyhow::bail!("{what} does not have the role {role}"),
    }
    Ok(())
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
