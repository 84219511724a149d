//! The `idbridge` command end to end against a real slapd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use testkit::{Slapd, SlapdOptions, TempDir};

fn idbridge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idbridge")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn sample_into_slapd_then_dump_full_and_delta() {
    let tmp = TempDir::new("cli").unwrap();
    let ldif = tmp.join("sample.ldif");
    ok(&idbridge(&[
        "sample",
        "generate",
        "--users",
        "200",
        "--groups",
        "12",
        "--flavor",
        "openldap",
        "--no-ous",
        "--seed",
        "3",
        "--out",
        p(&ldif),
    ]));
    let slapd = Slapd::start(SlapdOptions { bulk_ldif: Some(ldif.clone()), ..SlapdOptions::default() }).unwrap();
    let pw = slapd.password_file().unwrap();
    let state = tmp.join("dump.state");
    let common =
        ["--url", &slapd.url, "--bind-dn", slapd.admin_dn(), "--password-file", p(&pw), "--base-dn", slapd.base_dn()];

    let mut args = vec!["source", "dump", "--format", "json", "--state", p(&state), "--page-size", "50"];
    args.extend(common);
    let full = json_lines(&ok(&idbridge(&args)));
    assert_eq!(full.len(), 212);
    assert!(full.iter().all(|l| l["op"] == "upsert"));
    let user = full.iter().find(|l| l["kind"] == "user").unwrap();
    assert_eq!(user["immutableId"].as_str().unwrap().len(), 24, "16 bytes in base64");
    assert!(user["attributes"]["entryUUID"].is_array());

    let victim = full.iter().find(|l| l["kind"] == "user").unwrap()["dn"].as_str().unwrap().to_string();
    slapd.modify(&format!("dn: {victim}\nchangetype: delete\n\ndn: uid=late,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: late\ncn: Late\nsn: Late\n\n")).unwrap();
    let mut args = vec!["source", "dump", "--format", "json", "--delta", "--state", p(&state)];
    args.extend(common);
    let delta = json_lines(&ok(&idbridge(&args)));
    assert!(
        delta.iter().any(|l| l["op"] == "upsert" && l["dn"] == "uid=late,ou=people,dc=example,dc=org"),
        "{delta:?}"
    );
    assert!(delta.iter().any(|l| l["op"] == "delete"), "{delta:?}");
    assert!(delta.len() <= 4, "only changes (group memberships may follow): {delta:?}");

    // The same through a config file, as LDIF.
    let cfg = tmp.join("idbridge.toml");
    std::fs::write(
        &cfg,
        format!("[[source]]\nname = \"lab\"\nurls = [\"{}\"]\nbind_dn = \"{}\"\npassword_file = \"{}\"\nbase_dns = [\"ou=people,dc=example,dc=org\"]\n", slapd.url, slapd.admin_dn(), p(&pw)),
    )
    .unwrap();
    let text = ok(&idbridge(&["source", "dump", "--config", p(&cfg)]));
    let records = directory::ldif::parse_str(&text).unwrap();
    assert_eq!(records.len(), 200, "199 sampled users left + late");
}

#[test]
fn errors_say_what_to_do() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    let tmp = TempDir::new("cli-err").unwrap();
    let bad = tmp.join("bad.pw");
    std::fs::write(&bad, "not-the-password\n").unwrap();
    let out = idbridge(&[
        "source",
        "dump",
        "--url",
        &slapd.url,
        "--bind-dn",
        slapd.admin_dn(),
        "--password-file",
        p(&bad),
        "--base-dn",
        slapd.base_dn(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cn=admin,dc=example,dc=org")
            && err.contains(&slapd.url)
            && err.contains("check bind_dn and the password"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"));

    let out = idbridge(&["source", "dump", "--url", &slapd.url, "--delta"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--delta needs --state"));

    let cfg = tmp.join("broken.toml");
    std::fs::write(&cfg, "[[source]]\nname = \"x\"\nurls = [\"ldap://127.0.0.1:1\"]\npasword_file = \"/x\"\n").unwrap();
    let out = idbridge(&["source", "dump", "--config", p(&cfg)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml") && err.contains("pasword_file") && err.contains("line 4"), "{err}");

    let out = idbridge(&["sample", "generate", "--users", "5", "--defects", "101", "--out", p(&tmp.join("x.ldif"))]);
    assert!(!out.status.success());
}

/// Named `samba::…` so nextest runs it in the one-DC-at-a-time group.
mod samba {
    use super::*;
    use testkit::SambaDc;

    #[test]
    fn ad_sample_loads_into_samba_and_dumps_back() {
        let dc = SambaDc::start().unwrap();
        let tmp = TempDir::new("cli-samba").unwrap();
        let ldif = tmp.join("ad.ldif");
        ok(&idbridge(&[
            "sample",
            "generate",
            "--flavor",
            "ad",
            "--users",
            "120",
            "--groups",
            "15",
            "--contacts",
            "5",
            "--seed",
            "9",
            "--out",
            p(&ldif),
        ]));
        dc.modify(&std::fs::read_to_string(&ldif).unwrap()).unwrap();
        let pw = dc.password_file().unwrap();
        let mut total = 0;
        for (ou, expected) in [("OU=People", 120), ("OU=Groups", 15), ("OU=Contacts", 5)] {
            let base = format!("{ou},DC=example,DC=test");
            let out = ok(&idbridge(&[
                "source",
                "dump",
                "--url",
                &dc.url,
                "--bind-dn",
                dc.admin_upn(),
                "--password-file",
                p(&pw),
                "--base-dn",
                &base,
                "--format",
                "json",
            ]));
            let lines = json_lines(&out);
            assert_eq!(lines.len(), expected, "{ou}");
            total += lines.len();
        }
        assert_eq!(total, 140);
    }
}
