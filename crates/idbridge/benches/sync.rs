//! Sync benchmark: a full cycle slapd → empty tenant, then delta latency.
//!
//!   cargo bench -p idbridge --bench sync
//!   IDBRIDGE_BENCH_USERS=20000 cargo bench -p idbridge --bench sync
//!
//! N users and N/10 groups (`idbridge sample generate`, openldap flavour) are
//! loaded into a throwaway slapd. In the same run: `ldapsearch -E pr=1000` of
//! the same objects (the baseline), then `idbridge sync run --once` into an
//! empty `idbridge tenant serve` (wall time, objects/s, peak RSS of the sync
//! process), then the daemon with no idle wait: 50 single-attribute changes
//! on-premises, each timed until the tenant shows it; then a group with
//! 50,000 members (N/2 for smaller N) is added, and 10 single-member additions
//! to it are timed until the tenant shows the new member.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::TempDir;

fn measure(cmd: &mut Command) -> (f64, u64, String) {
    testkit::measure(cmd).unwrap()
}

fn main() {
    let users: u64 = std::env::var("IDBRIDGE_BENCH_USERS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let groups = users / 10;
    let exe = env!("CARGO_BIN_EXE_idbridge");
    let tmp = TempDir::new("bench-sync").unwrap();
    let spec = testkit::openldap_sample(users, groups, 7).unwrap();
    let (slapd, _) = testkit::slapd_with_sample(tmp.path(), &spec).unwrap();
    let filter =
        "(|(objectClass=person)(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))";
    let (dump_secs, _) = testkit::ldapsearch_baseline(&slapd, filter, &["entryUUID"]).unwrap();
    let tenant = testkit::SyncTenant::start(std::path::Path::new(exe), tmp.path(), "example.org").unwrap();
    let (base, token) = (tenant.base.clone(), tenant.token.clone());
    let config = tmp.join("idbridge.toml");
    let text = testkit::sync_config(
        &slapd,
        "lab",
        "",
        Some((&base, &tenant.token_file)),
        "\n[sync]\nstate = \"state.db\"\ninterval_secs = 0\n",
    )
    .unwrap();
    std::fs::write(&config, text).unwrap();

    let (cycle_secs, peak_kib, report) = measure(Command::new(exe).env("RUST_LOG", "warn").args([
        "sync",
        "run",
        "--once",
        "--config",
        config.to_str().unwrap(),
    ]));
    let objects = users + groups;
    println!("sync benchmark: {users} users + {groups} groups (slapd → empty tenant)");
    println!("  ldapsearch dump (baseline)   {dump_secs:.2} s");
    println!(
        "  full cycle                   {cycle_secs:.1} s, {:.0} objects/s, peak RSS {} MiB ({:.0}x the dump)",
        objects as f64 / cycle_secs,
        peak_kib / 1024,
        cycle_secs / dump_secs
    );
    println!("  report: {}", report.lines().last().unwrap_or(""));

    // Delta latency with the daemon running back to back.
    let mut daemon = Command::new(exe)
        .env("RUST_LOG", "warn")
        .args(["sync", "run", "--config", config.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    for i in 0..50u64 {
        let n = (i * 7919) % users;
        let dump = Command::new("ldapsearch")
            .args([
                "-x",
                "-LLL",
                "-H",
                &slapd.url,
                "-D",
                slapd.admin_dn(),
                "-w",
                slapd.admin_password(),
                "-b",
                slapd.base_dn(),
            ])
            .arg(format!("(employeeNumber={})", 100_000 + n))
            .args(["dn", "mail"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&dump.stdout).to_string();
        let dn = text.lines().find_map(|l| l.strip_prefix("dn: ")).unwrap().to_string();
        let mail = text.lines().find_map(|l| l.strip_prefix("mail: ")).unwrap().to_string();
        let title = format!("Delta {i}");
        let started = Instant::now();
        slapd.modify(&format!("dn: {dn}\nchangetype: modify\nreplace: title\ntitle: {title}\n-\n\n")).unwrap();
        loop {
            let v: serde_json::Value = rt.block_on(async {
                client
                    .get(format!("{base}/Users?filter=userName%20eq%20%22{mail}%22&attributes=title"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap()
            });
            if v["Resources"][0]["title"] == title.as_str() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "change {i} never arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "  delta visible in the tenant  {} (50 changes, daemon with no idle wait)",
        testkit::latency_summary(&times)
    );

    // One member added to a very large group.
    let get = |path: &str| -> serde_json::Value {
        rt.block_on(async {
            client.get(format!("{base}{path}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap()
        })
    };
    let people = Command::new("ldapsearch")
        .args(["-x", "-LLL", "-H", &slapd.url, "-D", slapd.admin_dn(), "-w", slapd.admin_password()])
        .args(["-b", slapd.base_dn(), "-E", "pr=1000/noprompt", "(objectClass=inetOrgPerson)", "mail"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&people.stdout).to_string();
    let mut people: Vec<(String, String)> = Vec::new();
    let mut dn = String::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("dn: ") {
            dn = d.to_string();
        } else if let Some(m) = line.strip_prefix("mail: ") {
            people.push((dn.clone(), m.to_string()));
        }
    }
    let size = 50_000.min(people.len() / 2);
    let group_dn = format!("cn=bench-big-group,{}", slapd.base_dn());
    let mut ldif = format!("dn: {group_dn}\nchangetype: add\nobjectClass: groupOfNames\ncn: bench-big-group\n");
    for (dn, _) in &people[..size] {
        ldif.push_str(&format!("member: {dn}\n"));
    }
    ldif.push('\n');
    let started = Instant::now();
    slapd.modify(&ldif).unwrap();
    let group_id = loop {
        let v = get("/Groups?filter=displayName%20eq%20%22bench-big-group%22&attributes=id");
        if let Some(id) = v["Resources"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the large group never arrived");
        std::thread::sleep(Duration::from_millis(100));
    };
    let created = started.elapsed().as_secs_f64();
    let mut member_times = Vec::new();
    for (dn, mail) in &people[size..size + 10] {
        let user = get(&format!("/Users?filter=userName%20eq%20%22{mail}%22&attributes=id"));
        let user_id = user["Resources"][0]["id"].as_str().unwrap().to_string();
        let started = Instant::now();
        slapd.modify(&format!("dn: {group_dn}\nchangetype: modify\nadd: member\nmember: {dn}\n-\n\n")).unwrap();
        let probe = format!(
            "/Groups?filter=id%20eq%20%22{group_id}%22%20and%20members%5Bvalue%20eq%20%22{user_id}%22%5D&attributes=id"
        );
        while get(&probe)["totalResults"] != 1 {
            assert!(started.elapsed() < Duration::from_secs(120), "a member addition never arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
        member_times.push(started.elapsed());
    }

    println!("  {:<28} created in the tenant after {created:.1} s", format!("{size}-member group"));
    println!("  one member added to it       visible {} (10 additions)", testkit::latency_summary(&member_times));
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(tenant);
}
