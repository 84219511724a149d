//! Federated domains: a domain's users sign in at the
//! organisation's own identity provider; the tenant checks the answer,
//! finds the user, and continues the relying party's OpenID Connect flow.
//!
//! - this module: the per-domain configuration, the pending sign-ins
//!   (`federation_requests`), user mapping, refusals with their audit entries.
//! - [`oidc`]: the tenant as an OpenID Connect relying party (code + PKCE,
//!   ID token checked against the IdP's JWKS).
//! - the browser's way (to the IdP from the user-name step, back through
//!   the callback into the relying party's flow) is in `tenant-http`.

pub mod oidc;
pub mod saml;

use std::fmt;

use crate::db::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::domains::{self, AuthType, Domain};
use crate::error::{Result, TenantError};
use crate::objects::{self, Kind, Stored};
use crate::util::{now_secs, sha256};

/// How long a browser may take at the identity provider.
pub const REQUEST_LIFETIME_SECS: i64 = 600;
/// Clock difference tolerated between the tenant and an identity provider.
pub const CLOCK_SKEW_SECS: i64 = 120;

/// How a federated domain signs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "protocol", rename_all = "lowercase")]
pub enum Federation {
    Oidc(OidcIdp),
    Saml(SamlIdp),
}

/// A SAML 2.0 identity provider the tenant is a service provider of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlIdp {
    /// The IdP's entity id: the Issuer of its assertions.
    pub entity_id: String,
    /// Where AuthnRequests go (HTTP-Redirect binding).
    pub sso_url: String,
    /// PEM certificate(s) whose keys may sign responses.
    pub signing_certificates: String,
    /// An attribute holding the user's UPN, tried when no user has the NameID as immutableId.
    #[serde(default)]
    pub upn_attribute: Option<String>,
}

/// An OpenID Provider the tenant is a relying party of.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcIdp {
    /// Exactly as the provider's ID tokens and discovery document name it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// The claim carrying the user's immutableId (sourceAnchor).
    #[serde(default = "default_immutable_id_claim")]
    pub immutable_id_claim: String,
    /// A claim holding the user's UPN, tried when no user has the immutableId.
    #[serde(default)]
    pub upn_claim: Option<String>,
}

fn default_immutable_id_claim() -> String {
    "immutable_id".into()
}

impl fmt::Debug for OidcIdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcIdp")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("immutable_id_claim", &self.immutable_id_claim)
            .field("upn_claim", &self.upn_claim)
            .finish()
    }
}

impl Federation {
    pub fn protocol(&self) -> &'static str {
        match self {
            Federation::Oidc(_) => "oidc",
            Federation::Saml(_) => "saml",
        }
    }

    pub fn check(&self) -> Result<()> {
        match self {
            Federation::Oidc(idp) => {
                let url = idp.issuer.trim();
                if let Err(why) = crate::util::check_web_url(url) {
                    return Err(TenantError::Invalid(format!("the issuer {url:?}: {why}")));
                }
                if idp.client_id.is_empty() || idp.client_secret.is_empty() {
                    return Err(TenantError::Invalid("the client id and the client secret must not be empty".into()));
                }
                if idp.immutable_id_claim.is_empty() {
                    return Err(TenantError::Invalid("the immutableId claim name must not be empty".into()));
                }
                Ok(())
            }
            Federation::Saml(idp) => {
                if idp.entity_id.is_empty() || !idp.sso_url.starts_with("http") {
                    return Err(TenantError::Invalid("a SAML IdP needs an entity id and an http(s) SSO URL".into()));
                }
                let certs = saml::certificates_from(idp.signing_certificates.as_bytes());
                let usable = certs.iter().any(|c| {
                    webpki::EndEntityCert::try_from(&rustls_pki_types::CertificateDer::from(c.as_slice())).is_ok()
                });
                if !usable {
                    return Err(TenantError::Invalid(
                        "the signing certificate is not a readable X.509 certificate (PEM)".into(),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Hands `domain`'s sign-ins to an identity provider. The initial domain never.
pub fn federate(conn: &Connection, domain: &str, federation: &Federation) -> Result<Domain> {
    federation.check()?;
    let d = domains::get(conn, domain)?.ok_or_else(|| TenantError::NotFound(format!("domain {domain}")))?;
    if d.initial {
        return Err(TenantError::Invalid(format!(
            "{} is the initial domain and can never be federated (an administrator must always be able to sign in)",
            d.name
        )));
    }
    // The client secret is stored sealed (see `secrets`).
    let mut stored = federation.clone();
    if let Federation::Oidc(idp) = &mut stored {
        idp.client_secret = crate::secrets::seal_text(conn, &idp.client_secret)?;
    }
    let text = serde_json::to_string(&stored).map_err(|e| TenantError::Invalid(e.to_string()))?;
    conn.execute(
        "UPDATE domains SET auth = ?2, federation = ?3 WHERE name = ?1",
        params![d.name, AuthType::Federated.as_str(), text],
    )?;
    Ok(Domain { auth: AuthType::Federated, ..d })
}

/// Back to managed sign-in (password hash sync).
pub fn unfederate(conn: &Connection, domain: &str) -> Result<Domain> {
    let d = domains::get(conn, domain)?.ok_or_else(|| TenantError::NotFound(format!("domain {domain}")))?;
    if d.auth != AuthType::Federated {
        return Err(TenantError::Invalid(format!("{} is not federated (it signs in with {})", d.name, d.auth)));
    }
    conn.execute(
        "UPDATE domains SET auth = ?2, federation = NULL WHERE name = ?1",
        params![d.name, AuthType::ManagedPhs.as_str()],
    )?;
    Ok(Domain { auth: AuthType::ManagedPhs, ..d })
}

/// The identity provider of a federated domain.
pub fn load(conn: &Connection, domain: &str) -> Result<Option<Federation>> {
    let text: Option<Option<String>> = conn
        .query_row(
            "SELECT federation FROM domains WHERE name = ?1 AND auth = 'federated'",
            params![domain.to_ascii_lowercase()],
            |r| r.get(0),
        )
        .optional()?;
    match text.flatten() {
        Some(t) => {
            let mut federation: Federation = serde_json::from_str(&t).map_err(|e| {
                TenantError::Invalid(format!("the federation settings of {domain} are unreadable: {e}"))
            })?;
            if let Federation::Oidc(idp) = &mut federation {
                idp.client_secret = crate::secrets::open_text(conn, &idp.client_secret)?;
            }
            Ok(Some(federation))
        }
        None => Ok(None),
    }
}

/// A sign-in waiting for the identity provider's answer.
#[derive(Debug, Clone)]
pub struct Pending {
    pub domain: String,
    pub nonce: String,
    pub verifier: String,
    /// The relying party's authorization request, to continue afterwards.
    pub params: std::collections::HashMap<String, String>,
    pub username: String,
}

/// Remembers a sign-in sent to the IdP under `state` (stored hashed).
pub fn remember(conn: &Connection, state: &str, pending: &Pending) -> Result<()> {
    let now = now_secs();
    conn.execute("DELETE FROM federation_requests WHERE expires <= ?1", params![now])?;
    conn.execute(
        "INSERT INTO federation_requests(state_hash, domain, nonce, verifier, params, username, expires)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            sha256(state.as_bytes()),
            pending.domain,
            pending.nonce,
            pending.verifier,
            serde_json::to_string(&pending.params).unwrap_or_default(),
            pending.username,
            now + REQUEST_LIFETIME_SECS
        ],
    )?;
    Ok(())
}

/// Takes (once) the sign-in sent under `state`; `None` if unknown or expired.
pub fn take(conn: &Connection, state: &str) -> Result<Option<Pending>> {
    let hash = sha256(state.as_bytes());
    let row = conn
        .query_row(
            "SELECT domain, nonce, verifier, params, username, expires FROM federation_requests WHERE state_hash = ?1",
            params![hash],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .optional()?;
    conn.execute("DELETE FROM federation_requests WHERE state_hash = ?1", params![hash])?;
    Ok(row.filter(|r| r.5 > now_secs()).map(|(domain, nonce, verifier, params, username, _)| Pending {
        domain,
        nonce,
        verifier,
        params: serde_json::from_str(&params).unwrap_or_default(),
        username,
    }))
}

/// Remembers an assertion id until `until`; false if it was seen before (a replay).
pub fn first_use(conn: &Connection, id: &str, until: i64) -> Result<bool> {
    let now = now_secs();
    conn.execute("DELETE FROM federation_seen WHERE expires <= ?1", params![now])?;
    let inserted = conn.execute(
        "INSERT INTO federation_seen(id, expires) VALUES(?1, ?2) ON CONFLICT(id) DO NOTHING",
        params![id, until.min(now + 24 * 3600).max(now + 1)],
    )?;
    Ok(inserted == 1)
}

/// Why a federated sign-in was refused. The user sees `message`, the audit
/// log `code` and `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownState,
    IdpError(String),
    IdpUnreachable(String),
    Malformed(String),
    WrongIssuer { expected: String, got: String },
    WrongAudience { expected: String, got: String },
    BadSignature(String),
    Expired,
    NotYetValid,
    NonceMismatch,
    Replayed,
    NoImmutableId(String),
    UnknownUser(String),
    OtherDomain { user: String, domain: String },
    Disabled(String),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownState => "unknown-or-expired-request",
            Refusal::IdpError(_) => "idp-error",
            Refusal::IdpUnreachable(_) => "idp-unreachable",
            Refusal::Malformed(_) => "malformed-answer",
            Refusal::WrongIssuer { .. } => "wrong-issuer",
            Refusal::WrongAudience { .. } => "wrong-audience",
            Refusal::BadSignature(_) => "bad-signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not-yet-valid",
            Refusal::NonceMismatch => "nonce-mismatch",
            Refusal::Replayed => "replayed",
            Refusal::NoImmutableId(_) => "no-immutable-id",
            Refusal::UnknownUser(_) => "unknown-user",
            Refusal::OtherDomain { .. } => "user-not-in-domain",
            Refusal::Disabled(_) => "account-disabled",
        }
    }

    /// For the audit log: exactly what was wrong.
    pub fn detail(&self) -> String {
        match self {
            Refusal::IdpError(s) | Refusal::IdpUnreachable(s) | Refusal::Malformed(s) | Refusal::BadSignature(s) => {
                s.clone()
            }
            Refusal::WrongIssuer { expected, got } => format!("expected issuer {expected:?}, got {got:?}"),
            Refusal::WrongAudience { expected, got } => format!("expected audience {expected:?}, got {got}"),
            Refusal::NoImmutableId(claim) => format!("the answer has no {claim:?}"),
            Refusal::UnknownUser(id) => format!("no user has immutableId or UPN {id:?}"),
            Refusal::OtherDomain { user, domain } => format!("{user} is not a user of {domain}"),
            Refusal::Disabled(user) => format!("{user} is disabled"),
            other => other.code().to_string(),
        }
    }

    /// For the person signing in: what happened and what to do.
    pub fn message(&self) -> String {
        match self {
            Refusal::UnknownState => {
                "This sign-in took too long or was already used. Go back to the application and sign in again.".into()
            }
            Refusal::IdpError(_) => "Your organisation's identity provider did not sign you in.".into(),
            Refusal::IdpUnreachable(_) => {
                "Your organisation's identity provider cannot be reached right now. Try again later or contact your administrator.".into()
            }
            Refusal::UnknownUser(_) | Refusal::NoImmutableId(_) => {
                "Your organisation's identity provider signed you in, but this tenant has no matching account. Contact your administrator.".into()
            }
            Refusal::OtherDomain { domain, .. } => format!(
                "Your organisation's identity provider signed you in as someone who does not belong to {domain}. Sign in with an account of {domain}."
            ),
            Refusal::Disabled(_) => "Your account is disabled. Contact your administrator.".into(),
            _ => "The answer from your organisation's identity provider could not be trusted, so you are not signed in. Contact your administrator if this keeps happening.".into(),
        }
    }
}

/// The tenant user an identity provider vouched for: by immutableId, then
/// (if configured) by UPN; it must belong to `domain` and be enabled.
pub fn find_user(
    conn: &Connection,
    domain: &str,
    immutable_id: Option<&str>,
    upn: Option<&str>,
) -> Result<std::result::Result<Stored, Refusal>> {
    let mut id: Option<String> = None;
    if let Some(imm) = immutable_id {
        id = conn
            .query_row("SELECT id FROM resources WHERE type = 'User' AND immutable_id = ?1", params![imm], |r| r.get(0))
            .optional()?;
    }
    if id.is_none()
        && let Some(upn) = upn
    {
        id = conn
            .query_row(
                "SELECT id FROM resources WHERE type = 'User' AND user_name_lc = ?1",
                params![upn.to_lowercase()],
                |r| r.get(0),
            )
            .optional()?;
    }
    let shown = immutable_id.or(upn).unwrap_or_default().to_string();
    let Some(user) = (match id {
        Some(id) => objects::load(conn, Some(Kind::User), &id)?,
        None => None,
    }) else {
        return Ok(Err(Refusal::UnknownUser(shown)));
    };
    let user_name = user.data.get("userName").and_then(Value::as_str).unwrap_or_default().to_lowercase();
    if user_name.rsplit_once('@').map(|(_, d)| d) != Some(domain) {
        return Ok(Err(Refusal::OtherDomain { user: user_name, domain: domain.to_string() }));
    }
    if user.data.get("active") == Some(&Value::Bool(false)) {
        return Ok(Err(Refusal::Disabled(user_name)));
    }
    Ok(Ok(user))
}

/// The audit entry of a federated sign-in, refused or not.
pub fn audit(
    conn: &Connection,
    domain: &str,
    protocol: &str,
    outcome: std::result::Result<&Stored, &Refusal>,
) -> Result<()> {
    let user_name = match outcome {
        Ok(user) => crate::console::display_of(user),
        Err(Refusal::UnknownUser(u) | Refusal::Disabled(u) | Refusal::OtherDomain { user: u, .. }) => u.clone(),
        Err(_) => format!("@{domain}"),
    };
    crate::signin_log::record(
        conn,
        &crate::signin_log::Attempt {
            user_name: &user_name,
            method: crate::signin_log::Method::Federated,
            success: outcome.is_ok(),
            reason: outcome.err().map_or("ok", Refusal::code),
            application: None,
            address: None,
        },
    )?;
    match outcome {
        Ok(user) => crate::audit::record(
            conn,
            "sign-in",
            "federated-sign-in",
            Some("User"),
            Some(&user.id),
            Some(&json!({"domain": domain, "protocol": protocol})),
        ),
        Err(refusal) => crate::audit::record(
            conn,
            "sign-in",
            "federated-sign-in-refused",
            Some("Domain"),
            Some(domain),
            Some(&json!({"protocol": protocol, "reason": refusal.code(), "detail": refusal.detail()})),
        ),
    }
}
