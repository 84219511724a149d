//! The tenant steps: where the tenant is (a running one, or one set up on
//! this machine), how each domain's users sign in, staging mode; and, when
//! the file is written, configuring the local tenant to match.

use std::path::PathBuf;
use std::time::Duration;

use super::{Context, InitError, Result, bail};
use crate::Error;
use proto::admin::{DomainList, SetDomainAuth};
use tenant::Tenant;
use tenant::domains::{self, AuthType};
use tenant::federation::{self, Federation, OidcIdp, SamlIdp};
use tenant::tokens::Scope;

use super::Answer;
use super::{STEPS, TenantChoice, Wizard, parse_yes_no};

/// Domains that can never be verified in a cloud tenant.
fn routable(domain: &str) -> bool {
    let tld = domain.rsplit('.').next().unwrap_or_default();
    domain.contains('.') && !matches!(tld, "local" | "lan" | "internal" | "localdomain" | "corp" | "intranet" | "home")
}

fn method_word(auth: AuthType) -> &'static str {
    match auth {
        AuthType::ManagedPhs => "phs",
        AuthType::ManagedPta => "pta",
        AuthType::Federated => "federated",
    }
}

/// The HTTP client for the tenant checks (bounded: a wizard never hangs).
fn http() -> Result<reqwest::Client, String> {
    reqwest::Client::builder().timeout(Duration::from_secs(15)).build().map_err(|e| e.to_string())
}

/// The tenant's root from its SCIM URL.
fn tenant_root(scim_url: &str) -> String {
    scim_url.trim_end_matches('/').trim_end_matches("/scim/v2").to_string()
}

/// The error detail of a SCIM error answer.
fn scim_detail(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// The domains of a remote tenant and how they sign in (needs an admin token).
async fn admin_domains(scim_url: &str, token: &str) -> std::result::Result<Vec<(String, AuthType)>, String> {
    let client = http()?;
    let url = format!("{}{}", tenant_root(scim_url), proto::admin::DOMAINS_PATH);
    let response = client.get(&url).bearer_auth(token).send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    if status != 200 {
        return Err(format!("the tenant refused the admin token (HTTP {status}): {}", scim_detail(&body)));
    }
    let list: DomainList = serde_json::from_slice(&body).map_err(|e| format!("{url}: not a list of domains ({e})"))?;
    Ok(list.domains.into_iter().map(|d| (d.name, d.auth)).collect())
}

/// Sets one domain's sign-in on a remote tenant.
async fn admin_set_domain(scim_url: &str, token: &str, name: &str, auth: AuthType) -> std::result::Result<(), String> {
    let client = http()?;
    let url = format!("{}{}", tenant_root(scim_url), proto::admin::domain_path(name));
    let response = client
        .put(&url)
        .bearer_auth(token)
        .json(&SetDomainAuth { auth })
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    if status == 200 || status == 201 {
        return Ok(());
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(format!("setting {name} to {auth} on the tenant failed (HTTP {status}): {}", scim_detail(&body)))
}

/// Whether a running tenant takes this token: (ok, what to say).
async fn check_remote_tenant(url: &str, token: &str) -> Result<(), String> {
    let client = http()?;
    let response =
        client.get(format!("{url}/Users?count=1&attributes=id")).bearer_auth(token).send().await.map_err(|e| {
            format!(
                "the tenant at {url} did not answer ({e}); is it running, and is the URL its SCIM root (…/scim/v2)?"
            )
        })?;
    match response.status().as_u16() {
        200 => Ok(()),
        401 | 403 => Err(format!(
            "the tenant at {url} refused the token (HTTP {}): make one with `idbridge tenant token create --data DIR --scope sync`",
            response.status().as_u16()
        )),
        404 => Err(format!(
            "{url} has no SCIM Users endpoint: give the SCIM root, like https://tenant.example.com/scim/v2"
        )),
        other => Err(format!("the tenant at {url} answered HTTP {other}")),
    }
}

impl Wizard {
    pub(super) async fn tenant_step(&mut self) -> Result<Answer<()>> {
        self.ask.heading(1, STEPS, "The cloud tenant");
        let existing = self.existing_config.as_ref().and_then(|c| c.tenant.as_ref());
        let given = self.args.tenant_url.clone().or(self.args.local_tenant.as_ref().map(|_| "local".to_string()));
        let default = existing.map(|t| t.url.clone()).unwrap_or_else(|| "local".into());
        let Answer::Value(answer) = self.ask.ask(
            "Tenant SCIM URL, or 'local' to set one up on this machine",
            "--tenant-url URL (or --local-tenant DIR)",
            given,
            Some(default),
            "the SCIM root of your tenant, like https://tenant.example.com/scim/v2; 'local' runs one here",
        )?
        else {
            return Ok(Answer::Back);
        };
        if answer.eq_ignore_ascii_case("local") {
            return self.local_tenant().map(|()| Answer::Value(()));
        }
        let url = answer.trim_end_matches('/').to_string();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(self.failed(format!("{url:?} is not an http(s):// URL")));
        }
        let Answer::Value(file) = self.ask.ask(
            "File holding a tenant token with the sync scope",
            "--tenant-token-file",
            self.args.tenant_token_file.as_ref().map(|p| p.display().to_string()),
            existing.and_then(|t| t.token_file.as_ref()).map(|p| p.display().to_string()),
            "made on the tenant with `idbridge tenant token create --scope sync`; keep it chmod 600",
        )?
        else {
            return Ok(Answer::Back);
        };
        let token_file = self.absolute(&file);
        let token = match std::fs::read_to_string(&token_file) {
            Ok(t) => t.trim().to_string(),
            Err(e) => return Err(self.failed(format!("cannot read the token file {}: {e}", token_file.display()))),
        };
        if let Err(problem) = check_remote_tenant(&url, &token).await {
            return Err(self.failed(problem));
        }
        self.ask.good(&format!("the tenant at {url} accepts the token"));
        let Answer::Value(admin_file) = self.ask.ask(
            "Admin token file, so init sets the domains' sign-in there ('-' = print the commands instead)",
            "--tenant-admin-token-file",
            self.args.tenant_admin_token_file.clone(),
            Some(String::new()),
            "a token made on the tenant with `idbridge tenant token create --scope admin`; it is used once and not stored",
        )?
        else {
            return Ok(Answer::Back);
        };
        let mut admin_token = None;
        self.remote_domains.clear();
        if let Some(file) = super::optional(admin_file) {
            let path = self.absolute(&file);
            let token = match std::fs::read_to_string(&path) {
                Ok(t) => t.trim().to_string(),
                Err(e) => return Err(self.failed(format!("cannot read the admin token file {}: {e}", path.display()))),
            };
            match admin_domains(&url, &token).await {
                Ok(list) => {
                    self.ask.good(&format!("the admin token works ({} domains in the tenant)", list.len()));
                    self.remote_domains = list;
                }
                Err(problem) => return Err(self.failed(problem)),
            }
            admin_token = Some(token);
        }
        self.tenant = Some(TenantChoice::Remote { url, token_file, admin_token });
        Ok(Answer::Value(()))
    }

    fn local_tenant(&mut self) -> Result<()> {
        let default_dir = self.config_dir.join("tenant");
        let Answer::Value(dir) = self.ask.ask(
            "Tenant data directory",
            "--local-tenant",
            self.args.local_tenant.as_ref().map(|p| p.display().to_string()),
            Some(default_dir.display().to_string()),
            "where the tenant keeps its database and keys (created when the file is written)",
        )?
        else {
            return Err(InitError::Retry);
        };
        let data = self.absolute(&dir);
        let Answer::Value(listen) = self.ask.ask(
            "Address the tenant listens on",
            "--tenant-listen",
            self.args.tenant_listen.clone(),
            Some("127.0.0.1:8443".into()),
            "host:port; plain HTTP only on loopback (give it a certificate with `tenant serve --tls-cert` otherwise)",
        )?
        else {
            return Err(InitError::Retry);
        };
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(self.failed(format!("--tenant-listen {listen:?}: give an address like 127.0.0.1:8443")));
        }
        let initial_domain = match Tenant::open_existing(&data) {
            Ok(existing) => {
                let d = existing.initial_domain().context("reading the local tenant's initial domain")?;
                self.ask.good(&format!("a tenant exists in {} (initial domain {})", data.display(), d.name));
                d.name
            }
            Err(_) => {
                let Answer::Value(d) = self.ask.ask(
                    "The tenant's initial domain (administrators sign in there; never federated)",
                    "--initial-domain",
                    self.args.initial_domain.clone(),
                    Some("tenant.idbridge.test".into()),
                    "a DNS name for the tenant itself, like contoso.idbridge.test",
                )?
                else {
                    return Err(InitError::Retry);
                };
                match domains::check_domain_name(&d) {
                    Ok(name) => name,
                    Err(e) => return Err(self.failed(format!("--initial-domain {d:?}: {e}"))),
                }
            }
        };
        self.tenant = Some(TenantChoice::Local { data, listen, initial_domain });
        Ok(())
    }

    /// The sign-in method the local tenant has for a domain now.
    fn current_method(&self, domain: &str) -> Option<AuthType> {
        if let Some((_, auth)) = self.remote_domains.iter().find(|(d, _)| d == domain) {
            return Some(*auth);
        }
        let Some(TenantChoice::Local { data, .. }) = &self.tenant else { return None };
        Tenant::open_existing(data).ok()?.domain(domain).ok().flatten().map(|d| d.auth)
    }

    /// Whether the local tenant writes a domain's passwords back now.
    fn current_writeback(&self, domain: &str) -> bool {
        let Some(TenantChoice::Local { data, .. }) = &self.tenant else { return false };
        Tenant::open_existing(data)
            .ok()
            .and_then(|t| t.domain(domain).ok().flatten())
            .is_some_and(|d| d.password_writeback)
    }

    pub(super) fn sign_in_step(&mut self) -> Result<Answer<()>> {
        self.ask.heading(8, STEPS, "How people sign in");
        let survey = self.survey.as_ref().context("the survey step did not run")?;
        let mut found: Vec<(String, u64)> = survey.domains.iter().map(|(d, n)| (d.clone(), *n)).collect();
        found.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let (usable, unusable): (Vec<_>, Vec<_>) = found.into_iter().partition(|(d, _)| routable(d));
        if !unusable.is_empty() {
            let list: Vec<String> = unusable.iter().map(|(d, n)| format!("{d} ({n})")).collect();
            self.ask.warn(&format!(
                "{} cannot be verified in a cloud tenant: give those users a UPN in a real domain (idbridge idfix scan lists them)",
                list.join(", ")
            ));
        }
        let mut flagged: Vec<(String, String)> = Vec::new();
        for item in &self.args.sign_in {
            let Some((d, m)) = item.split_once('=') else {
                bail!("--sign-in {item:?}: write DOMAIN=phs, DOMAIN=pta or DOMAIN=federated");
            };
            flagged.push((d.trim().to_ascii_lowercase(), m.trim().to_string()));
        }
        let mut domains: Vec<String> = usable.iter().map(|(d, _)| d.clone()).collect();
        for (d, _) in &flagged {
            if !domains.contains(d) {
                domains.push(d.clone());
            }
        }
        if domains.is_empty() {
            self.ask.warn("no user in scope has a userPrincipalName (or mail) in a routable domain");
        } else {
            self.ask.say("Per domain: phs = password hash sync (recommended), pta = pass-through (agents check");
            self.ask.say("passwords on-premises), federated = your own identity provider (AD FS, Keycloak …).");
        }
        let counts: std::collections::HashMap<String, u64> = usable.into_iter().collect();
        let mut chosen = Vec::new();
        for d in domains {
            let given = flagged.iter().find(|(f, _)| *f == d).map(|(_, m)| m.clone());
            let default = self.current_method(&d).map(method_word).unwrap_or("phs");
            let users = counts.get(&d).map(|n| format!(" ({n} users)")).unwrap_or_default();
            let Answer::Value(word) = self.ask.ask(
                &format!("Sign-in for {d}{users}"),
                &format!("--sign-in {d}=phs|pta|federated"),
                given,
                Some(default.to_string()),
                "phs, pta or federated",
            )?
            else {
                return Ok(Answer::Back);
            };
            match word.parse::<AuthType>() {
                Ok(auth) => chosen.push((d, auth)),
                Err(e) => return Err(self.failed(format!("{d}: {e}"))),
            }
        }
        let any_federated = chosen.iter().any(|(_, a)| *a == AuthType::Federated);
        self.federation = None;
        if any_federated && matches!(self.tenant, Some(TenantChoice::Local { .. })) {
            match self.federation_answers()? {
                Some(f) => self.federation = Some(f),
                None => return Ok(Answer::Back),
            }
        }
        let any_phs = chosen.iter().any(|(_, a)| *a == AuthType::ManagedPhs);
        let given =
            self.args.password_hash_sync.as_deref().map(|t| parse_yes_no("--password-hash-sync", t)).transpose()?;
        let Answer::Value(phs) = self.ask.confirm(
            "Synchronise password hashes",
            "--password-hash-sync",
            given.or(any_phs.then_some(true)),
            any_phs || self.source.password_hash_sync,
        )?
        else {
            return Ok(Answer::Back);
        };
        if any_phs && !phs {
            return Err(self.failed(
                "a domain signs in with password hash sync, so password hashes must be synchronised (say yes, or choose pta/federated for it)"
                    .into(),
            ));
        }
        let writes_back = chosen.iter().any(|(_, a)| *a != AuthType::Federated);
        let given =
            self.args.password_writeback.as_deref().map(|t| parse_yes_no("--password-writeback", t)).transpose()?;
        let mut password_writeback = false;
        if writes_back {
            let current = self.password_writeback || chosen.iter().any(|(d, _)| self.current_writeback(d));
            let Answer::Value(on) = self.ask.confirm(
                "Password writeback (passwords changed or reset in the cloud are set here, through the pass-through agents)",
                "--password-writeback",
                given,
                current,
            )?
            else {
                return Ok(Answer::Back);
            };
            password_writeback = on;
        } else if given == Some(true) {
            return Err(self.failed(
                "password writeback needs a domain that signs in with phs or pta (a federated domain's passwords live at its identity provider)"
                    .into(),
            ));
        }
        let existing_staging = self.existing_config.as_ref().is_some_and(|c| c.sync.staging);
        let given = self.args.staging.as_deref().map(|t| parse_yes_no("--staging", t)).transpose()?;
        let Answer::Value(staging) = self.ask.confirm(
            "Staging mode (import and sync, export nothing: a standby server)",
            "--staging",
            given,
            existing_staging,
        )?
        else {
            return Ok(Answer::Back);
        };
        self.source.password_hash_sync = phs;
        self.password_writeback = password_writeback;
        self.staging = staging;
        self.sign_in = chosen;
        Ok(Answer::Value(()))
    }

    /// The identity provider of federated domains (local tenant). None = back.
    fn federation_answers(&mut self) -> Result<Option<Federation>> {
        let Answer::Value(protocol) = self.ask.ask(
            "Federation protocol (oidc or saml)",
            "--federation-protocol",
            self.args.federation_protocol.clone(),
            Some("oidc".into()),
            "how the tenant talks to your identity provider",
        )?
        else {
            return Ok(None);
        };
        let federation = match protocol.as_str() {
            "saml" => {
                let Answer::Value(file) = self.ask.ask(
                    "The identity provider's SAML metadata file",
                    "--federation-metadata",
                    self.args.federation_metadata.as_ref().map(|p| p.display().to_string()),
                    None,
                    "the XML document your IdP publishes (entity id, SSO URL, signing certificate)",
                )?
                else {
                    return Ok(None);
                };
                let path = self.absolute(&file);
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => return Err(self.failed(format!("cannot read {}: {e}", path.display()))),
                };
                match federation::saml::from_metadata(&text) {
                    Ok((entity_id, sso_url, signing_certificates)) => {
                        Federation::Saml(SamlIdp { entity_id, sso_url, signing_certificates, upn_attribute: None })
                    }
                    Err(e) => return Err(self.failed(format!("{}: {e}", path.display()))),
                }
            }
            "oidc" => {
                let mut answers = Vec::new();
                for (question, flag, given) in [
                    ("The identity provider's issuer URL", "--federation-issuer", self.args.federation_issuer.clone()),
                    (
                        "The client id it gave this tenant",
                        "--federation-client-id",
                        self.args.federation_client_id.clone(),
                    ),
                    (
                        "File holding the client secret",
                        "--federation-client-secret-file",
                        self.args.federation_client_secret_file.as_ref().map(|p| p.display().to_string()),
                    ),
                ] {
                    let Answer::Value(v) = self.ask.ask(
                        question,
                        flag,
                        given,
                        None,
                        "from your identity provider's client registration",
                    )?
                    else {
                        return Ok(None);
                    };
                    answers.push(v);
                }
                let [issuer, client_id, secret_file] =
                    <[String; 3]>::try_from(answers).map_err(|_| crate::refused!("three answers"))?;
                let path = self.absolute(&secret_file);
                let client_secret = match std::fs::read_to_string(&path) {
                    Ok(t) => t.trim().to_string(),
                    Err(e) => return Err(self.failed(format!("cannot read {}: {e}", path.display()))),
                };
                Federation::Oidc(OidcIdp {
                    issuer,
                    client_id,
                    client_secret,
                    immutable_id_claim: "immutable_id".into(),
                    upn_claim: None,
                })
            }
            other => return Err(self.failed(format!("--federation-protocol {other:?}: use oidc or saml"))),
        };
        if let Err(e) = federation.check() {
            return Err(self.failed(format!("the identity provider settings: {e}")));
        }
        Ok(Some(federation))
    }

    /// Sets up (or updates) the local tenant: domains and their sign-in, and a
    /// sync token in the token file. Returns what to tell the administrator.
    pub(super) fn apply_local_tenant(&self) -> Result<Vec<String>> {
        let Some(TenantChoice::Local { data, listen, initial_domain }) = &self.tenant else {
            return Ok(Vec::new());
        };
        let (local, created) = Tenant::open_or_create(data, initial_domain)
            .with_context(|| format!("setting up the tenant in {}", data.display()))?;
        let mut notes = Vec::new();
        if created {
            notes.push(format!("created a tenant in {} (initial domain {initial_domain})", data.display()));
        }
        for (name, auth) in &self.sign_in {
            // A federated domain is added managed first, then handed to its identity provider.
            let plain = if *auth == AuthType::Federated { AuthType::ManagedPhs } else { *auth };
            match local.domain(name)? {
                Some(d) if d.auth == *auth || *auth == AuthType::Federated => {}
                _ => {
                    local.ensure_domain("init", name, plain).with_context(|| format!("adding the domain {name}"))?;
                }
            }
            if *auth == AuthType::Federated
                && let Some(f) = &self.federation
            {
                local.federate("init", name, f).with_context(|| format!("federating {name}"))?;
            }
            let writeback = self.password_writeback && *auth != AuthType::Federated;
            if local.domain(name)?.is_some_and(|d| d.password_writeback != writeback) {
                local
                    .set_password_writeback("init", name, writeback)
                    .with_context(|| format!("setting password writeback of {name}"))?;
            }
            let writeback_note = if writeback { ", password writeback on" } else { "" };
            notes.push(format!("domain {name}: {}{writeback_note}", auth.as_str()));
        }
        let token_file = self.local_token_file();
        let current = std::fs::read_to_string(&token_file).ok().map(|t| t.trim().to_string());
        let valid = match &current {
            Some(t) => local.token_scope(t)? == Some(Scope::Sync),
            None => false,
        };
        if !valid {
            let (_, token) = local.create_token("init", Scope::Sync, None, Some("idbridge init"), &[])?;
            config::files::write_secret(&token_file, format!("{token}\n").as_bytes())?;
            notes.push(format!("wrote a sync token to {} (mode 0600)", token_file.display()));
        }
        notes.push(format!("start the tenant: idbridge tenant serve --data {} --listen {listen}", data.display()));
        Ok(notes)
    }

    /// Sets the domains' sign-in on a remote tenant when an admin token was given.
    pub(super) async fn apply_remote_tenant(&self) -> Result<Vec<String>> {
        let Some(TenantChoice::Remote { url, admin_token: Some(token), .. }) = &self.tenant else {
            return Ok(Vec::new());
        };
        let mut notes = Vec::new();
        for (name, auth) in &self.sign_in {
            if *auth == AuthType::Federated {
                continue;
            }
            admin_set_domain(url, token, name, *auth)
                .await
                .map_err(|m: String| InitError::Failed(Error::Refused(m)))?;
            notes.push(format!("domain {name}: {} (set on the tenant)", auth.as_str()));
        }
        Ok(notes)
    }

    /// What the administrator does next for sign-in (pass-through agents,
    /// remote-tenant domains, federation to finish).
    pub(super) fn sign_in_instructions(&self) -> Vec<String> {
        let mut out = Vec::new();
        let data = match &self.tenant {
            Some(TenantChoice::Local { data, .. }) => data.display().to_string(),
            _ => "<tenant data directory>".into(),
        };
        let remote = matches!(self.tenant, Some(TenantChoice::Remote { .. }));
        let applied = matches!(self.tenant, Some(TenantChoice::Remote { admin_token: Some(_), .. }));
        for (name, auth) in &self.sign_in {
            if remote && (!applied || *auth == AuthType::Federated) {
                out.push(format!(
                    "on the tenant: idbridge tenant domain add --data {data} {name} --auth {}   (or `domain set` if it exists)",
                    if *auth == AuthType::Federated { "managed-phs" } else { auth.as_str() }
                ));
            }
            if remote && self.password_writeback && *auth != AuthType::Federated {
                out.push(format!(
                    "on the tenant: idbridge tenant domain set --data {data} {name} --password-writeback on"
                ));
            }
            if *auth == AuthType::Federated && (remote || self.federation.is_none()) {
                out.push(format!(
                    "federate it: idbridge tenant domain federate --data {data} {name} --protocol oidc|saml … (see --help)"
                ));
            }
        }
        if self.password_writeback {
            let bind = self.source.bind_dn.as_deref().unwrap_or("the bind account");
            out.push(format!(
                "password writeback goes through the pass-through agents: give them the bind account {bind} (it has the Reset Password right) or another that has it"
            ));
        }
        if self.password_writeback || self.sign_in.iter().any(|(_, a)| *a == AuthType::ManagedPta) {
            let url = match &self.tenant {
                Some(TenantChoice::Local { listen, .. }) => format!("http://{listen}"),
                Some(TenantChoice::Remote { url, .. }) => url.trim_end_matches("/scim/v2").to_string(),
                None => "<tenant URL>".into(),
            };
            out.push(format!(
                "pass-through agents (two or more, on servers that reach the domain controllers):\n    idbridge tenant pta-token create --data {data}\n    idbridge pta-agent register --tenant {url} --token <that token> --config agent.toml\n    idbridge pta-agent run --config agent.toml"
            ));
        }
        out
    }

    pub(super) fn tenant_data(&self) -> Option<&PathBuf> {
        match &self.tenant {
            Some(TenantChoice::Local { data, .. }) => Some(data),
            _ => None,
        }
    }
}
