//! Against 389 Directory Server (Retro Changelog + Content Synchronization
//! for RFC 4533 deltas), started by the testkit in a temp dir.

use connector_ldap::{LdapSource, ServerKind};
use directory::{Anchor, ObjectKind};
use sync::ImportMode;
use testkit::{Ds389, Ds389Options, LdapServer};

use crate::common::*;

fn seed(ds: &Ds389, users: usize) {
    let mut ldif: String = (0..users).map(|i| person(&format!("u{i:03}"), &format!("Jürgen Müller {i}"))).collect();
    ldif.push_str("dn: cn=staff,ou=groups,dc=example,dc=org\nobjectClass: groupOfNames\ncn: staff\nmember: uid=u000,ou=people,dc=example,dc=org\nmember: uid=u001,ou=people,dc=example,dc=org\n\n");
    ds.modify(&ldif).unwrap();
}

fn person(uid: &str, cn: &str) -> String {
    format!(
        "dn: uid={uid},ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {cn}\nsn: S\nmail: {uid}@example.org\n\n"
    )
}

fn admin_settings(ds: &Ds389) -> connector_ldap::LdapSettings {
    settings(&[&ds.url], ds.admin_dn(), ds.admin_password(), ds.base_dn())
}

/// Full import keyed by nsUniqueId, then syncrepl deltas (content
/// synchronization) with an add, a modify, a rename and a delete; the
/// delete carries the same id the full import gave the object.
#[test]
fn full_import_and_syncrepl_deltas_keyed_by_ns_unique_id() {
    let ds = Ds389::start(Ds389Options::default()).unwrap();
    seed(&ds, 6);
    let rt = runtime();
    let mut source = LdapSource::new(admin_settings(&ds)).unwrap();
    let (full, summary) = rt.block_on(import(&mut source, None)).unwrap();
    assert_eq!(summary.mode, ImportMode::Full);
    let (_, profile) = source.server().unwrap();
    assert_eq!((profile.kind, profile.id_attribute.as_str()), (ServerKind::Ds389, "nsUniqueId"));
    assert_eq!(upserts(&full).len(), 7, "6 people and a group: {full:#?}");
    let u1 = find(&full, "u001").unwrap();
    let unique = u1.entry.first_text("nsUniqueId").unwrap();
    assert_eq!(u1.anchor, Anchor::from_ns_unique_id(unique).unwrap());
    assert_eq!(u1.id.0, u1.anchor.0);
    assert_eq!(u1.entry.first_text("cn"), Some("Jürgen Müller 1"));
    assert_eq!(find(&full, "staff").unwrap().kind, ObjectKind::Group);
    let (u2_id, u4_id) = (find(&full, "u002").unwrap().id.clone(), find(&full, "u004").unwrap().id.clone());

    ds.modify(
        &(person("new1", "New Ünë")
            + "dn: uid=u001,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: title\ntitle: Chief\n-\n\n\
         dn: uid=u002,ou=people,dc=example,dc=org\nchangetype: modrdn\nnewrdn: uid=u002renamed\ndeleteoldrdn: 0\n\n\
         dn: uid=u004,ou=people,dc=example,dc=org\nchangetype: delete\n\n"),
    )
    .unwrap();
    let (delta, summary2) = rt.block_on(import(&mut source, Some(&summary.watermark))).unwrap();
    assert_eq!(summary2.mode, ImportMode::Delta, "{delta:#?}");
    assert_eq!(find(&delta, "new1").and_then(|o| o.entry.first_text("cn")), Some("New Ünë"));
    assert_eq!(find(&delta, "u001").and_then(|o| o.entry.first_text("title")), Some("Chief"));
    assert_eq!(find(&delta, "u002renamed").map(|o| o.id.clone()), Some(u2_id), "a rename keeps the id");
    assert_eq!(deletes(&delta), vec![&u4_id], "the delete carries the full import's id: {delta:#?}");
    assert!(summary2.reconcile_within.is_empty(), "changes only, no present phase: {delta:#?}");
    assert!(upserts(&delta).len() <= 4, "only the changed objects: {delta:#?}");

    let (quiet, _) = rt.block_on(import(&mut source, Some(&summary2.watermark))).unwrap();
    assert!(upserts(&quiet).is_empty() && deletes(&quiet).is_empty(), "{quiet:#?}");
}

/// Without the content synchronization plugin the server offers no change
/// tracking: every delta is a full import, and the summary says why.
#[test]
fn without_content_sync_deltas_are_full_imports_that_say_why() {
    let ds = Ds389::start(Ds389Options { content_sync: false, ..Ds389Options::default() }).unwrap();
    seed(&ds, 3);
    let rt = runtime();
    let mut source = LdapSource::new(admin_settings(&ds)).unwrap();
    let (_, summary) = rt.block_on(import(&mut source, None)).unwrap();
    ds.modify("dn: uid=u001,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: title\ntitle: Boss\n-\n\n")
        .unwrap();
    let (changes, s) = rt.block_on(import(&mut source, Some(&summary.watermark))).unwrap();
    match &s.mode {
        ImportMode::FullFallback { reason } => assert!(reason.contains("no change tracking"), "{reason}"),
        other => panic!("expected a full import that says why, got {other:?}"),
    }
    assert_eq!(upserts(&changes).len(), 4);
    assert_eq!(find(&changes, "u001").and_then(|o| o.entry.first_text("title")), Some("Boss"));
}

/// Password hash sync reads the stored hash: 389 hashes with its default
/// scheme, which idbridge must parse and verify.
#[test]
fn stored_passwords_are_read_and_verify() {
    let ds = Ds389::start(Ds389Options::default()).unwrap();
    seed(&ds, 2);
    ds.set_password("uid=u000,ou=people,dc=example,dc=org", "Pässwörd-389").unwrap();
    let rt = runtime();
    let mut source = LdapSource::new(admin_settings(&ds)).unwrap();
    let (full, _) = rt.block_on(import(&mut source, None)).unwrap();
    let stored = find(&full, "u000").unwrap().entry.first_bytes("userPassword").expect("userPassword read").to_vec();
    let parsed = passwords::StoredPassword::parse(&stored)
        .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&stored)));
    assert!(parsed.verify("Pässwörd-389"), "{}", String::from_utf8_lossy(&stored));
    assert!(!parsed.verify("wrong"));
}

/// The daemon's push: a persistent content-synchronization search wakes the
/// wait when something changes, and times out quietly otherwise.
#[test]
fn a_change_ends_the_wait_for_a_push() {
    let ds = Ds389::start(Ds389Options::default()).unwrap();
    seed(&ds, 2);
    let rt = runtime();
    let mut source = LdapSource::new(admin_settings(&ds)).unwrap();
    rt.block_on(import(&mut source, None)).unwrap();
    let changed = push_ends_the_wait(&rt, &mut source, || {
        ds.modify(
            "dn: uid=u001,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: title\ntitle: Pushed ü\n-\n\n",
        )
        .unwrap();
    });
    assert_eq!(changed, Some(true));
}
