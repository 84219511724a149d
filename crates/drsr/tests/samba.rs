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
