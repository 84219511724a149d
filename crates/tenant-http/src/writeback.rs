//! Password writeback as the handlers call it: every write the HTTP side
//! makes goes through [`write_password`] (or, for a self-service reset,
//! reports through [`count`]), so `idbridge_password_writeback` counts each
//! attempt by kind and outcome.

use tenant::writeback::{Request, WritebackError, Written};

use crate::scim::AppState;

/// [`tenant::writeback::write_password`] with the attempt counted.
pub async fn write_password(
    state: &AppState,
    name: &str,
    new_password: &str,
    request: Request,
) -> tenant::Result<Result<Written, WritebackError>> {
    let kind = request.kind();
    let written = tenant::writeback::write_password(&state.store, &state.pta, name, new_password, request).await;
    if let Ok(result) = &written {
        count(state, kind, result.as_ref().err());
    }
    written
}

/// Counts one attempt of `kind` (change, reset): changed, or refused for `refusal`.
pub fn count(state: &AppState, kind: &str, refusal: Option<&WritebackError>) {
    state.metrics.password_writeback(kind, refusal.map_or("changed", WritebackError::reason));
}
