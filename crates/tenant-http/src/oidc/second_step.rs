//! What follows the first step of a sign-in (a password, a federated
//! identity provider, or a browser session that already exists): nothing,
//! the second step (a passkey, an authenticator code or a recovery code),
//! or registering a method because the sign-in policy requires one or its
//! registration campaign asks. The rules are `tenant::policy`'s; this
//! module turns them into pages and the answers into a signed-in response.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;

use super::flow::{AuthRequest, Authenticated, Params, db, html_response, internal, redirect_with, signed_in_response};
use super::pages::{self, Branding, Hidden};
use crate::scim::AppState;
use tenant::objects::Stored;
use tenant::policy::{Registration, Requirement, SignInPolicy};
use tenant::signin::{self, SecondFactorError, SecondStep};

/// How the person got this far.
#[derive(Debug, Clone)]
pub(crate) enum FirstStep {
    /// The right password, just now.
    Password,
    /// A federated identity provider; `multi_factor`: it said it used several factors.
    Federated { multi_factor: bool },
    /// A browser session from an earlier sign-in (single sign-on).
    Session(Authenticated),
}

/// What comes next.
enum Next {
    /// Nothing more: signed in with these `amr` methods.
    SignedIn(String),
    /// The user's own method.
    Ask(SecondStep),
    /// Register a method now (`required`), or when the campaign asks (`skips_left`).
    Register { step: SecondStep, required: Option<Requirement>, skips_left: Option<u32> },
}

/// Decides the next step for `user` after `first`, signing in to `client`
/// (`requested`: the application asked for a second factor).
fn decide(
    conn: &tenant::db::Connection,
    user_id: &str,
    first: &FirstStep,
    client: &tenant::oidc::clients::Client,
    requested: bool,
) -> tenant::Result<Next> {
    let policy = SignInPolicy::load(conn)?;
    let requirement = tenant::policy::required(conn, &policy, user_id, Some(client), requested)?;
    let has_method = !tenant::mfa::methods(conn, user_id)?.is_empty();
    let first_methods = match first {
        FirstStep::Password => Authenticated::PASSWORD.to_string(),
        FirstStep::Federated { multi_factor: true } if policy.accept_federated_mfa => {
            format!("{} mfa", Authenticated::FEDERATED)
        }
        FirstStep::Federated { .. } => Authenticated::FEDERATED.to_string(),
        FirstStep::Session(auth) => auth.methods.clone(),
    };
    if first_methods.split(' ').any(|m| m == "mfa") {
        return Ok(Next::SignedIn(first_methods));
    }
    let open = |conn| signin::open_second_step(conn, user_id, &first_methods);
    // Right after a password, a user with a method always gives it, and the
    // campaign may ask; otherwise only a requirement interrupts.
    if matches!(first, FirstStep::Password) {
        if has_method {
            return Ok(Next::Ask(open(conn)?));
        }
        return Ok(match tenant::policy::registration(conn, &policy, user_id, requirement)? {
            Registration::Required(why) => Next::Register { step: open(conn)?, required: Some(why), skips_left: None },
            Registration::Offered { skips_left } => Next::Register { step: open(conn)?, required: None, skips_left },
            Registration::NotAsked => Next::SignedIn(first_methods),
        });
    }
    match requirement {
        None => Ok(Next::SignedIn(first_methods)),
        Some(_) if has_method => Ok(Next::Ask(open(conn)?)),
        Some(why) => Ok(Next::Register { step: open(conn)?, required: Some(why), skips_left: None }),
    }
}

/// The first step succeeded for `user`: on to what the policy says.
pub(crate) async fn continue_sign_in(
    state: &Arc<AppState>,
    branding: &Branding,
    fields: Hidden<'_>,
    request: AuthRequest,
    user: Stored,
    first: FirstStep,
) -> Response {
    let (user_id, client, requested) = (user.id.clone(), request.client.clone(), request.mfa_requested);
    let first2 = first.clone();
    let next =
        db(state, move |conn| signin::in_transaction(conn, |tx| decide(tx, &user_id, &first2, &client, requested)))
            .await;
    let username = user_name(&user);
    match next {
        Ok(Next::SignedIn(methods)) => match first {
            // Single sign-on keeps the session's own time and methods.
            FirstStep::Session(auth) => super::flow::finish(state, request, user, &auth).await,
            _ => signed_in_response(state, request, user, &methods).await,
        },
        Ok(Next::Ask(step)) => {
            if request.prompt.as_deref() == Some("none") {
                return interaction_required(&request);
            }
            html_response(StatusCode::OK, pages::code_page(branding, fields, &username, &step, None))
        }
        Ok(Next::Register { step, required, skips_left }) => {
            if request.prompt.as_deref() == Some("none") {
                return interaction_required(&request);
            }
            let view = RegisterView { step, required, skips_left };
            register_page(state, branding, fields, &username, &view, None, None)
        }
        Err(e) => internal(e),
    }
}

/// `prompt=none` and the person must act: the application hears it.
fn interaction_required(request: &AuthRequest) -> Response {
    let mut pairs = vec![("error", "interaction_required")];
    if let Some(s) = &request.state {
        pairs.push(("state", s.as_str()));
    }
    redirect_with(&request.redirect_uri, &pairs)
}

fn user_name(user: &Stored) -> String {
    user.data.get("userName").and_then(serde_json::Value::as_str).unwrap_or_default().to_string()
}

/// The registration page's state.
struct RegisterView {
    step: SecondStep,
    required: Option<Requirement>,
    skips_left: Option<u32>,
}

/// The registration page: a passkey, or an authenticator app (the key of
/// `secret` when shown again after a wrong code, else a new one).
fn register_page(
    state: &AppState,
    branding: &Branding,
    fields: Hidden<'_>,
    username: &str,
    view: &RegisterView,
    secret: Option<&str>,
    error: Option<&str>,
) -> Response {
    let issuer = if branding.name.trim().is_empty() { state.issuer.clone() } else { branding.name.clone() };
    let offer = match secret {
        Some(secret) => tenant::mfa::totp_offer(&issuer, username, secret),
        None => tenant::mfa::offer_totp(&issuer, username),
    };
    let page = pages::register_page(
        branding,
        fields,
        &pages::RegisterStep {
            username,
            challenge: &view.step.challenge,
            why: view.required.as_ref().map(ToString::to_string),
            skips_left: if view.required.is_some() { None } else { Some(view.skips_left) },
            passkeys: state.passkeys.is_some(),
            offer: &offer,
            qr_svg: &super::account::qr_svg(&offer.uri),
        },
        error,
    );
    html_response(StatusCode::OK, page)
}

/// The registration page again (after a refused answer), if the sign-in
/// `challenge` stands for still waits.
async fn register_again(
    state: &Arc<AppState>,
    branding: &Branding,
    fields: Hidden<'_>,
    request: &AuthRequest,
    challenge: &str,
    secret: Option<&str>,
    error: &str,
) -> Response {
    let (challenge, client, requested) = (challenge.to_string(), request.client.clone(), request.mfa_requested);
    let found = db(state, move |conn| {
        let Some(step) = signin::second_step(conn, &challenge)? else { return Ok(None) };
        let user_id: Option<String> = signin::challenged_user(conn, &challenge)?;
        let Some(user_id) = user_id else { return Ok(None) };
        let policy = SignInPolicy::load(conn)?;
        let requirement = tenant::policy::required(conn, &policy, &user_id, Some(&client), requested)?;
        let user = tenant::objects::load(conn, Some(tenant::objects::Kind::User), &user_id)?;
        let view = match tenant::policy::registration(conn, &policy, &user_id, requirement)? {
            Registration::Required(why) => RegisterView { step, required: Some(why), skips_left: None },
            Registration::Offered { skips_left } => RegisterView { step, required: None, skips_left },
            // The policy changed meanwhile: registering is still allowed.
            Registration::NotAsked => RegisterView { step, required: None, skips_left: None },
        };
        Ok(user.map(|u| (u, view)))
    })
    .await;
    match found {
        Ok(Some((user, view))) => register_page(state, branding, fields, &user_name(&user), &view, secret, Some(error)),
        Ok(None) => expired(state, branding, fields),
        Err(e) => internal(e),
    }
}

fn expired(state: &AppState, branding: &Branding, fields: Hidden<'_>) -> Response {
    html_response(
        StatusCode::OK,
        pages::username_page(
            branding,
            fields,
            "",
            Some(&SecondFactorError::Expired.to_string()),
            state.passkeys.is_some(),
        ),
    )
}

/// The registration steps of the sign-in form: `enrol-app` (a key and its
/// code), `enrol-passkey` (the browser's answer), `continue` (after the
/// recovery codes were shown), `skip` (the campaign's "not now").
pub(crate) async fn registration_step(
    state: &Arc<AppState>,
    branding: &Branding,
    fields: Hidden<'_>,
    request: AuthRequest,
    step: &str,
    p: &Params,
) -> Response {
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    let challenge = get("challenge");
    match step {
        "enrol-app" | "enrol-passkey" => {
            let (secret, code, label) = (get("secret"), get("code"), get("label"));
            let (token, response) = (get("passkey_token"), get("credential"));
            let rp = state.passkeys.clone();
            let (challenge2, secret2) = (challenge.clone(), secret.clone());
            let app = step == "enrol-app";
            let enrolled = db(state, move |conn| {
                signin::in_transaction(conn, |tx| match (app, rp) {
                    (true, _) => signin::enrol_app_at_sign_in(tx, &challenge2, &secret2, &code, &label),
                    (false, Some(rp)) => {
                        signin::enrol_passkey_at_sign_in(tx, &rp, &challenge2, &token, &response, &label)
                    }
                    (false, None) => Ok(Err(SecondFactorError::Expired)),
                })
            })
            .await;
            match enrolled {
                Ok(Ok(enrolled)) => html_response(
                    StatusCode::OK,
                    pages::enrolled_at_sign_in_page(branding, fields, &enrolled, &challenge),
                ),
                Ok(Err(SecondFactorError::Expired)) => expired(state, branding, fields),
                Ok(Err(e)) => {
                    let secret = app.then_some(secret.as_str());
                    register_again(state, branding, fields, &request, &challenge, secret, &e.to_string()).await
                }
                Err(e) => internal(e),
            }
        }
        "continue" => {
            let passed =
                db(state, move |conn| signin::in_transaction(conn, |tx| signin::proven_step(tx, &challenge))).await;
            match passed {
                Ok(Some(passed)) => signed_in_response(state, request, passed.user, &passed.methods).await,
                Ok(None) => expired(state, branding, fields),
                Err(e) => internal(e),
            }
        }
        "skip" => {
            let (client, requested) = (request.client.clone(), request.mfa_requested);
            let challenge2 = challenge.clone();
            let skipped = db(state, move |conn| {
                signin::in_transaction(conn, |tx| {
                    let policy = SignInPolicy::load(tx)?;
                    signin::skip_registration(tx, &policy, &challenge2, Some(&client), requested)
                })
            })
            .await;
            match skipped {
                Ok(Some(user)) => signed_in_response(state, request, user, Authenticated::PASSWORD).await,
                Ok(None) => {
                    let why = "Add a sign-in method to continue: this can no longer be skipped.";
                    register_again(state, branding, fields, &request, &challenge, None, why).await
                }
                Err(e) => internal(e),
            }
        }
        _ => html_response(
            StatusCode::BAD_REQUEST,
            pages::message_page(branding, "Sign-in request not valid", "Unknown sign-in step."),
        ),
    }
}
