//! `idbridge init`: the set-up wizard's flags and its terminal. The wizard
//! itself is `orchestration::init`.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The configuration file to write (edited in place when it exists).
    #[arg(long, default_value = "idbridge.toml")]
    pub config: PathBuf,
    /// Take the default for every question that has one; fail naming the flag otherwise.
    #[arg(long)]
    pub accept_defaults: bool,
    /// Write without asking for confirmation at the end.
    #[arg(long)]
    pub yes: bool,

    /// The tenant's SCIM URL, e.g. https://tenant.example.com/scim/v2.
    #[arg(long, conflicts_with = "local_tenant")]
    pub tenant_url: Option<String>,
    /// A file holding a tenant token with the sync scope.
    #[arg(long)]
    pub tenant_token_file: Option<PathBuf>,
    /// A file holding an admin-scoped tenant token, so init sets the domains'
    /// sign-in on a remote tenant ("-": print the commands instead).
    #[arg(long)]
    pub tenant_admin_token_file: Option<String>,
    /// Set up a tenant on this machine in this data directory instead.
    #[arg(long)]
    pub local_tenant: Option<PathBuf>,
    /// The local tenant's listen address.
    #[arg(long)]
    pub tenant_listen: Option<String>,
    /// The local tenant's initial domain (first set-up only).
    #[arg(long)]
    pub initial_domain: Option<String>,

    /// A short name for the directory (a new name adds one; an existing name edits it).
    #[arg(long)]
    pub name: Option<String>,
    /// Directory server URL(s), comma-separated for failover: ldaps://dc1.corp.example,ldaps://dc2.corp.example.
    #[arg(long)]
    pub directory: Option<String>,
    /// Use StartTLS on ldap:// URLs (yes/no).
    #[arg(long)]
    pub starttls: Option<String>,
    /// A PEM file with the CA that signed the directory's certificate ("-" for the system's).
    #[arg(long)]
    pub ca_file: Option<String>,
    /// The account idbridge binds as ("-" for anonymous).
    #[arg(long)]
    pub bind_dn: Option<String>,
    /// A file holding that account's password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Where to read from (repeat for several); default: the server's default naming context.
    #[arg(long)]
    pub base_dn: Vec<String>,
    /// Only these OUs (DNs or numbers from the OU list; repeatable; default all).
    #[arg(long)]
    pub include_ou: Vec<String>,
    /// Leave these OUs out (DNs or numbers; repeatable).
    #[arg(long)]
    pub exclude_ou: Vec<String>,
    /// Only direct members of this group sync ("-" for no group filter).
    #[arg(long)]
    pub scope_group: Option<String>,
    /// An LDAP filter objects must also match ("-" for none).
    #[arg(long)]
    pub filter: Option<String>,
    /// How this directory's people match those of directories configured before it:
    /// none, mail, objectsid (objectSid ↔ msExchMasterAccountSID), sam (sAMAccountName + mailNickname), attribute:NAME.
    #[arg(long)]
    pub join: Option<String>,
    /// The sourceAnchor: consistencyguid (AD: ms-DS-ConsistencyGuid, filled from objectGUID),
    /// objectguid, entryuuid, nsuniqueid, or attribute:NAME.
    #[arg(long)]
    pub anchor: Option<String>,

    /// Sign-in method of a domain: DOMAIN=phs, DOMAIN=pta or DOMAIN=federated (repeatable).
    #[arg(long)]
    pub sign_in: Vec<String>,
    /// Send password hashes even where no domain uses PHS (a fallback; yes/no).
    #[arg(long)]
    pub password_hash_sync: Option<String>,
    /// Federated domains (local tenant): oidc or saml.
    #[arg(long)]
    pub federation_protocol: Option<String>,
    /// SAML: the identity provider's metadata file.
    #[arg(long)]
    pub federation_metadata: Option<PathBuf>,
    /// OIDC: the identity provider's issuer URL.
    #[arg(long)]
    pub federation_issuer: Option<String>,
    /// OIDC: the client id the identity provider gave the tenant.
    #[arg(long)]
    pub federation_client_id: Option<String>,
    /// OIDC: a file holding the client secret.
    #[arg(long)]
    pub federation_client_secret_file: Option<PathBuf>,

    /// Password writeback (yes/no): passwords changed or reset in the cloud are set
    /// in this directory by the pass-through agents (the bind account needs Reset Password).
    #[arg(long)]
    pub password_writeback: Option<String>,
    /// Staging mode: import and sync, export nothing (yes/no).
    #[arg(long)]
    pub staging: Option<String>,
    /// Also write a systemd unit for the sync daemon here ("-" for none).
    #[arg(long)]
    pub systemd_unit: Option<String>,
}

impl From<InitArgs> for orchestration::init::InitOptions {
    fn from(a: InitArgs) -> Self {
        orchestration::init::InitOptions {
            config: a.config,
            accept_defaults: a.accept_defaults,
            yes: a.yes,
            tenant_url: a.tenant_url,
            tenant_token_file: a.tenant_token_file,
            tenant_admin_token_file: a.tenant_admin_token_file,
            local_tenant: a.local_tenant,
            tenant_listen: a.tenant_listen,
            initial_domain: a.initial_domain,
            name: a.name,
            directory: a.directory,
            starttls: a.starttls,
            ca_file: a.ca_file,
            bind_dn: a.bind_dn,
            password_file: a.password_file,
            base_dn: a.base_dn,
            include_ou: a.include_ou,
            exclude_ou: a.exclude_ou,
            scope_group: a.scope_group,
            filter: a.filter,
            join: a.join,
            anchor: a.anchor,
            sign_in: a.sign_in,
            password_hash_sync: a.password_hash_sync,
            federation_protocol: a.federation_protocol,
            federation_metadata: a.federation_metadata,
            federation_issuer: a.federation_issuer,
            federation_client_id: a.federation_client_id,
            federation_client_secret_file: a.federation_client_secret_file,
            password_writeback: a.password_writeback,
            staging: a.staging,
            systemd_unit: a.systemd_unit,
        }
    }
}

/// Runs the wizard on this terminal (or from the flags in a script).
pub async fn run(args: InitArgs) -> Result<(), orchestration::init::InitError> {
    let ask = Box::new(crate::prompt::Prompter::new(args.accept_defaults));
    orchestration::init::run(args.into(), ask).await
}
