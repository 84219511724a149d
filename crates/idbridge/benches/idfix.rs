//! idfix scan benchmark.
//!
//!   cargo bench -p idbridge --bench idfix
//!   IDBRIDGE_BENCH_OBJECTS=20000 cargo bench -p idbridge --bench idfix
//!
//! N users (+ N/100 groups) with 5 % planted defects (the `sample` crate,
//! openldap flavour) are loaded into
//! a throwaway slapd. In the same run: `ldapsearch -E pr=1000` of the same
//! objects (the baseline), `idbridge idfix scan --config` over LDAP, and
//! `idbridge idfix scan --ldif` over the file — objects/s and peak RSS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use testkit::TempDir;

fn main() {
    let users: u64 = std::env::var("IDBRIDGE_BENCH_OBJECTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let exe = env!("CARGO_BIN_EXE_idbridge");
    let tmp = TempDir::new("bench-idfix").unwrap();
    let spec = sample::SampleSpec { defects_percent: 5, ..testkit::openldap_sample(users, users / 100, 5).unwrap() };
    let (slapd, ldif) = testkit::slapd_with_sample(tmp.path(), &spec).unwrap();
    let objects = users + users / 100;
    let (dump, dump_rss) =
        testkit::ldapsearch_baseline(&slapd, "(|(objectClass=person)(objectClass=groupOfNames))", &[]).unwrap();
    let config = tmp.join("idbridge.toml");
    std::fs::write(&config, testkit::sync_config(&slapd, "lab", "", None, "").unwrap()).unwrap();
    let out = tmp.join("findings.json");
    let (ldap_secs, ldap_rss, ldap_report) = testkit::measure(
        Command::new(exe)
            .env("RUST_LOG", "warn")
            .args(["idfix", "scan", "--config"])
            .arg(&config)
            .args(["--allow-tld", "org", "--format", "json", "--out"])
            .arg(&out),
    )
    .unwrap();
    let findings = std::fs::read_to_string(&out).unwrap().lines().count();
    let (file_secs, file_rss, _) = testkit::measure(
        Command::new(exe)
            .env("RUST_LOG", "warn")
            .args(["idfix", "scan", "--ldif"])
            .arg(&ldif)
            .args(["--format", "json", "--out"])
            .arg(tmp.join("findings-file.json")),
    )
    .unwrap();
    let rate = |secs: f64| objects as f64 / secs;
    println!("idfix scan benchmark: {objects} objects ({users} users), 5 % planted defects");
    println!("  ldapsearch dump (baseline)  {dump:.2} s, {:.0} objects/s, {} MiB", rate(dump), dump_rss / 1024);
    println!(
        "  idfix scan over LDAP        {ldap_secs:.2} s, {:.0} objects/s, peak RSS {} MiB, {findings} findings ({:.1}x the dump)",
        rate(ldap_secs),
        ldap_rss / 1024,
        ldap_secs / dump
    );
    println!(
        "  idfix scan of the LDIF file {file_secs:.2} s, {:.0} objects/s, peak RSS {} MiB",
        rate(file_secs),
        file_rss / 1024
    );
    println!("  {}", ldap_report.lines().last().unwrap_or(""));
}
