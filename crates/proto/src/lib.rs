//! The wire types of the protocols between idbridge's own parts, so both
//! sides of each one compile against the same definition:
//!
//! - [`hybrid`]: `/hybrid/v1`, what the sync side sends the tenant besides
//!   SCIM (password records).
//! - [`admin`]: `/admin/v1`, tenant administration from other hosts.
//! - [`pta`]: `/pta/v1`, pass-through agents registering, polling, answering
//!   and rotating their credential.
//! - [`url`]: the one rule for a URL idbridge sends tokens or browsers to.
//! - [`http`]: how long the tenant and its clients keep an idle connection.
//! - [`unique`]: which values the tenant keeps unique and who gets a value
//!   several objects want (the tenant enforces it, the sync engine orders by it).
//!
//! No I/O and no cryptography here: the sealing of pass-through requests is in
//! the `pta` crate, the servers in `tenant`, the clients in `connector-scim`,
//! `pta-agent` and the wizard.

pub mod admin;
pub mod http;
pub mod hybrid;
pub mod pta;
pub mod unique;
pub mod url;

/// A JSON error reply: `{"error": "…"}` (the `/pta/v1` endpoints).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorReply {
    pub error: String,
}
