//! The tenant as a SAML identity provider over HTTP (`tenant::saml_idp`):
//! `/saml/{app}/metadata`, `/saml/{app}/sso` (HTTP-Redirect and HTTP-POST
//! AuthnRequests), `/saml/{app}/start` (IdP-initiated, the links of My
//! Apps), `/saml/{app}/slo` (SP-initiated Single Logout, HTTP-Redirect),
//! `/saml/callback` (back from the sign-in pages), and the page that posts
//! the signed Response to the application.
//!
//! The person signs in on the same pages as for OpenID Connect (lockout,
//! pass-through, federation, second factors): the IdP is a public client of
//! the tenant itself, like Security info; the sign-in's product is the
//! browser's session, and the pending SAML request waits under a token
//! carried as the `state`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use maud::html;

use crate::oidc::flow::{
    Params, SESSION_COOKIE, client_address, db, html_response, internal, session_hash, session_user,
};
use crate::oidc::pages::{self, Branding};
use crate::scim::AppState;
use crate::serve::PeerAddr;
use tenant::saml_idp::{self, Pending, SsoRefusal};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/saml/{app}/metadata", get(metadata))
        .route("/saml/{app}/sso", get(sso_redirect).post(sso_post))
        .route("/saml/{app}/start", get(start))
        .route("/saml/{app}/slo", get(single_logout))
        .route("/saml/callback", get(callback))
        .route("/saml/post.js", get(post_script))
}

/// GET /saml/{app}/metadata.
async fn metadata(State(state): State<Arc<AppState>>, Path(app): Path<String>) -> Response {
    let issuer = state.issuer.clone();
    match db(&state, move |conn| match saml_idp::app(conn, &app)? {
        Some(found) => saml_idp::metadata(conn, &issuer, &found).map(Some),
        None => Ok(None),
    })
    .await
    {
        Ok(Some(xml)) => {
            let mut resp = (StatusCode::OK, xml).into_response();
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/samlmetadata+xml"));
            resp
        }
        Ok(None) => (StatusCode::NOT_FOUND, "no such application").into_response(),
        Err(e) => internal(e),
    }
}

async fn refused(state: &Arc<AppState>, app: &str, refusal: SsoRefusal) -> Response {
    let (app_name, reason) = (app.to_string(), refusal.reason());
    let _ = db(state, move |conn| {
        tenant::audit::record(
            conn,
            "anonymous",
            "saml-sign-in-refused",
            None,
            Some(&app_name),
            Some(&serde_json::json!({"reason": reason})),
        )
    })
    .await;
    let branding = db(state, |conn| Ok(Branding::load(conn))).await.unwrap_or_default();
    html_response(StatusCode::BAD_REQUEST, pages::message_page(&branding, "Sign-in refused", &refusal.to_string()))
}

/// GET /saml/{app}/sso?SAMLRequest=…&RelayState=… (HTTP-Redirect binding).
async fn sso_redirect(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Query(q): Query<Params>,
    RawQuery(raw): RawQuery,
) -> Response {
    let from = Caller::new(&state, &peer, headers);
    sso(state, app, from, q, Some(raw.unwrap_or_default())).await
}

/// POST /saml/{app}/sso (HTTP-POST binding).
async fn sso_post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Form(p): Form<Params>,
) -> Response {
    let from = Caller::new(&state, &peer, headers);
    sso(state, app, from, p, None).await
}

/// The browser asking: its cookies, and its address for the sign-in log.
#[derive(Clone)]
struct Caller {
    headers: HeaderMap,
    address: String,
}

impl Caller {
    fn new(state: &AppState, peer: &PeerAddr, headers: HeaderMap) -> Caller {
        Caller { address: client_address(state, peer, &headers), headers }
    }
}

/// `raw_query`: the Redirect binding's query string as received (its
/// signature covers the encoded parameters); `None` for the POST binding.
async fn sso(state: Arc<AppState>, app: String, from: Caller, p: Params, raw_query: Option<String>) -> Response {
    let request = match p.get("SAMLRequest") {
        Some(value) => match saml_idp::parse_request(value, raw_query.is_some()) {
            Ok(r) => r,
            Err(refusal) => return refused(&state, &app, refusal).await,
        },
        None => return refused(&state, &app, SsoRefusal::Malformed("no SAMLRequest".into())).await,
    };
    let relay = p.get("RelayState").cloned();
    let (app_id, passive) = (app.clone(), request.is_passive);
    let begun = db(&state, move |conn| {
        let binding = match &raw_query {
            Some(raw) => saml_idp::Binding::Redirect { raw_query: raw },
            None => saml_idp::Binding::Post,
        };
        saml_idp::begin(conn, &app_id, &request, binding, relay.as_deref())
    })
    .await;
    let (token, pending) = match begun {
        Ok(Ok(found)) => found,
        Ok(Err(refusal)) => return refused(&state, &app, refusal).await,
        Err(e) => return internal(e),
    };
    // Signed in already, and the application does not insist on a fresh sign-in: answer at once.
    if !pending.force_authn {
        match answer(&state, &from, &pending, true).await {
            Ok(Some(resp)) => return resp,
            Ok(None) if passive => return refused(&state, &app, SsoRefusal::NotSignedIn).await,
            Ok(None) => {}
            Err(e) => return internal(e),
        }
    }
    sign_in_redirect(&state, &token, pending.force_authn).await
}

/// GET /saml/{app}/start: a sign-in started here (IdP-initiated), for a
/// link on a portal; the Response goes to the application's first ACS URL.
async fn start(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Response {
    let from = Caller::new(&state, &peer, headers);
    let app_id = app.clone();
    let (token, pending) = match db(&state, move |conn| saml_idp::begin_unsolicited(conn, &app_id)).await {
        Ok(Some(found)) => found,
        Ok(None) => return refused(&state, &app, SsoRefusal::UnknownServiceProvider(app.clone())).await,
        Err(e) => return internal(e),
    };
    match answer(&state, &from, &pending, true).await {
        Ok(Some(resp)) => resp,
        Ok(None) => sign_in_redirect(&state, &token, false).await,
        Err(e) => internal(e),
    }
}

/// To the sign-in pages, as the IdP's own client; back at /saml/callback
/// with `token` as the state (`again`: sign in again even with a session).
async fn sign_in_redirect(state: &Arc<AppState>, token: &str, again: bool) -> Response {
    let redirect = tenant::service::saml_redirect_uri(&state.issuer);
    crate::oidc::account::own_client_sign_in(state, tenant::service::SAML_CLIENT_KEY, &redirect, token, again).await
}

/// The page that posts the Response for the signed-in user, if there is
/// one — or the refusal, when the user may not use the application.
/// `from_session`: answered from an earlier sign-in (single sign-on), which
/// the sign-in log records as its own row; a sign-in that just happened on
/// the pages was logged there, so only a refusal is logged again.
async fn answer(
    state: &Arc<AppState>,
    from: &Caller,
    pending: &Pending,
    from_session: bool,
) -> tenant::Result<Option<Response>> {
    let (issuer, from, waiting) = (state.issuer.clone(), from.clone(), pending.clone());
    let made = db(state, move |conn| {
        let pending = waiting;
        let Some((user, auth)) = session_user(conn, &from.headers)? else { return Ok(None) };
        let session = session_hash(&from.headers);
        let mfa = auth.methods.split(' ').any(|m| m == "mfa");
        let name = user.data.get("userName").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        let who = saml_idp::SignedIn {
            user: &user,
            authn_instant: auth.time,
            mfa,
            session: session.as_deref().unwrap_or_default(),
        };
        let made = saml_idp::respond(conn, &issuer, &pending, who)?;
        let (action, detail, reason) = match &made {
            Ok(_) => ("saml-sign-in", serde_json::json!({"acs": pending.acs_url}), "ok"),
            Err(refusal) => ("saml-sign-in-refused", serde_json::json!({"reason": refusal.reason()}), refusal.reason()),
        };
        tenant::audit::record(conn, &name, action, Some(&user.id), Some(&pending.app_id), Some(&detail))?;
        if from_session || made.is_err() {
            let application = format!("saml:{}", pending.app_id);
            tenant::signin_log::record(
                conn,
                &tenant::signin_log::Attempt {
                    user_name: &name,
                    method: tenant::signin_log::Method::SingleSignOn,
                    success: made.is_ok(),
                    reason,
                    application: Some(&application),
                    address: Some(&from.address),
                },
            )?;
        }
        Ok(Some(made))
    })
    .await?;
    Ok(match made {
        Some(Ok(xml)) => Some(post_page(pending, &xml)),
        Some(Err(refusal)) => {
            let branding = db(state, |conn| Ok(Branding::load(conn))).await.unwrap_or_default();
            let page = pages::message_page(&branding, "Sign-in refused", &refusal.to_string());
            Some(html_response(StatusCode::FORBIDDEN, page))
        }
        None => None,
    })
}

/// The Response, posted to the ACS URL by the browser: a form with a button,
/// submitted by `/saml/post.js` where scripts run. Its CSP lets the form go
/// to that one origin.
fn post_page(pending: &Pending, xml: &str) -> Response {
    let encoded = STANDARD.encode(xml.as_bytes());
    let body = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Signing in" } script src="/saml/post.js" defer {} }
            body {
                form id="saml-post" method="post" action=(pending.acs_url) {
                    input type="hidden" name="SAMLResponse" value=(encoded);
                    @if let Some(relay) = &pending.relay_state { input type="hidden" name="RelayState" value=(relay); }
                    p { "Signing you in to the application…" }
                    button type="submit" { "Continue" }
                }
            }
        }
    };
    let mut resp = html_response(StatusCode::OK, body.into_string());
    let origin =
        tenant::util::check_web_url(&pending.acs_url).map(|u| u.origin().ascii_serialization()).unwrap_or_default();
    let csp = format!("default-src 'none'; script-src 'self'; form-action {origin}; frame-ancestors 'none'");
    if let Ok(v) = HeaderValue::from_str(&csp) {
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// GET /saml/callback?state=TOKEN&code=…: back from the sign-in pages.
async fn callback(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    Query(q): Query<Params>,
) -> Response {
    let from = Caller::new(&state, &peer, headers);
    let token = q.get("state").cloned().unwrap_or_default();
    let pending = match db(&state, move |conn| saml_idp::take(conn, &token)).await {
        Ok(Some(p)) => p,
        Ok(None) => return refused(&state, "", SsoRefusal::Expired).await,
        Err(e) => return internal(e),
    };
    if let Some(error) = q.get("error") {
        let branding = db(&state, |conn| Ok(Branding::load(conn))).await.unwrap_or_default();
        let text = format!("You were not signed in ({error}). Go back to the application and start again.");
        return html_response(StatusCode::OK, pages::message_page(&branding, "Not signed in", &text));
    }
    match answer(&state, &from, &pending, false).await {
        Ok(Some(resp)) => resp,
        Ok(None) => refused(&state, &pending.app_id, SsoRefusal::Expired).await,
        Err(e) => internal(e),
    }
}

/// GET /saml/{app}/slo?SAMLRequest=…&RelayState=…&SigAlg=…&Signature=…:
/// SP-initiated Single Logout (HTTP-Redirect). Ends the browser's session
/// when the request names it, then sends the signed LogoutResponse to the
/// application's logout URL — or shows "signed out" when it has none.
async fn single_logout(
    State(state): State<Arc<AppState>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Query(q): Query<Params>,
    RawQuery(raw): RawQuery,
) -> Response {
    let request = match q.get("SAMLRequest").map(|v| saml_idp::parse_logout_request(v, true)) {
        Some(Ok(r)) => r,
        Some(Err(refusal)) => return refused(&state, &app, refusal).await,
        None => return refused(&state, &app, SsoRefusal::Malformed("no SAMLRequest".into())).await,
    };
    let (issuer, app_id, relay) = (state.issuer.clone(), app.clone(), q.get("RelayState").cloned());
    let raw = raw.unwrap_or_default();
    let done = db(&state, move |conn| {
        let signed_in = session_user(conn, &headers)?;
        let hash = session_hash(&headers);
        let session = signed_in.as_ref().zip(hash.as_deref()).map(|((user, _), h)| (user, h));
        let answer = saml_idp::logout(conn, &issuer, &app_id, &request, &raw, session, relay.as_deref())?;
        if let Ok(a) = &answer {
            let (user_id, name) = a.user.clone().unzip();
            let detail = serde_json::json!({"status": a.status.word(), "ended": a.ended, "user": name});
            tenant::audit::record(
                conn,
                name.as_deref().unwrap_or("anonymous"),
                "saml-sign-out",
                user_id.as_deref(),
                Some(&app_id),
                Some(&detail),
            )?;
        }
        Ok(answer)
    })
    .await;
    let answer = match done {
        Ok(Ok(a)) => a,
        Ok(Err(refusal)) => return refused(&state, &app, refusal).await,
        Err(e) => return internal(e),
    };
    let mut resp = match &answer.redirect {
        Some(url) => axum::response::Redirect::to(url).into_response(),
        None => {
            let branding = db(&state, |conn| Ok(Branding::load(conn))).await.unwrap_or_default();
            let text = if answer.ended { "You are signed out." } else { "You are not signed in here." };
            html_response(StatusCode::OK, pages::message_page(&branding, "Signed out", text))
        }
    };
    if answer.ended {
        crate::oidc::flow::set_cookie(&mut resp, &state, SESSION_COOKIE, "", 0);
    }
    resp
}

/// GET /saml/post.js: submits the Response form once the page loads.
async fn post_script() -> Response {
    let mut resp = "document.getElementById('saml-post')?.submit();\n".into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    resp
}
