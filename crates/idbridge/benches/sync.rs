//! Sync benchmark: a full cycle slapd → empty tenant, then delta latency.
//!
//!   cargo bench -p idbridge --bench sync
//!   IDBRIDGE_BENCH_USERS=20000 cargo bench -p idbridge --bench sync
//!   IDBRIDGE_BENCH_PHS=0 …   (users without passwords, password hash sync off)
//!   IDBRIDGE_BENCH_QUICK=1 … (the full and the unchanged cycle only)
//!   IDBRIDGE_BENCH_PERF=/tmp/sync.perf … (profiles the full cycle and the tenant;
//!   IDBRIDGE_BENCH_PERF_GRAPH=dwarf for call graphs through Rust code)
//!   IDBRIDGE_BENCH_KILL=5 … (full cycles killed with SIGKILL at random points, then checked)
//!   IDBRIDGE_BENCH_COMPARE=/path/to/other/idbridge … (then full cycles of this build and that one,
//!   taking turns from the same slapd into fresh tenants: the ratio of the two in one run;
//!   IDBRIDGE_BENCH_COMPARE_ROUNDS=3 each)
//!   IDBRIDGE_BENCH_KEEP_STATE=/tmp/state.db … (copies both stores there after the full cycle, to look
//!   inside with `sqlite3 /tmp/state.db "SELECT name, sum(pgsize) FROM dbstat GROUP BY 1"`)
//!
//! N users and N/10 groups (`idbridge sample generate`, openldap flavour;
//! every user with an `{SSHA}` userPassword and password hash sync on unless
//! `IDBRIDGE_BENCH_PHS=0`) are loaded into a throwaway slapd. In the same run:
//! `ldapsearch -E pr=1000` of the same objects (the baseline every figure is
//! a ratio to) and `idbridge source dump`; then `idbridge sync run --once`
//! into an empty `idbridge tenant serve` on loopback — wall time per stage,
//! CPU time and peak RSS of the sync process, the tenant's peak RSS, both
//! stores' size per object; a second `sync run --once` with nothing changed;
//! then the daemon with no idle wait: 100 single-attribute changes on-premises,
//! each timed until the tenant shows it; then groups of 10,000 and 250,000
//! members (`IDBRIDGE_BENCH_GROUP_SIZES`, each at most N - 100) are added, and
//! 100 single-member additions to each (`IDBRIDGE_BENCH_MEMBER_CHANGES`) are
//! timed until the tenant shows the new member, with the CPU each addition
//! cost the sync daemon and the tenant (`IDBRIDGE_BENCH_PERF_MEMBERS=FILE`
//! profiles the daemon during the largest group's additions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::TempDir;

/// Bytes of the files under `path` (a file or a directory, not recursing into links).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if meta.is_dir() {
        std::fs::read_dir(path).map(|d| d.flatten().map(|e| size_of(&e.path())).sum()).unwrap_or(0)
    } else {
        meta.len()
    }
}

/// GET `base` + `path` from the tenant as JSON.
fn get_json(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
) -> serde_json::Value {
    rt.block_on(async {
        client.get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap().json().await.unwrap()
    })
}

/// The stage seconds `sync run` prints: "(… s: import a, sync b, export c)".
fn stages(report: &str) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (i, name) in ["import ", "sync ", "export "].iter().enumerate() {
        if let Some(rest) = report.rsplit_once(name).map(|(_, r)| r) {
            out[i] = rest.split([',', ')']).next().and_then(|v| v.trim().parse().ok()).unwrap_or(0.0);
        }
    }
    out
}

/// Crash safety at scale: `trials` times, 100 users get a new title, then a
/// full cycle is `kill -9`ed at a random point of a full cycle's measured
/// time (a trial whose cycle ended first counts as not killed), a normal
/// cycle follows, and the tenant must show every title, each user once.
fn kill_trials(exe: &str, config: &str, slapd: &testkit::Slapd, base: &str, token: &str, users: u64, trials: u32) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Connections idle for minutes between trials: never reuse one the tenant may close.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let get = |path: &str| get_json(&rt, &client, base, token, path);
    // The window: a full cycle over the synchronised directory (much
    // shorter than the first one into an empty tenant).
    let started = Instant::now();
    let full = Command::new(exe)
        .env("RUST_LOG", "warn")
        .args(["sync", "run", "--once", "--full", "--config", config])
        .output()
        .unwrap();
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stderr));
    let cycle_secs = started.elapsed().as_secs_f64();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut killed = 0;
    for trial in 1..=trials {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut ldif = String::new();
        let mut expected = Vec::new();
        for k in 0..100 {
            let (dn, mail) = testkit::sample_user(slapd, 100_000 + (seed + k * 7919) % users).unwrap();
            let title = format!("Kill {trial}.{k}");
            ldif.push_str(&format!("dn: {dn}\nchangetype: modify\nreplace: title\ntitle: {title}\n-\n\n"));
            expected.push((mail, title));
        }
        slapd.modify(&ldif).unwrap();
        let mut child = testkit::KillOnDrop(
            Command::new(exe)
                .env("RUST_LOG", "warn")
                .args(["sync", "run", "--once", "--full", "--config", config])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_secs_f64(cycle_secs * (seed % 1000) as f64 / 1000.0));
        if child.0.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.0.kill();
        let _ = child.0.wait();
        let after = Command::new(exe)
            .env("RUST_LOG", "warn")
            .args(["sync", "run", "--once", "--config", config])
            .output()
            .unwrap();
        assert!(after.status.success(), "trial {trial}: {}", String::from_utf8_lossy(&after.stderr));
        for (mail, title) in &expected {
            let v = get(&format!("/Users?filter=userName%20eq%20%22{mail}%22&attributes=title"));
            assert_eq!(v["totalResults"], 1, "trial {trial}: {mail} once, never created twice");
            assert_eq!(v["Resources"][0]["title"], title.as_str(), "trial {trial}: {mail}");
        }
    }
    println!(
        "  kill -9 trials               {trials} full cycles killed at random points ({killed} while running): the tenant exact after each"
    );
}

/// `dir/idbridge.toml`: slapd → the tenant, state in `dir/state.db`, with
/// password hash sync when `phs`.
fn write_config(slapd: &testkit::Slapd, tenant: &testkit::SyncTenant, dir: &Path, phs: bool) -> std::path::PathBuf {
    let config = dir.join("idbridge.toml");
    let phs_line = if phs { "password_hash_sync = true\n" } else { "" };
    let text = testkit::sync_config(
        slapd,
        "lab",
        "",
        Some((&tenant.base, &tenant.token_file)),
        "\n[sync]\nstate = \"state.db\"\ninterval_secs = 0\n",
    )
    .unwrap()
    .replace("base_dns = [", &format!("{phs_line}base_dns = ["));
    std::fs::write(&config, text).unwrap();
    config
}

/// One full cycle of `exe` from the same slapd into its own empty tenant
/// and an empty sync store: wall seconds, and import, sync and export.
fn fresh_full_cycle(exe: &Path, slapd: &testkit::Slapd, dir: &Path, phs: bool) -> (f64, [f64; 3]) {
    std::fs::create_dir_all(dir).unwrap();
    let tenant = testkit::SyncTenant::start(exe, dir, "example.org").unwrap();
    let config = write_config(slapd, &tenant, dir, phs);
    let run = testkit::measure_run(Command::new(exe).env("RUST_LOG", "warn").args([
        "sync",
        "run",
        "--once",
        "--config",
        config.to_str().unwrap(),
    ]))
    .unwrap();
    let report = run.stderr.lines().rev().find(|l| l.contains("import ")).unwrap_or("").to_string();
    drop(tenant);
    let _ = std::fs::remove_dir_all(dir);
    (run.seconds, stages(&report))
}

/// IDBRIDGE_BENCH_COMPARE=OTHER: full cycles of this build and of OTHER (an
/// `idbridge` built from another commit), taking turns from the same slapd,
/// each into a fresh tenant (`IDBRIDGE_BENCH_COMPARE_ROUNDS` each, default
/// 3): the machine's speed drifts between runs, not between turns. Each
/// build goes first in every other round: with the other build always
/// first, a stage whose code two builds shared measured 1.12–1.17× slower
/// in the second run of each pair at a million users.
fn compare(this: &Path, other: &Path, slapd: &testkit::Slapd, tmp: &Path, phs: bool, dump_secs: f64) {
    let rounds: usize = std::env::var("IDBRIDGE_BENCH_COMPARE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let other_run = |theirs: &mut Vec<_>| {
            theirs.push(fresh_full_cycle(other, slapd, &tmp.join(format!("compare-other-{round}")), phs));
        };
        let this_run = |mine: &mut Vec<_>| {
            mine.push(fresh_full_cycle(this, slapd, &tmp.join(format!("compare-this-{round}")), phs));
        };
        if round % 2 == 0 {
            other_run(&mut theirs);
            this_run(&mut mine);
        } else {
            this_run(&mut mine);
            other_run(&mut theirs);
        }
    }
    // Medians per part: full cycle, import, sync, export (of an even
    // number, the mean of the two in the middle).
    let median = |runs: &[(f64, [f64; 3])], part: usize| {
        let mut v: Vec<f64> =
            runs.iter().map(|(full, stages)| if part == 0 { *full } else { stages[part - 1] }).collect();
        v.sort_by(f64::total_cmp);
        let upper = v.get(v.len() / 2).copied().unwrap_or(0.0);
        match v.len() % 2 {
            0 => v.get(v.len() / 2 - 1).map_or(upper, |lower| (lower + upper) / 2.0),
            _ => upper,
        }
    };
    println!("  same-run comparison ({rounds} full cycles each, taking turns, medians) with {}", other.display());
    for (part, name) in ["full cycle", "import", "sync", "export"].iter().enumerate() {
        let (a, b) = (median(&mine, part), median(&theirs, part));
        println!(
            "    {name:<26} this {a:.1} s, other {b:.1} s: {:.2}x the other's time ({:.1}x the dump)",
            a / b,
            a / dump_secs
        );
    }
}

fn main() {
    let users: u64 = std::env::var("IDBRIDGE_BENCH_USERS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let phs = std::env::var("IDBRIDGE_BENCH_PHS").map_or(true, |v| v != "0");
    let groups = users / 10;
    let exe = env!("CARGO_BIN_EXE_idbridge");
    let tmp = TempDir::new("bench-sync").unwrap();
    let mut spec = testkit::openldap_sample(users, groups, 7).unwrap();
    spec.passwords = phs;
    let (slapd, _) = testkit::slapd_with_sample(tmp.path(), &spec).unwrap();
    let filter =
        "(|(objectClass=person)(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))";
    let (dump_secs, _) = testkit::ldapsearch_baseline(&slapd, filter, &["entryUUID"]).unwrap();
    let tenant = testkit::SyncTenant::start(Path::new(exe), tmp.path(), "example.org").unwrap();
    let (base, token) = (tenant.base.clone(), tenant.token.clone());
    let config = write_config(&slapd, &tenant, tmp.path(), phs);
    let config_arg = config.to_str().unwrap();
    let source_dump = testkit::measure_run(Command::new(exe).env("RUST_LOG", "warn").args([
        "source",
        "dump",
        "--config",
        config_arg,
        "--page-size",
        "1000",
        "--out",
        "/dev/null",
    ]))
    .unwrap();

    // IDBRIDGE_BENCH_PERF=FILE: the full cycle runs under `perf record`
    // (FILE), the tenant is recorded too (FILE.tenant); RSS is then perf's.
    let perf = std::env::var("IDBRIDGE_BENCH_PERF").ok();
    // IDBRIDGE_BENCH_PERF_GRAPH=dwarf: call graphs through Rust code (built
    // without frame pointers) in both processes; large files, so a smaller N.
    let graph = std::env::var("IDBRIDGE_BENCH_PERF_GRAPH").unwrap_or_else(|_| "fp".into());
    let tenant_perf = perf.as_ref().map(|file| {
        testkit::KillOnDrop(
            Command::new("perf")
                .args(["record", "-F", "499", "--call-graph", &graph, "-o", &format!("{file}.tenant"), "-p"])
                .arg(tenant.process.0.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    });
    let mut cycle = match &perf {
        Some(file) => {
            let mut c = Command::new("perf");
            c.args(["record", "-F", "499", "--call-graph", &graph, "-o", file, "--", exe]);
            c
        }
        None => Command::new(exe),
    };
    let tenant_cpu_before = testkit::bench::cpu_seconds(&[tenant.process.0.id()]);
    let full = testkit::measure_run(
        cycle
            .env("RUST_LOG", "warn,sync::engine::export=debug")
            .args(["sync", "run", "--once", "--config", config_arg]),
    )
    .unwrap();
    let tenant_cpu = testkit::bench::cpu_seconds(&[tenant.process.0.id()]) - tenant_cpu_before;
    if let Some(mut recorder) = tenant_perf {
        let _ = Command::new("kill").args(["-INT", &recorder.0.id().to_string()]).status();
        let _ = recorder.0.wait();
    }
    // The cycle's summary line (under perf, perf's own lines follow it).
    let report = full.stderr.lines().rev().find(|l| l.contains("import ")).unwrap_or("").to_string();
    let [import, sync, export] = stages(&report);
    let objects = users + groups;
    let ratio = |secs: f64| secs / dump_secs;
    let tenant_peak = testkit::peak_rss_kib(tenant.process.0.id()).unwrap_or(0);
    let state_bytes = size_of(&tmp.join("state.db")) + size_of(&tmp.join("state.db-wal"));
    let tenant_bytes = size_of(&tenant.data);
    let unchanged = testkit::measure_run(
        Command::new(exe).env("RUST_LOG", "warn").args(["sync", "run", "--once", "--config", config_arg]),
    )
    .unwrap();
    if let Ok(keep) = std::env::var("IDBRIDGE_BENCH_KEEP_STATE") {
        let _ = std::fs::copy(tmp.join("state.db"), &keep);
        let _ = std::fs::copy(tmp.join("state.db-wal"), format!("{keep}-wal"));
        let _ = Command::new("cp").arg("-r").arg(&tenant.data).arg(format!("{keep}.tenant")).status();
    }
    println!(
        "sync benchmark: {users} users + {groups} groups (slapd → empty tenant), password hash sync {}",
        if phs { "on ({SSHA} on every user)" } else { "off" }
    );
    println!("  ldapsearch dump (baseline)   {dump_secs:.2} s");
    println!(
        "  idbridge source dump         {:.2} s ({:.2}x the dump)",
        source_dump.seconds,
        ratio(source_dump.seconds)
    );
    println!(
        "  full cycle                   {:.1} s ({:.1}x the dump), {:.0} objects/s",
        full.seconds,
        ratio(full.seconds),
        objects as f64 / full.seconds
    );
    println!(
        "    stages                     import {import:.1} s ({:.1}x), sync {sync:.1} s ({:.1}x), export {export:.1} s ({:.1}x), passwords and the rest {:.1} s",
        ratio(import),
        ratio(sync),
        ratio(export),
        full.seconds - import - sync - export
    );
    // The export's first step (engine debug log): ordering the objects that contest a unique value.
    if let Some(ordering) = full
        .stderr
        .lines()
        .find(|l| l.contains("contesting a unique value ordered"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("seconds=")))
        .and_then(|s| s.parse::<f64>().ok())
    {
        println!(
            "    of the export              {ordering:.2} s ordering the claims on unique values (userName, SMTP)"
        );
    }
    println!(
        "    sync process               {:.1} CPU s ({:.0}% of a core), peak RSS {} MiB",
        full.cpu_seconds,
        100.0 * full.cpu_seconds / full.seconds,
        full.peak_kib / 1024
    );
    println!(
        "    tenant process             {tenant_cpu:.1} CPU s ({:.0}% of a core), peak RSS {} MiB",
        100.0 * tenant_cpu / full.seconds,
        tenant_peak / 1024
    );
    println!(
        "    stores                     sync {} MiB ({} bytes per object), tenant {} MiB ({} bytes per object)",
        state_bytes >> 20,
        state_bytes / objects,
        tenant_bytes >> 20,
        tenant_bytes / objects
    );
    println!("    report                     {report}");
    println!("  cycle with nothing changed   {:.2} s ({:.1} CPU s)", unchanged.seconds, unchanged.cpu_seconds);

    if let Ok(other) = std::env::var("IDBRIDGE_BENCH_COMPARE") {
        compare(Path::new(exe), Path::new(&other), &slapd, tmp.path(), phs, dump_secs);
    }

    let trials: u32 = std::env::var("IDBRIDGE_BENCH_KILL").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if trials > 0 {
        kill_trials(exe, config_arg, &slapd, &base, &token, users, trials);
    }
    if std::env::var("IDBRIDGE_BENCH_QUICK").is_ok_and(|v| v == "1") {
        return;
    }

    // Delta latency with the daemon running back to back.
    let mut daemon = Command::new(exe)
        .env("RUST_LOG", "warn")
        .args(["sync", "run", "--config", config_arg])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // This runtime runs only inside `block_on`, so the pool cannot see the
    // tenant close an idle connection (15 s after an answer) and would send
    // the next request on it: after the large groups' set-up at a million
    // users, a request failed that way. Idle connections go sooner.
    let client = reqwest::Client::builder().pool_idle_timeout(proto::http::CLIENT_POOL_IDLE).build().unwrap();
    let mut times = Vec::new();
    for i in 0..100u64 {
        let n = (i * 7919) % users;
        let (dn, mail) = testkit::sample_user(&slapd, 100_000 + n).unwrap();
        let title = format!("Delta {i}");
        let started = Instant::now();
        slapd.modify(&format!("dn: {dn}\nchangetype: modify\nreplace: title\ntitle: {title}\n-\n\n")).unwrap();
        loop {
            let v = get_json(
                &rt,
                &client,
                &base,
                &token,
                &format!("/Users?filter=userName%20eq%20%22{mail}%22&attributes=title"),
            );
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
        "  delta visible in the tenant  {} (100 changes, daemon with no idle wait)",
        testkit::latency_summary(&times)
    );

    // One member added to large groups: the latency until the tenant shows
    // it, and the CPU it costs the sync daemon and the tenant per addition.
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
    let additions = testkit::bench::env_usize("IDBRIDGE_BENCH_MEMBER_CHANGES", 100);
    let sizes = std::env::var("IDBRIDGE_BENCH_GROUP_SIZES").unwrap_or_else(|_| "10000,250000".into());
    let mut sizes: Vec<usize> = sizes
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .map(|s: usize| s.min(people.len().saturating_sub(additions)))
        .collect();
    sizes.dedup();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    // From here on the daemon waits for slapd's pushes instead of running
    // cycles back to back, so the CPU it uses is what the additions cost.
    let _ = daemon.kill();
    let _ = daemon.wait();
    let pushed = tmp.join("idbridge-pushed.toml");
    std::fs::write(
        &pushed,
        std::fs::read_to_string(&config).unwrap().replace("interval_secs = 0", "interval_secs = 3600"),
    )
    .unwrap();
    // Its cycle reports (one per addition) give the stages' times.
    let daemon_log = tmp.join("daemon.log");
    let mut daemon = Command::new(exe)
        .env("RUST_LOG", "warn")
        .args(["sync", "run", "--config", pushed.to_str().unwrap()])
        .stderr(std::fs::File::create(&daemon_log).unwrap())
        .spawn()
        .unwrap();
    let daemon_pid = daemon.id();
    let tenant_pid = tenant.process.0.id();
    let ctx = LargeGroups {
        rt: &rt,
        client: &client,
        base: &base,
        token: &token,
        slapd: &slapd,
        people: &people,
        daemon_log: &daemon_log,
    };
    let mut results = Vec::new();
    for (n, size) in sizes.iter().copied().enumerate() {
        // IDBRIDGE_BENCH_PERF_MEMBERS=FILE: the daemon under `perf record` during the largest group's
        // additions (not its creation).
        let perf = std::env::var("IDBRIDGE_BENCH_PERF_MEMBERS").ok().filter(|_| size == largest);
        results.push((size, ctx.measure(n, size, additions, daemon_pid, tenant_pid, perf)));
    }
    let first_cpu = results.first().map(|(_, r)| r.daemon_cpu_ms + r.tenant_cpu_ms).unwrap_or(0.0);
    for (size, r) in &results {
        println!("  {:<28} created in the tenant after {:.1} s", format!("{size}-member group"), r.created_secs);
        println!(
            "    one member added           visible {} ({} additions)",
            testkit::latency_summary(&r.latencies),
            r.latencies.len()
        );
        println!(
            "    CPU per addition           sync {:.1} ms, tenant {:.1} ms ({:.2}x the {}-member group)",
            r.daemon_cpu_ms,
            r.tenant_cpu_ms,
            (r.daemon_cpu_ms + r.tenant_cpu_ms) / first_cpu.max(0.001),
            results.first().map_or(0, |(s, _)| *s)
        );
        println!(
            "    stages per addition        import {:.1} ms, sync {:.1} ms, export {:.1} ms",
            1000.0 * r.stages[0],
            1000.0 * r.stages[1],
            1000.0 * r.stages[2]
        );
        println!(
            "    ldapsearch of the group    {:.1} ms (import {:.2}x, sync daemon CPU {:.2}x that)",
            1000.0 * r.read_secs,
            r.stages[0] / r.read_secs.max(1e-9),
            r.daemon_cpu_ms / 1000.0 / r.read_secs.max(1e-9)
        );
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(tenant);
}

/// What the large-group measurements share.
struct LargeGroups<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: &'a reqwest::Client,
    base: &'a str,
    token: &'a str,
    slapd: &'a testkit::Slapd,
    /// Every user's DN and mail, in directory order.
    people: &'a [(String, String)],
    /// The daemon's standard error, where it reports each cycle.
    daemon_log: &'a Path,
}

/// One large group's figures.
struct GroupFigures {
    created_secs: f64,
    latencies: Vec<Duration>,
    daemon_cpu_ms: f64,
    tenant_cpu_ms: f64,
    /// Seconds per addition in import, sync and export (from the cycle reports).
    stages: [f64; 3],
    /// Seconds `ldapsearch` takes to read the group's entry (the best of five):
    /// what any client pays to receive it.
    read_secs: f64,
}

impl LargeGroups<'_> {
    fn get(&self, path: &str) -> serde_json::Value {
        get_json(self.rt, self.client, self.base, self.token, path)
    }

    /// Adds group number `n` with the first `size` people, waits for it in
    /// the tenant, then adds the next `additions` people one at a time.
    fn measure(
        &self,
        n: usize,
        size: usize,
        additions: usize,
        daemon: u32,
        tenant: u32,
        perf: Option<String>,
    ) -> GroupFigures {
        let name = format!("bench-big-group-{n}");
        let group_dn = format!("cn={name},{}", self.slapd.base_dn());
        let mut ldif = format!("dn: {group_dn}\nchangetype: add\nobjectClass: groupOfNames\ncn: {name}\n");
        for (dn, _) in &self.people[..size] {
            ldif.push_str(&format!("member: {dn}\n"));
        }
        ldif.push('\n');
        let started = Instant::now();
        self.slapd.modify(&ldif).unwrap();
        let group_id = loop {
            let v = self.get(&format!("/Groups?filter=displayName%20eq%20%22{name}%22&attributes=id"));
            if let Some(id) = v["Resources"][0]["id"].as_str() {
                break id.to_string();
            }
            assert!(started.elapsed() < Duration::from_secs(1800), "the large group never arrived");
            std::thread::sleep(Duration::from_millis(200));
        };
        let created_secs = started.elapsed().as_secs_f64();
        let read_secs = (0..5)
            .map(|_| {
                let started = Instant::now();
                let out = Command::new("ldapsearch")
                    .args(["-x", "-LLL", "-H", &self.slapd.url, "-D", self.slapd.admin_dn()])
                    .args(["-w", self.slapd.admin_password(), "-b", &group_dn, "-s", "base", "(objectClass=*)", "*"])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                assert!(out.success());
                started.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        // The users to add, looked up before anything is timed.
        let added: Vec<(String, String)> = self.people[size..size + additions]
            .iter()
            .map(|(dn, mail)| {
                let user = self.get(&format!("/Users?filter=userName%20eq%20%22{mail}%22&attributes=id"));
                (dn.clone(), user["Resources"][0]["id"].as_str().unwrap().to_string())
            })
            .collect();
        let recorder = perf.map(|file| {
            testkit::KillOnDrop(
                Command::new("perf")
                    .args(["record", "-F", "999", "-g", "-o", &file, "-p", &daemon.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        });
        let mut latencies = Vec::new();
        let (mut daemon_cpu, mut tenant_cpu) = (0.0, 0.0);
        let reports_before = std::fs::read_to_string(self.daemon_log).unwrap_or_default().len();
        for (dn, user_id) in &added {
            let (daemon_before, tenant_before) =
                (testkit::bench::cpu_seconds(&[daemon]), testkit::bench::cpu_seconds(&[tenant]));
            let started = Instant::now();
            self.slapd
                .modify(&format!("dn: {group_dn}\nchangetype: modify\nadd: member\nmember: {dn}\n-\n\n"))
                .unwrap();
            // The user's groups: a probe whose cost does not grow with the group.
            let probe = format!("/Users/{user_id}?attributes=groups");
            let member = |v: serde_json::Value| {
                v["groups"].as_array().is_some_and(|g| g.iter().any(|g| g["value"] == group_id.as_str()))
            };
            while !member(self.get(&probe)) {
                assert!(started.elapsed() < Duration::from_secs(300), "a member addition never arrived");
                std::thread::sleep(Duration::from_millis(10));
            }
            latencies.push(started.elapsed());
            // The probes' own cost is in the tenant's figure: they are the same for every size.
            daemon_cpu += testkit::bench::cpu_seconds(&[daemon]) - daemon_before;
            tenant_cpu += testkit::bench::cpu_seconds(&[tenant]) - tenant_before;
        }
        if let Some(mut recorder) = recorder {
            let _ = Command::new("kill").args(["-INT", &recorder.0.id().to_string()]).status();
            let _ = recorder.0.wait();
        }
        let per = |cpu: f64| 1000.0 * cpu / additions.max(1) as f64;
        let log = std::fs::read_to_string(self.daemon_log).unwrap_or_default();
        let mut stages = [0.0; 3];
        for line in log.get(reports_before..).unwrap_or("").lines().filter(|l| l.contains("import ")) {
            for (total, s) in stages.iter_mut().zip(self::stages(line)) {
                *total += s / additions.max(1) as f64;
            }
        }
        GroupFigures {
            created_secs,
            latencies,
            daemon_cpu_ms: per(daemon_cpu),
            tenant_cpu_ms: per(tenant_cpu),
            stages,
            read_secs,
        }
    }
}
