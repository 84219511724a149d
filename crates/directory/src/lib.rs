//! The identity model shared by every part of idbridge: distinguished names
//! (RFC 4514), attribute values, entries, object kinds, source anchors, LDIF
//! (RFC 2849) and LDAP search filters (RFC 4515).
//!
//! Pure: no IO beyond the `BufRead`/`Write` values a caller hands in, and no
//! panics on any input.

pub mod anchor;
pub mod cloud_group;
pub mod dn;
pub mod entry;
pub mod filter;
pub mod kind;
pub mod ldif;
pub mod security_descriptor;
pub mod value;

pub use anchor::Anchor;
pub use dn::{Ava, Dn, DnError, Rdn, RdnValue};
pub use entry::{Attribute, Entry};
pub use filter::{Filter, FilterError};
pub use kind::ObjectKind;
pub use ldif::{ChangeRecord, LdifError, LdifReader, LdifRecord, LdifWriter, ModOp, Modification};
pub use value::{Guid, Sid, Value, ValueError, is_binary_attribute};
