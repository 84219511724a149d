//! Just enough XML for SAML and for Connect's exported configuration: a
//! small tree built with `quick-xml` (DTDs and entity declarations refused), namespaces resolved, and Exclusive XML
//! Canonicalization 1.0 (without comments) of a subtree, with an element
//! left out (the enveloped signature) and an InclusiveNamespaces prefix list.
//!
//! The input is hostile (anyone can post a SAMLResponse): the document's
//! size, depth, element count, attributes per element and namespace
//! declarations are bounded, namespace scopes are shared between elements
//! (not copied into each), and nothing recurses on the tree — building,
//! canonicalising and dropping it are loops.
#![deny(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;

/// Bounds for one document. A real SAML response is a few kilobytes, about
/// 10 levels deep, with well under a hundred elements.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_elements: usize,
    pub max_attributes: usize,
    pub max_namespace_declarations: usize,
}

pub const LIMITS: Limits = Limits {
    max_bytes: 256 << 10,
    max_depth: 64,
    max_elements: 4096,
    max_attributes: 64,
    max_namespace_declarations: 256,
};

use quick_xml::Reader;
use quick_xml::events::Event;

/// An element. Children are kept in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub prefix: String,
    pub local: String,
    /// The namespace URI of the element ("" for none).
    pub ns: String,
    /// (prefix, local name, namespace URI, value), as written (values unescaped).
    pub attrs: Vec<(String, String, String, String)>,
    /// Namespace declarations on this element: prefix ("" = default) → URI.
    pub decls: Vec<(String, String)>,
    /// Every namespace binding in scope here (declarations of ancestors
    /// included); shared with the parent when this element declares none.
    pub scope: Arc<BTreeMap<String, String>>,
    pub children: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed XML: {0}")]
pub struct XmlError(pub String);

fn bad(what: impl Into<String>) -> XmlError {
    XmlError(what.into())
}

/// The whole attribute value normalisation of XML 1.0 §3.3.3 for CDATA
/// attributes, then entity and character references.
fn attribute_value(raw: &[u8]) -> Result<String, XmlError> {
    let text = std::str::from_utf8(raw).map_err(|_| bad("an attribute value is not UTF-8"))?;
    let spaced: String = text.chars().map(|c| if matches!(c, '\t' | '\n' | '\r') { ' ' } else { c }).collect();
    quick_xml::escape::unescape(&spaced).map(|c| c.into_owned()).map_err(|e| bad(format!("attribute value: {e}")))
}

/// Every element node is dropped in a loop: a deep tree cannot overflow the
/// stack on the way out.
impl Drop for Element {
    fn drop(&mut self) {
        let mut pending = std::mem::take(&mut self.children);
        while let Some(node) = pending.pop() {
            if let Node::Element(mut e) = node {
                pending.append(&mut e.children);
            }
        }
    }
}

/// Text escaped for element content and attribute values (`& < > " '`).
pub fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

/// Parses a document within [`LIMITS`]. DOCTYPE (and so any entity
/// declaration) is refused.
pub fn parse(text: &str) -> Result<Element, XmlError> {
    parse_within(text, &LIMITS)
}

pub fn parse_within(text: &str, limits: &Limits) -> Result<Element, XmlError> {
    if text.len() > limits.max_bytes {
        return Err(bad(format!("the document is larger than {} bytes", limits.max_bytes)));
    }
    // XML 1.0 §2.11: line ends become LF before anything else.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut reader = Reader::from_str(&text);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Element> = Vec::new();
    let mut root = None;
    let (mut elements, mut declarations) = (0usize, 0usize);
    let mut count = |e: &Element| -> Result<(), XmlError> {
        elements += 1;
        declarations += e.decls.len();
        if elements > limits.max_elements {
            return Err(bad(format!("more than {} elements", limits.max_elements)));
        }
        if declarations > limits.max_namespace_declarations {
            return Err(bad(format!("more than {} namespace declarations", limits.max_namespace_declarations)));
        }
        Ok(())
    };
    loop {
        let event = reader.read_event().map_err(|e| bad(e.to_string()))?;
        match event {
            Event::DocType(_) => return Err(bad("a DOCTYPE is not accepted")),
            Event::Start(e) => {
                if stack.len() >= limits.max_depth {
                    return Err(bad(format!("elements nested deeper than {}", limits.max_depth)));
                }
                let element = open(&e, stack.last(), limits)?;
                count(&element)?;
                stack.push(element);
            }
            Event::Empty(e) => {
                let element = open(&e, stack.last(), limits)?;
                count(&element)?;
                close(&mut stack, &mut root, element)?;
            }
            Event::End(_) => {
                let element = stack.pop().ok_or_else(|| bad("an end tag without a start"))?;
                close(&mut stack, &mut root, element)?;
            }
            Event::Text(t) => {
                let raw = std::str::from_utf8(t.as_ref()).map_err(|_| bad("text is not UTF-8"))?;
                let text = quick_xml::escape::unescape(raw).map_err(|e| bad(format!("text: {e}")))?.into_owned();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Text(text)),
                    None if text.trim().is_empty() => {}
                    None => return Err(bad("text outside the root element")),
                }
            }
            Event::CData(c) => {
                let text = std::str::from_utf8(c.as_ref()).map_err(|_| bad("CDATA is not UTF-8"))?.to_string();
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(Node::Text(text));
                }
            }
            Event::GeneralRef(r) => {
                let name = std::str::from_utf8(r.as_ref()).map_err(|_| bad("a reference is not UTF-8"))?;
                let text = quick_xml::escape::unescape(&format!("&{name};"))
                    .map_err(|e| bad(format!("reference &{name};: {e}")))?
                    .into_owned();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Text(text)),
                    None => return Err(bad("a reference outside the root element")),
                }
            }
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(bad("the document ends inside an element"));
    }
    root.ok_or_else(|| bad("no root element"))
}

/// An element from its start tag, in the scope of its parent.
fn open(e: &quick_xml::events::BytesStart<'_>, parent: Option<&Element>, limits: &Limits) -> Result<Element, XmlError> {
    let qname = std::str::from_utf8(e.name().as_ref()).map_err(|_| bad("a name is not UTF-8"))?.to_string();
    let inherited = parent.map(|p| p.scope.clone()).unwrap_or_default();
    let mut scope: Option<BTreeMap<String, String>> = None;
    let mut decls = Vec::new();
    let mut raw_attrs = Vec::new();
    for (n, a) in e.attributes().enumerate() {
        if n >= limits.max_attributes {
            return Err(bad(format!("more than {} attributes on one element", limits.max_attributes)));
        }
        let a = a.map_err(|e| bad(e.to_string()))?;
        let key = std::str::from_utf8(a.key.as_ref()).map_err(|_| bad("a name is not UTF-8"))?.to_string();
        let value = attribute_value(&a.value)?;
        if key == "xmlns" {
            decls.push((String::new(), value.clone()));
            scope.get_or_insert_with(|| (*inherited).clone()).insert(String::new(), value);
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            decls.push((p.to_string(), value.clone()));
            scope.get_or_insert_with(|| (*inherited).clone()).insert(p.to_string(), value);
        } else {
            raw_attrs.push((key, value));
        }
    }
    let scope = scope.map(Arc::new).unwrap_or(inherited);
    let (prefix, local) = split_qname(&qname);
    if !prefix.is_empty() && !scope.contains_key(&prefix) {
        return Err(bad(format!("the prefix {prefix:?} is not declared")));
    }
    let ns = scope.get(&prefix).cloned().unwrap_or_default();
    let mut attrs: Vec<(String, String, String, String)> = Vec::new();
    for (key, value) in raw_attrs {
        let (p, l) = split_qname(&key);
        let uri = if p.is_empty() {
            String::new()
        } else if p == "xml" {
            "http://www.w3.org/XML/1998/namespace".to_string()
        } else {
            scope.get(&p).cloned().ok_or_else(|| bad(format!("the prefix {p:?} is not declared")))?
        };
        if attrs.iter().any(|(_, l2, u2, _)| *l2 == l && *u2 == uri) {
            return Err(bad(format!("attribute {key} twice")));
        }
        attrs.push((p, l, uri, value));
    }
    Ok(Element { prefix, local, ns, attrs, decls, scope, children: Vec::new() })
}

fn close(stack: &mut [Element], root: &mut Option<Element>, element: Element) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(Node::Element(element)),
        None if root.is_none() => *root = Some(element),
        None => return Err(bad("more than one root element")),
    }
    Ok(())
}

fn split_qname(qname: &str) -> (String, String) {
    match qname.split_once(':') {
        Some((p, l)) => (p.to_string(), l.to_string()),
        None => (String::new(), qname.to_string()),
    }
}

impl Element {
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.ns == ns && self.local == local
    }

    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs.iter().find(|(_, l, uri, _)| l == local && uri.is_empty()).map(|(_, _, _, v)| v.as_str())
    }

    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn child(&self, ns: &str, local: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(ns, local))
    }

    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }

    /// Every element of the subtree (this one first), depth first.
    pub fn descendants(&self) -> Vec<&Element> {
        let mut out = vec![self];
        let mut i = 0;
        while let Some(&e) = out.get(i) {
            out.extend(e.elements());
            i += 1;
        }
        out
    }
}

/// Exclusive XML Canonicalization (without comments) of `element`, leaving
/// out the subtree `skip` (compared by address), with `inclusive` prefixes
/// treated as in inclusive canonicalization.
pub fn exc_c14n(element: &Element, skip: Option<&Element>, inclusive: &[String]) -> String {
    // An explicit stack instead of recursion: open an element (its start tag,
    // then its children in order), close it after the last child.
    enum Step<'a> {
        Open(&'a Element, Arc<BTreeMap<String, String>>),
        Text(&'a str),
        Close(&'a Element),
    }
    let mut out = String::new();
    let mut steps = vec![Step::Open(element, Arc::new(BTreeMap::new()))];
    while let Some(step) = steps.pop() {
        match step {
            Step::Text(t) => escape_text(t, &mut out),
            Step::Close(e) => {
                out.push_str("</");
                push_qname(&mut out, &e.prefix, &e.local);
                out.push('>');
            }
            Step::Open(e, rendered) => {
                let now_rendered = write_start_tag(e, inclusive, &rendered, &mut out);
                steps.push(Step::Close(e));
                for child in e.children.iter().rev() {
                    match child {
                        Node::Text(t) => steps.push(Step::Text(t)),
                        Node::Element(c) if skip.is_some_and(|s| std::ptr::eq(s, c)) => {}
                        Node::Element(c) => steps.push(Step::Open(c, now_rendered.clone())),
                    }
                }
            }
        }
    }
    out
}

/// Writes `e`'s start tag; returns the namespace bindings rendered for its children.
fn write_start_tag(
    e: &Element,
    inclusive: &[String],
    rendered: &Arc<BTreeMap<String, String>>,
    out: &mut String,
) -> Arc<BTreeMap<String, String>> {
    // Visibly utilised prefixes (the element's own and its attributes'), plus
    // the inclusive ones in scope.
    let mut wanted: Vec<String> = vec![e.prefix.clone()];
    for (p, _, _, _) in &e.attrs {
        if !p.is_empty() && p != "xml" {
            wanted.push(p.clone());
        }
    }
    for p in inclusive {
        let key = if p == "#default" { String::new() } else { p.clone() };
        if e.scope.contains_key(&key) {
            wanted.push(key);
        }
    }
    wanted.sort();
    wanted.dedup();
    let mut ns_out: Vec<(String, String)> = Vec::new();
    for p in wanted {
        let uri = e.scope.get(&p).cloned().unwrap_or_default();
        let already = rendered.get(&p);
        if p.is_empty() && uri.is_empty() && already.is_none_or(|u| u.is_empty()) {
            continue; // xmlns="" only to undo a rendered default namespace
        }
        if already != Some(&uri) {
            ns_out.push((p, uri));
        }
    }
    out.push('<');
    push_qname(out, &e.prefix, &e.local);
    for (p, uri) in &ns_out {
        if p.is_empty() {
            out.push_str(" xmlns=\"");
        } else {
            out.push_str(" xmlns:");
            out.push_str(p);
            out.push_str("=\"");
        }
        escape_attr(uri, out);
        out.push('"');
    }
    let mut attrs: Vec<&(String, String, String, String)> = e.attrs.iter().collect();
    attrs.sort_by(|a, b| (&a.2, &a.1).cmp(&(&b.2, &b.1)));
    for (p, l, _, v) in attrs {
        out.push(' ');
        push_qname(out, p, l);
        out.push_str("=\"");
        escape_attr(v, out);
        out.push('"');
    }
    out.push('>');
    if ns_out.is_empty() {
        return rendered.clone();
    }
    let mut now = (**rendered).clone();
    now.extend(ns_out);
    Arc::new(now)
}

fn push_qname(out: &mut String, prefix: &str, local: &str) {
    if !prefix.is_empty() {
        out.push_str(prefix);
        out.push(':');
    }
    out.push_str(local);
}

fn escape_attr(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_text(t: &str, out: &mut String) {
    for c in t.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn hostile_shapes_are_refused_without_recursion() {
        let deep = format!("{}{}", "<a>".repeat(200_000), "</a>".repeat(200_000));
        assert!(parse_within(&deep, &Limits { max_bytes: usize::MAX, ..LIMITS }).unwrap_err().0.contains("deeper"));
        assert!(parse(&deep).unwrap_err().0.contains("larger"));
        let wide = format!("<r>{}</r>", "<é/>".repeat(5000));
        assert!(parse(&wide).unwrap_err().0.contains("elements"));
        let attrs: String = (0..100).map(|i| format!(" a{i}=\"ü\"")).collect();
        assert!(parse(&format!("<r{attrs}/>")).unwrap_err().0.contains("attributes"));
        let decls: String = (0..60).map(|i| format!(" xmlns:p{i}=\"urn:{i}\"")).collect();
        let many = format!("<r>{}</r>", format!("<x{decls}/>").repeat(5));
        assert!(parse(&many).unwrap_err().0.contains("namespace"));
        // Within the limits a deep tree is parsed, canonicalised and dropped.
        let ok = format!("{}東{}", "<a xmlns=\"urn:x\">".repeat(60), "</a>".repeat(60));
        let tree = parse(&ok).unwrap();
        assert!(exc_c14n(&tree, None, &[]).contains('東'));
    }

    #[test]
    fn doctype_and_entities_are_refused() {
        let bomb = "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaa\">]><r>&a;</r>";
        assert!(parse(bomb).is_err());
        assert!(parse("<r>&unknown;</r>").is_err());
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a/><b/>").is_err());
    }

    #[test]
    fn exclusive_canonical_form() {
        // From the exc-c14n specification's spirit: unused namespaces dropped,
        // used ones rendered where first used, attributes sorted, empty tags expanded.
        let doc = parse(
            "<n0:a xmlns:n0=\"urn:zero\" xmlns:n1=\"urn:one\" xmlns=\"urn:default\">\r\n  <n1:b z=\"1\" a='x&amp;\ty' n1:c=\"q\"/><c>t &lt; &#x41;</c>\n</n0:a>",
        )
        .unwrap();
        assert_eq!(
            exc_c14n(&doc, None, &[]),
            "<n0:a xmlns:n0=\"urn:zero\">\n  <n1:b xmlns:n1=\"urn:one\" a=\"x&amp; y\" z=\"1\" n1:c=\"q\"></n1:b><c xmlns=\"urn:default\">t &lt; A</c>\n</n0:a>"
        );
        let b = doc.elements().next().unwrap();
        assert_eq!(exc_c14n(b, None, &[]), "<n1:b xmlns:n1=\"urn:one\" a=\"x&amp; y\" z=\"1\" n1:c=\"q\"></n1:b>");
        assert_eq!(
            exc_c14n(b, None, &["n0".to_string()]),
            "<n1:b xmlns:n0=\"urn:zero\" xmlns:n1=\"urn:one\" a=\"x&amp; y\" z=\"1\" n1:c=\"q\"></n1:b>"
        );
        let c = doc.elements().nth(1).unwrap();
        assert_eq!(exc_c14n(c, None, &[]), "<c xmlns=\"urn:default\">t &lt; A</c>");
        assert_eq!(
            exc_c14n(&doc, Some(b), &[]),
            "<n0:a xmlns:n0=\"urn:zero\">\n  <c xmlns=\"urn:default\">t &lt; A</c>\n</n0:a>"
        );
    }
}
