//! Pass-through authentication benchmark.
//!
//!   cargo bench -p idbridge --bench pta
//!
//! slapd with 1,000 users (`sample generate --passwords`, {SSHA}) synchronised
//! into `idbridge tenant serve`; the domain signs in by pass-through. With one
//! agent, then two (`idbridge pta-agent run`, own processes), 32 concurrent
//! clients run the whole browser flow (authorize page, user name, password →
//! code) 2,000 times. Baseline in the same run: the same flow against a
//! password-hash-sync domain (no agent, {SSHA} verified in the tenant).
//!
//! Then password writeback through the one agent, one request at a time
//! (150 each): an administrator's reset (`POST /admin/v1/users/…/password`
//! → agent → Password Modify → the tenant's answer) and a user's change on
//! Security info (the form's submit → the page that says it is done);
//! baseline in the same run: the pass-through sign-in's password step
//! (submit → code) of the same users through the same agent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::TempDir;

fn run(exe: &str, args: &[&str]) -> String {
    let o = Command::new(exe).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

fn start_agent(exe: &str, tmp: &std::path::Path, name: &str, data: &str, issuer: &str, directory: &str) -> Child {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(&config, directory).unwrap();
    let token = run(exe, &["tenant", "pta-token", "create", "--data", data]).trim().to_string();
    run(
        exe,
        &[
            "pta-agent",
            "register",
            "--tenant",
            issuer,
            "--token",
            &token,
            "--config",
            config.to_str().unwrap(),
            "--name",
            name,
        ],
    );
    Command::new(exe)
        .args(["pta-agent", "run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn measure(rt: &tokio::runtime::Runtime, what: &str, authorize: &Arc<String>, users: &Arc<Vec<(String, String)>>) {
    let (clients, total) = (32usize, 2000usize);
    let started = Instant::now();
    let who = users.clone();
    let credentials: testkit::bench::Credentials = Arc::new(move |c, n| who[(c * 37 + n * 11) % who.len()].clone());
    let mut latencies =
        rt.block_on(testkit::bench::sign_ins(authorize.clone(), clients, total, credentials, false)).unwrap();
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "  {what:<36} {:>7.1} sign-ins/s   p50 {:>5.1} ms   p99 {:>5.1} ms   ({total} sign-ins, {clients} clients)",
        total as f64 / secs,
        pct(&latencies, 0.5),
        pct(&latencies, 0.99)
    );
}

fn summary(name: &str, samples: &mut [Duration]) -> f64 {
    samples.sort();
    let p50 = pct(samples, 0.5);
    println!("  {name:<52} p50 {p50:>6.1} ms   p99 {:>6.1} ms   ({} samples)", pct(samples, 0.99), samples.len());
    p50
}

fn writeback(
    rt: &tokio::runtime::Runtime,
    exe: &str,
    data: &str,
    issuer: &str,
    authorize: &str,
    users: &[(String, String)],
) {
    const SAMPLES: usize = 150;
    let token = run(exe, &["tenant", "token", "create", "--data", data, "--scope", "admin"]).trim().to_string();
    let http = reqwest::Client::new();
    let (mut resets, mut checks, mut changes) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (user, _)) in users.iter().enumerate().take(SAMPLES) {
        let reset = format!("Reset-{i}-pw");
        let started = Instant::now();
        let status = rt
            .block_on(
                http.post(format!("{issuer}/admin/v1/users/{user}/password"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "new_password": reset }))
                    .send(),
            )
            .unwrap()
            .status();
        resets.push(started.elapsed());
        assert_eq!(status, 200, "reset of {user}");
        rt.block_on(async {
            // The baseline: the password step of a pass-through sign-in.
            let mut browser = testkit::Browser::new().unwrap();
            let first = browser.get(authorize).await.unwrap();
            let second = browser.enter_username(authorize, &first, user).await.unwrap();
            let action = authorize.split('?').next().unwrap();
            let started = Instant::now();
            let done =
                browser.post(action, &testkit::form_fields(&second.body, &[("password", &reset)])).await.unwrap();
            checks.push(started.elapsed());
            assert!(done.location.is_some_and(|l| l.contains("code=")), "{user} signs in: {}", done.body);
            // The change, from a signed-in Security info page.
            let mut browser = testkit::Browser::new().unwrap();
            let page = browser.sign_in_to_account(issuer, user, &reset).await.unwrap();
            let started = Instant::now();
            let done =
                browser.change_password_on_account(issuer, &page, &reset, &format!("Changed-{i}-pw")).await.unwrap();
            changes.push(started.elapsed());
            assert!(done.body.contains("Your password was changed"), "{user}: {}", done.body);
        });
    }
    println!("password writeback, one agent, one request at a time:");
    let baseline = summary("baseline: pass-through sign-in, the password step", &mut checks);
    let reset = summary("administrator's reset (/admin/v1)", &mut resets);
    let change = summary("change on Security info (submit → done)", &mut changes);
    println!("  ratio to the baseline (p50): reset {:.2}x, change {:.2}x", reset / baseline, change / baseline);
}

fn main() {
    let exe = env!("CARGO_BIN_EXE_idbridge");
    let tmp = TempDir::new("bench-pta").unwrap();
    let (slapd, _) = testkit::slapd_with_sample(tmp.path(), &testkit::openldap_sample(1000, 5, 4).unwrap()).unwrap();
    let tenant = testkit::SyncTenant::start(std::path::Path::new(exe), tmp.path(), "example.org").unwrap();
    let (base, data, data_s) = (tenant.base.clone(), tenant.data.clone(), tenant.data.display().to_string());
    let issuer = base.trim_end_matches("/scim/v2").to_string();
    let pw = slapd.password_file().unwrap();
    let directory = format!(
        "name = \"lab\"\nurls = [\"{}\"]\nbind_dn = \"{}\"\npassword_file = \"{}\"\nbase_dns = [\"dc=example,dc=org\"]\n",
        slapd.url,
        slapd.admin_dn(),
        pw.display()
    );
    // 200 enabled people get a password on-premises (ldappasswd: slapd stores {SSHA}).
    let listing = Command::new("ldapsearch")
        .args([
            "-x",
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-H",
            &slapd.url,
            "-D",
            slapd.admin_dn(),
            "-w",
            slapd.admin_password(),
        ])
        .args(["-b", slapd.base_dn(), "(&(objectClass=inetOrgPerson)(employeeType=staff))", "mail"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listing.stdout).to_string();
    let mut users = Vec::new();
    for block in text.split("\n\n").filter(|b| b.starts_with("dn: ")).take(200) {
        let dn = block.lines().next().unwrap().trim_start_matches("dn: ").to_string();
        let mail = block.lines().find_map(|l| l.strip_prefix("mail: ")).unwrap().to_string();
        let password = format!("Bench-{}", users.len());
        slapd.set_password(&dn, &password).unwrap();
        users.push((mail, password));
    }
    let users = Arc::new(users);
    let config = tmp.join("idbridge.toml");
    std::fs::write(&config, format!("[[source]]\n{directory}password_hash_sync = true\n\n[tenant]\nurl = \"{base}\"\ntoken_file = \"{}\"\n\n[sync]\nstate = \"state.db\"\n", tmp.join("token").display())).unwrap();
    run(exe, &["sync", "run", "--once", "--config", config.to_str().unwrap()]);
    let authorize = Arc::new(testkit::public_client_authorize_url(std::path::Path::new(exe), &data, &issuer).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("pass-through authentication benchmark (slapd, 200 users, whole browser flow per sign-in):");
    measure(&rt, "baseline: password hash sync ({SSHA})", &authorize, &users);
    run(exe, &["tenant", "domain", "set", "--data", &data_s, "example.org", "--auth", "managed-pta"]);
    let mut a = start_agent(
        exe,
        tmp.path(),
        "agent-a",
        &data_s,
        &issuer,
        &format!("allow_plain_binds = true\n[directory]\n{directory}"),
    );
    std::thread::sleep(Duration::from_secs(2));
    measure(&rt, "pass-through, one agent", &authorize, &users);
    let mut b = start_agent(
        exe,
        tmp.path(),
        "agent-b",
        &data_s,
        &issuer,
        &format!("allow_plain_binds = true\n[directory]\n{directory}"),
    );
    std::thread::sleep(Duration::from_secs(2));
    measure(&rt, "pass-through, two agents", &authorize, &users);
    // Writeback through one agent (the measure); it changes the
    // users' passwords, so it comes last.
    let _ = b.kill();
    let _ = b.wait();
    std::thread::sleep(Duration::from_secs(4));
    run(exe, &["tenant", "domain", "set", "--data", &data_s, "example.org", "--password-writeback", "on"]);
    writeback(&rt, exe, &data_s, &issuer, &authorize, &users);
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(tenant);
}
