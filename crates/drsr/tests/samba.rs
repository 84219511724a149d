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
}
