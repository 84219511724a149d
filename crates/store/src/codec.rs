//! Entries as JSON in the connector space: `{"attrs": [[name, [values]]], "dn": …}`,
//! binary values as `{"b64": …}` so nothing is lost.
//!
//! Written and read through typed serde rather than `serde_json::Value`: a
//! large group's entry is hundreds of thousands of values, and a tree of
//! `Value`s costs an allocation or two per value each way. The bytes are
//! those `Value` gave (keys in order, compact), so stored entries compare
//! equal across versions.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use directory::{Dn, Entry, Value};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

/// An entry's JSON text.
pub fn entry_to_json(e: &Entry) -> String {
    serde_json::to_string(&Stored(e, None)).unwrap_or_default()
}

/// The JSON text of an entry without the attributes `leave_out` names (a
/// large group's head: its members are stored apart, see `member_chunks`).
pub fn entry_head_to_json(e: &Entry, leave_out: fn(&str) -> bool) -> String {
    serde_json::to_string(&Stored(e, Some(leave_out))).unwrap_or_default()
}

/// The entry in `text`; `None` when it is not an entry's JSON.
pub fn entry_from_json(text: &str) -> Option<Entry> {
    let read: Read = serde_json::from_str(text).ok()?;
    let mut e = Entry::new(Dn::parse(&read.dn).ok()?);
    for (name, values) in read.attrs {
        e.set(&name, values.into_iter().map(|v| v.0).collect());
    }
    Some(e)
}

/// An entry, and the attributes left out of it.
struct Stored<'a>(&'a Entry, Option<fn(&str) -> bool>);

impl Serialize for Stored<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_struct("Entry", 2)?;
        out.serialize_field("attrs", &Attributes(self.0, self.1))?;
        out.serialize_field("dn", &self.0.dn.to_string())?;
        out.end()
    }
}

struct Attributes<'a>(&'a Entry, Option<fn(&str) -> bool>);

impl Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let left_out = |name: &str| self.1.is_some_and(|leave_out| leave_out(name));
        let mut seq = s.serialize_seq(Some(self.0.attributes().filter(|a| !left_out(&a.name)).count()))?;
        for a in self.0.attributes().filter(|a| !left_out(&a.name)) {
            seq.serialize_element(&(&a.name, Values(&a.values)))?;
        }
        seq.end()
    }
}

struct Values<'a>(&'a [Value]);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for v in self.0 {
            match v {
                Value::Text(t) => seq.serialize_element(t)?,
                Value::Binary(b) => seq.serialize_element(&Binary(b))?,
            }
        }
        seq.end()
    }
}

struct Binary<'a>(&'a [u8]);

impl Serialize for Binary<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("b64", &STANDARD.encode(self.0))?;
        map.end()
    }
}

#[derive(Deserialize)]
struct Read {
    dn: String,
    attrs: Vec<(String, Vec<ReadValue>)>,
}

/// A value as stored: text, or `{"b64": …}`.
struct ReadValue(Value);

impl<'de> Deserialize<'de> for ReadValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ReadValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a text value or {\"b64\": …}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ReadValue, E> {
                Ok(ReadValue(Value::Text(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<ReadValue, E> {
                Ok(ReadValue(Value::Text(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReadValue, A::Error> {
                let mut bytes = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'_, str>>()? {
                    let text: std::borrow::Cow<'_, str> = map.next_value()?;
                    if key == "b64" {
                        bytes = Some(STANDARD.decode(text.as_bytes()).map_err(de::Error::custom)?);
                    }
                }
                bytes.map(|b| ReadValue(Value::Binary(b))).ok_or_else(|| de::Error::missing_field("b64"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut e = Entry::new(Dn::parse("cn=Smith\\, J,dc=x").unwrap_or_default());
        e.add("cn", "Smith, J");
        e.add("objectGUID", Value::Binary(vec![0, 255, 1]));
        e.add("mail", "a@x");
        e.add("mail", "b@x");
        e.add("description", "Zoë \"quoted\" \u{1F600}\n");
        let back = entry_from_json(&entry_to_json(&e));
        assert_eq!(back, Some(e));
    }

    /// The bytes are what the `serde_json::Value` form gave: stored entries
    /// written by earlier versions still compare equal.
    #[test]
    fn the_bytes_are_those_of_earlier_versions() {
        let mut e = Entry::new(Dn::parse("uid=zoë,dc=example,dc=org").unwrap_or_default());
        e.add("objectGUID", Value::Binary(vec![0, 255, 1]));
        e.add("member", "uid=a\\, b,dc=x");
        e.add("member", "uid=ü,dc=x");
        let values = |v: &[Value]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|v| match v {
                    Value::Text(t) => serde_json::json!(t),
                    Value::Binary(b) => serde_json::json!({"b64": STANDARD.encode(b)}),
                })
                .collect()
        };
        let attrs: Vec<serde_json::Value> =
            e.attributes().map(|a| serde_json::json!([a.name, values(&a.values)])).collect();
        let before = serde_json::json!({"dn": e.dn.to_string(), "attrs": attrs}).to_string();
        assert_eq!(entry_to_json(&e), before);
        assert_eq!(entry_from_json(&before), Some(e));
        assert_eq!(entry_from_json(r#"{"dn":"cn=x","attrs":[["a",[{"b64":"%%"}]]]}"#), None);
        assert_eq!(entry_from_json(r#"{"dn":"cn=x","attrs":[["a",[7]]]}"#), None);
    }
}
