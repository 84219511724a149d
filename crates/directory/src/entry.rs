//! Directory entries: a DN and its attributes, with case-insensitive names.

use crate::dn::Dn;
use crate::value::Value;

/// An attribute: the name as the server spelled it, and its values in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub values: Vec<Value>,
}

/// A directory entry. Attribute names are matched case-insensitively; the
/// spelling first seen is kept for output, and so is the order.
///
/// Attributes live in a small vector: entries hold a few dozen attributes at
/// most, and a linear case-insensitive scan needs no allocation per lookup.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub dn: Dn,
    attrs: Vec<Attribute>,
}

impl PartialEq for Entry {
    /// Equal when the DNs are equal and every attribute has the same values
    /// (attribute order does not matter, value order does).
    fn eq(&self, other: &Self) -> bool {
        self.dn == other.dn
            && self.attrs.len() == other.attrs.len()
            && self.attrs.iter().all(|a| other.get(&a.name).is_some_and(|b| a.values == b.values))
    }
}
impl Eq for Entry {}

impl Entry {
    pub fn new(dn: Dn) -> Self {
        Entry { dn, attrs: Vec::new() }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.attrs.iter().position(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// Appends one value to `name` (creating the attribute).
    pub fn add(&mut self, name: &str, value: impl Into<Value>) {
        match self.position(name) {
            Some(i) => self.attrs[i].values.push(value.into()),
            None => self.attrs.push(Attribute { name: name.to_string(), values: vec![value.into()] }),
        }
    }

    /// Replaces all values of `name`; an empty list removes the attribute.
    pub fn set(&mut self, name: &str, values: Vec<Value>) {
        match (self.position(name), values.is_empty()) {
            (Some(i), true) => {
                self.attrs.remove(i);
            }
            (Some(i), false) => self.attrs[i].values = values,
            (None, true) => {}
            (None, false) => self.attrs.push(Attribute { name: name.to_string(), values }),
        }
    }

    /// Adds a whole attribute whose name the caller knows is not present yet
    /// (e.g. straight from a search result, where names are unique).
    pub fn push_attribute(&mut self, attribute: Attribute) {
        match self.position(&attribute.name) {
            Some(i) => self.attrs[i].values.extend(attribute.values),
            None => self.attrs.push(attribute),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Attribute> {
        self.position(name).map(|i| self.attrs.remove(i))
    }

    pub fn get(&self, name: &str) -> Option<&Attribute> {
        self.attrs.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }

    pub fn values(&self, name: &str) -> &[Value] {
        self.get(name).map(|a| a.values.as_slice()).unwrap_or_default()
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
        self.position(name).is_some()
    }

    /// Attributes in the order they were added.
    pub fn attributes(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs.iter()
    }

    pub fn attribute_count(&self) -> usize {
        self.attrs.len()
    }

    /// True if `objectClass` holds `class` (case-insensitive).
    pub fn has_object_class(&self, class: &str) -> bool {
        self.values("objectClass").iter().any(|v| v.as_text().is_some_and(|t| t.eq_ignore_ascii_case(class)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_insensitive_names_and_order_free_equality() {
        let mut a = Entry::new(Dn::root());
        a.add("CN", "x");
        a.add("cn", "y");
        a.add("mail", "m");
        assert_eq!(a.values("Cn").len(), 2);
        assert_eq!(a.get("CN").map(|x| x.name.as_str()), Some("CN"));
        let mut b = Entry::new(Dn::root());
        b.add("MAIL", "m");
        b.set("cn", vec!["x".into(), "y".into()]);
        assert_eq!(a, b);
        b.set("cn", vec![]);
        assert!(!b.has("cn"));
        assert_ne!(a, b);
    }
}
