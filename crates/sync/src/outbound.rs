//! Outbound targets: SCIM attribute paths that outbound rule flows write
//! into a resource — `name`, `name.sub`, `name[type eq "work"].sub`, and
//! extension attributes by schema URN (or the `enterprise:` / `hybrid:` short forms).

use serde_json::{Map, Value as Json, json};

use crate::mapping::{ENTERPRISE_SCHEMA, HYBRID_SCHEMA};

/// A parsed target path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimPath {
    /// Extension schema URN, if the attribute lives in one.
    pub schema: Option<String>,
    pub attribute: String,
    /// `[type eq "work"]`: the element of a multi-valued attribute with this type.
    pub typed: Option<String>,
    pub sub: Option<String>,
}

/// Attributes the engine sets itself; a rule may not.
const BUILT_IN: &[&str] =
    &["schemas", "id", "externalId", "meta", "members", "manager", "immutableId", "dirSyncEnabled"];

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
}

impl ScimPath {
    /// A path a rule may write (not one the engine sets itself).
    pub fn parse(text: &str) -> Result<ScimPath, String> {
        let path = ScimPath::parse_any(text)?;
        let ours = matches!(path.schema.as_deref(), None | Some(HYBRID_SCHEMA) | Some(ENTERPRISE_SCHEMA));
        if ours && BUILT_IN.iter().any(|b| b.eq_ignore_ascii_case(&path.attribute)) {
            return Err(format!("{} is set by the engine (sourceAnchor, references), not by rules", path.attribute));
        }
        Ok(path)
    }

    /// Any attribute path, the engine's own included (for reading).
    pub fn parse_any(text: &str) -> Result<ScimPath, String> {
        let (schema, rest) = if let Some(rest) = text.strip_prefix("enterprise:") {
            (Some(ENTERPRISE_SCHEMA.to_string()), rest)
        } else if let Some(rest) = text.strip_prefix("hybrid:") {
            (Some(HYBRID_SCHEMA.to_string()), rest)
        } else if text.starts_with("urn:") {
            let (urn, attr) =
                text.rsplit_once(':').ok_or_else(|| format!("{text:?}: a URN path ends with :attribute"))?;
            (Some(urn.to_string()), attr)
        } else {
            (None, text)
        };
        let (head, sub) = match rest.find(']') {
            Some(close) => {
                let (h, tail) = rest.split_at(close + 1);
                let sub = tail.strip_prefix('.').ok_or_else(|| format!("{text:?}: after [..] comes .subAttribute"))?;
                (h, Some(sub))
            }
            None => match rest.split_once('.') {
                Some((h, s)) => (h, Some(s)),
                None => (rest, None),
            },
        };
        let (attribute, typed) = match head.split_once('[') {
            Some((a, selector)) => {
                let inner = selector.strip_suffix(']').unwrap_or(selector).trim();
                let value = inner
                    .strip_prefix("type eq ")
                    .map(str::trim)
                    .and_then(|v| v.strip_prefix('"'))
                    .and_then(|v| v.strip_suffix('"'))
                    .ok_or_else(|| format!("{text:?}: the only filter allowed is [type eq \"…\"]"))?;
                (a, Some(value.to_string()))
            }
            None => (head, None),
        };
        if !is_name(attribute) || sub.is_some_and(|s| !is_name(s)) {
            return Err(format!("{text:?} is not a SCIM attribute path (name, name.sub, name[type eq \"x\"].sub)"));
        }
        if typed.is_some() && sub.is_none() {
            return Err(format!("{text:?}: name the sub-attribute after [..], e.g. .value"));
        }
        Ok(ScimPath { schema, attribute: attribute.to_string(), typed, sub: sub.map(str::to_string) })
    }

    /// The value at this path in `resource`, if any.
    pub fn get(&self, resource: &Json) -> Option<Json> {
        let container = match &self.schema {
            Some(urn) => resource.get(urn)?,
            None => resource,
        };
        let value = container.get(&self.attribute)?;
        let value = match &self.typed {
            Some(kind) => value.as_array()?.iter().find(|i| i["type"] == kind.as_str())?,
            None => value,
        };
        match &self.sub {
            Some(sub) => value.get(sub).cloned(),
            None => Some(value.clone()),
        }
    }

    /// Writes `value` at this path in `resource`.
    pub fn set(&self, resource: &mut Map<String, Json>, value: Json) {
        let container = match &self.schema {
            Some(urn) => {
                let slot = resource.entry(urn.clone()).or_insert_with(|| json!({}));
                if !slot.is_object() {
                    *slot = json!({});
                }
                match slot.as_object_mut() {
                    Some(m) => m,
                    None => return,
                }
            }
            None => resource,
        };
        match (&self.typed, &self.sub) {
            (None, None) => {
                container.insert(self.attribute.clone(), value);
            }
            (None, Some(sub)) => {
                let slot = container.entry(self.attribute.clone()).or_insert_with(|| json!({}));
                if let Some(obj) = slot.as_object_mut() {
                    obj.insert(sub.clone(), value);
                }
            }
            (Some(kind), sub) => {
                let slot = container.entry(self.attribute.clone()).or_insert_with(|| json!([]));
                let Some(items) = slot.as_array_mut() else { return };
                let position = items.iter().position(|i| i["type"] == kind.as_str());
                let index = match position {
                    Some(i) => i,
                    None => {
                        items.push(json!({"type": kind}));
                        items.len() - 1
                    }
                };
                if let (Some(obj), Some(sub)) = (items.get_mut(index).and_then(Json::as_object_mut), sub) {
                    obj.insert(sub.clone(), value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_set() {
        let mut r = Map::new();
        for (path, v) in [
            ("title", json!("Boss")),
            ("name.givenName", json!("Ada")),
            ("emails[type eq \"work\"].value", json!("a@x.org")),
            ("emails[type eq \"work\"].primary", json!(true)),
            ("phoneNumbers[type eq \"mobile\"].value", json!("+1")),
            ("enterprise:department", json!("R&D")),
            ("urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object:mailNickname", json!("ada")),
        ] {
            ScimPath::parse(path).unwrap().set(&mut r, v.clone());
            assert_eq!(ScimPath::parse(path).unwrap().get(&Json::Object(r.clone())), Some(v));
        }
        assert_eq!(
            Json::Object(r),
            json!({
                "title": "Boss", "name": {"givenName": "Ada"},
                "emails": [{"type": "work", "value": "a@x.org", "primary": true}],
                "phoneNumbers": [{"type": "mobile", "value": "+1"}],
                ENTERPRISE_SCHEMA: {"department": "R&D"},
                HYBRID_SCHEMA: {"mailNickname": "ada"},
            })
        );
        for bad in [
            "",
            "a b",
            "emails[type eq \"work\"]",
            "emails[value eq \"x\"].value",
            "externalId",
            "members",
            "a.",
            "hybrid:immutableId",
        ] {
            assert!(ScimPath::parse(bad).is_err(), "{bad}");
        }
    }
}
