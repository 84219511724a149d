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
//! 4. Second factors, 50 concurrent clients against a tenant named
//!    `localhost` (passkeys need a name): a password sign-in (the baseline,
//!    same run), the same followed by an authenticator code (TOTP; each user
//!    once, codes are single use), and a passkey alone (testkit's software
//!    authenticator: page, options, assertion). Latency of the whole sign-in
//!    and of the second step, and the tenant's CPU per sign-in.
//!
//! 5. SAML single sign-on (the tenant as an identity provider), 50
//!    concurrent clients: an SP-initiated sign-in — AuthnRequest (HTTP-Redirect)
//!    in, signed Response out — with a session (one request, answered at once)
//!    and without (request, user name, password, callback). Baseline in the
//!    same run: the OpenID Connect password sign-in (the same pages).
//!
//!   IDBRIDGE_BENCH_SECTION=second-factors cargo bench -p idbridge --bench signin   (section 4 only)
//!   IDBRIDGE_BENCH_SECTION=saml cargo bench -p idbridge --bench signin             (section 5 only)
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

/// `idbridge tenant serve` in `tmp/tenant` with the domain example.org and a
/// sync token: (process, SCIM base, data directory, token).
fn bench_tenant(exe: &str, tmp: &TempDir) -> (std::process::Child, String, String, String) {
    let data = tmp.join("tenant");
    let data_s = data.to_str().unwrap().to_string();
    let (tenant, base) = testkit::spawn_tenant(std::path::Path::new(exe), &data, &[]).unwrap();
    run(exe, &["tenant", "domain", "add", "--data", &data_s, "example.org"]);
    let token = run(exe, &["tenant", "token", "create", "--data", &data_s, "--scope", "sync"]).trim().to_string();
    (tenant, base, data_s, token)
}

fn client_url(exe: &str, data: &str, issuer: &str) -> String {
    testkit::public_client_authorize_url(std::path::Path::new(exe), std::path::Path::new(data), issuer).unwrap()
}

fn main() {
    let exe = env!("CARGO_BIN_EXE_idbridge");
    if std::env::var("IDBRIDGE_BENCH_SECTION").as_deref() == Ok("second-factors") {
        second_factors(exe);
        return;
    }
    if std::env::var("IDBRIDGE_BENCH_SECTION").as_deref() == Ok("saml") {
        saml(exe);
        return;
    }
    println!("PPH1 verification cost (one core):");
    for it in [1_000u32, 10_000, 50_000, 100_000, 200_000] {
        println!("  {it:>7} iterations  {:7.2} ms", verify_ms(it));
    }
    let default = passwords::pph1::DEFAULT_ITERATIONS;
    let baseline_ms = verify_ms(default);
    println!("  default {default} iterations: {baseline_ms:.2} ms per verification");

    // 2. Throughput and latency.
    let tmp = TempDir::new("bench-signin").unwrap();
    let (mut tenant, base, data_s, token) = bench_tenant(exe, &tmp);
    let issuer = base.trim_end_matches("/scim/v2").to_string();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let users = 200;
    let record =
        Pph1::derive(&NtHash::of_password("Bench-pass-1"), &[7; 10], NonZeroU32::new(default).unwrap()).to_string();
    rt.block_on(bulk_users(&base, &token, "user", users, &record));
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
    second_factors(exe);
    saml(exe);
}

/// An AuthnRequest for the bench application, as a Redirect-binding URL.
fn saml_request(issuer: &str, id: &str) -> String {
    use base64::Engine as _;
    let now = tenant::util::rfc3339(tenant::util::now_secs(), 0);
    let xml = format!(
        "<samlp:AuthnRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" \
         ID=\"{id}\" Version=\"2.0\" IssueInstant=\"{now}\" AssertionConsumerServiceURL=\"https://sp.bench.example/acs\">\
         <saml:Issuer>https://sp.bench.example/sp</saml:Issuer></samlp:AuthnRequest>"
    );
    let deflated = miniz_oxide::deflate::compress_to_vec(xml.as_bytes(), 6);
    let encoded = base64::engine::general_purpose::STANDARD.encode(deflated);
    format!("{issuer}/saml/bench/sso?SAMLRequest={}", tenant::util::urlencode(&encoded))
}

fn saml(exe: &str) {
    let tmp = TempDir::new("bench-saml").unwrap();
    let (mut tenant, base, data_s, token) = bench_tenant(exe, &tmp);
    let issuer = base.trim_end_matches("/scim/v2").to_string();
    run(
        exe,
        &[
            "tenant",
            "app",
            "add",
            "--data",
            &data_s,
            "--name",
            "bench",
            "--entity-id",
            "https://sp.bench.example/sp",
            "--acs-url",
            "https://sp.bench.example/acs",
        ],
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let default = passwords::pph1::DEFAULT_ITERATIONS;
    let record =
        Pph1::derive(&NtHash::of_password("Bench-pass-1"), &[7; 10], NonZeroU32::new(default).unwrap()).to_string();
    rt.block_on(bulk_users(&base, &token, "saml", CLIENTS, &record));
    // Baseline: the OpenID Connect password sign-in, same pages, same run.
    let authorize = Arc::new(client_url(exe, &data_s, &issuer));
    let credentials: testkit::bench::Credentials =
        Arc::new(move |c, _| (format!("saml{c}@example.org"), "Bench-pass-1".to_string()));
    let mut oidc = rt.block_on(testkit::bench::sign_ins(authorize, CLIENTS, CLIENTS * 4, credentials, false)).unwrap();
    oidc.sort();
    let (with_session, without) = rt.block_on(async {
        let issuer = Arc::new(issuer.clone());
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let issuer = issuer.clone();
            tasks.push(tokio::spawn(async move {
                let (mut fresh, mut warm) = (Vec::new(), Vec::new());
                let user = format!("saml{c}@example.org");
                // Without a session: a new browser each time, the whole sign-in.
                let mut browser = Browser::new().unwrap();
                for n in 0..4 {
                    browser = Browser::new().unwrap();
                    let started = Instant::now();
                    let first = browser.get(&saml_request(&issuer, &format!("_b{c}x{n}"))).await.unwrap();
                    let to_sign_in = format!("{issuer}{}", first.location.unwrap());
                    let signed_in = browser.password_sign_in(&to_sign_in, &user, "Bench-pass-1").await.unwrap();
                    let posted = browser.get(&signed_in.location.unwrap()).await.unwrap();
                    assert!(posted.body.contains("SAMLResponse"), "{}", posted.body);
                    fresh.push(started.elapsed());
                }
                // With a session: AuthnRequest in, signed Response out.
                for n in 0..20 {
                    let started = Instant::now();
                    let page = browser.get(&saml_request(&issuer, &format!("_b{c}y{n}"))).await.unwrap();
                    assert!(page.body.contains("SAMLResponse"), "{}", page.body);
                    warm.push(started.elapsed());
                }
                (warm, fresh)
            }));
        }
        let (mut warm, mut fresh) = (Vec::new(), Vec::new());
        for t in tasks {
            let (w, f) = t.await.unwrap();
            warm.extend(w);
            fresh.extend(f);
        }
        warm.sort();
        fresh.sort();
        (warm, fresh)
    });
    let median = |v: &[Duration]| v.get(v.len() / 2).copied().unwrap_or_default().as_secs_f64() * 1000.0;
    println!("SAML sign-in, SP-initiated (HTTP-Redirect), {CLIENTS} concurrent clients, PPH1 at {default} iterations:");
    println!("  with a session ({} requests): {}", with_session.len(), testkit::latency_summary(&with_session));
    println!("  without a session ({} sign-ins): {}", without.len(), testkit::latency_summary(&without));
    println!(
        "  baseline, OpenID Connect password sign-in ({} sign-ins): {}",
        oidc.len(),
        testkit::latency_summary(&oidc)
    );
    println!(
        "  p50 ratios to the baseline: with a session {:.2}x, without {:.2}x",
        median(&with_session) / median(&oidc),
        median(&without) / median(&oidc)
    );
    let _ = tenant.kill();
    let _ = tenant.wait();
}

/// Creates `count` users `{prefix}{i}@example.org` by /Bulk with the PPH1
/// `record`; returns their ids in order.
async fn bulk_users(base: &str, token: &str, prefix: &str, count: usize, record: &str) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let ops: Vec<_> = chunk
            .iter()
            .map(|i| serde_json::json!({"method": "POST", "path": "/Users", "bulkId": format!("u{i}"), "data": {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("{prefix}{i}@example.org"),
                "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object": {"immutableId": format!("{prefix}-imm{i}")}}}))
            .collect();
        let r: serde_json::Value = http
            .post(format!("{base}/Bulk"))
            .bearer_auth(token)
            .header("content-type", "application/scim+json")
            .body(serde_json::json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops}).to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for op in r["Operations"].as_array().unwrap() {
            ids.push(op["location"].as_str().unwrap().rsplit('/').next().unwrap().to_string());
        }
    }
    let issuer = base.trim_end_matches("/scim/v2");
    let creds: Vec<_> =
        (0..count).map(|i| serde_json::json!({"immutableId": format!("{prefix}-imm{i}"), "record": record})).collect();
    let r = http
        .post(format!("{issuer}/hybrid/v1/passwords"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(serde_json::json!({"credentials": creds}).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    ids
}

const CLIENTS: usize = 50;

/// Runs `per_client` sign-ins on each of 50 clients; `sign_in(client, n)`
/// returns (whole sign-in, second step). Prints both and the tenant's CPU.
fn measure<F, Fut>(
    rt: &tokio::runtime::Runtime,
    tenant_pid: u32,
    (label, step_label): (&str, &str),
    per_client: usize,
    sign_in: F,
) -> (f64, f64)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (Duration, Option<Duration>)> + Send + 'static,
{
    let sign_in = Arc::new(sign_in);
    let cpu_before = testkit::bench::cpu_seconds(&[tenant_pid]);
    let started = Instant::now();
    let (mut whole, mut step): (Vec<Duration>, Vec<Duration>) = rt.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let sign_in = sign_in.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for n in 0..per_client {
                        out.push(sign_in(c, n).await);
                    }
                    out
                })
            })
            .collect();
        let mut whole = Vec::new();
        let mut step = Vec::new();
        for t in tasks {
            for (w, s) in t.await.unwrap() {
                whole.push(w);
                step.extend(s);
            }
        }
        (whole, step)
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu_ms = (testkit::bench::cpu_seconds(&[tenant_pid]) - cpu_before) * 1000.0 / whole.len() as f64;
    whole.sort();
    step.sort();
    let rate = whole.len() as f64 / wall;
    println!("  {label} ({} sign-ins, {CLIENTS} concurrent): {rate:.1}/s", whole.len());
    println!("    whole sign-in   {}", testkit::latency_summary(&whole));
    if !step.is_empty() {
        println!("    {step_label:<15} {}", testkit::latency_summary(&step));
    }
    println!("    tenant CPU {cpu_ms:.2} ms per sign-in");
    (cpu_ms, rate)
}

/// Section 4: second factors at 50 concurrent sign-ins.
fn second_factors(exe: &str) {
    let tmp = TempDir::new("bench-mfa").unwrap();
    let data = tmp.join("tenant");
    let data_s = data.to_str().unwrap().to_string();
    let port = testkit::free_port().unwrap();
    let public = format!("http://localhost:{port}");
    let listen = format!("127.0.0.1:{port}");
    let (mut tenant, base) =
        testkit::spawn_tenant(std::path::Path::new(exe), &data, &["--listen", &listen, "--public-url", &public])
            .unwrap();
    run(exe, &["tenant", "domain", "add", "--data", &data_s, "example.org"]);
    let token = run(exe, &["tenant", "token", "create", "--data", &data_s, "--scope", "sync"]).trim().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let default = passwords::pph1::DEFAULT_ITERATIONS;
    let record =
        Pph1::derive(&NtHash::of_password("Bench-pass-1"), &[7; 10], NonZeroU32::new(default).unwrap()).to_string();
    let per_client = 4;
    let count = CLIENTS * per_client;
    let (_, totp, keyed) = rt.block_on(async {
        (
            bulk_users(&base, &token, "plain", count, &record).await,
            bulk_users(&base, &token, "totp", count, &record).await,
            bulk_users(&base, &token, "key", count, &record).await,
        )
    });
    // Methods registered through the tenant's library on its database (the
    // ceremony is the same code the pages run; here without a browser).
    let store = tenant::Store::open(&data.join(tenant::DB_FILE)).unwrap();
    let rp = tenant::passkeys::RelyingParty::for_issuer(&public, "idbridge").unwrap();
    let mut secrets = Vec::new();
    let mut keys = Vec::new();
    {
        let conn = store.lock();
        for (i, id) in totp.iter().enumerate() {
            let offer = tenant::mfa::offer_totp("bench", &format!("totp{i}@example.org"));
            let code = tenant::mfa::code_at(&offer.secret, tenant::util::now_secs()).unwrap();
            tenant::mfa::confirm_totp(&conn, id, &offer.secret, &code, "Bench").unwrap().unwrap();
            secrets.push(offer.secret);
        }
        for id in &keyed {
            let mut key = testkit::passkey::SoftPasskey::new(&public).unwrap();
            let ceremony = tenant::passkeys::begin_registration(&conn, &rp, id, id, id).unwrap();
            let answer = key.register(&ceremony.options).unwrap();
            tenant::passkeys::finish_registration(&conn, &rp, id, &ceremony.token, &answer, "Bench key")
                .unwrap()
                .unwrap();
            keys.push(std::sync::Mutex::new(key));
        }
    }
    drop(store);
    let authorize = Arc::new(client_url(exe, &data_s, &public));
    let pid = tenant.id();
    println!("Second factors (PPH1 at {default} iterations for the passwords; tenant at {public}):");

    let url = authorize.clone();
    let (password_cpu, password_rate) = measure(&rt, pid, ("password", ""), per_client, move |c, n| {
        let url = url.clone();
        async move {
            let mut b = Browser::new().unwrap();
            let started = Instant::now();
            let page = b
                .password_sign_in(&url, &format!("plain{}@example.org", n * CLIENTS + c), "Bench-pass-1")
                .await
                .unwrap();
            assert!(page.location.is_some_and(|l| l.contains("code=")), "{}", page.body);
            (started.elapsed(), None)
        }
    });

    let (url, secrets, action) = (authorize.clone(), Arc::new(secrets), format!("{public}/oauth2/authorize"));
    measure(&rt, pid, ("password + authenticator code", "the code step"), per_client, move |c, n| {
        let (url, secrets, action) = (url.clone(), secrets.clone(), action.clone());
        async move {
            let i = n * CLIENTS + c;
            let mut b = Browser::new().unwrap();
            let started = Instant::now();
            let page = b.password_sign_in(&url, &format!("totp{i}@example.org"), "Bench-pass-1").await.unwrap();
            assert!(page.body.contains("one-time-code"), "{}", page.body);
            // The next step's code: the enrolment used the current one.
            let code = tenant::mfa::code_at(&secrets[i], tenant::util::now_secs() + 30).unwrap();
            let second = Instant::now();
            let done = b.post(&action, &testkit::form_fields(&page.body, &[("code", &code)])).await.unwrap();
            assert!(done.location.is_some_and(|l| l.contains("code=")), "{}", done.body);
            (started.elapsed(), Some(second.elapsed()))
        }
    });

    let (url, keys, public2) = (authorize.clone(), Arc::new(keys), public.clone());
    let (passkey_cpu, passkey_rate) =
        measure(&rt, pid, ("passkey alone", "assertion step"), per_client, move |c, n| {
            let (url, keys, public) = (url.clone(), keys.clone(), public2.clone());
            async move {
                let i = n * CLIENTS + c;
                let mut b = Browser::new().unwrap();
                let started = Instant::now();
                let page = b.get(&url).await.unwrap();
                let options = b
                    .post(
                        &format!("{public}/oauth2/passkey"),
                        &testkit::form_fields(&page.body, &[("purpose", "sign-in")]),
                    )
                    .await
                    .unwrap();
                let ceremony: serde_json::Value = serde_json::from_str(&options.body).unwrap();
                let second = Instant::now();
                let answer = keys[i].lock().unwrap().assert(&ceremony["options"]).unwrap();
                let fields = testkit::form_fields(
                    &page.body,
                    &[
                        ("step", "passkey"),
                        ("passkey_token", ceremony["token"].as_str().unwrap()),
                        ("credential", &answer),
                    ],
                );
                let done = b.post(&format!("{public}/oauth2/authorize"), &fields).await.unwrap();
                assert!(done.location.is_some_and(|l| l.contains("code=")), "{}", done.body);
                (started.elapsed(), Some(second.elapsed()))
            }
        });
    println!(
        "  a passkey sign-in costs the tenant {:.1}% of a password sign-in's CPU ({passkey_cpu:.2} vs {password_cpu:.2} ms); {:.1}x the sign-ins per second",
        passkey_cpu / password_cpu * 100.0,
        passkey_rate / password_rate
    );
    let _ = tenant.kill();
    let _ = tenant.wait();
}
