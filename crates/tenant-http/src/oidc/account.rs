//! "Security info" (`/account`): the signed-in user's own second factors —
//! add a passkey (the options come from `/account/passkey`, see
//! [`super::passkey`]), add an authenticator app (a QR code and the key, confirmed with a
//! current code; the first one brings ten recovery codes, shown once),
//! remove one — and their recent sign-ins. The browser's sign-in session
//! (`idb_session`) is who is signed in; every form carries the sign-in
//! pages' double-submit CSRF token.

use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::flow::{
    Authenticated, Params, checked_csrf, cookie, csrf_cookie_name, csrf_is_ours, db, html_response, internal,
    mint_csrf, session_user, set_cookie, urlencode,
};
use super::pages::{self, AccountView, Branding};
use crate::scim::AppState;
use tenant::mfa;

/// How many of the user's own sign-ins the page lists.
const RECENT_SIGN_INS: usize = 10;

/// Adding a method takes a sign-in this recent (seconds)…
const FRESH_SECS: i64 = 600;

/// …and, for a user who has a method already, one that used it: a browser
/// left signed in, or a stolen session, cannot add its own way in.
pub(crate) fn may_add_method(auth: &Authenticated, has_method: bool) -> bool {
    tenant::util::now_secs() - auth.time <= FRESH_SECS && (!has_method || auth.methods.split(' ').any(|m| m == "mfa"))
}

/// GET /account/sign-in (`again=1`: authenticate again even when signed in):
/// Security info signs people in as a relying party of the tenant itself.
/// `next=apps`: back to My Apps afterwards (the state says so; it is not a
/// secret — the sign-in's product is the session, not the code).
pub async fn sign_in(State(state): State<Arc<AppState>>, Query(q): Query<Params>) -> Response {
    let again = q.get("again").is_some_and(|v| v == "1");
    let redirect = tenant::service::account_redirect_uri(&state.issuer);
    let then =
        if q.get("next").is_some_and(|n| n == "apps") { APPS_STATE.to_string() } else { tenant::util::random_token() };
    own_client_sign_in(&state, tenant::service::ACCOUNT_CLIENT_KEY, &redirect, &then, again).await
}

/// The state of a sign-in that returns to My Apps.
const APPS_STATE: &str = "apps";

/// To the sign-in pages as one of the tenant's own public clients (its id
/// kept in `meta` under `client_key`), back at `redirect_uri` with `state`
/// (`again`: sign in again even with a session). PKCE as every public
/// client must; the code is not redeemed: the sign-in's product is the
/// browser's fresh session.
pub(crate) async fn own_client_sign_in(
    state: &Arc<AppState>,
    client_key: &'static str,
    redirect_uri: &str,
    state_token: &str,
    again: bool,
) -> Response {
    let client_id = match db(state, move |conn| tenant::store::get_meta(conn, client_key)).await {
        Ok(Some(id)) => id,
        Ok(None) => return internal(tenant::TenantError::NotFound(format!("the tenant's own client {client_key}"))),
        Err(e) => return internal(e),
    };
    let challenge = URL_SAFE_NO_PAD.encode(tenant::util::sha256(tenant::util::random_token().as_bytes()));
    let mut url = format!(
        "/oauth2/authorize?client_id={}&redirect_uri={}&response_type=code&scope=openid&state={}&code_challenge={challenge}&code_challenge_method=S256",
        urlencode(&client_id),
        urlencode(redirect_uri),
        urlencode(state_token),
    );
    if again {
        url.push_str("&prompt=login");
    }
    Redirect::to(&url).into_response()
}

/// GET /account/callback: back from signing in (the new session cookie is set).
pub async fn callback(State(state): State<Arc<AppState>>, headers: HeaderMap, Query(q): Query<Params>) -> Response {
    match q.get("error") {
        Some(error) => {
            let csrf = mint_csrf(&state.csrf_key);
            let notice = format!("You were not signed in again ({error}).");
            let mut resp = overview(&state, &headers, &csrf, Some(&notice)).await;
            set_cookie(&mut resp, &state, csrf_cookie_name(&state), &csrf, 3600);
            resp
        }
        None if q.get("state").is_some_and(|s| s == APPS_STATE) => Redirect::to("/account/apps").into_response(),
        None => Redirect::to("/account").into_response(),
    }
}

/// GET /account/apps: "My Apps" — the SAML applications the signed-in user
/// may use, each a link that signs them in (IdP-initiated).
pub async fn apps(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let found = db(&state, move |conn| {
        let branding = Branding::load(conn);
        let Some((user, _)) = session_user(conn, &headers)? else { return Ok((branding, None)) };
        let apps: Vec<(String, String)> =
            tenant::saml_idp::apps_for(conn, &user)?.into_iter().map(|a| (a.id, a.name)).collect();
        Ok((branding, Some((user_name(&user.data), apps))))
    })
    .await;
    match found {
        Ok((branding, Some((name, apps)))) => {
            html_response(StatusCode::OK, pages::my_apps_page(&branding, &name, &apps))
        }
        Ok((branding, None)) => html_response(StatusCode::UNAUTHORIZED, pages::my_apps_signed_out_page(&branding)),
        Err(e) => internal(e),
    }
}

/// GET /account.
pub async fn page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    // The token of this browser, if it has one of ours: a form open in
    // another tab keeps working.
    let csrf = cookie(&headers, csrf_cookie_name(&state))
        .filter(|c| csrf_is_ours(&state.csrf_key, c))
        .unwrap_or_else(|| mint_csrf(&state.csrf_key));
    let mut resp = overview(&state, &headers, &csrf, None).await;
    set_cookie(&mut resp, &state, csrf_cookie_name(&state), &csrf, 3600);
    resp
}

/// The page of the signed-in user, or where to sign in.
async fn overview(state: &Arc<AppState>, headers: &HeaderMap, csrf: &str, notice: Option<&str>) -> Response {
    let headers = headers.clone();
    let passkeys = state.passkeys.is_some();
    let found = db(state, move |conn| {
        let branding = Branding::load(conn);
        let Some((user, auth)) = session_user(conn, &headers)? else { return Ok((branding, None)) };
        let name = user_name(&user.data);
        let methods = mfa::methods(conn, &user.id)?;
        let may_add = may_add_method(&auth, !methods.is_empty());
        let left = mfa::recovery_codes_left(conn, &user.id)?;
        let filter = tenant::signin_log::Filter { user_name: Some(name.clone()), ..Default::default() };
        let recent = tenant::signin_log::query(conn, &filter, RECENT_SIGN_INS)?;
        let may_change_password = tenant::signin::writes_back(conn, &user)?;
        Ok((
            branding,
            Some(AccountView {
                user_name: name,
                methods,
                recovery_codes_left: left,
                recent,
                passkeys,
                may_add,
                may_change_password,
            }),
        ))
    })
    .await;
    match found {
        Ok((branding, Some(view))) => {
            html_response(StatusCode::OK, pages::account_page(&branding, &view, csrf, notice))
        }
        Ok((branding, None)) => signed_out(&branding),
        Err(e) => internal(e),
    }
}

fn signed_out(branding: &Branding) -> Response {
    html_response(StatusCode::UNAUTHORIZED, pages::account_signed_out_page(branding))
}

fn user_name(data: &Value) -> String {
    data.get("userName").and_then(Value::as_str).unwrap_or_default().to_string()
}

/// POST /account: `action` = `offer` (a new key to add), `confirm` (the
/// key with a current code and a label), `add-passkey` (the browser's
/// answer to a registration), or `remove` (a method by id).
pub async fn post(State(state): State<Arc<AppState>>, headers: HeaderMap, Form(p): Form<Params>) -> Response {
    let Some(csrf) = checked_csrf(&state, &headers, &p) else {
        let branding = db(&state, |conn| Ok(Branding::load(conn))).await.unwrap_or_default();
        return html_response(
            StatusCode::BAD_REQUEST,
            pages::message_page(
                &branding,
                "Form expired",
                "This form expired or did not come from this page (the security token is missing). Open Security info again.",
            ),
        );
    };
    let action = p.get("action").cloned().unwrap_or_default();
    if action == "change-password" {
        return change_password(&state, &headers, &csrf, &p).await;
    }
    let (session_headers, params) = (headers.clone(), p.clone());
    let issuer_name = state.issuer.clone();
    let passkeys = state.passkeys.clone();
    let done = db(&state, move |conn| {
        let branding = Branding::load(conn);
        let Some((user, auth)) = session_user(conn, &session_headers)? else {
            return Ok((branding, Outcome::SignedOut));
        };
        let name = user_name(&user.data);
        let adding = matches!(action.as_str(), "offer" | "confirm" | "add-passkey");
        if adding && !may_add_method(&auth, !mfa::methods(conn, &user.id)?.is_empty()) {
            return Ok((branding, Outcome::NotFresh));
        }
        let issuer = if branding.name.trim().is_empty() { issuer_name } else { branding.name.clone() };
        let outcome = match action.as_str() {
            "offer" => Outcome::Enrol { offer: mfa::offer_totp(&issuer, &name), error: None, label: String::new() },
            "confirm" => {
                let secret = params.get("secret").cloned().unwrap_or_default();
                let code = params.get("code").cloned().unwrap_or_default();
                let label = params.get("label").cloned().unwrap_or_default();
                match mfa::confirm_totp(conn, &user.id, &secret, &code, &label)? {
                    Ok(enrolled) => Outcome::Enrolled(enrolled),
                    Err(e) => Outcome::Enrol {
                        offer: mfa::totp_offer(&issuer, &name, &secret),
                        error: Some(e.to_string()),
                        label,
                    },
                }
            }
            "add-passkey" => {
                let Some(rp) = passkeys else { return Ok((branding, Outcome::Unknown)) };
                let token = params.get("passkey_token").cloned().unwrap_or_default();
                let response = params.get("credential").cloned().unwrap_or_default();
                let label = params.get("label").cloned().unwrap_or_default();
                match tenant::passkeys::finish_registration(conn, &rp, &user.id, &token, &response, &label)? {
                    Ok(enrolled) => Outcome::Enrolled(enrolled),
                    Err(e) => Outcome::PasskeyRefused(e.to_string()),
                }
            }
            "remove" => {
                let method = params.get("method").cloned().unwrap_or_default();
                if mfa::remove(conn, &name, &user.id, &method)? { Outcome::Removed } else { Outcome::Unknown }
            }
            _ => Outcome::Unknown,
        };
        Ok((branding, outcome))
    })
    .await;
    let (branding, outcome) = match done {
        Ok(d) => d,
        Err(e) => return internal(e),
    };
    match outcome {
        Outcome::SignedOut => signed_out(&branding),
        Outcome::Enrol { offer, error, label } => html_response(
            StatusCode::OK,
            pages::enrol_page(&branding, &offer, &qr_svg(&offer.uri), &csrf, &label, error.as_deref()),
        ),
        Outcome::Enrolled(enrolled) => html_response(StatusCode::OK, pages::enrolled_page(&branding, &enrolled)),
        // Post, redirect, get: Back never re-sends the removal.
        Outcome::Removed => Redirect::to("/account").into_response(),
        Outcome::Unknown => overview(&state, &headers, &csrf, Some("That method was already removed.")).await,
        Outcome::PasskeyRefused(why) => overview(&state, &headers, &csrf, Some(&why)).await,
        Outcome::NotFresh => overview(&state, &headers, &csrf, Some(NOT_FRESH)).await,
    }
}

/// The signed-in user changes their password: written on-premises first
/// (password writeback), then here; every session of the user ends, this
/// one too, so the page says to sign in again.
async fn change_password(state: &Arc<AppState>, headers: &HeaderMap, csrf: &str, p: &Params) -> Response {
    let session_headers = headers.clone();
    let found = db(state, move |conn| {
        let branding = Branding::load(conn);
        let user = session_user(conn, &session_headers)?.map(|(user, _)| user);
        let allowed = match &user {
            Some(u) => tenant::signin::writes_back(conn, u)?,
            None => false,
        };
        Ok((branding, user, allowed))
    })
    .await;
    let (branding, user, allowed) = match found {
        Ok(f) => f,
        Err(e) => return internal(e),
    };
    let Some(user) = user else { return signed_out(&branding) };
    if !allowed {
        return overview(state, headers, csrf, Some("Your password cannot be changed here.")).await;
    }
    let current = p.get("password").cloned().unwrap_or_default();
    let new = p.get("new_password").cloned().unwrap_or_default();
    if let Some(problem) = super::flow::new_password_problem(&current, &new, p.get("confirm").map(String::as_str)) {
        return overview(state, headers, csrf, Some(problem)).await;
    }
    let name = user_name(&user.data);
    let request = tenant::writeback::Request::Change { current };
    match crate::writeback::write_password(state, &name, &new, request).await {
        Ok(Ok(_)) => html_response(
            StatusCode::OK,
            pages::message_page(
                &branding,
                "Password changed",
                "Your password was changed, here and on your organisation's network. Sign in again with the new one.",
            ),
        ),
        Ok(Err(e)) => overview(state, headers, csrf, Some(&e.to_string())).await,
        Err(e) => internal(e),
    }
}

enum Outcome {
    SignedOut,
    Enrol { offer: mfa::TotpOffer, error: Option<String>, label: String },
    Enrolled(mfa::Enrolled),
    Removed,
    Unknown,
    PasskeyRefused(String),
    NotFresh,
}

/// Why adding waits for a new sign-in.
pub(crate) const NOT_FRESH: &str =
    "To add a sign-in method, verify it’s you first (sign in again, with your current method if you have one).";

/// The otpauth URI as an inline SVG QR code (made here: the key never
/// goes to a third-party service), without the XML prolog HTML does not take.
pub(crate) fn qr_svg(uri: &str) -> String {
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => {
            let svg = code.render::<qrcode::render::svg::Color>().min_dimensions(200, 200).build();
            match svg.find("<svg") {
                Some(start) => svg.get(start..).unwrap_or_default().to_string(),
                None => String::new(),
            }
        }
        Err(_) => String::new(),
    }
}
