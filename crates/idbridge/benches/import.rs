//! Full-import benchmark: `idbridge source dump` against `ldapsearch -E pr=1000`
//! over the same slapd and the same entries, in the same run.
//!
//!   cargo bench -p idbridge --bench import            (20,000 and 100,000 users)
//!   IDBRIDGE_BENCH_SIZES=5000 cargo bench -p idbridge --bench import
//!   IDBRIDGE_BENCH_PERF=/tmp/dump.perf … (then one more dump under `perf record -g`)
//!   IDBRIDGE_BENCH_COMPARE=/path/to/other/idbridge … (that build's dump too, in the same run)
//!
//! Prints wall time (best of 3), objects/s, peak RSS (VmHWM, polled) and the
//! ratio idbridge/ldapsearch. Both write LDIF of all attributes to /dev/null.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use testkit::TempDir;

struct Measure {
    seconds: f64,
    peak_kib: u64,
    stderr: String,
}

fn measure(cmd: &mut Command) -> Measure {
    let (seconds, peak_kib, stderr) = testkit::measure(cmd).unwrap();
    Measure { seconds, peak_kib, stderr }
}

fn best_of(n: usize, mut make: impl FnMut() -> Command) -> Measure {
    let mut best: Option<Measure> = None;
    for _ in 0..n {
        let m = measure(&mut make());
        if best.as_ref().is_none_or(|b| m.seconds < b.seconds) {
            best = Some(Measure { peak_kib: m.peak_kib.max(best.as_ref().map_or(0, |b| b.peak_kib)), ..m });
        }
    }
    best.unwrap()
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let sizes: Vec<u64> = std::env::var("IDBRIDGE_BENCH_SIZES")
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|_| vec![20_000, 100_000]);
    let exe = env!("CARGO_BIN_EXE_idbridge");
    println!("full import, all attributes, LDIF to /dev/null; best of 3; peak = VmHWM");
    println!("{:>8} | {:>22} | {:>22} | {:>6}", "users", "ldapsearch pr=1000", "idbridge source dump", "ratio");
    for users in sizes {
        let tmp = TempDir::new("bench").unwrap();
        let groups = (users / 100).max(1);
        let (slapd, _) =
            testkit::slapd_with_sample(tmp.path(), &testkit::openldap_sample(users, groups, 42).unwrap()).unwrap();
        let pw = slapd.password_file().unwrap();
        let filter =
            "(|(objectClass=person)(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))";
        let base = slapd.base_dn();
        let ldapsearch = best_of(3, || {
            let mut c = Command::new("ldapsearch");
            c.args(["-x", "-LLL", "-H", &slapd.url, "-D", slapd.admin_dn(), "-y"]).arg(&pw).args([
                "-b",
                base,
                "-E",
                "pr=1000/noprompt",
                filter,
                "*",
                "entryUUID",
            ]);
            c
        });
        let dump = |exe: &str| {
            let mut c = Command::new(exe);
            c.env("RUST_LOG", "warn")
                .args(["source", "dump", "--url", &slapd.url, "--bind-dn", slapd.admin_dn(), "--password-file"])
                .arg(&pw)
                .args(["--base-dn", base, "--page-size", "1000", "--out", "/dev/null"]);
            c
        };
        let ours = best_of(3, || dump(exe));
        if let Ok(other) = std::env::var("IDBRIDGE_BENCH_COMPARE") {
            let theirs = best_of(3, || dump(&other));
            println!(
                "{other}: {:.2} s ({:.2}x ldapsearch); this build / that one: {:.2}x",
                theirs.seconds,
                theirs.seconds / ldapsearch.seconds,
                ours.seconds / theirs.seconds
            );
        }
        if let Ok(file) = std::env::var("IDBRIDGE_BENCH_PERF") {
            let mut c = Command::new("perf");
            c.args(["record", "-F", "999", "-g", "-o", &format!("{file}.{users}"), "--", exe])
                .env("RUST_LOG", "warn")
                .args(["source", "dump", "--url", &slapd.url, "--bind-dn", slapd.admin_dn(), "--password-file"])
                .arg(&pw)
                .args(["--base-dn", base, "--page-size", "1000", "--out", "/dev/null"]);
            measure(&mut c);
        }
        let expected = users + groups;
        assert!(ours.stderr.contains(&format!(": {expected} objects")), "idbridge read another count: {}", ours.stderr);
        let rate = |m: &Measure| expected as f64 / m.seconds;
        println!(
            "{users:>8} | {:>6.2} s {:>7.0}/s {:>4} MiB | {:>6.2} s {:>7.0}/s {:>4} MiB | {:>5.2}x",
            ldapsearch.seconds,
            rate(&ldapsearch),
            ldapsearch.peak_kib / 1024,
            ours.seconds,
            rate(&ours),
            ours.peak_kib / 1024,
            ours.seconds / ldapsearch.seconds
        );
    }
}
