//! The LDAP source connector: reads users, groups and contacts out of Active
//! Directory, Samba AD, OpenLDAP, 389-ds or any LDAP server, in full or as
//! deltas, and hands them to the sync engine through [`sync::Source`].
//!
//! - [`connect`]: URL checks, TLS (LDAPS, StartTLS, CA file), failover, bind, rootDSE.
//! - [`paged`]: paged search streaming, on connections of our own (`reader`)
//!   read with our own decoder (`wire`).
//! - [`source`]: the `Source` implementation, anchors, ranged retrieval, scope.
//! - `dirsync`, `usn`, `syncrepl`: the three delta mechanisms; `notify`: AD's
//!   change notifications, which wake the daemon.
//! - [`ber`]: non-panicking BER for entries and controls.
//! - [`survey`]: the OU tree with object counts and the rights check (for `idbridge init`).
//! - `replication`: AD users' NT hashes by replication (MS-DRSR via `drsr`) for password hash sync.

pub mod anchor_write_back;
pub mod ber;
pub mod connect;
mod dirsync;
pub mod error;
pub mod group_writeback;
mod notify;
mod ous;
pub mod paged;
mod reader;
mod replication;
pub mod rootdse;
pub mod settings;
pub mod source;
pub mod survey;
mod syncrepl;
mod usn;
pub mod validate;
pub mod watermark;
mod wire;
pub mod write;

pub use error::LdapError;
pub use rootdse::RootDse;
pub use settings::{LdapSettings, Secret, ServerKind, TlsSettings};
pub use source::{LdapSource, Profile};
