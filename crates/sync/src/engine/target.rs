//! The cloud side as the engine sees it.

use std::future::Future;
use std::sync::Arc;

use directory::ObjectKind;
use serde_json::Value as Json;

/// A target failure for one object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TargetError {
    pub message: String,
    /// The object is not (any more) in the target.
    pub not_found: bool,
}

/// One change to send to the target.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportOp {
    /// Shared with the engine, which records the same resource as exported
    /// once the target confirms (no copy per object).
    Create {
        kind: ObjectKind,
        resource: Arc<Json>,
    },
    Patch {
        kind: ObjectKind,
        id: String,
        operations: Vec<Json>,
    },
    Delete {
        kind: ObjectKind,
        id: String,
    },
}

/// The target's answer to a batch: per operation, in order, the new
/// object's id for a create, nothing otherwise.
pub type Answers = Vec<Result<Option<String>, TargetError>>;

/// The cloud side.
pub trait Target {
    /// Starts sending a batch. The answers come from the returned future,
    /// which borrows nothing of the target: the engine keeps the next batch
    /// in flight while it records this one's answers.
    fn apply(&mut self, ops: Vec<ExportOp>) -> impl Future<Output = Answers> + Send + use<Self>;

    /// Password hash sync: starts storing these users' passwords in the
    /// target. The report comes from the returned future, which borrows
    /// nothing of the target: the engine looks up the next users meanwhile.
    /// A target without passwords refuses them all.
    fn push_credentials(
        &mut self,
        items: Vec<crate::phs::CredentialPush>,
    ) -> impl Future<Output = Result<crate::phs::PushReport, TargetError>> + Send + use<Self> {
        let failed =
            items.iter().map(|i| (i.immutable_id.clone(), "this target does not take passwords".to_string())).collect();
        async move { Ok(crate::phs::PushReport { failed, ..Default::default() }) }
    }
}
