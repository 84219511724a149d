//! Against OpenLDAP slapd (mdb + syncprov).

use std::collections::HashSet;

use connector_ldap::{LdapError, LdapSource, ServerKind};
use directory::{Anchor, ObjectKind, Value};
use sync::{ImportMode, SourceChange, deleted_by_reconciliation};
use testkit::{Slapd, SlapdOptions, free_port};

use crate::common::*;

const JPEG: &[u8] = &[0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x80, 0xfe];

fn seed(slapd: &Slapd, users: usize) {
    let mut ldif = String::new();
    for i in 0..users {
        ldif.push_str(&format!(
            "dn: uid=u{i:03},ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: u{i:03}\ncn: Jürgen Müller {i}\nsn: Müller\ngivenName: Jürgen\nmail: u{i:03}@example.org\nmail: alias{i:03}@example.org\n\n"
        ));
    }
    use base64::Engine;
    let photo = base64::engine::general_purpose::STANDARD.encode(JPEG);
    ldif.push_str(&format!(
        "dn: cn=Smith\\, John,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\ncn: Smith, John\nsn: Smith\nuid: jsmith\njpegPhoto:: {photo}\ndescription: 東京 office\n\n"
    ));
    ldif.push_str("dn: cn=staff,ou=groups,dc=example,dc=org\nobjectClass: groupOfNames\ncn: staff\nmember: uid=u000,ou=people,dc=example,dc=org\nmember: cn=Smith\\, John,ou=people,dc=example,dc=org\n\n");
    slapd.modify(&ldif).unwrap();
}

fn admin_settings(slapd: &Slapd) -> connector_ldap::LdapSettings {
    settings(&[&slapd.url], slapd.admin_dn(), slapd.admin_password(), slapd.base_dn())
}

#[test]
fn full_import_counts_fidelity_and_paging() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&slapd, 25);
    let rt = runtime();
    let mut source = LdapSource::new(admin_settings(&slapd)).unwrap();
    let (changes, summary) = rt.block_on(import(&mut source, None)).unwrap();
    assert_eq!(summary.mode, ImportMode::Full);
    // 26 people + 1 group; OUs and the base are not identity objects.
    assert_eq!(upserts(&changes).len(), 27, "{changes:#?}");
    assert_eq!(summary.reconcile_within.len(), 1);
    let (session, profile) = source.server().unwrap();
    assert_eq!(profile.kind, ServerKind::OpenLdap);
    assert_eq!(profile.id_attribute, "entryUUID");
    let _ = session;

    let smith = find(&changes, "Smith, John").expect("escaped-comma DN imported");
    assert_eq!(smith.entry.dn.to_string(), "cn=Smith\\, John,ou=people,dc=example,dc=org");
    assert_eq!(smith.entry.values("jpegPhoto"), &[Value::Binary(JPEG.to_vec())]);
    assert_eq!(smith.entry.first_text("description"), Some("東京 office"));
    let uuid = smith.entry.first_text("entryUUID").unwrap();
    assert_eq!(smith.anchor, Anchor::from_entry_uuid(uuid).unwrap());
    assert_eq!(smith.id.0, smith.anchor.0);
    assert_eq!(smith.kind, ObjectKind::User);

    let u7 = find(&changes, "u007").unwrap();
    assert_eq!(u7.entry.first_text("cn"), Some("Jürgen Müller 7"));
    let mails: Vec<_> = u7.entry.values("mail").iter().filter_map(Value::as_text).collect();
    assert_eq!(mails, ["u007@example.org", "alias007@example.org"]);

    let staff = find(&changes, "staff").unwrap();
    assert_eq!(staff.kind, ObjectKind::Group);
    assert_eq!(staff.entry.values("member").len(), 2);
}

/// Paged searches run on a connection of their own, kept between searches;
/// when the server has closed it meanwhile (here: restarted), the next
/// search opens another and reads everything.
#[test]
fn paged_searches_reuse_their_connection_and_survive_a_server_restart() {
    use connector_ldap::paged::PagedSearch;
    let mut slapd = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&slapd, 25);
    let rt = runtime();
    let session = rt.block_on(connector_ldap::connect::connect(&admin_settings(&slapd))).unwrap();
    let base = slapd.base_dn();
    let read_all = |session: &connector_ldap::connect::Session, filter: &str| {
        rt.block_on(async {
            let mut search = PagedSearch::new(
                session,
                base,
                ldap3::Scope::Subtree,
                filter,
                vec!["cn".into(), "description".into()],
                Vec::new(),
                10,
                std::time::Duration::from_secs(30),
            );
            let mut entries = Vec::new();
            while let Some(entry) = search.next().await? {
                entries.push(entry);
            }
            Ok::<_, LdapError>((entries, search.pages))
        })
    };
    let (first, pages) = read_all(&session, "(objectClass=person)").unwrap();
    assert_eq!(first.len(), 26);
    assert_eq!(pages, 3, "pages of 10");
    let smith = first.iter().find(|(dn, _)| dn.starts_with("cn=Smith")).unwrap();
    assert!(smith.1.contains(&("description".to_string(), vec!["東京 office".as_bytes().to_vec()])));
    // The same connection again (the server sees no new connection).
    let (again, _) = read_all(&session, "(objectClass=person)").unwrap();
    assert_eq!(again, first);
    slapd.restart().unwrap();
    let (after_restart, _) = read_all(&session, "(objectClass=person)").unwrap();
    assert_eq!(after_restart, first);
    // A filter that is not LDAP syntax, and a base that does not exist: clear errors.
    let err = read_all(&session, "(cn=").unwrap_err();
    assert!(err.to_string().contains("not valid LDAP filter syntax"), "{err}");
    let err = rt
        .block_on(async {
            PagedSearch::new(
                &session,
                "ou=nowhere,dc=example,dc=org",
                ldap3::Scope::Subtree,
                "(objectClass=*)",
                Vec::new(),
                Vec::new(),
                10,
                std::time::Duration::from_secs(30),
            )
            .next()
            .await
        })
        .unwrap_err();
    assert!(matches!(err, LdapError::Search { code: 32, .. }), "{err}");
}

/// A search read ahead on a task of its own (as full imports read) hands
/// over every entry in the order a plain paged search gives them, across
/// its batches (of 256 entries, or fewer when they are large); an error
/// comes as an error; dropped half-way, it stops, and the next search reads
/// everything on a fresh connection.
#[test]
fn prefetched_searches_give_every_entry_in_order_and_stop_when_dropped() {
    use connector_ldap::paged::{PagedSearch, PrefetchedSearch};
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    // More than the task reads ahead (4 batches of 256), so that dropping
    // the search stops a task that still holds its connection.
    seed(&slapd, 2000);
    // And 12 users of 800 kB each: batches are also handed over by size.
    let large: String = (0..12)
        .map(|i| {
            let description = "Größe ".repeat(100_000);
            format!("dn: uid=large{i},ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: large{i}\ncn: Large {i}\nsn: L\ndescription: {description}\n\n")
        })
        .collect();
    slapd.modify(&large).unwrap();
    // Multi-threaded, as in the binary: the reading task runs on a worker.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let session = rt.block_on(connector_ldap::connect::connect(&admin_settings(&slapd))).unwrap();
    let base = slapd.base_dn();
    let search = |base: &str| {
        PagedSearch::new(
            &session,
            base,
            ldap3::Scope::Subtree,
            "(objectClass=person)",
            vec!["cn".into(), "mail".into(), "description".into()],
            Vec::new(),
            100,
            std::time::Duration::from_secs(30),
        )
    };
    let plain = rt.block_on(async {
        let mut s = search(base);
        let mut entries = Vec::new();
        while let Some(entry) = s.next().await.unwrap() {
            entries.push(entry);
        }
        entries
    });
    assert_eq!(plain.len(), 2013);
    let (_, large) = plain.iter().find(|(dn, _)| dn == "uid=large11,ou=people,dc=example,dc=org").unwrap();
    assert!(
        large.iter().any(|(name, values)| name == "description" && values.first().is_some_and(|v| v.len() == 800_000))
    );
    let read_ahead = |limit: usize| {
        rt.block_on(async {
            let mut s = PrefetchedSearch::start(search(base));
            let mut entries = Vec::new();
            while entries.len() < limit
                && let Some(entry) = s.next().await?
            {
                entries.push(entry);
            }
            Ok::<_, LdapError>(entries)
        })
    };
    assert_eq!(read_ahead(usize::MAX).unwrap(), plain);
    let (_, u007) = plain.iter().find(|(dn, _)| dn == "uid=u007,ou=people,dc=example,dc=org").unwrap();
    assert!(u007.contains(&("cn".to_string(), vec!["Jürgen Müller 7".as_bytes().to_vec()])));
    // Dropped after 10 entries (its task holds pages read ahead): then a full read again.
    assert_eq!(read_ahead(10).unwrap(), plain.get(..10).unwrap());
    assert_eq!(read_ahead(usize::MAX).unwrap(), plain);
    let err = rt
        .block_on(async { PrefetchedSearch::start(search("ou=nowhere,dc=example,dc=org")).next().await })
        .unwrap_err();
    assert!(matches!(err, LdapError::Search { code: 32, .. }), "{err}");
}

#[test]
fn delta_reports_add_modify_rename_move_delete_in_delete_phase() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&slapd, 5);
    let rt = runtime();
    let mut source = LdapSource::new(admin_settings(&slapd)).unwrap();
    let (full, summary) = rt.block_on(import(&mut source, None)).unwrap();
    let u1_id = find(&full, "u001").unwrap().id.clone();
    let u2_id = find(&full, "u002").unwrap().id.clone();
    let u3_id = find(&full, "u003").unwrap().id.clone();

    slapd
        .modify(
            "dn: uid=new1,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: new1\ncn: New One\nsn: One\n\n\
             dn: uid=u001,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: title\ntitle: Chief\n-\n\n\
             dn: uid=u002,ou=people,dc=example,dc=org\nchangetype: modrdn\nnewrdn: uid=u002renamed\ndeleteoldrdn: 0\n\n\
             dn: uid=u003,ou=people,dc=example,dc=org\nchangetype: modrdn\nnewrdn: uid=u003\ndeleteoldrdn: 1\nnewsuperior: ou=groups,dc=example,dc=org\n\n\
             dn: uid=u004,ou=people,dc=example,dc=org\nchangetype: delete\n\n",
        )
        .unwrap();
    let (delta, summary2) = rt.block_on(import(&mut source, Some(&summary.watermark))).unwrap();
    assert_eq!(summary2.mode, ImportMode::Delta);
    assert!(summary2.reconcile_within.is_empty(), "session log present: delete phase expected");
    let ups = upserts(&delta);
    assert!(find(&delta, "new1").is_some(), "add seen: {delta:#?}");
    assert_eq!(find(&delta, "u001").map(|o| o.id.clone()), Some(u1_id));
    assert_eq!(find(&delta, "u001").and_then(|o| o.entry.first_text("title")), Some("Chief"));
    assert_eq!(find(&delta, "u002renamed").map(|o| o.id.clone()), Some(u2_id), "rename keeps the id");
    let moved = ups.iter().find(|o| o.id == u3_id).expect("move seen");
    assert_eq!(moved.entry.dn.to_string(), "uid=u003,ou=groups,dc=example,dc=org");
    assert_eq!(deletes(&delta).len(), 1);
    assert!(ups.len() <= 4, "only changed objects: {ups:#?}");

    // Nothing changed: an empty delta, and the watermark moves on.
    let (quiet, _) = rt.block_on(import(&mut source, Some(&summary2.watermark))).unwrap();
    assert!(upserts(&quiet).is_empty() && deletes(&quiet).is_empty(), "{quiet:#?}");
}

#[test]
fn delta_present_phase_reconciles_deletes() {
    let slapd = Slapd::start(SlapdOptions { session_log: None, ..SlapdOptions::default() }).unwrap();
    seed(&slapd, 5);
    let rt = runtime();
    let mut source = LdapSource::new(admin_settings(&slapd)).unwrap();
    let (full, summary) = rt.block_on(import(&mut source, None)).unwrap();
    let known: Vec<_> = upserts(&full).iter().map(|o| (o.id.clone(), o.entry.dn.clone())).collect();
    let gone = find(&full, "u004").unwrap().id.clone();
    slapd.modify("dn: uid=u004,ou=people,dc=example,dc=org\nchangetype: delete\n\ndn: uid=u001,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: title\ntitle: Boss\n-\n\n").unwrap();
    let (delta, summary2) = rt.block_on(import(&mut source, Some(&summary.watermark))).unwrap();
    let mut seen: HashSet<_> = upserts(&delta).iter().map(|o| o.id.clone()).collect();
    for c in &delta {
        match c {
            SourceChange::Present { id } => {
                seen.insert(id.clone());
            }
            SourceChange::Delete { id, .. } => assert_eq!(id, &gone),
            SourceChange::Upsert(_) => {}
        }
    }
    let explicit = deletes(&delta).len();
    let reconciled = deleted_by_reconciliation(known.iter().map(|(i, d)| (i, d)), &seen, &summary2.reconcile_within);
    assert!(
        explicit == 1 || reconciled == vec![gone.clone()],
        "delete not seen: explicit {explicit}, reconciled {reconciled:?}, {delta:#?}"
    );
    if explicit == 0 {
        assert_eq!(summary2.reconcile_within.len(), 1, "present phase must ask for reconciliation");
    }
    assert_eq!(find(&delta, "u001").and_then(|o| o.entry.first_text("title")), Some("Boss"));
}

#[test]
fn rejected_cookie_and_changed_scope_fall_back_to_full() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&slapd, 3);
    let rt = runtime();
    let mut source = LdapSource::new(admin_settings(&slapd)).unwrap();
    let (_, summary) = rt.block_on(import(&mut source, None)).unwrap();
    // A well-formed watermark whose cookie the server refuses (a CSN from the future).
    let mut mark: serde_json::Value = serde_json::from_str(&summary.watermark.0).unwrap();
    use base64::Engine;
    let garbage =
        base64::engine::general_purpose::STANDARD.encode("rid=000,csn=29991231235959.000000Z#000000#000#000000");
    mark["cookies"][0]["cookie"] = serde_json::Value::String(garbage);
    let (changes, s) = rt.block_on(import(&mut source, Some(&sync::Watermark(mark.to_string())))).unwrap();
    match &s.mode {
        ImportMode::FullFallback { reason } => {
            assert!(reason.contains("rejected the sync cookie"), "{reason}")
        }
        other => panic!("expected a full fallback, got {other:?}"),
    }
    assert_eq!(upserts(&changes).len(), 5, "the fallback imports everything");
    let (_, s) = rt.block_on(import(&mut source, Some(&sync::Watermark("not json".into())))).unwrap();
    assert!(matches!(s.mode, ImportMode::FullFallback { ref reason } if reason.contains("watermark")));

    let mut narrower = admin_settings(&slapd);
    narrower.base_dns = vec![directory::Dn::parse("ou=people,dc=example,dc=org").unwrap()];
    let mut source2 = LdapSource::new(narrower).unwrap();
    let (changes, s) = rt.block_on(import(&mut source2, Some(&summary.watermark))).unwrap();
    assert!(matches!(s.mode, ImportMode::FullFallback { ref reason } if reason.contains("scope")), "{:?}", s.mode);
    assert_eq!(upserts(&changes).len(), 4);
}

#[test]
fn include_and_exclude_ous() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&slapd, 3);
    let rt = runtime();
    let mut s = admin_settings(&slapd);
    s.exclude_ous = vec![directory::Dn::parse("ou=groups,dc=example,dc=org").unwrap()];
    let (changes, _) = rt.block_on(import(&mut LdapSource::new(s.clone()).unwrap(), None)).unwrap();
    assert_eq!(upserts(&changes).len(), 4);
    s.exclude_ous.clear();
    s.include_ous = vec![directory::Dn::parse("ou=groups,dc=example,dc=org").unwrap()];
    let (changes, _) = rt.block_on(import(&mut LdapSource::new(s).unwrap(), None)).unwrap();
    assert_eq!(upserts(&changes).len(), 1);
}

#[test]
fn an_included_ou_is_followed_through_a_rename() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&slapd, 3);
    let rt = runtime();
    let mut s = admin_settings(&slapd);
    s.include_ous = vec![directory::Dn::parse("ou=people,dc=example,dc=org").unwrap()];
    let mut source = LdapSource::new(s.clone()).unwrap();
    let (first_changes, first) = rt.block_on(import(&mut source, None)).unwrap();
    assert_eq!(upserts(&first_changes).len(), 4);

    // The OU is renamed on the server; the configuration still names the old DN.
    slapd.modify("dn: ou=people,dc=example,dc=org\nchangetype: modrdn\nnewrdn: ou=staff\ndeleteoldrdn: 1\n\n").unwrap();
    slapd
        .modify("dn: uid=new,ou=staff,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: new\ncn: New\nsn: New\n\n")
        .unwrap();
    let mut source = LdapSource::new(s.clone()).unwrap();
    let (changes, delta) = rt.block_on(import(&mut source, Some(&first.watermark))).unwrap();
    assert_eq!(delta.mode, ImportMode::Delta, "the pinned OU keeps the scope (and the delta position) valid");
    // syncprov's session log may name the renamed OU itself as deleted (it is
    // not an identity object); none of the people may be.
    let people: HashSet<_> = upserts(&first_changes).iter().map(|o| o.id.clone()).collect();
    assert!(
        !changes.iter().any(|c| matches!(c, SourceChange::Delete { id, .. } if people.contains(id))),
        "{changes:#?}"
    );
    assert!(find(&changes, "new").is_some(), "an object added in the renamed OU is in scope");

    // A full import that starts from the stored pins sees everything under the new DN.
    let mut sink_changes = Vec::new();
    let full = rt
        .block_on(sync::Source::full_import(&mut source, Some(&delta.watermark), &mut |c: SourceChange| {
            sink_changes.push(c);
            Ok(())
        }))
        .unwrap();
    let people = upserts(&sink_changes);
    assert_eq!(people.len(), 5, "{sink_changes:#?}");
    assert!(people.iter().all(|o| o.entry.dn.to_string().ends_with("ou=staff,dc=example,dc=org")));
    assert_eq!(full.reconcile_within.len(), 1);

    // Without pins (a fresh start), the stale DN is a clear error, not an empty scope.
    let err = rt.block_on(import(&mut LdapSource::new(s).unwrap(), None)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("include_ous") && text.contains("ou=people,dc=example,dc=org"), "{text}");
}

#[test]
fn referrals_are_skipped_not_followed() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&slapd, 2);
    // A referral object makes slapd answer subtree searches with a continuation reference.
    slapd
        .modify_manage_dsa_it(
            "dn: ou=remote,dc=example,dc=org\nobjectClass: referral\nobjectClass: extensibleObject\nou: remote\nref: ldap://127.0.0.1:1/ou=remote,dc=example,dc=org\n\n",
        )
        .unwrap();
    // Precondition: the server really sends a continuation reference for this search.
    let raw = std::process::Command::new("ldapsearch")
        .args([
            "-x",
            "-H",
            &slapd.url,
            "-D",
            slapd.admin_dn(),
            "-w",
            slapd.admin_password(),
            "-b",
            slapd.base_dn(),
            "(objectClass=person)",
            "dn",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&raw.stdout).contains("ldap://127.0.0.1:1/ou=remote"), "no reference sent");
    let rt = runtime();
    let mut source = LdapSource::new(admin_settings(&slapd)).unwrap();
    let (changes, _) = rt.block_on(import(&mut source, None)).unwrap();
    assert_eq!(upserts(&changes).len(), 4, "the referral is neither followed nor fatal");
}

#[test]
fn bad_credentials_name_the_bind_dn_and_server() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    let rt = runtime();
    let mut s = admin_settings(&slapd);
    s.password = Some(connector_ldap::Secret::new("wrong"));
    let err = rt.block_on(import(&mut LdapSource::new(s).unwrap(), None)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LdapError::Bind { code: 49, .. }), "{err:?}");
    assert!(text.contains("cn=admin,dc=example,dc=org") && text.contains(&slapd.url), "{text}");
    assert!(!text.contains("wrong"), "the password must never appear in an error: {text}");
}

#[test]
fn unreachable_first_server_fails_over_to_the_second() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&slapd, 2);
    let dead = format!("ldap://127.0.0.1:{}", free_port().unwrap());
    let rt = runtime();
    let mut source =
        LdapSource::new(settings(&[&dead, &slapd.url], slapd.admin_dn(), slapd.admin_password(), slapd.base_dn()))
            .unwrap();
    let (changes, _) = rt.block_on(import(&mut source, None)).unwrap();
    assert_eq!(upserts(&changes).len(), 4);
    assert_eq!(source.server().unwrap().0.url, slapd.url);

    let dead2 = format!("ldap://127.0.0.1:{}", free_port().unwrap());
    let err = rt
        .block_on(import(
            &mut LdapSource::new(settings(&[&dead, &dead2], "cn=x", "y", "dc=example,dc=org")).unwrap(),
            None,
        ))
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&dead) && text.contains(&dead2) && text.contains("refused"), "{text}");
}

#[test]
fn a_hung_server_times_out_and_the_next_one_answers() {
    let hung = Slapd::start(SlapdOptions::default()).unwrap();
    let good = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&good, 1);
    hung.freeze(true).unwrap();
    let rt = runtime();
    let mut s = settings(&[&hung.url, &good.url], good.admin_dn(), good.admin_password(), good.base_dn());
    // The same timeouts guard the healthy server's operations: leave them
    // room on a loaded machine (they only have to be finite for the test).
    s.connect_timeout = std::time::Duration::from_secs(3);
    s.operation_timeout = std::time::Duration::from_secs(10);
    let started = std::time::Instant::now();
    let mut source = LdapSource::new(s.clone()).unwrap();
    let (changes, _) = rt.block_on(import(&mut source, None)).unwrap();
    let answered = source.server().unwrap().0.url.clone();
    assert_eq!(
        (upserts(&changes).len(), answered.as_str()),
        (3, good.url.as_str()),
        "hung {}, good {}, after {:?}: {changes:#?}",
        hung.url,
        good.url,
        started.elapsed()
    );
    // Without the timeout the bind on the frozen server would wait forever.
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "bounded by the timeouts");

    // Anonymous (rootDSE only): also fails over.
    let mut anonymous = s.clone();
    anonymous.bind_dn = None;
    anonymous.password = None;
    let (changes, _) = rt.block_on(import(&mut LdapSource::new(anonymous).unwrap(), None)).unwrap();
    assert_eq!(upserts(&changes).len(), 3);

    // Only the hung server: a clear error naming it, within the time limits.
    s.urls = vec![hung.url.clone()];
    let err = rt.block_on(import(&mut LdapSource::new(s).unwrap(), None)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&hung.url) && text.contains("did not answer the bind"), "{text}");
    hung.freeze(false).unwrap();
}

#[test]
fn starttls_and_ldaps_with_a_test_ca() {
    let slapd = Slapd::start(SlapdOptions { tls: true, ..SlapdOptions::default() }).unwrap();
    seed(&slapd, 1);
    let ca = slapd.ca.as_ref().unwrap().ca_cert.clone();
    let rt = runtime();

    let mut s = admin_settings(&slapd);
    s.tls.starttls = true;
    s.tls.ca_file = Some(ca.clone());
    let (changes, _) = rt.block_on(import(&mut LdapSource::new(s.clone()).unwrap(), None)).unwrap();
    assert_eq!(upserts(&changes).len(), 3);

    let mut ldaps = s.clone();
    ldaps.tls.starttls = false;
    ldaps.urls = vec![slapd.ldaps_url.clone().unwrap()];
    let (changes, _) = rt.block_on(import(&mut LdapSource::new(ldaps).unwrap(), None)).unwrap();
    assert_eq!(upserts(&changes).len(), 3);

    // Without the CA the certificate is not trusted: a clear TLS error, no data.
    let mut untrusted = s.clone();
    untrusted.tls.ca_file = None;
    let err = rt.block_on(import(&mut LdapSource::new(untrusted).unwrap(), None)).unwrap_err();
    assert!(err.to_string().to_lowercase().contains("tls") || err.to_string().contains("certificate"), "{err}");

    // The explicit escape hatch works (and is logged loudly).
    let mut insecure = s;
    insecure.tls.ca_file = None;
    insecure.tls.insecure_skip_verify = true;
    let (changes, _) = rt.block_on(import(&mut LdapSource::new(insecure).unwrap(), None)).unwrap();
    assert_eq!(upserts(&changes).len(), 3);
}

#[test]
fn password_validation_binds_as_the_user_and_cannot_be_widened() {
    use connector_ldap::validate::{PlainBinds, Validator};
    use proto::pta::Outcome;
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&slapd, 3);
    slapd.set_password("uid=u001,ou=people,dc=example,dc=org", "right-one").unwrap();
    let rt = runtime();
    let validator = Validator::new(admin_settings(&slapd), None, PlainBinds::AllowInsecure).unwrap();
    let check = |user: &str, pw: &str| rt.block_on(validator.validate(user, pw));
    assert_eq!(check("u001@example.org", "right-one"), Outcome::Success);
    assert_eq!(check("u001@example.org", "wrong"), Outcome::WrongPassword);
    assert_eq!(check("nobody@example.org", "right-one"), Outcome::WrongPassword);
    // Filter metacharacters are escaped: they cannot match other users.
    for sneaky in ["*", "*)(uid=*", "u001@example.org)(|(mail=*", "*@example.org"] {
        assert_eq!(check(sneaky, "right-one"), Outcome::WrongPassword, "{sneaky}");
    }
    // An empty password would be an unauthenticated bind, which "succeeds".
    assert_eq!(check("u001@example.org", ""), Outcome::WrongPassword);
    // Again, on pooled connections.
    assert_eq!(check("u001@example.org", "right-one"), Outcome::Success);
    assert!(
        Validator::new(admin_settings(&slapd), Some("(uid=x)".into()), PlainBinds::AllowInsecure).is_err(),
        "a filter without {{upn}}"
    );
    let refused = Validator::new(admin_settings(&slapd), None, PlainBinds::Refuse).unwrap_err();
    assert!(refused.to_string().contains("in clear"), "{refused}");

    let mut gone = admin_settings(&slapd);
    gone.urls = vec![format!("ldap://127.0.0.1:{}", free_port().unwrap())];
    let unreachable = Validator::new(gone, None, PlainBinds::AllowInsecure).unwrap();
    assert_eq!(rt.block_on(unreachable.validate("u001@example.org", "right-one")), Outcome::DirectoryUnreachable);
}

#[test]
fn a_change_under_any_base_ends_the_wait_and_no_search_is_left_behind() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&slapd, 2);
    let rt = runtime();
    let mut s = admin_settings(&slapd);
    s.base_dns = ["ou=people,dc=example,dc=org", "ou=groups,dc=example,dc=org"]
        .iter()
        .map(|b| directory::Dn::parse(b).unwrap())
        .collect();
    let mut source = LdapSource::new(s).unwrap();
    rt.block_on(import(&mut source, None)).unwrap();
    let idle = slapd.operations_executing().unwrap();

    // Nothing changes: the wait times out with both searches running. Then
    // a change under the second base only (the first is what the push used
    // to watch alone) ends the wait well before its generous timeout.
    let changed = push_ends_the_wait(&rt, &mut source, || {
        let ldif = "dn: cn=staff,ou=groups,dc=example,dc=org\nchangetype: modify\nreplace: description\ndescription: Ünïcode staff\n-\n\n";
        slapd.modify(ldif).unwrap();
    });
    assert_eq!(changed, Some(true));

    // The losing base's persistent search was abandoned on the server (not
    // left running, one more per cycle).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let running = slapd.operations_executing().unwrap();
        if running <= idle {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{running} operations still executing (idle: {idle})");
        // Drive the runtime: the abandon goes out from a task it spawned.
        rt.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(100)).await });
    }
}

/// A change whose answer was lost (the agent killed after the directory took
/// the password, the tenant timed out) is sent again when the person
/// retries: it reads as done, not as a wrong current password, and the
/// directory keeps the one password. A wrong current password stays wrong.
#[test]
fn a_password_change_sent_twice_is_done_once() {
    use connector_ldap::validate::{PlainBinds, Validator};
    use proto::pta::{Outcome, PasswordWrite};
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    seed(&slapd, 2);
    slapd.set_password("uid=u001,ou=people,dc=example,dc=org", "Before-Pass-1").unwrap();
    let rt = runtime();
    let validator = Validator::new(admin_settings(&slapd), None, PlainBinds::AllowInsecure).unwrap();
    let change = PasswordWrite::Change { new_password: "After-Pass-22".into() };
    let write = |current: &str| rt.block_on(validator.write_password("u001@example.org", current, &change));
    assert_eq!(write("Before-Pass-1"), Outcome::PasswordChanged);
    assert_eq!(write("Before-Pass-1"), Outcome::PasswordChanged, "the retry of the same change");
    assert_eq!(write("Not-The-Pass-3"), Outcome::PasswordChanged, "the new password is the account's already");
    let other = PasswordWrite::Change { new_password: "Third-Pass-333".into() };
    assert_eq!(
        rt.block_on(validator.write_password("u001@example.org", "Before-Pass-1", &other)),
        Outcome::WrongPassword
    );
    assert_eq!(rt.block_on(validator.validate("u001@example.org", "After-Pass-22")), Outcome::Success);
    assert_eq!(rt.block_on(validator.validate("u001@example.org", "Before-Pass-1")), Outcome::WrongPassword);
}
