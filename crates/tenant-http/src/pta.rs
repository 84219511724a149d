//! `/pta/v1`: the pass-through agents' endpoints (wire types:
//! `proto::pta`; the broker and the agents' records: `tenant::pta`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proto::ErrorReply;
use proto::pta::{Answer, AnswerReply, PollQuery, PollReply, Registration};
use tenant::db::Connection;
use tenant::pta::{POLL_WAIT, agent_for, record_poll, register_agent, rotate_credential};
use tenant::{Result, TenantError};

use crate::scim::AppState;

fn json_reply<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    // Our own wire types always serialise (string keys only).
    let text = serde_json::to_string(body).unwrap_or_default();
    let mut resp = (status, text).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp
}

fn failed(status: StatusCode, message: &str) -> Response {
    json_reply(status, &ErrorReply { error: message.to_string() })
}

async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || work(&store.lock()))
        .await
        .unwrap_or_else(|e| Err(TenantError::Invalid(format!("worker failed: {e}"))))
}

/// The calling agent, or the response that refuses it.
/// A server-side failure: logged here, never described to the agent.
fn internal(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "pass-through endpoint failed");
    failed(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the tenant's log)")
}

async fn caller(state: &Arc<AppState>, headers: &HeaderMap) -> std::result::Result<(String, String), Response> {
    let Some(credential) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
    else {
        return Err(failed(StatusCode::UNAUTHORIZED, "an agent credential is required"));
    };
    match blocking(state, move |conn| agent_for(conn, &credential)).await {
        Ok(Some(agent)) => Ok(agent),
        Ok(None) => Err(failed(
            StatusCode::UNAUTHORIZED,
            "this agent's credential is unknown, expired or revoked: register the agent again",
        )),
        Err(e) => Err(internal(&e)),
    }
}

/// POST /pta/v1/register — the one-time token, the agent's public key → its id and credential.
pub async fn register(State(state): State<Arc<AppState>>, body: axum::Json<Registration>) -> Response {
    let r = body.0;
    if pta::check_public_key(&r.public_key).is_err() {
        return failed(StatusCode::BAD_REQUEST, "public_key must be a 32-byte X25519 key, base64url, not of low order");
    }
    let result = blocking(&state, move |conn| register_agent(conn, &r)).await;
    match result {
        Ok(Some(credential)) => json_reply(StatusCode::OK, &credential),
        Ok(None) => failed(
            StatusCode::UNAUTHORIZED,
            "the registration token is unknown, used or expired: make a new one with `idbridge tenant pta-token create`",
        ),
        Err(e) => internal(&e),
    }
}

/// GET /pta/v1/poll — waits for sign-in requests; doubles as the heartbeat.
pub async fn poll(State(state): State<Arc<AppState>>, headers: HeaderMap, Query(q): Query<PollQuery>) -> Response {
    let (agent, public_key) = match caller(&state, &headers).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let seen = agent.clone();
    let _ = blocking(&state, move |conn| record_poll(conn, &seen)).await;
    let wait = q.wait_secs.map(Duration::from_secs).unwrap_or(POLL_WAIT).min(POLL_WAIT);
    let started = Instant::now();
    loop {
        // In slices of a second: a revoked agent is turned away at once, not at its next poll.
        let slice = wait.saturating_sub(started.elapsed()).min(Duration::from_secs(1));
        let requests = state.pta.take(&agent, &public_key, slice).await;
        if !requests.is_empty() || started.elapsed() >= wait {
            return json_reply(StatusCode::OK, &PollReply { requests });
        }
        if let Err(resp) = caller(&state, &headers).await {
            // Revoked (or expired): no request is sealed for it any more.
            state.pta.forget(&agent).await;
            return resp;
        }
    }
}

/// POST /pta/v1/respond — an outcome for a request this agent took.
pub async fn respond(State(state): State<Arc<AppState>>, headers: HeaderMap, body: axum::Json<Answer>) -> Response {
    let (agent, _) = match caller(&state, &headers).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let accepted = state.pta.answer(&agent, &body.request_id, body.outcome, &body.mac).await;
    if !accepted {
        tracing::warn!(agent = %agent, request = %body.request_id, "an answer was refused (not this agent's request, or not authentic)");
    }
    json_reply(StatusCode::OK, &AnswerReply { accepted })
}

/// POST /pta/v1/rotate — a new credential; the old one works a few minutes more.
pub async fn rotate(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (agent, _) = match caller(&state, &headers).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let result = blocking(&state, move |conn| rotate_credential(conn, &agent)).await;
    match result {
        Ok(credential) => json_reply(StatusCode::OK, &credential),
        Err(e) => internal(&e),
    }
}

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route(proto::pta::REGISTER_PATH, axum::routing::post(register))
        .route(proto::pta::POLL_PATH, axum::routing::get(poll))
        .route(proto::pta::RESPOND_PATH, axum::routing::post(respond))
        .route(proto::pta::ROTATE_PATH, axum::routing::post(rotate))
}
