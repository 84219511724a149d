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
