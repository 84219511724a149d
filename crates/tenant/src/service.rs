//! [`Tenant`]: the tenant as a service. The command line, the set-up
//! wizard and the demo administer the tenant through it — never through
//! the database — and every change is written with its audit entry in one
//! transaction (rolled back if anything fails). It owns the storage: the
//! boundary a second storage engine implements.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::branding::Branding;
use crate::console::{self, Principal, Role};
use crate::domains::{self, AuthType, Domain};
use crate::error::{Result, TenantError};
use crate::federation::{self, Federation};
use crate::net::Cidr;
use crate::objects::{self, Kind};
use crate::oidc::clients::{self, Client};
use crate::oidc::keys::{self, Alg, SigningKey};
use crate::pta::AgentInfo;
use crate::store::{Location, Settings, Store};
use crate::tokens::{self, Scope, TokenInfo};
use crate::{audit, store};

/// One tenant and its storage.
#[derive(Debug, Clone)]
pub struct Tenant {
    store: Arc<Store>,
}

/// What a branding change sets; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrandingUpdate {
    pub name: Option<String>,
    pub color: Option<String>,
    pub background_color: Option<String>,
    pub logo_url: Option<String>,
    pub background_url: Option<String>,
    pub text: Option<String>,
}

impl Tenant {
    /// Opens the tenant in `data_dir`, creating it (directory, database,
    /// initial domain) on first use; `true` when it was just created.
    pub fn open_or_create(data_dir: &Path, initial_domain: &str) -> Result<(Tenant, bool)> {
        let (store, fresh) = crate::open_or_create(data_dir, initial_domain)?;
        Ok((Tenant { store: Arc::new(store) }, fresh))
    }

    /// Opens an existing tenant (administration commands).
    pub fn open_existing(data_dir: &Path) -> Result<Tenant> {
        Ok(Tenant { store: Arc::new(crate::open_existing(data_dir)?) })
    }

    /// Opens the tenant at `location`, creating it on first use; `true` when just created.
    pub fn open_or_create_at(location: &Location, initial_domain: &str) -> Result<(Tenant, bool)> {
        let (store, fresh) = crate::open_or_create_at(location, initial_domain)?;
        Ok((Tenant { store: Arc::new(store) }, fresh))
    }

    /// Opens an existing tenant at `location` (administration commands).
    pub fn open_existing_at(location: &Location) -> Result<Tenant> {
        Ok(Tenant { store: Arc::new(crate::open_existing_at(location)?) })
    }

    /// The storage, for the HTTP layer's request handlers.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs `work` in one write transaction: committed when it returns
    /// `Ok`, rolled back otherwise (or if it panics).
    fn write<T>(&self, work: impl FnOnce(&crate::db::Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.store.lock();
        let tx = conn.transaction()?;
        let value = work(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    fn read<T>(&self, work: impl FnOnce(&crate::db::Connection) -> Result<T>) -> Result<T> {
        work(&self.store.read())
    }

    // ---- Domains ----

    pub fn domains(&self) -> Result<Vec<Domain>> {
        self.read(domains::list)
    }

    /// The tenant's own domain, made with it.
    pub fn initial_domain(&self) -> Result<Domain> {
        self.read(domains::initial)
    }

    pub fn domain(&self, name: &str) -> Result<Option<Domain>> {
        self.read(|c| domains::get(c, name))
    }

    pub fn add_domain(&self, actor: &str, name: &str, auth: AuthType) -> Result<Domain> {
        self.write(|tx| {
            let d = domains::add(tx, name, auth, false)?;
            audit::record(tx, actor, "domain-add", None, Some(&d.name), Some(&json!({"auth": auth.as_str()})))?;
            Ok(d)
        })
    }

    /// Adds the domain or changes how its users sign in; `true` when added.
    pub fn ensure_domain(&self, actor: &str, name: &str, auth: AuthType) -> Result<(Domain, bool)> {
        self.write(|tx| {
            let (domain, created) = match domains::get(tx, name)? {
                Some(d) if d.auth == auth => return Ok((d, false)),
                Some(_) => {
                    domains::set_auth(tx, name, auth)?;
                    (domains::get(tx, name)?.ok_or_else(|| TenantError::NotFound(format!("domain {name}")))?, false)
                }
                None => (domains::add(tx, name, auth, false)?, true),
            };
            let action = if created { "domain-add" } else { "domain-set" };
            audit::record(tx, actor, action, None, Some(&domain.name), Some(&json!({"auth": auth.as_str()})))?;
            Ok((domain, created))
        })
    }

    pub fn set_domain_auth(&self, actor: &str, name: &str, auth: AuthType) -> Result<()> {
        self.write(|tx| {
            domains::set_auth(tx, name, auth)?;
            audit::record(tx, actor, "domain-set", None, Some(name), Some(&json!({"auth": auth.as_str()})))
        })
    }

    /// Turns password writeback on or off for a domain's synchronised users.
    pub fn set_password_writeback(&self, actor: &str, name: &str, on: bool) -> Result<Domain> {
        self.write(|tx| {
            let domain = domains::set_password_writeback(tx, name, on)?;
            audit::record(tx, actor, "domain-set", None, Some(&domain.name), Some(&json!({"passwordWriteback": on})))?;
            Ok(domain)
        })
    }

    /// Source of authority: the synchronised group `name` (display name or
    /// id) becomes cloud-managed; returns its id.
    pub fn take_over_group(&self, actor: &str, name: &str) -> Result<String> {
        self.write(|tx| crate::cloud_groups::take_over(tx, actor, name))
    }

    /// Registers a SAML application (audited).
    pub fn add_saml_app(&self, actor: &str, app: &crate::saml_idp::App) -> Result<()> {
        self.write(|tx| {
            crate::saml_idp::add_app(tx, app)?;
            audit::record(tx, actor, "saml-app-add", None, Some(&app.id), Some(&json!({"entityId": app.entity_id})))
        })
    }

    pub fn saml_apps(&self) -> Result<Vec<crate::saml_idp::App>> {
        self.read(crate::saml_idp::apps)
    }

    pub fn remove_saml_app(&self, actor: &str, id: &str) -> Result<()> {
        self.write(|tx| {
            if !crate::saml_idp::remove_app(tx, id)? {
                return Err(TenantError::NotFound(format!("application {id}")));
            }
            audit::record(tx, actor, "saml-app-remove", None, Some(id), None)
        })
    }

    /// Hands a taken-over group back to its directory; returns its id.
    pub fn hand_back_group(&self, actor: &str, name: &str) -> Result<String> {
        self.write(|tx| crate::cloud_groups::hand_back(tx, actor, name))
    }

    pub fn remove_domain(&self, actor: &str, name: &str) -> Result<()> {
        self.write(|tx| {
            domains::remove(tx, name)?;
            audit::record(tx, actor, "domain-remove", None, Some(name), None)
        })
    }

    /// Hands the domain's sign-in to its identity provider.
    pub fn federate(&self, actor: &str, name: &str, federation: &Federation) -> Result<Domain> {
        self.write(|tx| {
            let d = federation::federate(tx, name, federation)?;
            let detail = json!({"protocol": federation.protocol()});
            audit::record(tx, actor, "domain-federate", None, Some(&d.name), Some(&detail))?;
            Ok(d)
        })
    }

    pub fn unfederate(&self, actor: &str, name: &str) -> Result<Domain> {
        self.write(|tx| {
            let d = federation::unfederate(tx, name)?;
            audit::record(tx, actor, "domain-unfederate", None, Some(&d.name), None)?;
            Ok(d)
        })
    }

    /// The identity provider of a federated domain.
    pub fn federation(&self, name: &str) -> Result<Option<Federation>> {
        self.read(|c| federation::load(c, name))
    }

    // ---- Bearer tokens ----

    /// A new token (shown only now) and its id; limited to `domains` when given.
    pub fn create_token(
        &self,
        actor: &str,
        scope: Scope,
        lifetime_secs: Option<i64>,
        note: Option<&str>,
        domains: &[String],
    ) -> Result<(String, String)> {
        self.write(|tx| {
            let (id, token) = tokens::create(tx, scope, lifetime_secs, note)?;
            if !domains.is_empty() {
                tokens::restrict_domains(tx, &id, domains)?;
            }
            audit::record(tx, actor, "token-create", None, Some(&id), Some(&json!({"scope": scope.as_str()})))?;
            Ok((id, token))
        })
    }

    /// The scope of a token that is valid now.
    pub fn token_scope(&self, token: &str) -> Result<Option<Scope>> {
        self.read(|c| Ok(tokens::authenticate(c, token)?.map(|(_, scope)| scope)))
    }

    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.read(tokens::list)
    }

    pub fn revoke_token(&self, actor: &str, id: &str) -> Result<()> {
        self.write(|tx| {
            tokens::revoke(tx, id)?;
            audit::record(tx, actor, "token-revoke", None, Some(id), None)
        })
    }

    // ---- OpenID Connect clients and keys ----

    /// Registers a relying party; a confidential one's secret is shown only now.
    pub fn add_client(
        &self,
        actor: &str,
        name: &str,
        redirect_uris: &[String],
        public: bool,
        alg: Alg,
        post_logout_uris: &[String],
    ) -> Result<(Client, Option<String>)> {
        self.write(|tx| {
            let (client, secret) = clients::add(tx, name, redirect_uris, public, alg)?;
            if !post_logout_uris.is_empty() {
                clients::set_post_logout_uris(tx, &client.id, post_logout_uris)?;
            }
            audit::record(tx, actor, "client-add", None, Some(&client.id), Some(&json!({"name": name})))?;
            Ok((client, secret))
        })
    }

    pub fn clients(&self) -> Result<Vec<Client>> {
        self.read(clients::list)
    }

    /// Removes a client; its refresh tokens go with it.
    pub fn remove_client(&self, actor: &str, id: &str) -> Result<()> {
        self.write(|tx| {
            if store::get_meta(tx, "console_client_id")?.as_deref() == Some(id) {
                return Err(TenantError::Invalid(
                    "this is the admin console's own registration; it cannot be removed".into(),
                ));
            }
            clients::remove(tx, id)?;
            audit::record(tx, actor, "client-remove", None, Some(id), None)
        })
    }

    /// Registers "My Apps" (the demo's relying party) for `issuer` afresh,
    /// replacing the previous registration (the address may change between
    /// runs); returns its client id.
    pub fn register_my_apps(&self, actor: &str, issuer: &str) -> Result<String> {
        self.write(|tx| {
            if let Some(old) = store::get_meta(tx, "myapps_client_id")? {
                // Gone already is fine: a new one is made either way.
                let _ = clients::remove(tx, &old);
            }
            let redirect = vec![my_apps_redirect_uri(issuer)];
            let (client, _) = clients::add(tx, "My Apps", &redirect, true, Alg::Rs256)?;
            clients::set_post_logout_uris(tx, &client.id, &[format!("{issuer}/myapps")])?;
            store::set_meta(tx, "myapps_client_id", &client.id)?;
            audit::record(tx, actor, "client-add", None, Some(&client.id), Some(&json!({"name": "My Apps"})))?;
            Ok(client.id)
        })
    }

    /// A new signing key for `alg`; the previous one stays published.
    pub fn rotate_key(&self, actor: &str, alg: Alg) -> Result<SigningKey> {
        self.write(|tx| {
            let key = keys::rotate(tx, alg)?;
            audit::record(tx, actor, "key-rotate", None, Some(&key.kid), None)?;
            Ok(key)
        })
    }

    /// Publishes the key the next rotation of `alg` makes active.
    pub fn prepare_key(&self, actor: &str, alg: Alg) -> Result<SigningKey> {
        self.write(|tx| {
            let key = keys::prepare(tx, alg)?;
            audit::record(tx, actor, "key-prepare", None, Some(&key.kid), None)?;
            Ok(key)
        })
    }

    pub fn keys(&self) -> Result<Vec<keys::KeyInfo>> {
        self.read(keys::list)
    }

    // ---- Settings and branding ----

    pub fn settings(&self) -> Result<Settings> {
        self.read(Settings::load)
    }

    pub fn save_settings(&self, actor: &str, s: &Settings) -> Result<()> {
        if s.pta_timeout_secs == 0 || s.pta_timeout_secs > 120 {
            return Err(TenantError::Invalid(format!(
                "pta-timeout-secs {}: give 1 to 120 seconds",
                s.pta_timeout_secs
            )));
        }
        self.write(|tx| {
            s.save(tx)?;
            let detail = json!({"blockSoftMatch": s.block_soft_match, "blockHardMatchTakeover": s.block_hard_match_takeover,
                "requireVerifiedDomain": s.require_verified_domain, "allowCloudPasswordChange": s.allow_cloud_password_change,
                "ptaTimeoutSecs": s.pta_timeout_secs, "rateLimitPerSec": s.rate_limit_per_sec});
            audit::record(tx, actor, "settings", None, None, Some(&detail))
        })
    }

    pub fn trusted_proxies(&self) -> Result<Vec<Cidr>> {
        self.read(store::trusted_proxies)
    }

    pub fn set_trusted_proxies(&self, actor: &str, proxies: &[Cidr]) -> Result<()> {
        self.write(|tx| {
            store::set_trusted_proxies(tx, proxies)?;
            let list: Vec<String> = proxies.iter().map(ToString::to_string).collect();
            audit::record(tx, actor, "trusted-proxies", None, None, Some(&json!({"proxies": list})))
        })
    }

    pub fn branding(&self) -> Result<Branding> {
        self.read(|c| Ok(Branding::load(c)))
    }

    /// Changes the sign-in pages' look; colours and image URLs are checked first.
    pub fn set_branding(&self, actor: &str, update: &BrandingUpdate) -> Result<Branding> {
        for (what, value) in [("color", &update.color), ("background-color", &update.background_color)] {
            if let Some(c) = value.as_deref().filter(|c| !crate::branding::is_css_colour(c)) {
                return Err(TenantError::Invalid(format!("{what} {c:?}: use #rgb or #rrggbb")));
            }
        }
        for (what, value) in [("logo-url", &update.logo_url), ("background-url", &update.background_url)] {
            if let Some(u) = value.as_deref().filter(|u| !u.is_empty() && !crate::branding::is_image_url(u)) {
                return Err(TenantError::Invalid(format!(
                    "{what} {u:?}: give an https:// URL or a path on the tenant"
                )));
            }
        }
        self.write(|tx| {
            let fields = [
                ("name", &update.name),
                ("color", &update.color),
                ("background_color", &update.background_color),
                ("logo_url", &update.logo_url),
                ("background_url", &update.background_url),
                ("text", &update.text),
            ];
            for (key, value) in fields {
                if let Some(v) = value {
                    store::set_meta(tx, &format!("branding.{key}"), v)?;
                }
            }
            audit::record(tx, actor, "branding", None, None, None)?;
            Ok(Branding::load(tx))
        })
    }

    // ---- Pass-through agents ----

    /// A one-time agent registration token (shown only now).
    pub fn create_pta_token(&self, actor: &str, lifetime_secs: i64) -> Result<String> {
        self.write(|tx| {
            let token = crate::pta::create_token(tx, lifetime_secs)?;
            audit::record(tx, actor, "pta-token-create", None, None, None)?;
            Ok(token)
        })
    }

    pub fn pta_agents(&self) -> Result<Vec<AgentInfo>> {
        self.read(crate::pta::list_agents)
    }

    /// Revokes an agent: it is turned away at its next request.
    pub fn revoke_pta_agent(&self, actor: &str, id: &str) -> Result<()> {
        self.write(|tx| crate::pta::revoke_agent(tx, actor, id))
    }

    // ---- Audit ----

    /// The newest `limit` entries, oldest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<audit::AuditEntry>> {
        self.read(|c| audit::recent(c, limit))
    }

    // ---- The admin console ----

    /// Registers the admin console as a relying party for `issuer`, unless
    /// it is registered for that address already; returns its client id.
    pub fn register_console(&self, actor: &str, issuer: &str) -> Result<String> {
        self.register_own_client(actor, "console_client_id", "Admin console", &console_redirect_uri(issuer))
    }

    /// Security info (`/account`) signs people in — and again, before they
    /// add a method — as a relying party of the tenant itself.
    pub fn register_security_info(&self, actor: &str, issuer: &str) -> Result<String> {
        self.register_own_client(actor, ACCOUNT_CLIENT_KEY, "Security info", &account_redirect_uri(issuer))
    }

    /// The SAML identity provider signs people in on the tenant's own pages,
    /// as a relying party of the tenant itself.
    pub fn register_saml_idp(&self, actor: &str, issuer: &str) -> Result<String> {
        self.register_own_client(actor, SAML_CLIENT_KEY, "SAML sign-in", &saml_redirect_uri(issuer))
    }

    /// A public client of the tenant's own pages, kept while its redirect
    /// URI stays (nodes restarting keep one id), replaced when it moves.
    fn register_own_client(&self, actor: &str, meta_key: &str, name: &str, redirect: &str) -> Result<String> {
        let redirect = vec![redirect.to_string()];
        self.write(|tx| {
            if let Some(old) = store::get_meta(tx, meta_key)? {
                match clients::get(tx, &old)? {
                    Some(c) if c.redirect_uris == redirect => return Ok(c.id),
                    Some(_) => clients::remove(tx, &old)?,
                    None => {}
                }
            }
            let (client, _) = clients::add(tx, name, &redirect, true, Alg::Rs256)?;
            store::set_meta(tx, meta_key, &client.id)?;
            audit::record(tx, actor, "client-add", None, Some(&client.id), Some(&json!({"name": name})))?;
            Ok(client.id)
        })
    }

    pub fn roles(&self) -> Result<Vec<console::Assignment>> {
        self.read(console::list)
    }

    /// A user's (user name or id) second factors and unused recovery codes.
    pub fn user_methods(&self, who: &str) -> Result<(Principal, Vec<crate::mfa::MethodInfo>, usize)> {
        self.read(|conn| {
            let user = console::find_principal(conn, Kind::User, who)?;
            let methods = crate::mfa::methods(conn, &user.id)?;
            let left = crate::mfa::recovery_codes_left(conn, &user.id)?;
            Ok((user, methods, left))
        })
    }

    /// Removes one of a user's second factors (a lost device); false when
    /// the user has no such method.
    pub fn remove_user_method(&self, actor: &str, who: &str, method_id: &str) -> Result<(Principal, bool)> {
        self.write(|tx| {
            let user = console::find_principal(tx, Kind::User, who)?;
            let removed = crate::mfa::remove(tx, actor, &user.id, method_id)?;
            Ok((user, removed))
        })
    }

    /// The sign-in policy, and its groups as found (a deleted group by id).
    pub fn sign_in_policy(&self) -> Result<(crate::policy::SignInPolicy, Vec<Principal>)> {
        self.read(|conn| {
            let policy = crate::policy::SignInPolicy::load(conn)?;
            let groups = policy_groups(conn, &policy.groups)?;
            Ok((policy, groups))
        })
    }

    /// Saves the sign-in policy; its `groups` may be given by display name
    /// or id (each must exist). Audited.
    pub fn set_sign_in_policy(
        &self,
        actor: &str,
        mut policy: crate::policy::SignInPolicy,
    ) -> Result<(crate::policy::SignInPolicy, Vec<Principal>)> {
        self.write(|tx| {
            let mut ids = Vec::new();
            for who in &policy.groups {
                let group = console::find_principal(tx, Kind::Group, who)?;
                if !ids.contains(&group.id) {
                    ids.push(group.id);
                }
            }
            policy.groups = ids;
            policy.save(tx)?;
            let detail = serde_json::to_value(&policy).unwrap_or_default();
            audit::record(tx, actor, "sign-in-policy", None, None, Some(&detail))?;
            let groups = policy_groups(tx, &policy.groups)?;
            Ok((policy, groups))
        })
    }

    /// Whether signing in to the client `id` takes a second factor. Audited.
    pub fn set_client_require_mfa(&self, actor: &str, id: &str, required: bool) -> Result<()> {
        self.write(|tx| {
            crate::oidc::clients::set_require_mfa(tx, id, required)?;
            audit::record(
                tx,
                actor,
                "client-require-mfa",
                Some("Client"),
                Some(id),
                Some(&json!({"required": required})),
            )
        })
    }

    /// Assigns `role` to the user (user name or id) or group (name or id) `who`.
    pub fn assign_role(&self, actor: &str, kind: Kind, who: &str, role: Role) -> Result<(Principal, bool)> {
        self.write(|tx| {
            let principal = console::find_principal(tx, kind, who)?;
            let added = console::assign(tx, &principal, role)?;
            if added {
                let detail = json!({"role": role.as_str(), "name": principal.name});
                audit::record(tx, actor, "role-assign", Some(kind.as_str()), Some(&principal.id), Some(&detail))?;
            }
            Ok((principal, added))
        })
    }

    pub fn remove_role(&self, actor: &str, kind: Kind, who: &str, role: Role) -> Result<(Principal, bool)> {
        self.write(|tx| {
            // A deleted user's or group's assignment can still be removed by its id.
            let principal = match console::find_principal(tx, kind, who) {
                Ok(p) => p,
                Err(TenantError::NotFound(_)) => Principal { kind, id: who.to_string(), name: who.to_string() },
                Err(e) => return Err(e),
            };
            let removed = console::remove(tx, &principal, role)?;
            if removed {
                let detail = json!({"role": role.as_str(), "name": principal.name});
                audit::record(tx, actor, "role-remove", Some(kind.as_str()), Some(&principal.id), Some(&detail))?;
            }
            Ok((principal, removed))
        })
    }

    /// Clears the user's smart-lockout counters; how many were cleared.
    pub fn unlock_user(&self, actor: &str, user_id: &str) -> Result<usize> {
        self.write(|tx| {
            let user = objects::load(tx, Some(Kind::User), user_id)?
                .ok_or_else(|| TenantError::NotFound(format!("user {user_id}")))?;
            let cleared = console::unlock(tx, &console::display_of(&user))?;
            audit::record(tx, actor, "user-unlock", Some("User"), Some(user_id), Some(&json!({"cleared": cleared})))?;
            Ok(cleared)
        })
    }

    /// Ends the user's sessions and refresh tokens; how many.
    pub fn revoke_user_sessions(&self, actor: &str, user_id: &str) -> Result<usize> {
        self.write(|tx| {
            objects::load(tx, Some(Kind::User), user_id)?
                .ok_or_else(|| TenantError::NotFound(format!("user {user_id}")))?;
            let ended = console::revoke_sessions(tx, user_id)?;
            audit::record(
                tx,
                actor,
                "user-revoke-sessions",
                Some("User"),
                Some(user_id),
                Some(&json!({"ended": ended})),
            )?;
            Ok(ended)
        })
    }

    /// Blocks or unblocks the user's cloud sign-in.
    pub fn set_user_blocked(&self, actor: &str, user_id: &str, blocked: bool) -> Result<bool> {
        self.write(|tx| {
            objects::load(tx, Some(Kind::User), user_id)?
                .ok_or_else(|| TenantError::NotFound(format!("user {user_id}")))?;
            let changed = console::set_blocked(tx, actor, user_id, blocked)?;
            let action = if blocked { "user-block-sign-in" } else { "user-unblock-sign-in" };
            audit::record(tx, actor, action, Some("User"), Some(user_id), None)?;
            Ok(changed)
        })
    }

    /// Lets the connector's next cycle make up to `count` deletions once.
    pub fn allow_deletions(&self, actor: &str, connector: &str, count: u64) -> Result<()> {
        self.write(|tx| {
            console::allow_deletions(tx, actor, connector, count)?;
            audit::record(tx, actor, "sync-allow-deletions", None, Some(connector), Some(&json!({"count": count})))
        })
    }

    /// A new secret for a confidential client (shown once).
    pub fn rotate_client_secret(&self, actor: &str, id: &str) -> Result<String> {
        self.write(|tx| {
            let secret = clients::rotate_secret(tx, id)?;
            audit::record(tx, actor, "client-rotate-secret", None, Some(id), None)?;
            Ok(secret)
        })
    }

    /// Asks the sync daemons where the object's values come from (answered at their next cycle).
    pub fn request_lineage(&self, actor: &str, resource_id: &str) -> Result<()> {
        self.write(|tx| {
            crate::lineage::request(tx, resource_id)?;
            audit::record(tx, actor, "lineage-request", None, Some(resource_id), None)
        })
    }

    /// Records a console request that was refused (no right, no valid CSRF token).
    pub fn audit_refusal(&self, actor: &str, action: &str, detail: &serde_json::Value) -> Result<()> {
        self.write(|tx| audit::record(tx, actor, action, None, None, Some(detail)))
    }
}

/// Where "My Apps" receives its authorization codes.
/// The policy's groups, named (a group deleted since keeps its id as name).
fn policy_groups(conn: &crate::db::Connection, ids: &[String]) -> Result<Vec<Principal>> {
    ids.iter()
        .map(|id| match console::find_principal(conn, Kind::Group, id) {
            Ok(p) => Ok(p),
            Err(TenantError::NotFound(_)) => Ok(Principal { kind: Kind::Group, id: id.clone(), name: id.clone() }),
            Err(e) => Err(e),
        })
        .collect()
}

/// Where Security info's own client id is kept (`meta`).
pub const ACCOUNT_CLIENT_KEY: &str = "account_client_id";

/// Where the SAML identity provider's own client id is kept (`meta`).
pub const SAML_CLIENT_KEY: &str = "saml_client_id";

pub fn saml_redirect_uri(issuer: &str) -> String {
    format!("{issuer}/saml/callback")
}

pub fn account_redirect_uri(issuer: &str) -> String {
    format!("{issuer}/account/callback")
}

pub fn console_redirect_uri(issuer: &str) -> String {
    format!("{issuer}/admin/callback")
}

pub fn my_apps_redirect_uri(issuer: &str) -> String {
    format!("{issuer}/myapps/callback")
}
