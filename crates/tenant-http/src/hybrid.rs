//! `/hybrid/v1`: what the sync side sends besides SCIM — password records
//! (password hash sync) and cycle reports. Needs a sync or admin token.
//! Wire types: `proto::hybrid`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use proto::hybrid::{MAX_BATCH, PasswordBatch, PasswordResults};
use scim::{ScimError, ScimType};

use crate::scim::{ApiError, AppState, authenticate, db, json_body, scim_json};
use tenant::credentials;

/// POST /hybrid/v1/passwords: one result per item, in order.
pub async fn passwords(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, true).await?;
    let body = json_body(&state, request).await?;
    let batch: PasswordBatch = serde_json::from_value(body)
        .map_err(|e| ScimError::new(ScimType::InvalidSyntax, format!("credentials: {e}")))?;
    if batch.credentials.len() > MAX_BATCH {
        return Err(ScimError::status(413, format!("at most {MAX_BATCH} credentials per request")).into());
    }
    let actor = format!("token:{}", caller.id);
    let caller_id = caller.id.clone();
    let results = db(&state, move |conn| {
        let allowed = tenant::tokens::domains(conn, &caller_id)?;
        Ok(credentials::apply_batch(conn, &actor, allowed.as_deref(), &batch.credentials)?)
    })
    .await?;
    Ok(scim_json(StatusCode::OK, &PasswordResults { results }))
}

/// POST /hybrid/v1/sync-reports: a cycle's report, stored (204).
pub async fn sync_report(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let report = checked_body(&state, &headers, request, "sync report", proto::hybrid::SyncReport::check).await?;
    db(&state, move |conn| Ok(tenant::sync_reports::record(conn, &report)?)).await?;
    Ok(axum::response::IntoResponse::into_response(StatusCode::NO_CONTENT))
}

/// GET /hybrid/v1/deletion-allowances/{connector}: the deletions allowed in
/// the console for the connector's next cycle, or 404.
pub async fn deletion_allowance(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(connector): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers, false).await?;
    let name = connector.clone();
    let count = db(&state, move |conn| Ok(tenant::console::deletion_allowance(conn, &name)?)).await?;
    match count {
        Some(count) => Ok(scim_json(StatusCode::OK, &proto::hybrid::DeletionAllowance { connector, count })),
        None => Err(ScimError::status(404, format!("no deletions are allowed for {connector}")).into()),
    }
}

/// GET /hybrid/v1/quarantine: who waits for which value, who holds it and why.
pub async fn quarantine(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate(&state, &headers, false).await?;
    let list = db(&state, |conn| Ok(tenant::objects::quarantined(conn, proto::hybrid::MAX_QUARANTINE_LISTED)?)).await?;
    Ok(scim_json(StatusCode::OK, &list))
}

/// GET /hybrid/v1/lineage: the objects the console asked about.
pub async fn lineage_requests(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate(&state, &headers, false).await?;
    let immutable_ids =
        db(&state, |conn| Ok(tenant::lineage::pending(conn, proto::hybrid::MAX_LINEAGE_OBJECTS)?)).await?;
    Ok(scim_json(StatusCode::OK, &proto::hybrid::LineageRequests { immutable_ids }))
}

/// POST /hybrid/v1/lineage: a sync daemon's answers (204).
pub async fn lineage_answers(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let batch = checked_body(&state, &headers, request, "lineage", proto::hybrid::LineageBatch::check).await?;
    db(&state, move |conn| Ok(tenant::lineage::answer(conn, &batch.objects)?)).await?;
    Ok(axum::response::IntoResponse::into_response(StatusCode::NO_CONTENT))
}

/// Where a page of cloud groups starts.
#[derive(Debug, serde::Deserialize)]
pub struct PageAfter {
    #[serde(default)]
    after: String,
}

/// GET /hybrid/v1/cloud-groups?after=ID: the groups the cloud manages, a
/// page at a time (group writeback).
pub async fn cloud_groups(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Query(page): axum::extract::Query<PageAfter>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers, false).await?;
    if page.after.len() > 128 {
        return Err(ScimError::invalid_value("after: not a group id").into());
    }
    let groups = db(&state, move |conn| {
        Ok(tenant::cloud_groups::page(conn, &page.after, proto::hybrid::MAX_CLOUD_GROUPS_PAGE)?)
    })
    .await?;
    Ok(scim_json(StatusCode::OK, &groups))
}

/// A sync daemon's write: the caller may write, and the body is a `T` that
/// passes `check` (a refusal names `what`).
async fn checked_body<T: serde::de::DeserializeOwned>(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    request: Request,
    what: &str,
    check: impl Fn(&T) -> Result<(), String>,
) -> Result<T, ApiError> {
    authenticate(state, headers, true).await?;
    let body = json_body(state, request).await?;
    let value: T =
        serde_json::from_value(body).map_err(|e| ScimError::new(ScimType::InvalidSyntax, format!("{what}: {e}")))?;
    check(&value).map_err(|e| ScimError::new(ScimType::InvalidValue, format!("{what}: {e}")))?;
    Ok(value)
}
