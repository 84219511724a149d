//! The tenant on one machine vs several: SQLite (one node), PostgreSQL with
//! one node, PostgreSQL with three nodes behind a round-robin proxy — all
//! in one run on this machine (its two cores run the nodes, PostgreSQL and
//! the clients alike, so the ratios and the CPU split say more than the
//! absolute figures).
//!
//!   cargo bench -p idbridge --bench nodes
//!   IDBRIDGE_BENCH_USERS=20000 IDBRIDGE_BENCH_SIGNINS=400 cargo bench -p idbridge --bench nodes
//!
//! For each set-up: N users created through `/Bulk` (1,000 operations per
//! request, a new connection each, so three nodes share them); 200 of them
//! get PPH1 records at the default count; then S sign-ins (the whole browser
//! flow, a new connection per request) by 20 concurrent clients. Baseline in
//! the same run: `GET /healthz` round trips through the same entry point.
//! CPU seconds of the tenant processes and of PostgreSQL per phase.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use passwords::{NtHash, Pph1};
use serde_json::json;
use testkit::TempDir;
use testkit::bench::{cpu_seconds, env_usize, ms, percentile, scim_bulk};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const HYBRID: &str = "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object";
const SIGNERS: usize = 200;
const CLIENTS: usize = 20;

/// One set-up under test.
struct Setup {
    name: &'static str,
    /// The issuer (entry point) clients use.
    entry: String,
    token: String,
    authorize: String,
    tenant_pids: Vec<u32>,
    postgres_pids: Box<dyn Fn() -> Vec<u32>>,
    _keep: Box<dyn std::any::Any>,
}

fn sqlite(exe: &Path, dir: &Path) -> Setup {
    let t = testkit::SyncTenant::start(exe, dir, "example.org").unwrap();
    let entry = t.base.trim_end_matches("/scim/v2").to_string();
    let authorize = testkit::public_client_authorize_url(exe, &t.data, &entry).unwrap();
    Setup {
        name: "SQLite, 1 node",
        token: t.token.clone(),
        authorize,
        tenant_pids: vec![t.process.0.id()],
        postgres_pids: Box::new(Vec::new),
        entry,
        _keep: Box::new(t),
    }
}

fn postgres(exe: &Path, dir: &Path, count: usize, name: &'static str) -> Setup {
    let nodes = testkit::TenantNodes::start(exe, dir, count).unwrap();
    let token = nodes.sync_token(dir).unwrap();
    let entry = nodes.public.clone();
    let authorize = nodes.public_client_authorize_url().unwrap();
    let nodes = Arc::new(nodes);
    let pg = nodes.clone();
    Setup {
        name,
        token,
        authorize,
        tenant_pids: nodes.pids(),
        postgres_pids: Box::new(move || pg.pg.server_pids()),
        entry,
        _keep: Box::new(nodes),
    }
}

/// Wall seconds and the CPU seconds of the tenant and of PostgreSQL over `work`.
fn timed<T>(setup: &Setup, work: impl FnOnce() -> T) -> (T, f64, f64, f64) {
    let pg_pids = (setup.postgres_pids)();
    let (tenant0, pg0) = (cpu_seconds(&setup.tenant_pids), cpu_seconds(&pg_pids));
    let started = Instant::now();
    let value = work();
    let wall = started.elapsed().as_secs_f64();
    let pg_pids = (setup.postgres_pids)();
    (value, wall, cpu_seconds(&setup.tenant_pids) - tenant0, cpu_seconds(&pg_pids) - pg0)
}

fn main() {
    let exe = Path::new(env!("CARGO_BIN_EXE_idbridge"));
    let users = env_usize("IDBRIDGE_BENCH_USERS", 20_000);
    let signins = env_usize("IDBRIDGE_BENCH_SIGNINS", 400);
    let tmp = TempDir::new("bench-nodes").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let record = Pph1::derive(
        &NtHash::of_password("Bench-pass-1"),
        &[7; 10],
        NonZeroU32::new(passwords::pph1::DEFAULT_ITERATIONS).unwrap(),
    )
    .to_string();
    println!("{users} users by /Bulk, then {signins} sign-ins by {CLIENTS} clients (PPH1 at the default count)");
    let mut rows = Vec::new();
    for kind in 0..3 {
        let dir = tmp.join(&format!("setup{kind}"));
        std::fs::create_dir_all(&dir).unwrap();
        let setup = match kind {
            0 => sqlite(exe, &dir),
            1 => postgres(exe, &dir, 1, "PostgreSQL, 1 node"),
            _ => postgres(exe, &dir, 3, "PostgreSQL, 3 nodes"),
        };
        let base = format!("{}/scim/v2", setup.entry);
        let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();

        // Baseline: /healthz through the same entry point.
        let mut health: Vec<Duration> = rt.block_on(async {
            let mut out = Vec::new();
            for _ in 0..200 {
                let t = Instant::now();
                assert!(fresh.get(format!("{}/healthz", setup.entry)).send().await.unwrap().status().is_success());
                out.push(t.elapsed());
            }
            out
        });
        health.sort();

        let (_, create_wall, create_tenant, create_pg) = timed(&setup, || {
            rt.block_on(async {
                for start in (0..users).step_by(1000) {
                    let ops: Vec<_> = (start..(start + 1000).min(users))
                        .map(|i| {
                            json!({"method": "POST", "path": "/Users", "bulkId": format!("u{i}"), "data": {
                            "schemas": [USER, HYBRID], "userName": format!("user{i}@example.org"),
                            HYBRID: {"immutableId": format!("imm{i}")}}})
                        })
                        .collect();
                    let results = scim_bulk(&fresh, &base, &setup.token, ops).await.unwrap();
                    assert!(results.iter().all(|r| r["status"] == "201"), "{:?}", results.first());
                }
            })
        });
        rt.block_on(async {
            let creds: Vec<_> =
                (0..SIGNERS).map(|i| json!({"immutableId": format!("imm{i}"), "record": record})).collect();
            let r = fresh
                .post(format!("{}/hybrid/v1/passwords", setup.entry))
                .bearer_auth(&setup.token)
                .json(&json!({"credentials": creds}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        });

        let authorize = Arc::new(setup.authorize.clone());
        let (mut latencies, signin_wall, signin_tenant, signin_pg) = timed(&setup, || {
            let credentials: testkit::bench::Credentials = Arc::new(|c, n| {
                (format!("user{}@example.org", (c * 31 + n * 7) % SIGNERS), "Bench-pass-1".to_string())
            });
            rt.block_on(testkit::bench::sign_ins(authorize.clone(), CLIENTS, signins, credentials, true)).unwrap()
        });
        latencies.sort();
        let creates = users as f64 / create_wall;
        let rate = latencies.len() as f64 / signin_wall;
        println!("{}:", setup.name);
        println!(
            "  /healthz p50 {} (baseline)   creates {creates:.0}/s ({create_wall:.1} s; CPU tenant {create_tenant:.1} s, PostgreSQL {create_pg:.1} s)",
            ms(percentile(&health, 0.5))
        );
        println!(
            "  sign-ins {rate:.1}/s  {}   CPU tenant {signin_tenant:.1} s, PostgreSQL {signin_pg:.1} s",
            testkit::latency_summary(&latencies)
        );
        rows.push((setup.name, creates, rate));
    }
    if let Some((_, base_creates, base_rate)) = rows.first().copied() {
        println!("Ratios to SQLite in this run:");
        for (name, creates, rate) in &rows {
            println!("  {name:<22} creates ×{:.2}   sign-ins ×{:.2}", creates / base_creates, rate / base_rate);
        }
    }
}
