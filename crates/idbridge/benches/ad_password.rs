//! Active Directory to the tenant, woken by AD's change notifications:
//! attribute change to SCIM, and password change to working sign-in.
//!
//!   cargo bench -p idbridge --bench ad_password
//!
//! A Samba AD DC (testkit) with 50 sample users; 20 of them get a password
//! over LDAPS. `idbridge sync run --once` brings users and hashes into
//! `idbridge tenant serve`; then the daemon runs with an hour's interval, so
//! only a change notification starts a cycle (DirSync reads what changed;
//! for a password one `DRSGetNCChanges` EXOP_REPL_OBJ, PPH1, push).
//! 100 times a user's title is changed and the clock runs until the tenant's
//! SCIM API shows it; 100 times a password is set over LDAPS and the clock
//! runs until that password signs in through the tenant's sign-in flow.
//! Baseline in the same run: the same sign-in of a user whose password is
//! already there (the floor of the measurement).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use testkit::{Browser, SambaDc, TempDir};

fn run(exe: &str, args: &[&str]) -> String {
    let o = Command::new(exe).args(args).env("RUST_LOG", "warn").output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// LDIF that sets `dn`'s password (unicodePwd: the quoted password in UTF-16LE).
fn set_password(dn: &str, password: &str) -> String {
    let quoted: Vec<u8> = format!("\"{password}\"").encode_utf16().flat_map(u16::to_le_bytes).collect();
    let value = base64::engine::general_purpose::STANDARD.encode(quoted);
    format!("dn: {dn}\nchangetype: modify\nreplace: unicodePwd\nunicodePwd:: {value}\n-\n")
}

fn signs_in(rt: &tokio::runtime::Runtime, authorize: &str, user: &str, password: &str) -> bool {
    rt.block_on(async {
        let mut b = Browser::new().unwrap();
        let page = b.password_sign_in(authorize, user, password).await.unwrap();
        page.location.is_some_and(|l| l.contains("code="))
    })
}

/// Changes measured of each kind (enough for a p99).
const SAMPLES: usize = 100;

fn main() {
    let exe = env!("CARGO_BIN_EXE_idbridge");
    let tmp = TempDir::new("bench-ad-password").unwrap();
    let dc = SambaDc::start().unwrap();
    let ldif = tmp.join("ad.ldif");
    run(
        exe,
        &["sample", "generate", "--flavor", "ad", "--users", "50", "--groups", "3", "--seed", "8", "--out"]
            .into_iter()
            .chain([ldif.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    dc.modify(&std::fs::read_to_string(&ldif).unwrap()).unwrap();
    let text = std::fs::read_to_string(&ldif).unwrap();
    // Enabled users: (DN, UPN).
    let mut people = Vec::new();
    for record in directory::ldif::parse_str(&text).unwrap() {
        if let directory::LdifRecord::Content(e) | directory::LdifRecord::Change(directory::ChangeRecord::Add(e)) =
            record
            && e.first_text("userAccountControl") == Some("512")
            && let Some(upn) = e.first_text("userPrincipalName")
        {
            people.push((e.dn.to_string(), upn.to_string()));
        }
    }
    people.truncate(20);
    assert_eq!(people.len(), 20, "enough enabled sample users");
    let initial: String = people.iter().map(|(dn, _)| set_password(dn, "Initial.Passw0rd") + "\n").collect();
    dc.modify_tls(&initial).unwrap();

    let data = tmp.join("tenant");
    let data_s = data.to_str().unwrap().to_string();
    let (mut tenant, base) = testkit::spawn_tenant(Path::new(exe), &data, &[]).unwrap();
    let issuer = base.trim_end_matches("/scim/v2").to_string();
    run(exe, &["tenant", "domain", "add", "--data", &data_s, "example.test"]);
    let token = run(exe, &["tenant", "token", "create", "--data", &data_s, "--scope", "sync"]).trim().to_string();
    std::fs::write(tmp.join("token"), &token).unwrap();
    let config = tmp.join("idbridge.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"corp\"\nurls = [\"{}\"]\nbind_dn = \"{}\"\npassword_file = \"{}\"\nbase_dns = [\"DC=example,DC=test\"]\ninclude_ous = [\"OU=People,DC=example,DC=test\"]\npassword_hash_sync = true\n\n[tenant]\nurl = \"{base}\"\ntoken_file = \"{}\"\n\n[sync]\nstate = \"state.db\"\ninterval_secs = 3600\n",
            dc.url,
            dc.admin_upn(),
            dc.password_file().unwrap().display(),
            tmp.join("token").display()
        ),
    )
    .unwrap();
    run(exe, &["sync", "run", "--once", "--config", config.to_str().unwrap()]);
    let authorize = testkit::public_client_authorize_url(Path::new(exe), &data, &issuer).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // Baseline: a sign-in whose password is already in the tenant.
    let mut floor = Vec::new();
    for (_, upn) in &people {
        let t = Instant::now();
        assert!(signs_in(&rt, &authorize, upn, "Initial.Passw0rd"), "{upn} signs in after the first sync");
        floor.push(t.elapsed());
    }
    floor.sort();

    let mut daemon = Command::new(exe)
        .env("RUST_LOG", "warn")
        .args(["sync", "run", "--config", config.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let scim = |path: String| -> serde_json::Value {
        rt.block_on(async {
            reqwest::Client::new()
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
    };
    let ids: Vec<String> = people
        .iter()
        .map(|(_, upn)| {
            let found = scim(format!("/Users?filter=userName%20eq%20%22{upn}%22&attributes=id"));
            found["Resources"][0]["id"].as_str().unwrap().to_string()
        })
        .collect();

    // Attribute changes: the title, set on the DC, read back through SCIM.
    let mut titles = Vec::new();
    for i in 0..SAMPLES {
        let person = i % people.len();
        let title = format!("Titel Nr. {i} — Größe");
        let started = Instant::now();
        dc.modify(&format!("dn: {}\nchangetype: modify\nreplace: title\ntitle: {title}\n-\n", people[person].0))
            .unwrap();
        while scim(format!("/Users/{}?attributes=title", ids[person]))["title"] != title.as_str() {
            assert!(started.elapsed() < Duration::from_secs(60), "title change {i} never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        titles.push(started.elapsed());
    }

    // Password changes. The tenant's own store, read-only beside it: when a
    // user's password record changes, one sign-in confirms it (polling by
    // signing in would count wrong-password attempts toward smart lockout).
    let store = tenant::open_existing(&data).unwrap();
    let mut times = Vec::new();
    for i in 0..SAMPLES {
        let person = i % people.len();
        let (dn, upn) = &people[person];
        let record = |id: &str| tenant::credentials::load(&store.lock(), id).unwrap().map(|(r, _)| r);
        let before = record(&ids[person]);
        let password = format!("Changed.Passw0rd.{i}");
        let started = Instant::now();
        dc.modify_tls(&set_password(dn, &password)).unwrap();
        while record(&ids[person]) == before {
            assert!(started.elapsed() < Duration::from_secs(60), "password {i} never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(signs_in(&rt, &authorize, upn, &password), "{upn} signs in with the new password");
        times.push(started.elapsed());
    }
    println!("Samba AD → tenant with the daemon woken by change notifications (interval an hour):");
    println!(
        "  title set on the DC → shown by SCIM ({SAMPLES} changes): {} (goal p99 < 1 s)",
        testkit::latency_summary(&titles)
    );
    println!(
        "  password set over LDAPS → record in the tenant → sign-in works ({SAMPLES} changes): {} (goal p99 < 1 s)",
        testkit::latency_summary(&times)
    );
    println!("  baseline, a sign-in with a password already there: {}", testkit::latency_summary(&floor));
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = tenant.kill();
    let _ = tenant.wait();
}
