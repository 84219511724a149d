//! The tenant over HTTP: the thin layer between axum and the tenant's core
//! (`tenant`). Handlers parse the request, call the core on a blocking
//! thread, and turn its answer or error into a response.
//!
//! - [`scim`]: the SCIM 2.0 API under `/scim/v2`, and the shared [`AppState`].
//! - [`oidc`]: the OpenID Connect provider's endpoints and sign-in pages.
//! - [`federation`]: the browser's way to a federated domain's identity provider and back.
//! - [`console`]: the admin console's pages under `/admin`.
//! - [`hybrid`], [`admin`], [`pta`]: `/hybrid/v1`, `/admin/v1`, `/pta/v1` (wire types in `proto`).
//! - [`serve`]: listening, TLS, connection limits and timeouts, shutdown.
//! - [`writeback`]: password writeback as the handlers call it (counted).
//! - [`saml_idp`]: the tenant as a SAML identity provider for applications.

pub mod admin;
pub mod console;
pub mod federation;
pub mod hybrid;
pub mod oidc;
pub mod pta;
pub mod saml_idp;
pub mod scim;
pub mod serve;
pub mod writeback;

pub use scim::AppState;
pub use serve::{DEFAULT_MAX_BODY, ServeOptions, serve};
