//! SCIM 2.0 (RFC 7643, RFC 7644) without IO: schemas and resource types, the
//! filter and PATCH-path grammars, filter evaluation and sort keys, PATCH
//! application, and error bodies. The tenant serves HTTP on top of this; the
//! SCIM connector builds requests with it.

pub mod error;
pub mod eval;
pub mod filter;
pub mod patch;
pub mod resource;
pub mod schema;

pub use error::{ScimError, ScimType};
pub use filter::{AttrPath, CompareOp, Filter, PatchPath};
pub use patch::{PatchOp, PatchOperation, apply_patch, parse_patch};
