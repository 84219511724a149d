//! Evaluating filters against resources (RFC 7644 §3.4.2.2) and sort keys
//! (§3.4.2.3). Types and case-exactness come from the schema.
#![deny(clippy::indexing_slicing)]

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::error::ScimError;
use crate::filter::{AttrPath, CompareOp, Filter};
use crate::schema::{AttrDef, AttrType, ResourceType};

/// What a filter's attribute names refer to: a resource's attributes, or the
/// sub-attributes of one value inside `attr[...]`.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Resource(&'a ResourceType),
    Value(&'a AttrDef),
}

/// Looks up a JSON object key case-insensitively (attribute names are).
pub fn get_ci<'v>(obj: &'v Value, key: &str) -> Option<&'v Value> {
    get_ci_in(obj.as_object()?, key)
}

/// [`get_ci`] in an object's map.
pub fn get_ci_in<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    map.get(key).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// The definition and the JSON value(s) a path points at.
struct Target<'v> {
    leaf: &'static AttrDef,
    /// The values to compare (multi-valued attributes give several).
    values: Vec<&'v Value>,
}

fn unknown(path: &AttrPath) -> ScimError {
    ScimError::invalid_filter(format!("unknown attribute {path}"))
}

fn locate<'v>(scope: Scope<'_>, path: &AttrPath, resource: &'v Value) -> Result<Target<'v>, ScimError> {
    let (def, container): (&'static AttrDef, Option<&'v Value>) = match scope {
        Scope::Resource(rt) => {
            let resolved = rt.resolve(path.uri.as_deref(), &path.name).ok_or_else(|| unknown(path))?;
            let container = match resolved.extension {
                Some(ext) => get_ci(resource, ext),
                None => Some(resource),
            };
            (resolved.def, container)
        }
        Scope::Value(parent) => {
            if path.uri.is_some() || path.sub.is_some() {
                return Err(ScimError::invalid_filter(format!("{path} is not a sub-attribute of {}", parent.name)));
            }
            let def = parent.sub_attribute(&path.name).ok_or_else(|| unknown(path))?;
            (def, Some(resource))
        }
    };
    let raw = container.and_then(|c| get_ci(c, def.name));
    let mut values = Vec::new();
    let leaf = match (&path.sub, def.kind) {
        (Some(sub), AttrType::Complex) => {
            let sub_def = def.sub_attribute(sub).ok_or_else(|| unknown(path))?;
            for v in elements(raw, def.multi) {
                if let Some(x) = get_ci(v, sub_def.name) {
                    values.push(x);
                }
            }
            sub_def
        }
        (Some(_), _) => return Err(unknown(path)),
        (None, AttrType::Complex) => {
            // A complex attribute without a sub-attribute compares its "value".
            match def.sub_attribute("value") {
                Some(value_def) => {
                    for v in elements(raw, def.multi) {
                        if let Some(x) = get_ci(v, "value") {
                            values.push(x);
                        }
                    }
                    value_def
                }
                None => return Err(ScimError::invalid_filter(format!("{path} is complex: name a sub-attribute"))),
            }
        }
        (None, _) => {
            values.extend(elements(raw, def.multi));
            def
        }
    };
    Ok(Target { leaf, values })
}

fn elements(raw: Option<&Value>, multi: bool) -> Vec<&Value> {
    match raw {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if multi => items.iter().collect(),
        Some(v) => vec![v],
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Parses an RFC 3339 / xsd:dateTime to (seconds since epoch, nanoseconds).
/// A space is accepted for the `T` (RFC 3339 allows it in §5.6's note).
pub fn parse_datetime(s: &str) -> Option<(i64, u32)> {
    use time::format_description::well_known::Rfc3339;
    let text = match s.as_bytes().get(10) {
        Some(b' ') => format!("{}T{}", s.get(..10)?, s.get(11..)?),
        _ => s.to_string(),
    };
    let t = time::OffsetDateTime::parse(&text, &Rfc3339).ok()?;
    Some((t.unix_timestamp(), t.nanosecond()))
}

fn compare_leaf(leaf: &AttrDef, actual: &Value, op: CompareOp, wanted: &Value) -> Result<bool, ScimError> {
    use CompareOp::*;
    let bad = |why: &str| ScimError::invalid_filter(format!("{} {}: {why}", leaf.name, op.as_str()));
    if wanted.is_null() {
        return Ok(match op {
            Eq => actual.is_null(),
            Ne => !actual.is_null(),
            _ => return Err(bad("null can only be compared with eq or ne")),
        });
    }
    match leaf.kind {
        AttrType::Boolean => {
            let (Some(a), Some(w)) = (actual.as_bool(), wanted.as_bool()) else {
                return Ok(op == Ne);
            };
            match op {
                Eq => Ok(a == w),
                Ne => Ok(a != w),
                _ => Err(bad("booleans only support eq and ne")),
            }
        }
        AttrType::Integer | AttrType::Decimal => {
            let (Some(a), Some(w)) = (actual.as_f64(), wanted.as_f64()) else {
                return if wanted.is_number() { Ok(op == Ne) } else { Err(bad("compare numbers with a number")) };
            };
            let ord = a.partial_cmp(&w).unwrap_or(Ordering::Equal);
            ordered(op, ord).ok_or_else(|| bad("numbers support eq, ne, gt, ge, lt, le"))
        }
        AttrType::DateTime => {
            let (Some(a), Some(w)) =
                (actual.as_str().and_then(parse_datetime), wanted.as_str().and_then(parse_datetime))
            else {
                return if wanted.as_str().and_then(parse_datetime).is_some() {
                    Ok(op == Ne)
                } else {
                    Err(bad("compare dates with an RFC 3339 date-time string"))
                };
            };
            ordered(op, a.cmp(&w)).ok_or_else(|| bad("date-times support eq, ne, gt, ge, lt, le"))
        }
        AttrType::Binary if !matches!(op, Eq | Ne) => Err(bad("binary values support eq and ne")),
        AttrType::Complex => Err(bad("name a sub-attribute of a complex attribute")),
        _ => {
            let Some(w) = wanted.as_str() else { return Err(bad("compare strings with a string")) };
            let Some(a) = actual.as_str() else { return Ok(op == Ne) };
            let (a, w) =
                if leaf.case_exact { (a.to_string(), w.to_string()) } else { (a.to_lowercase(), w.to_lowercase()) };
            Ok(match op {
                Eq => a == w,
                Ne => a != w,
                Co => a.contains(&w),
                Sw => a.starts_with(&w),
                Ew => a.ends_with(&w),
                _ => ordered(op, a.cmp(&w)).unwrap_or(false),
            })
        }
    }
}

fn ordered(op: CompareOp, ord: Ordering) -> Option<bool> {
    Some(match op {
        CompareOp::Eq => ord == Ordering::Equal,
        CompareOp::Ne => ord != Ordering::Equal,
        CompareOp::Gt => ord == Ordering::Greater,
        CompareOp::Ge => ord != Ordering::Less,
        CompareOp::Lt => ord == Ordering::Less,
        CompareOp::Le => ord != Ordering::Greater,
        _ => return None,
    })
}

fn eval(filter: &Filter, scope: Scope<'_>, resource: &Value) -> Result<bool, ScimError> {
    match filter {
        Filter::And(a, b) => Ok(eval(a, scope, resource)? && eval(b, scope, resource)?),
        Filter::Or(a, b) => Ok(eval(a, scope, resource)? || eval(b, scope, resource)?),
        Filter::Not(a) => Ok(!eval(a, scope, resource)?),
        Filter::Present(path) => Ok(locate(scope, path, resource)?.values.iter().any(|v| !is_empty(v))),
        Filter::Compare(path, op, wanted) => {
            let target = locate(scope, path, resource)?;
            if target.values.is_empty() {
                // An absent attribute equals nothing and differs from everything.
                return match op {
                    CompareOp::Ne => Ok(!wanted.is_null()),
                    CompareOp::Eq => Ok(wanted.is_null()),
                    _ => compare_leaf(target.leaf, &Value::Null, CompareOp::Eq, &Value::Null).map(|_| false),
                };
            }
            for v in &target.values {
                if compare_leaf(target.leaf, v, *op, wanted)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Filter::ValuePath(path, inner) => {
            let Scope::Resource(rt) = scope else {
                return Err(ScimError::invalid_filter("value filters cannot be nested"));
            };
            let resolved = rt.resolve(path.uri.as_deref(), &path.name).ok_or_else(|| unknown(path))?;
            if resolved.def.kind != AttrType::Complex {
                return Err(ScimError::invalid_filter(format!("{path}[…] needs a complex attribute")));
            }
            let container = match resolved.extension {
                Some(ext) => get_ci(resource, ext),
                None => Some(resource),
            };
            for element in elements(container.and_then(|c| get_ci(c, resolved.def.name)), resolved.def.multi) {
                if eval(inner, Scope::Value(resolved.def), element)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

impl Filter {
    /// True if `resource` (a SCIM JSON resource of type `rt`) matches.
    pub fn matches(&self, rt: &ResourceType, resource: &Value) -> Result<bool, ScimError> {
        eval(self, Scope::Resource(rt), resource)
    }

    /// True if one value of a complex attribute `def` matches (PATCH value paths).
    pub fn matches_value(&self, def: &AttrDef, value: &Value) -> Result<bool, ScimError> {
        eval(self, Scope::Value(def), value)
    }
}

/// A comparable sort key (RFC 7644 §3.4.2.3): for a multi-valued attribute
/// the primary value, else the first. Missing values sort last (ascending).
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum SortKey {
    Number(f64),
    Time(i64, u32),
    Bool(bool),
    Text(String),
    Missing,
}

pub fn sort_key(rt: &ResourceType, path: &AttrPath, resource: &Value) -> Result<SortKey, ScimError> {
    let resolved = rt
        .resolve(path.uri.as_deref(), &path.name)
        .ok_or_else(|| ScimError::invalid_value(format!("sortBy: unknown attribute {path}")))?;
    let container = match resolved.extension {
        Some(ext) => get_ci(resource, ext),
        None => Some(resource),
    };
    let raw = container.and_then(|c| get_ci(c, resolved.def.name));
    let mut values = elements(raw, resolved.def.multi);
    if resolved.def.multi
        && let Some(i) = values.iter().position(|v| get_ci(v, "primary").and_then(Value::as_bool) == Some(true))
    {
        values.swap(0, i);
    }
    let Some(first) = values.first() else { return Ok(SortKey::Missing) };
    let (leaf, value) = match (resolved.def.kind, &path.sub) {
        (AttrType::Complex, sub) => {
            let name = sub.as_deref().unwrap_or("value");
            let def =
                resolved.def.sub_attribute(name).ok_or_else(|| ScimError::invalid_value(format!("sortBy: {path}")))?;
            (def, get_ci(first, def.name))
        }
        (_, None) => (resolved.def, Some(*first)),
        (_, Some(_)) => return Err(ScimError::invalid_value(format!("sortBy: {path} has no sub-attributes"))),
    };
    let Some(value) = value else { return Ok(SortKey::Missing) };
    Ok(match (leaf.kind, value) {
        (AttrType::Integer | AttrType::Decimal, v) => v.as_f64().map(SortKey::Number).unwrap_or(SortKey::Missing),
        (AttrType::DateTime, Value::String(s)) => {
            parse_datetime(s).map(|(a, b)| SortKey::Time(a, b)).unwrap_or(SortKey::Missing)
        }
        (AttrType::Boolean, Value::Bool(b)) => SortKey::Bool(*b),
        (_, Value::String(s)) => SortKey::Text(if leaf.case_exact { s.clone() } else { s.to_lowercase() }),
        _ => SortKey::Missing,
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::schema::{ENTERPRISE_USER_SCHEMA, GROUP_TYPE, HYBRID_SCHEMA, USER_TYPE};
    use serde_json::json;

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "2819c223-7f76-453a-919d-413861904646",
            "externalId": "AbC",
            "userName": "Bjensen@Example.com",
            "name": {"familyName": "O'Malley", "givenName": "Barbara"},
            "title": "Tour Guide",
            "userType": "Employee",
            "active": true,
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ],
            "meta": {"created": "2010-01-23T04:56:22Z", "lastModified": "2011-05-13T04:42:34+02:00"},
            ENTERPRISE_USER_SCHEMA: {"employeeNumber": "701984", "manager": {"value": "26118915"}},
            HYBRID_SCHEMA: {"immutableId": "QPwpa0fKZxCzHQDdAQZi2g==", "proxyAddresses": ["SMTP:bjensen@example.com"]}
        })
    }

    fn m(s: &str) -> bool {
        Filter::parse(s).and_then(|f| f.matches(&USER_TYPE, &user())).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn operators_and_case_rules() {
        assert!(m(r#"userName eq "bjensen@example.com""#), "userName is caseExact=false");
        assert!(!m(r#"externalId eq "abc""#), "externalId is caseExact=true");
        assert!(m(r#"externalId eq "AbC""#));
        assert!(m(r#"name.familyName co "malley""#));
        assert!(m(r#"userName sw "BJ""#) && m(r#"userName ew ".COM""#));
        assert!(m(r#"title ne "Manager""#) && !m(r#"title ne "tour guide""#));
        assert!(m(r#"nickName ne "x""#), "absent differs from everything");
        assert!(!m(r#"nickName eq "x""#));
        assert!(
            m(r#"title gt "A""#)
                && m(r#"title lt "Z""#)
                && m(r#"title ge "tour guide""#)
                && m(r#"title le "tour guide""#)
        );
        assert!(m("title pr") && !m("nickName pr"));
        assert!(m("active eq true") && !m("active eq false"));
        assert!(m(r#"meta.lastModified gt "2011-05-13T02:00:00Z""#));
        assert!(!m(r#"meta.lastModified gt "2011-05-13T03:00:00Z""#), "the +02:00 offset counts");
        assert!(m(r#"meta.created lt "2011-01-01T00:00:00.5Z""#));
    }

    #[test]
    fn multi_valued_value_paths_and_extensions() {
        assert!(m(r#"emails co "jensen.org""#), "complex multi-valued compares 'value'");
        assert!(m(r#"emails.type eq "home""#));
        assert!(m(r#"emails[type eq "work" and value co "@example.com"]"#));
        assert!(!m(r#"emails[type eq "home" and value co "@example.com"]"#));
        assert!(m(r#"userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")"#));
        assert!(!m(r#"userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")"#));
        assert!(m(r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "701984""#));
        assert!(m(r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq "26118915""#));
        assert!(m(r#"employeeNumber eq "701984""#), "unique extension names resolve without the URN");
        assert!(m(r#"immutableId eq "QPwpa0fKZxCzHQDdAQZi2g==""#));
        assert!(m(r#"proxyAddresses eq "smtp:bjensen@example.com""#));
    }

    #[test]
    fn type_errors_are_invalid_filter() {
        for bad in [
            r#"active gt true"#,
            r#"nosuch eq "x""#,
            r#"name eq "x""#,
            r#"meta.created gt "yesterday""#,
            r#"emails[nosuch eq 1]"#,
        ] {
            let e = Filter::parse(bad).and_then(|f| f.matches(&USER_TYPE, &user())).err();
            assert!(e.is_some_and(|e| e.scim_type == Some(crate::error::ScimType::InvalidFilter)), "{bad}");
        }
        assert!(
            Filter::parse(r#"members[value eq "1"]"#)
                .unwrap()
                .matches(&GROUP_TYPE, &json!({"members": [{"value": "1"}]}))
                .unwrap()
        );
    }

    #[test]
    fn datetimes_and_sort_keys() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(parse_datetime("2000-03-01T00:00:00+01:00"), Some((951_865_200, 0)));
        assert_eq!(parse_datetime("2011-05-13T04:42:34.25Z").map(|t| t.1), Some(250_000_000));
        assert!(parse_datetime("2011-13-13T04:42:34Z").is_none() && parse_datetime("nope").is_none());
        let k = sort_key(&USER_TYPE, &AttrPath::new("emails"), &user()).unwrap();
        assert_eq!(k, SortKey::Text("bjensen@example.com".into()));
        assert_eq!(sort_key(&USER_TYPE, &AttrPath::new("nickName"), &user()).unwrap(), SortKey::Missing);
        assert!(SortKey::Text("a".into()) < SortKey::Missing);
    }
}
