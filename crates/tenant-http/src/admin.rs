//! `/admin/v1`: tenant administration over HTTP for tools on other hosts
//! (`idbridge init` against a remote tenant). Admin-scoped tokens only.
//!
//! Wire types: `proto::admin`. `PUT /admin/v1/domains/{name}` adds the
//! domain or changes how its users sign in; federation is set up on the
//! tenant's host (`idbridge tenant domain federate`), where the identity
//! provider's secrets are given.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use proto::admin::{DomainInfo, DomainList, PasswordReset, PasswordResetDone, SetDomainAuth};
use scim::{ScimError, ScimType};

use crate::scim::{ApiError, AppState, Caller, authenticate, db, json_body, scim_json};
use tenant::domains::{self, AuthType};
use tenant::tokens::Scope;

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/admin/v1/domains", get(list))
        .route("/admin/v1/domains/{name}", axum::routing::put(set))
        .route("/admin/v1/sync-reports", get(sync_reports))
        .route("/admin/v1/users/{name}/password", axum::routing::post(reset_password))
}

#[derive(serde::Deserialize)]
struct ReportQuery {
    connector: Option<String>,
    limit: Option<i64>,
}

/// GET /admin/v1/sync-reports: each connector's latest report (with when it
/// arrived), or `?connector=NAME&limit=N` one connector's history.
async fn sync_reports(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ReportQuery>,
) -> Result<Response, ApiError> {
    admin(&state, &headers).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, tenant::sync_reports::KEEP);
    let found = db(&state, move |conn| {
        Ok(match &q.connector {
            Some(c) => tenant::sync_reports::history(conn, c, limit)?,
            None => tenant::sync_reports::latest(conn)?,
        })
    })
    .await?;
    let reports: Vec<serde_json::Value> =
        found.into_iter().map(|r| serde_json::json!({"received": r.received, "report": r.report})).collect();
    Ok(scim_json(StatusCode::OK, &serde_json::json!({"reports": reports})))
}

async fn admin(state: &Arc<AppState>, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = authenticate(state, headers, true).await?;
    if caller.scope != Scope::Admin {
        return Err(ScimError::status(
            403,
            format!("a {} token may not administer the tenant; use one made with --scope admin", caller.scope),
        )
        .into());
    }
    Ok(caller)
}

/// An admin's request with its JSON body: (the actor the audit names, the body).
async fn admin_request<T: serde::de::DeserializeOwned>(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    request: Request,
    usage: &str,
) -> Result<(String, T), ApiError> {
    let caller = admin(state, headers).await?;
    let body = json_body(state, request).await?;
    let parsed = serde_json::from_value(body).map_err(|_| ScimError::new(ScimType::InvalidValue, usage))?;
    Ok((format!("token:{}", caller.id), parsed))
}

async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    admin(&state, &headers).await?;
    let list = db(&state, |conn| Ok(domains::list(conn)?)).await?;
    let domains = list.into_iter().map(|d| DomainInfo { name: d.name, auth: d.auth, initial: d.initial }).collect();
    Ok(scim_json(StatusCode::OK, &DomainList { domains }))
}

async fn set(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let (actor, SetDomainAuth { auth }) =
        admin_request(&state, &headers, request, "give {\"auth\": \"managed-phs\" | \"managed-pta\"}").await?;
    if auth == AuthType::Federated {
        return Err(ScimError::new(
            ScimType::InvalidValue,
            "federate a domain on the tenant's host: idbridge tenant domain federate (the identity provider's secrets are given there)",
        )
        .into());
    }
    let tenant = state.tenant.clone();
    let (domain, created) = tokio::task::spawn_blocking(move || tenant.ensure_domain(&actor, &name, auth))
        .await
        .map_err(|e| ScimError::status(500, format!("worker failed: {e}")))??;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(scim_json(status, &DomainInfo { name: domain.name, auth: domain.auth, initial: domain.initial }))
}

/// POST /admin/v1/users/{name}/password: an administrator's password reset,
/// written on-premises first (password writeback), then here.
async fn reset_password(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    use tenant::writeback::{Request as Write, WritebackError};
    let (actor, PasswordReset { new_password }) =
        admin_request(&state, &headers, request, "give {\"new_password\": \"…\"}").await?;
    let written =
        crate::writeback::write_password(&state, &name, &new_password, Write::Reset { actor, enforce_policy: false })
            .await
            .map_err(|e| ScimError::status(500, e.to_string()))?;
    match written {
        Ok(done) => Ok(scim_json(
            StatusCode::OK,
            &PasswordResetDone { user_id: done.user_id, record_replaced: done.record_replaced },
        )),
        Err(e) => {
            let status = match &e {
                WritebackError::NoSuchUser { .. } => 404,
                WritebackError::NotEnabled { .. }
                | WritebackError::NotSynchronised { .. }
                | WritebackError::BadInput => 400,
                WritebackError::NotAllowed => 403,
                WritebackError::NoAgent
                | WritebackError::Timeout
                | WritebackError::AgentTooOld
                | WritebackError::DirectoryUnreachable => 503,
                _ => 422,
            };
            Err(ScimError::status(status, e.to_string()).into())
        }
    }
}
