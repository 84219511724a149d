//! Helpers shared by the connector's server tests.

use connector_ldap::{LdapError, LdapSettings, LdapSource, Secret};
use directory::Dn;
use sync::{ImportSummary, Source, SourceChange, SourceObject, Watermark};

pub fn settings(urls: &[&str], bind_dn: &str, password: &str, base: &str) -> LdapSettings {
    LdapSettings {
        urls: urls.iter().map(|u| u.to_string()).collect(),
        bind_dn: Some(bind_dn.to_string()),
        password: Some(Secret::new(password)),
        base_dns: vec![Dn::parse(base).unwrap()],
        page_size: 10,
        connect_timeout: std::time::Duration::from_secs(3),
        ..LdapSettings::default()
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

pub async fn import(
    source: &mut LdapSource,
    since: Option<&Watermark>,
) -> Result<(Vec<SourceChange>, ImportSummary), LdapError> {
    let mut changes = Vec::new();
    let mut sink = |c: SourceChange| {
        changes.push(c);
        Ok(())
    };
    let summary = match since {
        None => source.full_import(None, &mut sink).await?,
        Some(w) => source.delta_import(w, &mut sink).await?,
    };
    Ok((changes, summary))
}

pub fn upserts(changes: &[SourceChange]) -> Vec<&SourceObject> {
    changes
        .iter()
        .filter_map(|c| match c {
            SourceChange::Upsert(o) => Some(o),
            _ => None,
        })
        .collect()
}

pub fn find<'a>(changes: &'a [SourceChange], rdn_value: &str) -> Option<&'a SourceObject> {
    upserts(changes)
        .into_iter()
        .find(|o| o.entry.dn.rdn().and_then(|r| r.avas().first()).and_then(|a| a.text()) == Some(rdn_value))
}

pub fn deletes(changes: &[SourceChange]) -> Vec<&sync::SourceId> {
    changes
        .iter()
        .filter_map(|c| match c {
            SourceChange::Delete { id, .. } => Some(id),
            _ => None,
        })
        .collect()
}

/// Waits for a push (a generous two minutes) while `change` is made half a
/// second in: `Some(true)` when the change ended the wait well before its
/// timeout. `quiet` first checks that a short wait without change times out.
pub fn push_ends_the_wait(
    rt: &tokio::runtime::Runtime,
    source: &mut LdapSource,
    change: impl FnOnce(),
) -> Option<bool> {
    let quiet = rt.block_on(source.wait_for_change(std::time::Duration::from_millis(300))).unwrap();
    assert_eq!(quiet, Some(false), "nothing changed yet");
    let long = std::time::Duration::from_secs(120);
    let started = std::time::Instant::now();
    let changed = rt.block_on(async {
        let wait = source.wait_for_change(long);
        let change = async {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            change();
        };
        let (changed, ()) = tokio::join!(wait, change);
        changed
    });
    assert!(started.elapsed() < long, "the push woke the wait");
    changed.unwrap()
}
