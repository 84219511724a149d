//! Admin console benchmark: page times on a full tenant.
//!
//!   cargo bench -p idbridge --bench console
//!   IDBRIDGE_BENCH_USERS=20000 IDBRIDGE_BENCH_SIGNINS=200000 cargo bench -p idbridge --bench console
//!
//! Starts `idbridge tenant serve` (release build, its own process) and fills
//! it over SCIM /Bulk with N users, N/10 groups (30 members on average) and
//! one group holding half the users; the sign-in log gets M entries (default
//! 1,000,000) over 30 days, written straight into the database beside the
//! running tenant (one transaction — what a million real sign-ins would leave,
//! without spending hours signing in). A global administrator signs in to
//! the console through the real sign-in pages; then each page is requested
//! 200 times (p50/p99). Baseline in the same run: `GET /healthz` round trips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::NonZeroU32;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::bench::{env_usize, ms, percentile, scim_bulk};
use testkit::{Browser, TempDir};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const HYBRID: &str = "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object";
const SAMPLES: usize = 200;

fn idbridge(exe: &str, args: &[&str]) -> String {
    let out = Command::new(exe).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let users = env_usize("IDBRIDGE_BENCH_USERS", 100_000);
    let groups = env_usize("IDBRIDGE_BENCH_GROUPS", users / 10);
    let signins = env_usize("IDBRIDGE_BENCH_SIGNINS", 1_000_000);
    let exe = env!("CARGO_BIN_EXE_idbridge");
    let tmp = TempDir::new("bench-console").unwrap();
    let data = tmp.join("tenant");
    let (mut server, base) =
        testkit::spawn_tenant(std::path::Path::new(exe), &data, &["--initial-domain", "bench.example.test"]).unwrap();
    let data_arg = data.to_str().unwrap().to_string();
    let token = idbridge(exe, &["tenant", "token", "create", "--data", &data_arg, "--scope", "admin"]);
    let root = base.trim_end_matches("/scim/v2").to_string();
    let client = reqwest::Client::builder().pool_max_idle_per_host(4).build().unwrap();
    let bulk = |ops: Vec<Value>| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move { scim_bulk(&client, &base, &token, ops).await.unwrap() }
    };

    // The directory.
    let started = Instant::now();
    let mut ids = Vec::with_capacity(users);
    for chunk in (0..users).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"method": "POST", "path": "/Users", "bulkId": format!("u{i}"), "data": {
                    "schemas": [USER], "userName": format!("user{i:06}@bench.example.test"), "externalId": format!("ext-{i:06}"),
                    "name": {"givenName": "Bench", "familyName": format!("User {i}")}, "displayName": format!("Bench User {i}"),
                    "emails": [{"value": format!("user{i:06}@bench.example.test"), "type": "work", "primary": true}],
                    HYBRID: {"immutableId": format!("imm-{i:06}")}
                }})
            })
            .collect();
        for r in bulk(ops).await {
            ids.push(r["location"].as_str().unwrap().rsplit('/').next().unwrap().to_string());
        }
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for chunk in (0..groups).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|g| {
                let size = 1 + (next() % 59) as usize;
                let members: Vec<Value> = (0..size).map(|_| json!({"value": ids[(next() as usize) % ids.len()]})).collect();
                json!({"method": "POST", "path": "/Groups", "bulkId": format!("g{g}"), "data": {"schemas": [GROUP], "displayName": format!("Group {g:05}"), "members": members}})
            })
            .collect();
        bulk(ops).await;
    }
    let half: Vec<Value> = ids.iter().take(users / 2).map(|id| json!({"value": id})).collect();
    let big = bulk(vec![json!({"method": "POST", "path": "/Groups", "bulkId": "half", "data": {"schemas": [GROUP], "displayName": "Half of everyone", "members": half}})]).await;
    let big_id = big[0]["location"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    let fill_secs = started.elapsed().as_secs_f64();

    // The administrator: user 0, with a password (password hash sync) and the role.
    let sync_token = idbridge(exe, &["tenant", "token", "create", "--data", &data_arg, "--scope", "sync"]);
    let password = "Bench password 1";
    let record = passwords::Pph1::derive(
        &passwords::NtHash::of_password(password),
        b"0123456789",
        NonZeroU32::new(1000).unwrap(),
    );
    let pushed = client
        .post(format!("{root}/hybrid/v1/passwords"))
        .bearer_auth(&sync_token)
        .json(&json!({"credentials": [{"immutableId": "imm-000000", "record": record.to_string()}]}))
        .send()
        .await
        .unwrap();
    assert!(pushed.status().is_success());
    let admin = "user000000@bench.example.test";
    idbridge(exe, &["tenant", "role", "assign", "--data", &data_arg, "--user", admin, "--role", "global-admin"]);

    // The sign-in log: M entries over 30 days, a fifth of them failures.
    let started = Instant::now();
    {
        let conn = rusqlite::Connection::open(data.join(tenant::DB_FILE)).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        let now = tenant::util::now_secs();
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO signins(at, user_name, method, success, reason, application, address)
                     VALUES(?1, ?2, 'password', ?3, ?4, NULL, '192.0.2.10')",
                )
                .unwrap();
            for i in 0..signins {
                let at = now - 30 * 86_400 + (i as i64 * 30 * 86_400) / signins as i64;
                let user = (next() as usize) % users;
                let success = next() % 5 != 0;
                let reason = if success { "ok" } else { "wrong-password" };
                stmt.execute(rusqlite::params![at, format!("user{user:06}@bench.example.test"), success, reason])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let log_secs = started.elapsed().as_secs_f64();

    // Signed in through the real pages.
    let mut b = Browser::new().unwrap();
    let start = b.get(&format!("{root}/admin/sign-in")).await.unwrap();
    let authorize = format!("{root}{}", start.location.unwrap());
    let back = b.password_sign_in(&authorize, admin, password).await.unwrap();
    let signed_in = b.get(&back.location.unwrap()).await.unwrap();
    assert_eq!(signed_in.location.as_deref(), Some("/admin"), "{}", signed_in.body);

    // Baseline: the HTTP round trip itself.
    let mut baseline = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        client.get(format!("{root}/healthz")).send().await.unwrap().text().await.unwrap();
        baseline.push(t.elapsed());
    }
    baseline.sort();

    let deep_seq = signins / 10;
    let pages: Vec<(&str, String)> = vec![
        ("overview", "/admin".into()),
        ("users, first page", "/admin/users".into()),
        ("users, page after user050000", format!("/admin/users?after=user{:06}%40bench.example.test", users / 2)),
        ("user search (prefix)", "/admin/users?q=user0123".into()),
        ("user search (no match)", "/admin/users?q=zz".into()),
        ("user detail", format!("/admin/users/{}", ids[users / 3])),
        ("groups, first page", "/admin/groups".into()),
        ("group search", "/admin/groups?q=group%200999".into()),
        ("group of half the users, first members page", format!("/admin/groups/{big_id}")),
        ("sign-in log, newest", "/admin/sign-ins".into()),
        ("sign-in log, one user", format!("/admin/sign-ins?user=user{:06}%40bench.example.test", users / 7)),
        ("sign-in log, failures, deep page", format!("/admin/sign-ins?outcome=wrong-password&before={deep_seq}")),
        ("audit log", "/admin/audit".into()),
        ("synchronisation", "/admin/sync".into()),
    ];
    let cookie = b.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
    let mut results = Vec::new();
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let t = Instant::now();
            let r = client.get(format!("{root}{path}")).header("cookie", &cookie).send().await.unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            times.push(t.elapsed());
            assert!(status.is_success(), "{path}: {status} {body}");
        }
        times.sort();
        results.push((name, percentile(&times, 0.5), percentile(&times, 0.99)));
    }
    let _ = server.kill();
    let _ = server.wait();

    println!("console benchmark: {users} users, {groups} groups + one of {}, {signins} sign-in log entries", users / 2);
    println!("  filled the directory over /Bulk in {fill_secs:.1} s, the sign-in log in {log_secs:.1} s");
    println!(
        "  baseline GET /healthz           p50 {}  p99 {}  (1000 round trips)",
        ms(percentile(&baseline, 0.5)),
        ms(percentile(&baseline, 0.99))
    );
    let base_p99 = percentile(&baseline, 0.99).as_secs_f64();
    for (name, p50, p99) in &results {
        println!(
            "  {name:<46} p50 {:>9}  p99 {:>9}  ({:.0}x the baseline p99; {SAMPLES} requests)",
            ms(*p50),
            ms(*p99),
            p99.as_secs_f64() / base_p99
        );
    }
}
