//! The OpenID Connect provider's endpoints and sign-in pages.
//!
//! - [`flow`]: the endpoints (discovery, authorize + sign-in, token, userinfo, logout).
//! - [`pages`]: the sign-in pages (HTML that works without JavaScript; one
//!   script, `/webauthn.js`, adds the passkey buttons where WebAuthn exists).
//! - [`myapps`]: a small relying party of our own, for the demo.
//! - [`account`]: Security info, the signed-in user's own second factors.
//! - [`forgot`]: "Forgot your password?" — a self-service reset proven with
//!   an authenticator app, written back on-premises.
//! - [`passkey`]: the script and the endpoints passkey ceremonies start from.
//! - [`second_step`]: after the first step — the second factor, or
//!   registering one, as the sign-in policy says.

pub mod account;
pub mod flow;
pub mod forgot;
pub mod myapps;
pub mod pages;
pub mod passkey;
pub mod second_step;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::scim::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(landing))
        .route("/.well-known/openid-configuration", get(flow::discovery))
        .route("/oauth2/jwks", get(flow::jwks))
        .route("/oauth2/authorize", get(flow::authorize_get).post(flow::authorize_post))
        .route("/oauth2/token", axum::routing::post(flow::token))
        .route("/oauth2/userinfo", get(flow::userinfo).post(flow::userinfo))
        .route("/oauth2/logout", get(flow::logout).post(flow::logout_confirmed))
        .route("/federation/oidc/callback", get(crate::federation::oidc_callback))
        .route("/federation/saml/acs", axum::routing::post(crate::federation::saml_acs))
        .route("/account", get(account::page).post(account::post))
        .route("/account/forgot-password", get(forgot::page).post(forgot::post))
        .route("/account/passkey", axum::routing::post(passkey::registration_options))
        .route("/account/sign-in", get(account::sign_in))
        .route("/account/apps", get(account::apps))
        .route("/account/callback", get(account::callback))
        .route("/oauth2/passkey", axum::routing::post(passkey::sign_in_options))
        .route("/webauthn.js", get(passkey::script))
        .route("/myapps", get(myapps::home))
        .route("/myapps/callback", get(myapps::callback))
        .route("/myapps/logout", get(myapps::logout))
}

/// GET /: a small page with the ways in for a person; the same links as
/// JSON for a client that asks for JSON only.
async fn landing(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if accept.contains("application/json") && !accept.contains("text/html") {
        let links = serde_json::json!({
            "issuer": state.issuer,
            "openid_configuration": format!("{}/.well-known/openid-configuration", state.issuer),
            "scim": state.base_url,
            "myapps": format!("{}/myapps", state.issuer),
        });
        return axum::Json(links).into_response();
    }
    let store = state.store.clone();
    let branding = tokio::task::spawn_blocking(move || pages::Branding::load(&store.read())).await.unwrap_or_default();
    Html(pages::landing_page(&branding, &state.issuer)).into_response()
}
