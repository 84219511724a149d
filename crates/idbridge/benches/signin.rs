//! Sign-in benchmark.
//!
//!   cargo bench -p idbridge --bench signin
//!
//! 1. PPH1 work factor: the time of one verification (release build, one
//!    core) for several iteration counts — the measurement behind the default.
//! 2. Sign-in throughput and latency: `idbridge tenant serve` (its own
//!    process) with 200 synchronised users holding PPH1 records at the default
//!    count; 50 concurrent clients each run the whole browser flow (authorize
//!    page, user name, password → code) for 1,000 sign-ins in all. Baseline in
//!    the same run: one PPH1 verification, i.e. the best a core can do.
//! 3. Password hash sync propagation: slapd → daemon (password_hash_sync, no
//!    idle wait) → tenant; 20 times `ldappasswd` sets a new password and the
//!    clock runs until that password signs in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::NonZeroU32;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use passwords::{NtHash, Pph1};
use testkit::{Browser, TempDir};

fn verify_ms(iterations: u32) -> f64 {
    let record = Pph1::derive(&NtHash::of_password("pw"), &[1; 10], NonZeroU32::new(iterations).unwrap());
    let runs = 10;
    let start = Instant::now();
    for _ in 0..runs {
        assert!(record.verify("pw"));
    }
    start.elapsed().as_secs_f64() * 1000.0 / f64::from(runs)
}

fn run(exe: &str, args: &[&str]) -> String {
    let o = Command::new(exe).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn client_url(exe: &str, data: &str, issuer: &str) -> String {
    testkit::public_client_authorize_url(std::path::Path::new(exe), std::path::Path::new(data), issuer).unwrap()
}

fn main() {
    let exe = env!("CARGO_BIN_EXE_idbridge");
    println!("PPH1 verification cost (one core):");
    for it in [1_000u32, 10_000, 50_000, 100_000, 200_000] {
        println!("  {it:>7} iterations  {:7.2} ms", verify_ms(it));
    }
    let default = passwords::pph1::DEFAULT_ITERATIONS;
    let baseline_ms = verify_ms(default);
    println!("  default {default} iterations: {baseline_ms:.2} ms per verification");

    // 2. Throughput and latency.
    let tmp = TempDir::new("bench-signin").unwrap();
    let data = tmp.join("tenant");
    let data_s = data.to_str().unwrap().to_string();
    let (mut tenant, base) = testkit::spawn_tenant(std::path::Path::new(exe), &data, &[]).unwrap();
    let issuer = base.trim_end_matches("/scim/v2").to_string();
    run(exe, &["tenant", "domain", "add", "--data", &data_s, "example.org"]);
    let token = run(exe, &["tenant", "token", "create", "--data", &data_s, "--scope", "sync"]).trim().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let users = 200;
    let record =
        Pph1::derive(&NtHash::of_password("Bench-pass-1"), &[7; 10], NonZeroU32::new(default).unwrap()).to_string();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let ops: Vec<_> = (0..users)
            .map(|i| serde_json::json!({"method": "POST", "path": "/Users", "bulkId": format!("u{i}"), "data": {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("user{i}@example.org"),
                "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object": {"immutableId": format!("imm{i}")}}}))
            .collect();
        let r = http
            .post(format!("{base}/Bulk"))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .body(serde_json::json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops}).to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let creds: Vec<_> = (0..users).map(|i| serde_json::json!({"immutableId": format!("imm{i}"), "record": record})).collect();
        let r = http
            .post(format!("{issuer}/hybrid/v1/passwords"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(serde_json::json!({"credentials": creds}).to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    });
    let authorize = Arc::new(client_url(exe, &data_s, &issuer));
    let ideal = 1000.0 / baseline_ms;
    for (clients, total) in [(1usize, 50usize), (50, 1000)] {
        let started = Instant::now();
        let credentials: testkit::bench::Credentials =
            Arc::new(move |c, n| (format!("user{}@example.org", (c * 31 + n * 7) % users), "Bench-pass-1".to_string()));
        let mut latencies =
            rt.block_on(testkit::bench::sign_ins(authorize.clone(), clients, total, credentials, false)).unwrap();
        let wall = started.elapsed().as_secs_f64();
        latencies.sort();
        let rate = total as f64 / wall;
        println!(
            "Sign-in ({total} sign-ins, {clients} concurrent clients, 3 requests each, PPH1 at {default} iterations):"
        );
        println!("  latency {}", testkit::latency_summary(&latencies));
        println!(
            "  {rate:.1} sign-ins/s, {:.1} per core (2 cores); baseline: one core verifies {ideal:.1}/s → {:.0}% of it",
            rate / 2.0,
            rate / 2.0 / ideal * 100.0
        );
    }
    let _ = tenant.kill();
    let _ = tenant.wait();

    // 3. Password hash sync propagation.
    let spec = sample::SampleSpec { passwords: true, ..testkit::openldap_sample(50, 5, 3).unwrap() };
    let (slapd, _) = testkit::slapd_with_sample(tmp.path(), &spec).unwrap();
    let tenant = testkit::SyncTenant::start(std::path::Path::new(exe), &tmp.join("second"), "example.org").unwrap();
    let (base, data2_s) = (tenant.base.clone(), tenant.data.display().to_string());
    let issuer = base.trim_end_matches("/scim/v2").to_string();
    let config = tmp.join("idbridge.toml");
    let text = testkit::sync_config(
        &slapd,
        "lab",
        "password_hash_sync = true\n",
        Some((&base, &tenant.token_file)),
        "\n[sync]\nstate = \"state.db\"\ninterval_secs = 0\n",
    )
    .unwrap();
    std::fs::write(&config, text).unwrap();
    run(exe, &["sync", "run", "--once", "--config", config.to_str().unwrap()]);
    let authorize = client_url(exe, &data2_s, &issuer);
    let mut daemon = Command::new(exe)
        .env("RUST_LOG", "warn")
        .args(["sync", "run", "--config", config.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut times = Vec::new();
    for i in 0..20u64 {
        let (dn, mail) = testkit::sample_user(&slapd, 100_000 + (i * 7) % 50).unwrap();
        let password = format!("Propagated-{i}");
        let started = Instant::now();
        slapd.set_password(&dn, &password).unwrap();
        loop {
            let ok = rt.block_on(async {
                let mut b = Browser::new().unwrap();
                let page = b.password_sign_in(&authorize, &mail, &password).await.unwrap();
                page.location.is_some_and(|l| l.contains("code="))
            });
            if ok {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "password {i} never arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
        times.push(started.elapsed());
    }
    times.sort();
    println!("Password hash sync, ldappasswd → sign-in works (20 changes, daemon with no idle wait):");
    println!("  {} (Connect: every 2 minutes)", testkit::latency_summary(&times));
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(tenant);
}
