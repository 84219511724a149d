//! Replication benchmark: how fast password hashes come out of a real Samba
//! AD DC, and where one pass over the naming context beats one request per user.
//!
//!   cargo bench -p drsr --bench replicate
//!   IDBRIDGE_BENCH_USERS=300 cargo bench -p drsr --bench replicate
//!
//! N users (default 1,000; 10,000 take about 5 minutes to load) with
//! passwords are added over LDAPS. In the same run: a paged
//! `ldapsearch` of the domain (the baseline: reading the same objects over
//! LDAP, without secrets), one `DRSGetNCChanges` pass over the naming context
//! (all principals with their NT hashes), and `EXOP_REPL_OBJ` for 200 users
//! one by one (latency per user). Everything runs on the same two cores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    let users: usize = std::env::var("IDBRIDGE_BENCH_USERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let dc = testkit::SambaDc::start().unwrap();
    let started = Instant::now();
    let mut ldif = String::from("dn: OU=Bench,DC=example,DC=test\nobjectClass: organizationalUnit\n\n");
    let pwd = |i: usize| {
        let bytes: Vec<u8> = format!("\"Bench.Passw0rd-{i}\"").encode_utf16().flat_map(u16::to_le_bytes).collect();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
    };
    for i in 0..users {
        ldif.push_str(&format!(
            "dn: CN=bench{i},OU=Bench,DC=example,DC=test\nobjectClass: user\nsAMAccountName: bench{i}\n\
             userPrincipalName: bench{i}@example.test\nunicodePwd:: {}\nuserAccountControl: 512\n\n",
            pwd(i)
        ));
    }
    dc.modify_tls(&ldif).unwrap();
    eprintln!("loaded {users} users in {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let out = Command::new("ldapsearch")
        .args(["-x", "-LLL", "-H", &dc.url, "-D", dc.admin_upn(), "-w", dc.admin_password()])
        .args(["-b", "DC=example,DC=test", "-E", "pr=1000/noprompt", "(objectClass=*)", "*"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ldap_secs = started.elapsed().as_secs_f64();
    let ldap_objects = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("dn: ")).count();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let creds = drsr::rpc::Credentials {
        user: dc.admin_upn().split('@').next().unwrap().to_string(),
        domain: None,
        password: dc.admin_password().to_string(),
    };
    let t = Duration::from_secs(60);
    let (nc_secs, principals, hashes, latencies) = rt.block_on(async {
        let mut reader = drsr::reader::SecretReader::connect("127.0.0.1", &creds, t).await.unwrap();
        let started = Instant::now();
        let (mut principals, mut hashes) = (0usize, 0usize);
        reader
            .naming_context("DC=example,DC=test", |s| {
                principals += 1;
                hashes += usize::from(s.nt_hash.is_some());
            })
            .await
            .unwrap();
        let nc_secs = started.elapsed().as_secs_f64();
        let mut latencies = Vec::new();
        for i in 0..users.min(200) {
            let started = Instant::now();
            let secret = reader.user(&format!("CN=bench{i},OU=Bench,DC=example,DC=test")).await.unwrap().unwrap();
            assert!(secret.nt_hash.is_some());
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        reader.close().await.unwrap();
        (nc_secs, principals, hashes, latencies)
    });
    assert!(hashes >= users, "{hashes} hashes for {users} users");
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() as f64 - 1.0) * p).round() as usize];
    let mean_ms = latencies.iter().sum::<f64>() / latencies.len() as f64;
    println!("replication benchmark, {users} users with passwords (Samba AD DC on loopback, 2 cores)");
    println!(
        "  baseline ldapsearch (paged, all attributes): {ldap_objects} objects in {ldap_secs:.2} s = {:.0} objects/s",
        ldap_objects as f64 / ldap_secs
    );
    println!(
        "  DRSGetNCChanges, whole naming context:      {principals} principals ({hashes} NT hashes) in {nc_secs:.2} s = {:.0}/s; {:.2}x the ldapsearch time",
        principals as f64 / nc_secs,
        nc_secs / ldap_secs
    );
    println!(
        "  EXOP_REPL_OBJ, one user at a time:          p50 {:.2} ms, p99 {:.2} ms, mean {mean_ms:.2} ms = {:.0} users/s",
        pct(0.5),
        pct(0.99),
        1000.0 / mean_ms
    );
    println!(
        "  one pass over the naming context costs as much as {:.0} single-user requests",
        nc_secs * 1000.0 / mean_ms
    );
}
