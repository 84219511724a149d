//! The OpenID Connect endpoints: discovery, JWKS, authorization (with the
//! sign-in pages), token (code + PKCE, refresh with rotation), userinfo and
//! RP-initiated logout.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tenant::db::{Connection, OptionalExtension, params};

use super::pages::{self, Branding};
use super::second_step;
use crate::scim::AppState;
use tenant::credentials;
use tenant::domains::{self, AuthType};
use tenant::error::{Result, TenantError};
use tenant::objects::{self, Kind, Stored};
use tenant::oidc::clients::{self, Client};
use tenant::oidc::keys::{self, Alg};
use tenant::oidc::{jwt, random_token};
use tenant::signin::{self, SignInError};
use tenant::util::{now_secs, sha256};

pub const CODE_LIFETIME_SECS: i64 = 60;
pub const TOKEN_LIFETIME_SECS: i64 = 3600;
pub const REFRESH_LIFETIME_SECS: i64 = 30 * 24 * 3600;
pub const SESSION_LIFETIME_SECS: i64 = 8 * 3600;
pub(crate) const SESSION_COOKIE: &str = "idb_session";
/// The CSRF cookie; `__Host-` on HTTPS, so no sibling host can plant one.
pub(crate) fn csrf_cookie_name(state: &AppState) -> &'static str {
    if state.issuer.starts_with("https://") { "__Host-idb_csrf" } else { "idb_csrf" }
}

/// A CSRF token only this tenant can make: random, then its HMAC under the
/// tenant's CSRF key (a planted cookie with a matching form field is refused).
pub(crate) fn mint_csrf(key: &[u8; 32]) -> String {
    let nonce = random_token();
    let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), nonce.as_bytes());
    format!("{nonce}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()))
}

/// The double-submit check of a posted form: the field equals the cookie
/// and the token is one this tenant made. The token, if it passes.
pub(crate) fn checked_csrf(state: &AppState, headers: &HeaderMap, p: &Params) -> Option<String> {
    let cookie = cookie(headers, csrf_cookie_name(state))?;
    let field = p.get("csrf")?;
    let same = !cookie.is_empty() && sha256(cookie.as_bytes()) == sha256(field.as_bytes());
    (same && csrf_is_ours(&state.csrf_key, &cookie)).then_some(cookie)
}

pub(crate) fn csrf_is_ours(key: &[u8; 32], token: &str) -> bool {
    let Some((nonce, mac)) = token.split_once('.') else { return false };
    let Ok(mac) = URL_SAFE_NO_PAD.decode(mac) else { return false };
    ring::hmac::verify(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), nonce.as_bytes(), &mac).is_ok()
}

/// The authorization request parameters (OIDC Core §3.1.2.1), carried
/// through the sign-in forms as hidden fields and checked again on each step.
pub(crate) const AUTH_PARAMS: &[&str] = &[
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "max_age",
    "login_hint",
    "acr_values",
];

pub(crate) type Params = HashMap<String, String>;

pub(crate) async fn db<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = state.store.lock();
        work(&mut conn)
    })
    .await
    .unwrap_or_else(|e| Err(TenantError::Invalid(format!("worker failed: {e}"))))
}

pub(crate) fn internal(e: TenantError) -> Response {
    tracing::error!(error = %e, "sign-in endpoint failed");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the tenant's log)").into_response()
}

pub async fn discovery(State(state): State<Arc<AppState>>) -> Response {
    let i = &state.issuer;
    let body = json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/oauth2/authorize"),
        "token_endpoint": format!("{i}/oauth2/token"),
        "userinfo_endpoint": format!("{i}/oauth2/userinfo"),
        "jwks_uri": format!("{i}/oauth2/jwks"),
        "end_session_endpoint": format!("{i}/oauth2/logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "scopes_supported": ["openid", "profile", "email", "groups", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "acr_values_supported": [ACR_SINGLE_FACTOR, ACR_MULTI_FACTOR],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "amr", "acr", "nonce", "name", "preferred_username", "email", "groups", "immutable_id"],
    });
    json_response(StatusCode::OK, &body)
}

pub async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    let result = db(&state, |conn| {
        // Make sure both keys exist before anyone needs them.
        keys::active(conn, Alg::Rs256)?;
        keys::active(conn, Alg::Es256)?;
        keys::jwks(conn)
    })
    .await;
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => internal(e),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(crate) fn html_response(status: StatusCode, page: String) -> Response {
    let mut resp = (status, Html(page)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src https: 'self'; form-action 'self'; frame-ancestors 'none'"),
    );
    resp
}

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Forgets the browser's sign-in session cookie (the session row is gone already).
pub(crate) fn clear_session_cookie(resp: &mut Response, state: &AppState) {
    set_cookie(resp, state, SESSION_COOKIE, "", 0);
}

pub(crate) fn set_cookie(resp: &mut Response, state: &AppState, name: &str, value: &str, max_age: i64) {
    let secure = if state.issuer.starts_with("https://") { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
    if let Ok(v) = HeaderValue::from_str(&text) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// What is wrong with an authorization request, and where the answer goes.
enum Invalid {
    /// Unknown client or redirect URI: never redirect (RFC 6749 §4.1.2.1).
    Page(String),
    /// Redirect back to the client with `error`.
    Redirect { uri: String, error: &'static str, description: String, state: Option<String> },
}

/// A checked authorization request.
pub(crate) struct AuthRequest {
    pub(crate) client: Client,
    pub(crate) redirect_uri: String,
    scope: String,
    pub(crate) state: Option<String>,
    nonce: Option<String>,
    challenge: Option<String>,
    pub(crate) prompt: Option<String>,
    /// Seconds since the user last authenticated beyond which they must again.
    max_age: Option<i64>,
    /// `acr_values` names multi-factor: a second factor is required.
    pub(crate) mfa_requested: bool,
}

fn check_request(conn: &Connection, p: &Params) -> Result<std::result::Result<AuthRequest, Invalid>> {
    let get = |k: &str| p.get(k).filter(|v| !v.is_empty()).cloned();
    let Some(client_id) = get("client_id") else {
        return Ok(Err(Invalid::Page("The application did not say who it is (client_id is missing).".into())));
    };
    let Some(client) = clients::get(conn, &client_id)? else {
        return Ok(Err(Invalid::Page(
            "This sign-in link is not valid here: the application is not registered with this tenant (any more — it may have been registered again, for instance when the demo restarted). Go back to the application and start again.".into(),
        )));
    };
    let Some(redirect_uri) = get("redirect_uri").filter(|u| client.redirect_uris.contains(u)) else {
        return Ok(Err(Invalid::Page(
            "The application asked to return to an address it has not registered (redirect_uri mismatch).".into(),
        )));
    };
    let state = get("state");
    let fail = |error, description: &str| {
        Ok(Err(Invalid::Redirect {
            uri: redirect_uri.clone(),
            error,
            description: description.to_string(),
            state: state.clone(),
        }))
    };
    if get("response_type").as_deref() != Some("code") {
        return fail("unsupported_response_type", "only response_type=code is supported");
    }
    let scope = get("scope").unwrap_or_default();
    if !scope.split(' ').any(|s| s == "openid") {
        return fail("invalid_scope", "the scope must include openid");
    }
    let challenge = get("code_challenge");
    match (challenge.as_deref(), get("code_challenge_method").as_deref()) {
        (None, _) if client.public => return fail("invalid_request", "public clients must use PKCE (code_challenge)"),
        (Some(_), Some("S256")) => {}
        (Some(_), _) => return fail("invalid_request", "code_challenge_method must be S256"),
        (None, _) => {}
    }
    if challenge.as_ref().is_some_and(|c| c.len() != 43 || URL_SAFE_NO_PAD.decode(c).is_err()) {
        return fail("invalid_request", "code_challenge must be the base64url SHA-256 of the verifier");
    }
    let max_age = match get("max_age").map(|v| v.parse::<i64>()) {
        None => None,
        Some(Ok(secs)) if secs >= 0 => Some(secs),
        Some(_) => return fail("invalid_request", "max_age must be a number of seconds"),
    };
    // Voluntary (OIDC Core §3.1.2.1): values we do not know are ignored.
    let mfa_requested = get("acr_values").is_some_and(|v| v.split(' ').any(|a| a == ACR_MULTI_FACTOR));
    Ok(Ok(AuthRequest {
        client,
        redirect_uri,
        scope,
        state,
        nonce: get("nonce"),
        challenge,
        prompt: get("prompt"),
        max_age,
        mfa_requested,
    }))
}

pub(crate) fn redirect_with(uri: &str, pairs: &[(&str, &str)]) -> Response {
    let mut url = uri.to_string();
    for (i, (k, v)) in pairs.iter().enumerate() {
        let sep = if i == 0 && !uri.contains('?') { '?' } else { '&' };
        url.push(sep);
        url.push_str(k);
        url.push('=');
        url.push_str(&urlencode(v));
    }
    let mut resp = Redirect::to(&url).into_response();
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp
}

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
pub use tenant::util::urlencode;

fn invalid_response(branding: &Branding, invalid: Invalid) -> Response {
    match invalid {
        Invalid::Page(message) => {
            html_response(StatusCode::BAD_REQUEST, pages::message_page(branding, "Sign-in request not valid", &message))
        }
        Invalid::Redirect { uri, error, description, state } => {
            let mut pairs = vec![("error", error), ("error_description", description.as_str())];
            if let Some(s) = &state {
                pairs.push(("state", s));
            }
            redirect_with(&uri, &pairs)
        }
    }
}

fn hidden_fields(p: &Params, csrf: &str) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> =
        AUTH_PARAMS.iter().filter_map(|k| p.get(*k).filter(|v| !v.is_empty()).map(|v| (*k, v.clone()))).collect();
    out.push(("csrf", csrf.to_string()));
    out
}

/// The key the browser's session is stored under (the hash of its cookie).
pub(crate) fn session_hash(headers: &HeaderMap) -> Option<Vec<u8>> {
    cookie(headers, SESSION_COOKIE).map(|token| sha256(token.as_bytes()).to_vec())
}

/// The signed-in user of a browser session, if the cookie is valid, and
/// when they authenticated.
pub(crate) fn session_user(conn: &Connection, headers: &HeaderMap) -> Result<Option<(Stored, Authenticated)>> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else { return Ok(None) };
    let user: Option<(String, i64, Option<String>)> = conn
        .query_row(
            "SELECT user_id, created, amr FROM sessions WHERE hash = ?1 AND expires > ?2",
            params![sha256(token.as_bytes()), now_secs()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match user {
        Some((id, created, amr)) => Ok(objects::load(conn, Some(Kind::User), &id)?
            .filter(|u| u.data.get("active") != Some(&Value::Bool(false)))
            .map(|u| (u, Authenticated::stored(created, amr)))),
        None => Ok(None),
    }
}

/// When and how a person authenticated: `auth_time`, and the methods
/// (RFC 8176 `amr` values) that become `amr` and `acr` in ID tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Authenticated {
    pub time: i64,
    /// Space-separated: `pwd`, `pwd otp mfa`, `hwk mfa`, `fed`, ….
    pub methods: String,
}

impl Authenticated {
    pub const PASSWORD: &str = "pwd";
    /// A passkey with user verification is two factors by itself (the
    /// device, and the PIN or biometric that unlocks it). `hwk`: bound to
    /// one authenticator; `swk`: may be synced to others (backup eligible).
    pub const DEVICE_PASSKEY: &str = "hwk mfa";
    pub const SYNCED_PASSKEY: &str = "swk mfa";
    pub const FEDERATED: &str = "fed";

    pub fn now(methods: &str) -> Authenticated {
        Authenticated { time: now_secs(), methods: methods.to_string() }
    }

    /// As stored; rows from before methods were recorded were passwords.
    fn stored(time: i64, methods: Option<String>) -> Authenticated {
        Authenticated { time, methods: methods.unwrap_or_else(|| Self::PASSWORD.to_string()) }
    }

    /// `acr`: whether more than one factor was used.
    pub fn acr(&self) -> &'static str {
        if self.methods.split(' ').any(|m| m == "mfa") { ACR_MULTI_FACTOR } else { ACR_SINGLE_FACTOR }
    }
}

/// The `acr` values of ID tokens.
pub(crate) const ACR_SINGLE_FACTOR: &str = "urn:idbridge:acr:1fa";
pub(crate) const ACR_MULTI_FACTOR: &str = "urn:idbridge:acr:mfa";

/// GET /oauth2/authorize: a signed-in session goes straight back with a
/// code; otherwise the sign-in page.
pub async fn authorize_get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let targets = form_targets(&state, &p).await;
    with_form_targets(authorize_get_page(state, headers, p).await, &targets)
}

/// Where the sign-in forms may lead (CSP form-action, which browsers apply
/// to the redirect after the post too): the tenant itself, the application's
/// registered redirect URI, and the federated identity providers' sign-in
/// addresses — nowhere else, so an injected form cannot post elsewhere.
async fn form_targets(state: &Arc<AppState>, p: &Params) -> Vec<String> {
    let redirect = p.get("redirect_uri").cloned();
    let state = state.clone();
    // A read connection: sign-in pages never wait for the writer for this.
    let found = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let conn = state.store.read();
        let mut targets = Vec::new();
        if let Some(uri) = redirect
            && let Ok(url) = tenant::util::check_web_url(&uri)
        {
            targets.push(url.origin().ascii_serialization());
        }
        let mut stmt = conn.prepare("SELECT name FROM domains WHERE auth = 'federated'")?;
        let names: Vec<String> =
            stmt.query_map(tenant::db::params![], |r| r.get(0))?.collect::<tenant::db::Result<_>>()?;
        for name in names {
            let entry = match tenant::federation::load(&conn, &name)? {
                Some(tenant::federation::Federation::Oidc(idp)) => idp.issuer,
                Some(tenant::federation::Federation::Saml(idp)) => idp.sso_url,
                None => continue,
            };
            if let Ok(url) = tenant::util::check_web_url(&entry) {
                targets.push(url.origin().ascii_serialization());
            }
        }
        targets.sort();
        targets.dedup();
        Ok(targets)
    })
    .await;
    match found {
        Ok(Ok(targets)) => targets,
        _ => Vec::new(),
    }
}

/// Replaces a sign-in page's CSP so its forms may lead only to `targets`.
fn with_form_targets(mut resp: Response, targets: &[String]) -> Response {
    if resp.headers().contains_key(header::CONTENT_SECURITY_POLICY) {
        let csp = format!(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src https: 'self'; form-action 'self'{}{}; frame-ancestors 'none'",
            if targets.is_empty() { "" } else { " " },
            targets.join(" ")
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    resp
}

async fn authorize_get_page(state: Arc<AppState>, headers: HeaderMap, p: Params) -> Response {
    let result = db(&state, move |conn| {
        let branding = Branding::load(conn);
        let request = match check_request(conn, &p)? {
            Ok(r) => r,
            Err(invalid) => return Ok((branding, Err(invalid), None, p)),
        };
        // prompt=login, or a session older than max_age: authenticate again.
        let user = if request.prompt.as_deref() == Some("login") {
            None
        } else {
            session_user(conn, &headers)?
                .filter(|(_, auth)| request.max_age.is_none_or(|max| now_secs() - auth.time <= max))
        };
        Ok((branding, Ok(request), user, p))
    })
    .await;
    let (branding, request, user, p) = match result {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let request = match request {
        Ok(r) => r,
        Err(invalid) => return invalid_response(&branding, invalid),
    };
    let csrf = mint_csrf(&state.csrf_key);
    if let Some((user, authenticated)) = user {
        // Single sign-on, unless this application or its request needs a
        // second factor the session has not seen.
        let fields = hidden_fields(&p, &csrf);
        let first = second_step::FirstStep::Session(authenticated);
        let mut resp = second_step::continue_sign_in(&state, &branding, &fields, request, user, first).await;
        // Only a page with forms needs the token (a redirect keeps the one
        // another tab's form may carry).
        if resp.status() == StatusCode::OK {
            set_cookie(&mut resp, &state, csrf_cookie_name(&state), &csrf, 3600);
        }
        return resp;
    }
    if request.prompt.as_deref() == Some("none") {
        let mut pairs = vec![("error", "login_required")];
        if let Some(s) = &request.state {
            pairs.push(("state", s.as_str()));
        }
        return redirect_with(&request.redirect_uri, &pairs);
    }
    let hint = p.get("login_hint").cloned().unwrap_or_default();
    // The password step after the user name (reached by a redirect from it):
    // only for a name@domain whose domain is not federated.
    let password_step = p.get("step").is_some_and(|s| s == "password") && {
        let domain =
            hint.rsplit_once('@').filter(|(n, d)| !n.is_empty() && d.contains('.')).map(|(_, d)| d.to_lowercase());
        match domain {
            Some(domain) => {
                let found = db(&state, move |conn| domains::get(conn, &domain)).await;
                found.is_ok_and(|d| d.is_none_or(|d| d.auth != AuthType::Federated))
            }
            None => false,
        }
    };
    let fields = hidden_fields(&p, &csrf);
    let page = if password_step {
        pages::password_page(&branding, &fields, &hint, None)
    } else {
        pages::username_page(&branding, &fields, &hint, None, state.passkeys.is_some())
    };
    let mut resp = html_response(StatusCode::OK, page);
    set_cookie(&mut resp, &state, csrf_cookie_name(&state), &csrf, 3600);
    resp
}

/// POST /oauth2/authorize: the sign-in form steps.
pub async fn authorize_post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<crate::serve::PeerAddr>,
    headers: HeaderMap,
    Form(p): Form<Params>,
) -> Response {
    let targets = form_targets(&state, &p).await;
    with_form_targets(authorize_post_page(state, peer, headers, p).await, &targets)
}

async fn authorize_post_page(
    state: Arc<AppState>,
    peer: crate::serve::PeerAddr,
    headers: HeaderMap,
    p: Params,
) -> Response {
    let checked = {
        let p = p.clone();
        db(&state, move |conn| Ok((Branding::load(conn), check_request(conn, &p)?))).await
    };
    let (branding, request) = match checked {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let request = match request {
        Ok(r) => r,
        Err(invalid) => return invalid_response(&branding, invalid),
    };
    // Double-submit CSRF check: the form's token must equal the cookie's,
    // and be one this tenant made.
    let Some(csrf) = checked_csrf(&state, &headers, &p) else {
        return html_response(
            StatusCode::BAD_REQUEST,
            pages::message_page(
                &branding,
                "Sign-in form expired",
                "This sign-in form expired or did not come from this page (the security token is missing). Go back to the application and start again.",
            ),
        );
    };
    let fields = hidden_fields(&p, &csrf);
    let username = p.get("username").map(|u| u.trim().to_string()).unwrap_or_default();
    let step = p.get("step").map(String::as_str).unwrap_or("username");
    let passkeys = state.passkeys.is_some();
    match step {
        "restart" => html_response(StatusCode::OK, pages::username_page(&branding, &fields, "", None, passkeys)),
        "username" => {
            if username.contains('\\') {
                return html_response(
                    StatusCode::OK,
                    pages::username_page(
                        &branding,
                        &fields,
                        &username,
                        Some("Enter your user name as name@domain (for example alex@example.com), not DOMAIN\\name."),
                        passkeys,
                    ),
                );
            }
            let Some((_, domain)) = username.rsplit_once('@').filter(|(n, d)| !n.is_empty() && d.contains('.')) else {
                return html_response(
                    StatusCode::OK,
                    pages::username_page(
                        &branding,
                        &fields,
                        &username,
                        Some("Enter your user name in the form name@domain, for example alex@example.com."),
                        passkeys,
                    ),
                );
            };
            let domain = domain.to_lowercase();
            let found = db(&state, move |conn| domains::get(conn, &domain)).await;
            match found {
                Ok(Some(d)) if d.auth == AuthType::Federated => {
                    crate::federation::start(&state, &branding, &p, &username, &d.name).await
                }
                // Managed domains (hashes or pass-through), and unknown ones (no hint
                // whether the user exists): on to the password step by a redirect,
                // so the browser's Back button never offers to re-send a form.
                Ok(_) => {
                    let mut pairs: Vec<(&str, &str)> = AUTH_PARAMS
                        .iter()
                        .filter(|k| **k != "login_hint")
                        .filter_map(|k| p.get(*k).filter(|v| !v.is_empty()).map(|v| (*k, v.as_str())))
                        .collect();
                    pairs.push(("login_hint", &username));
                    pairs.push(("step", "password"));
                    redirect_with("/oauth2/authorize", &pairs)
                }
                Err(e) => internal(e),
            }
        }
        "passkey" => {
            let Some(rp) = state.passkeys.clone() else {
                return html_response(StatusCode::OK, pages::username_page(&branding, &fields, "", None, false));
            };
            let token = p.get("passkey_token").cloned().unwrap_or_default();
            let response = p.get("credential").cloned().unwrap_or_default();
            let origin = origin_of(&state, &peer, &headers, &p).await;
            match signin::passkey_sign_in(&state.store, rp, token, response, &origin).await {
                Ok(Ok((signed_in, used))) => {
                    state.metrics.signin(telemetry::SignInMethod::Passkey, telemetry::SignInOutcome::Success, None);
                    let methods = if used.backup_eligible {
                        Authenticated::SYNCED_PASSKEY
                    } else {
                        Authenticated::DEVICE_PASSKEY
                    };
                    signed_in_response(&state, request, signed_in.user, methods).await
                }
                Ok(Err(e)) => {
                    state.metrics.signin(telemetry::SignInMethod::Passkey, telemetry::SignInOutcome::Refused, None);
                    html_response(
                        StatusCode::OK,
                        pages::username_page(&branding, &fields, "", Some(&e.to_string()), passkeys),
                    )
                }
                Err(e) => internal(e),
            }
        }
        "code" => {
            let challenge = p.get("challenge").cloned().unwrap_or_default();
            let credential = p.get("credential").filter(|c| !c.is_empty()).cloned();
            let answer = match (credential, state.passkeys.clone()) {
                (Some(response), Some(rp)) => signin::SecondFactorAnswer::Passkey {
                    rp,
                    token: p.get("passkey_token").cloned().unwrap_or_default(),
                    response,
                },
                _ => signin::SecondFactorAnswer::Code(p.get("code").cloned().unwrap_or_default()),
            };
            let origin = origin_of(&state, &peer, &headers, &p).await;
            match signin::second_factor(&state.store, &challenge, answer, &origin, state.lockout).await {
                Ok(Ok(passed)) => signed_in_response(&state, request, passed.user, &passed.methods).await,
                Ok(Err(e @ signin::SecondFactorError::Expired)) => html_response(
                    StatusCode::OK,
                    pages::username_page(&branding, &fields, &username, Some(&e.to_string()), passkeys),
                ),
                Ok(Err(e)) => {
                    let waiting = db(&state, move |conn| signin::second_step(conn, &challenge)).await;
                    match waiting {
                        Ok(Some(step)) => html_response(
                            StatusCode::OK,
                            pages::code_page(&branding, &fields, &username, &step, Some(&e.to_string())),
                        ),
                        Ok(None) => html_response(
                            StatusCode::OK,
                            pages::username_page(
                                &branding,
                                &fields,
                                &username,
                                Some(&signin::SecondFactorError::Expired.to_string()),
                                passkeys,
                            ),
                        ),
                        Err(e) => internal(e),
                    }
                }
                Err(e) => internal(e),
            }
        }
        "enrol-app" | "enrol-passkey" | "continue" | "skip" => {
            second_step::registration_step(&state, &branding, &fields, request, step, &p).await
        }
        "password" | "change" => {
            let password = p.get("password").cloned().unwrap_or_default();
            let origin = origin_of(&state, &peer, &headers, &p).await;
            let started = std::time::Instant::now();
            let outcome = signin::sign_in(&state.store, &state.pta, &username, &password, &origin, state.lockout).await;
            count_sign_in(&state, &username, &outcome, started.elapsed().as_secs_f64()).await;
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => return internal(e),
            };
            match outcome {
                Ok(signed_in) => {
                    let first = second_step::FirstStep::Password;
                    second_step::continue_sign_in(&state, &branding, &fields, request, signed_in.user, first).await
                }
                Err(SignInError::MustChangePassword { user_id }) if step == "change" => {
                    change_password(&state, &branding, &fields, request, &username, &user_id, &p).await
                }
                Err(SignInError::MustChangePassword { .. }) => {
                    html_response(StatusCode::OK, pages::change_password_page(&branding, &fields, &username, None))
                }
                Err(e) => {
                    let page = if step == "change" {
                        pages::change_password_page(&branding, &fields, &username, Some(&e.to_string()))
                    } else {
                        pages::password_page(&branding, &fields, &username, Some(&e.to_string()))
                    };
                    html_response(StatusCode::OK, page)
                }
            }
        }
        _ => html_response(
            StatusCode::BAD_REQUEST,
            pages::message_page(&branding, "Sign-in request not valid", "Unknown sign-in step."),
        ),
    }
}

/// The client's address, behind trusted proxies.
pub(crate) fn client_address(state: &AppState, peer: &crate::serve::PeerAddr, headers: &HeaderMap) -> String {
    tenant::net::client_address(
        &state.trusted_proxies,
        peer.0.ip(),
        headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()),
    )
    .to_string()
}

/// Where a sign-in attempt comes from and for which application: the
/// client id, or `saml:APP` for a sign-in to a SAML application (the
/// tenant's own SAML client, its pending request under `state`).
async fn origin_of(
    state: &Arc<AppState>,
    peer: &crate::serve::PeerAddr,
    headers: &HeaderMap,
    p: &Params,
) -> signin::Origin {
    let mut application = p.get("client_id").cloned();
    let saml_callback = tenant::service::saml_redirect_uri(&state.issuer);
    if p.get("redirect_uri") == Some(&saml_callback)
        && let Some(token) = p.get("state").cloned()
        && let Ok(Some(app)) = db(state, move |conn| tenant::saml_idp::pending_app(conn, &token)).await
    {
        application = Some(format!("saml:{app}"));
    }
    signin::Origin { address: client_address(state, peer, headers), application }
}

/// Signed in by `methods`: the code for the application, and a browser session.
pub(crate) async fn signed_in_response(
    state: &Arc<AppState>,
    request: AuthRequest,
    user: Stored,
    methods: &str,
) -> Response {
    let authenticated = Authenticated::now(methods);
    let mut resp = finish(state, request, user.clone(), &authenticated).await;
    if resp.status() == StatusCode::SEE_OTHER {
        match new_session(state, &user.id, &authenticated).await {
            Ok(token) => set_cookie(&mut resp, state, SESSION_COOKIE, &token, SESSION_LIFETIME_SECS),
            Err(e) => return internal(e),
        }
    }
    resp
}

/// Counts a sign-in in the metrics: its method (from the user's domain)
/// and outcome; pass-through ones also as pass-through requests.
async fn count_sign_in(
    state: &Arc<AppState>,
    username: &str,
    outcome: &tenant::Result<std::result::Result<signin::SignedIn, SignInError>>,
    seconds: f64,
) {
    use telemetry::{SignInMethod, SignInOutcome};
    let domain = username.rsplit_once('@').map(|(_, d)| d.to_lowercase()).unwrap_or_default();
    let auth = db(state, move |conn| domains::get(conn, &domain)).await.ok().flatten().map(|d| d.auth);
    let method = if auth == Some(AuthType::ManagedPta) { SignInMethod::PassThrough } else { SignInMethod::Password };
    let result = match outcome {
        Ok(Ok(_)) => SignInOutcome::Success,
        Ok(Err(SignInError::InvalidCredentials)) => SignInOutcome::WrongPassword,
        Ok(Err(SignInError::LockedOut { .. })) => SignInOutcome::Locked,
        Ok(Err(SignInError::NoAgentOnline | SignInError::ValidatorTimeout)) => SignInOutcome::NoAgent,
        Ok(Err(SignInError::DirectoryUnreachable | SignInError::MethodNotAvailable { .. })) | Err(_) => {
            SignInOutcome::Error
        }
        Ok(Err(_)) => SignInOutcome::Refused,
    };
    state.metrics.signin(method, result, Some(seconds));
    if method == SignInMethod::PassThrough && result != SignInOutcome::Locked {
        state.metrics.pta_request(result.as_str());
    }
}

/// What is wrong with a new password before anyone is asked, if anything.
pub(crate) fn new_password_problem(current: &str, new: &str, confirm: Option<&str>) -> Option<&'static str> {
    if Some(new) != confirm {
        Some("The new passwords do not match.")
    } else if new.chars().count() < 8 {
        Some("The new password must have at least 8 characters.")
    } else if new.chars().count() > tenant::writeback::MAX_PASSWORD_CHARS {
        Some("The new password is too long.")
    } else if new == current {
        Some("The new password must differ from the current one.")
    } else {
        None
    }
}

async fn change_password(
    state: &Arc<AppState>,
    branding: &Branding,
    fields: &[(&'static str, String)],
    request: AuthRequest,
    username: &str,
    user_id: &str,
    p: &Params,
) -> Response {
    let new = p.get("new_password").cloned().unwrap_or_default();
    let current = p.get("password").cloned().unwrap_or_default();
    if let Some(problem) = new_password_problem(&current, &new, p.get("confirm").map(String::as_str)) {
        return html_response(StatusCode::OK, pages::change_password_page(branding, fields, username, Some(problem)));
    }
    let id = user_id.to_string();
    let writes_back = db(state, move |conn| match objects::load(conn, Some(Kind::User), &id)? {
        Some(user) => signin::writes_back(conn, &user),
        None => Ok(false),
    })
    .await;
    match writes_back {
        Ok(true) => {
            // On-premises first; the tenant's record only once the directory took it.
            let change = tenant::writeback::Request::Change { current };
            let written = crate::writeback::write_password(state, username, &new, change).await;
            let id = user_id.to_string();
            return match written {
                Ok(Ok(_)) => match db(state, move |conn| objects::load(conn, Some(Kind::User), &id)).await {
                    Ok(Some(user)) => {
                        let first = second_step::FirstStep::Password;
                        second_step::continue_sign_in(state, branding, fields, request, user, first).await
                    }
                    Ok(None) => html_response(
                        StatusCode::OK,
                        pages::username_page(branding, fields, "", Some("Sign in again."), state.passkeys.is_some()),
                    ),
                    Err(e) => internal(e),
                },
                Ok(Err(e)) => html_response(
                    StatusCode::OK,
                    pages::change_password_page(branding, fields, username, Some(&e.to_string())),
                ),
                Err(e) => internal(e),
            };
        }
        Ok(false) => {}
        Err(e) => return internal(e),
    }
    let id = user_id.to_string();
    let result = db(state, move |conn| {
        let salt = tenant::util::random_bytes::<{ passwords::pph1::SALT_LEN }>();
        let record =
            passwords::Pph1::derive(&passwords::NtHash::of_password(&new), &salt, signin::default_iterations());
        credentials::set(conn, &id, &record.to_string())?;
        tenant::audit::record(conn, "sign-in", "password-changed-in-cloud", Some("User"), Some(&id), None)?;
        objects::load(conn, Some(Kind::User), &id)
    })
    .await;
    match result {
        Ok(Some(user)) => {
            second_step::continue_sign_in(state, branding, fields, request, user, second_step::FirstStep::Password)
                .await
        }
        Ok(None) => html_response(
            StatusCode::OK,
            pages::username_page(branding, fields, "", Some("Sign in again."), state.passkeys.is_some()),
        ),
        Err(e) => internal(e),
    }
}

async fn new_session(state: &Arc<AppState>, user_id: &str, authenticated: &Authenticated) -> Result<String> {
    let token = random_token();
    let (hash, id, auth) = (sha256(token.as_bytes()), user_id.to_string(), authenticated.clone());
    db(state, move |conn| {
        let now = now_secs();
        conn.execute("DELETE FROM sessions WHERE expires <= ?1", params![now])?;
        conn.execute(
            "INSERT INTO sessions(hash, user_id, created, expires, amr) VALUES(?1, ?2, ?3, ?4, ?5)",
            params![hash, id, auth.time, now + SESSION_LIFETIME_SECS, auth.methods],
        )?;
        Ok(())
    })
    .await?;
    Ok(token)
}

/// Ends a sign-in done elsewhere (a federated identity provider): the
/// relying party's request is checked again, then code, session, redirect.
pub(crate) async fn complete(state: &Arc<AppState>, p: Params, user: Stored, multi_factor: bool) -> Response {
    let p2 = p.clone();
    let checked = db(state, move |conn| Ok((Branding::load(conn), check_request(conn, &p2)?))).await;
    let (branding, request) = match checked {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let request = match request {
        Ok(r) => r,
        Err(invalid) => return invalid_response(&branding, invalid),
    };
    // The second step, if the policy asks for one, is a form of ours.
    let csrf = mint_csrf(&state.csrf_key);
    let fields = hidden_fields(&p, &csrf);
    let first = second_step::FirstStep::Federated { multi_factor };
    let mut resp = second_step::continue_sign_in(state, &branding, &fields, request, user, first).await;
    if resp.status() == StatusCode::OK {
        set_cookie(&mut resp, state, csrf_cookie_name(state), &csrf, 3600);
    }
    resp
}

/// Issues the code and sends the browser back to the application.
/// A code for `user`, who authenticated as `authenticated` says.
pub(crate) async fn finish(
    state: &Arc<AppState>,
    request: AuthRequest,
    user: Stored,
    authenticated: &Authenticated,
) -> Response {
    let (auth_time, amr) = (authenticated.time, authenticated.methods.clone());
    let code = random_token();
    let hash = sha256(code.as_bytes());
    let AuthRequest { client, redirect_uri, scope, state: rp_state, nonce, challenge, .. } = request;
    let redirect = redirect_uri.clone();
    let stored = db(state, move |conn| {
        conn.execute("DELETE FROM auth_codes WHERE expires <= ?1", params![now_secs() - 3600])?;
        conn.execute(
            "INSERT INTO auth_codes(hash, client_id, user_id, redirect_uri, scope, nonce, challenge, expires, auth_time, amr)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                hash,
                client.id,
                user.id,
                redirect_uri,
                scope,
                nonce,
                challenge,
                now_secs() + CODE_LIFETIME_SECS,
                auth_time,
                amr
            ],
        )?;
        Ok(())
    })
    .await;
    if let Err(e) = stored {
        return internal(e);
    }
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = &rp_state {
        pairs.push(("state", s.as_str()));
    }
    redirect_with(&redirect, &pairs)
}

/// A token endpoint error (RFC 6749 §5.2).
fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = json_response(status, &json!({"error": error, "error_description": description}));
    if status == StatusCode::UNAUTHORIZED
        && let Ok(v) = HeaderValue::from_str("Basic realm=\"idbridge\"")
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// One form-encoded value (`+` is a space), as in HTTP Basic client credentials.
fn form_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// The client's id and secret from HTTP Basic (form-encoded parts, RFC 6749 §2.3.1) or the body.
fn client_credentials(headers: &HeaderMap, p: &Params) -> (Option<String>, Option<String>) {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        && let Some(text) = STANDARD.decode(basic.trim()).ok().and_then(|b| String::from_utf8(b).ok())
        && let Some((id, secret)) = text.split_once(':')
    {
        return (Some(form_decode(id)), Some(form_decode(secret)));
    }
    (p.get("client_id").cloned(), p.get("client_secret").cloned())
}

/// POST /oauth2/token.
pub async fn token(State(state): State<Arc<AppState>>, headers: HeaderMap, Form(p): Form<Params>) -> Response {
    let (client_id, secret) = client_credentials(&headers, &p);
    let Some(client_id) = client_id else {
        return token_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication is required");
    };
    let issuer = state.issuer.clone();
    let result = db(&state, move |conn| {
        let Some(client) = clients::get(conn, &client_id)? else {
            return Ok(Err((StatusCode::UNAUTHORIZED, "invalid_client", "unknown client".to_string())));
        };
        if !client.public {
            let ok = match &secret {
                Some(s) => clients::check_secret(conn, &client.id, s)?,
                None => false,
            };
            if !ok {
                return Ok(Err((StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed".into())));
            }
        }
        match p.get("grant_type").map(String::as_str) {
            Some("authorization_code") => exchange_code(conn, &issuer, &client, &p),
            Some("refresh_token") => refresh(conn, &issuer, &client, &p),
            Some(other) => {
                Ok(Err((StatusCode::BAD_REQUEST, "unsupported_grant_type", format!("{other} is not supported"))))
            }
            None => Ok(Err((StatusCode::BAD_REQUEST, "invalid_request", "grant_type is missing".into()))),
        }
    })
    .await;
    match result {
        Ok(Ok(body)) => json_response(StatusCode::OK, &body),
        Ok(Err((status, error, description))) => token_error(status, error, &description),
        Err(e) => internal(e),
    }
}

type TokenResult = Result<std::result::Result<Value, (StatusCode, &'static str, String)>>;

fn bad_grant(description: &str) -> TokenResult {
    Ok(Err((StatusCode::BAD_REQUEST, "invalid_grant", description.to_string())))
}

/// Exchanges an authorization code (with the PKCE verifier) for tokens.
pub fn exchange_code(conn: &mut Connection, issuer: &str, client: &Client, p: &Params) -> TokenResult {
    let Some(code) = p.get("code") else { return bad_grant("code is missing") };
    let hash = sha256(code.as_bytes());
    type Row = (String, String, String, String, Option<String>, Option<String>, i64, bool, Option<i64>, Option<String>);
    let row: Option<Row> = conn
        .query_row(
            "SELECT client_id, user_id, redirect_uri, scope, nonce, challenge, expires, used, auth_time, amr FROM auth_codes WHERE hash = ?1",
            params![hash],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            },
        )
        .optional()?;
    let Some((code_client, user_id, redirect_uri, scope, nonce, challenge, expires, used, auth_time, amr)) = row else {
        return bad_grant("the code is unknown");
    };
    let family = tenant::util::to_hex(&hash);
    if used {
        // A replayed code: revoke what the first exchange issued (RFC 6749 §4.1.2).
        conn.execute("DELETE FROM refresh_tokens WHERE family = ?1", params![family])?;
        tenant::audit::record(
            conn,
            "oidc",
            "code-reused",
            Some("User"),
            Some(&user_id),
            Some(&json!({"client": client.id})),
        )?;
        return bad_grant("the code was already used; the tokens issued for it are revoked");
    }
    conn.execute("UPDATE auth_codes SET used = 1 WHERE hash = ?1", params![hash])?;
    if code_client != client.id {
        return bad_grant("the code was issued to another client");
    }
    if expires <= now_secs() {
        return bad_grant("the code has expired");
    }
    if p.get("redirect_uri") != Some(&redirect_uri) {
        return bad_grant("redirect_uri does not match the authorization request");
    }
    match (&challenge, p.get("code_verifier")) {
        (Some(challenge), Some(verifier)) => {
            let valid_form = (43..=128).contains(&verifier.len())
                && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            let computed = URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()));
            if !valid_form || sha256(computed.as_bytes()) != sha256(challenge.as_bytes()) {
                return bad_grant("the PKCE code_verifier does not match the code_challenge");
            }
        }
        (Some(_), None) => return bad_grant("code_verifier is missing (PKCE)"),
        (None, Some(_)) => return bad_grant("code_verifier given but the authorization request had no code_challenge"),
        (None, None) => {}
    }
    let authenticated = Authenticated::stored(auth_time.unwrap_or_else(now_secs), amr);
    issue_tokens(conn, issuer, client, &user_id, &scope, nonce.as_deref(), &family, &authenticated)
}

/// Rotates a refresh token: the old one is spent; a reused one revokes its family.
fn refresh(conn: &mut Connection, issuer: &str, client: &Client, p: &Params) -> TokenResult {
    let Some(token) = p.get("refresh_token") else { return bad_grant("refresh_token is missing") };
    let hash = sha256(token.as_bytes());
    type Row = (String, String, String, String, i64, bool, Option<i64>, Option<String>);
    let row: Option<Row> = conn
        .query_row(
            "SELECT family, client_id, user_id, scope, expires, used, auth_time, amr FROM refresh_tokens WHERE hash = ?1",
            params![hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
        )
        .optional()?;
    let Some((family, token_client, user_id, scope, expires, used, auth_time, amr)) = row else {
        return bad_grant("the refresh token is unknown or revoked");
    };
    if used {
        conn.execute("DELETE FROM refresh_tokens WHERE family = ?1", params![family])?;
        tenant::audit::record(conn, "oidc", "refresh-token-reused", Some("User"), Some(&user_id), None)?;
        return bad_grant("the refresh token was already used; its whole family is revoked");
    }
    if token_client != client.id {
        return bad_grant("the refresh token was issued to another client");
    }
    if expires <= now_secs() {
        return bad_grant("the refresh token has expired");
    }
    conn.execute("UPDATE refresh_tokens SET used = 1 WHERE hash = ?1", params![hash])?;
    // A refresh is no new authentication: the original auth_time and methods stay.
    let authenticated = Authenticated::stored(auth_time.unwrap_or_else(now_secs), amr);
    issue_tokens(conn, issuer, client, &user_id, &scope, None, &family, &authenticated)
}

#[allow(clippy::too_many_arguments)]
fn issue_tokens(
    conn: &mut Connection,
    issuer: &str,
    client: &Client,
    user_id: &str,
    scope: &str,
    nonce: Option<&str>,
    family: &str,
    authenticated: &Authenticated,
) -> TokenResult {
    let auth_time = authenticated.time;
    let Some(user) = objects::load(conn, Some(Kind::User), user_id)? else {
        return bad_grant("the user no longer exists");
    };
    if user.data.get("active") == Some(&Value::Bool(false)) || tenant::console::is_blocked(conn, &user.id)? {
        return bad_grant("the user is disabled");
    }
    let now = now_secs();
    let mut id_claims = user_claims(conn, &user, scope)?;
    if let Some(o) = id_claims.as_object_mut() {
        o.insert("iss".into(), json!(issuer));
        o.insert("aud".into(), json!(client.id));
        o.insert("iat".into(), json!(now));
        o.insert("exp".into(), json!(now + TOKEN_LIFETIME_SECS));
        o.insert("auth_time".into(), json!(auth_time));
        o.insert("amr".into(), json!(authenticated.methods.split(' ').collect::<Vec<_>>()));
        o.insert("acr".into(), json!(authenticated.acr()));
        if let Some(n) = nonce {
            o.insert("nonce".into(), json!(n));
        }
    }
    let id_key = keys::active(conn, client.id_token_alg)?;
    let id_token = jwt::sign(&id_key, &id_claims)?;
    let access_claims = json!({
        "iss": issuer, "sub": user.id, "aud": format!("{issuer}/oauth2/userinfo"), "client_id": client.id,
        "scope": scope, "iat": now, "exp": now + TOKEN_LIFETIME_SECS, "token_use": "access",
        "jti": random_token(),
    });
    let access_token = jwt::sign(&keys::active(conn, Alg::Rs256)?, &access_claims)?;
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_SECS,
        "id_token": id_token,
        "scope": scope,
    });
    // Refresh tokens only for clients that asked for offline access.
    if scope.split(' ').any(|s| s == "offline_access") {
        let refresh_token = random_token();
        conn.execute(
            "INSERT INTO refresh_tokens(hash, family, client_id, user_id, scope, expires, auth_time, amr)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                sha256(refresh_token.as_bytes()),
                family,
                client.id,
                user.id,
                scope,
                now + REFRESH_LIFETIME_SECS,
                auth_time,
                authenticated.methods
            ],
        )?;
        if let Some(o) = body.as_object_mut() {
            o.insert("refresh_token".into(), json!(refresh_token));
        }
    }
    Ok(Ok(body))
}

/// The claims a user has for `scope` (ID token and userinfo).
fn user_claims(conn: &Connection, user: &Stored, scope: &str) -> Result<Value> {
    let has = |s: &str| scope.split(' ').any(|x| x == s);
    let d = &user.data;
    let mut c = serde_json::Map::new();
    c.insert("sub".into(), json!(user.id));
    if has("profile") {
        if let Some(v) = d.get("userName") {
            c.insert("preferred_username".into(), v.clone());
        }
        if let Some(v) = d.get("displayName") {
            c.insert("name".into(), v.clone());
        }
        let hybrid = d.get("urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object");
        if let Some(v) = hybrid.and_then(|h| h.get("immutableId")) {
            c.insert("immutable_id".into(), v.clone());
        }
    }
    if has("email") {
        let emails = d.get("emails").and_then(Value::as_array);
        let primary = emails.and_then(|e| e.iter().find(|m| m["primary"] == json!(true)).or_else(|| e.first()));
        if let Some(v) = primary.and_then(|m| m.get("value")) {
            c.insert("email".into(), v.clone());
        }
    }
    if has("groups") {
        let mut stmt = conn.prepare_cached(tenant::objects::GROUPS_OF)?;
        let names: Vec<Value> = stmt
            .query_map(params![user.id], |r| r.get::<_, String>(1))?
            .filter_map(|d| d.ok().and_then(|d| serde_json::from_str::<Value>(&d).ok()))
            .filter_map(|g| g.get("displayName").cloned())
            .collect();
        c.insert("groups".into(), Value::Array(names));
    }
    Ok(Value::Object(c))
}

/// GET or POST /oauth2/userinfo with the access token.
pub async fn userinfo(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string());
    let unauthorized = |why: &str| {
        let mut resp =
            json_response(StatusCode::UNAUTHORIZED, &json!({"error": "invalid_token", "error_description": why}));
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer error=\"invalid_token\", error_description=\"{why}\"")) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    };
    let Some(token) = bearer else { return unauthorized("an access token is required") };
    let result = db(&state, move |conn| {
        let Some(claims) = jwt::verify_own(conn, &token)? else { return Ok(None) };
        if claims["token_use"] != "access" {
            return Ok(None);
        }
        let (Some(sub), scope) = (claims["sub"].as_str(), claims["scope"].as_str().unwrap_or("")) else {
            return Ok(None);
        };
        match objects::load(conn, Some(Kind::User), sub)? {
            Some(user) if user.data.get("active") != Some(&Value::Bool(false)) => {
                Ok(Some(user_claims(conn, &user, scope)?))
            }
            _ => Ok(None),
        }
    })
    .await;
    match result {
        Ok(Some(claims)) => json_response(StatusCode::OK, &claims),
        Ok(None) => unauthorized("the access token is invalid, expired, or its user is gone"),
        Err(e) => internal(e),
    }
}

/// GET /oauth2/logout (RP-initiated logout 1.0).
pub async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap, Query(p): Query<Params>) -> Response {
    let session = cookie(&headers, SESSION_COOKIE);
    let result = db(&state, move |conn| {
        let branding = Branding::load(conn);
        let session_user: Option<String> = match &session {
            Some(token) => conn
                .query_row("SELECT user_id FROM sessions WHERE hash = ?1", params![sha256(token.as_bytes())], |r| {
                    r.get(0)
                })
                .optional()?,
            None => None,
        };
        // A logout by link ends the session only with an ID token this tenant
        // issued to this browser's user (RP-initiated logout); otherwise the
        // person is asked (a page elsewhere cannot sign them out).
        let hint = p.get("id_token_hint").map(|t| jwt::verify_own_signature(conn, t)).transpose()?.flatten();
        let hint_ok = match (&hint, &session_user) {
            (Some(claims), Some(user)) => claims["sub"] == user.as_str(),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !hint_ok && session_user.is_some() {
            return Ok(Logout::Ask(branding));
        }
        if let Some(token) = &session {
            conn.execute("DELETE FROM sessions WHERE hash = ?1", params![sha256(token.as_bytes())])?;
        }
        // Where to go afterwards: only an address the hint's client registered, compared exactly.
        let client_id = hint.as_ref().and_then(|c| c["aud"].as_str().map(str::to_string));
        let target = match (p.get("post_logout_redirect_uri"), client_id) {
            (Some(uri), Some(id)) => clients::get(conn, &id)?
                .filter(|c| c.post_logout_uris.contains(uri) || c.redirect_uris.contains(uri))
                .map(|_| uri.clone()),
            _ => None,
        };
        Ok(match target {
            Some(uri) => Logout::Redirect(uri, p.get("state").cloned()),
            None => Logout::SignedOut(branding),
        })
    })
    .await;
    let mut resp = match result {
        Ok(Logout::Redirect(uri, Some(s))) => redirect_with(&uri, &[("state", &s)]),
        Ok(Logout::Redirect(uri, None)) => redirect_with(&uri, &[]),
        Ok(Logout::SignedOut(branding)) => html_response(StatusCode::OK, pages::signed_out_page(&branding)),
        Ok(Logout::Ask(branding)) => {
            let csrf = mint_csrf(&state.csrf_key);
            let mut resp = html_response(StatusCode::OK, pages::confirm_logout_page(&branding, &csrf));
            set_cookie(&mut resp, &state, csrf_cookie_name(&state), &csrf, 3600);
            return resp;
        }
        Err(e) => return internal(e),
    };
    set_cookie(&mut resp, &state, SESSION_COOKIE, "", 0);
    resp
}

enum Logout {
    Redirect(String, Option<String>),
    SignedOut(Branding),
    Ask(Branding),
}

/// POST /oauth2/logout: the person confirmed on the tenant's own page (CSRF-checked).
pub async fn logout_confirmed(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(p): Form<Params>,
) -> Response {
    let csrf_ok = checked_csrf(&state, &headers, &p).is_some();
    let session = cookie(&headers, SESSION_COOKIE);
    let result = db(&state, move |conn| {
        if csrf_ok && let Some(token) = session {
            conn.execute("DELETE FROM sessions WHERE hash = ?1", params![sha256(token.as_bytes())])?;
        }
        Ok(Branding::load(conn))
    })
    .await;
    match result {
        Ok(branding) if csrf_ok => {
            let mut resp = html_response(StatusCode::OK, pages::signed_out_page(&branding));
            set_cookie(&mut resp, &state, SESSION_COOKIE, "", 0);
            resp
        }
        Ok(branding) => html_response(
            StatusCode::BAD_REQUEST,
            pages::message_page(
                &branding,
                "Not signed out",
                "This sign-out form expired. Open the application and sign out again.",
            ),
        ),
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_round_trip_and_bad_escapes_stay() {
        for text in ["a b+c", "zoë&東京=1", "100%", "%", "é%zz%4"] {
            assert_eq!(form_decode(&urlencode(text)), text);
        }
        assert_eq!(form_decode("a+b%2Bc%C3%A9"), "a b+cé");
        assert_eq!(form_decode("%zz%4"), "%zz%4");
        assert_eq!(urlencode("a-b.c_d~e f"), "a-b.c_d~e%20f");
    }
}
