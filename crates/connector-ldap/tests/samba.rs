//! Against a real Samba AD domain controller (one at a time: LDAP is on 127.0.0.1:389).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use connector_ldap::{LdapError, LdapSource, ServerKind};
use directory::{Anchor, Dn, Guid, ObjectKind, Value};
use sync::ImportMode;
use testkit::SambaDc;

use crate::common::*;

const PHOTO: &[u8] = &[0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x00, 0x80, 0xfe, 0x0a];
const SYNC_OU: &str = "OU=Sync,DC=example,DC=test";

fn seed(dc: &SambaDc, users: usize) {
    let mut ldif = format!(
        "dn: {SYNC_OU}\nobjectClass: organizationalUnit\n\n\
         dn: OU=Excluded,{SYNC_OU}\nobjectClass: organizationalUnit\n\n\
         dn: OU=Elsewhere,DC=example,DC=test\nobjectClass: organizationalUnit\n\n"
    );
    for i in 0..users {
        ldif.push_str(&format!(
            "dn: CN=Jürgen Müller {i},{SYNC_OU}\nobjectClass: user\nsAMAccountName: jm{i}\nuserPrincipalName: jm{i}@example.test\n\
             givenName: Jürgen\nsn: Müller\ndisplayName: Jürgen Müller {i}\nmail: jm{i}@example.test\n\
             proxyAddresses: SMTP:jm{i}@example.test\nproxyAddresses: smtp:j.mueller{i}@example.test\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: CN=Smith\\, John,{SYNC_OU}\nobjectClass: user\nsAMAccountName: jsmith\nuserPrincipalName: jsmith@example.test\n\
         thumbnailPhoto:: {}\ndescription: 東京 office\n\n",
        STANDARD.encode(PHOTO)
    ));
    ldif.push_str(&format!("dn: CN=Ext Contact,{SYNC_OU}\nobjectClass: contact\nmail: ext@partner.example\n\n"));
    ldif.push_str(&format!("dn: CN=PC1,{SYNC_OU}\nobjectClass: computer\nsAMAccountName: PC1$\n\n"));
    ldif.push_str(&format!("dn: CN=Staff,{SYNC_OU}\nobjectClass: group\nsAMAccountName: staff\n"));
    for i in 0..users {
        ldif.push_str(&format!("member: CN=Jürgen Müller {i},{SYNC_OU}\n"));
    }
    ldif.push_str(&format!("member: CN=Smith\\, John,{SYNC_OU}\n\n"));
    dc.modify(&ldif).unwrap();
}

fn admin_settings(dc: &SambaDc) -> connector_ldap::LdapSettings {
    settings(&[&dc.url], dc.admin_upn(), dc.admin_password(), SYNC_OU)
}

#[test]
fn full_import_and_dirsync_deltas() {
    let dc = SambaDc::start().unwrap();
    seed(&dc, 12);
    let rt = runtime();
    let mut source = LdapSource::new(admin_settings(&dc)).unwrap();
    let (full, summary) = rt.block_on(import(&mut source, None)).unwrap();
    assert_eq!(summary.mode, ImportMode::Full);
    assert_eq!(source.server().unwrap().1.kind, ServerKind::ActiveDirectory);
    assert!(
        summary.watermark.0.contains("\"mode\":\"dirsync\""),
        "admin has replication rights: {}",
        summary.watermark.0
    );
    // 13 users + 1 contact + 1 group; the computer is not imported.
    let ups = upserts(&full);
    assert_eq!(ups.len(), 15, "{:#?}", ups.iter().map(|o| o.entry.dn.to_string()).collect::<Vec<_>>());
    assert!(ups.iter().all(|o| !o.entry.has_object_class("computer")));

    let smith = find(&full, "Smith, John").unwrap();
    assert_eq!(smith.kind, ObjectKind::User);
    assert_eq!(smith.entry.values("thumbnailPhoto"), &[Value::Binary(PHOTO.to_vec())]);
    assert_eq!(smith.entry.first_text("description"), Some("東京 office"));
    let guid = smith.entry.first_bytes("objectGUID").unwrap();
    assert_eq!(smith.id.0, guid);
    assert_eq!(smith.anchor, Anchor::from_ad_guid(guid).unwrap());
    assert!(smith.entry.values("objectSid")[0].is_binary());
    let sid = directory::Sid::from_bytes(smith.entry.first_bytes("objectSid").unwrap()).unwrap();
    assert!(sid.to_string().starts_with("S-1-5-21-"), "{sid}");

    let jm = find(&full, "Jürgen Müller 3").unwrap();
    assert_eq!(jm.entry.values("proxyAddresses").len(), 2);
    assert_eq!(jm.entry.first_text("displayName"), Some("Jürgen Müller 3"));
    let staff = find(&full, "Staff").unwrap();
    assert_eq!(staff.kind, ObjectKind::Group);
    assert_eq!(staff.entry.values("member").len(), 13);
    assert_eq!(find(&full, "Ext Contact").unwrap().kind, ObjectKind::Contact);

    // ms-DS-ConsistencyGuid, when set, is the user's sourceAnchor.
    let consistency = Guid::parse("6b29fc40-ca47-1067-b31d-00dd010662da").unwrap();
    let mut ldif = format!(
        "dn: CN=Jürgen Müller 1,{SYNC_OU}\nchangetype: modify\nreplace: mS-DS-ConsistencyGuid\nmS-DS-ConsistencyGuid:: {}\n-\n\n",
        STANDARD.encode(consistency.ad_bytes())
    );
    ldif.push_str(&format!("dn: CN=New User,{SYNC_OU}\nobjectClass: user\nsAMAccountName: newuser\n\n"));
    ldif.push_str(&format!(
        "dn: CN=Jürgen Müller 2,{SYNC_OU}\nchangetype: modify\nreplace: title\ntitle: Chief\n-\n\n"
    ));
    ldif.push_str(&format!(
        "dn: CN=Jürgen Müller 4,{SYNC_OU}\nchangetype: modrdn\nnewrdn: CN=Juergen Renamed\ndeleteoldrdn: 1\n\n"
    ));
    ldif.push_str(&format!("dn: CN=Jürgen Müller 5,{SYNC_OU}\nchangetype: modrdn\nnewrdn: CN=Jürgen Müller 5\ndeleteoldrdn: 1\nnewsuperior: OU=Elsewhere,DC=example,DC=test\n\n"));
    ldif.push_str(&format!("dn: CN=Jürgen Müller 6,{SYNC_OU}\nchangetype: delete\n\n"));
    dc.modify(&ldif).unwrap();
    let id = |name: &str| find(&full, name).unwrap().id.clone();
    let (delta, summary2) = rt.block_on(import(&mut source, Some(&summary.watermark))).unwrap();
    assert_eq!(summary2.mode, ImportMode::Delta);
    assert!(find(&delta, "New User").is_some(), "add: {delta:#?}");
    assert_eq!(find(&delta, "Jürgen Müller 2").and_then(|o| o.entry.first_text("title")), Some("Chief"));
    assert_eq!(
        find(&delta, "Juergen Renamed").map(|o| o.id.clone()),
        Some(id("Jürgen Müller 4")),
        "rename keeps the id"
    );
    let u1 = find(&delta, "Jürgen Müller 1").expect("consistency guid change seen");
    assert_eq!(u1.anchor.0, consistency.ad_bytes().to_vec());
    assert_eq!(u1.id, id("Jürgen Müller 1"), "the id stays objectGUID");
    let gone = deletes(&delta);
    assert!(gone.contains(&&id("Jürgen Müller 6")), "delete: {delta:#?}");
    assert!(gone.contains(&&id("Jürgen Müller 5")), "move out of scope is a delete: {delta:#?}");
    // The group changed too (two members left it).
    assert!(
        upserts(&delta).len() <= 6,
        "{:#?}",
        upserts(&delta).iter().map(|o| o.entry.dn.to_string()).collect::<Vec<_>>()
    );

    let (quiet, _) = rt.block_on(import(&mut source, Some(&summary2.watermark))).unwrap();
    assert!(upserts(&quiet).is_empty() && deletes(&quiet).is_empty(), "{quiet:#?}");
}

#[test]
fn usn_fallback_without_replication_rights_and_errors() {
    let dc = SambaDc::start().unwrap();
    seed(&dc, 3);
    dc.samba_tool(&["user", "create", "syncsvc", "Sync.Passw0rd1"]).unwrap();
    let rt = runtime();
    let mut s = settings(&[&dc.url], "syncsvc@example.test", "Sync.Passw0rd1", SYNC_OU);
    s.page_size = 2;
    let mut source = LdapSource::new(s).unwrap();
    let (full, summary) = rt.block_on(import(&mut source, None)).unwrap();
    assert_eq!(upserts(&full).len(), 6);
    assert!(summary.watermark.0.contains("\"mode\":\"usn\""), "{}", summary.watermark.0);

    dc.modify(&format!(
        "dn: CN=Jürgen Müller 0,{SYNC_OU}\nchangetype: modify\nreplace: title\ntitle: Boss\n-\n\n\
         dn: CN=Jürgen Müller 1,{SYNC_OU}\nchangetype: delete\n\n\
         dn: CN=Late User,{SYNC_OU}\nobjectClass: user\nsAMAccountName: late\n\n"
    ))
    .unwrap();
    let u1 = find(&full, "Jürgen Müller 1").unwrap().id.clone();
    let (delta, s2) = rt.block_on(import(&mut source, Some(&summary.watermark))).unwrap();
    assert_eq!(s2.mode, ImportMode::Delta);
    assert_eq!(find(&delta, "Jürgen Müller 0").and_then(|o| o.entry.first_text("title")), Some("Boss"));
    assert!(find(&delta, "Late User").is_some());
    // The account cannot read tombstones: the delete is found by reconciliation.
    assert_eq!(s2.reconcile_within, vec![Dn::parse(SYNC_OU).unwrap()]);
    let known: Vec<_> = upserts(&full).iter().map(|o| (o.id.clone(), o.entry.dn.clone())).collect();
    let mut seen: std::collections::HashSet<_> = upserts(&delta).iter().map(|o| o.id.clone()).collect();
    seen.extend(delta.iter().filter_map(|c| match c {
        sync::SourceChange::Present { id } => Some(id.clone()),
        _ => None,
    }));
    let gone = sync::deleted_by_reconciliation(known.iter().map(|(i, d)| (i, d)), &seen, &s2.reconcile_within);
    assert!(gone == vec![u1.clone()] || deletes(&delta).contains(&&u1), "delete not detected: {gone:?} {delta:#?}");

    // Bad password: the AD sub-code becomes advice.
    let bad = settings(&[&dc.url], "syncsvc@example.test", "nope", SYNC_OU);
    let err = rt.block_on(import(&mut LdapSource::new(bad).unwrap(), None)).unwrap_err();
    assert!(matches!(err, LdapError::Bind { code: 49, .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("syncsvc@example.test") && text.contains("ldap://127.0.0.1") && text.contains("wrong password"),
        "{text}"
    );
}

#[test]
fn starttls_failover_and_ranged_members() {
    let dc = SambaDc::start().unwrap();
    seed(&dc, 2);
    let rt = runtime();
    let dead = format!("ldap://127.0.0.1:{}", testkit::free_port().unwrap());
    let mut s = admin_settings(&dc);
    s.urls = vec![dead, dc.url.clone()];
    s.tls.starttls = true;
    s.tls.ca_file = Some(dc.ca.ca_cert.clone());
    let mut source = LdapSource::new(s).unwrap();
    let (full, _) = rt.block_on(import(&mut source, None)).unwrap();
    assert_eq!(upserts(&full).len(), 5);
    assert_eq!(source.server().unwrap().0.url, dc.url);

    // Ranged retrieval, with the server cutting the values into windows of 3.
    let (session, _) = source.server().unwrap();
    let group = format!("CN=Staff,{SYNC_OU}");
    let mut ldif = String::new();
    for i in 0..10 {
        ldif.push_str(&format!("dn: CN=Member {i},{SYNC_OU}\nobjectClass: user\nsAMAccountName: m{i}\n\n"));
    }
    ldif.push_str(&format!("dn: {group}\nchangetype: modify\nadd: member\n"));
    for i in 0..10 {
        ldif.push_str(&format!("member: CN=Member {i},{SYNC_OU}\n"));
    }
    ldif.push_str("-\n\n");
    dc.modify(&ldif).unwrap();
    let values = rt.block_on(connector_ldap::source::fetch_range(session, &group, "member", 0, Some(3))).unwrap();
    assert_eq!(values.len(), 13, "all members read window by window");
    let dns: std::collections::HashSet<_> =
        values.iter().map(|v| Dn::parse(&String::from_utf8_lossy(v)).unwrap()).collect();
    assert_eq!(dns.len(), 13);
}

/// Every reason a pass-through sign-in can fail, produced for real in Samba
/// and read from its bind error (AD's `data NNN` sub-codes).
#[test]
fn password_validation_reads_every_ad_refusal() {
    use connector_ldap::validate::{PlainBinds, Validator};
    use proto::pta::Outcome;
    let dc = SambaDc::start().unwrap();
    let pw = "Passw0rd.Agent1";
    dc.samba_tool(&["user", "create", "ptauser", pw, "--userou=CN=Users"])
        .unwrap_or_else(|_| dc.samba_tool(&["user", "create", "ptauser", pw]).unwrap());
    let rt = runtime();
    let settings = settings(&[&dc.url], dc.admin_upn(), dc.admin_password(), "CN=Users,DC=example,DC=test");
    let validator =
        Validator::new(settings, Some("(&(objectClass=user)(sAMAccountName={upn}))".into()), PlainBinds::AllowInsecure)
            .unwrap();
    let check = |password: &str| rt.block_on(validator.validate("ptauser", password));
    assert_eq!(check(pw), Outcome::Success);
    assert_eq!(check("wrong-Passw0rd"), Outcome::WrongPassword);

    dc.samba_tool(&["user", "disable", "ptauser"]).unwrap();
    assert_eq!(check(pw), Outcome::AccountDisabled);
    dc.samba_tool(&["user", "enable", "ptauser"]).unwrap();
    assert_eq!(check(pw), Outcome::Success);

    dc.samba_tool(&["user", "setexpiry", "ptauser", "--days=0"]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(check(pw), Outcome::AccountExpired);
    dc.samba_tool(&["user", "setexpiry", "ptauser", "--noexpiry"]).unwrap();
    assert_eq!(check(pw), Outcome::Success);

    dc.samba_tool(&["user", "setpassword", "ptauser", &format!("--newpassword={pw}"), "--must-change-at-next-login"])
        .unwrap();
    assert_eq!(check(pw), Outcome::MustChangePassword);
    dc.samba_tool(&["user", "setpassword", "ptauser", &format!("--newpassword={pw}")]).unwrap();
    assert_eq!(check(pw), Outcome::Success);

    // Lockout: three bad passwords, then even the right one is refused as locked.
    dc.samba_tool(&["domain", "passwordsettings", "set", "--account-lockout-threshold=3"]).unwrap();
    for _ in 0..3 {
        assert_eq!(check("wrong-Passw0rd"), Outcome::WrongPassword);
    }
    assert_eq!(check(pw), Outcome::LockedOut);
}

/// AD's change notifications wake the daemon for changes in scope — an
/// attribute, a deletion, a person moved out of scope — and not for objects
/// elsewhere (an OU outside the configured base).
#[test]
fn change_notifications_wake_for_changes_in_scope_only() {
    let dc = SambaDc::start().unwrap();
    seed(&dc, 3);
    let rt = runtime();
    let mut source = LdapSource::new(admin_settings(&dc)).unwrap();
    let (_, first) = rt.block_on(import(&mut source, None)).unwrap();
    // Nothing changed since the import: the wait times out.
    let quiet = rt.block_on(source.wait_for_change(std::time::Duration::from_millis(500))).unwrap();
    assert_eq!(quiet, Some(false), "no change since the import began");
    // The change comes a while after the wait began: by then the search is
    // armed and the DC's USN compared (a local round trip; two seconds of
    // headroom), so only the notification itself can wake it.
    let wait_during = |source: &mut LdapSource, ldif: &str, timeout: std::time::Duration| {
        rt.block_on(async {
            let wait = source.wait_for_change(timeout);
            let change = async {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                dc.modify(ldif).unwrap();
            };
            let (woken, ()) = tokio::join!(wait, change);
            woken.unwrap()
        })
    };
    let elsewhere = "dn: OU=Elsewhere,DC=example,DC=test\nchangetype: modify\nreplace: description\ndescription: not synchronised\n-\n\n";
    assert_eq!(
        wait_during(&mut source, elsewhere, std::time::Duration::from_secs(5)),
        Some(false),
        "out of scope: no wake-up"
    );
    // The DC's USN moved since the import began: the next wait wakes at once
    // (one cycle more), which the daemon's next import then settles.
    let missed = rt.block_on(source.wait_for_change(std::time::Duration::from_secs(120))).unwrap();
    assert_eq!(missed, Some(true), "a change committed before the search was armed is not lost");
    let long = std::time::Duration::from_secs(120);
    let title = format!("dn: CN=Jürgen Müller 0,{SYNC_OU}\nchangetype: modify\nreplace: title\ntitle: Größe\n-\n\n");
    let moved = format!(
        "dn: CN=Jürgen Müller 1,{SYNC_OU}\nchangetype: modrdn\nnewrdn: CN=Jürgen Müller 1\ndeleteoldrdn: 1\nnewsuperior: OU=Elsewhere,DC=example,DC=test\n\n"
    );
    let deleted = format!("dn: CN=Jürgen Müller 2,{SYNC_OU}\nchangetype: delete\n\n");
    for (ldif, what) in
        [(&title, "an attribute change"), (&moved, "a person moved out of scope"), (&deleted, "a deletion")]
    {
        // As the daemon does: an import, after which a wait is quiet (the
        // USN has not moved), so only the notification can end the next one.
        rt.block_on(import(&mut source, Some(&first.watermark))).unwrap();
        let quiet = rt.block_on(source.wait_for_change(std::time::Duration::from_millis(300))).unwrap();
        assert_eq!(quiet, Some(false), "before {what}");
        assert_eq!(wait_during(&mut source, ldif, long), Some(true), "{what}");
    }
}

/// The Reset Password check agrees with Samba's own enforcement: an account
/// without the right is told so (with the line that grants it) and its
/// reset is refused; the printed `samba-tool dsacl` line, run as printed,
/// grants it, after which the check passes and the reset goes through.
#[test]
fn reset_password_right_is_read_from_the_dacl_as_samba_enforces_it() {
    use connector_ldap::validate::{PlainBinds, Validator};
    use proto::pta::{Outcome, PasswordWrite};
    let dc = SambaDc::start().unwrap();
    seed(&dc, 2);
    dc.samba_tool(&["user", "create", "svc-reset", "Reset.Passw0rd1"]).unwrap();
    let rt = runtime();
    let tls = |mut s: connector_ldap::LdapSettings| {
        s.tls.starttls = true;
        s.tls.ca_file = Some(dc.ca.ca_cert.clone());
        s
    };
    let admin = tls(admin_settings(&dc));
    assert_eq!(rt.block_on(LdapSource::new(admin).unwrap().check_reset_password_right()).unwrap(), None);

    let service = tls(settings(&[&dc.url], "svc-reset@example.test", "Reset.Passw0rd1", SYNC_OU));
    let problem = rt
        .block_on(LdapSource::new(service.clone()).unwrap().check_reset_password_right())
        .unwrap()
        .expect("svc-reset has no Reset Password right");
    assert!(problem.blocking && problem.right.contains("Reset Password"), "{problem:?}");
    let filter = Some("(&(objectClass=user)(sAMAccountName={upn}))".to_string());
    let validator = Validator::new(service.clone(), filter.clone(), PlainBinds::AllowInsecure).unwrap();
    let reset = PasswordWrite::Reset { new_password: "Reset.By.Service1".into(), enforce_policy: false };
    assert_eq!(rt.block_on(validator.write_password("jm0", "", &reset)), Outcome::PasswordChangeNotAllowed);

    // The fix, exactly as printed.
    let (dn, sddl) = problem
        .fix
        .split("samba-tool dsacl set --objectdn=\"")
        .nth(1)
        .and_then(|rest| rest.split_once('"'))
        .and_then(|(dn, rest)| Some((dn, rest.split("--sddl=\"").nth(1)?.split('"').next()?)))
        .unwrap();
    assert!(sddl.contains("S-1-5-21-"), "the account's SID is filled in: {sddl}");
    dc.samba_tool(&["dsacl", "set", &format!("--objectdn={dn}"), &format!("--sddl={sddl}")]).unwrap();
    assert_eq!(rt.block_on(LdapSource::new(service.clone()).unwrap().check_reset_password_right()).unwrap(), None);
    let validator = Validator::new(service, filter, PlainBinds::AllowInsecure).unwrap();
    assert_eq!(rt.block_on(validator.write_password("jm0", "", &reset)), Outcome::PasswordChanged);
    // The seeded account was made without a password, so disabled: enabled now, it signs in with the new one.
    dc.samba_tool(&["user", "enable", "jm0"]).unwrap();
    assert_eq!(rt.block_on(validator.validate("jm0", "Reset.By.Service1")), Outcome::Success);
}
