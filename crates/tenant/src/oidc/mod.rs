//! The tenant's OpenID Connect provider, the parts without HTTP (the
//! endpoints and pages are in `tenant-http`).
//!
//! - [`keys`]: RS256 and ES256 signing keys, rotation, JWKS.
//! - [`jwt`]: compact JWS for the tokens we issue.
//! - [`clients`]: registered relying parties.

pub mod clients;
pub mod jwt;
pub mod keys;

pub use crate::util::random_token;
