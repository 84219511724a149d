//! "Forgot your password?" (`/account/forgot-password`): the user name, a
//! passkey or a code from the user's authenticator app, the new password — set
//! on-premises through an agent, then here (`tenant::password_reset`).
//! Every form is CSRF-checked (the sign-in pages' double-submit token); the
//! pages are the same whoever the name belongs to.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::flow::{
    Params, checked_csrf, cookie, csrf_cookie_name, csrf_is_ours, db, html_response, internal, mint_csrf, set_cookie,
};
use super::pages::{self, Branding};
use crate::scim::AppState;
use tenant::password_reset::{self, ResetError};

/// The first page, with this browser's CSRF token.
pub async fn page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let csrf = cookie(&headers, csrf_cookie_name(&state))
        .filter(|c| csrf_is_ours(&state.csrf_key, c))
        .unwrap_or_else(|| mint_csrf(&state.csrf_key));
    let branding = match db(&state, |conn| Ok(Branding::load(conn))).await {
        Ok(b) => b,
        Err(e) => return internal(e),
    };
    let mut resp = html_response(StatusCode::OK, pages::forgot_name_page(&branding, &csrf, None));
    set_cookie(&mut resp, &state, csrf_cookie_name(&state), &csrf, 3600);
    resp
}

pub async fn post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<crate::serve::PeerAddr>,
    headers: HeaderMap,
    Form(p): Form<Params>,
) -> Response {
    let branding = match db(&state, |conn| Ok(Branding::load(conn))).await {
        Ok(b) => b,
        Err(e) => return internal(e),
    };
    let Some(csrf) = checked_csrf(&state, &headers, &p) else {
        let expired = "This page expired. Start again.";
        let fresh = mint_csrf(&state.csrf_key);
        let mut resp = html_response(StatusCode::OK, pages::forgot_name_page(&branding, &fresh, Some(expired)));
        set_cookie(&mut resp, &state, csrf_cookie_name(&state), &fresh, 3600);
        return resp;
    };
    let field = |name: &str| p.get(name).cloned().unwrap_or_default();
    let (username, token) = (field("username"), field("token"));
    let page = |html: String| html_response(StatusCode::OK, html);
    let passkeys = state.passkeys.is_some();
    match p.get("step").map(String::as_str) {
        Some("name") => {
            let name = username.trim().to_string();
            if name.is_empty() || name.chars().count() > 256 {
                return page(pages::forgot_name_page(
                    &branding,
                    &csrf,
                    Some("Enter your user name, like name@example.com."),
                ));
            }
            let asked = name.clone();
            match db(&state, move |conn| password_reset::begin(conn, &asked)).await {
                Ok(token) => page(pages::forgot_code_page(&branding, &csrf, &name, &token, passkeys, None)),
                Err(e) => internal(e),
            }
        }
        Some(step @ ("code" | "passkey")) => {
            let answer = match (step, state.passkeys.clone()) {
                ("passkey", Some(rp)) => tenant::signin::SecondFactorAnswer::NamelessPasskey {
                    rp,
                    token: field("passkey_token"),
                    response: field("credential"),
                },
                _ => tenant::signin::SecondFactorAnswer::Code(field("code")),
            };
            let origin = tenant::signin::Origin {
                address: tenant::net::client_address(
                    &state.trusted_proxies,
                    peer.0.ip(),
                    headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()),
                )
                .to_string(),
                application: None,
            };
            match password_reset::prove(&state.store, &token, answer, &origin, state.lockout).await {
                Ok(Ok(())) => page(pages::forgot_password_page(&branding, &csrf, &username, &token, None)),
                Ok(Err(e)) => {
                    page(pages::forgot_code_page(&branding, &csrf, &username, &token, passkeys, Some(&e.to_string())))
                }
                Err(e) => internal(e),
            }
        }
        Some("password") => {
            let lookup = token.clone();
            let name = match db(&state, move |conn| password_reset::proven_user(conn, &lookup)).await {
                Ok(Some(name)) => name,
                Ok(None) => {
                    return page(pages::forgot_name_page(&branding, &csrf, Some(&ResetError::Expired.to_string())));
                }
                Err(e) => return internal(e),
            };
            let new = field("new_password");
            if let Some(problem) = super::flow::new_password_problem("", &new, p.get("confirm").map(String::as_str)) {
                return page(pages::forgot_password_page(&branding, &csrf, &name, &token, Some(problem)));
            }
            let finished = password_reset::finish(&state.store, &state.pta, &token, &new).await;
            match &finished {
                Ok(Ok(_)) => crate::writeback::count(&state, "reset", None),
                Ok(Err(ResetError::Writeback(e))) => crate::writeback::count(&state, "reset", Some(e)),
                _ => {}
            }
            match finished {
                Ok(Ok(_)) => page(pages::message_page(
                    &branding,
                    "Password reset",
                    "Your password was reset, here and on your organisation's network. Sign in with the new one.",
                )),
                Ok(Err(ResetError::Expired)) => {
                    page(pages::forgot_name_page(&branding, &csrf, Some(&ResetError::Expired.to_string())))
                }
                Ok(Err(e)) => page(pages::forgot_password_page(&branding, &csrf, &name, &token, Some(&e.to_string()))),
                Err(e) => internal(e),
            }
        }
        _ => page(pages::forgot_name_page(&branding, &csrf, None)),
    }
}
