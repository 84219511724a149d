//! The browser's way through a federated sign-in: from the user-name step to
//! the identity provider, and back to the relying party.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::oidc::flow::{AUTH_PARAMS, Params, db, html_response, internal, urlencode};
use crate::oidc::pages::{self, Branding};
use crate::scim::AppState;
use tenant::federation::oidc::{self, Expected};
use tenant::federation::{Federation, Pending, Refusal};
use tenant::oidc::random_token;
use tenant::util::now_secs;

/// The cookie that binds a federated sign-in to the browser that started
/// it: its value is the state (RelayState) sent to the identity provider,
/// and the answer is taken only from a browser that carries it — a response
/// obtained by someone else cannot be posted into this browser (login CSRF).
/// SameSite=None: the SAML answer arrives by a cross-site POST.
fn binding_cookie_name(state: &AppState) -> &'static str {
    if state.issuer.starts_with("https://") { "__Host-idb_federation" } else { "idb_federation" }
}

fn with_binding_cookie(mut resp: Response, state: &AppState, value: &str) -> Response {
    let text = format!(
        "{}={value}; Path=/; HttpOnly; Secure; SameSite=None; Max-Age={}",
        binding_cookie_name(state),
        tenant::federation::REQUEST_LIFETIME_SECS
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
        resp.headers_mut().append(axum::http::header::SET_COOKIE, v);
    }
    resp
}

/// Control characters out of text an identity provider chose (it reaches
/// the log and the audit), and at most 300 characters of it.
fn printable(text: &str) -> String {
    text.chars().take(300).flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] }).collect()
}

/// Where identity providers send OpenID Connect answers.
pub fn oidc_redirect_uri(state: &AppState) -> String {
    format!("{}/federation/oidc/callback", state.issuer)
}

fn refused(branding: &Branding, refusal: &Refusal) -> Response {
    html_response(StatusCode::FORBIDDEN, pages::message_page(branding, "You are not signed in", &refusal.message()))
}

/// Refuses with a page and an audit entry.
async fn refuse(state: &Arc<AppState>, domain: &str, protocol: &'static str, refusal: Refusal) -> Response {
    state.metrics.signin(telemetry::SignInMethod::Federated, telemetry::SignInOutcome::Refused, None);
    tracing::warn!(domain, protocol, reason = refusal.code(), detail = %refusal.detail(), "federated sign-in refused");
    let (domain, shown) = (domain.to_string(), refusal.clone());
    let branding = db(state, move |conn| {
        tenant::federation::audit(conn, &domain, protocol, Err(&shown))?;
        Ok(Branding::load(conn))
    })
    .await;
    match branding {
        Ok(b) => refused(&b, &refusal),
        Err(e) => internal(e),
    }
}

/// The user-name step found a federated domain: off to its identity provider.
pub async fn start(state: &Arc<AppState>, branding: &Branding, p: &Params, username: &str, domain: &str) -> Response {
    let name = domain.to_string();
    let federation = match db(state, move |conn| tenant::federation::load(conn, &name)).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return html_response(
                StatusCode::OK,
                pages::message_page(
                    branding,
                    "Sign-in not available",
                    &format!(
                        "Sign-in for {domain} is handed to an identity provider that is not configured. Contact your administrator."
                    ),
                ),
            );
        }
        Err(e) => return internal(e),
    };
    match federation {
        Federation::Oidc(idp) => {
            let meta = match state.federation.provider(&idp.issuer, false).await {
                Ok((meta, _)) => meta,
                Err(refusal) => return refuse(state, domain, "oidc", refusal).await,
            };
            let (rp_state, nonce, verifier) = (random_token(), random_token(), random_token());
            let challenge = URL_SAFE_NO_PAD.encode(tenant::util::sha256(verifier.as_bytes()));
            let params: Params =
                AUTH_PARAMS.iter().filter_map(|k| p.get(*k).map(|v| (k.to_string(), v.clone()))).collect();
            let pending = Pending {
                domain: domain.to_string(),
                nonce: nonce.clone(),
                verifier,
                params,
                username: username.to_string(),
            };
            let key = rp_state.clone();
            if let Err(e) = db(state, move |conn| tenant::federation::remember(conn, &key, &pending)).await {
                return internal(e);
            }
            let sep = if meta.authorization_endpoint.contains('?') { '&' } else { '?' };
            let url = format!(
                "{}{sep}response_type=code&client_id={}&redirect_uri={}&scope=openid&state={}&nonce={}&code_challenge={}&code_challenge_method=S256&login_hint={}",
                meta.authorization_endpoint,
                urlencode(&idp.client_id),
                urlencode(&oidc_redirect_uri(state)),
                urlencode(&rp_state),
                urlencode(&nonce),
                urlencode(&challenge),
                urlencode(username)
            );
            with_binding_cookie(see_other(&url), state, &rp_state)
        }
        Federation::Saml(idp) => {
            let (relay_state, request_id) = (random_token(), format!("_{}", random_token()));
            let params: Params =
                AUTH_PARAMS.iter().filter_map(|k| p.get(*k).map(|v| (k.to_string(), v.clone()))).collect();
            let pending = Pending {
                domain: domain.to_string(),
                // The AuthnRequest's ID plays the nonce's part: the answer must name it.
                nonce: request_id.clone(),
                verifier: String::new(),
                params,
                username: username.to_string(),
            };
            let key = relay_state.clone();
            if let Err(e) = db(state, move |conn| tenant::federation::remember(conn, &key, &pending)).await {
                return internal(e);
            }
            let request = tenant::federation::saml::authn_request(
                &request_id,
                &saml_entity_id(state),
                &saml_acs_url(state),
                &idp.sso_url,
                now_secs(),
            );
            let sep = if idp.sso_url.contains('?') { '&' } else { '?' };
            let url = format!(
                "{}{sep}SAMLRequest={}&RelayState={}",
                idp.sso_url,
                urlencode(&request),
                urlencode(&relay_state)
            );
            with_binding_cookie(see_other(&url), state, &relay_state)
        }
    }
}

fn see_other(url: &str) -> Response {
    let mut resp = Redirect::to(url).into_response();
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp
}

/// The tenant's SAML entity id (the Audience IdPs must name).
pub fn saml_entity_id(state: &AppState) -> String {
    format!("{}/federation/saml", state.issuer)
}

/// Where SAML identity providers post their responses.
pub fn saml_acs_url(state: &AppState) -> String {
    format!("{}/federation/saml/acs", state.issuer)
}

/// POST /federation/saml/acs: the identity provider's response (HTTP-POST binding).
pub async fn saml_acs(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    axum::extract::Form(form): axum::extract::Form<Params>,
) -> Response {
    let key = form.get("RelayState").cloned().unwrap_or_default();
    let response = form.get("SAMLResponse").cloned().unwrap_or_default();
    let browser = crate::oidc::flow::cookie(&headers, binding_cookie_name(&state));
    answer(&state, "saml", key, browser, async |state, pending| verify_saml(state, pending, &response).await).await
}

/// The common end of both protocols: take the pending sign-in named by
/// `key` (once), check the answer with `verify`, then continue the relying
/// party's flow or refuse — audited either way.
async fn answer(
    state: &Arc<AppState>,
    protocol: &'static str,
    key: String,
    browser: Option<String>,
    verify: impl AsyncFnOnce(&Arc<AppState>, &Pending) -> Result<Verified, Refusal>,
) -> Response {
    // The answer must come back to the browser that asked for it.
    // Compared as SHA-256 digests: equal digests leak nothing of the values.
    let same_browser =
        browser.is_some_and(|b| tenant::util::sha256(b.as_bytes()) == tenant::util::sha256(key.as_bytes()));
    if !same_browser {
        return refuse(state, "-", protocol, Refusal::UnknownState).await;
    }
    let pending = match db(state, move |conn| tenant::federation::take(conn, &key)).await {
        Ok(p) => p,
        Err(e) => return internal(e),
    };
    let Some(pending) = pending else {
        return refuse(state, "-", protocol, Refusal::UnknownState).await;
    };
    let domain = pending.domain.clone();
    match verify(state, &pending).await {
        Ok(Verified { user, multi_factor }) => {
            let (domain2, user2) = (domain.clone(), user.clone());
            if let Err(e) = db(state, move |conn| tenant::federation::audit(conn, &domain2, protocol, Ok(&user2))).await
            {
                return internal(e);
            }
            state.metrics.signin(telemetry::SignInMethod::Federated, telemetry::SignInOutcome::Success, None);
            crate::oidc::flow::complete(state, pending.params, user, multi_factor).await
        }
        Err(refusal) => refuse(state, &domain, protocol, refusal).await,
    }
}

/// A federated sign-in the tenant accepts: the user, and whether the
/// identity provider said it used several factors.
pub(crate) struct Verified {
    user: tenant::objects::Stored,
    multi_factor: bool,
}

async fn verify_saml(state: &Arc<AppState>, pending: &Pending, response: &str) -> Result<Verified, Refusal> {
    let name = pending.domain.clone();
    let federation = db(state, move |conn| tenant::federation::load(conn, &name))
        .await
        .map_err(|e| Refusal::Malformed(e.to_string()))?
        .ok_or_else(|| Refusal::IdpError("the domain is no longer federated".into()))?;
    let Federation::Saml(idp) = federation else {
        return Err(Refusal::IdpError("the domain is federated over OpenID Connect, not SAML".into()));
    };
    let (sp, acs) = (saml_entity_id(state), saml_acs_url(state));
    let (response, nonce) = (response.to_string(), pending.nonce.clone());
    let idp_entity_id = idp.entity_id.clone();
    // Parsing and signature checks are CPU work on hostile input: a blocking
    // thread, never the async workers that serve everyone else.
    let asserted = tokio::task::spawn_blocking(move || {
        let certificates = tenant::federation::saml::certificates_from(idp.signing_certificates.as_bytes());
        let expected = tenant::federation::saml::Expected {
            idp_entity_id: &idp_entity_id,
            certificates: &certificates,
            sp_entity_id: &sp,
            acs_url: &acs,
            request_id: &nonce,
            now: now_secs(),
        };
        tenant::federation::saml::check_response(&response, &expected)
    })
    .await
    .map_err(|_| Refusal::Malformed("the response could not be checked".into()))??;
    let upn = idp
        .upn_attribute
        .as_ref()
        .and_then(|a| asserted.attributes.iter().find(|(n, _)| n == a).map(|(_, v)| v.clone()));
    let (domain, assertion_id, until) = (pending.domain.clone(), asserted.assertion_id.clone(), asserted.valid_until);
    let immutable_id = asserted.persistent_id.clone();
    if immutable_id.is_none() && upn.is_none() {
        return Err(Refusal::NoImmutableId("a persistent NameID".into()));
    }
    let multi_factor = asserted.authn_context.as_deref().is_some_and(tenant::policy::saml_context_is_mfa);
    let user = db(state, move |conn| {
        if !tenant::federation::first_use(conn, &assertion_id, until)? {
            return Ok(Err(Refusal::Replayed));
        }
        tenant::federation::find_user(conn, &domain, immutable_id.as_deref(), upn.as_deref())
    })
    .await
    .map_err(|e| Refusal::Malformed(e.to_string()))??;
    Ok(Verified { user, multi_factor })
}

/// GET /federation/oidc/callback: the identity provider's answer.
pub async fn oidc_callback(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<Params>,
) -> Response {
    let key = q.get("state").cloned().unwrap_or_default();
    let browser = crate::oidc::flow::cookie(&headers, binding_cookie_name(&state));
    answer(&state, "oidc", key, browser, async |state, pending| verify_oidc(state, pending, &q).await).await
}

async fn verify_oidc(state: &Arc<AppState>, pending: &Pending, q: &Params) -> Result<Verified, Refusal> {
    if let Some(error) = q.get("error") {
        return Err(Refusal::IdpError(printable(&format!(
            "{error}: {}",
            q.get("error_description").map(String::as_str).unwrap_or_default()
        ))));
    }
    let code = q.get("code").filter(|c| !c.is_empty()).ok_or_else(|| Refusal::Malformed("no code".into()))?;
    let name = pending.domain.clone();
    let federation = db(state, move |conn| tenant::federation::load(conn, &name))
        .await
        .map_err(|e| Refusal::Malformed(e.to_string()))?
        .ok_or_else(|| Refusal::IdpError("the domain is no longer federated".into()))?;
    let Federation::Oidc(idp) = federation else {
        return Err(Refusal::IdpError("the domain is federated over SAML, not OpenID Connect".into()));
    };
    let (meta, mut keys) = state.federation.provider(&idp.issuer, false).await?;
    let token = state.federation.redeem(&idp, &meta, code, &pending.verifier, &oidc_redirect_uri(state)).await?;
    // A key we do not know yet: the provider rotated; fetch its keys once more.
    if let Some(kid) = oidc::key_id(&token)
        && !keys["keys"].as_array().is_some_and(|ks| ks.iter().any(|k| k["kid"].as_str() == Some(&kid)))
    {
        keys = state.federation.provider(&idp.issuer, true).await?.1;
    }
    let expected = Expected { issuer: &idp.issuer, client_id: &idp.client_id, nonce: &pending.nonce, now: now_secs() };
    let claims = oidc::validate_id_token(&token, &keys, &expected)?;
    let immutable_id = claims[&idp.immutable_id_claim].as_str().map(str::to_string);
    let upn = idp.upn_claim.as_ref().and_then(|c| claims[c].as_str()).map(str::to_string);
    if immutable_id.is_none() && upn.is_none() {
        return Err(Refusal::NoImmutableId(idp.immutable_id_claim.clone()));
    }
    let amr: Vec<String> = claims["amr"]
        .as_array()
        .map(|values| values.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let multi_factor = tenant::policy::federated_amr_is_mfa(&amr);
    let domain = pending.domain.clone();
    let user =
        db(state, move |conn| tenant::federation::find_user(conn, &domain, immutable_id.as_deref(), upn.as_deref()))
            .await
            .map_err(|e| Refusal::Malformed(e.to_string()))??;
    Ok(Verified { user, multi_factor })
}
