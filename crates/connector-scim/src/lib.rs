//! The export side over SCIM 2.0: creates, PATCHes and deletes resources in
//! the tenant (or any SCIM service that can filter on `externalId`),
//! retrying with back-off and honouring `429 Too Many Requests` with
//! `Retry-After`. Retries never duplicate: a create that may have happened
//! is looked up by its externalId before it is sent again.

use std::path::Path;
use std::time::Duration;

use directory::ObjectKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sync::engine::{ExportOp, Target, TargetError};

mod passwords;

const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

#[derive(Debug, thiserror::Error)]
pub enum ScimTargetError {
    #[error("cannot read the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("the SCIM client could not be built: {0}")]
    Client(String),
    #[error("the tenant URL {url:?}: {why}")]
    Url { url: String, why: proto::url::UrlError },
}

/// The bearer token crosses to this address: https, or http to loopback only.
fn check_tenant_url(url: &str) -> Result<(), ScimTargetError> {
    proto::url::check_web_url(url).map(drop).map_err(|why| ScimTargetError::Url { url: url.to_string(), why })
}

/// A SCIM service as export target.
#[derive(Debug, Clone)]
pub struct ScimTarget {
    client: reqwest::Client,
    base: String,
    token: String,
    /// Attempts per request for retryable failures (429, 5xx, connection).
    pub attempts: u32,
    /// Send batches as SCIM Bulk requests (else one request per object).
    pub bulk: bool,
    /// PBKDF2 iterations of the PPH1 records made from NT hashes.
    pub pph1_iterations: std::num::NonZeroU32,
    /// What the tenant already has (password hash sync), in memory only.
    pushed: passwords::Pushed,
    /// The fencing token sent with every request (a shared sync state's lease).
    pub fence: Option<proto::hybrid::SyncFence>,
    /// Told every answer's status (`None`: no answer), for metrics.
    pub observe: Option<Observer>,
}

/// A callback told each answer's HTTP status (`None`: no answer came).
#[derive(Clone)]
pub struct Observer(pub std::sync::Arc<dyn Fn(Option<u16>) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

fn endpoint(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Group => "Groups",
        ObjectKind::Contact => "Contacts",
        _ => "Users",
    }
}

impl ScimTarget {
    /// `base_url` is the SCIM root (`https://host/scim/v2`).
    pub fn new(
        base_url: &str,
        token: String,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<ScimTarget, ScimTargetError> {
        check_tenant_url(base_url)?;
        // Idle connections are dropped before the tenant closes them (15 s
        // after an answer), so no create goes out on one it is closing.
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(proto::http::CLIENT_POOL_IDLE);
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| ScimTargetError::CaFile { path: path.display().to_string(), reason: e.to_string() })?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| ScimTargetError::CaFile { path: path.display().to_string(), reason: e.to_string() })?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| ScimTargetError::Client(e.to_string()))?;
        Ok(ScimTarget {
            client,
            base: base_url.trim_end_matches('/').to_string(),
            token,
            attempts: 5,
            bulk: true,
            pph1_iterations: std::num::NonZeroU32::new(::passwords::pph1::DEFAULT_ITERATIONS)
                .unwrap_or(std::num::NonZeroU32::MIN),
            pushed: passwords::Pushed::default(),
            fence: None,
            observe: None,
        })
    }

    /// Sends a request, retrying what is worth retrying; returns status and
    /// body. PATCH, DELETE, GET and password records are idempotent and are
    /// retried on 429, 5xx and connection errors. A create (POST, Bulk) is
    /// retried only when the service certainly did not act on it — a 429, or
    /// a connection that never opened; after a 5xx or a lost answer it may
    /// have, and the failure says so (`uncertain`) so the caller can look
    /// before it creates again.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        repeat: Repeat,
    ) -> Result<(StatusCode, Value), Failed> {
        self.send_tries(method, url, body.map(json_body), repeat, self.attempts).await
    }

    /// `body` is serialized JSON (see [`json_body`]): once, however many tries.
    async fn send_tries(
        &self,
        method: Method,
        url: &str,
        body: Option<bytes::Bytes>,
        repeat: Repeat,
        attempts: u32,
    ) -> Result<(StatusCode, Value), Failed> {
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=attempts.max(1) {
            let mut req = self.client.request(method.clone(), url).bearer_auth(&self.token);
            if let Some(fence) = &self.fence {
                req = req.header(proto::hybrid::SYNC_FENCE_HEADER, fence.to_string());
            }
            if let Some(b) = &body {
                req = req.header("content-type", "application/scim+json").body(b.clone());
            }
            let sent = exchange(req).await;
            if let Some(Observer(observe)) = &self.observe {
                observe(sent.as_ref().ok().map(|a| a.status.as_u16()));
            }
            match sent {
                Ok(Answer { status, retry_after, text, json }) => {
                    let refused_unprocessed = status == StatusCode::TOO_MANY_REQUESTS;
                    if status.is_server_error() && repeat == Repeat::OnlyIfUnprocessed {
                        return Err(Failed { message: describe(status, &json, &text), uncertain: true });
                    }
                    if refused_unprocessed || status.is_server_error() {
                        let wait = retry_after.map(|s| Duration::from_secs(s.min(60))).unwrap_or(delay);
                        last = describe(status, &json, &text);
                        if attempt == attempts.max(1) {
                            break;
                        }
                        tracing::warn!(%url, %status, attempt, wait_ms = wait.as_millis() as u64, "tenant asked to retry");
                        tokio::time::sleep(wait).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                        continue;
                    }
                    return Ok((status, json));
                }
                Err(e) => {
                    last = format!("{} {url}: {e}", method);
                    if !e.is_connect() && repeat == Repeat::OnlyIfUnprocessed {
                        return Err(Failed { message: last, uncertain: true });
                    }
                    if attempt == attempts.max(1) {
                        break;
                    }
                    tracing::warn!(%url, attempt, error = %e, "tenant unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        Err(Failed { message: format!("gave up after {attempts} attempts: {last}"), uncertain: false })
    }

    /// The id of the resource of this kind whose externalId is `external_id`:
    /// after an uncertain create, whether it happened.
    async fn find_created(&self, kind: ObjectKind, external_id: &str) -> Result<Option<String>, TargetError> {
        let filter = format!("externalId eq {}", Value::String(external_id.to_string()));
        let url = reqwest::Url::parse_with_params(
            &format!("{}/{}", self.base, endpoint(kind)),
            [("filter", filter.as_str()), ("attributes", "id")],
        )
        .map_err(|e| TargetError { message: format!("bad SCIM URL: {e}"), not_found: false })?;
        let (status, answer) =
            self.send(Method::GET, url.as_str(), None, Repeat::Always).await.map_err(TargetError::from)?;
        if !status.is_success() {
            return Err(failure(status, &answer));
        }
        let found: Vec<&str> = answer
            .get("Resources")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(|r| r.get("id").and_then(Value::as_str)).collect())
            .unwrap_or_default();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some((*one).to_string())),
            _ => Err(TargetError {
                message: format!("{} resources have externalId {external_id:?}; remove the duplicates", found.len()),
                not_found: false,
            }),
        }
    }

    /// Creates a resource so that asking again never makes a second one:
    /// after an uncertain failure, the service is asked whether it exists.
    async fn create(
        &self,
        kind: ObjectKind,
        resource: &Value,
        maybe_done: bool,
    ) -> Result<Option<String>, TargetError> {
        let external_id = resource.get("externalId").and_then(Value::as_str);
        let mut uncertain = maybe_done;
        for _ in 0..self.attempts.max(1) {
            if uncertain
                && let Some(external_id) = external_id
                && let Some(id) = self.find_created(kind, external_id).await?
            {
                return Ok(Some(id));
            }
            let url = format!("{}/{}?attributes=id", self.base, endpoint(kind));
            match self.send(Method::POST, &url, Some(resource), Repeat::OnlyIfUnprocessed).await {
                Ok((status, body)) if status.is_success() => {
                    return body.get("id").and_then(Value::as_str).map(|s| Some(s.to_string())).ok_or_else(|| {
                        TargetError { message: "the tenant's answer has no id".into(), not_found: false }
                    });
                }
                Ok((StatusCode::CONFLICT, body)) => {
                    return self.adopt(kind, resource, failure(StatusCode::CONFLICT, &body)).await;
                }
                Ok((status, body)) => return Err(failure(status, &body)),
                Err(f) if f.uncertain && external_id.is_some() => {
                    tracing::warn!(error = %f.message, "a create may or may not have happened; looking before trying again");
                    uncertain = true;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(f) => return Err(f.into()),
            }
        }
        Err(TargetError { message: format!("gave up creating after {} attempts", self.attempts), not_found: false })
    }
}

impl ScimTarget {
    /// Sends a cycle's report to the tenant (`/hybrid/v1/sync-reports`).
    pub async fn report(&self, report: &proto::hybrid::SyncReport) -> Result<(), TargetError> {
        let url = format!("{}{}", self.root(), proto::hybrid::SYNC_REPORTS_PATH);
        let body = serde_json::to_value(report)
            .map_err(|e| TargetError { message: format!("the report: {e}"), not_found: false })?;
        // One attempt: a report is worth less than the next cycle's time.
        let (status, answer) = self.send_tries(Method::POST, &url, Some(json_body(&body)), Repeat::Always, 1).await?;
        if status.is_success() { Ok(()) } else { Err(failure(status, &answer)) }
    }

    /// The objects waiting in the tenant for a value another object holds.
    pub async fn quarantine(&self) -> Result<proto::hybrid::QuarantineList, TargetError> {
        let url = format!("{}{}", self.root(), proto::hybrid::QUARANTINE_PATH);
        let (status, answer) = self.send_tries(Method::GET, &url, None, Repeat::Always, 1).await?;
        if !status.is_success() {
            return Err(failure(status, &answer));
        }
        serde_json::from_value(answer)
            .map_err(|e| TargetError { message: format!("the quarantine list: {e}"), not_found: false })
    }

    /// The sourceAnchors whose lineage the admin console asked about.
    pub async fn lineage_requests(&self) -> Result<Vec<String>, TargetError> {
        let url = format!("{}{}", self.root(), proto::hybrid::LINEAGE_PATH);
        let (status, answer) = self.send_tries(Method::GET, &url, None, Repeat::Always, 1).await?;
        if !status.is_success() {
            return Err(failure(status, &answer));
        }
        let asked: proto::hybrid::LineageRequests = serde_json::from_value(answer)
            .map_err(|e| TargetError { message: format!("lineage requests: {e}"), not_found: false })?;
        Ok(asked.immutable_ids)
    }

    /// One page of the groups the cloud manages (group writeback), after
    /// the group id `after`; `None` from a tenant without the endpoint.
    pub async fn cloud_groups(&self, after: &str) -> Result<Option<proto::hybrid::CloudGroupPage>, TargetError> {
        let root = self.root();
        let mut url = reqwest::Url::parse(&format!("{root}{}", proto::hybrid::CLOUD_GROUPS_PATH))
            .map_err(|e| TargetError { message: format!("the tenant URL: {e}"), not_found: false })?;
        url.query_pairs_mut().append_pair("after", after);
        let (status, answer) = self.send_tries(Method::GET, url.as_str(), None, Repeat::Always, 3).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(failure(status, &answer));
        }
        serde_json::from_value(answer)
            .map(Some)
            .map_err(|e| TargetError { message: format!("the cloud groups: {e}"), not_found: false })
    }

    /// Answers them (`POST /hybrid/v1/lineage`).
    pub async fn send_lineage(&self, batch: &proto::hybrid::LineageBatch) -> Result<(), TargetError> {
        let url = format!("{}{}", self.root(), proto::hybrid::LINEAGE_PATH);
        let body = serde_json::to_value(batch)
            .map_err(|e| TargetError { message: format!("lineage: {e}"), not_found: false })?;
        let (status, answer) = self.send_tries(Method::POST, &url, Some(json_body(&body)), Repeat::Always, 1).await?;
        if status.is_success() { Ok(()) } else { Err(failure(status, &answer)) }
    }

    /// The tenant's address without `/scim/v2`.
    fn root(&self) -> &str {
        self.base.strip_suffix("/scim/v2").unwrap_or(&self.base)
    }

    /// The deletions an administrator allowed `connector`'s next cycle in
    /// the console (`/hybrid/v1/deletion-allowances`); none when there is no
    /// allowance or the tenant cannot say (the threshold then holds as set).
    pub async fn deletion_allowance(&self, connector: &str) -> Option<usize> {
        let root = self.root();
        let collection = proto::hybrid::DELETION_ALLOWANCE_PATH.trim_end_matches("/{connector}");
        let mut url = reqwest::Url::parse(&format!("{root}{collection}")).ok()?;
        url.path_segments_mut().ok()?.push(connector);
        match self.send_tries(Method::GET, url.as_str(), None, Repeat::Always, 1).await {
            Ok((status, answer)) if status.is_success() => {
                let allowance: proto::hybrid::DeletionAllowance = serde_json::from_value(answer).ok()?;
                tracing::info!(connector, count = allowance.count, "deletions allowed in the admin console");
                usize::try_from(allowance.count).ok()
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e.message, connector, "could not ask the tenant for allowed deletions");
                None
            }
        }
    }

    /// A create refused as a duplicate: if the object there has the same
    /// externalId, an earlier create of ours reached the tenant without the
    /// sync state learning of it (a daemon killed between the two, the
    /// standby taking over) — it is ours: replaced with what we would have
    /// created, and its id returned. Otherwise the conflict stands.
    async fn adopt(
        &self,
        kind: ObjectKind,
        resource: &Value,
        conflict: TargetError,
    ) -> Result<Option<String>, TargetError> {
        let Some(external_id) = resource.get("externalId").and_then(Value::as_str) else { return Err(conflict) };
        let Some(id) = self.find_created(kind, external_id).await? else { return Err(conflict) };
        tracing::info!(%external_id, %id, "the object was created earlier without the sync state knowing; taking it over");
        let url = format!("{}/{}/{id}?attributes=id", self.base, endpoint(kind));
        let (status, answer) = self.send(Method::PUT, &url, Some(resource), Repeat::Always).await?;
        if status.is_success() { Ok(Some(id)) } else { Err(failure(status, &answer)) }
    }
}

/// Which failures a request may be sent again after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Always,
    OnlyIfUnprocessed,
}

/// A request that failed; `uncertain`: the service may have acted on it.
#[derive(Debug)]
struct Failed {
    message: String,
    uncertain: bool,
}

impl From<Failed> for TargetError {
    fn from(f: Failed) -> TargetError {
        TargetError { message: f.message, not_found: false }
    }
}

fn describe(status: StatusCode, json: &Value, text: &str) -> String {
    match json.get("detail").and_then(Value::as_str) {
        Some(detail) => match json.get("scimType").and_then(Value::as_str) {
            Some(t) => format!("{status} {t}: {detail}"),
            None => format!("{status}: {detail}"),
        },
        None => format!("{status}: {}", text.chars().take(300).collect::<String>()),
    }
}

/// One HTTP answer, read whole.
struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    text: String,
    json: Value,
}

/// Sends `req` and reads its answer in a task of its own: on a runtime with
/// worker threads the request travels and its answer is parsed while the
/// caller's task goes on (the engine plans the next batch meanwhile).
async fn exchange(req: reqwest::RequestBuilder) -> Result<Answer, ExchangeError> {
    let task = tokio::spawn(async move {
        let resp = req.send().await.map_err(ExchangeError::Http)?;
        let status = resp.status();
        let retry_after =
            resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let text = resp.text().await.unwrap_or_default();
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer { status, retry_after, text, json })
    });
    // The task ends only by panicking or with the runtime: the answer is lost.
    task.await.unwrap_or_else(|e| Err(ExchangeError::Lost(e.to_string())))
}

/// Why an exchange brought no answer.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("{0}")]
    Http(reqwest::Error),
    #[error("the request's task ended: {0}")]
    Lost(String),
}

impl ExchangeError {
    /// The connection never opened: the tenant certainly did nothing.
    fn is_connect(&self) -> bool {
        matches!(self, ExchangeError::Http(e) if e.is_connect())
    }
}

fn failure(status: StatusCode, json: &Value) -> TargetError {
    TargetError { message: describe(status, json, ""), not_found: status == StatusCode::NOT_FOUND }
}

const BULK_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
/// Operations per Bulk request (the tenant's maximum is 1,000).
const BULK_MAX: usize = 1000;

/// A request body as bytes.
fn json_body(value: &Value) -> bytes::Bytes {
    bytes::Bytes::from(value.to_string())
}

/// A Bulk request, serialized straight from the export operations it
/// borrows: building it as a `Value` first copied every resource twice
/// (a tenth of the sync process's time in a large export).
#[derive(serde::Serialize)]
struct BulkRequest<'a> {
    schemas: [&'static str; 1],
    #[serde(rename = "Operations")]
    operations: Vec<BulkOperation<'a>>,
}

#[derive(serde::Serialize)]
struct BulkOperation<'a> {
    method: &'static str,
    path: String,
    #[serde(rename = "bulkId", skip_serializing_if = "Option::is_none")]
    bulk_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<BulkData<'a>>,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum BulkData<'a> {
    /// Written as the resource's text, which the store's encoder shares.
    Resource(&'a serde_json::value::RawValue),
    Patch {
        schemas: [&'static str; 1],
        #[serde(rename = "Operations")]
        operations: &'a [Value],
    },
}

fn bulk_operation(i: usize, op: &ExportOp) -> BulkOperation<'_> {
    match op {
        ExportOp::Create { kind, resource } => BulkOperation {
            method: "POST",
            path: format!("/{}", endpoint(*kind)),
            bulk_id: Some(format!("op{i}")),
            data: Some(BulkData::Resource(resource.text())),
        },
        ExportOp::Patch { kind, id, operations } => BulkOperation {
            method: "PATCH",
            path: format!("/{}/{id}", endpoint(*kind)),
            bulk_id: None,
            data: Some(BulkData::Patch { schemas: [PATCH_SCHEMA], operations }),
        },
        ExportOp::Delete { kind, id } => {
            BulkOperation { method: "DELETE", path: format!("/{}/{id}", endpoint(*kind)), bulk_id: None, data: None }
        }
    }
}

/// One Bulk answer's HTTP status (0 when it has none).
fn bulk_status(answer: Option<&Value>) -> u16 {
    answer
        .and_then(|a| a.get("status"))
        .and_then(|s| {
            s.as_str().and_then(|t| t.parse().ok()).or_else(|| s.as_u64().and_then(|n| u16::try_from(n).ok()))
        })
        .unwrap_or(0)
}

/// One Bulk answer → the engine's result for that operation.
fn bulk_result(answer: Option<&Value>) -> Result<Option<String>, TargetError> {
    let Some(a) = answer else {
        return Err(TargetError { message: "the tenant's Bulk answer misses this operation".into(), not_found: false });
    };
    let status = bulk_status(answer);
    if (200..300).contains(&status) {
        let id = a.get("location").and_then(Value::as_str).and_then(|l| l.rsplit('/').next()).map(str::to_string);
        return Ok(id);
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Err(failure(status, a.get("response").unwrap_or(&Value::Null)))
}

impl ScimTarget {
    async fn one(&self, op: &ExportOp) -> Result<Option<String>, TargetError> {
        match op {
            ExportOp::Create { kind, resource } => self.create(*kind, resource, false).await,
            ExportOp::Patch { kind, id, operations } => {
                // The answer is the whole resource; a large group's members need not come back.
                let url = format!("{}/{}/{id}?attributes=id", self.base, endpoint(*kind));
                let body = json!({"schemas": [PATCH_SCHEMA], "Operations": operations});
                let (status, answer) = self.send(Method::PATCH, &url, Some(&body), Repeat::Always).await?;
                if status.is_success() { Ok(None) } else { Err(failure(status, &answer)) }
            }
            ExportOp::Delete { kind, id } => {
                let url = format!("{}/{}/{id}", self.base, endpoint(*kind));
                let (status, answer) = self.send(Method::DELETE, &url, None, Repeat::Always).await?;
                if status.is_success() { Ok(None) } else { Err(failure(status, &answer)) }
            }
        }
    }
}

impl Target for ScimTarget {
    fn push_credentials(
        &mut self,
        items: Vec<sync::phs::CredentialPush>,
    ) -> impl Future<Output = Result<sync::phs::PushReport, TargetError>> + Send + use<> {
        // Sent from a task of its own, as batches are: the engine looks up
        // the next users while the tenant stores these.
        let sender = self.sender();
        let task = tokio::spawn(async move { sender.push(&items).await });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(TargetError { message: format!("the password task ended: {e}"), not_found: false })
            })
        }
    }

    fn apply(&mut self, ops: Vec<ExportOp>) -> impl Future<Output = sync::engine::Answers> + Send + use<> {
        // The batch goes in a task of its own: it travels, the tenant works
        // and the answer is read while the engine records the previous batch.
        let sender = self.sender();
        let count = ops.len();
        let task = tokio::spawn(async move { sender.send_batch(&ops).await });
        async move {
            task.await.unwrap_or_else(|e| {
                let lost = TargetError { message: format!("the batch's task ended: {e}"), not_found: false };
                vec![Err(lost); count]
            })
        }
    }
}

impl ScimTarget {
    /// What sending a batch or passwords needs, for a task of its own (the
    /// password bookkeeping is shared with it).
    fn sender(&self) -> ScimTarget {
        ScimTarget {
            client: self.client.clone(),
            base: self.base.clone(),
            token: self.token.clone(),
            attempts: self.attempts,
            bulk: self.bulk,
            pph1_iterations: self.pph1_iterations,
            pushed: self.pushed.clone(),
            fence: self.fence.clone(),
            observe: self.observe.clone(),
        }
    }

    /// Sends a batch: Bulk requests of at most [`BULK_MAX`] operations, or
    /// one request per object.
    async fn send_batch(&self, ops: &[ExportOp]) -> sync::engine::Answers {
        if ops.len() <= 1 || !self.bulk {
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                out.push(self.one(op).await);
            }
            return out;
        }
        let mut out = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(BULK_MAX) {
            let request = BulkRequest {
                schemas: [BULK_SCHEMA],
                operations: chunk.iter().enumerate().map(|(i, op)| bulk_operation(i, op)).collect(),
            };
            let body = match serde_json::to_vec(&request) {
                Ok(body) => bytes::Bytes::from(body),
                Err(e) => {
                    let e = TargetError { message: format!("a Bulk request: {e}"), not_found: false };
                    out.extend(chunk.iter().map(|_| Err(e.clone())));
                    continue;
                }
            };
            let url = format!("{}/Bulk", self.base);
            let repeat = if chunk.iter().any(|op| matches!(op, ExportOp::Create { .. })) {
                Repeat::OnlyIfUnprocessed
            } else {
                Repeat::Always
            };
            match self.send_tries(Method::POST, &url, Some(body), repeat, self.attempts).await {
                Ok((status, answer)) if status.is_success() => {
                    let answers =
                        answer.get("Operations").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                    // Answers carry the method and (for creates) the bulkId; match them up in order.
                    for (i, op) in chunk.iter().enumerate() {
                        let mine = answers
                            .get(i)
                            .filter(|a| a.get("bulkId").and_then(Value::as_str).is_none_or(|b| b == format!("op{i}")));
                        let mine = mine.or_else(|| {
                            answers.iter().find(|a| a.get("bulkId").and_then(Value::as_str) == Some(&format!("op{i}")))
                        });
                        let result = match (op, bulk_result(mine)) {
                            (ExportOp::Create { kind, resource }, Err(e)) if bulk_status(mine) == 409 => {
                                self.adopt(*kind, resource, e).await
                            }
                            (_, result) => result,
                        };
                        out.push(result);
                    }
                }
                Ok((status, answer)) => {
                    let e = failure(status, &answer);
                    out.extend(chunk.iter().map(|_| Err(e.clone())));
                }
                // The service may have done some of it: each operation on its
                // own, creates only after looking whether they happened.
                Err(f) if f.uncertain => {
                    tracing::warn!(error = %f.message, "a Bulk request may have been applied; sending its operations one by one");
                    for op in chunk {
                        out.push(match op {
                            ExportOp::Create { kind, resource } => self.create(*kind, resource, true).await,
                            other => self.one(other).await,
                        });
                    }
                }
                Err(f) => {
                    let e = TargetError::from(f);
                    out.extend(chunk.iter().map(|_| Err(e.clone())));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_only_to_https_or_loopback() {
        for bad in ["http://tenant.example/scim/v2", "http://127.0.0.1@evil.example/scim/v2", "ftp://x/", "tenant/scim"]
        {
            assert!(check_tenant_url(bad).is_err(), "{bad}");
        }
        for good in ["https://tenant.example/scim/v2", "http://127.0.0.1:8080/scim/v2", "http://[::1]/scim/v2"] {
            assert!(check_tenant_url(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_bulk_status_out_of_range_is_an_error_not_a_success() {
        // 65736 truncated to 16 bits is 200.
        assert!(bulk_result(Some(&serde_json::json!({"status": 65736}))).is_err());
        assert!(bulk_result(Some(&serde_json::json!({"status": "65736"}))).is_err());
        assert!(bulk_result(Some(&serde_json::json!({"status": 201, "location": "/Users/x"}))).is_ok());
    }
}
