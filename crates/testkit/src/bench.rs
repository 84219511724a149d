//! What the benchmarks share: percentiles, sizes from the environment, and
//! filling a tenant through SCIM `/Bulk`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::TestkitError;

const BULK: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";

/// The `p` quantile (0..=1) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let last = sorted.len().saturating_sub(1);
    sorted.get(((last as f64) * p).round() as usize).copied().unwrap_or_default()
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A size from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One SCIM `/Bulk` request of `operations` to the tenant at `base`
/// (`…/scim/v2`); the per-operation results.
pub async fn scim_bulk(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    operations: Vec<Value>,
) -> Result<Vec<Value>, TestkitError> {
    let response = client
        .post(format!("{base}/Bulk"))
        .bearer_auth(token)
        .header("content-type", "application/scim+json")
        .body(json!({"schemas": [BULK], "Operations": operations}).to_string())
        .send()
        .await
        .map_err(|e| TestkitError::Other(format!("bulk: {e}")))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| TestkitError::Other(format!("bulk answer: {e}")))?;
    if !status.is_success() {
        return Err(TestkitError::Other(format!("bulk: {status} {body}")));
    }
    Ok(body["Operations"].as_array().cloned().unwrap_or_default())
}
