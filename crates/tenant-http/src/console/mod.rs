//! The admin console under `/admin`: server-rendered pages that work
//! without JavaScript.
//!
//! Administrators sign in through the tenant's own sign-in pages: the
//! console is a relying party of the tenant (code flow with PKCE, its
//! client registered when the tenant starts), so lockout, pass-through
//! and federated domains apply as for any application. A console session
//! is a row in the database (the cookie holds a random value, only its
//! hash is stored) with its own CSRF token that every form carries.
//!
//! Every request is checked here, on the server: the user's role is read
//! afresh each time ([`tenant::console::role_of`]), a write needs the
//! right [`Permission`] and the session's CSRF token, and a refusal is
//! answered 403 and written to the audit log.

mod pages;
pub mod view;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tenant::db::Connection;

use crate::oidc::flow::{cookie, exchange_code, urlencode};
use crate::scim::{ApiError, AppState, db};
use tenant::console::{self, Permission};
use tenant::oidc::{clients, jwt, random_token};
use tenant::store::get_meta;
use tenant::util::sha256;
use view::Viewer;

const SESSION_COOKIE: &str = "idb_console";
const TX_COOKIE: &str = "idb_console_tx";

/// The console's pages: strict, and no inline style or script at all.
const CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin", get(pages::overview))
        .route("/admin/console.css", get(stylesheet))
        .route("/admin/sign-in", get(sign_in))
        .route("/admin/callback", get(callback))
        .route("/admin/sign-out", post(sign_out))
        .route("/admin/users", get(pages::users))
        .route("/admin/users/{id}", get(pages::user))
        .route("/admin/users/{id}/{action}", post(pages::user_action))
        .route("/admin/groups", get(pages::groups))
        .route("/admin/groups/{id}", get(pages::group))
        .route("/admin/lineage/{id}", post(pages::request_lineage))
        .route("/admin/sync", get(pages::sync))
        .route("/admin/sync/{connector}", get(pages::connector))
        .route("/admin/sync/{connector}/allow-deletions", post(pages::allow_deletions))
        .route("/admin/sign-ins", get(pages::sign_ins))
        .route("/admin/audit", get(pages::audit))
        .route("/admin/domains", get(pages::domains))
        .route("/admin/applications", get(pages::applications).post(pages::add_application))
        .route("/admin/applications/{id}/{action}", post(pages::application_action))
        .route("/admin/agents", get(pages::agents))
        .route("/admin/agents/{id}/revoke", post(pages::revoke_agent))
        .route("/admin/branding", get(pages::branding).post(pages::save_branding))
        .route("/admin/branding/preview", get(pages::preview_branding))
        .route("/admin/roles", get(pages::roles).post(pages::assign_role))
        .route("/admin/roles/remove", post(pages::remove_role))
        .route("/admin/{*rest}", get(not_found_page).post(not_found_page))
        .layer(axum::middleware::map_response(console_headers))
}

/// Every console answer: no framing, no caching, no referrer, and the CSP
/// (a page that set its own, the branding preview, keeps it).
async fn console_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn stylesheet() -> Response {
    let mut resp = view::CSS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    resp
}

/// A signed-in administrator, checked for this request.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    pub(crate) viewer: Viewer,
}

/// A handler that takes an `Admin` runs only for a signed-in administrator;
/// anyone else gets the answer [`signed_in`] gives (sign-in, or 403).
impl axum::extract::FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        signed_in(state, &parts.headers).await
    }
}

impl Admin {
    /// The audit log's actor for what this administrator does.
    pub(crate) fn actor(&self) -> String {
        format!("console:{}", self.viewer.name)
    }

    pub(crate) fn may(&self, permission: Permission) -> bool {
        self.viewer.role.may(permission)
    }
}

/// An HTML answer with a status.
pub(crate) fn html(status: StatusCode, page: String) -> Response {
    (status, axum::response::Html(page)).into_response()
}

pub(crate) fn message(status: StatusCode, viewer: Option<&Viewer>, title: &str, text: &str) -> Response {
    let body = maud::html! { p { (text) } p { a href="/admin" { "Back to the overview" } } };
    html(status, view::page(viewer, "", title, body))
}

pub(crate) fn not_found(viewer: Option<&Viewer>, what: &str) -> Response {
    message(StatusCode::NOT_FOUND, viewer, "Not found", &format!("There is no {what} here. It may have been deleted."))
}

async fn not_found_page(admin: Admin) -> Response {
    not_found(Some(&admin.viewer), "page")
}

pub(crate) fn failed(e: &ApiError) -> Response {
    if e.0.status == 404 {
        return message(StatusCode::NOT_FOUND, None, "Not found", &e.0.detail);
    }
    tracing::error!(error = %e.0.detail, "console request failed");
    message(
        StatusCode::INTERNAL_SERVER_ERROR,
        None,
        "Something went wrong",
        "The request failed; the tenant's log says why.",
    )
}

/// Reads on a blocking thread (a read-only connection); an error is a page.
pub(crate) async fn read<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&Connection) -> tenant::Result<T> + Send + 'static,
) -> Result<T, Response> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || work(&store.read())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failed(&ApiError::from(e))),
        Err(_) => Err(message(StatusCode::INTERNAL_SERVER_ERROR, None, "Something went wrong", "internal error")),
    }
}

/// Runs a change through the tenant's service (its own transaction and
/// audit entry) on a blocking thread.
pub(crate) async fn change<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&tenant::Tenant) -> tenant::Result<T> + Send + 'static,
) -> Result<T, tenant::TenantError> {
    let tenant = state.tenant.clone();
    tokio::task::spawn_blocking(move || work(&tenant))
        .await
        .unwrap_or_else(|e| Err(tenant::TenantError::Invalid(format!("worker failed: {e}"))))
}

/// The administrator of this request, or the answer to send instead: to
/// the sign-in when there is no session, 403 when the user holds no role.
pub(crate) async fn signed_in(state: &Arc<AppState>, headers: &HeaderMap) -> Result<Admin, Response> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else {
        return Err(Redirect::to("/admin/sign-in").into_response());
    };
    let found = db(state, move |conn| {
        let Some(session) = console::session(conn, &token)? else { return Ok(None) };
        let role = console::role_of(conn, &session.user_id)?;
        let user = tenant::objects::load(conn, Some(tenant::objects::Kind::User), &session.user_id)?;
        if role.is_none() {
            // The role was taken away (or the user disabled): the session ends now.
            console::close_session(conn, &token)?;
        }
        Ok(Some((session, role, user.map(|u| console::display_of(&u)).unwrap_or_default())))
    })
    .await;
    match found {
        Ok(Some((session, Some(role), name))) => Ok(Admin { viewer: Viewer { name, role, csrf: session.csrf } }),
        Ok(Some((_, None, name))) => Err(no_role(&name)),
        Ok(None) => Err(Redirect::to("/admin/sign-in").into_response()),
        Err(e) => Err(failed(&e)),
    }
}

fn no_role(name: &str) -> Response {
    message(
        StatusCode::FORBIDDEN,
        None,
        "No administrator role",
        &format!(
            "{name} has no administrator role in this tenant. A global administrator can assign one (idbridge tenant role assign)."
        ),
    )
}

/// For a form post: the administrator, with the CSRF token checked and the
/// permission held. A refusal is audited and answered 403.
pub(crate) async fn authorised(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    permission: Permission,
    what: &str,
) -> Result<Admin, Response> {
    let admin = signed_in(state, headers).await?;
    let given = form.get("csrf").map(String::as_bytes).unwrap_or_default();
    let expected = admin.viewer.csrf.as_bytes();
    let csrf_ok = given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
    let refusal = if !csrf_ok {
        Some((
            "console-csrf-refused",
            "This form is not valid any more (or came from another site). Reload the page and try again.",
        ))
    } else if !admin.may(permission) {
        Some(("console-denied", "Your role does not allow this."))
    } else {
        None
    };
    if let Some((action, text)) = refusal {
        let detail = json!({"request": what, "role": admin.viewer.role.as_str(), "user": admin.viewer.name});
        let actor = admin.actor();
        if let Err(e) = change(state, move |t| t.audit_refusal(&actor, action, &detail)).await {
            tracing::error!(error = %e, "the refused console request could not be audited");
        }
        return Err(message(StatusCode::FORBIDDEN, Some(&admin.viewer), "Not allowed", text));
    }
    Ok(admin)
}

fn set_cookie(resp: &mut Response, state: &AppState, name: &str, value: &str, max_age: i64, same_site: &str) {
    let secure = if state.issuer.starts_with("https://") { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path=/admin; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}");
    if let Ok(v) = HeaderValue::from_str(&text) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// GET /admin/sign-in: starts the code flow with PKCE at the tenant's own
/// authorization endpoint; state, verifier and nonce wait in a short cookie.
async fn sign_in(State(state): State<Arc<AppState>>) -> Response {
    let client_id = match read(&state, |conn| get_meta(conn, "console_client_id")).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "Console not ready",
                "The admin console registers itself when the tenant starts; restart the tenant.",
            );
        }
        Err(resp) => return resp,
    };
    let (tx_state, verifier, nonce) = (random_token(), random_token() + &random_token(), random_token());
    let challenge = URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()));
    let url = format!(
        "/oauth2/authorize?client_id={}&redirect_uri={}&response_type=code&scope=openid%20profile&state={tx_state}&nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256",
        urlencode(&client_id),
        urlencode(&tenant::service::console_redirect_uri(&state.issuer)),
    );
    let mut resp = Redirect::to(&url).into_response();
    set_cookie(&mut resp, &state, TX_COOKIE, &format!("{tx_state}.{verifier}.{nonce}"), 600, "Lax");
    resp
}

/// GET /admin/callback: checks state, redeems the code with the verifier,
/// checks the ID token, then the user's role, and opens a console session.
async fn callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    let expired = || {
        let body = maud::html! {
            p { "This sign-in is no longer in progress (it took too long, finished already, or was started elsewhere)." }
            p { a href="/admin/sign-in" { "Sign in again" } }
        };
        html(StatusCode::BAD_REQUEST, view::page(None, "", "Sign-in expired", body))
    };
    let tx = cookie(&headers, TX_COOKIE).unwrap_or_default();
    let mut parts = tx.split('.');
    let (Some(tx_state), Some(verifier), Some(nonce)) = (parts.next(), parts.next(), parts.next()) else {
        return expired();
    };
    if p.get("state").map(String::as_str) != Some(tx_state) || p.contains_key("error") {
        return expired();
    }
    let (code, verifier, nonce, issuer) =
        (p.get("code").cloned().unwrap_or_default(), verifier.to_string(), nonce.to_string(), state.issuer.clone());
    let result = db(&state, move |conn| {
        let client_id = get_meta(conn, "console_client_id")?.unwrap_or_default();
        let Some(client) = clients::get(conn, &client_id)? else { return Ok(None) };
        let params: HashMap<String, String> = [
            ("code", code),
            ("redirect_uri", tenant::service::console_redirect_uri(&issuer)),
            ("code_verifier", verifier),
            ("grant_type", "authorization_code".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let Ok(tokens) = exchange_code(conn, &issuer, &client, &params)? else { return Ok(None) };
        let claims = jwt::verify_own(conn, tokens["id_token"].as_str().unwrap_or_default())?;
        let Some(user_id) = claims
            .filter(|c| c["nonce"] == Value::String(nonce) && c["aud"] == client.id.as_str())
            .and_then(|c| c["sub"].as_str().map(str::to_string))
        else {
            return Ok(None);
        };
        let name = tenant::objects::load(conn, Some(tenant::objects::Kind::User), &user_id)?
            .map(|u| console::display_of(&u))
            .unwrap_or_default();
        let session = match console::role_of(conn, &user_id)? {
            Some(_) => Some(console::open_session(conn, &user_id)?),
            None => None,
        };
        Ok(Some((name, session)))
    })
    .await;
    let mut resp = match result {
        Ok(Some((_, Some(session)))) => {
            let mut resp = Redirect::to("/admin").into_response();
            set_cookie(&mut resp, &state, SESSION_COOKIE, &session, console::SESSION_SECS, "Strict");
            resp
        }
        Ok(Some((name, None))) => {
            let detail = json!({"request": "sign-in", "user": name});
            let actor = format!("console:{name}");
            if let Err(e) = change(&state, move |t| t.audit_refusal(&actor, "console-denied", &detail)).await {
                tracing::error!(error = %e, "the refused console sign-in could not be audited");
            }
            no_role(&name)
        }
        Ok(None) => return expired(),
        Err(e) => return failed(&e),
    };
    set_cookie(&mut resp, &state, TX_COOKIE, "", 0, "Lax");
    resp
}

/// POST /admin/sign-out: ends the console session and the browser's
/// sign-in session at the tenant (so the next visit asks for the password).
async fn sign_out(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    if let Err(resp) = authorised(&state, &headers, &form, Permission::Read, "sign-out").await {
        return resp;
    }
    let console_token = cookie(&headers, SESSION_COOKIE).unwrap_or_default();
    let browser_token = cookie(&headers, crate::oidc::flow::SESSION_COOKIE);
    let ended = db(&state, move |conn| {
        console::close_session(conn, &console_token)?;
        if let Some(token) = browser_token {
            conn.execute("DELETE FROM sessions WHERE hash = ?1", tenant::db::params![sha256(token.as_bytes())])
                .map_err(tenant::TenantError::from)?;
        }
        Ok(())
    })
    .await;
    if let Err(e) = ended {
        return failed(&e);
    }
    let body = maud::html! { p { "You are signed out of the admin console." } p { a href="/admin/sign-in" { "Sign in again" } } };
    let mut resp = html(StatusCode::OK, view::page(None, "", "Signed out", body));
    set_cookie(&mut resp, &state, SESSION_COOKIE, "", 0, "Strict");
    crate::oidc::flow::clear_session_cookie(&mut resp, &state);
    resp
}
