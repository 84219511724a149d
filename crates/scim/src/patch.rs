//! PATCH (RFC 7644 §3.5.2): parse a PatchOp body and apply it to a resource,
//! atomically — on any error the resource is left as it was.
#![deny(clippy::indexing_slicing)]

use serde_json::{Map, Value};

use crate::error::{ScimError, ScimType};
use crate::eval::{get_ci, parse_datetime};
use crate::filter::{AttrPath, CompareOp, Filter, PatchPath};
use crate::schema::{AttrDef, AttrType, Mutability, ResourceType};

pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchOp {
    Add,
    Remove,
    Replace,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatchOperation {
    pub op: PatchOp,
    pub path: Option<PatchPath>,
    pub value: Option<Value>,
}

/// Parses a PatchOp request body.
pub fn parse_patch(body: &Value) -> Result<Vec<PatchOperation>, ScimError> {
    let schemas_ok = get_ci(body, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|x| x.as_str().is_some_and(|x| x.eq_ignore_ascii_case(PATCH_SCHEMA))));
    if !schemas_ok {
        return Err(ScimError::new(
            ScimType::InvalidSyntax,
            format!("a PATCH body must list {PATCH_SCHEMA} in schemas"),
        ));
    }
    let ops = get_ci(body, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::new(ScimType::InvalidSyntax, "a PATCH body needs an Operations array"))?;
    if ops.is_empty() {
        return Err(ScimError::new(ScimType::InvalidSyntax, "Operations is empty"));
    }
    ops.iter()
        .enumerate()
        .map(|(i, o)| {
            let op = match get_ci(o, "op").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
                Some("add") => PatchOp::Add,
                Some("remove") => PatchOp::Remove,
                Some("replace") => PatchOp::Replace,
                other => {
                    return Err(ScimError::new(
                        ScimType::InvalidSyntax,
                        format!("Operations[{i}].op must be add, remove or replace, not {other:?}"),
                    ));
                }
            };
            let path = match get_ci(o, "path") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) if p.trim().is_empty() => None,
                Some(Value::String(p)) => Some(PatchPath::parse(p)?),
                Some(_) => return Err(ScimError::invalid_path(format!("Operations[{i}].path must be a string"))),
            };
            let value = get_ci(o, "value").cloned();
            match (op, &path, &value) {
                (PatchOp::Remove, None, _) => {
                    Err(ScimError::no_target(format!("Operations[{i}]: remove needs a path")))
                }
                (PatchOp::Add | PatchOp::Replace, _, None) => {
                    Err(ScimError::invalid_value(format!("Operations[{i}]: {op:?} needs a value")))
                }
                (PatchOp::Add | PatchOp::Replace, None, Some(v)) if !v.is_object() => Err(ScimError::invalid_value(
                    format!("Operations[{i}]: without a path, the value must be an object of attributes"),
                )),
                _ => Ok(PatchOperation { op, path, value }),
            }
        })
        .collect()
}

/// Applies the operations to a copy of `resource` and returns it.
pub fn apply_patch(rt: &ResourceType, resource: &Value, ops: &[PatchOperation]) -> Result<Value, ScimError> {
    let mut doc = resource.clone();
    if !doc.is_object() {
        return Err(ScimError::status(500, "the stored resource is not a JSON object"));
    }
    for op in ops {
        match &op.path {
            Some(path) => apply_path(rt, &mut doc, op.op, path, op.value.as_ref())?,
            None => {
                let Some(Value::Object(attrs)) = &op.value else {
                    return Err(ScimError::invalid_value("value must be an object"));
                };
                for (key, value) in attrs {
                    // An extension URN as key holds that extension's attributes.
                    if let Some((ext, _)) = rt.extensions.iter().find(|(s, _)| s.id.eq_ignore_ascii_case(key)) {
                        let Value::Object(inner) = value else {
                            return Err(ScimError::invalid_value(format!("{key} must be an object")));
                        };
                        for (k, v) in inner.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("schemas")) {
                            let attr = AttrPath::parse(k).ok_or_else(|| ScimError::invalid_path(format!("{k:?}")))?;
                            let attr = AttrPath { uri: Some(ext.id.to_string()), ..attr };
                            apply_path(
                                rt,
                                &mut doc,
                                op.op,
                                &PatchPath { attr, filter: None, sub_after_filter: None },
                                Some(v),
                            )?;
                        }
                        continue;
                    }
                    if key.eq_ignore_ascii_case("schemas") {
                        continue;
                    }
                    let attr = AttrPath::parse(key)
                        .ok_or_else(|| ScimError::invalid_path(format!("{key:?} is not an attribute")))?;
                    apply_path(
                        rt,
                        &mut doc,
                        op.op,
                        &PatchPath { attr, filter: None, sub_after_filter: None },
                        Some(value),
                    )?;
                }
            }
        }
    }
    Ok(doc)
}

fn apply_extension(
    rt: &ResourceType,
    doc: &mut Value,
    op: PatchOp,
    ext: &str,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    match op {
        PatchOp::Remove => {
            if let Some(root) = doc.as_object_mut() {
                take(root, ext);
                if let Some(Value::Array(schemas)) = get_mut_ci(root, "schemas") {
                    schemas.retain(|s| !s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(ext)));
                }
            }
            Ok(())
        }
        PatchOp::Add | PatchOp::Replace => {
            let Some(Value::Object(attrs)) = value else {
                return Err(ScimError::invalid_value(format!(
                    "the value for {ext} must be an object of its attributes"
                )));
            };
            if op == PatchOp::Replace
                && let Some(root) = doc.as_object_mut()
            {
                take(root, ext);
            }
            for (k, v) in attrs.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("schemas")) {
                let attr = AttrPath::parse(k).ok_or_else(|| ScimError::invalid_path(format!("{k:?}")))?;
                let attr = AttrPath { uri: Some(ext.to_string()), ..attr };
                apply_path(rt, doc, op, &PatchPath { attr, filter: None, sub_after_filter: None }, Some(v))?;
            }
            Ok(())
        }
    }
}

/// Sets `key` in `map` under its canonical spelling, dropping other spellings.
fn put(map: &mut Map<String, Value>, canonical: &str, value: Value) {
    let stale: Vec<String> =
        map.keys().filter(|k| k.eq_ignore_ascii_case(canonical) && *k != canonical).cloned().collect();
    for k in stale {
        map.remove(&k);
    }
    map.insert(canonical.to_string(), value);
}

fn take(map: &mut Map<String, Value>, name: &str) -> Option<Value> {
    let key = map.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()?;
    map.remove(&key)
}

fn has_ci(map: &Map<String, Value>, name: &str) -> bool {
    map.keys().any(|k| k.eq_ignore_ascii_case(name))
}

fn get_mut_ci<'m>(map: &'m mut Map<String, Value>, name: &str) -> Option<&'m mut Value> {
    let key = map.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()?;
    map.get_mut(&key)
}

/// Type-checks one value (not the array of a multi-valued attribute).
pub fn check_value(def: &AttrDef, value: &Value) -> Result<(), ScimError> {
    let bad = |want: &str| ScimError::invalid_value(format!("{} must be {want}, got {value}", def.name));
    match def.kind {
        AttrType::String | AttrType::Reference | AttrType::Binary => {
            value.as_str().map(|_| ()).ok_or_else(|| bad("a string"))
        }
        AttrType::DateTime => {
            value.as_str().and_then(parse_datetime).map(|_| ()).ok_or_else(|| bad("an RFC 3339 date-time string"))
        }
        AttrType::Boolean => value.as_bool().map(|_| ()).ok_or_else(|| bad("true or false")),
        AttrType::Integer => value.as_i64().map(|_| ()).ok_or_else(|| bad("an integer")),
        AttrType::Decimal => value.as_f64().map(|_| ()).ok_or_else(|| bad("a number")),
        AttrType::Complex => {
            let obj = value.as_object().ok_or_else(|| bad("an object"))?;
            for (k, v) in obj {
                let sub = def
                    .sub_attribute(k)
                    .ok_or_else(|| ScimError::invalid_value(format!("{} has no sub-attribute {k:?}", def.name)))?;
                if !v.is_null() {
                    check_value(sub, v)?;
                }
            }
            Ok(())
        }
    }
}

/// Rewrites a complex value's keys to their canonical spelling.
pub fn canonical_complex(def: &AttrDef, value: Value) -> Value {
    match value {
        Value::Object(obj) => {
            let mut out = Map::new();
            for (k, v) in obj {
                let name = def.sub_attribute(&k).map(|s| s.name.to_string()).unwrap_or(k);
                out.insert(name, v);
            }
            Value::Object(out)
        }
        other => other,
    }
}

fn normalize(def: &AttrDef, value: &Value) -> Result<Vec<Value>, ScimError> {
    let items: Vec<Value> = match value {
        Value::Array(a) if def.multi => a.clone(),
        Value::Array(_) => return Err(ScimError::invalid_value(format!("{} is single-valued", def.name))),
        v => vec![v.clone()],
    };
    items
        .into_iter()
        .map(|v| {
            check_value(def, &v)?;
            Ok(if def.kind == AttrType::Complex { canonical_complex(def, v) } else { v })
        })
        .collect()
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (get_ci(a, "value"), get_ci(b, "value")) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Only one value of a multi-valued attribute may be primary: the newest wins.
fn single_primary(items: &mut [Value], newest: &[Value]) {
    let new_primary = newest.iter().any(|v| get_ci(v, "primary").and_then(Value::as_bool) == Some(true));
    if !new_primary {
        return;
    }
    for item in items.iter_mut() {
        let is_new = newest.iter().any(|n| n == item);
        if !is_new
            && let Some(obj) = item.as_object_mut()
            && let Some(p) = get_mut_ci(obj, "primary")
        {
            *p = Value::Bool(false);
        }
    }
}

fn check_mutable(def: &AttrDef, existing: bool) -> Result<(), ScimError> {
    match def.mutability {
        Mutability::ReadOnly => Err(ScimError::mutability(format!("{} is read-only", def.name))),
        Mutability::Immutable if existing => {
            Err(ScimError::mutability(format!("{} is immutable and already set", def.name)))
        }
        _ => Ok(()),
    }
}

/// For `attr[a eq "x" and b eq "y"]`: the object `{a: "x", b: "y"}`, so an
/// add/replace with no matching value can create one (what Azure AD expects).
fn template_from_filter(filter: &Filter, out: &mut Map<String, Value>) -> bool {
    match filter {
        Filter::Compare(p, CompareOp::Eq, v) if p.uri.is_none() && p.sub.is_none() => {
            out.insert(p.name.clone(), v.clone());
            true
        }
        Filter::And(a, b) => template_from_filter(a, out) && template_from_filter(b, out),
        _ => false,
    }
}

fn apply_path(
    rt: &ResourceType,
    doc: &mut Value,
    op: PatchOp,
    path: &PatchPath,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let attr = &path.attr;
    // A path naming a whole extension (`urn:…:2.0:User`): its attributes at once.
    if path.filter.is_none()
        && attr.sub.is_none()
        && let Some(uri) = &attr.uri
        && let Some((ext, _)) =
            rt.extensions.iter().find(|(s, _)| s.id.eq_ignore_ascii_case(&format!("{uri}:{}", attr.name)))
    {
        return apply_extension(rt, doc, op, ext.id, value);
    }
    let resolved = rt
        .resolve(attr.uri.as_deref(), &attr.name)
        .ok_or_else(|| ScimError::invalid_path(format!("{attr} is not an attribute of {}", rt.name)))?;
    let def = resolved.def;
    let Some(root) = doc.as_object_mut() else { return Err(ScimError::status(500, "resource is not an object")) };
    if let Some(ext) = resolved.extension
        && !has_ci(root, ext)
    {
        if op == PatchOp::Remove {
            return Ok(());
        }
        put(root, ext, Value::Object(Map::new()));
        if let Some(Value::Array(schemas)) = get_mut_ci(root, "schemas")
            && !schemas.iter().any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(ext)))
        {
            schemas.push(Value::String(ext.to_string()));
        }
    }
    let container: &mut Map<String, Value> = match resolved.extension {
        Some(ext) => match get_mut_ci(root, ext) {
            Some(Value::Object(o)) => o,
            _ => return Err(ScimError::invalid_value(format!("{ext} must be an object"))),
        },
        None => root,
    };
    let existing = container.iter().any(|(k, v)| k.eq_ignore_ascii_case(def.name) && !v.is_null());

    // attr.sub: a sub-attribute of a single-valued complex attribute (name.givenName).
    if let Some(sub_name) = &attr.sub {
        let sub = def
            .sub_attribute(sub_name)
            .ok_or_else(|| ScimError::invalid_path(format!("{} has no sub-attribute {sub_name:?}", def.name)))?;
        if def.multi {
            return Err(ScimError::invalid_path(format!(
                "{attr}: select the values with a filter, e.g. {}[type eq \"work\"].{}",
                def.name, sub.name
            )));
        }
        check_mutable(def, false)?;
        check_mutable(sub, false)?;
        let parent = match get_mut_ci(container, def.name) {
            Some(v @ Value::Object(_)) => v,
            _ if op == PatchOp::Remove => return Ok(()),
            _ => {
                put(container, def.name, Value::Object(Map::new()));
                get_mut_ci(container, def.name).ok_or_else(|| ScimError::status(500, "lost a value"))?
            }
        };
        let Some(obj) = parent.as_object_mut() else { return Err(ScimError::status(500, "not an object")) };
        match op {
            PatchOp::Remove => {
                take(obj, sub.name);
            }
            _ => {
                let v = value.ok_or_else(|| ScimError::invalid_value("missing value"))?;
                check_value(sub, v)?;
                put(obj, sub.name, v.clone());
            }
        }
        return Ok(());
    }

    if let Some(filter) = &path.filter {
        if def.kind != AttrType::Complex || !def.multi {
            return Err(ScimError::invalid_path(format!("{attr}[…] needs a multi-valued complex attribute")));
        }
        let sub = match &path.sub_after_filter {
            Some(s) => Some(
                def.sub_attribute(s)
                    .ok_or_else(|| ScimError::invalid_path(format!("{} has no sub-attribute {s:?}", def.name)))?,
            ),
            None => None,
        };
        check_mutable(def, false)?;
        let mut items = match take(container, def.name) {
            Some(Value::Array(a)) => a,
            Some(Value::Null) | None => Vec::new(),
            Some(other) => vec![other],
        };
        let mut matched = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if filter.matches_value(def, item)? {
                matched.push(i);
            }
        }
        match op {
            PatchOp::Remove => match sub {
                Some(sub) => {
                    check_mutable(sub, false)?;
                    for &i in &matched {
                        if let Some(obj) = items.get_mut(i).and_then(Value::as_object_mut) {
                            take(obj, sub.name);
                        }
                    }
                }
                // Removing what is not there is not an error: removal is idempotent.
                None => {
                    for &i in matched.iter().rev() {
                        items.remove(i);
                    }
                }
            },
            PatchOp::Add | PatchOp::Replace => {
                let v = value.ok_or_else(|| ScimError::invalid_value("missing value"))?;
                if matched.is_empty() {
                    let mut template = Map::new();
                    if !template_from_filter(filter, &mut template) {
                        return Err(ScimError::no_target(format!("no value of {} matches {filter}", def.name)));
                    }
                    let mut created = canonical_complex(def, Value::Object(template));
                    match (sub, created.as_object_mut()) {
                        (Some(sub), Some(obj)) => {
                            check_value(sub, v)?;
                            obj.insert(sub.name.to_string(), v.clone());
                        }
                        (None, Some(obj)) => {
                            check_value(def, v)?;
                            if let Value::Object(extra) = canonical_complex(def, v.clone()) {
                                obj.extend(extra);
                            }
                        }
                        _ => {}
                    }
                    check_value(def, &created)?;
                    items.push(created.clone());
                    single_primary(&mut items, &[created]);
                } else {
                    let mut changed = Vec::new();
                    for &i in &matched {
                        match sub {
                            Some(sub) => {
                                check_mutable(sub, false)?;
                                check_value(sub, v)?;
                                if let Some(obj) = items.get_mut(i).and_then(Value::as_object_mut) {
                                    put(obj, sub.name, v.clone());
                                }
                            }
                            None => {
                                check_value(def, v)?;
                                let new = canonical_complex(def, v.clone());
                                let Some(item) = items.get_mut(i) else { continue };
                                if op == PatchOp::Replace {
                                    *item = new;
                                } else if let (Some(obj), Value::Object(extra)) = (item.as_object_mut(), new) {
                                    obj.extend(extra);
                                }
                            }
                        }
                        changed.extend(items.get(i).cloned());
                    }
                    single_primary(&mut items, &changed);
                }
            }
        }
        if !items.is_empty() {
            put(container, def.name, Value::Array(items));
        }
        return Ok(());
    }

    // The whole attribute.
    match op {
        PatchOp::Remove => {
            check_mutable(def, false)?;
            if def.required {
                return Err(ScimError::invalid_value(format!("{} is required and cannot be removed", def.name)));
            }
            match (value, def.multi) {
                // remove with a value list (Azure AD style): remove just those values.
                (Some(v @ (Value::Array(_) | Value::Object(_))), true) => {
                    let doomed = normalize(def, v)?;
                    if let Some(Value::Array(items)) = get_mut_ci(container, def.name) {
                        items.retain(|item| !doomed.iter().any(|d| same_value(item, d)));
                        if items.is_empty() {
                            take(container, def.name);
                        }
                    }
                }
                _ => {
                    take(container, def.name);
                }
            }
        }
        PatchOp::Add => {
            let v = value.ok_or_else(|| ScimError::invalid_value("missing value"))?;
            check_mutable(def, existing)?;
            let new = normalize(def, v)?;
            if def.multi {
                let mut items = match take(container, def.name) {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                let mut added = Vec::new();
                for n in new {
                    if !items.iter().any(|i| same_value(i, &n)) {
                        items.push(n.clone());
                        added.push(n);
                    }
                }
                single_primary(&mut items, &added);
                if !items.is_empty() {
                    put(container, def.name, Value::Array(items));
                }
            } else if let Some(n) = new.into_iter().next() {
                match (get_mut_ci(container, def.name), &n) {
                    // add to a single complex value merges its sub-attributes.
                    (Some(Value::Object(old)), Value::Object(extra)) => old.extend(extra.clone()),
                    _ => put(container, def.name, n),
                }
            }
        }
        PatchOp::Replace => {
            let v = value.ok_or_else(|| ScimError::invalid_value("missing value"))?;
            check_mutable(def, existing && def.mutability == Mutability::Immutable)?;
            if v.is_null() {
                if def.required {
                    return Err(ScimError::invalid_value(format!("{} is required", def.name)));
                }
                take(container, def.name);
                return Ok(());
            }
            let mut new = normalize(def, v)?;
            if def.multi {
                let snapshot = new.clone();
                single_primary(&mut new, snapshot.get(snapshot.len().saturating_sub(1)..).unwrap_or_default());
                put(container, def.name, Value::Array(new));
            } else if let Some(n) = new.into_iter().next() {
                put(container, def.name, n);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::schema::{ENTERPRISE_USER_SCHEMA, GROUP_TYPE, USER_TYPE};
    use serde_json::json;

    fn body(ops: Value) -> Value {
        json!({"schemas": [PATCH_SCHEMA], "Operations": ops})
    }

    fn patch(rt: &ResourceType, doc: &Value, ops: Value) -> Result<Value, ScimError> {
        apply_patch(rt, doc, &parse_patch(&body(ops))?)
    }

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "u1", "userName": "bjensen@example.com",
            "name": {"givenName": "Barbara"},
            "emails": [{"value": "b@example.com", "type": "work", "primary": true}]
        })
    }

    #[test]
    fn members_add_and_remove_by_filter() {
        let g = json!({"id": "g1", "displayName": "Staff", "members": [{"value": "a"}, {"value": "b"}]});
        let g = patch(
            &GROUP_TYPE,
            &g,
            json!([{"op": "Add", "path": "members", "value": [{"value": "c"}, {"value": "a"}]}]),
        )
        .unwrap();
        assert_eq!(g["members"].as_array().unwrap().len(), 3, "no duplicate a");
        let g = patch(&GROUP_TYPE, &g, json!([{"op": "remove", "path": "members[value eq \"b\"]"}])).unwrap();
        assert_eq!(g["members"], json!([{"value": "a"}, {"value": "c"}]));
        let g = patch(&GROUP_TYPE, &g, json!([{"op": "remove", "path": "members[value eq \"zzz\"]"}])).unwrap();
        assert_eq!(g["members"].as_array().unwrap().len(), 2, "removing an absent member is a no-op");
        let g =
            patch(&GROUP_TYPE, &g, json!([{"op": "remove", "path": "members", "value": [{"value": "a"}]}])).unwrap();
        assert_eq!(g["members"], json!([{"value": "c"}]));
        let g = patch(&GROUP_TYPE, &g, json!([{"op": "remove", "path": "members"}])).unwrap();
        assert!(g.get("members").is_none());
    }

    #[test]
    fn value_path_sub_attributes() {
        let u = patch(
            &USER_TYPE,
            &user(),
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "new@example.com"}]),
        )
        .unwrap();
        assert_eq!(u["emails"][0]["value"], "new@example.com");
        // No home email yet: an equality filter creates it (Azure AD's usage).
        let u =
            patch(&USER_TYPE, &u, json!([{"op": "add", "path": "emails[type eq \"home\"].value", "value": "h@x.org"}]))
                .unwrap();
        assert_eq!(u["emails"][1], json!({"type": "home", "value": "h@x.org"}));
        let e =
            patch(&USER_TYPE, &u, json!([{"op": "replace", "path": "emails[value co \"zzz\"].value", "value": "x"}]))
                .unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::NoTarget));
        let u = patch(&USER_TYPE, &u, json!([{"op": "remove", "path": "emails[type eq \"home\"]"}])).unwrap();
        assert_eq!(u["emails"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn no_path_extension_urns_and_sub_attributes() {
        let u = patch(
            &USER_TYPE,
            &user(),
            json!([
                {"op": "replace", "value": {"DisplayName": "Babs", "name.familyName": "Jensen", "active": false,
                  ENTERPRISE_USER_SCHEMA: {"department": "Tours"}}},
                {"op": "add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": {"value": "m1"}}
            ]),
        )
        .unwrap();
        assert_eq!(u["displayName"], "Babs", "canonical spelling");
        assert_eq!(u["name"], json!({"givenName": "Barbara", "familyName": "Jensen"}));
        assert_eq!(u["active"], false);
        assert_eq!(u[ENTERPRISE_USER_SCHEMA], json!({"department": "Tours", "manager": {"value": "m1"}}));
        assert!(u["schemas"].as_array().unwrap().contains(&json!(ENTERPRISE_USER_SCHEMA)));
        let u = patch(&USER_TYPE, &u, json!([{"op": "remove", "path": "name.givenName"}])).unwrap();
        assert_eq!(u["name"], json!({"familyName": "Jensen"}));
    }

    #[test]
    fn primary_is_unique() {
        let u = patch(
            &USER_TYPE,
            &user(),
            json!([{"op": "add", "path": "emails", "value": [{"value": "p@x.org", "primary": true}]}]),
        )
        .unwrap();
        let primaries: Vec<_> = u["emails"].as_array().unwrap().iter().filter(|e| e["primary"] == true).collect();
        assert_eq!(primaries.len(), 1);
        assert_eq!(primaries[0]["value"], "p@x.org");
    }

    #[test]
    fn errors_and_atomicity() {
        let original = user();
        let cases = [
            (json!([{"op": "replace", "path": "id", "value": "x"}]), ScimType::Mutability),
            (json!([{"op": "replace", "path": "nosuch", "value": "x"}]), ScimType::InvalidPath),
            (json!([{"op": "replace", "path": "active", "value": "yes"}]), ScimType::InvalidValue),
            (json!([{"op": "add", "path": "emails", "value": [{"value": "x", "bogus": 1}]}]), ScimType::InvalidValue),
            (json!([{"op": "remove", "path": "userName"}]), ScimType::InvalidValue),
            (json!([{"op": "remove", "path": "groups"}]), ScimType::Mutability),
            (json!([{"op": "replace", "path": "emails.value", "value": "x"}]), ScimType::InvalidPath),
        ];
        for (ops, want) in cases {
            let e = patch(&USER_TYPE, &original, ops.clone()).unwrap_err();
            assert_eq!(e.scim_type, Some(want), "{ops}");
        }
        // The first operation succeeds, the second fails: nothing is applied.
        let ops =
            json!([{"op": "replace", "path": "title", "value": "Boss"}, {"op": "replace", "path": "id", "value": "x"}]);
        assert!(patch(&USER_TYPE, &original, ops).is_err());
        assert_eq!(original, user());
        // Bad bodies.
        assert_eq!(parse_patch(&json!({"Operations": []})).unwrap_err().scim_type, Some(ScimType::InvalidSyntax));
        assert_eq!(parse_patch(&body(json!([{"op": "remove"}]))).unwrap_err().scim_type, Some(ScimType::NoTarget));
        assert_eq!(
            parse_patch(&body(json!([{"op": "frob", "path": "x"}]))).unwrap_err().scim_type,
            Some(ScimType::InvalidSyntax)
        );
        assert_eq!(
            parse_patch(&body(json!([{"op": "add", "path": "x[", "value": 1}]))).unwrap_err().scim_type,
            Some(ScimType::InvalidPath)
        );
    }
}
