//! Group writeback benchmark: cloud groups written into slapd in one round.
//!
//!   cargo bench -p idbridge --bench group_writeback
//!   IDBRIDGE_BENCH_CLOUD_GROUPS=1000 IDBRIDGE_BENCH_GROUP_MEMBERS=50 …
//!
//! A throwaway slapd with 2,000 sample users is synchronised into an empty
//! tenant; then 1,000 groups of 50 synchronised members each are created in
//! the cloud (SCIM Bulk). The baseline, measured in the same run: `ldapadd`
//! of the same groups (same sizes, `groupOfNames`) into another OU — what
//! the directory's writes cost on their own. Then `idbridge sync run --once`
//! (a delta cycle with nothing to sync, then the writeback round): wall time,
//! CPU and peak RSS of the sync process; again with nothing changed (the
//! cost every round pays: reading the cloud's list and the OU, comparing);
//! and after one member changed in each of 100 groups.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use testkit::TempDir;
use testkit::bench::{env_usize, scim_bulk};

const OU: &str = "ou=cloud-groups,dc=example,dc=org";
const BASELINE_OU: &str = "ou=baseline-groups,dc=example,dc=org";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const HYBRID: &str = "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object";

fn main() {
    let exe = env!("CARGO_BIN_EXE_idbridge");
    let groups = env_usize("IDBRIDGE_BENCH_CLOUD_GROUPS", 1000);
    let per_group = env_usize("IDBRIDGE_BENCH_GROUP_MEMBERS", 50);
    let tmp = TempDir::new("bench-group-writeback").unwrap();
    let (slapd, _) = testkit::slapd_with_sample(tmp.path(), &testkit::openldap_sample(2000, 10, 5).unwrap()).unwrap();
    slapd
        .modify(&format!(
            "dn: {OU}\nchangetype: add\nobjectClass: organizationalUnit\nou: cloud-groups\n\n\
             dn: {BASELINE_OU}\nchangetype: add\nobjectClass: organizationalUnit\nou: baseline-groups\n\n"
        ))
        .unwrap();
    let tenant = testkit::SyncTenant::start(std::path::Path::new(exe), tmp.path(), "example.org").unwrap();
    let config = tmp.join("idbridge.toml");
    let source = "[source.writeback]\ngroups_ou = \"ou=cloud-groups,dc=example,dc=org\"\n";
    let text = testkit::sync_config(
        &slapd,
        "lab",
        source,
        Some((&tenant.base, &tenant.token_file)),
        "\n[sync]\nstate = \"state.db\"\ndeletion_threshold = 100000\n",
    )
    .unwrap();
    std::fs::write(&config, text).unwrap();
    let config = config.display().to_string();
    let sync = || testkit::measure_run(Command::new(exe).args(["sync", "run", "--once", "--config", &config])).unwrap();
    sync();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = reqwest::Client::new();
    let get = |path: &str| -> serde_json::Value {
        rt.block_on(async {
            let url = format!("{}{path}", tenant.base);
            client.get(url).bearer_auth(&tenant.token).send().await.unwrap().json().await.unwrap()
        })
    };
    let mut users: Vec<(String, String)> = Vec::new();
    loop {
        let page = get(&format!("/Users?startIndex={}&count=500", users.len() + 1));
        let resources = page["Resources"].as_array().cloned().unwrap_or_default();
        if resources.is_empty() {
            break;
        }
        for u in resources {
            if let Some(dn) = u[HYBRID]["onPremisesDistinguishedName"].as_str() {
                users.push((u["id"].as_str().unwrap().to_string(), dn.to_string()));
            }
        }
    }
    assert!(users.len() >= per_group, "{} users", users.len());
    let population = users.len();
    let members_of = move |g: usize| (0..per_group).map(move |k| (g * 7 + k) % population);

    // The baseline: the same groups added by ldapadd.
    let mut ldif = String::new();
    for g in 0..groups {
        ldif.push_str(&format!(
            "dn: cn=Baseline {g:04},{BASELINE_OU}\nobjectClass: groupOfNames\ncn: Baseline {g:04}\n"
        ));
        for m in members_of(g) {
            ldif.push_str(&format!("member: {}\n", users[m].1));
        }
        ldif.push('\n');
    }
    let ldif_file = tmp.join("baseline.ldif");
    std::fs::write(&ldif_file, ldif).unwrap();
    let baseline = testkit::measure_run(Command::new("ldapmodify").args([
        "-x",
        "-a",
        "-H",
        &slapd.url,
        "-D",
        slapd.admin_dn(),
        "-w",
        slapd.admin_password(),
        "-f",
        &ldif_file.display().to_string(),
    ]))
    .unwrap();

    // The cloud's groups.
    let mut ids = Vec::new();
    for chunk in (0..groups).collect::<Vec<_>>().chunks(200) {
        let operations: Vec<serde_json::Value> = chunk
            .iter()
            .map(|g| {
                let members: Vec<serde_json::Value> =
                    members_of(*g).map(|m| serde_json::json!({"value": users[m].0})).collect();
                serde_json::json!({"method": "POST", "path": "/Groups", "bulkId": format!("g{g}"),
                    "data": {"schemas": [GROUP], "displayName": format!("Cloud {g:04}"), "members": members}})
            })
            .collect();
        let results = rt.block_on(scim_bulk(&client, &tenant.base, &tenant.token, operations)).unwrap();
        for r in results {
            assert_eq!(r["status"], "201", "{r}");
            ids.push(r["location"].as_str().unwrap().rsplit('/').next().unwrap().to_string());
        }
    }

    let first = sync();
    assert!(first.stderr.contains(&format!("group writeback: {groups} created")), "{}", first.stderr);
    let unchanged = sync();
    assert!(unchanged.stderr.contains(&format!("{groups} unchanged")), "{}", unchanged.stderr);
    // One member more in each of 100 groups.
    let operations: Vec<serde_json::Value> = ids
        .iter()
        .take(100)
        .enumerate()
        .map(|(g, id)| {
            let extra = &users[(g * 7 + per_group) % users.len()].0;
            serde_json::json!({"method": "PATCH", "path": format!("/Groups/{id}"), "data": {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": extra}]}]}})
        })
        .collect();
    rt.block_on(scim_bulk(&client, &tenant.base, &tenant.token, operations)).unwrap();
    let changed = sync();
    assert!(changed.stderr.contains("100 updated"), "{}", changed.stderr);

    let ratio = |s: f64| s / baseline.seconds;
    println!("group writeback, {groups} cloud groups × {per_group} members, slapd, one round:");
    println!("  baseline: ldapadd of the same groups        {:>8.2} s", baseline.seconds);
    for (name, m) in [
        ("first round: every group created", &first),
        ("next round, nothing changed", &unchanged),
        ("a member added to 100 groups", &changed),
    ] {
        println!(
            "  {name:<42} {:>8.2} s  ({:.2}x the baseline)  sync CPU {:.2} s, peak RSS {} MiB",
            m.seconds,
            ratio(m.seconds),
            m.cpu_seconds,
            m.peak_kib / 1024
        );
    }
}
