//! "My Apps": a relying party of the tenant's own, so the demo shows a real
//! sign-in end to end. It uses the code flow with PKCE against our own
//! endpoints like any other client; its client id is the `myapps_client_id`
//! setting (`idbridge demo` registers it).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::flow::{exchange_code, urlencode};
use super::pages::{self, Branding};
use crate::scim::AppState;
use tenant::oidc::{clients, jwt, random_token};
use tenant::store::get_meta;
use tenant::util::sha256;

const TX_COOKIE: &str = "idb_myapps_tx";
const RP_COOKIE: &str = "idb_myapps";

pub fn redirect_uri(issuer: &str) -> String {
    format!("{issuer}/myapps/callback")
}

use super::flow::cookie;

fn with_cookie(mut resp: Response, state: &AppState, name: &str, value: &str, max_age: i64) -> Response {
    let secure = if state.issuer.starts_with("https://") { "; Secure" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{name}={value}; Path=/myapps; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    )) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// GET /myapps: who is signed in here, or a link that starts the sign-in.
pub async fn home(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let id_token = cookie(&headers, RP_COOKIE);
    let store = state.store.clone();
    let found = tokio::task::spawn_blocking(move || {
        let conn = store.lock();
        let client_id = get_meta(&conn, "myapps_client_id").ok().flatten();
        // Only an ID token issued to My Apps itself: any other token the
        // tenant signed (another client's, an access token) is no session here.
        let claims = id_token
            .and_then(|t| jwt::verify_own(&conn, &t).ok().flatten())
            .filter(|c| client_id.as_deref().is_some_and(|id| c["aud"] == id) && c.get("token_use").is_none());
        (Branding::load(&conn), client_id, claims)
    })
    .await;
    let Ok((branding, client_id, claims)) = found else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    };
    let Some(client_id) = client_id else {
        return (
            StatusCode::NOT_FOUND,
            Html(pages::message_page(
                &branding,
                "My Apps",
                "My Apps is not set up in this tenant (idbridge demo sets it up).",
            )),
        )
            .into_response();
    };
    if claims.is_some() {
        return Html(pages::myapps_page(&branding, claims.as_ref(), "")).into_response();
    }
    // A fresh transaction: state and PKCE verifier live in a short cookie.
    let (tx_state, verifier, nonce) = (random_token(), random_token() + &random_token(), random_token());
    let challenge = URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()));
    let url = format!(
        "/oauth2/authorize?client_id={}&redirect_uri={}&response_type=code&scope={}&state={tx_state}&nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256",
        urlencode(&client_id),
        urlencode(&redirect_uri(&state.issuer)),
        urlencode("openid profile email")
    );
    let page = Html(pages::myapps_page(&branding, None, &url)).into_response();
    with_cookie(page, &state, TX_COOKIE, &format!("{tx_state}.{verifier}.{nonce}"), 600)
}

/// GET /myapps/callback: checks state, redeems the code with the verifier,
/// checks the ID token and keeps it as this app's session.
pub async fn callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    let tx = cookie(&headers, TX_COOKIE).unwrap_or_default();
    let mut parts = tx.split('.');
    let (Some(tx_state), Some(verifier), Some(nonce)) = (parts.next(), parts.next(), parts.next()) else {
        return restart(&state,
            "Sign-in expired",
            "This sign-in is no longer in progress (it was started in another browser, finished already, or the tenant was restarted).",
        ).await;
    };
    if p.get("state").map(String::as_str) != Some(tx_state) {
        return restart(&state, "Sign-in expired", "This answer belongs to another sign-in; start a new one.").await;
    }
    if let Some(error) = p.get("error") {
        let message = format!("The sign-in did not complete ({error}).");
        return restart(&state, "Sign-in did not complete", &message).await;
    }
    let (code, verifier, nonce, issuer) =
        (p.get("code").cloned().unwrap_or_default(), verifier.to_string(), nonce.to_string(), state.issuer.clone());
    let store = state.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut conn = store.lock();
        let client_id = get_meta(&conn, "myapps_client_id")?.unwrap_or_default();
        let Some(client) = clients::get(&conn, &client_id)? else { return Ok(None) };
        let params: HashMap<String, String> = [
            ("code", code),
            ("redirect_uri", redirect_uri(&issuer)),
            ("code_verifier", verifier),
            ("grant_type", "authorization_code".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let tokens = match exchange_code(&mut conn, &issuer, &client, &params)? {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        let id_token = tokens["id_token"].as_str().unwrap_or_default().to_string();
        let claims = jwt::verify_own(&conn, &id_token)?;
        let valid =
            claims.as_ref().is_some_and(|c| c["nonce"] == Value::String(nonce) && c["aud"] == client.id.as_str());
        Ok::<_, tenant::TenantError>(valid.then_some(id_token))
    })
    .await;
    match result {
        Ok(Ok(Some(id_token))) => {
            let resp = Redirect::to("/myapps").into_response();
            with_cookie(with_cookie(resp, &state, TX_COOKIE, "", 0), &state, RP_COOKIE, &id_token, 3600)
        }
        _ => {
            restart(
                &state,
                "Sign-in expired",
                "The sign-in could not be completed: it took too long, was used already, or the tenant was restarted.",
            )
            .await
        }
    }
}

/// An explanation page with a link to start again (an expired or foreign sign-in).
async fn restart(state: &Arc<AppState>, title: &str, message: &str) -> Response {
    let store = state.store.clone();
    let branding = tokio::task::spawn_blocking(move || Branding::load(&store.read())).await.unwrap_or_default();
    let page = pages::restart_page(&branding, title, message, "/myapps", "Start again");
    (StatusCode::BAD_REQUEST, Html(page)).into_response()
}

/// GET /myapps/logout: forgets the app's session and signs out at the provider.
pub async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let hint = cookie(&headers, RP_COOKIE).unwrap_or_default();
    let url = format!(
        "/oauth2/logout?id_token_hint={}&post_logout_redirect_uri={}",
        urlencode(&hint),
        urlencode(&format!("{}/myapps", state.issuer))
    );
    with_cookie(Redirect::to(&url).into_response(), &state, RP_COOKIE, "", 0)
}
