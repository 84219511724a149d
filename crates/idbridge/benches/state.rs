//! The sync state in PostgreSQL against SQLite, and the failover time of
//! an active/standby pair.
//!
//!   cargo bench -p idbridge --bench state
//!   IDBRIDGE_BENCH_USERS=100000 IDBRIDGE_BENCH_TRIALS=10 cargo bench -p idbridge --bench state
//!
//! In one run, on one throwaway slapd with N users and N/10 groups
//! (default 20,000): a full cycle (`sync run --once`) into an empty tenant
//! with the state in SQLite, then the same into a second empty tenant with
//! the state in a throwaway PostgreSQL 15 (wall time, peak RSS of the sync
//! process, the ratio). Then failover with the default settings (lease
//! 5 s, interval 5 s): two daemons on the PostgreSQL state; the active one
//! is killed with SIGKILL, timed until the standby's first committed cycle
//! (a new row in the run history); repeated (default 10 trials).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::TempDir;

fn config(slapd: &testkit::Slapd, tenant: &testkit::SyncTenant, state: &str) -> String {
    testkit::sync_config(slapd, "lab", "", Some((&tenant.base, &tenant.token_file)), &format!("\n[sync]\n{state}\n"))
        .unwrap()
}

fn main() {
    let users: u64 = std::env::var("IDBRIDGE_BENCH_USERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let trials: usize = std::env::var("IDBRIDGE_BENCH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let groups = users / 10;
    let exe = env!("CARGO_BIN_EXE_idbridge");
    let tmp = TempDir::new("bench-state").unwrap();
    let spec = testkit::openldap_sample(users, groups, 7).unwrap();
    let (slapd, _) = testkit::slapd_with_sample(tmp.path(), &spec).unwrap();
    let pg = testkit::Postgres::start().unwrap();
    let postgres_state =
        format!("state = \"{}\"\ndatabase_password_file = \"{}\"", pg.url, pg.password_file().display());

    println!("sync state benchmark: {users} users + {groups} groups (slapd → empty tenant)");
    let mut cycles = Vec::new();
    for (name, state) in [("SQLite", "state = \"state.db\"".to_string()), ("PostgreSQL", postgres_state.clone())] {
        let dir = tmp.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let tenant = testkit::SyncTenant::start(std::path::Path::new(exe), &dir, "example.org").unwrap();
        let file = dir.join("idbridge.toml");
        std::fs::write(&file, config(&slapd, &tenant, &state)).unwrap();
        let (secs, peak_kib, report) = testkit::measure(Command::new(exe).env("RUST_LOG", "warn").args([
            "sync",
            "run",
            "--once",
            "--config",
            file.to_str().unwrap(),
        ]))
        .unwrap();
        println!(
            "  full cycle, state in {name:<10} {secs:.1} s, {:.0} objects/s, peak RSS {} MiB",
            (users + groups) as f64 / secs,
            peak_kib / 1024
        );
        println!("    {}", report.lines().last().unwrap_or(""));
        cycles.push(secs);
    }
    if let [sqlite, postgres] = cycles[..] {
        println!("  PostgreSQL / SQLite          {:.2}x", postgres / sqlite);
    }

    // Failover, default lease and interval, on the PostgreSQL state the
    // second cycle above left (its tenant is the second one).
    let dir = tmp.join("PostgreSQL");
    let file = dir.join("idbridge.toml");
    let daemon = |name: &str| {
        testkit::KillOnDrop(
            Command::new(exe)
                .env("RUST_LOG", "warn")
                .args(["sync", "run", "--config", file.to_str().unwrap()])
                .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let last_run = || pg.psql("SELECT coalesce(max(id), 0) FROM sync_runs").unwrap().trim().parse::<i64>().unwrap();
    let holder = || pg.psql("SELECT holder FROM sync_lease").unwrap().trim().to_string();
    let mut active = daemon("daemon-0");
    let pid_of = |child: &testkit::KillOnDrop| format!("pid {}", child.id());
    assert!(testkit::wait_until(Duration::from_secs(120), || holder().ends_with(&pid_of(&active))));
    let mut times = Vec::new();
    for trial in 0..trials {
        let standby = daemon(&format!("daemon-{}", trial + 1));
        // The standby is up and waiting (it has read the lease).
        std::thread::sleep(Duration::from_secs(2));
        let before = last_run();
        let killed = Instant::now();
        active.kill().unwrap();
        active.wait().unwrap();
        while !(holder().ends_with(&pid_of(&standby)) && last_run() > before) {
            assert!(killed.elapsed() < Duration::from_secs(120), "trial {trial}: no takeover");
            std::thread::sleep(Duration::from_millis(20));
        }
        times.push(killed.elapsed());
        active = standby;
    }
    println!(
        "  failover (kill -9 → the standby's first committed cycle, lease 5 s): {} ({trials} trials)",
        testkit::latency_summary(&times)
    );
}
