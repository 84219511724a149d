//! Both sync stores against real servers: SQLite and PostgreSQL give the
//! same tenant from the same directory, a failed import is rolled back on
//! both, the PostgreSQL lease fences a replaced writer, and bad database
//! settings fail with one line naming the cause; readers never take a
//! writer's lock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector_ldap::{LdapSettings, LdapSource, Secret};
use directory::Dn;
use serde_json::Value as Json;
use store::{DatabaseSettings, History, PgStore, PgTls, SqliteStore, StateStore};
use sync::engine::memory::MemoryTarget;
use sync::engine::{ConnectorSpace, CycleOptions, ExportOp, Metaverse, Quiet, Target, Transaction, run_cycle};
use sync::mapping::Flavor;
use sync::{ImportSink, ImportSummary, SinkError, Source, SourceChange, Watermark};
use testkit::{Postgres, Slapd, SlapdOptions, TempDir};

/// The real LDAP source; the sink it feeds stops slapd after the first
/// object, so the next page request meets a dead server.
struct StopsSlapdMidImport {
    inner: LdapSource,
    slapd: Option<Arc<Mutex<Slapd>>>,
}

impl Source for StopsSlapdMidImport {
    type Error = connector_ldap::LdapError;

    async fn full_import(
        &mut self,
        previous: Option<&Watermark>,
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<ImportSummary, Self::Error> {
        let slapd = self.slapd.take();
        let mut stopping = |change: SourceChange| -> Result<(), SinkError> {
            sink.accept(change)?;
            if let Some(slapd) = &slapd {
                slapd.lock().unwrap().stop();
            }
            Ok(())
        };
        self.inner.full_import(previous, &mut stopping).await
    }

    async fn delta_import(
        &mut self,
        since: &Watermark,
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<ImportSummary, Self::Error> {
        self.inner.delta_import(since, sink).await
    }
}

/// Staging cycles export nothing: a target that is never called.
struct NoTarget;

impl Target for NoTarget {
    fn apply(&mut self, ops: Vec<ExportOp>) -> impl Future<Output = sync::engine::Answers> + Send + use<> {
        panic!("staging exported {} operations", ops.len());
        #[allow(unreachable_code)]
        std::future::ready(Vec::new())
    }
}

fn settings(slapd: &Slapd) -> LdapSettings {
    LdapSettings {
        urls: vec![slapd.url.clone()],
        bind_dn: Some(slapd.admin_dn().to_string()),
        password: Some(Secret::new(slapd.admin_password())),
        base_dns: vec![Dn::parse(slapd.base_dn()).unwrap()],
        page_size: 5,
        connect_timeout: std::time::Duration::from_secs(10),
        ..LdapSettings::default()
    }
}

/// slapd with `count` users (`uid=u00,ou=people,…`, each with the LDIF
/// lines `extra` too), the settings to read it with, and slapd shared so a
/// source can stop it.
fn users(count: usize, extra: &str) -> (Arc<Mutex<Slapd>>, LdapSettings) {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    let mut ldif = String::new();
    for i in 0..count {
        ldif.push_str(&format!(
            "dn: uid=u{i:02},ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: u{i:02}\ncn: Zoë {i}\nsn: Ünal\n{extra}\n"
        ));
    }
    slapd.modify(&ldif).unwrap();
    let settings = settings(&slapd);
    (Arc::new(Mutex::new(slapd)), settings)
}

/// A cycle whose import fails half-way (slapd stopped between two pages)
/// leaves nothing behind, and the same store runs the next cycle (as the
/// daemon does) without a restart. `no_writer_left` checks, between the
/// two, that the failed cycle holds no write lock or transaction.
fn a_failed_import_is_rolled_back(store: &mut dyn StateStore, no_writer_left: impl FnOnce()) {
    // More users than a full import reads ahead of the store (a few batches
    // of 256), so the import is still reading when slapd stops.
    const USERS: usize = 2_000;
    let (slapd, settings) = users(USERS, "");
    let options = CycleOptions { staging: true, config_hash: "test".into(), ..CycleOptions::default() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut failing =
        StopsSlapdMidImport { inner: LdapSource::new(settings.clone()).unwrap(), slapd: Some(slapd.clone()) };
    let err = rt
        .block_on(run_cycle("lab", Flavor::Ldap, &mut failing, &mut *store, &mut NoTarget, &options, &mut Quiet))
        .unwrap_err();
    assert!(err.to_string().contains("import from lab failed"), "{err}");
    assert_eq!(store.counts().unwrap().connector_space, 0, "the failed import's objects are gone");
    assert_eq!(store.watermark("lab").unwrap(), None);
    no_writer_left();

    slapd.lock().unwrap().restart().unwrap();
    let mut good = LdapSource::new(settings).unwrap();
    let report = rt
        .block_on(run_cycle("lab", Flavor::Ldap, &mut good, &mut *store, &mut NoTarget, &options, &mut Quiet))
        .unwrap();
    assert_eq!(report.imported, USERS as u64, "{report:?}");
    let counts = store.counts().unwrap();
    assert_eq!((counts.connector_space, counts.metaverse), (USERS as i64, USERS as i64));
    assert!(store.watermark("lab").unwrap().is_some());
}

#[test]
fn a_failed_import_is_rolled_back_on_sqlite() {
    let tmp = TempDir::new("rollback").unwrap();
    let path = tmp.join("sync.db");
    let mut store = SqliteStore::open(&path).unwrap();
    a_failed_import_is_rolled_back(&mut store, || {
        // (A raw connection: the store's own lock file admits one writer per file.)
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute("INSERT INTO sources(name, config_hash) VALUES('probe', 'x')", [])
            .expect("the failed cycle holds no write lock");
        assert!(SqliteStore::open(&path).is_err(), "a second writer on the same file is refused");
    });
}

fn pg_settings(pg: &Postgres) -> DatabaseSettings {
    pg.settings("store-tests")
}

/// A PostgreSQL store that holds the lease (as the active daemon's does).
fn pg_writer(pg: &Postgres, holder: &str) -> (PgStore, store::lease::Lease) {
    let mut store = PgStore::connect(&pg_settings(pg)).unwrap();
    let lease = store.try_acquire_lease(holder, Duration::from_secs(30)).unwrap().expect("the lease is free");
    (store, lease)
}

#[test]
fn a_failed_import_is_rolled_back_on_postgres() {
    let pg = Postgres::start().unwrap();
    let (mut store, _lease) = pg_writer(&pg, "test");
    a_failed_import_is_rolled_back(&mut store, || {
        let open = pg.psql("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'").unwrap();
        assert_eq!(open.trim(), "0", "no transaction left open");
    });
}

/// What the store says the tenant holds (the resource last confirmed for
/// each of the target's objects, found by externalId), with tenant ids
/// (members, manager) replaced by the externalId of the object they name:
/// two stores compare equal exactly when they hold the same. With
/// `drop_deleted`, without the members a group still names after they were
/// deleted (a store synced from scratch never knew them).
fn by_anchor(target: &MemoryTarget, store: &dyn StateStore, drop_deleted: bool) -> BTreeMap<String, Json> {
    let anchors: BTreeMap<String, String> = target
        .objects
        .iter()
        .map(|(id, (_, r))| (id.clone(), r.get("externalId").and_then(Json::as_str).unwrap_or_default().to_string()))
        .collect();
    fn rename(v: &mut Json, anchors: &BTreeMap<String, String>) {
        match v {
            Json::String(s) => {
                if let Some(a) = anchors.get(s.as_str()) {
                    *s = a.clone();
                } else if s.strip_prefix('t').is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit())) {
                    // A deleted object's id, in a group's cached resource
                    // (slapd keeps the member value; the tenant drops it).
                    *s = "<deleted>".into();
                }
            }
            Json::Array(items) => {
                items.iter_mut().for_each(|i| rename(i, anchors));
                if anchors.contains_key("<drop deleted>") {
                    items.retain(|i| i.get("value").is_none_or(|v| v != "<deleted>"));
                }
                items.sort_by_key(|i| i.to_string());
            }
            Json::Object(m) => m.values_mut().for_each(|i| rename(i, anchors)),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    let mut anchors = anchors;
    if drop_deleted {
        anchors.insert("<drop deleted>".into(), String::new());
    }
    // The 2,100 users of the large group are alike and unchanged: looked up
    // one by one they would take most of the test's time.
    let bulk: std::collections::BTreeSet<&String> = target
        .objects
        .iter()
        .filter(|(_, (_, r))| r.get("userName").and_then(Json::as_str).is_some_and(|u| u.starts_with("bulk")))
        .map(|(id, _)| id)
        .collect();
    let looked_up: Vec<&String> =
        anchors.iter().filter(|(id, a)| !a.is_empty() && !bulk.contains(id)).map(|(_, a)| a).collect();
    for anchor in looked_up {
        let (mv, _, _) = store.find(anchor).unwrap().unwrap_or_else(|| panic!("{anchor} is not in the store"));
        let (_, mut resource) = store.exported(&mv).unwrap().unwrap();
        rename(&mut resource, &anchors);
        out.insert(anchor.clone(), resource);
    }
    out
}

/// Equal tenants, or a panic listing only what differs.
fn assert_same(a: (&MemoryTarget, &dyn StateStore), b: (&MemoryTarget, &dyn StateStore)) {
    let (a, b) = (by_anchor(a.0, a.1, false), by_anchor(b.0, b.1, false));
    let mut diff = Vec::new();
    for key in a.keys().chain(b.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (x, y) = (a.get(key).cloned().unwrap_or_default(), b.get(key).cloned().unwrap_or_default());
        if x != y {
            let fields = |v: &Json| v.as_object().cloned().unwrap_or_default();
            let (fx, fy) = (fields(&x), fields(&y));
            for field in fx.keys().chain(fy.keys()).collect::<std::collections::BTreeSet<_>>() {
                let (vx, vy) = (fx.get(field).cloned().unwrap_or_default(), fy.get(field).cloned().unwrap_or_default());
                if vx == vy {
                    continue;
                }
                if let (Json::Array(ix), Json::Array(iy)) = (&vx, &vy) {
                    let only_x: Vec<_> = ix.iter().filter(|i| !iy.contains(i)).collect();
                    let only_y: Vec<_> = iy.iter().filter(|i| !ix.contains(i)).collect();
                    diff.push(format!("{key} {field}: only sqlite {only_x:?}, only postgres {only_y:?}"));
                } else {
                    diff.push(format!("{key} {field}: sqlite {vx}, postgres {vy}"));
                }
            }
        }
    }
    assert!(diff.is_empty(), "{} objects differ:\n{}", diff.len(), diff.join("\n"));
}

fn cycle(rt: &tokio::runtime::Runtime, slapd: &Slapd, store: &mut dyn StateStore, target: &mut MemoryTarget) {
    let mut source = LdapSource::new(settings(slapd)).unwrap();
    let options = CycleOptions { config_hash: "test".into(), ..CycleOptions::default() };
    let report =
        rt.block_on(run_cycle("corp", Flavor::Ldap, &mut source, store, target, &options, &mut Quiet)).unwrap();
    assert_eq!(report.error_count(), 0, "{report:?}");
    store.record_run("corp", &report).unwrap();
}

#[test]
fn sqlite_and_postgres_give_the_same_tenant() {
    let tmp = TempDir::new("both-stores").unwrap();
    let spec = testkit::openldap_sample(300, 30, 7).unwrap();
    // And a group large enough to keep its members in chunks (see the
    // store's member_chunks): 2,100 more users, all in it (loaded with the
    // sample: added one by one they take minutes).
    let base = spec.base_dn.to_string();
    let mut ldif = Vec::new();
    spec.write(&mut ldif, false).unwrap();
    let mut everyone = format!("dn: cn=everyone,{base}\nobjectClass: groupOfNames\ncn: everyone\n");
    for i in 0..2100 {
        ldif.extend(
            format!("dn: uid=bulk{i},{base}\nobjectClass: inetOrgPerson\nuid: bulk{i}\ncn: Bulk {i}\nsn: Bülk\n\n")
                .bytes(),
        );
        everyone.push_str(&format!("member: uid=bulk{i},{base}\n"));
    }
    ldif.extend(format!("{everyone}\n").bytes());
    std::fs::write(tmp.join("sample.ldif"), &ldif).unwrap();
    let slapd =
        Slapd::start(SlapdOptions { bulk_ldif: Some(tmp.join("sample.ldif")), ..SlapdOptions::default() }).unwrap();
    let pg = Postgres::start().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut sqlite = SqliteStore::open(&tmp.join("sync.db")).unwrap();
    let (mut postgres, _lease) = pg_writer(&pg, "test");
    let (mut to_sqlite, mut to_postgres) = (MemoryTarget::new(), MemoryTarget::new());

    cycle(&rt, &slapd, &mut sqlite, &mut to_sqlite);
    cycle(&rt, &slapd, &mut postgres, &mut to_postgres);
    assert_eq!(to_sqlite.objects.len(), 330 + 2101);
    assert_same((&to_sqlite, &sqlite), (&to_postgres, &postgres));

    // Changes of every kind: an attribute, a rename, a deletion, a member
    // removed, a manager set; both stores pass them on the same.
    let dn_of = |r: &Json| {
        r.pointer("/urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object/onPremisesDistinguishedName")
            .and_then(Json::as_str)
            .map(str::to_string)
    };
    let mut users: Vec<String> = to_sqlite
        .objects
        .values()
        .filter_map(|(_, r)| dn_of(r))
        .filter(|dn| dn.starts_with("uid=") && !dn.starts_with("uid=bulk"))
        .collect();
    users.sort();
    assert!(users.len() >= 4);
    // (A deleted user leaves the groups it was in: a member removed too.)
    slapd
        .modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: sn\nsn: Çelik-Øster\n\ndn: {}\nchangetype: delete\n\ndn: {}\nchangetype: modify\nreplace: manager\nmanager: {}\n\ndn: {}\nchangetype: modrdn\nnewrdn: uid=renamed-ü\ndeleteoldrdn: 0\n\n",
            users[0], users[1], users[2], users[3], users[3]
        ))
        .unwrap();
    cycle(&rt, &slapd, &mut sqlite, &mut to_sqlite);
    cycle(&rt, &slapd, &mut postgres, &mut to_postgres);
    assert_eq!(to_sqlite.objects.len(), 329 + 2101);
    assert_same((&to_sqlite, &sqlite), (&to_postgres, &postgres));

    // Members alone change (SQLite syncs those groups by difference,
    // PostgreSQL whole): added, removed, a new user added to a group in the
    // same change, and a group whose description changes with its members.
    let mut groups: Vec<String> = to_sqlite
        .objects
        .values()
        .filter_map(|(_, r)| dn_of(r))
        .filter(|dn| dn.starts_with("cn=") && !dn.starts_with("cn=everyone"))
        .collect();
    groups.sort();
    assert!(groups.len() >= 3);
    groups.insert(3, format!("cn=everyone,{base}"));
    slapd
        .modify(&format!(
            "dn: {g0}\nchangetype: modify\nadd: member\nmember: {u4}\nmember: {u5}\n-\n\n\
             dn: cn=everyone,{base}\nchangetype: modify\nadd: member\nmember: {u4}\n-\ndelete: member\nmember: uid=bulk7,{base}\n-\n\n\
             dn: uid=newcomer,{base}\nobjectClass: inetOrgPerson\nuid: newcomer\ncn: New Comer\nsn: Comer\nmail: newcomer@example.org\n\n\
             dn: {g1}\nchangetype: modify\nadd: member\nmember: uid=newcomer,{base}\n-\n\n\
             dn: {g2}\nchangetype: modify\nreplace: description\ndescription: Ökonomie\n-\nadd: member\nmember: {u6}\n-\n\n",
            g0 = groups[0],
            g1 = groups[1],
            g2 = groups[2],
            u4 = users[4],
            u5 = users[5],
            u6 = users[6],
        ))
        .unwrap();
    cycle(&rt, &slapd, &mut sqlite, &mut to_sqlite);
    cycle(&rt, &slapd, &mut postgres, &mut to_postgres);
    assert_same((&to_sqlite, &sqlite), (&to_postgres, &postgres));
    // Removed again, one of them with another added in the same change.
    slapd
        .modify(&format!(
            "dn: {g0}\nchangetype: modify\ndelete: member\nmember: {u4}\n-\nadd: member\nmember: {u7}\n-\n\n\
             dn: cn=everyone,{base}\nchangetype: modify\ndelete: member\nmember: uid=bulk1000,{base}\nmember: {u4}\n-\nadd: member\nmember: uid=newcomer,{base}\n-\n\n\
             dn: {g1}\nchangetype: modify\ndelete: member\nmember: uid=newcomer,{base}\n-\n\n",
            g0 = groups[0],
            g1 = groups[1],
            u4 = users[4],
            u7 = users[7],
        ))
        .unwrap();
    cycle(&rt, &slapd, &mut sqlite, &mut to_sqlite);
    cycle(&rt, &slapd, &mut postgres, &mut to_postgres);
    assert_same((&to_sqlite, &sqlite), (&to_postgres, &postgres));
    // Both synced those groups by difference: a store synced from scratch
    // (every group whole) gives the same tenant.
    let mut fresh = SqliteStore::open(&tmp.join("fresh.db")).unwrap();
    let mut to_fresh = MemoryTarget::new();
    cycle(&rt, &slapd, &mut fresh, &mut to_fresh);
    // (Only the groups changed here: the others still name the user renamed
    // above by its old DN, which slapd keeps and a fresh sync cannot resolve.)
    let anchor_of = |dn: &str| {
        to_fresh.objects.values().find(|(_, r)| dn_of(r).as_deref() == Some(dn)).unwrap().1["externalId"].clone()
    };
    let changed: Vec<Json> = groups[..4].iter().map(|g| anchor_of(g)).collect();
    let (incremental, from_scratch) = (by_anchor(&to_sqlite, &sqlite, true), by_anchor(&to_fresh, &fresh, true));
    for anchor in changed.iter().filter_map(Json::as_str) {
        assert_eq!(incremental.get(anchor), from_scratch.get(anchor), "group {anchor}");
        assert!(incremental[anchor]["members"].as_array().is_some_and(|m| !m.is_empty()));
    }
    let (a, b) = (sqlite.counts().unwrap(), postgres.counts().unwrap());
    assert_eq!(a, b);
    assert_eq!(sqlite.runs(5).unwrap().len(), postgres.runs(5).unwrap().len());
    let key = users[0].as_str();
    assert_eq!(sqlite.find(key).unwrap().map(|f| f.1), postgres.find(key).unwrap().map(|f| f.1));
    assert!(postgres.find(key).unwrap().is_some(), "find by DN on PostgreSQL");

    // A reader sees the writer's state and cannot write.
    let mut reader = PgStore::connect(&pg_settings(&pg)).unwrap();
    assert_eq!(reader.counts().unwrap(), b);
    let refused = Transaction::begin(&mut reader).unwrap_err();
    assert!(refused.to_string().contains("lease"), "{refused}");
}

#[test]
fn a_replaced_writer_cannot_commit_and_the_new_one_can() {
    let pg = Postgres::start().unwrap();
    let (mut old, old_lease) = pg_writer(&pg, "node-a");
    let mut standby = PgStore::connect(&pg_settings(&pg)).unwrap();
    let held = standby.try_acquire_lease("node-b", Duration::from_secs(30)).unwrap().unwrap_err();
    assert_eq!(held.holder, "node-a");
    assert!(!held.expired());
    assert_eq!(standby.lease_holder().unwrap().unwrap().holder, "node-a");

    // The old writer is inside a transaction when its lease runs out (as
    // if it had been paused): the standby takes over.
    let mut tx = Transaction::begin(&mut old).unwrap();
    tx.set_watermark("corp", &Watermark("from-the-old-writer".into())).unwrap();
    pg.psql("UPDATE sync_lease SET expires_at = clock_timestamp()").unwrap();
    let new_lease = standby.try_acquire_lease("node-b", Duration::from_secs(30)).unwrap().unwrap();
    assert!(new_lease.fence().epoch() > old_lease.fence().epoch());
    // Refused by the fence, or — when the successor's ending of the old
    // writer's session lands first (a loaded machine) — by the closed
    // connection; either way nothing is committed (checked below).
    let refused = tx.commit().unwrap_err().to_string();
    assert!(
        refused.contains("nothing of this transaction was committed") || refused.contains("connection closed"),
        "{refused}"
    );
    assert_eq!(standby.watermark("corp").unwrap(), None, "nothing of the old writer's transaction");
    // Writes outside a transaction are fenced too.
    assert!(old.record_failed_run("corp", "late").is_err());
    // The old lease's renewer notices.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while old_lease.is_held() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!old_lease.is_held(), "the renewer found the lease gone");

    let mut tx = Transaction::begin(&mut standby).unwrap();
    tx.set_watermark("corp", &Watermark("from-the-new-writer".into())).unwrap();
    tx.commit().unwrap();
    assert_eq!(old.watermark("corp").unwrap(), Some(Watermark("from-the-new-writer".into())));
    assert_eq!(standby.lease_holder().unwrap().unwrap().holder, "node-b");

    // A dropped lease is handed over at once: no wait for the expiry.
    drop(new_lease);
    let info = standby.lease_holder().unwrap().unwrap();
    assert!(info.expired(), "{info:?}");
    let mut third = PgStore::connect(&pg_settings(&pg)).unwrap();
    assert!(third.try_acquire_lease("node-c", Duration::from_secs(30)).unwrap().is_ok());
}

#[test]
fn bad_database_settings_fail_with_one_line_naming_the_cause() {
    let mut pg = Postgres::start_with(true).unwrap();
    let one_line = |e: &sync::engine::StoreError| {
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        text
    };
    let good = pg_settings(&pg);

    let wrong_password = DatabaseSettings { password: Some("wrong".into()), ..good.clone() };
    let e = PgStore::connect(&wrong_password).unwrap_err();
    assert!(one_line(&e).contains("password authentication failed"), "{e}");

    let with_password = DatabaseSettings { url: good.url.replace("idbridge@", "idbridge:secret@"), ..good.clone() };
    let e = PgStore::connect(&with_password).unwrap_err();
    assert!(one_line(&e).contains("holds a password"), "{e}");

    let nowhere = DatabaseSettings {
        url: format!("postgres://idbridge@127.0.0.1:{}/idbridge", testkit::free_port().unwrap()),
        ..good.clone()
    };
    let e = PgStore::connect(&nowhere).unwrap_err();
    assert!(one_line(&e).contains("Connection refused") || one_line(&e).contains("connection refused"), "{e}");

    let e = PgStore::connect(&DatabaseSettings { url: "postgres://[nope".into(), ..good.clone() }).unwrap_err();
    assert!(one_line(&e).contains("URL"), "{e}");

    // TLS with the right CA works; with another CA it is refused.
    let ca = pg.ca.as_ref().unwrap().ca_cert.clone();
    let tls = DatabaseSettings { tls: PgTls::Verified { ca_file: ca }, ..good.clone() };
    let store = PgStore::connect(&tls).unwrap();
    assert_eq!(store.counts().unwrap().metaverse, 0);
    let ssl_in_use = pg.psql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'store-tests'").unwrap();
    assert_eq!(ssl_in_use.trim(), "1");
    drop(store);
    let other_ca = testkit::TestCa::generate().unwrap();
    let e = PgStore::connect(&DatabaseSettings {
        tls: PgTls::Verified { ca_file: other_ca.ca_cert.clone() },
        ..good.clone()
    })
    .unwrap_err();
    assert!(one_line(&e).to_lowercase().contains("certificate"), "{e}");

    // A schema newer than this build: refused, nothing written.
    let current = pg.psql("SELECT version FROM idbridge_schema WHERE component = 'sync'").unwrap().trim().to_string();
    pg.psql("UPDATE idbridge_schema SET version = 99 WHERE component = 'sync'").unwrap();
    let e = PgStore::connect(&good).unwrap_err();
    assert!(one_line(&e).contains("newer than this idbridge"), "{e}");
    assert_eq!(pg.psql("SELECT version FROM idbridge_schema WHERE component = 'sync'").unwrap().trim(), "99");
    pg.psql(&format!("UPDATE idbridge_schema SET version = {current} WHERE component = 'sync'")).unwrap();

    // The database restarts under an open store: the next call reconnects.
    let (mut store, _lease) = pg_writer(&pg, "test");
    store.record_failed_run("corp", "before the restart").unwrap();
    pg.stop().unwrap();
    assert!(store.runs(10).is_err(), "the database is down");
    pg.restart().unwrap();
    store.record_failed_run("corp", "after the restart").unwrap();
    assert_eq!(store.runs(10).unwrap().len(), 2);
}

/// Readers never take the write lock: one that runs before the state file
/// exists reads an empty store and creates nothing, so a daemon starting at
/// the same moment is not refused; a second writer is.
#[test]
fn readers_never_stand_in_a_writers_way() {
    let tmp = TempDir::new("idbridge-state-lock").unwrap();
    let path = tmp.path().join("state.db");
    let reader = SqliteStore::open_for_reading(&path).unwrap();
    assert!(reader.runs(10).unwrap().is_empty());
    assert!(!path.exists(), "reading created the state file");
    let writer = SqliteStore::open(&path).unwrap();
    let refused = SqliteStore::open(&path).unwrap_err().to_string();
    assert!(
        refused.contains("in use by another idbridge process") && refused.contains(&std::process::id().to_string())
    );
    let alongside = SqliteStore::open_for_reading(&path).unwrap();
    assert!(alongside.runs(10).unwrap().is_empty());
    drop((reader, alongside, writer));
    SqliteStore::open(&path).unwrap();
}

/// What a store written before records were compressed holds: plain JSON
/// (TEXT in SQLite; TEXT columns at schema version 1 in PostgreSQL).
const OLD_ENTRY: &str =
    r#"{"attrs":[["uid",["zoë"]],["cn",["Zoë Ångström"]]],"dn":"uid=zoë,ou=people,dc=example,dc=org"}"#;
const OLD_RESOURCE: &str = r#"{"userName":"zoë@example.org","displayName":"Zoë Ångström"}"#;

/// The normalized DN of the old entry: object 02 references it (as
/// manager) in the old reference table.
fn old_entry_dn() -> String {
    Dn::parse("uid=zoë,ou=people,dc=example,dc=org").unwrap().normalized()
}

fn old_records_are_read_and_new_ones_compressed(store: &mut dyn StateStore, stored_entry_bytes: impl Fn() -> usize) {
    let id = sync::SourceId(vec![1]);
    // The reference became a key in the migration: still found.
    let dn = Dn::parse("uid=zoë,ou=people,dc=example,dc=org").unwrap();
    assert_eq!(store.cs_referencing("lab", &dn).unwrap(), [sync::SourceId(vec![2])]);
    let (object, deleted) = store.cs_get("lab", &id).unwrap().expect("the old entry is there");
    assert!(!deleted);
    assert_eq!(object.entry.dn.to_string(), "uid=zoë,ou=people,dc=example,dc=org");
    assert_eq!(object.entry.first_text("cn"), Some("Zoë Ångström"));
    let (tenant_id, resource) = store.exported("m1").unwrap().expect("the old resource is there");
    assert_eq!((tenant_id.as_str(), resource), ("t1", serde_json::from_str::<Json>(OLD_RESOURCE).unwrap()));

    // Written again, the same content is stored compressed and reads back the same.
    let mut bigger = object.clone();
    for i in 0..20 {
        bigger.entry.add("description", format!("Zeile {i} — Beschreibung der Abteilung für Forschung"));
    }
    // (Its JSON: the old entry and twenty descriptions of ~60 bytes.)
    let plain = OLD_ENTRY.len() + 20 * 60;
    store.begin().unwrap();
    store.cs_put("lab", &bigger).unwrap();
    store.set_exported("m1", "t1", &serde_json::from_str(OLD_RESOURCE).unwrap()).unwrap();
    store.commit().unwrap();
    assert_eq!(store.cs_get("lab", &id).unwrap().map(|(o, _)| o.entry), Some(bigger.entry));
    assert_eq!(store.exported("m1").unwrap().map(|(_, r)| r), Some(serde_json::from_str(OLD_RESOURCE).unwrap()));
    assert!(stored_entry_bytes() < plain / 2, "stored {} bytes for about {plain}", stored_entry_bytes());

    // Encoded ahead on another thread where the store can (SQLite), from the
    // text the target's request shares, as the export does while a batch is
    // at the target: read back the same.
    let resource = serde_json::json!({"userName": "zoë@example.org", "displayName": "Zoë Ångström"});
    store.begin().unwrap();
    match store.exported_encoder() {
        Some(encode) => {
            let shared = sync::engine::Resource::new(resource.clone());
            let encoded = std::thread::scope(|s| s.spawn(|| encode(shared.text().get())).join().unwrap()).unwrap();
            store.set_exported_encoded("m1", "t2", &resource, encoded).unwrap();
        }
        None => store.set_exported("m1", "t2", &resource).unwrap(),
    }
    store.commit().unwrap();
    assert_eq!(store.exported("m1").unwrap(), Some(("t2".to_string(), resource)));
}

#[test]
fn records_written_before_compression_are_read_on_sqlite() {
    let tmp = TempDir::new("old-records").unwrap();
    let path = tmp.join("sync.db");
    drop(SqliteStore::open(&path).unwrap());
    let raw = rusqlite::Connection::open(&path).unwrap();
    // The DN indexes as they were: on the normalized DN, a column of its own.
    raw.execute_batch(
        "DROP INDEX cs_dn;
         ALTER TABLE cs ADD COLUMN dn_norm TEXT NOT NULL DEFAULT '';
         CREATE INDEX cs_dn ON cs(source, dn_norm);
         DROP INDEX mv_dn;
         CREATE INDEX mv_dn ON mv(source, dn_norm);",
    )
    .unwrap();
    raw.execute(
        "INSERT INTO cs(source, id, dn, dn_norm, kind, anchor, entry, pending, deleted) VALUES('lab', x'01', 'uid=zoë,ou=people,dc=example,dc=org', 'uid=zoë,ou=people,dc=example,dc=org', 'user', x'01', ?1, 0, 0)",
        [OLD_ENTRY],
    )
    .unwrap();
    raw.execute("INSERT INTO exported(mv_id, tenant_id, resource) VALUES('m1', 't1', ?1)", [OLD_RESOURCE]).unwrap();
    // A metaverse object and a join index as schema version 4 kept them.
    raw.execute_batch(
        r#"ALTER TABLE mv DROP COLUMN precedence;
           ALTER TABLE joins DROP COLUMN precedence;
           ALTER TABLE joins DROP COLUMN refs;
           INSERT INTO mv(id, kind, anchor, attrs, manager, members, deleted, dirty, source, cs_id, dn_norm)
             VALUES('m1', 'user', 'AQ==', '{"mail":"Zoë@Example.org","displayName":"Zoë Ångström"}', NULL, '[]', 0, 0, 'lab', x'01', 'uid=zoë,ou=people,dc=example,dc=org');
           CREATE INDEX mv_join_mail ON mv(lower(json_extract(attrs, '$.mail')));
           DROP TABLE cs_ref_keys;
           ALTER TABLE cs DROP COLUMN member_chunks;
           DROP TABLE cs_member_chunks;
           DROP TABLE precedences;
           ALTER TABLE cs DROP COLUMN delta_ok;
           ALTER TABLE cs DROP COLUMN members_only;
           DROP TABLE cs_member_changes;
           ALTER TABLE mv DROP COLUMN members_only;
           DROP TABLE mv_member_changes;
           CREATE TABLE cs_refs (source TEXT NOT NULL, id BLOB NOT NULL, ref_dn_norm TEXT NOT NULL);
           PRAGMA user_version = 4;"#,
    )
    .unwrap();
    raw.execute("INSERT INTO cs_refs(source, id, ref_dn_norm) VALUES('lab', x'02', ?1)", [old_entry_dn()]).unwrap();
    let mut store = SqliteStore::open(&path).unwrap();
    let legacy: i64 =
        raw.query_row("SELECT count(*) FROM sqlite_schema WHERE name = 'mv_join_mail'", [], |r| r.get(0)).unwrap();
    assert_eq!(legacy, 0, "the old join index (it cannot read packed attributes) is gone");
    let record = store.mv_get("m1").unwrap().expect("the old metaverse object is there");
    assert_eq!(record.attrs.get("displayName"), Some(&Json::from("Zoë Ångström")));
    assert_eq!(store.join_candidates("other", directory::ObjectKind::User, "mail", "zoë@example.org").unwrap(), ["m1"]);
    assert!(sync::engine::ExportLog::exported_encoder(&store).is_some(), "SQLite encodes ahead");
    old_records_are_read_and_new_ones_compressed(&mut store, || {
        raw.query_row("SELECT length(entry) FROM cs WHERE id = x'01'", [], |r| r.get(0)).unwrap()
    });
}

#[test]
fn records_written_before_compression_are_read_on_postgres() {
    let pg = Postgres::start().unwrap();
    drop(pg_writer(&pg, "setup"));
    // Back to schema version 1 (TEXT records), holding one of each.
    pg.psql(
        "ALTER TABLE sync_cs ALTER COLUMN entry TYPE TEXT USING convert_from(entry, 'UTF8');
         ALTER TABLE sync_exported ALTER COLUMN resource TYPE TEXT USING convert_from(resource, 'UTF8');
         DROP TABLE sync_cs_ref_keys;
         CREATE TABLE sync_cs_refs (source TEXT NOT NULL, id BYTEA NOT NULL, ref_dn_norm TEXT NOT NULL);
         UPDATE idbridge_schema SET version = 1 WHERE component = 'sync';",
    )
    .unwrap();
    pg.psql(&format!("INSERT INTO sync_cs_refs(source, id, ref_dn_norm) VALUES('lab', '\\x02', '{}')", old_entry_dn()))
        .unwrap();
    pg.psql(&format!(
        "INSERT INTO sync_cs(source, id, dn, dn_norm, kind, anchor, entry, pending, deleted) VALUES('lab', '\\x01', 'uid=zoë,ou=people,dc=example,dc=org', 'uid=zoë,ou=people,dc=example,dc=org', 'user', '\\x01', '{OLD_ENTRY}', false, false);
         INSERT INTO sync_exported(mv_id, tenant_id, resource) VALUES('m1', 't1', '{OLD_RESOURCE}');"
    ))
    .unwrap();
    let (mut store, _lease) = pg_writer(&pg, "test");
    old_records_are_read_and_new_ones_compressed(&mut store, || {
        pg.psql("SELECT octet_length(entry) FROM sync_cs WHERE id = '\\x01'").unwrap().trim().parse().unwrap()
    });
}

/// Joins on a multi-valued metaverse attribute (any value matches, without
/// regard to case), kept in step as objects change, on both stores; keys
/// first built in a transaction that is rolled back are built again.
fn multi_valued_join_keys(store: &mut dyn StateStore) {
    use directory::ObjectKind::User;
    let project = |store: &mut dyn StateStore, id: u8, attrs: Json| {
        let projection = sync::mapping::Projection {
            kind: User,
            anchor: format!("anchor-{id}"),
            attrs: attrs.as_object().unwrap().clone(),
            precedence: Default::default(),
            manager: None,
            members: Vec::new(),
        };
        store.mv_project("ad", &sync::SourceId(vec![id]), &projection, None, Vec::new()).unwrap().id
    };
    store.begin().unwrap();
    let ann =
        project(store, 1, serde_json::json!({"proxyAddresses": ["SMTP:Ann@example.org", "smtp:Änne.B@example.org"]}));
    let found = |store: &mut dyn StateStore, from: &str, attr: &str, value: &str| {
        store.join_candidates(from, User, attr, value).unwrap()
    };
    assert_eq!(found(store, "hr", "proxyAddresses", "smtp:ann@EXAMPLE.org"), vec![ann.clone()]);
    assert_eq!(found(store, "hr", "proxyAddresses", "smtp:Änne.B@example.org"), vec![ann.clone()]);
    assert!(found(store, "ad", "proxyAddresses", "smtp:ann@example.org").is_empty(), "never its own source");
    // Kept in step: a value removed no longer joins; a new object joins by its value.
    project(store, 1, serde_json::json!({"proxyAddresses": ["SMTP:Ann@example.org"]}));
    assert!(found(store, "hr", "proxyAddresses", "smtp:Änne.B@example.org").is_empty());
    let bob =
        project(store, 2, serde_json::json!({"proxyAddresses": ["SMTP:bob@example.org"], "mail": "Bob@example.org"}));
    assert_eq!(found(store, "hr", "proxyAddresses", "smtp:bob@example.org"), vec![bob.clone()]);
    store.commit().unwrap();
    // The keys of "mail" are first built in a transaction that is undone.
    store.begin().unwrap();
    assert_eq!(found(store, "hr", "mail", "bob@example.org"), vec![bob.clone()]);
    store.rollback().unwrap();
    store.begin().unwrap();
    let cy = project(store, 3, serde_json::json!({"mail": "cy@example.org"}));
    assert_eq!(found(store, "hr", "mail", "CY@example.org"), [cy]);
    assert_eq!(found(store, "hr", "mail", "bob@example.org"), [bob]);
    store.commit().unwrap();
}

/// Reconciliation after a full import lists the live objects the import did
/// not see, with their DNs (non-ASCII kept), and nothing it saw or that is
/// already marked deleted.
fn unseen_objects_are_listed(store: &mut dyn StateStore) {
    let object = |id: u8, dn: &str| sync::SourceObject {
        id: sync::SourceId(vec![id; 16]),
        anchor: directory::Anchor(vec![id; 16]),
        kind: directory::ObjectKind::User,
        entry: directory::Entry::new(Dn::parse(dn).unwrap()),
    };
    store.begin().unwrap();
    store.cs_put("ad", &object(1, "uid=ann,ou=Leute,dc=example,dc=org")).unwrap();
    store.cs_put("ad", &object(2, "uid=zoë,ou=Leute,dc=example,dc=org")).unwrap();
    store.cs_put("ad", &object(3, "uid=gone,ou=Leute,dc=example,dc=org")).unwrap();
    store.cs_put("hr", &object(4, "uid=other,dc=example,dc=org")).unwrap();
    store.cs_delete("ad", &sync::SourceId(vec![3; 16])).unwrap();
    store.commit().unwrap();
    let seen: std::collections::HashSet<sync::SourceId> = [sync::SourceId(vec![1; 16])].into_iter().collect();
    let unseen = store.cs_unseen("ad", &seen).unwrap();
    assert_eq!(unseen.len(), 1, "{unseen:?}");
    assert_eq!(unseen[0].0, sync::SourceId(vec![2; 16]));
    assert_eq!(unseen[0].1, Dn::parse("uid=zoë,ou=Leute,dc=example,dc=org").unwrap());
    assert_eq!(store.cs_count("ad").unwrap(), 2);
    assert_eq!(store.cs_unseen("ad", &Default::default()).unwrap().len(), 2);
}

#[test]
fn unseen_objects_are_listed_on_sqlite() {
    let tmp = TempDir::new("unseen").unwrap();
    unseen_objects_are_listed(&mut SqliteStore::open(&tmp.join("sync.db")).unwrap());
}

#[test]
fn unseen_objects_are_listed_on_postgres() {
    let pg = Postgres::start().unwrap();
    let (mut store, _lease) = pg_writer(&pg, "test");
    unseen_objects_are_listed(&mut store);
}

/// The DNs of a reference list that have no metaverse object are found by
/// position: duplicates counted, non-ASCII kept, another source's object and
/// a disconnected one not taken for this source's.
fn unresolved_dns_are_found(store: &mut dyn StateStore) {
    use directory::{Anchor, Entry, ObjectKind};
    use sync::{SourceId, SourceObject};
    let dn = |t: &str| Dn::parse(t).unwrap();
    let project = |store: &mut dyn StateStore, source: &str, id: u8, name: &str| {
        let object = SourceObject {
            id: SourceId(vec![id]),
            anchor: Anchor(vec![id]),
            kind: ObjectKind::User,
            entry: Entry::new(dn(name)),
        };
        store.cs_put(source, &object).unwrap();
        let projection = sync::mapping::Projection {
            kind: ObjectKind::User,
            anchor: format!("a{id}"),
            attrs: serde_json::json!({"onPremisesDistinguishedName": name}).as_object().unwrap().clone(),
            precedence: Default::default(),
            manager: None,
            members: Vec::new(),
        };
        store.mv_project(source, &SourceId(vec![id]), &projection, None, Vec::new()).unwrap();
        store.cs_done(source, &SourceId(vec![id])).unwrap();
    };
    store.begin().unwrap();
    project(store, "corp", 1, "uid=zoë,ou=Leute,dc=example,dc=org");
    project(store, "corp", 2, "uid=bob,dc=example,dc=org");
    project(store, "corp", 3, "uid=gone,dc=example,dc=org");
    project(store, "hr", 4, "uid=hr-only,dc=example,dc=org");
    store.mv_disconnect("corp", &SourceId(vec![3])).unwrap();
    store.commit().unwrap();
    let list = [
        dn("UID=Zoë,OU=Leute,DC=example,DC=org"),
        dn("uid=nobody,dc=example,dc=org"),
        dn("uid=bob,dc=example,dc=org"),
        dn("uid=zoë,ou=Leute,dc=example,dc=org"),
        dn("uid=hr-only,dc=example,dc=org"),
        dn("uid=gone,dc=example,dc=org"),
        dn("uid=ünknown,dc=example,dc=org"),
    ];
    let mut unresolved = store.mv_unresolved("corp", &list).unwrap();
    unresolved.sort_unstable();
    assert_eq!(unresolved, [1, 4, 5, 6]);
    assert_eq!(store.mv_for_dns("corp", &list).unwrap().len() + unresolved.len(), list.len());
    assert_eq!(store.mv_unresolved("corp", &[]).unwrap(), Vec::<usize>::new());
    assert_eq!(store.mv_unresolved("hr", &list[4..5]).unwrap(), Vec::<usize>::new());
}

#[test]
fn unresolved_dns_are_found_on_sqlite() {
    let tmp = TempDir::new("unresolved").unwrap();
    unresolved_dns_are_found(&mut SqliteStore::open(&tmp.join("sync.db")).unwrap());
}

#[test]
fn unresolved_dns_are_found_on_postgres() {
    let pg = Postgres::start().unwrap();
    let (mut store, _lease) = pg_writer(&pg, "test");
    unresolved_dns_are_found(&mut store);
}

#[test]
fn multi_valued_joins_on_sqlite() {
    let tmp = TempDir::new("join-keys").unwrap();
    multi_valued_join_keys(&mut SqliteStore::open(&tmp.join("sync.db")).unwrap());
}

#[test]
fn multi_valued_joins_on_postgres() {
    let pg = Postgres::start().unwrap();
    let (mut store, _lease) = pg_writer(&pg, "test");
    multi_valued_join_keys(&mut store);
}

/// A group's members are recorded by difference when nothing else of it
/// changed, its metaverse object changes by that difference and the export
/// confirms just those (logged, folded into the resource now and then);
/// anything else, or a group with a manager, is synced whole.
fn members_change_by_difference(store: &mut dyn StateStore) {
    use directory::{Anchor, Entry, ObjectKind};
    use sync::{SourceId, SourceObject};
    let dn = |t: &str| Dn::parse(t).unwrap();
    let object = |id: u8, kind: ObjectKind, name: &str, attrs: &[(&str, &[&str])]| {
        let mut entry = Entry::new(dn(name));
        for (attr, values) in attrs {
            entry.set(attr, values.iter().map(|v| directory::Value::Text((*v).to_string())).collect());
        }
        SourceObject { id: SourceId(vec![id]), anchor: Anchor(vec![id]), kind, entry }
    };
    let projection = |kind: ObjectKind, anchor: &str, name: &str| sync::mapping::Projection {
        kind,
        anchor: anchor.into(),
        attrs: serde_json::json!({"onPremisesDistinguishedName": name}).as_object().unwrap().clone(),
        precedence: Default::default(),
        manager: None,
        members: Vec::new(),
    };
    store.begin().unwrap();
    // Three users in the metaverse, a group with the first one.
    let mut mvs = Vec::new();
    for i in 1..=3u8 {
        let name = format!("uid=u{i},dc=example,dc=org");
        store.cs_put("corp", &object(i, ObjectKind::User, &name, &[("uid", &[&format!("u{i}")])])).unwrap();
        let mv = store
            .mv_project(
                "corp",
                &SourceId(vec![i]),
                &projection(ObjectKind::User, &format!("a{i}"), &name),
                None,
                Vec::new(),
            )
            .unwrap();
        assert!(mv.newly_resolvable, "a new object's DN resolves only now");
        store.cs_done("corp", &SourceId(vec![i])).unwrap();
        mvs.push(mv.id);
    }
    // Projected again: its DN resolved before. Renamed, and back: it resolves anew each time.
    let mut again = |name: &str| {
        store
            .mv_project("corp", &SourceId(vec![1]), &projection(ObjectKind::User, "a1", name), None, Vec::new())
            .unwrap()
    };
    let first = "uid=u1,dc=example,dc=org";
    assert_eq!(again(first), sync::engine::Projected { id: mvs[0].clone(), newly_resolvable: false });
    assert!(again("uid=renamed,dc=example,dc=org").newly_resolvable);
    assert!(again(first).newly_resolvable);
    let group_id = SourceId(vec![9]);
    let group = |members: &[&str], description: &str| {
        object(
            9,
            ObjectKind::Group,
            "cn=team,dc=example,dc=org",
            &[("cn", &["team"]), ("description", &[description]), ("member", members)],
        )
    };
    store.cs_put("corp", &group(&["uid=u1,dc=example,dc=org"], "x")).unwrap();
    assert_eq!(store.cs_member_changes("corp", &group_id).unwrap(), None, "a new group is synced whole");
    let group_mv = store
        .mv_project(
            "corp",
            &group_id,
            &projection(ObjectKind::Group, "g", "cn=team,dc=example,dc=org"),
            None,
            vec![mvs[0].clone()],
        )
        .unwrap()
        .id;
    store.cs_done("corp", &group_id).unwrap();
    // In the tenant with its one member.
    for (i, mv) in mvs.iter().enumerate() {
        store.set_exported(mv, &format!("t{}", i + 1), &serde_json::json!({"userName": i})).unwrap();
    }
    store
        .set_exported(&group_mv, "tg", &serde_json::json!({"displayName": "team", "members": [{"value": "t1"}]}))
        .unwrap();

    // One member added, written in another case; one removed.
    store.cs_put("corp", &group(&["UID=U2,DC=example,DC=org"], "x")).unwrap();
    let changes = store.cs_member_changes("corp", &group_id).unwrap().expect("members alone changed");
    assert_eq!(changes.added, vec![dn("uid=u2,dc=example,dc=org")]);
    assert_eq!(changes.removed, vec![dn("uid=u1,dc=example,dc=org")]);
    // The user a new member names arrives in the same cycle: one more member to resolve.
    store.cs_mark_referencing_pending("corp", &dn("uid=u3,dc=example,dc=org"), &SourceId(vec![3])).unwrap();
    assert_eq!(store.cs_member_changes("corp", &group_id).unwrap().unwrap().added.len(), 1, "u3 is not a member");
    store.cs_put("corp", &group(&["UID=U2,DC=example,DC=org", "uid=u3,dc=example,dc=org"], "x")).unwrap();
    store.cs_mark_referencing_pending("corp", &dn("uid=u3,dc=example,dc=org"), &SourceId(vec![3])).unwrap();
    let changes = store.cs_member_changes("corp", &group_id).unwrap().unwrap();
    assert_eq!(changes.added.len(), 2, "{changes:?}");
    assert!(store.mv_change_members("corp", &group_id, &changes).unwrap());
    let record = store.mv_get(&group_mv).unwrap().unwrap();
    let mut expected = vec![mvs[1].clone(), mvs[2].clone()];
    expected.sort();
    assert_eq!(record.members, expected);
    store.cs_done("corp", &group_id).unwrap();
    assert_eq!(store.cs_member_changes("corp", &group_id).unwrap(), None, "nothing pending");

    // The export sees just those changes, and records them as the tenant confirms them.
    let (head, changes) = store.member_changes_to_export(&group_mv).unwrap().expect("members alone changed");
    assert_eq!((head.kind, head.members.len()), (ObjectKind::Group, 0));
    let mut added = changes.added.clone();
    added.sort();
    assert_eq!((added, changes.removed.clone()), (expected.clone(), vec![mvs[0].clone()]));
    let dirty = store.dirty_objects().unwrap();
    let refs = &dirty.iter().find(|d| d.id == group_mv).unwrap().refs;
    assert_eq!(refs.len(), 2, "only the members added need to go first: {refs:?}");
    // u3 is not in the tenant yet: u2 added and u1 removed now, u3 waits.
    store
        .set_member_changes_exported(
            &group_mv,
            &[(mvs[1].clone(), "t2".into())],
            &[(mvs[0].clone(), Some("t1".into()))],
        )
        .unwrap();
    let members = |store: &dyn StateStore| store.exported(&group_mv).unwrap().unwrap().1["members"].clone();
    assert_eq!(members(store), serde_json::json!([{"value": "t2"}]));
    assert_eq!(store.member_changes_to_export(&group_mv).unwrap().unwrap().1.added, vec![mvs[2].clone()]);
    store.set_member_changes_exported(&group_mv, &[(mvs[2].clone(), "t3".into())], &[]).unwrap();
    assert_eq!(members(store), serde_json::json!([{"value": "t2"}, {"value": "t3"}]));
    assert!(store.member_changes_to_export(&group_mv).unwrap().is_none());
    assert!(!store.dirty_objects().unwrap().iter().any(|d| d.id == group_mv), "clean once all are confirmed");
    // Confirmed changes are logged and folded into the resource now and then: reads see them either way.
    for i in 0..1500 {
        store.set_member_changes_exported(&group_mv, &[(format!("m{i}"), format!("x{i:04}"))], &[]).unwrap();
    }
    store.set_member_changes_exported(&group_mv, &[], &[("m7".into(), Some("x0007".into()))]).unwrap();
    let now = members(store);
    assert_eq!(now.as_array().unwrap().len(), 2 + 1499);
    assert_eq!(now[0], serde_json::json!({"value": "t2"}));
    assert!(!now.as_array().unwrap().contains(&serde_json::json!({"value": "x0007"})));

    // Metaverse member changes are logged too and folded into the list now and then.
    for i in 0..1000u16 {
        let name = format!("uid=n{i},dc=example,dc=org");
        let [hi, lo] = i.to_be_bytes();
        let user = SourceId(vec![100, hi, lo]);
        store
            .mv_project("corp", &user, &projection(ObjectKind::User, &format!("n{i}"), &name), None, Vec::new())
            .unwrap();
        let changes = sync::engine::MemberChanges { added: vec![dn(&name)], removed: Vec::new() };
        assert!(store.mv_change_members("corp", &group_id, &changes).unwrap());
    }
    let gone = sync::engine::MemberChanges { added: Vec::new(), removed: vec![dn("uid=n7,dc=example,dc=org")] };
    assert!(store.mv_change_members("corp", &group_id, &gone).unwrap());
    let members = store.mv_get(&group_mv).unwrap().unwrap().members;
    assert_eq!(members.len(), 2 + 999);
    assert!(members.windows(2).all(|w| w[0] < w[1]), "sorted, once each");
    assert_eq!(store.member_changes_to_export(&group_mv).unwrap().unwrap().1.added.len(), 999);

    // Another attribute changes with the members: synced whole.
    store.cs_put("corp", &group(&["uid=u3,dc=example,dc=org"], "y")).unwrap();
    assert_eq!(store.cs_member_changes("corp", &group_id).unwrap(), None);
    // Once pending whole, a later member change keeps it whole.
    store.cs_put("corp", &group(&["uid=u1,dc=example,dc=org"], "y")).unwrap();
    assert_eq!(store.cs_member_changes("corp", &group_id).unwrap(), None);
    store.cs_done("corp", &group_id).unwrap();
    // A group with a manager: its references are not all members.
    let mut managed = group(&["uid=u2,dc=example,dc=org"], "y");
    managed.entry.set("manager", vec![directory::Value::Text("uid=u3,dc=example,dc=org".into())]);
    store.cs_put("corp", &managed).unwrap();
    store.cs_done("corp", &group_id).unwrap();
    managed.entry.set("member", vec![directory::Value::Text("uid=u1,dc=example,dc=org".into())]);
    store.cs_put("corp", &managed).unwrap();
    assert_eq!(store.cs_member_changes("corp", &group_id).unwrap(), None);
    store.commit().unwrap();
}

#[test]
fn members_change_by_difference_on_sqlite() {
    let tmp = TempDir::new("member-changes").unwrap();
    members_change_by_difference(&mut SqliteStore::open(&tmp.join("sync.db")).unwrap());
    let raw = rusqlite::Connection::open(tmp.join("sync.db")).unwrap();
    let logged: i64 = raw.query_row("SELECT count(*) FROM exported_member_log", [], |r| r.get(0)).unwrap();
    assert!(logged < 1000, "folded into the resource: {logged} left in the log");
    let logged: i64 = raw.query_row("SELECT count(*) FROM mv_member_log", [], |r| r.get(0)).unwrap();
    assert!(logged < 1000, "folded into the members: {logged} left in the log");
}

#[test]
fn members_change_by_difference_on_postgres() {
    let pg = Postgres::start().unwrap();
    let (mut store, _lease) = pg_writer(&pg, "test");
    members_change_by_difference(&mut store);
}

/// A large group's members are kept apart from its entry, in chunks: the
/// entry reads back the same (order and non-ASCII values kept), a member
/// change is found by difference whether the group was stored split or
/// whole before, a value in two member attributes is no change, another
/// attribute makes the change whole, and the chunks go with the group.
/// `chunk_rows` counts the stored chunks.
fn large_groups_are_stored_in_chunks(store: &mut dyn StateStore, chunk_rows: &dyn Fn() -> usize) {
    use directory::{Anchor, Entry, ObjectKind, Value};
    use sync::{SourceId, SourceObject};
    let dn = |t: &str| Dn::parse(t).unwrap();
    let id = SourceId(vec![7]);
    let member = |i: usize| format!("uid=Zoë {i},ou=people,dc=example,dc=org");
    let group = |members: &[String], unique: &[String], description: &str| {
        let mut entry = Entry::new(dn("cn=all,dc=example,dc=org"));
        entry.add("cn", "all");
        entry.add("description", description);
        entry.set("member", members.iter().map(|m| Value::Text(m.clone())).collect());
        entry.set("uniqueMember", unique.iter().map(|m| Value::Text(m.clone())).collect());
        SourceObject { id: id.clone(), anchor: Anchor(vec![7]), kind: ObjectKind::Group, entry }
    };
    let normalized = |t: &str| dn(t);
    // Who the table says references `member` (the keys of the stored entries, kept in step).
    let referencing = |store: &dyn StateStore, member: &str| store.cs_referencing("corp", &dn(member)).unwrap();
    let only_the_group = std::slice::from_ref(&id);
    // Committed first: `chunk_rows` reads on a connection of its own.
    let count = |store: &mut dyn StateStore| {
        store.commit().unwrap();
        let rows = chunk_rows();
        store.begin().unwrap();
        rows
    };
    store.begin().unwrap();
    let mut members: Vec<String> = (0..6000).map(member).collect();
    let first = group(&members, &[], "x");
    store.cs_put("corp", &first).unwrap();
    let rows = count(store);
    assert!((5..=30).contains(&rows), "about 6000/512 chunks: {rows}");
    assert_eq!(store.cs_get("corp", &id).unwrap().unwrap().0.entry, first.entry);
    assert_eq!(referencing(store, &member(4000)), only_the_group);
    store.cs_done("corp", &id).unwrap();
    // The same group again: nothing to do.
    store.cs_put("corp", &first).unwrap();
    assert!(store.cs_pending("corp").unwrap().is_empty());

    // One member added in the middle, one removed: those alone, a chunk or two rewritten.
    members.insert(3000, "uid=new,ou=people,dc=example,dc=org".into());
    let gone = members.remove(100);
    let second = group(&members, &[], "x");
    store.cs_put("corp", &second).unwrap();
    let changes = store.cs_member_changes("corp", &id).unwrap().expect("members alone changed");
    assert_eq!(changes.added, vec![normalized("uid=new,ou=people,dc=example,dc=org")]);
    assert_eq!(changes.removed, vec![normalized(&gone)]);
    let now = count(store);
    assert!(now.abs_diff(rows) <= 3, "{rows} chunks before, {now} after");
    assert_eq!(store.cs_get("corp", &id).unwrap().unwrap().0.entry, second.entry);
    assert!(referencing(store, &gone).is_empty());
    assert_eq!(referencing(store, "uid=new,ou=people,dc=example,dc=org"), only_the_group);
    store.cs_done("corp", &id).unwrap();

    // Another attribute changed too: synced whole; the references follow the stored entry's.
    members.push(member(9999));
    let dropped = members.remove(200);
    store.cs_put("corp", &group(&members, &[], "y")).unwrap();
    assert_eq!(store.cs_member_changes("corp", &id).unwrap(), None);
    assert_eq!(referencing(store, &member(9999)), only_the_group);
    assert!(referencing(store, &dropped).is_empty());
    assert_eq!(referencing(store, &member(4000)), only_the_group, "the others stay");
    store.cs_done("corp", &id).unwrap();

    // A DN in both member attributes, removed from one: no change to the members.
    let both = member(5);
    store.cs_put("corp", &group(&members, std::slice::from_ref(&both), "y")).unwrap();
    store.cs_done("corp", &id).unwrap();
    members.retain(|m| *m != both);
    store.cs_put("corp", &group(&members, std::slice::from_ref(&both), "y")).unwrap();
    let changes = store.cs_member_changes("corp", &id).unwrap().expect("members alone changed");
    assert!(changes.is_empty(), "{changes:?}");
    store.cs_done("corp", &id).unwrap();

    // Shrunk to a small group: stored whole again, found by difference all the same.
    let small: Vec<String> = members.iter().take(10).cloned().collect();
    let shrunk = group(&small, &[], "y");
    store.cs_put("corp", &shrunk).unwrap();
    let changes = store.cs_member_changes("corp", &id).unwrap().expect("members alone changed");
    assert_eq!((changes.added.len(), changes.removed.len()), (0, members.len() - 10 + 1), "and uniqueMember's DN");
    assert_eq!(count(store), 0);
    assert_eq!(store.cs_get("corp", &id).unwrap().unwrap().0.entry, shrunk.entry);
    assert!(referencing(store, &member(4000)).is_empty());
    assert_eq!(referencing(store, &small[0]), only_the_group);
    store.cs_done("corp", &id).unwrap();
    // And grown again.
    store.cs_put("corp", &group(&members, &[], "y")).unwrap();
    let changes = store.cs_member_changes("corp", &id).unwrap().expect("members alone changed");
    assert_eq!((changes.added.len(), changes.removed.len()), (members.len() - 10, 0));
    assert!(count(store) > 5);
    store.cs_done("corp", &id).unwrap();

    assert_eq!(referencing(store, &member(4000)), only_the_group);
    // Deleted: its chunks and references go with it.
    store.cs_delete("corp", &id).unwrap();
    store.cs_done("corp", &id).unwrap();
    assert!(store.cs_get("corp", &id).unwrap().is_none());
    for m in [&small[0], &member(4000), &member(9999)] {
        assert!(referencing(store, m).is_empty(), "{m}");
    }
    assert_eq!(count(store), 0);
    store.commit().unwrap();
}

#[test]
fn large_groups_are_stored_in_chunks_on_sqlite() {
    let tmp = TempDir::new("member-chunks").unwrap();
    let mut store = SqliteStore::open(&tmp.join("sync.db")).unwrap();
    let raw = rusqlite::Connection::open(tmp.join("sync.db")).unwrap();
    let rows = || raw.query_row("SELECT count(*) FROM cs_member_chunks", [], |r| r.get::<_, i64>(0)).unwrap() as usize;
    large_groups_are_stored_in_chunks(&mut store, &rows);
}

#[test]
fn large_groups_are_stored_in_chunks_on_postgres() {
    let pg = Postgres::start().unwrap();
    let (mut store, _lease) = pg_writer(&pg, "test");
    let rows = || pg.psql("SELECT count(*) FROM sync_cs_member_chunks").unwrap().trim().parse().unwrap();
    large_groups_are_stored_in_chunks(&mut store, &rows);
}

/// Precedences are kept once per distinct map (most objects share one),
/// read back for joins, and an interned map whose insert a rollback undid
/// is written again.
#[test]
fn precedences_are_interned_on_sqlite() {
    use directory::ObjectKind::User;
    use sync::engine::{JoinContribution, JoinedRefs, Transactional};
    let tmp = TempDir::new("precedences").unwrap();
    let mut store = SqliteStore::open(&tmp.join("sync.db")).unwrap();
    let raw = rusqlite::Connection::open(tmp.join("sync.db")).unwrap();
    let precedence = |pairs: &[(&str, i32)]| -> sync::rules::Precedences {
        pairs.iter().map(|(a, p)| ((*a).to_string(), *p)).collect()
    };
    let project = |store: &mut SqliteStore, id: u8, precedence: sync::rules::Precedences| {
        let projection = sync::mapping::Projection {
            kind: User,
            anchor: format!("anchor-{id}"),
            attrs: serde_json::json!({"mail": format!("u{id}@example.org"), "displayName": "Zoë"})
                .as_object()
                .unwrap()
                .clone(),
            precedence,
            manager: None,
            members: Vec::new(),
        };
        store.mv_project("ad", &sync::SourceId(vec![id]), &projection, None, Vec::new()).unwrap().id
    };
    let join = |store: &mut SqliteStore, id: u8, mv: &str, mail: &str, p: i32| {
        let attrs = serde_json::json!({"mail": mail}).as_object().unwrap().clone();
        let contribution = JoinContribution {
            attrs: &attrs,
            precedence: &precedence(&[("mail", p)]),
            authoritative: &[],
            references: &JoinedRefs::default(),
        };
        store.join_put("hr", &sync::SourceId(vec![id]), mv, &contribution).unwrap();
    };
    // What ordering an export's contested values reads: mv_get's attributes, decoded when asked.
    let attrs_read = |store: &SqliteStore, mv: &str| {
        let read = store.mv_attrs_read(mv).unwrap().unwrap();
        let record = store.mv_get(mv).unwrap().unwrap();
        assert_eq!((read.kind, &read.anchor, read.deleted), (record.kind, &record.anchor, record.deleted));
        assert_eq!(read.decode().unwrap(), record.attrs);
    };
    let usual = precedence(&[("mail", 200), ("displayName", 200)]);
    store.begin().unwrap();
    let mvs: Vec<String> = (1..=20).map(|i| project(&mut store, i, usual.clone())).collect();
    // No join yet: the attributes are decoded by whoever asks.
    attrs_read(&store, &mvs[0]);
    assert!(store.mv_attrs_read("no-such-object").unwrap().is_none());
    // A joined value with a lower precedence wins; with a higher one it does not.
    join(&mut store, 101, &mvs[0], "hr-1@example.org", 100);
    join(&mut store, 102, &mvs[1], "hr-2@example.org", 300);
    store.commit().unwrap();
    let mail = |store: &SqliteStore, mv: &str| store.mv_get(mv).unwrap().unwrap().attrs["mail"].clone();
    assert_eq!(mail(&store, &mvs[0]), "hr-1@example.org");
    assert_eq!(mail(&store, &mvs[1]), "u2@example.org");
    // Joined contributions are merged in, as mv_get merges them.
    for mv in &mvs[..3] {
        attrs_read(&store, mv);
    }
    assert_eq!(store.mv_attrs_read(&mvs[0]).unwrap().unwrap().decode().unwrap()["mail"], "hr-1@example.org");
    assert_eq!(store.joined(&mvs[0]).unwrap()[0].precedence, precedence(&[("mail", 100)]));
    let count = |sql: &str| raw.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(count("SELECT count(*) FROM precedences"), 3, "one row per distinct map");
    assert!(count("SELECT max(length(precedence)) FROM mv") <= 2, "rows name their map");

    // Interned in a transaction that is undone, then used again.
    store.begin().unwrap();
    project(&mut store, 21, precedence(&[("title", 5)]));
    store.rollback().unwrap();
    store.begin().unwrap();
    let again = project(&mut store, 22, precedence(&[("title", 5)]));
    join(&mut store, 103, &again, "hr-22@example.org", 1);
    store.commit().unwrap();
    assert_eq!(count("SELECT count(*) FROM mv WHERE precedence NOT IN (SELECT id FROM precedences)"), 0);
    assert_eq!(mail(&store, &again), "hr-22@example.org", "mail has no precedence of its own here: a gap");
}

/// A reader that finds an older schema upgrades it under the writer's lock
/// and lets the lock go before reading: a daemon may start meanwhile, and
/// the reader is not named as the state's writer.
#[test]
fn a_reader_upgrades_an_old_store_and_lets_the_lock_go() {
    let tmp = TempDir::new("reader-upgrade").unwrap();
    let path = tmp.join("sync.db");
    drop(SqliteStore::open(&path).unwrap());
    // Back to schema version 11.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DROP INDEX cs_dn;
             ALTER TABLE cs ADD COLUMN dn_norm TEXT NOT NULL DEFAULT '';
             CREATE INDEX cs_dn ON cs(source, dn_norm);
             DROP INDEX mv_dn;
             CREATE INDEX mv_dn ON mv(source, dn_norm);
             DROP TABLE precedences;
             PRAGMA user_version = 11;",
        )
        .unwrap();
    let reader = SqliteStore::open_for_reading(&path).unwrap();
    assert_eq!(reader.counts().unwrap().connector_space, 0);
    assert_eq!(SqliteStore::writer(&path), None, "the reader holds no lock");
    let version: i64 =
        rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 13);
    drop(SqliteStore::open(&path).expect("a writer may start while the reader reads"));
}

/// Past its first 32 changes an import takes them on a helper thread (the
/// SQLite store encodes there too), which holds what the import saw and the
/// passwords it captured until it ends. A second full import, 25 users
/// fewer, deletes exactly those 25 — none it saw —, and every user's
/// password reaches the target once each cycle.
#[test]
fn an_import_taken_on_a_helper_thread_reconciles_exactly_and_keeps_every_password() {
    const USERS: usize = 150;
    const GONE: usize = 25;
    let (slapd, settings) = users(USERS, "userPassword: {SSHA}ZDUc+whQc9BBDmET23paGvSG29ppZGJy\n");
    let tmp = TempDir::new("helper-intake").unwrap();
    let mut store = SqliteStore::open(&tmp.join("sync.db")).unwrap();
    let mut target = MemoryTarget::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let options =
        CycleOptions { full: true, password_sync: true, config_hash: "test".into(), ..CycleOptions::default() };
    let run = |store: &mut SqliteStore, target: &mut MemoryTarget| {
        let mut source = LdapSource::new(settings.clone()).unwrap();
        let report =
            rt.block_on(run_cycle("corp", Flavor::Ldap, &mut source, store, target, &options, &mut Quiet)).unwrap();
        assert_eq!(report.error_count(), 0, "{report:?}");
        report
    };

    let first = run(&mut store, &mut target);
    assert_eq!((first.imported, first.deleted_on_premises, first.created), (USERS as u64, 0, USERS as u64));
    assert_eq!(first.passwords_synced, USERS as u64, "{first:?}");
    assert_eq!(target.passwords.len(), USERS);

    let mut deletions = String::new();
    for i in (0..USERS).step_by(USERS / GONE) {
        deletions.push_str(&format!("dn: uid=u{i:02},ou=people,dc=example,dc=org\nchangetype: delete\n\n"));
    }
    slapd.lock().unwrap().modify(&deletions).unwrap();
    target.passwords.clear();
    let second = run(&mut store, &mut target);
    assert_eq!(second.imported, (USERS - GONE) as u64, "{second:?}");
    assert_eq!((second.deleted_on_premises, second.deleted), (GONE as u64, GONE as u64), "{second:?}");
    assert_eq!(second.passwords_synced, (USERS - GONE) as u64, "{second:?}");
    assert_eq!(target.passwords.len(), USERS - GONE);
    assert_eq!(target.objects.len(), USERS - GONE);
    assert_eq!(store.cs_count("corp").unwrap(), USERS - GONE);
}

/// A read snapshot (the export's reads of a batch) sees one state of the
/// store however others write meanwhile, and leaves no transaction open:
/// ended or dropped, a write transaction starts after it. Inside a write
/// transaction it starts and ends nothing, so the write still commits.
#[test]
fn a_read_snapshot_sees_one_state_and_never_ends_a_write_transaction() {
    use sync::engine::Reads;
    let tmp = TempDir::new("reads").unwrap();
    let mut store = SqliteStore::open(&tmp.join("sync.db")).unwrap();
    // Another writer than the store (which allows one idbridge writer).
    let other = rusqlite::Connection::open(tmp.join("sync.db")).unwrap();
    let write = |store: &mut SqliteStore, value: &str| {
        let mut tx = Transaction::begin(store).unwrap();
        tx.set_watermark("lab", &Watermark(value.into())).unwrap();
        tx.commit().unwrap();
    };
    let stored =
        || -> String { other.query_row("SELECT watermark FROM sources WHERE name = 'lab'", [], |r| r.get(0)).unwrap() };
    write(&mut store, "first");

    let reads = Reads::begin(&store).unwrap();
    assert_eq!(store.watermark("lab").unwrap(), Some(Watermark("first".into())));
    other.execute("UPDATE sources SET watermark = 'second' WHERE name = 'lab'", []).unwrap();
    assert_eq!(store.watermark("lab").unwrap(), Some(Watermark("first".into())), "one snapshot");
    reads.end().unwrap();
    assert_eq!(store.watermark("lab").unwrap(), Some(Watermark("second".into())));

    {
        let _dropped = Reads::begin(&store).unwrap();
        assert_eq!(store.watermark("lab").unwrap(), Some(Watermark("second".into())));
    }
    write(&mut store, "third");

    let mut tx = Transaction::begin(&mut store).unwrap();
    tx.set_watermark("lab", &Watermark("fourth".into())).unwrap();
    Reads::begin(&*tx).unwrap().end().unwrap();
    drop(Reads::begin(&*tx).unwrap());
    tx.commit().unwrap();
    assert_eq!(stored(), "fourth");
}
