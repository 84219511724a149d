//! The LDAP connector against real servers: OpenLDAP slapd, 389-ds and a Samba AD DC,
//! each started by the testkit in a temp dir on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod ds389;
mod openldap;
mod samba;
