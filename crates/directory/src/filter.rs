//! LDAP search filters (RFC 4515): parse, print, and evaluate against an entry.
#![deny(clippy::indexing_slicing)]

use std::cmp::Ordering;
use std::fmt;

use crate::dn::normalize_value;
use crate::entry::Entry;
use crate::value::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("invalid filter {input:?} at character {position}: {reason}")]
    Syntax { input: String, position: usize, reason: &'static str },
    #[error(
        "extensible match {0:?} cannot be evaluated by idbridge; let the server evaluate it, or use an equality/substring filter"
    )]
    UnsupportedExtensible(String),
}

/// AD's matching rules that compare an integer attribute with a bit mask:
/// every bit of the mask set, or any.
pub const BIT_AND: &str = "1.2.840.113556.1.4.803";
pub const BIT_OR: &str = "1.2.840.113556.1.4.804";

/// A parsed filter. Assertion values are kept as bytes (they may be binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Equality(String, Vec<u8>),
    Substrings { attr: String, initial: Option<Vec<u8>>, any: Vec<Vec<u8>>, last: Option<Vec<u8>> },
    GreaterOrEqual(String, Vec<u8>),
    LessOrEqual(String, Vec<u8>),
    Present(String),
    Approx(String, Vec<u8>),
    Extensible { attr: Option<String>, rule: Option<String>, dn_attrs: bool, value: Vec<u8> },
}

impl Filter {
    /// Parses a filter string. The outer parentheses may be omitted (`cn=x`).
    pub fn parse(input: &str) -> Result<Filter, FilterError> {
        let trimmed = input.trim();
        let owned;
        let text = if trimmed.starts_with('(') {
            trimmed
        } else {
            owned = format!("({trimmed})");
            &owned
        };
        let mut p = Parser { input, bytes: text.as_bytes(), pos: 0, depth: 0 };
        let f = p.filter()?;
        if p.pos != p.bytes.len() {
            return Err(p.err("unexpected text after the filter"));
        }
        Ok(f)
    }

    /// Whether the filter may look at attribute `name` (case-insensitively;
    /// an extensible match on no attribute may look at any).
    pub fn mentions(&self, name: &str) -> bool {
        let mut todo = vec![self];
        while let Some(f) = todo.pop() {
            let attr = match f {
                Filter::And(fs) | Filter::Or(fs) => {
                    todo.extend(fs);
                    continue;
                }
                Filter::Not(f) => {
                    todo.push(f);
                    continue;
                }
                Filter::Extensible { attr: None, .. } => return true,
                Filter::Extensible { attr: Some(a), .. } => a,
                Filter::Equality(a, _)
                | Filter::Substrings { attr: a, .. }
                | Filter::GreaterOrEqual(a, _)
                | Filter::LessOrEqual(a, _)
                | Filter::Present(a)
                | Filter::Approx(a, _) => a,
            };
            if attr.eq_ignore_ascii_case(name) {
                return true;
            }
        }
        false
    }

    /// Evaluates the filter against an entry. Text compares case-insensitively
    /// with insignificant spaces ignored; binary values compare byte for byte;
    /// `>=`/`<=` compare as integers when both sides are integers.
    pub fn matches(&self, entry: &Entry) -> Result<bool, FilterError> {
        Ok(match self {
            Filter::And(fs) => {
                for f in fs {
                    if !f.matches(entry)? {
                        return Ok(false);
                    }
                }
                true
            }
            Filter::Or(fs) => {
                for f in fs {
                    if f.matches(entry)? {
                        return Ok(true);
                    }
                }
                false
            }
            Filter::Not(f) => !f.matches(entry)?,
            Filter::Present(attr) => attr.eq_ignore_ascii_case("objectClass") || entry.has(attr),
            Filter::Equality(attr, v) => entry.values(attr).iter().any(|x| equal(x, v)),
            Filter::Approx(attr, v) => {
                let squash = |b: &[u8]| normalize_value(&String::from_utf8_lossy(b)).replace(' ', "");
                let want = squash(v);
                entry.values(attr).iter().any(|x| squash(x.as_bytes()) == want)
            }
            Filter::GreaterOrEqual(attr, v) => entry.values(attr).iter().any(|x| order(x, v) != Ordering::Less),
            Filter::LessOrEqual(attr, v) => entry.values(attr).iter().any(|x| order(x, v) != Ordering::Greater),
            Filter::Substrings { attr, initial, any, last } => {
                entry.values(attr).iter().any(|x| substrings_match(x, initial.as_deref(), any, last.as_deref()))
            }
            // AD's bitwise matching rules (LDAP_MATCHING_RULE_BIT_AND / _OR),
            // as in (userAccountControl:1.2.840.113556.1.4.803:=2).
            Filter::Extensible { attr: Some(attr), rule: Some(rule), dn_attrs: false, value }
                if rule == BIT_AND || rule == BIT_OR =>
            {
                let Some(mask) = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<i64>().ok()) else {
                    return Err(FilterError::UnsupportedExtensible(self.to_string()));
                };
                entry
                    .values(attr)
                    .iter()
                    .filter_map(|v| v.as_text()?.trim().parse::<i64>().ok())
                    .any(|x| if rule == BIT_AND { x & mask == mask } else { x & mask != 0 })
            }
            Filter::Extensible { .. } => {
                return Err(FilterError::UnsupportedExtensible(self.to_string()));
            }
        })
    }
}

fn text_key(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(normalize_value)
}

fn equal(value: &Value, assertion: &[u8]) -> bool {
    match value {
        Value::Binary(b) => b == assertion,
        Value::Text(s) => text_key(assertion).is_some_and(|a| normalize_value(s) == a),
    }
}

fn order(value: &Value, assertion: &[u8]) -> Ordering {
    let (a, b) = (value.as_bytes(), assertion);
    let as_int = |x: &[u8]| std::str::from_utf8(x).ok().and_then(|s| s.trim().parse::<i128>().ok());
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        return x.cmp(&y);
    }
    match (value, text_key(b)) {
        (Value::Text(s), Some(t)) => normalize_value(s).cmp(&t),
        _ => a.cmp(b),
    }
}

fn substrings_match(value: &Value, initial: Option<&[u8]>, any: &[Vec<u8>], last: Option<&[u8]>) -> bool {
    let norm = |b: &[u8]| -> Option<String> {
        match value {
            Value::Binary(_) => None,
            Value::Text(_) => text_key(b),
        }
    };
    let (hay, initial, any, last): (String, Option<String>, Vec<String>, Option<String>) = match value {
        Value::Text(s) => {
            let Some(any) = any.iter().map(|a| norm(a)).collect::<Option<Vec<_>>>() else {
                return false;
            };
            let initial = match initial.map(norm) {
                Some(None) => return false,
                Some(Some(i)) => Some(i),
                None => None,
            };
            let last = match last.map(norm) {
                Some(None) => return false,
                Some(Some(l)) => Some(l),
                None => None,
            };
            (normalize_value(s), initial, any, last)
        }
        // Binary substring matching is rare; compare via lossless latin-1 mapping.
        Value::Binary(b) => {
            let l1 = |x: &[u8]| x.iter().map(|c| char::from(*c)).collect::<String>();
            (l1(b), initial.map(l1), any.iter().map(|a| l1(a)).collect(), last.map(l1))
        }
    };
    let mut rest: &str = &hay;
    if let Some(i) = &initial {
        match rest.strip_prefix(i.as_str()) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    for a in &any {
        match rest.find(a.as_str()) {
            Some(at) => rest = rest.get(at + a.len()..).unwrap_or_default(),
            None => return false,
        }
    }
    match &last {
        Some(l) => rest.ends_with(l.as_str()),
        None => true,
    }
}

/// Escapes an assertion value for a filter string (RFC 4515 §3).
pub fn escape_value(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            for c in s.chars() {
                match c {
                    '*' => out.push_str("\\2a"),
                    '(' => out.push_str("\\28"),
                    ')' => out.push_str("\\29"),
                    '\\' => out.push_str("\\5c"),
                    '\0' => out.push_str("\\00"),
                    _ => out.push(c),
                }
            }
        }
        Err(_) => {
            for b in bytes {
                out.push_str(&format!("\\{b:02x}"));
            }
        }
    }
    out
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::And(fs) | Filter::Or(fs) => {
                f.write_str(if matches!(self, Filter::And(_)) { "(&" } else { "(|" })?;
                for x in fs {
                    write!(f, "{x}")?;
                }
                f.write_str(")")
            }
            Filter::Not(x) => write!(f, "(!{x})"),
            Filter::Equality(a, v) => write!(f, "({a}={})", escape_value(v)),
            Filter::GreaterOrEqual(a, v) => write!(f, "({a}>={})", escape_value(v)),
            Filter::LessOrEqual(a, v) => write!(f, "({a}<={})", escape_value(v)),
            Filter::Approx(a, v) => write!(f, "({a}~={})", escape_value(v)),
            Filter::Present(a) => write!(f, "({a}=*)"),
            Filter::Substrings { attr, initial, any, last } => {
                write!(f, "({attr}=")?;
                if let Some(i) = initial {
                    f.write_str(&escape_value(i))?;
                }
                f.write_str("*")?;
                for a in any {
                    write!(f, "{}*", escape_value(a))?;
                }
                if let Some(l) = last {
                    f.write_str(&escape_value(l))?;
                }
                f.write_str(")")
            }
            Filter::Extensible { attr, rule, dn_attrs, value } => {
                f.write_str("(")?;
                if let Some(a) = attr {
                    f.write_str(a)?;
                }
                if *dn_attrs {
                    f.write_str(":dn")?;
                }
                if let Some(r) = rule {
                    write!(f, ":{r}")?;
                }
                write!(f, ":={})", escape_value(value))
            }
        }
    }
}

const MAX_DEPTH: usize = 100;

struct Parser<'a> {
    input: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, reason: &'static str) -> FilterError {
        FilterError::Syntax { input: self.input.to_string(), position: self.pos, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, b: u8, reason: &'static str) -> Result<(), FilterError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(reason))
        }
    }

    fn filter(&mut self) -> Result<Filter, FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("filter nested too deeply"));
        }
        self.expect(b'(', "expected '('")?;
        let f = match self.peek() {
            Some(b'&') => {
                self.pos += 1;
                Filter::And(self.list()?)
            }
            Some(b'|') => {
                self.pos += 1;
                Filter::Or(self.list()?)
            }
            Some(b'!') => {
                self.pos += 1;
                Filter::Not(Box::new(self.filter()?))
            }
            _ => self.item()?,
        };
        self.expect(b')', "expected ')'")?;
        self.depth -= 1;
        Ok(f)
    }

    fn list(&mut self) -> Result<Vec<Filter>, FilterError> {
        let mut out = Vec::new();
        while self.peek() == Some(b'(') {
            out.push(self.filter()?);
        }
        // RFC 4526 absolute true/false `(&)` / `(|)` are allowed.
        Ok(out)
    }

    fn attr_desc(&mut self) -> String {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b';' || b == b'.' {
                self.pos += 1;
            } else {
                break;
            }
        }
        String::from_utf8_lossy(self.bytes.get(start..self.pos).unwrap_or_default()).into_owned()
    }

    fn item(&mut self) -> Result<Filter, FilterError> {
        let attr = self.attr_desc();
        if self.peek() == Some(b':') {
            return self.extensible(attr);
        }
        if attr.is_empty() {
            return Err(self.err("expected an attribute description"));
        }
        let kind = match (self.peek(), self.bytes.get(self.pos + 1).copied()) {
            (Some(b'='), _) => {
                self.pos += 1;
                b'='
            }
            (Some(k @ (b'>' | b'<' | b'~')), Some(b'=')) => {
                self.pos += 2;
                k
            }
            _ => return Err(self.err("expected '=', '>=', '<=' or '~='")),
        };
        if kind != b'=' {
            let v = self.value(false)?;
            return Ok(match kind {
                b'>' => Filter::GreaterOrEqual(attr, v),
                b'<' => Filter::LessOrEqual(attr, v),
                _ => Filter::Approx(attr, v),
            });
        }
        // Equality, presence or substrings: split on unescaped '*'.
        let mut parts = vec![self.value(true)?];
        while self.peek() == Some(b'*') {
            self.pos += 1;
            parts.push(self.value(true)?);
        }
        Ok(match parts.len() {
            1 => Filter::Equality(attr, parts.pop().unwrap_or_default()),
            2 if parts.iter().all(Vec::is_empty) => Filter::Present(attr),
            _ => {
                let last = parts.pop().filter(|p| !p.is_empty());
                let mut it = parts.into_iter();
                let initial = it.next().filter(|p| !p.is_empty());
                let any: Vec<Vec<u8>> = it.collect();
                if any.iter().any(Vec::is_empty) {
                    return Err(self.err("'**' is not allowed in a substring filter"));
                }
                Filter::Substrings { attr, initial, any, last }
            }
        })
    }

    fn extensible(&mut self, attr: String) -> Result<Filter, FilterError> {
        let mut dn_attrs = false;
        let mut rule = None;
        while self.peek() == Some(b':') {
            self.pos += 1;
            if self.peek() == Some(b'=') {
                self.pos += 1;
                let value = self.value(false)?;
                if attr.is_empty() && rule.is_none() {
                    return Err(self.err("an extensible match needs an attribute or a matching rule"));
                }
                let attr = if attr.is_empty() { None } else { Some(attr) };
                return Ok(Filter::Extensible { attr, rule, dn_attrs, value });
            }
            let word = self.attr_desc();
            if word.eq_ignore_ascii_case("dn") && !dn_attrs && rule.is_none() {
                dn_attrs = true;
            } else if !word.is_empty() && rule.is_none() {
                rule = Some(word);
            } else {
                return Err(self.err("malformed extensible match"));
            }
        }
        Err(self.err("expected ':=' in an extensible match"))
    }

    /// Reads an assertion value up to ')' (or '*' when `stop_at_star`).
    fn value(&mut self, stop_at_star: bool) -> Result<Vec<u8>, FilterError> {
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            match b {
                b')' => break,
                b'*' if stop_at_star => break,
                b'*' | b'(' => return Err(self.err("'(' and '*' must be escaped as \\28 and \\2a")),
                b'\\' => {
                    let hi = self.bytes.get(self.pos + 1).and_then(|c| (*c as char).to_digit(16));
                    let lo = self.bytes.get(self.pos + 2).and_then(|c| (*c as char).to_digit(16));
                    match (hi, lo) {
                        (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                        _ => return Err(self.err("'\\' must be followed by two hex digits")),
                    }
                    self.pos += 3;
                }
                _ => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::dn::Dn;

    fn entry() -> Entry {
        let mut e = Entry::new(Dn::root());
        e.add("objectClass", "inetOrgPerson");
        e.add("cn", "Jürgen  Müller");
        e.add("mail", "j.mueller@example.org");
        e.add("employeeNumber", "42");
        e.add("description", "a*b(c)");
        e.add("objectGUID", Value::Binary(vec![0x01, 0x2a, 0xff]));
        e
    }

    fn m(f: &str) -> bool {
        Filter::parse(f).and_then(|f| f.matches(&entry())).unwrap()
    }

    #[test]
    fn evaluates() {
        assert!(m("(cn=jürgen müller)"));
        assert!(m("cn=JÜRGEN MÜLLER"));
        assert!(m("(&(objectClass=inetOrgPerson)(mail=*@example.org))"));
        assert!(m("(|(cn=nobody)(mail=j.*@*.org))"));
        assert!(m("(!(cn=nobody))"));
        assert!(m("(employeeNumber>=9)"));
        assert!(!m("(employeeNumber<=9)"));
        assert!(m("(cn~=jurgenmuller)") || m("(cn~=JürgenMüller)"));
        assert!(m("(description=a\\2ab\\28c\\29)"));
        assert!(m("(objectGUID=\\01\\2a\\ff)"));
        assert!(!m("(objectGUID=\\01\\2A\\fe)"));
        assert!(!m("(telephoneNumber=*)"));
        assert!(m("(cn=*rgen*ll*)"));
        assert!(m("(&)"));
        assert!(!m("(|)"));
    }

    #[test]
    fn prints_round_trip() {
        for f in [
            "(&(cn=a\\2ab)(!(sn=*))(|(mail=x*y*z)(uid>=1)))",
            "(cn:caseExactMatch:=Fred)",
            "(:dn:2.4.6.8.10:=Dino)",
            "(o:dn:=Ace)",
        ] {
            let parsed = Filter::parse(f).unwrap();
            assert_eq!(parsed.to_string(), f);
        }
    }

    #[test]
    fn extensible_is_a_clear_error_when_evaluated() {
        let f = Filter::parse("(cn:caseExactMatch:=Fred)").unwrap();
        assert!(matches!(f.matches(&entry()), Err(FilterError::UnsupportedExtensible(_))));
        let not_a_number = Filter::parse("(cn:1.2.840.113556.1.4.803:=x)").unwrap();
        assert!(matches!(not_a_number.matches(&entry()), Err(FilterError::UnsupportedExtensible(_))));
    }

    #[test]
    fn ad_bit_matching_rules_are_evaluated() {
        let mut e = Entry::new(crate::Dn::parse("cn=x").unwrap());
        e.add("userAccountControl", "514");
        let m = |f: &str| Filter::parse(f).unwrap().matches(&e).unwrap();
        assert!(m("(userAccountControl:1.2.840.113556.1.4.803:=2)"));
        assert!(m("(userAccountControl:1.2.840.113556.1.4.803:=514)"));
        assert!(!m("(userAccountControl:1.2.840.113556.1.4.803:=3)"));
        assert!(m("(userAccountControl:1.2.840.113556.1.4.804:=3)"));
        assert!(!m("(userAccountControl:1.2.840.113556.1.4.804:=1)"));
        assert!(m("(!(userAccountControl:1.2.840.113556.1.4.803:=1))"));
        assert!(!m("(missing:1.2.840.113556.1.4.804:=1)"));
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "(cn=a",
            "(cn=a))",
            "(=a)",
            "(cn=a\\zz)",
            "(cn=a(b)",
            "(&(cn=a)x)",
            "(cn>a)",
            "(cn=a**b)",
            "((cn=a))",
            "(:=x)",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
        let deep = "(!".repeat(500) + "(cn=a)" + &")".repeat(500);
        assert!(Filter::parse(&deep).is_err());
    }
}
