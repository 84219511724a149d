//! The cloud side as the engine sees it.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use directory::ObjectKind;
use serde_json::Value as Json;
use serde_json::value::RawValue;

/// A target failure for one object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TargetError {
    pub message: String,
    /// The object is not (any more) in the target.
    pub not_found: bool,
}

/// A resource to create, shared by the export's plan, the target and the
/// store's encoder: its JSON text is made once, by whichever of them asks
/// first (the target for its request body, the store for its record), and
/// the others wait for it and copy it.
#[derive(Debug)]
pub struct Resource {
    json: Json,
    text: OnceLock<Box<RawValue>>,
}

impl Resource {
    pub fn new(json: Json) -> Self {
        Self { json, text: OnceLock::new() }
    }

    /// The resource as JSON text (compact, as `Json::to_string` writes it).
    pub fn text(&self) -> &RawValue {
        // A `Json` always serializes (its map keys are strings); `null`
        // (the default) stands in for the impossible failure, not a panic.
        self.text.get_or_init(|| serde_json::value::to_raw_value(&self.json).unwrap_or_default())
    }
}

impl std::ops::Deref for Resource {
    type Target = Json;

    fn deref(&self) -> &Json {
        &self.json
    }
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

/// One change to send to the target.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportOp {
    /// Shared with the engine, which records the same resource as exported
    /// once the target confirms (no copy per object).
    Create {
        kind: ObjectKind,
        resource: Arc<Resource>,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_resource_is_written_as_its_json_text_once_whoever_asks() {
        let json = serde_json::json!({
            "userName": "zoë@example.org", "displayName": "Zoë \"Z\" Ångström\n\u{1F600}", "n": [1, 2.5, null, true]
        });
        let resource = Arc::new(Resource::new(json.clone()));
        // Threads asking at once (the target's request, the store's encoder) share one text.
        let texts: Vec<usize> = std::thread::scope(|s| {
            let asking: Vec<_> = (0..4).map(|_| s.spawn(|| resource.text().get().as_ptr() as usize)).collect();
            asking.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(texts.iter().all(|&t| t == resource.text().get().as_ptr() as usize), "one text");
        // The bytes the store keeps whichever way it was written.
        assert_eq!(resource.text().get(), json.to_string());
        assert_eq!(serde_json::from_str::<Json>(resource.text().get()).unwrap(), json);
        assert_eq!(*resource, Resource::new(json), "compared by value");
    }
}
