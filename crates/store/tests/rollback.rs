//! A cycle whose import fails half-way leaves nothing behind: the store is
//! rolled back, its write lock released and its watermark the old one, and
//! the same store runs the next cycle (as the daemon does) without a restart.
//! The failure is real: slapd is stopped between two pages of the import.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use connector_ldap::{LdapSettings, LdapSource, Secret};
use directory::Dn;
use store::SqliteStore;
use sync::engine::{ConnectorSpace, CycleOptions, ExportOp, Quiet, Target, TargetError, run_cycle};
use sync::mapping::Flavor;
use sync::{ImportSink, ImportSummary, SinkError, Source, SourceChange, Watermark};
use testkit::{Slapd, SlapdOptions, TempDir};

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
    async fn apply(&mut self, ops: &[ExportOp]) -> Vec<Result<Option<String>, TargetError>> {
        panic!("staging exported {} operations", ops.len());
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

#[test]
fn a_failed_import_is_rolled_back_and_the_next_cycle_runs_on_the_same_store() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    let mut ldif = String::new();
    for i in 0..40 {
        ldif.push_str(&format!(
            "dn: uid=u{i:02},ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: u{i:02}\ncn: Zoë {i}\nsn: Ünal\n\n"
        ));
    }
    slapd.modify(&ldif).unwrap();
    let settings = settings(&slapd);
    let slapd = Arc::new(Mutex::new(slapd));

    let tmp = TempDir::new("rollback").unwrap();
    let path = tmp.join("sync.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let options = CycleOptions { staging: true, config_hash: "test".into(), ..CycleOptions::default() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let mut failing =
        StopsSlapdMidImport { inner: LdapSource::new(settings.clone()).unwrap(), slapd: Some(slapd.clone()) };
    let err = rt
        .block_on(run_cycle("lab", Flavor::Ldap, &mut failing, &mut store, &mut NoTarget, &options, &mut Quiet))
        .unwrap_err();
    assert!(err.to_string().contains("import from lab failed"), "{err}");

    // Nothing of the failed import: no object, the old (no) watermark, and
    // another connection can write at once (no transaction left open).
    assert_eq!(store.counts().unwrap().0, 0, "the failed import's objects are gone");
    assert_eq!(store.watermark("lab").unwrap(), None);
    // (A raw connection: the store's own lock file admits one writer per file.)
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute("INSERT INTO sources(name, config_hash) VALUES('probe', 'x')", [])
        .expect("the failed cycle holds no write lock");
    drop(other);
    assert!(SqliteStore::open(&path).is_err(), "a second writer on the same file is refused");

    // The directory is back: the same store runs a good cycle.
    slapd.lock().unwrap().restart().unwrap();
    let mut good = LdapSource::new(settings).unwrap();
    let report = rt
        .block_on(run_cycle("lab", Flavor::Ldap, &mut good, &mut store, &mut NoTarget, &options, &mut Quiet))
        .unwrap();
    assert_eq!(report.imported, 40, "{report:?}");
    let (cs, mv, _, _) = store.counts().unwrap();
    assert_eq!((cs, mv), (40, 40));
    assert!(store.watermark("lab").unwrap().is_some());
}
