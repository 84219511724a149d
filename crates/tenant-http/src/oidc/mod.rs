//! The OpenID Connect provider's endpoints and sign-in pages.
//!
//! - [`flow`]: the endpoints (discovery, authorize + sign-in, token, userinfo, logout).
//! - [`pages`]: the sign-in pages (HTML without JavaScript).
//! - [`myapps`]: a small relying party of our own, for the demo.

pub mod flow;
pub mod myapps;
pub mod pages;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::scim::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/.well-known/openid-configuration", get(flow::discovery))
        .route("/oauth2/jwks", get(flow::jwks))
        .route("/oauth2/authorize", get(flow::authorize_get).post(flow::authorize_post))
        .route("/oauth2/token", axum::routing::post(flow::token))
        .route("/oauth2/userinfo", get(flow::userinfo).post(flow::userinfo))
        .route("/oauth2/logout", get(flow::logout).post(flow::logout_confirmed))
        .route("/federation/oidc/callback", get(crate::federation::oidc_callback))
        .route("/federation/saml/acs", axum::routing::post(crate::federation::saml_acs))
        .route("/myapps", get(myapps::home))
        .route("/myapps/callback", get(myapps::callback))
        .route("/myapps/logout", get(myapps::logout))
}
