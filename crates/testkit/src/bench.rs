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

/// CPU seconds (user + system) the processes `pids` have used so far;
/// gone ones count 0.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = clock_ticks();
    pids.iter().filter_map(|pid| cpu_ticks(*pid)).sum::<f64>() / ticks
}

/// User + system clock ticks process `pid` has used so far.
pub(crate) fn cpu_ticks(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of `/proc/…/stat` (`getconf CLK_TCK`; 100 on Linux).
pub(crate) fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The children of `parent` (say, a PostgreSQL server's backends).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string))
                })
                .and_then(|ppid| ppid.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// Who signs in as the `n`th sign-in of client `c`: user name and password.
pub type Credentials = std::sync::Arc<dyn Fn(usize, usize) -> (String, String) + Send + Sync>;

/// `total` sign-ins (the whole browser flow from `authorize` to a code) by
/// `clients` concurrent browsers; the latency of each. With
/// `fresh_connections` every request opens a new connection (behind a
/// round-robin proxy: the next node). A sign-in that fails is an error.
pub async fn sign_ins(
    authorize: std::sync::Arc<String>,
    clients: usize,
    total: usize,
    credentials: Credentials,
    fresh_connections: bool,
) -> Result<Vec<Duration>, TestkitError> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (authorize, credentials) = (authorize.clone(), credentials.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for n in 0..total / clients.max(1) {
                let (user, password) = credentials(c, n);
                let mut browser =
                    if fresh_connections { crate::Browser::without_keep_alive() } else { crate::Browser::new() }?;
                let started = std::time::Instant::now();
                let page = browser.password_sign_in(&authorize, &user, &password).await?;
                if !page.location.as_deref().is_some_and(|l| l.contains("code=")) {
                    return Err(TestkitError::Other(format!("{user} did not sign in: {}", page.body)));
                }
                out.push(started.elapsed());
            }
            Ok(out)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|e| TestkitError::Other(format!("a sign-in client failed: {e}")))??);
    }
    Ok(all)
}
