//! The browser's half of passkeys: `/webauthn.js` (the one script the
//! sign-in pages load) and the endpoints it fetches a ceremony's options
//! from. The answers come back through the ordinary form posts
//! (`step=passkey`, `step=code`, `/account` `action=add-passkey`), so a
//! sign-in with a passkey ends exactly like one with a password.
//!
//! Every options request carries the pages' double-submit CSRF token; the
//! ceremony state waits in the database (single use, five minutes).

use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::flow::{Params, checked_csrf, db, session_user};
use crate::scim::AppState;
use tenant::passkeys::Ceremony;

/// GET /webauthn.js.
pub async fn script() -> Response {
    let mut resp = include_str!("webauthn.js").into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn refused(status: StatusCode, message: &str) -> Response {
    answer(status, json!({"error": message}))
}

fn ceremony(result: tenant::Result<Option<Ceremony>>, missing: &str) -> Response {
    match result {
        Ok(Some(c)) => answer(StatusCode::OK, json!({"token": c.token, "options": c.options})),
        Ok(None) => refused(StatusCode::BAD_REQUEST, missing),
        Err(e) => {
            tracing::error!(error = %e, "passkey options");
            refused(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong. Try again.")
        }
    }
}

/// The relying party, for a request from one of our pages (its CSRF token).
fn relying_party(
    state: &AppState,
    headers: &HeaderMap,
    p: &Params,
) -> Result<Arc<tenant::passkeys::RelyingParty>, (StatusCode, &'static str)> {
    let Some(rp) = state.passkeys.clone() else {
        return Err((StatusCode::NOT_FOUND, "Passkeys are not available here."));
    };
    if checked_csrf(state, headers, p).is_none() {
        return Err((StatusCode::FORBIDDEN, "This page expired. Reload it and try again."));
    }
    Ok(rp)
}

/// POST /oauth2/passkey: the options of a sign-in with a passkey alone
/// (`purpose=sign-in`, and `reset` for a forgotten password's proof), of the passkey step after a password
/// (`purpose=second-factor` with the sign-in's `challenge`), or of
/// registering one during a sign-in the policy interrupted (`enrol`).
pub async fn sign_in_options(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(p): Form<Params>,
) -> Response {
    let rp = match relying_party(&state, &headers, &p) {
        Ok(rp) => rp,
        Err((status, why)) => return refused(status, why),
    };
    let challenge = p.get("challenge").cloned().unwrap_or_default();
    match p.get("purpose").map(String::as_str) {
        // A self-service password reset's proof: options that name no one,
        // so they tell nothing about the account (see tenant::password_reset).
        Some("sign-in" | "reset") => {
            ceremony(db(&state, move |conn| tenant::passkeys::begin_sign_in(conn, &rp).map(Some)).await, "")
        }
        Some("enrol") => ceremony(
            db(&state, move |conn| tenant::signin::enrolment_passkey_step(conn, &rp, &challenge)).await,
            "This sign-in took too long, or the account has a sign-in method already. Sign in again.",
        ),
        Some("second-factor") => ceremony(
            db(&state, move |conn| tenant::signin::passkey_step(conn, &rp, &challenge)).await,
            "This sign-in took too long, or the account has no passkey. Sign in again.",
        ),
        _ => refused(StatusCode::BAD_REQUEST, "Unknown passkey request."),
    }
}

/// POST /account/passkey: the options to register a passkey for the
/// signed-in user.
pub async fn registration_options(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(p): Form<Params>,
) -> Response {
    let rp = match relying_party(&state, &headers, &p) {
        Ok(rp) => rp,
        Err((status, why)) => return refused(status, why),
    };
    let started = db(&state, move |conn| {
        let Some((user, auth)) = session_user(conn, &headers)? else { return Ok(None) };
        if !super::account::may_add_method(&auth, !tenant::mfa::methods(conn, &user.id)?.is_empty()) {
            return Ok(Some(Err(super::account::NOT_FRESH)));
        }
        let text = |key: &str| user.data.get(key).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        let (name, display) = (text("userName"), text("displayName"));
        tenant::passkeys::begin_registration(conn, &rp, &user.id, &name, &display).map(|c| Some(Ok(c)))
    })
    .await;
    match started {
        Ok(Some(Err(not_fresh))) => refused(StatusCode::FORBIDDEN, not_fresh),
        other => ceremony(
            other.map(|found| found.and_then(Result::ok)),
            "You are signed out. Sign in again, then add the passkey.",
        ),
    }
}
