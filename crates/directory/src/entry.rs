//! Directory entries: a DN and its attributes, with case-insensitive names.

use std::collections::BTreeMap;

use crate::dn::Dn;
use crate::value::Value;

/// An attribute: the name as the server spelled it, and its values in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub values: Vec<Value>,
}

/// A directory entry. Attribute names are matched case-insensitively; the
/// spelling first seen is kept for output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub dn: Dn,
    attrs: BTreeMap<String, Attribute>,
}

impl Entry {
    pub fn new(dn: Dn) -> Self {
        Entry {
            dn,
            attrs: BTreeMap::new(),
        }
    }

    /// Appends one value to `name` (creating the attribute).
    pub fn add(&mut self, name: &str, value: impl Into<Value>) {
        self.attrs
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| Attribute {
                name: name.to_string(),
                values: Vec::new(),
            })
            .values
            .push(value.into());
    }

    /// Replaces all values of `name`; an empty list removes the attribute.
    pub fn set(&mut self, name: &str, values: Vec<Value>) {
        if values.is_empty() {
            self.attrs.remove(&name.to_ascii_lowercase());
        } else {
            self.attrs.insert(
                name.to_ascii_lowercase(),
                Attribute {
                    name: name.to_string(),
                    values,
                },
            );
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Attribute> {
        self.attrs.remove(&name.to_ascii_lowercase())
    }

    pub fn get(&self, name: &str) -> Option<&Attribute> {
        self.attrs.get(&name.to_ascii_lowercase())
    }

    pub fn values(&self, name: &str) -> &[Value] {
        self.get(name)
            .map(|a| a.values.as_slice())
            .unwrap_or_default()
    }

    /// The first text value of `name`.
    pub fn first_text(&self, name: &str) -> Option<&str> {
        self.values(name).iter().find_map(Value::as_text)
    }

    /// The first value of `name` as bytes.
    pub fn first_bytes(&self, name: &str) -> Option<&[u8]> {
        self.values(name).first().map(Value::as_bytes)
    }

    pub fn has(&self, name: &str) -> bool {
        self.attrs.contains_key(&name.to_ascii_lowercase())
    }

    /// Attributes in a stable (lower-cased name) order.
    pub fn attributes(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs.values()
    }

    pub fn attribute_count(&self) -> usize {
        self.attrs.len()
    }

    /// True if `objectClass` holds `class` (case-insensitive).
    pub fn has_object_class(&self, class: &str) -> bool {
        self.values("objectClass")
            .iter()
            .any(|v| v.as_text().is_some_and(|t| t.eq_ignore_ascii_case(class)))
    }
}
