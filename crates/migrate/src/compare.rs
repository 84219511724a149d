//! `idbridge migrate compare`: what Connect is about to export against what
//! idbridge would export, for the same objects, matched by sourceAnchor
//! (Connect's `sourceAnchor` is the tenant's immutableId and the resource's
//! `externalId`).
//!
//! Connect's side is the file its tools write on a staging server: the XML of
//! `csexport "<Entra ID connector>" export.xml /f:x` (each `cs-object` with its
//! `unapplied-export` delta and the `unapplied-export-hologram`, the object as
//! it will be), or the CSV Microsoft's csanalyzer script makes of that XML
//! (columns ID, Type, DN, operation, UPN, displayName, sourceAnchor, alias,
//! primarySMTP …; any other column named after an Entra ID attribute is
//! compared too). The XML is read as a stream, one object at a time — an
//! export of a large tenant is hundreds of megabytes — with every object,
//! value and nesting level bounded. The CSV reader is ours (RFC 4180, a few
//! lines; bounded like the XML) rather than a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use quick_xml::Reader;
use quick_xml::events::Event;
use serde_json::Value as Json;

/// The most values one object may have, the longest value, the deepest nesting.
const MAX_VALUES: usize = 100_000;
const MAX_VALUE_BYTES: usize = 1 << 20;
const MAX_DEPTH: usize = 32;
const MAX_OBJECTS: usize = 10_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct CompareError {
    pub file: String,
    pub message: String,
}

/// One object Connect is about to export.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectObject {
    pub dn: String,
    /// user, group, contact, device …
    pub object_type: String,
    /// add, replace, update, delete.
    pub operation: String,
    /// Entra ID connector attribute → values, as the object will be.
    pub attributes: BTreeMap<String, Vec<String>>,
}

impl ConnectObject {
    fn anchor(&self) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("sourceAnchor"))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }

    fn label(&self) -> String {
        for key in ["userPrincipalName", "displayName"] {
            if let Some(v) =
                self.attributes.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).and_then(|(_, v)| v.first())
            {
                return v.clone();
            }
        }
        self.dn.clone()
    }
}

/// Reads Connect's file: XML when it starts with `<`, CSV otherwise.
pub fn read_connect_file(name: &str, bytes: &[u8]) -> Result<Vec<ConnectObject>, CompareError> {
    let err = |message: String| CompareError { file: name.to_string(), message };
    let text = std::str::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('<') { read_xml(text).map_err(err) } else { read_csv(text).map_err(err) }
}

fn read_xml(text: &str) -> Result<Vec<ConnectObject>, String> {
    let mut reader = Reader::from_str(text);
    let mut path: Vec<String> = Vec::new();
    let mut objects = Vec::new();
    let mut current: Option<ConnectObject> = None;
    let mut attribute: Option<String> = None;
    let mut value: Option<String> = None;
    let mut values = 0usize;
    let attr_of = |e: &quick_xml::events::BytesStart<'_>, key: &str| -> Result<Option<String>, String> {
        for a in e.attributes() {
            let a = a.map_err(|e| format!("malformed XML: {e}"))?;
            if a.key.as_ref() == key.as_bytes() {
                return a.unescape_value().map(|v| Some(v.into_owned())).map_err(|e| format!("malformed XML: {e}"));
            }
        }
        Ok(None)
    };
    loop {
        let event =
            reader.read_event().map_err(|e| format!("malformed XML at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::DocType(_) => return Err("a DOCTYPE is not accepted".into()),
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).to_string();
                if path.len() >= MAX_DEPTH {
                    return Err(format!("nested more than {MAX_DEPTH} levels deep"));
                }
                match name.as_str() {
                    "cs-object" => {
                        current = Some(ConnectObject {
                            object_type: attr_of(&e, "object-type")?.unwrap_or_default(),
                            ..ConnectObject::default()
                        });
                        values = 0;
                    }
                    "delta" if path.last().is_some_and(|p| p == "unapplied-export") => {
                        if let Some(o) = current.as_mut() {
                            o.operation = attr_of(&e, "operation")?.unwrap_or_default();
                            o.dn = attr_of(&e, "dn")?.unwrap_or_default();
                        }
                    }
                    "attr" | "dn-attr" if path.iter().any(|p| p == "unapplied-export-hologram") => {
                        attribute = attr_of(&e, "name")?;
                    }
                    "value" if attribute.is_some() => value = Some(String::new()),
                    _ => {}
                }
                path.push(name);
            }
            Event::Empty(e) => {
                if e.local_name().as_ref() == b"delta"
                    && path.last().is_some_and(|p| p == "unapplied-export")
                    && let Some(o) = current.as_mut()
                {
                    o.operation = attr_of(&e, "operation")?.unwrap_or_default();
                    o.dn = attr_of(&e, "dn")?.unwrap_or_default();
                }
            }
            Event::Text(t) => {
                if let Some(v) = value.as_mut() {
                    let piece = t.decode().map_err(|e| format!("malformed XML: {e}"))?;
                    v.push_str(&piece);
                    if v.len() > MAX_VALUE_BYTES {
                        return Err(format!("a value longer than {MAX_VALUE_BYTES} bytes"));
                    }
                }
            }
            Event::GeneralRef(r) => {
                if let Some(v) = value.as_mut() {
                    let name = std::str::from_utf8(r.as_ref()).map_err(|_| "a reference is not UTF-8".to_string())?;
                    let reference = format!("&{name};");
                    let text = quick_xml::escape::unescape(&reference)
                        .map_err(|e| format!("malformed XML: reference {reference}: {e}"))?;
                    v.push_str(&text);
                }
            }
            Event::CData(t) => {
                if let Some(v) = value.as_mut() {
                    v.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::End(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).to_string();
                path.pop();
                match name.as_str() {
                    "value" => {
                        if let (Some(v), Some(a), Some(o)) = (value.take(), attribute.as_ref(), current.as_mut()) {
                            values += 1;
                            if values > MAX_VALUES {
                                return Err(format!("an object with more than {MAX_VALUES} values"));
                            }
                            o.attributes.entry(a.clone()).or_default().push(v);
                        }
                    }
                    "attr" | "dn-attr" => attribute = None,
                    "cs-object" => {
                        if let Some(o) = current.take() {
                            objects.push(o);
                            if objects.len() > MAX_OBJECTS {
                                return Err(format!("more than {MAX_OBJECTS} objects"));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !path.is_empty() {
        return Err(format!("the file ends inside <{}>", path.join("><")));
    }
    Ok(objects)
}

/// RFC 4180 records (quoted fields, doubled quotes, CRLF or LF).
fn csv_records(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if field.len() > MAX_VALUE_BYTES {
            return Err(format!("a field longer than {MAX_VALUE_BYTES} bytes"));
        }
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => record.push(std::mem::take(&mut field)),
            ('\r', false) => {}
            ('\n', false) => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                if records.len() > MAX_OBJECTS {
                    return Err(format!("more than {MAX_OBJECTS} rows"));
                }
            }
            (other, _) => field.push(other),
        }
    }
    if quoted {
        return Err("the file ends inside a quoted field".into());
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

fn read_csv(text: &str) -> Result<Vec<ConnectObject>, String> {
    let mut records = csv_records(text)?.into_iter();
    let header = records.next().ok_or("the file is empty")?;
    let find = |name: &str| header.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
    if find("sourceAnchor").is_none() {
        return Err(format!(
            "no sourceAnchor column (found: {}); give csexport's XML, or the CSV Microsoft's csanalyzer script writes",
            header.join(", ")
        ));
    }
    let mut objects = Vec::new();
    for (n, row) in records.enumerate() {
        if row.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if row.len() != header.len() {
            return Err(format!("row {} has {} fields, the header {}", n + 2, row.len(), header.len()));
        }
        let mut o = ConnectObject::default();
        for (h, v) in header.iter().zip(row) {
            let h = h.trim();
            match h.to_ascii_lowercase().as_str() {
                "id" => {}
                "type" => o.object_type = v,
                "dn" => o.dn = v,
                "operation" => o.operation = v,
                _ if v.is_empty() => {}
                "upn" => {
                    o.attributes.insert("userPrincipalName".into(), vec![v]);
                }
                "primarysmtp" => {
                    o.attributes.insert("mail".into(), vec![v]);
                }
                _ => {
                    o.attributes.insert(h.to_string(), vec![v]);
                }
            }
        }
        objects.push(o);
    }
    Ok(objects)
}

/// What idbridge would export for one object (a pending create or update).
#[derive(Debug, Clone, PartialEq)]
pub struct Ours {
    /// user, group, contact.
    pub kind: String,
    /// The resource's attributes idbridge would send (externalId = the sourceAnchor).
    pub resource: Json,
}

/// One attribute on which the two disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub object: String,
    pub attribute: String,
    pub path: String,
    pub connect: String,
    pub idbridge: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Comparison {
    /// Objects in both, by sourceAnchor.
    pub matched: usize,
    /// Attribute values compared, and how many were equal.
    pub compared: usize,
    pub equal: usize,
    pub differences: Vec<Difference>,
    /// Objects Connect exports that idbridge would not: (label, operation, why).
    pub only_connect: Vec<(String, String, String)>,
    /// idbridge's pending exports the file does not mention.
    pub only_idbridge: usize,
    /// Connect attributes with no counterpart in the tenant (not compared).
    pub not_compared: BTreeSet<String>,
}

fn texts(v: &Json) -> Vec<String> {
    match v {
        Json::Null => Vec::new(),
        Json::String(s) => vec![s.clone()],
        Json::Bool(b) => vec![b.to_string()],
        Json::Number(n) => vec![n.to_string()],
        Json::Array(items) => items.iter().flat_map(texts).collect(),
        other => vec![other.to_string()],
    }
}

fn same(connect: &[String], ours: &[String]) -> bool {
    let norm = |v: &[String]| -> BTreeSet<String> {
        v.iter()
            .map(|s| {
                if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") {
                    s.to_ascii_lowercase()
                } else {
                    s.clone()
                }
            })
            .collect()
    };
    norm(connect) == norm(ours)
}

pub fn compare(connect: &[ConnectObject], ours: &[Ours]) -> Comparison {
    let mut result = Comparison::default();
    let by_anchor: BTreeMap<&str, &Ours> =
        ours.iter().filter_map(|o| Some((o.resource.get("externalId")?.as_str()?, o))).collect();
    let mut seen = BTreeSet::new();
    for c in connect {
        let label = c.label();
        let Some(anchor) = c.anchor() else {
            result.only_connect.push((label, c.operation.clone(), "no sourceAnchor in the file".into()));
            continue;
        };
        let deleting = c.operation.eq_ignore_ascii_case("delete");
        let Some(mine) = by_anchor.get(anchor) else {
            if !deleting {
                result.only_connect.push((
                    label,
                    c.operation.clone(),
                    "idbridge would not export it (out of scope, filtered, or not imported)".into(),
                ));
            }
            continue;
        };
        seen.insert(anchor.to_string());
        result.matched += 1;
        if deleting {
            result.only_connect.push((
                label,
                c.operation.clone(),
                "Connect deletes it; idbridge would export it".into(),
            ));
            continue;
        }
        for (attribute, values) in &c.attributes {
            if attribute.eq_ignore_ascii_case("sourceAnchor") {
                continue;
            }
            let Some(path) = crate::names::scim_path(&c.object_type, attribute) else {
                result.not_compared.insert(attribute.clone());
                continue;
            };
            let theirs = sync::outbound::ScimPath::parse_any(&path)
                .ok()
                .and_then(|p| p.get(&mine.resource))
                .unwrap_or(Json::Null);
            let ours_text = texts(&theirs);
            result.compared += 1;
            if same(values, &ours_text) {
                result.equal += 1;
            } else {
                result.differences.push(Difference {
                    object: label.clone(),
                    attribute: attribute.clone(),
                    path,
                    connect: values.join("; "),
                    idbridge: if ours_text.is_empty() { "(none)".into() } else { ours_text.join("; ") },
                });
            }
        }
    }
    result.only_idbridge = by_anchor.keys().filter(|a| !seen.contains(**a)).count();
    result
}

impl Comparison {
    /// Whether the two would export the same for every object the file names.
    pub fn agrees(&self) -> bool {
        self.differences.is_empty() && self.only_connect.is_empty()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} objects in both; {} attribute values compared, {} equal, {} different.",
            self.matched,
            self.compared,
            self.equal,
            self.differences.len()
        );
        if !self.differences.is_empty() {
            let _ = writeln!(out, "\nDifferent (object, Entra ID attribute → tenant path: Connect | idbridge):");
            for d in &self.differences {
                let _ =
                    writeln!(out, "  {}  {} → {}: {:?} | {:?}", d.object, d.attribute, d.path, d.connect, d.idbridge);
            }
        }
        if !self.only_connect.is_empty() {
            let _ = writeln!(out, "\nOnly Connect exports these:");
            for (label, op, why) in &self.only_connect {
                let _ = writeln!(out, "  {label} ({op}): {why}");
            }
        }
        if self.only_idbridge > 0 {
            let _ = writeln!(
                out,
                "\n{} objects idbridge would export are not in the file (Connect has nothing pending for them).",
                self.only_idbridge
            );
        }
        if !self.not_compared.is_empty() {
            let list: Vec<&str> = self.not_compared.iter().map(String::as_str).collect();
            let _ = writeln!(out, "\nNot compared (no counterpart in the tenant): {}", list.join(", "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const XML: &str = r#"<?xml version="1.0" encoding="UTF-16" ?>
<cs-objects>
 <cs-object cs-dn="CN={A1}" id="{A1}" object-type="user">
  <unapplied-export>
   <delta operation="add" dn="CN={A1}">
    <anchor encoding="base64">QQ==</anchor>
   </delta>
  </unapplied-export>
  <unapplied-export-hologram>
   <entry dn="CN={A1}">
    <attr name="displayName" type="string" multivalued="false"><value>Anna M&#252;ller</value></attr>
    <attr name="userPrincipalName" type="string" multivalued="false"><value>anna@example.test</value></attr>
    <attr name="sourceAnchor" type="string" multivalued="false"><value>AAAA</value></attr>
    <attr name="accountEnabled" type="boolean" multivalued="false"><value>true</value></attr>
    <attr name="title" type="string" multivalued="false"><value>Engineer</value></attr>
    <attr name="proxyAddresses" type="string" multivalued="true"><value>SMTP:anna@example.test</value><value>smtp:a@example.test</value></attr>
    <attr name="msExchMailboxGuid" type="binary" multivalued="false"><value>AQID</value></attr>
   </entry>
  </unapplied-export-hologram>
 </cs-object>
 <cs-object cs-dn="CN={B2}" id="{B2}" object-type="user">
  <unapplied-export><delta operation="delete" dn="CN={B2}"/></unapplied-export>
  <unapplied-export-hologram><entry dn="CN={B2}"><attr name="sourceAnchor"><value>BBBB</value></attr></entry></unapplied-export-hologram>
 </cs-object>
 <cs-object cs-dn="CN={C3}" id="{C3}" object-type="group">
  <unapplied-export><delta operation="add" dn="CN={C3}"/></unapplied-export>
  <unapplied-export-hologram><entry dn="CN={C3}"><attr name="sourceAnchor"><value>CCCC</value></attr><attr name="displayName"><value>Équipe</value></attr></entry></unapplied-export-hologram>
 </cs-object>
</cs-objects>"#;

    fn ours() -> Vec<Ours> {
        vec![
            Ours {
                kind: "user".into(),
                resource: json!({"externalId": "AAAA", "displayName": "Anna Müller", "userName": "anna@example.test",
                    "active": true, "title": "Engineer (contractor)",
                    "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object": {"proxyAddresses": ["smtp:a@example.test", "SMTP:anna@example.test"]}}),
            },
            Ours { kind: "user".into(), resource: json!({"externalId": "DDDD", "displayName": "Dora"}) },
        ]
    }

    #[test]
    fn csexport_xml_is_compared_attribute_by_attribute() {
        let connect = read_connect_file("export.xml", XML.as_bytes()).unwrap();
        assert_eq!(connect.len(), 3);
        assert_eq!(connect[0].operation, "add");
        assert_eq!(connect[0].attributes["displayName"], vec!["Anna Müller"]);
        assert_eq!(connect[1].operation, "delete");
        let c = compare(&connect, &ours());
        assert_eq!((c.matched, c.compared, c.equal), (1, 5, 4), "{c:?}");
        assert_eq!(c.differences.len(), 1);
        let d = &c.differences[0];
        assert_eq!(
            (d.attribute.as_str(), d.path.as_str(), d.connect.as_str(), d.idbridge.as_str()),
            ("title", "title", "Engineer", "Engineer (contractor)")
        );
        assert_eq!(
            c.only_connect.len(),
            1,
            "the group idbridge would not export; the delete of an object it has not is agreement"
        );
        assert_eq!(c.only_idbridge, 1);
        assert!(c.not_compared.contains("msExchMailboxGuid"));
        assert!(!c.agrees());
        let text = c.render();
        assert!(text.contains("anna@example.test  title → title: \"Engineer\" | \"Engineer (contractor)\""), "{text}");
    }

    #[test]
    fn csanalyzer_csv_is_read_too() {
        let csv = "\u{feff}\"ID\",\"Type\",\"DN\",\"operation\",\"UPN\",\"displayName\",\"sourceAnchor\",\"alias\",\"primarySMTP\"\r\n\
                   \"{A1}\",\"user\",\"CN={A1}\",\"add\",\"anna@example.test\",\"Anna \"\"Ann\"\" Müller\",\"AAAA\",\"\",\"anna@example.test\"\r\n";
        let connect = read_connect_file("processedusers1.csv", csv.as_bytes()).unwrap();
        assert_eq!(connect.len(), 1);
        assert_eq!(connect[0].attributes["displayName"], vec!["Anna \"Ann\" Müller"]);
        assert_eq!(connect[0].attributes["userPrincipalName"], vec!["anna@example.test"]);
        let c = compare(&connect, &ours());
        assert_eq!(c.differences.len(), 2, "displayName and mail differ: {c:?}");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (name, text, says) in [
            ("a.xml", "<cs-objects><cs-object object-type=\"user\"><unapplied-export-hologram>", "ends inside"),
            ("a.xml", "<!DOCTYPE x [<!ENTITY e \"z\">]><cs-objects/>", "DOCTYPE"),
            ("a.csv", "ID,Type\n1,user\n", "no sourceAnchor column"),
            ("a.csv", "sourceAnchor,displayName\n\"AAAA,x\n", "quoted field"),
            ("a.csv", "sourceAnchor,displayName\nAAAA\n", "row 2 has 1 fields"),
            ("a.csv", "", "empty"),
        ] {
            let e = read_connect_file(name, text.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with(name) && e.contains(says), "{text:?}: {e}");
        }
        let deep = format!("<cs-objects>{}", "<x>".repeat(MAX_DEPTH + 1));
        assert!(read_connect_file("d.xml", deep.as_bytes()).unwrap_err().to_string().contains("nested"));
        assert!(read_connect_file("b.xml", &[0xff, 0xfe]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        #[test]
        fn hostile_files_never_panic(text in "\\PC{0,400}", at in 0usize..1200) {
            let cut = XML.char_indices().map(|(i, _)| i).take_while(|i| *i <= at).last().unwrap_or(0);
            let mixed = format!("{}{text}{}", XML.get(..cut).unwrap_or(""), XML.get(cut..).unwrap_or(""));
            let _ = read_connect_file("x.xml", mixed.as_bytes());
            let _ = read_connect_file("x.csv", format!("sourceAnchor,{text}\n{text}").as_bytes());
        }
    }
}
