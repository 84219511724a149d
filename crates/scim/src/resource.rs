//! Whole resources: validating a client's body (POST/PUT) into canonical
//! form, and projecting a stored resource for a response (`attributes`,
//! `excludedAttributes`, `returned` characteristics — RFC 7644 §3.4.2.5, §3.9).

use serde_json::{Map, Value};

use crate::error::{ScimError, ScimType};
use crate::eval::get_ci_in;
use crate::filter::AttrPath;
use crate::patch::{canonical_complex, check_value};
use crate::schema::{AttrDef, AttrType, Mutability, ResourceType, Returned};

/// Checks a client's resource body and returns it in canonical form:
/// attribute names spelled as in the schema, extension attributes under their
/// URN, read-only attributes dropped (RFC 7644 §3.3: they are ignored),
/// unknown attributes and wrong types rejected, required attributes present.
/// Takes the body by value: its values move into the result rather than
/// being copied (a sync's Bulk request makes thousands per request).
pub fn validate(rt: &ResourceType, body: Value) -> Result<Value, ScimError> {
    let Value::Object(obj) = body else {
        return Err(ScimError::new(ScimType::InvalidSyntax, "the body must be a JSON object"));
    };
    let schemas: Vec<String> = match get_ci_in(&obj, "schemas") {
        Some(Value::Array(a)) => a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect(),
        _ => return Err(ScimError::invalid_value("schemas is missing: list the resource's schema URNs")),
    };
    if !schemas.iter().any(|s| s.eq_ignore_ascii_case(rt.schema.id)) {
        return Err(ScimError::invalid_value(format!("schemas must include {}", rt.schema.id)));
    }
    for s in &schemas {
        if !rt.schema_ids().any(|id| id.eq_ignore_ascii_case(s)) {
            return Err(ScimError::invalid_value(format!("{s} is not a schema of {}", rt.name)));
        }
    }
    let mut out = Map::new();
    let mut used_schemas = vec![Value::String(rt.schema.id.to_string())];
    for (key, value) in obj {
        if key.eq_ignore_ascii_case("schemas") {
            continue;
        }
        if let Some((ext, _)) = rt.extensions.iter().find(|(s, _)| s.id.eq_ignore_ascii_case(&key)) {
            let Value::Object(inner) = value else {
                return Err(ScimError::invalid_value(format!("{key} must be an object")));
            };
            let mut ext_out = Map::new();
            for (k, v) in inner.into_iter().filter(|(k, _)| !k.eq_ignore_ascii_case("schemas")) {
                let def = ext
                    .attribute(&k)
                    .ok_or_else(|| ScimError::invalid_value(format!("{k:?} is not an attribute of {}", ext.id)))?;
                if let Some(v) = accept(def, v)? {
                    ext_out.insert(def.name.to_string(), v);
                }
            }
            if !ext_out.is_empty() {
                used_schemas.push(Value::String(ext.id.to_string()));
                out.insert(ext.id.to_string(), Value::Object(ext_out));
            }
            continue;
        }
        let resolved = rt
            .resolve(None, &key)
            .filter(|r| r.extension.is_none())
            .ok_or_else(|| ScimError::invalid_value(format!("{key:?} is not an attribute of {}", rt.name)))?;
        if let Some(v) = accept(resolved.def, value)? {
            out.insert(resolved.def.name.to_string(), v);
        }
    }
    for def in rt.schema.attributes.iter().filter(|d| d.required) {
        if out.get(def.name).is_none_or(|v| v.is_null() || v.as_str().is_some_and(str::is_empty)) {
            return Err(ScimError::invalid_value(format!("{} is required", def.name)));
        }
    }
    out.insert("schemas".into(), Value::Array(used_schemas));
    Ok(Value::Object(out))
}

/// One attribute of a body: `None` when it is to be ignored (read-only, null).
fn accept(def: &AttrDef, value: Value) -> Result<Option<Value>, ScimError> {
    if def.mutability == Mutability::ReadOnly || value.is_null() {
        return Ok(None);
    }
    let items: Vec<Value> = match (value, def.multi) {
        (Value::Array(a), true) => a,
        (Value::Array(_), false) => return Err(ScimError::invalid_value(format!("{} is single-valued", def.name))),
        (v, true) => vec![v],
        (v, false) => {
            check_value(def, &v)?;
            let v = if def.kind == AttrType::Complex { drop_read_only(def, canonical_complex(def, v)) } else { v };
            return Ok(Some(v));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for v in items {
        check_value(def, &v)?;
        out.push(if def.kind == AttrType::Complex { drop_read_only(def, canonical_complex(def, v)) } else { v });
    }
    Ok(if out.is_empty() { None } else { Some(Value::Array(out)) })
}

fn drop_read_only(def: &AttrDef, value: Value) -> Value {
    match value {
        Value::Object(mut o) => {
            o.retain(|k, v| !v.is_null() && def.sub_attribute(k).is_none_or(|s| s.mutability != Mutability::ReadOnly));
            Value::Object(o)
        }
        other => other,
    }
}

/// What a response should contain (RFC 7644 §3.4.2.5).
#[derive(Debug, Clone, Default)]
pub struct Projection {
    pub attributes: Vec<AttrPath>,
    pub excluded: Vec<AttrPath>,
}

impl Projection {
    /// From the comma-separated query parameters.
    pub fn parse(attributes: Option<&str>, excluded: Option<&str>) -> Result<Projection, ScimError> {
        let list = |text: Option<&str>, what: &str| -> Result<Vec<AttrPath>, ScimError> {
            text.map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        AttrPath::parse(s)
                            .ok_or_else(|| ScimError::invalid_value(format!("{what}: {s:?} is not an attribute")))
                    })
                    .collect()
            })
            .unwrap_or(Ok(Vec::new()))
        };
        Ok(Projection { attributes: list(attributes, "attributes")?, excluded: list(excluded, "excludedAttributes")? })
    }

    /// Whether the top-level attribute `name` (of `extension`, if any) is wanted at all.
    pub fn wants(&self, rt: &ResourceType, extension: Option<&str>, name: &str) -> bool {
        let matches = |p: &AttrPath| {
            let r = rt.resolve(p.uri.as_deref(), &p.name);
            r.is_some_and(|r| {
                r.def.name.eq_ignore_ascii_case(name)
                    && r.extension.map(str::to_ascii_lowercase) == extension.map(str::to_ascii_lowercase)
            }) || p
                .uri
                .as_deref()
                .is_some_and(|u| extension.is_some_and(|e| e.eq_ignore_ascii_case(u)) && p.name.is_empty())
        };
        let def = match extension {
            Some(_) => rt.resolve(extension, name).map(|r| r.def),
            None => rt.resolve(None, name).filter(|r| r.extension.is_none()).map(|r| r.def),
        };
        let returned = def.map(|d| d.returned).unwrap_or(Returned::Default);
        match returned {
            Returned::Never => false,
            Returned::Always => true,
            Returned::Request => self.attributes.iter().any(matches),
            Returned::Default => {
                if !self.attributes.is_empty() {
                    self.attributes.iter().any(|p| {
                        matches(p)
                            || p.uri.as_deref().is_some_and(|u| {
                                extension.is_some_and(|e| e.eq_ignore_ascii_case(u))
                                    && rt.resolve(Some(u), &p.name).is_none()
                            })
                    })
                } else {
                    !self.excluded.iter().any(|p| matches(p) && p.sub.is_none())
                }
            }
        }
    }

    /// Applies the projection to a full resource.
    pub fn apply(&self, rt: &ResourceType, resource: Value) -> Value {
        let Value::Object(obj) = resource else { return resource };
        let mut out = Map::new();
        for (key, value) in obj {
            if key == "schemas" {
                out.insert(key, value);
                continue;
            }
            if let Some((ext, _)) = rt.extensions.iter().find(|(s, _)| s.id.eq_ignore_ascii_case(&key)) {
                let Value::Object(inner) = value else { continue };
                let mut kept = Map::new();
                for (k, v) in inner {
                    if self.wants(rt, Some(ext.id), &k) {
                        kept.insert(k.clone(), self.sub_filter(rt, Some(ext.id), &k, v));
                    }
                }
                if !kept.is_empty() {
                    out.insert(key, Value::Object(kept));
                }
                continue;
            }
            if self.wants(rt, None, &key) {
                let v = self.sub_filter(rt, None, &key, value);
                out.insert(key, v);
            }
        }
        Value::Object(out)
    }

    /// `attributes=name.givenName` keeps only that sub-attribute;
    /// `excludedAttributes=name.givenName` drops it.
    fn sub_filter(&self, rt: &ResourceType, extension: Option<&str>, name: &str, value: Value) -> Value {
        let same = |p: &AttrPath| {
            rt.resolve(p.uri.as_deref(), &p.name).is_some_and(|r| {
                r.def.name.eq_ignore_ascii_case(name)
                    && r.extension.map(str::to_ascii_lowercase) == extension.map(str::to_ascii_lowercase)
            })
        };
        let keep: Vec<&str> = self.attributes.iter().filter(|p| same(p)).filter_map(|p| p.sub.as_deref()).collect();
        let drop: Vec<&str> = self.excluded.iter().filter(|p| same(p)).filter_map(|p| p.sub.as_deref()).collect();
        // A whole-attribute request wins over a sub-attribute one.
        let whole = self.attributes.iter().any(|p| same(p) && p.sub.is_none());
        let shape = |v: Value| match v {
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .filter(|(k, _)| {
                        (whole || keep.is_empty() || keep.iter().any(|s| s.eq_ignore_ascii_case(k)))
                            && !drop.iter().any(|s| s.eq_ignore_ascii_case(k))
                    })
                    .collect(),
            ),
            other => other,
        };
        match value {
            Value::Array(items) => Value::Array(items.into_iter().map(shape).collect()),
            other => shape(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ENTERPRISE_USER_SCHEMA, GROUP_TYPE, USER_SCHEMA, USER_TYPE};
    use serde_json::json;

    #[test]
    fn validates_and_canonicalises() {
        let body = json!({
            "schemas": [USER_SCHEMA, ENTERPRISE_USER_SCHEMA],
            "USERNAME": "a@example.com", "id": "ignored", "meta": {"version": "x"},
            "emails": {"Value": "a@example.com", "TYPE": "work"},
            ENTERPRISE_USER_SCHEMA: {"Department": "Tours", "manager": {"value": "m", "displayName": "ro"}},
            "nickName": null
        });
        let v = validate(&USER_TYPE, body.clone()).unwrap();
        assert_eq!(v["userName"], "a@example.com");
        assert!(v.get("id").is_none() && v.get("meta").is_none(), "read-only input is ignored");
        assert_eq!(v["emails"], json!([{"value": "a@example.com", "type": "work"}]));
        assert_eq!(v[ENTERPRISE_USER_SCHEMA], json!({"department": "Tours", "manager": {"value": "m"}}));
        assert_eq!(v["schemas"], json!([USER_SCHEMA, ENTERPRISE_USER_SCHEMA]));
    }

    #[test]
    fn rejects_clearly() {
        for (body, needle) in [
            (json!({"userName": "x"}), "schemas"),
            (json!({"schemas": [USER_SCHEMA]}), "userName is required"),
            (json!({"schemas": [USER_SCHEMA], "userName": "x", "shoeSize": 42}), "shoeSize"),
            (json!({"schemas": [USER_SCHEMA], "userName": "x", "active": "yes"}), "active"),
            (json!({"schemas": [USER_SCHEMA], "userName": ["x"]}), "single-valued"),
            (json!({"schemas": [USER_SCHEMA, "urn:x"], "userName": "x"}), "urn:x"),
            (json!({"schemas": [USER_SCHEMA], "userName": "x", "emails": [{"value": "x", "kind": "y"}]}), "kind"),
        ] {
            let e = validate(&USER_TYPE, body.clone()).unwrap_err();
            assert!(e.detail.contains(needle), "{body}: {}", e.detail);
            assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn projections() {
        let full = json!({
            "schemas": [USER_SCHEMA], "id": "1", "userName": "u", "title": "t",
            "name": {"givenName": "g", "familyName": "f"},
            "emails": [{"value": "e", "type": "work"}], "password": "secret",
            "meta": {"version": "W/\"1\""},
            ENTERPRISE_USER_SCHEMA: {"department": "d", "costCenter": "c"}
        });
        let p = Projection::parse(Some("userName,name.givenName"), None).unwrap();
        let v = p.apply(&USER_TYPE, full.clone());
        assert_eq!(v, json!({"schemas": [USER_SCHEMA], "id": "1", "userName": "u", "name": {"givenName": "g"}}));
        let p = Projection::parse(
            None,
            Some("title,emails.type,urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:costCenter"),
        )
        .unwrap();
        let v = p.apply(&USER_TYPE, full.clone());
        assert!(v.get("title").is_none() && v.get("password").is_none());
        assert_eq!(v["emails"], json!([{"value": "e"}]));
        assert_eq!(v[ENTERPRISE_USER_SCHEMA], json!({"department": "d"}));
        assert_eq!(v["meta"]["version"], "W/\"1\"");
        let p = Projection::parse(None, Some("members")).unwrap();
        let g =
            p.apply(&GROUP_TYPE, json!({"schemas": [], "id": "g", "displayName": "G", "members": [{"value": "1"}]}));
        assert!(g.get("members").is_none() && g["id"] == "g");
        assert!(Projection::parse(Some("a b"), None).is_err());
    }
}
