//! The LDAP connector against real servers: OpenLDAP slapd and a Samba AD DC,
//! each started by the testkit in a temp dir on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod openldap;
mod samba;
