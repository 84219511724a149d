//! Entries as JSON in the connector space: `{"dn": …, "attrs": [[name, [values]]]}`,
//! binary values as `{"b64": …}` so nothing is lost.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use directory::{Dn, Entry, Value};
use serde_json::{Value as Json, json};

pub fn entry_to_json(e: &Entry) -> Json {
    let attrs: Vec<Json> = e
        .attributes()
        .map(|a| {
            let values: Vec<Json> = a
                .values
                .iter()
                .map(|v| match v {
                    Value::Text(t) => json!(t),
                    Value::Binary(b) => json!({"b64": STANDARD.encode(b)}),
                })
                .collect();
            json!([a.name, values])
        })
        .collect();
    json!({"dn": e.dn.to_string(), "attrs": attrs})
}

pub fn entry_from_json(text: &str) -> Option<Entry> {
    let v: Json = serde_json::from_str(text).ok()?;
    let mut e = Entry::new(Dn::parse(v.get("dn")?.as_str()?).ok()?);
    for a in v.get("attrs")?.as_array()? {
        let name = a.get(0)?.as_str()?;
        let mut values = Vec::new();
        for x in a.get(1)?.as_array()? {
            values.push(match x {
                Json::String(s) => Value::Text(s.clone()),
                other => Value::Binary(STANDARD.decode(other.get("b64")?.as_str()?).ok()?),
            });
        }
        e.set(name, values);
    }
    Some(e)
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
        let back = entry_from_json(&entry_to_json(&e).to_string());
        assert_eq!(back, Some(e));
    }
}
