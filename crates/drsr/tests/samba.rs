//! Against a real Samba AD DC (testkit; one at a time).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

#[test]
fn samba_endpoint_mapper_names_the_drsuapi_port() {
    let _dc = testkit::SambaDc::start().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let port = rt.block_on(drsr::epm::map("127.0.0.1", &drsr::DRSUAPI, Duration::from_secs(10))).unwrap();
    assert!(port >= 1024, "a dynamic port: {port}");
    // The interface really is there: an unauthenticated bind to it is accepted.
    rt.block_on(drsr::rpc::Connection::bind(&format!("127.0.0.1:{port}"), &drsr::DRSUAPI, Duration::from_secs(10)))
        .unwrap();
    // An interface nobody serves is not mapped.
    let nothing = drsr::Syntax::new("12345678-1234-1234-1234-123456789abc", 1, 0);
    assert!(rt.block_on(drsr::epm::map("127.0.0.1", &nothing, Duration::from_secs(10))).is_err());
}

#[test]
fn samba_drs_bind_over_ntlm_packet_privacy() {
    let dc = testkit::SambaDc::start().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t = Duration::from_secs(10);
    let port = rt.block_on(drsr::epm::map("127.0.0.1", &drsr::DRSUAPI, t)).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let user = dc.admin_upn().split('@').next().unwrap().to_string();
    let creds = drsr::rpc::Credentials { user: user.clone(), domain: None, password: dc.admin_password().to_string() };
    let (handle, ext) = rt
        .block_on(async {
            let mut conn = drsr::rpc::Connection::bind_sealed(&addr, &drsr::DRSUAPI, &creds, t).await?;
            assert!(conn.session_key().is_some());
            let (handle, ext) = drsr::drsuapi::bind(&mut conn).await?;
            drsr::drsuapi::unbind(&mut conn, handle).await?;
            Ok::<_, drsr::RpcError>((handle, ext))
        })
        .unwrap();
    assert_ne!(handle.0, [0u8; 20]);
    assert_ne!(ext.flags, 0, "the server describes its extensions");
    // A wrong password: no session.
    let wrong = drsr::rpc::Credentials { user, domain: None, password: "wrong-Passw0rd".into() };
    let refused = rt.block_on(async {
        let mut conn = drsr::rpc::Connection::bind_sealed(&addr, &drsr::DRSUAPI, &wrong, t).await?;
        drsr::drsuapi::bind(&mut conn).await
    });
    assert!(refused.is_err(), "{refused:?}");
    // The reader names the failure for what it is.
    let refused = rt.block_on(drsr::reader::SecretReader::connect("127.0.0.1", &wrong, t)).unwrap_err();
    assert!(matches!(refused, drsr::RpcError::AuthenticationFailed { .. }), "{refused:?}");
    assert!(refused.to_string().contains("did not accept the credentials"), "{refused}");
    // A DC nobody listens on: said so, no hang.
    let gone = rt.block_on(drsr::reader::SecretReader::connect("127.0.0.2", &wrong, t)).unwrap_err();
    assert!(gone.to_string().contains("cannot reach 127.0.0.2"), "{gone}");
}

/// The whole point: a user's NT hash out of Samba by replication, equal to
/// MD4(UTF-16LE(password)).
#[test]
fn samba_replicates_a_users_nt_hash() {
    use md4::{Digest, Md4};
    let dc = testkit::SambaDc::start().unwrap();
    let password = "Replic8ted.Secret";
    dc.samba_tool(&["user", "create", "drsuser", password]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t = Duration::from_secs(10);
    let port = rt.block_on(drsr::epm::map("127.0.0.1", &drsr::DRSUAPI, t)).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let user = dc.admin_upn().split('@').next().unwrap().to_string();
    let creds = drsr::rpc::Credentials { user, domain: None, password: dc.admin_password().to_string() };
    let reply = rt
        .block_on(async {
            let mut conn = drsr::rpc::Connection::bind_sealed(&addr, &drsr::DRSUAPI, &creds, t).await?;
            let key = conn.session_key().unwrap();
            let (handle, _) = drsr::drsuapi::bind(&mut conn).await?;
            let req = drsr::drsuapi::ChangesRequest {
                dn: "CN=drsuser,CN=Users,DC=example,DC=test".into(),
                usn_from: (0, 0),
                flags: drsr::drsuapi::DRS_INIT_SYNC | drsr::drsuapi::DRS_WRIT_REP,
                max_objects: 1,
                max_bytes: 0,
                extended_op: drsr::drsuapi::EXOP_REPL_OBJ,
                attributes: vec![],
            };
            let reply = drsr::drsuapi::get_nc_changes(&mut conn, handle, &req).await?;
            Ok::<_, drsr::RpcError>((reply, key))
        })
        .unwrap();
    let (reply, key) = reply;
    let object = reply
        .objects
        .iter()
        .find(|o| o.dn.to_lowercase().starts_with("cn=drsuser"))
        .unwrap_or_else(|| panic!("{reply:?}"));
    let pwd =
        object.attrs.iter().find(|(a, _)| *a == drsr::drsuapi::ATT_UNICODE_PWD).map(|(_, v)| v[0].clone()).unwrap();
    let rid = u32::from_le_bytes(object.sid[object.sid.len() - 4..].try_into().unwrap());
    let inner = drsr::secrets::decrypt_secret(&key, &pwd).unwrap();
    let nt = drsr::secrets::nt_hash_from_rid_encrypted(&inner, rid).unwrap();
    let mut h = Md4::new();
    h.update(password.encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>());
    let expected: [u8; 16] = h.finalize().into();
    assert_eq!(nt, expected, "the replicated NT hash is MD4(UTF-16LE(password))");

    // The same through the reader; an unknown object is no error, just absent.
    let (secret, nobody) = rt
        .block_on(async {
            let mut reader = drsr::reader::SecretReader::connect("127.0.0.1", &creds, t).await?;
            let secret = reader.user("CN=drsuser,CN=Users,DC=example,DC=test").await?;
            let nobody = reader.user("CN=nobody,CN=Users,DC=example,DC=test").await?;
            reader.close().await?;
            Ok::<_, drsr::RpcError>((secret, nobody))
        })
        .unwrap();
    let secret = secret.unwrap();
    assert_eq!(secret.nt_hash.as_ref().map(|h| h.0), Some(expected));
    assert_eq!(format!("{:?}", secret.nt_hash), "Some(NtSecret(…))", "never shown");
    assert!(nobody.is_none());
}

/// A whole naming context, in rounds; an account without replication rights
/// is told exactly which rights it lacks.
#[test]
fn samba_replicates_the_domain_and_refuses_an_account_without_rights() {
    let dc = testkit::SambaDc::start().unwrap();
    dc.samba_tool(&["user", "create", "plainuser", "Plain.Passw0rd1"]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t = Duration::from_secs(10);
    let port = rt.block_on(drsr::epm::map("127.0.0.1", &drsr::DRSUAPI, t)).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let admin = drsr::rpc::Credentials {
        user: dc.admin_upn().split('@').next().unwrap().to_string(),
        domain: None,
        password: dc.admin_password().to_string(),
    };
    use drsr::drsuapi::*;
    let attrs = [ATT_UNICODE_PWD, ATT_OBJECT_SID, ATT_SAM_ACCOUNT_NAME];
    let (names, with_password) = rt
        .block_on(async {
            let mut conn = drsr::rpc::Connection::bind_sealed(&addr, &drsr::DRSUAPI, &admin, t).await?;
            let (handle, _) = bind(&mut conn).await?;
            let mut names = Vec::new();
            let mut with_password = 0;
            let to = replicate(&mut conn, handle, "DC=example,DC=test", (0, 0), &attrs, |o| {
                if let Some((_, v)) = o.attrs.iter().find(|(a, _)| *a == ATT_SAM_ACCOUNT_NAME) {
                    names.push(String::from_utf16_lossy(
                        &v[0].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(),
                    ));
                }
                if o.attrs.iter().any(|(a, v)| *a == ATT_UNICODE_PWD && !v.is_empty()) {
                    with_password += 1;
                }
            })
            .await?;
            assert!(to.0 > 0, "a high-water mark to continue from");
            Ok::<_, drsr::RpcError>((names, with_password))
        })
        .unwrap();
    assert!(names.iter().any(|n| n == "plainuser") && names.iter().any(|n| n == "Administrator"), "{names:?}");
    assert!(with_password >= 2, "{with_password}");

    let plain = drsr::rpc::Credentials { user: "plainuser".into(), domain: None, password: "Plain.Passw0rd1".into() };
    let denied = rt.block_on(async {
        let mut conn = drsr::rpc::Connection::bind_sealed(&addr, &drsr::DRSUAPI, &plain, t).await?;
        let (handle, _) = bind(&mut conn).await?;
        replicate(&mut conn, handle, "DC=example,DC=test", (0, 0), &attrs, |_| {}).await
    });
    let text = denied.unwrap_err().to_string();
    assert!(text.contains("Replicating Directory Changes All") && text.contains("samba-tool dsacl"), "{text}");
}

/// A single object (EXOP_REPL_OBJ) needs the same rights as the whole domain.
#[test]
fn samba_single_object_needs_replication_rights_too() {
    let dc = testkit::SambaDc::start().unwrap();
    dc.samba_tool(&["user", "create", "plainuser", "Plain.Passw0rd1"]).unwrap();
    dc.samba_tool(&["user", "create", "victim", "Victim.Passw0rd1"]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t = Duration::from_secs(10);
    let plain = drsr::rpc::Credentials { user: "plainuser".into(), domain: None, password: "Plain.Passw0rd1".into() };
    let r = rt.block_on(async {
        let mut reader = drsr::reader::SecretReader::connect("127.0.0.1", &plain, t).await?;
        reader.user("CN=victim,CN=Users,DC=example,DC=test").await
    });
    assert!(matches!(r, Err(drsr::RpcError::ReplicationDenied)), "{r:?}");
}
