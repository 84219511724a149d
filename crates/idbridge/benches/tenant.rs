//! Tenant benchmark: bulk creation, filtered lookups and large-group PATCH
//! against `idbridge tenant serve` (a separate process) over loopback HTTP.
//!
//!   cargo bench -p idbridge --bench tenant
//!   IDBRIDGE_BENCH_USERS=20000 IDBRIDGE_BENCH_GROUPS=2000 cargo bench -p idbridge --bench tenant
//!
//! Creates N users and N/10 groups (30 members each on average, plus one group
//! holding every user) through /Bulk (1,000 operations per request), then
//! measures `userName eq` and `externalId eq` lookups (p50/p99 of 1,000
//! each), one-member PATCH of the largest group (p50/p99 of 200), and the
//! store's size on disk, and `GET /metrics` scrapes (p50/p99 of 200, after
//! all of the above, with an admin token). Baseline in the same run: GET
//! /healthz round trips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};
use testkit::TempDir;
use testkit::bench::{env_usize, ms, percentile, scim_bulk};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path).map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let users = env_usize("IDBRIDGE_BENCH_USERS", 100_000);
    let groups = env_usize("IDBRIDGE_BENCH_GROUPS", users / 10);
    let exe = env!("CARGO_BIN_EXE_idbridge");
    let tmp = TempDir::new("bench-tenant").unwrap();
    let data = tmp.join("tenant");
    let (mut server, base) =
        testkit::spawn_tenant(std::path::Path::new(exe), &data, &["--initial-domain", "bench.example.test"]).unwrap();
    let out = Command::new(exe)
        .args(["tenant", "token", "create", "--data", data.to_str().unwrap(), "--scope", "admin"])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let client = reqwest::Client::builder().pool_max_idle_per_host(4).build().unwrap();
    let health = base.replace("/scim/v2", "/healthz");

    // Baseline: the HTTP round trip itself.
    let mut baseline = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        client.get(&health).send().await.unwrap().text().await.unwrap();
        baseline.push(t.elapsed());
    }
    baseline.sort();

    let bulk = |ops: Vec<Value>| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move { scim_bulk(&client, &base, &token, ops).await.unwrap() }
    };

    let started = Instant::now();
    let mut ids = Vec::with_capacity(users);
    for chunk in (0..users).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"method": "POST", "path": "/Users", "bulkId": format!("u{i}"), "data": {
                    "schemas": [USER], "userName": format!("user{i:06}@bench.example.test"), "externalId": format!("ext-{i:06}"),
                    "name": {"givenName": "Bench", "familyName": format!("User {i}")}, "displayName": format!("Bench User {i}"),
                    "emails": [{"value": format!("user{i:06}@bench.example.test"), "type": "work", "primary": true}], "active": true
                }})
            })
            .collect();
        for r in bulk(ops).await {
            assert_eq!(r["status"], "201", "{r}");
            ids.push(r["location"].as_str().unwrap().rsplit('/').next().unwrap().to_string());
        }
    }
    let user_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut member_links = 0usize;
    for chunk in (0..groups).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|g| {
                let size = 1 + (next() % 59) as usize; // 1..59, mean 30
                member_links += size;
                let members: Vec<Value> = (0..size).map(|_| json!({"value": ids[(next() as usize) % ids.len()]})).collect();
                json!({"method": "POST", "path": "/Groups", "bulkId": format!("g{g}"), "data": {"schemas": [GROUP], "displayName": format!("Group {g}"), "members": members}})
            })
            .collect();
        for r in bulk(ops).await {
            assert_eq!(r["status"], "201", "{r}");
        }
    }
    let group_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let all: Vec<Value> = ids.iter().map(|id| json!({"value": id})).collect();
    let big = bulk(vec![json!({"method": "POST", "path": "/Groups", "bulkId": "all", "data": {"schemas": [GROUP], "displayName": "Everyone", "members": all}})]).await;
    let big_secs = started.elapsed().as_secs_f64();
    let big_location = big[0]["location"].as_str().unwrap().to_string();

    let mut lookups = |attr: &'static str| {
        let client = client.clone();
        let base = base.clone();
        let token = token.clone();
        let picks: Vec<usize> = (0..1000).map(|_| (next() as usize) % users).collect();
        async move {
            let mut times = Vec::with_capacity(picks.len());
            for i in picks {
                let value =
                    if attr == "userName" { format!("user{i:06}@bench.example.test") } else { format!("ext-{i:06}") };
                let url = format!("{base}/Users?filter={attr}%20eq%20%22{value}%22");
                let t = Instant::now();
                let v: Value = client.get(url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
                times.push(t.elapsed());
                assert_eq!(v["totalResults"], 1);
            }
            times.sort();
            times
        }
    };
    let by_user_name = lookups("userName").await;
    let by_external_id = lookups("externalId").await;

    let outsider = ids[0].clone();
    let mut patch_times = Vec::new();
    for round in 0..200 {
        let op = if round % 2 == 0 {
            json!({"op": "remove", "path": format!("members[value eq \"{outsider}\"]")})
        } else {
            json!({"op": "add", "path": "members", "value": [{"value": outsider}]})
        };
        let t = Instant::now();
        let r = client
            .patch(format!("{big_location}?excludedAttributes=members"))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .body(json!({"schemas": [PATCH], "Operations": [op]}).to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        r.text().await.unwrap();
        patch_times.push(t.elapsed());
    }
    patch_times.sort();

    let metrics_url = base.replace("/scim/v2", "/metrics");
    let mut scrapes = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let r = client.get(&metrics_url).bearer_auth(&token).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.text().await.unwrap();
        scrapes.push(t.elapsed());
    }
    scrapes.sort();
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    server.wait().unwrap();
    let size = dir_size(&data);

    println!("tenant benchmark: {users} users, {groups} groups ({member_links} memberships) + 1 group of {users}");
    println!(
        "  baseline GET /healthz        p50 {}  p99 {}",
        ms(percentile(&baseline, 0.5)),
        ms(percentile(&baseline, 0.99))
    );
    println!("  users via Bulk               {:.0} creates/s ({user_secs:.1} s)", users as f64 / user_secs);
    println!("  groups via Bulk              {:.0} creates/s ({group_secs:.1} s)", groups as f64 / group_secs);
    println!("  one group of {users} members   {big_secs:.2} s");
    println!(
        "  userName eq lookup           p50 {}  p99 {}  ({:.1}x baseline p50)",
        ms(percentile(&by_user_name, 0.5)),
        ms(percentile(&by_user_name, 0.99)),
        percentile(&by_user_name, 0.5).as_secs_f64() / percentile(&baseline, 0.5).as_secs_f64()
    );
    println!(
        "  externalId eq lookup         p50 {}  p99 {}",
        ms(percentile(&by_external_id, 0.5)),
        ms(percentile(&by_external_id, 0.99))
    );
    println!(
        "  PATCH one member (big group) p50 {}  p99 {}",
        ms(percentile(&patch_times, 0.5)),
        ms(percentile(&patch_times, 0.99))
    );
    println!("  store on disk                {:.1} MiB", size as f64 / (1 << 20) as f64);

    println!(
        "  GET /metrics                 p50 {}  p99 {}  (200 scrapes)",
        ms(percentile(&scrapes, 0.5)),
        ms(percentile(&scrapes, 0.99))
    );
}
