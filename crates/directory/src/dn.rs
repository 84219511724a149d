//! Distinguished names per RFC 4514: parsing, escaping, normalisation and tree relations.
#![deny(clippy::indexing_slicing)]

use std::fmt;
use std::hash::{Hash, Hasher};

/// Why a string is not a valid distinguished name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DN {input:?} at character {position}: {reason}")]
pub struct DnError {
    pub input: String,
    pub position: usize,
    pub reason: &'static str,
}

/// The value half of an attribute-value assertion inside an RDN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdnValue {
    /// An ordinary (UTF-8) string value.
    Text(String),
    /// A `#`-prefixed hex value: the BER encoding of the value, kept as bytes.
    Ber(Vec<u8>),
}

/// One `type=value` pair of an RDN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ava {
    /// The attribute type as written (descriptor or numeric OID).
    pub attr: String,
    pub value: RdnValue,
}

/// A relative distinguished name: one or more AVAs joined by `+`.
#[derive(Debug, Clone)]
pub struct Rdn {
    avas: Vec<Ava>,
}

/// A distinguished name; `rdns()[0]` is the leftmost (most specific) RDN.
///
/// Equality and hashing use the normalised form: attribute types compare
/// case-insensitively, values case-insensitively with insignificant spaces
/// collapsed, and the AVAs of a multi-valued RDN in any order.
#[derive(Debug, Clone, Default)]
pub struct Dn {
    rdns: Vec<Rdn>,
}

impl Ava {
    pub fn new(attr: impl Into<String>, value: impl Into<String>) -> Self {
        Ava { attr: attr.into(), value: RdnValue::Text(value.into()) }
    }

    /// The text value, if this AVA holds text.
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            RdnValue::Text(s) => Some(s),
            RdnValue::Ber(_) => None,
        }
    }

    fn normalized(&self) -> String {
        let mut out = String::new();
        self.push_normalized(&mut out);
        out
    }

    /// Appends `type=value`: [`normalize_attr_type`], then the value as
    /// [`escape_value`] of [`normalize_value`] writes it, in one pass.
    fn push_normalized(&self, out: &mut String) {
        out.extend(attr_type_unprefixed(&self.attr).chars().map(|c| c.to_ascii_lowercase()));
        out.push('=');
        match &self.value {
            RdnValue::Text(s) => {
                // The normalised value has no space at either end, so only
                // `#` at the start is escaped for its place.
                let mut first = true;
                for (n, word) in s.split_whitespace().enumerate() {
                    if n > 0 {
                        out.push(' ');
                    }
                    for c in word.chars().flat_map(char::to_lowercase) {
                        match c {
                            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                                out.push('\\');
                                out.push(c);
                            }
                            '#' if first => out.push_str("\\#"),
                            '\0' => out.push_str("\\00"),
                            _ => out.push(c),
                        }
                        first = false;
                    }
                }
            }
            RdnValue::Ber(b) => {
                out.push('#');
                push_hex(b, out);
            }
        }
    }
}

impl Rdn {
    /// An RDN of one AVA.
    pub fn single(attr: impl Into<String>, value: impl Into<String>) -> Self {
        Rdn { avas: vec![Ava::new(attr, value)] }
    }

    /// An RDN from several AVAs; `None` if `avas` is empty.
    pub fn from_avas(avas: Vec<Ava>) -> Option<Self> {
        if avas.is_empty() { None } else { Some(Rdn { avas }) }
    }

    pub fn avas(&self) -> &[Ava] {
        &self.avas
    }

    /// The value of the AVA whose type is `attr` (case-insensitive).
    pub fn value_of(&self, attr: &str) -> Option<&str> {
        self.avas.iter().find(|a| a.attr.eq_ignore_ascii_case(attr)).and_then(Ava::text)
    }

    /// The normalised form: AVAs sorted so that `a=1+b=2` equals `b=2+a=1`.
    pub fn normalized(&self) -> String {
        let mut out = String::new();
        self.push_normalized(&mut out);
        out
    }

    fn push_normalized(&self, out: &mut String) {
        match self.avas.as_slice() {
            [one] => one.push_normalized(out),
            avas => {
                let mut parts: Vec<String> = avas.iter().map(Ava::normalized).collect();
                parts.sort();
                out.push_str(&parts.join("+"));
            }
        }
    }
}

impl PartialEq for Rdn {
    fn eq(&self, other: &Self) -> bool {
        self.normalized() == other.normalized()
    }
}
impl Eq for Rdn {}

impl fmt::Display for Rdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ava) in self.avas.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            match &ava.value {
                RdnValue::Text(s) => write!(f, "{}={}", ava.attr, escape_value(s))?,
                RdnValue::Ber(b) => write!(f, "{}=#{}", ava.attr, hex(b))?,
            }
        }
        Ok(())
    }
}

impl Dn {
    /// The empty DN (the root DSE).
    pub fn root() -> Self {
        Dn { rdns: Vec::new() }
    }

    pub fn from_rdns(rdns: Vec<Rdn>) -> Self {
        Dn { rdns }
    }

    /// Parses an RFC 4514 string. Also accepts the common lenient forms: spaces
    /// around `,` `+` `=` and `;` as a separator (RFC 2253 §4 / LDAPv2).
    pub fn parse(input: &str) -> Result<Self, DnError> {
        Parser { input, bytes: input.as_bytes(), pos: 0 }.dn()
    }

    pub fn rdns(&self) -> &[Rdn] {
        &self.rdns
    }

    /// The leftmost RDN, or `None` for the root DN.
    pub fn rdn(&self) -> Option<&Rdn> {
        self.rdns.first()
    }

    pub fn is_root(&self) -> bool {
        self.rdns.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rdns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rdns.is_empty()
    }

    /// The parent DN; `None` for the root DN.
    pub fn parent(&self) -> Option<Dn> {
        self.rdns.get(1..).map(|rest| Dn { rdns: rest.to_vec() })
    }

    /// True if `self` lies strictly below `ancestor`.
    pub fn is_descendant_of(&self, ancestor: &Dn) -> bool {
        self.rdns.len() > ancestor.rdns.len() && self.ends_with(ancestor)
    }

    /// True if `self` is `other` or lies below it (LDAP subtree scope).
    pub fn is_within(&self, other: &Dn) -> bool {
        self.rdns.len() >= other.rdns.len() && self.ends_with(other)
    }

    pub fn is_ancestor_of(&self, descendant: &Dn) -> bool {
        descendant.is_descendant_of(self)
    }

    /// True if `self` is the immediate parent of `child`.
    pub fn is_parent_of(&self, child: &Dn) -> bool {
        child.rdns.len() == self.rdns.len() + 1 && child.ends_with(self)
    }

    fn ends_with(&self, suffix: &Dn) -> bool {
        let skip = self.rdns.len() - suffix.rdns.len().min(self.rdns.len());
        self.rdns.iter().skip(skip).zip(&suffix.rdns).all(|(a, b)| a == b)
    }

    /// This DN with a new leftmost RDN and optionally a new parent (a modrdn/move).
    pub fn renamed(&self, new_rdn: Rdn, new_parent: Option<&Dn>) -> Dn {
        let parent = match new_parent {
            Some(p) => p.clone(),
            None => self.parent().unwrap_or_default(),
        };
        let mut rdns = Vec::with_capacity(parent.rdns.len() + 1);
        rdns.push(new_rdn);
        rdns.extend(parent.rdns);
        Dn { rdns }
    }

    /// `self` moved from below `old_base` to below `new_base` (for subtree moves).
    pub fn rebased(&self, old_base: &Dn, new_base: &Dn) -> Option<Dn> {
        if !self.is_within(old_base) {
            return None;
        }
        let keep = self.rdns.len() - old_base.rdns.len();
        let mut rdns = self.rdns.get(..keep).unwrap_or_default().to_vec();
        rdns.extend(new_base.rdns.iter().cloned());
        Some(Dn { rdns })
    }

    /// A child of this DN.
    pub fn child(&self, rdn: Rdn) -> Dn {
        let mut rdns = Vec::with_capacity(self.rdns.len() + 1);
        rdns.push(rdn);
        rdns.extend(self.rdns.iter().cloned());
        Dn { rdns }
    }

    /// The canonical comparison key (see the type's documentation).
    ///
    /// Written into one string: DNs are normalised for every store lookup
    /// and index key, so the per-part strings this once joined were a
    /// measurable share of a large sync.
    pub fn normalized(&self) -> String {
        let mut out = String::with_capacity(self.rdns.len() * 16);
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            rdn.push_normalized(&mut out);
        }
        out
    }
}

impl PartialEq for Dn {
    fn eq(&self, other: &Self) -> bool {
        self.rdns.len() == other.rdns.len() && self.rdns.iter().zip(&other.rdns).all(|(a, b)| a == b)
    }
}
impl Eq for Dn {}

impl Hash for Dn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.normalized().hash(state);
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{rdn}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Dn {
    type Err = DnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dn::parse(s)
    }
}

/// Lower-cases a descriptor and drops an `oid.` prefix on a numeric OID.
pub fn normalize_attr_type(attr: &str) -> String {
    attr_type_unprefixed(attr).to_ascii_lowercase()
}

/// The attribute type trimmed, without an `oid.` prefix (any case).
fn attr_type_unprefixed(attr: &str) -> &str {
    let attr = attr.trim();
    match (attr.get(..4), attr.get(4..)) {
        (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("oid.") => rest,
        _ => attr,
    }
}

/// caseIgnoreMatch-style normalisation: lower-case, runs of spaces collapsed, trimmed.
pub fn normalize_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// Escapes an attribute value for use in a DN string (RFC 4514 §2.4).
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(bytes, &mut out);
    out
}

fn push_hex(bytes: &[u8], out: &mut String) {
    for b in bytes {
        out.extend(char::from_digit(u32::from(b >> 4), 16));
        out.extend(char::from_digit(u32::from(b & 15), 16));
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

struct Parser<'a> {
    input: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, reason: &'static str) -> DnError {
        DnError { input: self.input.to_string(), position: self.pos, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn dn(mut self) -> Result<Dn, DnError> {
        let mut rdns = Vec::new();
        self.skip_spaces();
        if self.peek().is_none() {
            return Ok(Dn::root());
        }
        loop {
            rdns.push(self.rdn()?);
            match self.peek() {
                None => break,
                Some(b',' | b';') => {
                    self.pos += 1;
                    self.skip_spaces();
                }
                Some(_) => return Err(self.err("expected ',' between RDNs")),
            }
        }
        Ok(Dn { rdns })
    }

    fn rdn(&mut self) -> Result<Rdn, DnError> {
        let mut avas = vec![self.ava()?];
        while self.peek() == Some(b'+') {
            self.pos += 1;
            self.skip_spaces();
            avas.push(self.ava()?);
        }
        Ok(Rdn { avas })
    }

    fn ava(&mut self) -> Result<Ava, DnError> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                self.pos += 1;
            } else {
                break;
            }
        }
        if self.pos == start {
            return Err(self.err("expected an attribute type"));
        }
        let attr = self.input.get(start..self.pos).unwrap_or_default().to_string();
        if !valid_attr_type(&attr) {
            self.pos = start;
            return Err(self.err("attribute type must be a descriptor or a numeric OID"));
        }
        self.skip_spaces();
        if self.peek() != Some(b'=') {
            return Err(self.err("expected '=' after the attribute type"));
        }
        self.pos += 1;
        self.skip_spaces();
        let value = if self.peek() == Some(b'#') {
            self.pos += 1;
            RdnValue::Ber(self.hex_value()?)
        } else {
            RdnValue::Text(self.string_value()?)
        };
        Ok(Ava { attr, value })
    }

    fn hex_value(&mut self) -> Result<Vec<u8>, DnError> {
        let mut out = Vec::new();
        loop {
            match (self.peek(), self.bytes.get(self.pos + 1).copied()) {
                (Some(h), Some(l)) if hex_digit(h).is_some() && hex_digit(l).is_some() => {
                    out.push(hex_digit(h).unwrap_or(0) << 4 | hex_digit(l).unwrap_or(0));
                    self.pos += 2;
                }
                (Some(h), _) if hex_digit(h).is_some() => {
                    return Err(self.err("odd number of hex digits"));
                }
                _ => break,
            }
        }
        if out.is_empty() {
            return Err(self.err("'#' must be followed by hex digits"));
        }
        self.skip_spaces();
        Ok(out)
    }

    fn string_value(&mut self) -> Result<String, DnError> {
        let mut buf: Vec<u8> = Vec::new();
        // Length of `buf` up to the last escaped or non-space byte: trailing
        // unescaped spaces are insignificant and get trimmed.
        let mut significant = 0;
        while let Some(b) = self.peek() {
            match b {
                b',' | b'+' | b';' => break,
                b'\\' => {
                    self.pos += 1;
                    match self.peek() {
                        Some(h) if hex_digit(h).is_some() => {
                            let l = self.bytes.get(self.pos + 1).copied().and_then(hex_digit);
                            let Some(l) = l else {
                                return Err(self.err("'\\' must be followed by two hex digits or a special character"));
                            };
                            buf.push(hex_digit(h).unwrap_or(0) << 4 | l);
                            self.pos += 2;
                        }
                        Some(c @ (b' ' | b'"' | b'#' | b'+' | b',' | b';' | b'<' | b'=' | b'>' | b'\\')) => {
                            buf.push(c);
                            self.pos += 1;
                        }
                        _ => {
                            return Err(self.err("'\\' must be followed by two hex digits or a special character"));
                        }
                    }
                    significant = buf.len();
                }
                b'"' | b'<' | b'>' => {
                    return Err(self.err("this character must be escaped with '\\'"));
                }
                _ => {
                    buf.push(b);
                    self.pos += 1;
                    if b != b' ' {
                        significant = buf.len();
                    }
                }
            }
        }
        buf.truncate(significant);
        String::from_utf8(buf).map_err(|_| self.err("escaped bytes are not valid UTF-8"))
    }
}

fn valid_attr_type(attr: &str) -> bool {
    let body = attr.strip_prefix("oid.").or_else(|| attr.strip_prefix("OID.")).unwrap_or(attr);
    let mut chars = body.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => body.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        Some(c) if c.is_ascii_digit() => {
            body.split('.').all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()))
        }
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn dn(s: &str) -> Dn {
        match Dn::parse(s) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    /// The normalised form as it was first written (part by part, then
    /// joined): stored keys depend on it, so the one-pass writer must give
    /// the same text for every DN.
    fn normalized_part_by_part(d: &Dn) -> String {
        let ava = |a: &Ava| {
            let attr = normalize_attr_type(&a.attr);
            match &a.value {
                RdnValue::Text(s) => format!("{attr}={}", escape_value(&normalize_value(s))),
                RdnValue::Ber(b) => format!("{attr}=#{}", b.iter().map(|b| format!("{b:02x}")).collect::<String>()),
            }
        };
        let rdn = |r: &Rdn| {
            let mut parts: Vec<String> = r.avas().iter().map(ava).collect();
            parts.sort();
            parts.join("+")
        };
        d.rdns().iter().map(rdn).collect::<Vec<_>>().join(",")
    }

    #[test]
    fn normalised_in_one_pass_as_part_by_part() {
        let types =
            ["cn", "CN", " uid ", "OID.2.5.4.3", "oid.0.9.2342", "Oid.x", "oid", "oi", "dC", "1.3.6.1.4.1.1466.0"];
        let values = [
            "",
            " ",
            "Zoë  Ångström ",
            "#1",
            "=#x",
            "a#b",
            " #lead",
            "İstanbul",
            "ẞtraße",
            "ΣΑΣ ΟΔΟΣ",
            "x\0y",
            "a,b+c;d<e>f\\g\"h",
            "\u{A0}nb\u{2003}sp\u{3000}",
            "\t tab\n",
            "日本 語",
            "#",
            "##",
            "\\#",
            "trailing\\",
            "ǅemal",
            "ﬁle",
            "Ⅻ",
        ];
        let bers: [&[u8]; 3] = [&[], &[0x04, 0x02, 0x48, 0x69], &[0xff, 0x00, 0xab]];
        // A small generator: the same corpus every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % n
        };
        for _ in 0..5_000 {
            let rdns: Vec<Rdn> = (0..1 + next(4))
                .map(|_| {
                    let avas = (0..1 + next(3).saturating_sub(1))
                        .map(|_| {
                            let attr = types[next(types.len())].to_string();
                            let value = if next(8) == 0 {
                                RdnValue::Ber(bers[next(bers.len())].to_vec())
                            } else {
                                RdnValue::Text(values[next(values.len())].to_string())
                            };
                            Ava { attr, value }
                        })
                        .collect();
                    Rdn::from_avas(avas).unwrap()
                })
                .collect();
            let d = Dn::from_rdns(rdns);
            assert_eq!(d.normalized(), normalized_part_by_part(&d), "{d:?}");
        }
        assert_eq!(
            dn("CN=Zoë  Ångström,OID.0.9.2342.19200300.100.1.25=Example").normalized(),
            "cn=zoë ångström,0.9.2342.19200300.100.1.25=example"
        );
    }

    #[test]
    fn parses_escapes_and_multivalued_rdns() {
        let d = dn("cn=Smith\\, John+uid=js,ou=People,dc=example,dc=org");
        assert_eq!(d.len(), 4);
        let rdn = d.rdn().map(|r| r.avas().len());
        assert_eq!(rdn, Some(2));
        assert_eq!(d.rdn().and_then(|r| r.value_of("CN")), Some("Smith, John"));
        assert_eq!(dn("cn=Smith\\2C John,dc=x"), dn("CN=smith\\, john, DC=X"));
        assert_eq!(dn("cn=a+uid=b,dc=x"), dn("uid=b+cn=a,dc=x"));
        assert_eq!(d.to_string(), "cn=Smith\\, John+uid=js,ou=People,dc=example,dc=org");
    }

    #[test]
    fn utf8_and_hex_escaped_utf8() {
        let d = dn("cn=J\\C3\\BCrgen M\\C3\\BCller,dc=x");
        assert_eq!(d.rdn().and_then(|r| r.value_of("cn")), Some("Jürgen Müller"));
        assert_eq!(d, dn("cn=jürgen müller,dc=x"));
        assert!(Dn::parse("cn=\\C3,dc=x").is_err());
    }

    #[test]
    fn ber_values_and_leading_hash() {
        let d = dn("1.3.6.1.4.1.1466.0=#04024869,dc=x");
        assert_eq!(d.rdn().map(|r| r.avas()[0].value.clone()), Some(RdnValue::Ber(vec![4, 2, 0x48, 0x69])));
        let escaped = Dn::from_rdns(vec![Rdn::single("cn", "#1 ")]);
        assert_eq!(escaped.to_string(), "cn=\\#1\\ ");
        assert_eq!(dn(&escaped.to_string()), escaped);
        assert_eq!(dn(&escaped.to_string()).rdn().and_then(|r| r.value_of("cn")), Some("#1 "));
    }

    #[test]
    fn tree_relations_and_rename() {
        let base = dn("dc=example,dc=org");
        let ou = dn("ou=People,dc=example,dc=org");
        let user = dn("cn=a,ou=people,DC=Example,dc=org");
        assert!(base.is_ancestor_of(&user));
        assert!(ou.is_parent_of(&user));
        assert!(!base.is_parent_of(&user));
        assert!(user.is_within(&user));
        assert!(!user.is_descendant_of(&user));
        assert_eq!(user.parent(), Some(ou.clone()));
        let moved = user.renamed(Rdn::single("cn", "b"), Some(&base));
        assert_eq!(moved, dn("cn=b,dc=example,dc=org"));
        assert_eq!(user.rebased(&ou, &dn("ou=Staff,dc=example,dc=org")), Some(dn("cn=a,ou=Staff,dc=example,dc=org")));
        assert!(Dn::parse("").map(|d| d.is_root()).unwrap_or(false));
    }

    #[test]
    fn rejects_garbage_with_position() {
        for bad in ["cn", "=x", "cn=a,", "cn=a\\", "cn=a\\zz", "cn=a\"b", "c n=a", "#=x", "cn=#0", "cn=#abc"] {
            assert!(Dn::parse(bad).is_err(), "{bad} should fail");
        }
        let err = Dn::parse("cn=a,,dc=x").err().map(|e| e.position);
        assert_eq!(err, Some(5));
    }
}
