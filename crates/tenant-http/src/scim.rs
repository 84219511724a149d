//! The SCIM 2.0 API over HTTP (RFC 7644), under `/scim/v2`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query as QueryParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use scim::filter::{AttrPath, Filter};
use scim::patch::parse_patch;
use scim::resource::Projection;
use scim::schema::{RESOURCE_TYPES, SCHEMAS, resource_type_by_name, schema_by_id};
use scim::{ScimError, ScimType};
use serde::Deserialize;
use serde_json::{Value, json};
use tenant::db::Connection;

use tenant::objects::{self, Ctx, Kind, Outcome, Query};
use tenant::store::{Settings, Store};
use tenant::tokens;

pub const SCIM_CONTENT_TYPE: &str = "application/scim+json";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const SEARCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
const BULK_REQUEST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
const BULK_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";
pub const MAX_RESULTS: usize = 1000;
pub const DEFAULT_COUNT: usize = 100;
pub const MAX_BULK_OPERATIONS: usize = 1000;

/// Shared by all requests.
#[derive(Debug)]
pub struct AppState {
    /// Administration (the `/admin/v1` endpoints).
    pub tenant: tenant::Tenant,
    /// The tenant's storage, for the request handlers.
    pub store: Arc<Store>,
    /// `https://host:port/scim/v2`, for `meta.location`.
    pub base_url: String,
    /// `https://host:port`: the OpenID Connect issuer.
    pub issuer: String,
    /// Largest accepted request body (bytes).
    pub max_body: usize,
    pub lockout: tenant::signin::LockoutPolicy,
    /// Pass-through authentication: the queue the agents take sign-ins from.
    pub pta: tenant::pta::Broker,
    /// Federated domains: the tenant as a relying party of their IdPs.
    pub federation: tenant::federation::oidc::RelyingParty,
    /// Passkeys: the tenant as a WebAuthn relying party; `None` when the
    /// issuer is an IP address (browsers refuse those).
    pub passkeys: Option<Arc<tenant::passkeys::RelyingParty>>,
    /// Requests per bearer token.
    pub rate_limit: tenant::ratelimit::RateLimiter,
    /// Reverse proxies whose X-Forwarded-For names the client.
    pub trusted_proxies: Vec<tenant::net::Cidr>,
    /// Signs the sign-in forms' CSRF tokens.
    pub csrf_key: [u8; 32],
    /// What `GET /metrics` shows.
    pub metrics: telemetry::TenantMetrics,
    pub registry: Arc<telemetry::Registry>,
}

/// A response-ready SCIM error, with the header some statuses need.
#[derive(Debug)]
pub struct ApiError(pub ScimError, pub Option<ErrorHeader>);

#[derive(Debug, Clone, Copy)]
pub enum ErrorHeader {
    /// `WWW-Authenticate` of a 401.
    Challenge(&'static str),
    /// `Retry-After` (seconds) of a 429.
    RetryAfter(u64),
}

impl From<ScimError> for ApiError {
    fn from(e: ScimError) -> Self {
        ApiError(e, None)
    }
}

impl From<tenant::TenantError> for ApiError {
    fn from(e: tenant::TenantError) -> Self {
        ApiError(e.to_scim(), None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = scim_json(status, &self.0.to_json());
        match self.1 {
            Some(ErrorHeader::Challenge(challenge)) => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            Some(ErrorHeader::RetryAfter(seconds)) => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            None => {}
        }
        resp
    }
}

type ApiResult = Result<Response, ApiError>;

pub(crate) fn scim_json<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    // Serialising our own types and JSON values cannot fail (string keys only).
    let text = serde_json::to_string(body).unwrap_or_default();
    let mut resp = (status, text).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_CONTENT_TYPE));
    resp
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/scim/v2/ServiceProviderConfig", get(service_provider_config))
        .route("/scim/v2/Schemas", get(schemas))
        .route("/scim/v2/Schemas/{id}", get(schema))
        .route("/scim/v2/ResourceTypes", get(resource_types))
        .route("/scim/v2/ResourceTypes/{id}", get(resource_type))
        .route("/scim/v2/Bulk", post(bulk))
        .route("/scim/v2/.search", post(search_all))
        .route("/scim/v2/{resource}", get(list).post(create))
        .route("/scim/v2/{resource}/{id}", get(read).put(replace).patch(patch).delete(delete).post(search_one_type))
        .route("/hybrid/v1/passwords", post(crate::hybrid::passwords))
        .route(proto::hybrid::SYNC_REPORTS_PATH, post(crate::hybrid::sync_report))
        .route(proto::hybrid::DELETION_ALLOWANCE_PATH, get(crate::hybrid::deletion_allowance))
        .route(proto::hybrid::QUARANTINE_PATH, get(crate::hybrid::quarantine))
        .route(proto::hybrid::CLOUD_GROUPS_PATH, get(crate::hybrid::cloud_groups))
        .route(proto::hybrid::LINEAGE_PATH, get(crate::hybrid::lineage_requests).post(crate::hybrid::lineage_answers))
        .merge(crate::admin::routes())
        .merge(crate::console::routes())
        .merge(crate::oidc::routes())
        .merge(crate::pta::routes())
        .merge(crate::saml_idp::routes())
        .fallback(|| async { ApiError(ScimError::status(404, "no such endpoint"), None) })
        .layer(axum::middleware::map_response_with_state(state.clone(), security_headers))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// Counts every request by its route's pattern (never the path's values) and status.
async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state.metrics.http(&route, response.status().as_u16());
    response
}

/// Ready: the database answers and a signing key is there; otherwise 503 and why.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let checked = db(&state, |conn| {
        tenant::oidc::keys::active(conn, tenant::oidc::keys::Alg::Rs256)
            .map(|_| ())
            .map_err(|e| ApiError(ScimError::status(503, format!("no signing key: {e}")), None))
    })
    .await;
    match checked {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(ApiError(e, _)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", e.detail)).into_response(),
    }
}

/// `GET /metrics` (OpenMetrics text) for a token with the metrics or admin scope.
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match bearer(&state, &headers).await {
        Ok((_, tokens::Scope::Metrics | tokens::Scope::Admin)) => {}
        Ok(_) => {
            return ApiError(
                ScimError::status(
                    403,
                    "this needs a metrics or admin token (idbridge tenant token create --scope metrics)",
                ),
                None,
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    }
    state.metrics.set_pta_agents_online(state.pta.agents_online().await);
    if let Ok(all) = db(&state, |conn| Ok(tenant::domains::list(conn)?)).await {
        state.metrics.set_pta_domains(all.iter().filter(|d| d.auth == tenant::domains::AuthType::ManagedPta).count());
    }
    let federated = db(&state, |conn| {
        let mut out = Vec::new();
        for d in tenant::domains::list(conn)?.into_iter().filter(|d| d.auth == tenant::domains::AuthType::Federated) {
            if let Some(tenant::federation::Federation::Saml(idp)) = tenant::federation::load(conn, &d.name)? {
                out.push((d.name, idp.signing_certificates));
            }
        }
        Ok(out)
    })
    .await;
    for (domain, pem) in federated.unwrap_or_default() {
        let certificates = tenant::federation::saml::certificates_from(pem.as_bytes());
        if let Some(expiry) = certificates.iter().filter_map(|c| crate::serve::certificate_not_after(c)).min() {
            state.metrics.set_federation_certificate_expiry(&domain, expiry);
        }
    }
    let reports =
        db(&state, |conn| Ok((tenant::sync_reports::latest(conn)?, tenant::sync_reports::last_success(conn)?))).await;
    if let Ok((latest, successes)) = reports {
        for r in &latest {
            let success = successes.iter().find(|(c, _)| c == &r.report.connector).map(|(_, t)| *t);
            state.metrics.set_sync_report(
                &r.report.connector,
                success,
                r.report.deletions_held,
                r.report.interval_secs,
            );
        }
    }
    let mut response = telemetry::encode(&state.registry).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(telemetry::CONTENT_TYPE));
    response
}

/// Headers every answer carries: no MIME sniffing; HSTS when the tenant is
/// served over HTTPS; and for HTML pages (sign-in, My Apps, federation),
/// unless the page set its own, no framing, no caching and a strict CSP.
async fn security_headers(State(state): State<Arc<AppState>>, mut resp: Response) -> Response {
    let https = state.issuer.starts_with("https://");
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if https {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    let html = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/html"));
    if html {
        h.entry(header::X_FRAME_OPTIONS).or_insert(HeaderValue::from_static("DENY"));
        h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
        h.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src https: 'self'; form-action 'self'; frame-ancestors 'none'",
        ));
    }
    resp
}

/// The caller: the token's id, for the audit log.
pub(crate) struct Caller {
    pub(crate) id: String,
    pub(crate) scope: tokens::Scope,
}

pub(crate) async fn db<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&mut Connection) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = state.store.lock();
        work(&mut conn)
    })
    .await
    .unwrap_or_else(|_| Err(ApiError(ScimError::status(500, "internal error (see the tenant's log)"), None)))
}

/// Like [`db`], on a read-only connection: for long reads (lists, searches)
/// that must not hold up writes and sign-ins.
pub(crate) async fn db_read<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let conn = state.store.read();
        work(&conn)
    })
    .await
    .unwrap_or_else(|_| Err(ApiError(ScimError::status(500, "internal error (see the tenant's log)"), None)))
}

/// The bearer token's id and scope; no, an unknown or a revoked token, or
/// one over its rate limit, is the error to answer with.
async fn bearer(state: &Arc<AppState>, headers: &HeaderMap) -> Result<(String, tokens::Scope), ApiError> {
    const CHALLENGE: &str = "Bearer realm=\"idbridge\"";
    let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err(ApiError(
            ScimError::status(401, "a bearer token is required (idbridge tenant token create)"),
            Some(ErrorHeader::Challenge(CHALLENGE)),
        ));
    };
    let Some(token) = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")).map(str::trim) else {
        return Err(ApiError(
            ScimError::status(401, "use the Bearer authentication scheme"),
            Some(ErrorHeader::Challenge(CHALLENGE)),
        ));
    };
    let token = token.to_string();
    let found = db(state, move |conn| Ok(tokens::authenticate(conn, &token)?)).await?;
    let Some((id, scope)) = found else {
        return Err(ApiError(
            ScimError::status(401, "the bearer token is unknown, expired or revoked"),
            Some(ErrorHeader::Challenge(CHALLENGE)),
        ));
    };
    if let Err(seconds) = state.rate_limit.check(&id) {
        return Err(ApiError(
            ScimError::status(429, format!("too many requests with this token; retry in {seconds} s")),
            Some(ErrorHeader::RetryAfter(seconds)),
        ));
    }
    Ok((id, scope))
}

pub(crate) async fn authenticate(state: &Arc<AppState>, headers: &HeaderMap, write: bool) -> Result<Caller, ApiError> {
    let (id, scope) = bearer(state, headers).await?;
    if scope == tokens::Scope::Metrics {
        return Err(ApiError(ScimError::status(403, "a metrics token may only read /metrics"), None));
    }
    if write && !scope.can_write_scim() {
        return Err(ApiError(
            ScimError::status(403, format!("a {scope} token may only read; this needs a sync or admin token")),
            None,
        ));
    }
    if write && let Some(fence) = headers.get(proto::hybrid::SYNC_FENCE_HEADER) {
        let Some(fence) = fence.to_str().ok().and_then(proto::hybrid::SyncFence::parse) else {
            return Err(ScimError::status(
                400,
                format!("{}: LINEAGE.EPOCH expected", proto::hybrid::SYNC_FENCE_HEADER),
            )
            .into());
        };
        let token_id = id.clone();
        let admitted =
            db(state, move |conn| Ok(tokens::admit_sync_fence(conn, &token_id, &fence.lineage, fence.epoch)?)).await?;
        if let Err(highest) = admitted {
            return Err(ScimError::status(
                409,
                format!("a newer sync daemon (lease epoch {highest}) has written since; this one has lost its lease and may not write"),
            )
            .into());
        }
    }
    Ok(Caller { id, scope })
}

/// Reads a JSON body: content type checked, size limited.
pub(crate) async fn json_body(state: &Arc<AppState>, request: Request) -> Result<Value, ApiError> {
    parse_json(&json_bytes(state, request).await?)
}

/// A JSON request's body, unparsed (checked: media type, size).
async fn json_bytes(state: &Arc<AppState>, request: Request) -> Result<Bytes, ApiError> {
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let media = content_type.split(';').next().unwrap_or("").trim().to_string();
    if media != SCIM_CONTENT_TYPE && media != "application/json" {
        return Err(ScimError::status(415, format!("send the body as {SCIM_CONTENT_TYPE} (got {:?})", media)).into());
    }
    axum::body::to_bytes(request.into_body(), state.max_body)
        .await
        .map_err(|_| ScimError::status(413, format!("the body is larger than {} bytes", state.max_body)).into())
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ScimError::new(ScimType::InvalidSyntax, format!("the body is not valid JSON: {e}")).into())
}

fn kind_of(segment: &str) -> Result<Kind, ApiError> {
    Kind::from_endpoint(segment).ok_or_else(|| ScimError::status(404, format!("no resource type at /{segment}")).into())
}

fn resource_response(status: StatusCode, body: &Value, etag: &str, location: Option<String>) -> Response {
    let mut resp = scim_json(status, body);
    if let Ok(v) = HeaderValue::from_str(etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if let Some(loc) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

async fn service_provider_config(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    authenticate(&state, &headers, false).await?;
    Ok(scim_json(
        StatusCode::OK,
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://example.invalid/idbridge/docs/scim",
            "patch": {"supported": true},
            "bulk": {"supported": true, "maxOperations": MAX_BULK_OPERATIONS, "maxPayloadSize": state.max_body},
            "filter": {"supported": true, "maxResults": MAX_RESULTS},
            "changePassword": {"supported": false},
            "sort": {"supported": true},
            "etag": {"supported": true},
            "authenticationSchemes": [{
                "type": "oauthbearertoken", "name": "OAuth Bearer Token", "primary": true,
                "description": "Bearer tokens made with `idbridge tenant token create`"
            }],
            "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{}/ServiceProviderConfig", state.base_url)}
        }),
    ))
}

fn list_response(total: usize, start: usize, resources: Vec<Value>) -> Value {
    json!({"schemas": [LIST_SCHEMA], "totalResults": total, "startIndex": start, "itemsPerPage": resources.len(), "Resources": resources})
}

async fn schemas(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    authenticate(&state, &headers, false).await?;
    let all: Vec<Value> = SCHEMAS.iter().map(|s| s.to_json(&state.base_url)).collect();
    Ok(scim_json(StatusCode::OK, &list_response(all.len(), 1, all)))
}

async fn schema(State(state): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    authenticate(&state, &headers, false).await?;
    let s = schema_by_id(&id).ok_or_else(|| ScimError::status(404, format!("no schema {id}")))?;
    Ok(scim_json(StatusCode::OK, &s.to_json(&state.base_url)))
}

async fn resource_types(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    authenticate(&state, &headers, false).await?;
    let all: Vec<Value> = RESOURCE_TYPES.iter().map(|r| r.to_json(&state.base_url)).collect();
    Ok(scim_json(StatusCode::OK, &list_response(all.len(), 1, all)))
}

async fn resource_type(State(state): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    authenticate(&state, &headers, false).await?;
    let r = resource_type_by_name(&id).ok_or_else(|| ScimError::status(404, format!("no resource type {id}")))?;
    Ok(scim_json(StatusCode::OK, &r.to_json(&state.base_url)))
}

/// List parameters, from the query string or a .search body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    filter: Option<String>,
    sort_by: Option<String>,
    sort_order: Option<String>,
    start_index: Option<i64>,
    count: Option<i64>,
    attributes: Option<String>,
    excluded_attributes: Option<String>,
}

fn to_query(p: &ListParams) -> Result<(Query, Projection), ApiError> {
    let filter = p.filter.as_deref().filter(|f| !f.trim().is_empty()).map(Filter::parse).transpose()?;
    let sort_by = p
        .sort_by
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            AttrPath::parse(s.trim())
                .ok_or_else(|| ScimError::invalid_value(format!("sortBy {s:?} is not an attribute")))
        })
        .transpose()?;
    let descending = match p.sort_order.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("ascending") => false,
        Some("descending") => true,
        Some(other) => {
            return Err(
                ScimError::invalid_value(format!("sortOrder must be ascending or descending, not {other:?}")).into()
            );
        }
    };
    let start_index = usize::try_from(p.start_index.unwrap_or(1).max(1)).unwrap_or(1);
    let count = usize::try_from(p.count.unwrap_or(DEFAULT_COUNT as i64).max(0)).unwrap_or(0).min(MAX_RESULTS);
    let projection = Projection::parse(p.attributes.as_deref(), p.excluded_attributes.as_deref())?;
    Ok((Query { filter, sort_by, descending, start_index, count }, projection))
}

async fn run_list(state: &Arc<AppState>, kinds: Vec<Kind>, params: ListParams) -> ApiResult {
    let (query, projection) = to_query(&params)?;
    let state2 = state.clone();
    let body = db_read(state, move |conn| {
        let ctx = Ctx { actor: "", base_url: &state2.base_url };
        let several = kinds.len() > 1;
        let mut all = Vec::new();
        for kind in kinds {
            let q = Query { start_index: 1, count: usize::MAX, ..query.clone() };
            match objects::list(conn, &ctx, kind, &q) {
                Ok((_, found)) => all.extend(found),
                // Across types, a filter naming another type's attribute just matches nothing there.
                Err(tenant::TenantError::Scim(e)) if several && e.scim_type == Some(ScimType::InvalidFilter) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let total = all.len();
        let mut resources = Vec::new();
        for s in all.iter().skip(query.start_index - 1).take(query.count) {
            resources.push(objects::render(conn, s, &ctx, &projection)?);
        }
        Ok(list_response(total, query.start_index, resources))
    })
    .await?;
    Ok(scim_json(StatusCode::OK, &body))
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(resource): Path<String>,
    QueryParams(params): QueryParams<ListParams>,
) -> ApiResult {
    authenticate(&state, &headers, false).await?;
    let kind = kind_of(&resource)?;
    run_list(&state, vec![kind], params).await
}

fn search_params(body: &Value) -> Result<ListParams, ApiError> {
    if !body.get("schemas").and_then(Value::as_array).is_some_and(|s| s.iter().any(|x| x == SEARCH_SCHEMA)) {
        return Err(ScimError::new(
            ScimType::InvalidSyntax,
            format!("a search body must list {SEARCH_SCHEMA} in schemas"),
        )
        .into());
    }
    let list_text = |key: &str| -> Option<String> {
        match body.get(key) {
            Some(Value::Array(a)) => Some(a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    };
    Ok(ListParams {
        filter: body.get("filter").and_then(Value::as_str).map(str::to_string),
        sort_by: body.get("sortBy").and_then(Value::as_str).map(str::to_string),
        sort_order: body.get("sortOrder").and_then(Value::as_str).map(str::to_string),
        start_index: body.get("startIndex").and_then(Value::as_i64),
        count: body.get("count").and_then(Value::as_i64),
        attributes: list_text("attributes"),
        excluded_attributes: list_text("excludedAttributes"),
    })
}

async fn search_all(State(state): State<Arc<AppState>>, request: Request) -> ApiResult {
    authenticate(&state, request.headers(), false).await?;
    let body = json_body(&state, request).await?;
    run_list(&state, vec![Kind::User, Kind::Group, Kind::Contact], search_params(&body)?).await
}

/// POST /{type}/.search (the `{id}` route with POST).
async fn search_one_type(
    State(state): State<Arc<AppState>>,
    Path((resource, id)): Path<(String, String)>,
    request: Request,
) -> ApiResult {
    if id != ".search" {
        return Err(ScimError::status(405, "POST is for creating at the collection, or .search").into());
    }
    authenticate(&state, request.headers(), false).await?;
    let kind = kind_of(&resource)?;
    let body = json_body(&state, request).await?;
    run_list(&state, vec![kind], search_params(&body)?).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProjectionParams {
    attributes: Option<String>,
    excluded_attributes: Option<String>,
}

async fn read(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((resource, id)): Path<(String, String)>,
    QueryParams(p): QueryParams<ProjectionParams>,
) -> ApiResult {
    authenticate(&state, &headers, false).await?;
    let kind = kind_of(&resource)?;
    let projection = Projection::parse(p.attributes.as_deref(), p.excluded_attributes.as_deref())?;
    let if_none_match = header_str(&headers, header::IF_NONE_MATCH);
    let state2 = state.clone();
    let found = db(&state, move |conn| {
        let Some(s) = objects::load(conn, Some(kind), &id)? else {
            return Err(ScimError::status(404, format!("{} {id} not found", kind.as_str())).into());
        };
        let etag = s.etag();
        if if_none_match.as_deref().is_some_and(|t| t.split(',').any(|x| x.trim() == etag || x.trim() == "*")) {
            return Ok((None, etag));
        }
        let ctx = Ctx { actor: "", base_url: &state2.base_url };
        Ok((Some(objects::render(conn, &s, &ctx, &projection)?), etag))
    })
    .await?;
    match found {
        (None, etag) => {
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            if let Ok(v) = HeaderValue::from_str(&etag) {
                resp.headers_mut().insert(header::ETAG, v);
            }
            Ok(resp)
        }
        (Some(body), etag) => Ok(resource_response(StatusCode::OK, &body, &etag, None)),
    }
}

/// Runs one write in a transaction and renders the result.
async fn write<F>(state: &Arc<AppState>, caller: Caller, projection: Projection, work: F) -> ApiResult
where
    F: FnOnce(&Connection, &Ctx<'_>, Settings) -> Result<(objects::Stored, StatusCode), tenant::TenantError>
        + Send
        + 'static,
{
    let state2 = state.clone();
    let (body, etag, location, status) = db(state, move |conn| {
        let tx = conn.transaction_for(tenant::db::WriteLock::Directory).map_err(tenant::TenantError::from)?;
        let ctx = Ctx { actor: &caller.id, base_url: &state2.base_url };
        let settings = Settings::load(&tx)?;
        let (stored, status) = work(&tx, &ctx, settings)?;
        let body = objects::render(&tx, &stored, &ctx, &projection)?;
        tx.commit().map_err(tenant::TenantError::from)?;
        let location = format!("{}{}/{}", state2.base_url, stored.kind.rt().endpoint, stored.id);
        Ok((body, stored.etag(), location, status))
    })
    .await?;
    Ok(resource_response(status, &body, &etag, (status == StatusCode::CREATED).then_some(location)))
}

async fn create(
    State(state): State<Arc<AppState>>,
    Path(resource): Path<String>,
    QueryParams(p): QueryParams<ProjectionParams>,
    request: Request,
) -> ApiResult {
    let caller = authenticate(&state, request.headers(), true).await?;
    let kind = kind_of(&resource)?;
    let projection = Projection::parse(p.attributes.as_deref(), p.excluded_attributes.as_deref())?;
    // Checked before the writer is taken: it reads no state.
    let checked = objects::Checked::new(kind, json_body(&state, request).await?)?;
    write(&state, caller, projection, move |conn, ctx, settings| {
        let (stored, outcome) = objects::create_checked(conn, ctx, settings, checked)?;
        Ok((stored, if outcome == Outcome::Created { StatusCode::CREATED } else { StatusCode::OK }))
    })
    .await
}

async fn replace(
    State(state): State<Arc<AppState>>,
    Path((resource, id)): Path<(String, String)>,
    QueryParams(p): QueryParams<ProjectionParams>,
    request: Request,
) -> ApiResult {
    let caller = authenticate(&state, request.headers(), true).await?;
    let kind = kind_of(&resource)?;
    let projection = Projection::parse(p.attributes.as_deref(), p.excluded_attributes.as_deref())?;
    let if_match = header_str(request.headers(), header::IF_MATCH);
    let body = json_body(&state, request).await?;
    write(&state, caller, projection, move |conn, ctx, _| {
        Ok((objects::replace(conn, ctx, kind, &id, body, if_match.as_deref())?, StatusCode::OK))
    })
    .await
}

async fn patch(
    State(state): State<Arc<AppState>>,
    Path((resource, id)): Path<(String, String)>,
    QueryParams(p): QueryParams<ProjectionParams>,
    request: Request,
) -> ApiResult {
    let caller = authenticate(&state, request.headers(), true).await?;
    let kind = kind_of(&resource)?;
    // RFC 7644 §3.5.2: the entire resource comes back; clients of very large
    // groups ask for `excludedAttributes=members`.
    let projection = Projection::parse(p.attributes.as_deref(), p.excluded_attributes.as_deref())?;
    let if_match = header_str(request.headers(), header::IF_MATCH);
    let body = json_body(&state, request).await?;
    let ops = parse_patch(&body)?;
    write(&state, caller, projection, move |conn, ctx, _| {
        Ok((objects::patch(conn, ctx, kind, &id, &ops, if_match.as_deref())?, StatusCode::OK))
    })
    .await
}

async fn delete(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((resource, id)): Path<(String, String)>,
) -> ApiResult {
    let caller = authenticate(&state, &headers, true).await?;
    let kind = kind_of(&resource)?;
    let if_match = header_str(&headers, header::IF_MATCH);
    let state2 = state.clone();
    db(&state, move |conn| {
        let tx = conn.transaction_for(tenant::db::WriteLock::Directory).map_err(tenant::TenantError::from)?;
        let ctx = Ctx { actor: &caller.id, base_url: &state2.base_url };
        objects::delete(&tx, &ctx, kind, &id, if_match.as_deref())?;
        tx.commit().map_err(tenant::TenantError::from)?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether any string in `value` may be a bulkId reference (see [`resolve_bulk_ids`]).
fn names_bulk_ids(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains("bulkId:"),
        Value::Array(a) => a.iter().any(names_bulk_ids),
        Value::Object(o) => o.values().any(names_bulk_ids),
        _ => false,
    }
}

/// Replaces `bulkId:x` references in strings with the ids created so far.
fn resolve_bulk_ids(value: &mut Value, ids: &std::collections::HashMap<String, String>) -> Result<(), String> {
    match value {
        Value::String(s) => {
            if let Some(key) = s.strip_prefix("bulkId:") {
                match ids.get(key) {
                    Some(id) => *s = id.clone(),
                    None => return Err(key.to_string()),
                }
            } else if s.contains("/bulkId:") {
                // A path such as /Users/bulkId:u1.
                let mut parts = Vec::new();
                for part in s.split('/') {
                    match part.strip_prefix("bulkId:") {
                        Some(key) => parts.push(ids.get(key).cloned().ok_or_else(|| key.to_string())?),
                        None => parts.push(part.to_string()),
                    }
                }
                *s = parts.join("/");
            }
            Ok(())
        }
        Value::Array(a) => a.iter_mut().try_for_each(|v| resolve_bulk_ids(v, ids)),
        Value::Object(o) => o.values_mut().try_for_each(|v| resolve_bulk_ids(v, ids)),
        _ => Ok(()),
    }
}

async fn bulk(State(state): State<Arc<AppState>>, request: Request) -> ApiResult {
    let caller = authenticate(&state, request.headers(), true).await?;
    let bytes = json_bytes(&state, request).await?;
    // What each operation's request says alone is worked out here, on the
    // connection's task, so the writer, which every write waits for, only
    // runs what needs the store.
    let (fail_on_errors, mut prepared) = prepare_bulk(&bytes)?;
    let state2 = state.clone();
    let (prepared, answers) = db(&state, move |conn| {
        let ctx = Ctx { actor: &caller.id, base_url: &state2.base_url };
        // Most batches (a sync cycle's) succeed whole: they run without a
        // savepoint per operation, which costs a copy of every page an
        // operation touches. The first failure rolls that try back and the
        // batch runs again with one savepoint per operation, so a failed
        // operation leaves nothing and the others still apply.
        for isolated in [false, true] {
            if isolated {
                // The first try took the checked bodies: the request is read again.
                prepared = prepare_bulk(&bytes)?.1;
            }
            let tx = conn.transaction_for(tenant::db::WriteLock::Directory).map_err(tenant::TenantError::from)?;
            let settings = Settings::load(&tx)?;
            match run_bulk(&tx, &ctx, settings, &mut prepared, fail_on_errors, isolated) {
                Some(answers) => {
                    tx.commit().map_err(tenant::TenantError::from)?;
                    return Ok((prepared, answers));
                }
                None => drop(tx),
            }
        }
        Err(ScimError::status(500, "internal error").into())
    })
    .await?;
    let results: Vec<Value> =
        prepared.iter().zip(answers).filter_map(|(op, answer)| answer.map(|a| bulk_result(&op.raw, a))).collect();
    Ok(scim_json(StatusCode::OK, &json!({"schemas": [BULK_RESPONSE_SCHEMA], "Operations": results})))
}

/// A Bulk request's body read: its failOnErrors, and its operations, each
/// prepared ([`PreparedOp`]).
fn prepare_bulk(bytes: &[u8]) -> Result<(Option<usize>, Vec<PreparedOp>), ApiError> {
    let mut body = parse_json(bytes)?;
    if !body.get("schemas").and_then(Value::as_array).is_some_and(|s| s.iter().any(|x| x == BULK_REQUEST_SCHEMA)) {
        return Err(ScimError::new(
            ScimType::InvalidSyntax,
            format!("a bulk body must list {BULK_REQUEST_SCHEMA} in schemas"),
        )
        .into());
    }
    let fail_on_errors = body.get("failOnErrors").and_then(Value::as_u64).map(|n| n.max(1) as usize);
    let ops = match body.as_object_mut().and_then(|b| b.remove("Operations")) {
        Some(Value::Array(ops)) => ops,
        _ => return Err(ScimError::new(ScimType::InvalidSyntax, "Operations is missing").into()),
    };
    if ops.len() > MAX_BULK_OPERATIONS {
        return Err(ScimError {
            status: 413,
            scim_type: Some(ScimType::TooMany),
            detail: format!("at most {MAX_BULK_OPERATIONS} operations per request"),
        }
        .into());
    }
    Ok((fail_on_errors, ops.into_iter().map(PreparedOp::new).collect()))
}

/// A bulk operation with what its request says alone: whether it names a
/// bulkId, and for a create that names none its body checked.
struct PreparedOp {
    /// The operation; without its `data` when that was taken for `checked`.
    raw: Value,
    names_bulk_ids: bool,
    /// Taken by the first try; a second try (one savepoint per operation)
    /// prepares the request again.
    checked: Option<Result<objects::Checked, tenant::TenantError>>,
}

impl PreparedOp {
    fn new(mut raw: Value) -> PreparedOp {
        let names_bulk_ids = names_bulk_ids(&raw);
        let is_post = raw.get("method").and_then(Value::as_str).is_some_and(|m| m.eq_ignore_ascii_case("POST"));
        let checked = match (is_post && !names_bulk_ids, bulk_target(&raw)) {
            (true, Some((kind, None))) => {
                // Moved, not copied: the check's result is what is stored.
                let data = raw.as_object_mut().and_then(|op| op.remove("data")).unwrap_or(Value::Null);
                Some(objects::Checked::new(kind, data))
            }
            _ => None,
        };
        PreparedOp { raw, names_bulk_ids, checked }
    }
}

/// The resource type and id a bulk operation's path names.
fn bulk_target(op: &Value) -> Option<(Kind, Option<String>)> {
    let path = op.get("path").and_then(Value::as_str)?;
    let mut segments = path.trim_start_matches('/').split('/');
    let kind = segments.next().and_then(Kind::from_endpoint)?;
    Some((kind, segments.next().map(str::to_string)))
}

/// Runs a bulk request's operations in order, an operation that names a
/// bulkId not created yet after the others. `isolated`: each operation in
/// its own savepoint (a failure is undone and reported); otherwise the
/// first failure gives `None`, leaving the transaction to be rolled back.
/// The answers are by operation; `None` for those not run (failOnErrors).
fn run_bulk(
    tx: &Connection,
    ctx: &Ctx<'_>,
    settings: Settings,
    ops: &mut [PreparedOp],
    fail_on_errors: Option<usize>,
    isolated: bool,
) -> Option<Vec<Option<BulkAnswer>>> {
    let mut ids = std::collections::HashMap::new();
    let mut results: Vec<Option<BulkAnswer>> = std::iter::repeat_with(|| None).take(ops.len()).collect();
    let mut errors = 0usize;
    let mut pending: Vec<usize> = (0..ops.len()).collect();
    'passes: while !pending.is_empty() {
        let mut waiting = Vec::new();
        let mut progressed = false;
        for &i in &pending {
            let op = ops.get_mut(i)?;
            match bulk_one(tx, ctx, settings, op, &mut ids, isolated) {
                BulkStep::Wait => waiting.push(i),
                BulkStep::Done(answer) => {
                    progressed = true;
                    if answer.error.is_some() {
                        if !isolated {
                            return None;
                        }
                        errors += 1;
                    }
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Some(answer);
                    }
                    if fail_on_errors.is_some_and(|n| errors >= n) {
                        break 'passes;
                    }
                }
            }
        }
        if !progressed {
            if !isolated {
                return None;
            }
            for i in waiting {
                let err = ScimError::new(
                    ScimType::InvalidValue,
                    "the operation refers to a bulkId that no operation creates",
                );
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(BulkAnswer::failed(err));
                }
            }
            break;
        }
        pending = waiting;
    }
    Some(results)
}

enum BulkStep {
    Wait,
    Done(BulkAnswer),
}

/// What became of one bulk operation; made into its JSON after the writer
/// is released.
struct BulkAnswer {
    location: Option<String>,
    version: Option<String>,
    status: u16,
    error: Option<ScimError>,
}

impl BulkAnswer {
    fn failed(error: ScimError) -> BulkAnswer {
        BulkAnswer { location: None, version: None, status: error.status, error: Some(error) }
    }
}

fn bulk_result(op: &Value, answer: BulkAnswer) -> Value {
    let BulkAnswer { location, version, status, error } = answer;
    let mut r = json!({"method": op.get("method").cloned().unwrap_or(Value::Null), "status": status.to_string()});
    if let Some(obj) = r.as_object_mut() {
        if let Some(b) = op.get("bulkId") {
            obj.insert("bulkId".into(), b.clone());
        }
        if let Some(l) = location {
            obj.insert("location".into(), json!(l));
        }
        if let Some(v) = version {
            obj.insert("version".into(), json!(v));
        }
        if let Some(e) = error {
            obj.insert("response".into(), e.to_json());
        }
    }
    r
}

fn bulk_one(
    conn: &Connection,
    ctx: &Ctx<'_>,
    settings: Settings,
    prepared: &mut PreparedOp,
    ids: &mut std::collections::HashMap<String, String>,
    isolated: bool,
) -> BulkStep {
    let op = &prepared.raw;
    // Copied only to put ids in for bulkId references (a sync export's
    // objects have none: copying every operation was a tenth of the work).
    let op_resolved = if prepared.names_bulk_ids {
        let mut resolved = op.clone();
        if resolve_bulk_ids(&mut resolved, ids).is_err() {
            return BulkStep::Wait;
        }
        std::borrow::Cow::Owned(resolved)
    } else {
        std::borrow::Cow::Borrowed(op)
    };
    let fail = |e: ScimError| BulkStep::Done(BulkAnswer::failed(e));
    let method = op.get("method").and_then(Value::as_str).unwrap_or("").to_ascii_uppercase();
    let path = op_resolved.get("path").and_then(Value::as_str).unwrap_or("");
    let Some((kind, id)) = bulk_target(&op_resolved) else {
        return fail(ScimError::invalid_value(format!("bulk path {path:?} names no resource type")));
    };
    let data = op_resolved.get("data").unwrap_or(&Value::Null);
    let version = op.get("version").and_then(Value::as_str).map(str::to_string);
    if isolated && conn.execute_batch("SAVEPOINT bulk_op").is_err() {
        return fail(ScimError::status(500, "internal error"));
    }
    let checked = prepared.checked.take();
    let result: Result<(Option<objects::Stored>, u16), tenant::TenantError> = (|| match (method.as_str(), &id) {
        ("POST", None) => {
            if op.get("bulkId").and_then(Value::as_str).is_none() {
                return Err(ScimError::invalid_value("POST operations need a bulkId").into());
            }
            let (s, outcome) = match checked {
                Some(checked) => objects::create_checked(conn, ctx, settings, checked?)?,
                None => objects::create(conn, ctx, settings, kind, data)?,
            };
            Ok((Some(s), if outcome == Outcome::Created { 201 } else { 200 }))
        }
        ("PUT", Some(id)) => Ok((Some(objects::replace(conn, ctx, kind, id, data.clone(), version.as_deref())?), 200)),
        ("PATCH", Some(id)) => {
            let ops = parse_patch(data)?;
            Ok((Some(objects::patch(conn, ctx, kind, id, &ops, version.as_deref())?), 200))
        }
        ("DELETE", Some(id)) => {
            objects::delete(conn, ctx, kind, id, version.as_deref())?;
            Ok((None, 204))
        }
        _ => Err(ScimError::invalid_value(format!(
            "{method} {path} is not a bulk operation (POST /Type, PUT|PATCH|DELETE /Type/id)"
        ))
        .into()),
    })();
    match result {
        Ok((stored, status)) => {
            if isolated {
                let _ = conn.execute_batch("RELEASE bulk_op");
            }
            let (location, version) = match &stored {
                Some(s) => {
                    if let Some(b) = op.get("bulkId").and_then(Value::as_str) {
                        ids.insert(b.to_string(), s.id.clone());
                    }
                    (Some(format!("{}{}/{}", ctx.base_url, kind.rt().endpoint, s.id)), Some(s.etag()))
                }
                None => (id.map(|i| format!("{}{}/{i}", ctx.base_url, kind.rt().endpoint)), None),
            };
            BulkStep::Done(BulkAnswer { location, version, status, error: None })
        }
        Err(e) => {
            if isolated {
                let _ = conn.execute_batch("ROLLBACK TO bulk_op; RELEASE bulk_op");
            }
            fail(e.to_scim())
        }
    }
}
