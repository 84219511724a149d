//! Federated sign-in benchmark: the tenant's own work in a SAML round trip.
//!
//!   cargo bench -p idbridge --bench federation
//!
//! `idbridge tenant serve` (its own process) with a domain federated to the
//! test SAML IdP (tests/browser/saml_idp.mjs, signing with xml-crypto). 300
//! sign-ins one after the other; timed are only the tenant's steps — the
//! user-name POST that builds the AuthnRequest and redirects, and the ACS POST
//! that checks the signed response and issues the code — not the IdP's time.
//! Baseline in the same run: the tenant's authorize page (GET), the cheapest
//! request of the flow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{Browser, TempDir};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

fn run(exe: &str, args: &[&str]) -> String {
    let o = Command::new(exe).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn main() {
    let exe = env!("CARGO_BIN_EXE_idbridge");
    let tmp = TempDir::new("bench-federation").unwrap();
    let data = tmp.join("tenant");
    let (mut tenant, base) =
        testkit::spawn_tenant(Path::new(exe), &data, &["--initial-domain", "lab.example.test"]).unwrap();
    let d = data.to_str().unwrap();
    run(exe, &["tenant", "domain", "add", "--data", d, "fed.example"]);
    let token = run(exe, &["tenant", "token", "create", "--data", d, "--scope", "sync"]).trim().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let body = serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object"],
            "userName": "alice@fed.example", "externalId": "QUxJQ0U=",
            "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object": {"immutableId": "QUxJQ0U="},
        });
        let s = reqwest::Client::new().post(format!("{base}/Users")).bearer_auth(&token).json(&body).send().await.unwrap();
        assert!(s.status().is_success());
    });
    let (key, cert) = (tmp.join("idp.key"), tmp.join("idp.pem"));
    let o = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench-idp", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success());
    let issuer = base.trim_end_matches("/scim/v2").to_string();
    let port = testkit::free_port().unwrap();
    let config = tmp.join("idp.json");
    std::fs::write(
        &config,
        serde_json::json!({"entity_id": "https://idp.fed.example/saml", "key_file": key, "cert_file": cert,
            "audience": format!("{issuer}/federation/saml"), "accounts": {"alice": {"name_id": "QUxJQ0U="}}})
        .to_string(),
    )
    .unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut idp = Command::new("node")
        .arg(manifest.join("tests/browser/saml_idp.mjs"))
        .arg(port.to_string())
        .arg(&config)
        .env("BROWSER_TOOLS", manifest.join("../../.tools/browser"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(testkit::wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    run(
        exe,
        &[
            "tenant",
            "domain",
            "federate",
            "fed.example",
            "--data",
            d,
            "--protocol",
            "saml",
            "--entity-id",
            "https://idp.fed.example/saml",
            "--sso-url",
            &format!("http://127.0.0.1:{port}/sso"),
            "--signing-cert",
            cert.to_str().unwrap(),
        ],
    );
    let out = run(
        exe,
        &[
            "tenant",
            "client",
            "add",
            "--data",
            d,
            "--name",
            "bench",
            "--redirect-uri",
            "http://127.0.0.1:9/cb",
            "--public",
        ],
    );
    let client_id = out.lines().find_map(|l| l.strip_prefix("client_id: ")).unwrap().to_string();
    let authorize = format!(
        "{issuer}/oauth2/authorize?client_id={client_id}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&response_type=code&scope=openid&state=s&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
    );
    let action = format!("{issuer}/oauth2/authorize");
    let (mut tenant_side, mut baseline) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for i in 0..310 {
            let mut browser = Browser::new().unwrap();
            let t0 = Instant::now();
            let first = browser.get(&authorize).await.unwrap();
            let page_time = t0.elapsed();
            let t1 = Instant::now();
            let to_idp = browser
                .post(&action, &testkit::form_fields(&first.body, &[("username", "alice@fed.example")]))
                .await
                .unwrap();
            let redirect_time = t1.elapsed();
            let idp_page = browser.get(&format!("{}&login=alice", to_idp.location.unwrap())).await.unwrap();
            let acs = idp_page.body.split("action=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
            let t2 = Instant::now();
            let answer = browser.post(&acs, &testkit::form_fields(&idp_page.body, &[])).await.unwrap();
            let acs_time = t2.elapsed();
            assert!(answer.location.is_some_and(|l| l.contains("code=")), "sign-in {i} failed: {}", answer.body);
            if i >= 10 {
                tenant_side.push(redirect_time + acs_time);
                baseline.push(page_time);
            }
        }
    });
    tenant_side.sort();
    baseline.sort();
    let (p50, p99) = (pct(&tenant_side, 0.5), pct(&tenant_side, 0.99));
    let (b50, b99) = (pct(&baseline, 0.5), pct(&baseline, 0.99));
    println!("federated sign-in (SAML, RSA-2048 signature, 300 sign-ins, 2 cores)");
    println!("  baseline: authorize page GET           p50 {b50:.2} ms  p99 {b99:.2} ms");
    println!(
        "  tenant side (user name → IdP, ACS → code) p50 {p50:.2} ms  p99 {p99:.2} ms  ({:.1}x the baseline p50; target p99 < 50 ms)",
        p50 / b50
    );
    let _ = idp.kill();
    let _ = idp.wait();
    let _ = tenant.kill();
    let _ = tenant.wait();
}
