//! The SCIM filter grammar (RFC 7644 §3.4.2.2) and PATCH paths (§3.5.2).
//!
//! Precedence, highest first: `not`, `and`, `or`; parentheses group.
//! Operators and attribute names are case-insensitive.
#![deny(clippy::indexing_slicing)]

use std::fmt;

use serde_json::Value;

use crate::error::ScimError;

/// `[URI ":"] ATTRNAME ["." subAttr]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    pub uri: Option<String>,
    pub name: String,
    pub sub: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    fn parse(word: &str) -> Option<CompareOp> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `attrPath op value`; the value is a JSON string, number, boolean or null.
    Compare(AttrPath, CompareOp, Value),
    Present(AttrPath),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `attrPath[filter]`: some value of a multi-valued complex attribute matches.
    ValuePath(AttrPath, Box<Filter>),
}

/// A PATCH `path`: an attribute (with an optional sub-attribute), or a value
/// path `attr[filter]` with an optional sub-attribute after it.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Filter>,
    /// The sub-attribute after `]` (`emails[type eq "work"].value`).
    pub sub_after_filter: Option<String>,
}

const MAX_DEPTH: usize = 50;
const MAX_LEN: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Word(String),
    Str(String),
}

fn tokenize(input: &str) -> Result<Vec<(usize, Tok)>, String> {
    let bytes = input.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((i, Tok::LParen));
                i += 1;
            }
            b')' => {
                out.push((i, Tok::RParen));
                i += 1;
            }
            b'[' => {
                out.push((i, Tok::LBracket));
                i += 1;
            }
            b']' => {
                out.push((i, Tok::RBracket));
                i += 1;
            }
            b'"' => {
                // A JSON string literal: find the closing quote, honouring escapes.
                let start = i;
                i += 1;
                let mut escaped = false;
                while i < bytes.len() {
                    match bytes.get(i).copied().unwrap_or(b'"') {
                        b'\\' if !escaped => escaped = true,
                        b'"' if !escaped => break,
                        _ => escaped = false,
                    }
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err(format!("unterminated string starting at character {start}"));
                }
                let literal =
                    input.get(start..=i).ok_or_else(|| format!("invalid string literal at character {start}"))?;
                let text: String = serde_json::from_str(literal)
                    .map_err(|_| format!("invalid string literal at character {start}"))?;
                out.push((start, Tok::Str(text)));
                i += 1;
            }
            _ => {
                let start = i;
                while i < bytes.len()
                    && !matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r' | b'(' | b')' | b'[' | b']' | b'"'))
                {
                    i += 1;
                }
                let word = input.get(start..i).ok_or_else(|| format!("invalid text at character {start}"))?;
                out.push((start, Tok::Word(word.to_string())));
            }
        }
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    name == "$ref"
        || name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl AttrPath {
    pub fn new(name: &str) -> AttrPath {
        AttrPath { uri: None, name: name.to_string(), sub: None }
    }

    /// Parses `urn:…:User:name.givenName`, `emails.value`, `userName`.
    pub fn parse(text: &str) -> Option<AttrPath> {
        let (uri, rest) = if text.len() > 4 && text.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:")) {
            let cut = text.rfind(':')?;
            (Some(text.get(..cut)?.to_string()), text.get(cut + 1..)?)
        } else {
            (None, text)
        };
        let (name, sub) = match rest.split_once('.') {
            Some((n, s)) => (n, Some(s)),
            None => (rest, None),
        };
        if !valid_name(name) || sub.is_some_and(|s| !valid_name(s)) {
            return None;
        }
        Some(AttrPath { uri, name: name.to_string(), sub: sub.map(str::to_string) })
    }
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.uri {
            write!(f, "{u}:")?;
        }
        f.write_str(&self.name)?;
        if let Some(s) = &self.sub {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Compare(p, op, v) => write!(f, "{p} {} {v}", op.as_str()),
            Filter::Present(p) => write!(f, "{p} pr"),
            Filter::And(a, b) => write!(f, "({a} and {b})"),
            Filter::Or(a, b) => write!(f, "({a} or {b})"),
            Filter::Not(a) => write!(f, "not ({a})"),
            Filter::ValuePath(p, inner) => write!(f, "{p}[{inner}]"),
        }
    }
}

struct Parser<'a> {
    input: &'a str,
    toks: Vec<(usize, Tok)>,
    pos: usize,
    depth: usize,
    in_value_path: bool,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> ScimError {
        let at = self.toks.get(self.pos).map(|(i, _)| *i).unwrap_or(self.input.len());
        ScimError::invalid_filter(format!("{what} at character {at} of {:?}", self.input))
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn or(&mut self) -> Result<Filter, ScimError> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, ScimError> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, ScimError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("filter nested too deeply"));
        }
        let result = if self.peek_word("not") && matches!(self.toks.get(self.pos + 1).map(|t| &t.1), Some(Tok::LParen))
        {
            self.pos += 2;
            let inner = self.or()?;
            self.expect_rparen()?;
            Ok(Filter::Not(Box::new(inner)))
        } else if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let inner = self.or()?;
            self.expect_rparen()?;
            Ok(inner)
        } else {
            self.attr_expr()
        };
        self.depth -= 1;
        result
    }

    fn expect_rparen(&mut self) -> Result<(), ScimError> {
        match self.next() {
            Some(Tok::RParen) => Ok(()),
            _ => {
                self.pos -= 1;
                Err(self.err("expected ')'"))
            }
        }
    }

    fn attr_path(&mut self) -> Result<AttrPath, ScimError> {
        match self.next() {
            Some(Tok::Word(w)) => match AttrPath::parse(&w) {
                Some(p) => Ok(p),
                None => {
                    self.pos -= 1;
                    Err(self.err(&format!("{w:?} is not an attribute path")))
                }
            },
            _ => {
                self.pos = self.pos.saturating_sub(1);
                Err(self.err("expected an attribute name"))
            }
        }
    }

    fn attr_expr(&mut self) -> Result<Filter, ScimError> {
        let path = self.attr_path()?;
        if self.peek() == Some(&Tok::LBracket) {
            if self.in_value_path {
                return Err(self.err("a value filter cannot contain another '['"));
            }
            if path.sub.is_some() {
                return Err(self.err("'[' must follow an attribute, not a sub-attribute"));
            }
            self.pos += 1;
            self.in_value_path = true;
            let inner = self.or()?;
            self.in_value_path = false;
            match self.next() {
                Some(Tok::RBracket) => {}
                _ => {
                    self.pos -= 1;
                    return Err(self.err("expected ']'"));
                }
            }
            return Ok(Filter::ValuePath(path, Box::new(inner)));
        }
        let op_word = match self.next() {
            Some(Tok::Word(w)) => w,
            _ => {
                self.pos -= 1;
                return Err(self.err("expected an operator (eq, ne, co, sw, ew, gt, ge, lt, le, pr)"));
            }
        };
        if op_word.eq_ignore_ascii_case("pr") {
            return Ok(Filter::Present(path));
        }
        let Some(op) = CompareOp::parse(&op_word) else {
            self.pos -= 1;
            return Err(self.err(&format!("unknown operator {op_word:?}")));
        };
        let value = match self.next() {
            Some(Tok::Str(s)) => Value::String(s),
            Some(Tok::Word(w)) => match w.to_ascii_lowercase().as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" => Value::Null,
                _ => match serde_json::from_str::<serde_json::Number>(&w) {
                    Ok(n) => Value::Number(n),
                    Err(_) => {
                        self.pos -= 1;
                        return Err(self.err(&format!("{w:?} is not a value: strings need double quotes")));
                    }
                },
            },
            _ => {
                self.pos = self.pos.saturating_sub(1);
                return Err(self.err("expected a comparison value"));
            }
        };
        Ok(Filter::Compare(path, op, value))
    }
}

fn parser(input: &str) -> Result<Parser<'_>, ScimError> {
    if input.len() > MAX_LEN {
        return Err(ScimError::invalid_filter(format!("filter longer than {MAX_LEN} characters")));
    }
    let toks = tokenize(input).map_err(|e| ScimError::invalid_filter(format!("{e} in {input:?}")))?;
    Ok(Parser { input, toks, pos: 0, depth: 0, in_value_path: false })
}

impl Filter {
    pub fn parse(input: &str) -> Result<Filter, ScimError> {
        let mut p = parser(input)?;
        if p.toks.is_empty() {
            return Err(ScimError::invalid_filter("the filter is empty"));
        }
        let f = p.or()?;
        if p.pos < p.toks.len() {
            return Err(p.err("unexpected text after the filter"));
        }
        Ok(f)
    }
}

impl PatchPath {
    /// Parses a PATCH path; errors are `invalidPath`.
    pub fn parse(input: &str) -> Result<PatchPath, ScimError> {
        let as_path_error = |e: ScimError| ScimError::invalid_path(e.detail.replace("filter", "path"));
        let mut p = parser(input).map_err(as_path_error)?;
        let attr = p.attr_path().map_err(as_path_error)?;
        let mut filter = None;
        let mut sub_after_filter = None;
        if p.peek() == Some(&Tok::LBracket) {
            if attr.sub.is_some() {
                return Err(ScimError::invalid_path(format!("'[' must follow an attribute in {input:?}")));
            }
            p.pos += 1;
            p.in_value_path = true;
            filter = Some(p.or().map_err(as_path_error)?);
            if p.next() != Some(Tok::RBracket) {
                return Err(ScimError::invalid_path(format!("expected ']' in {input:?}")));
            }
            if let Some(Tok::Word(w)) = p.peek().cloned() {
                match w.strip_prefix('.') {
                    Some(sub) if valid_name(sub) => {
                        sub_after_filter = Some(sub.to_string());
                        p.pos += 1;
                    }
                    _ => return Err(ScimError::invalid_path(format!("unexpected {w:?} after ']' in {input:?}"))),
                }
            }
        }
        if p.pos < p.toks.len() {
            return Err(ScimError::invalid_path(format!("unexpected text in {input:?}")));
        }
        Ok(PatchPath { attr, filter, sub_after_filter })
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(s: &str) -> Filter {
        Filter::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_rfc_examples() {
        for s in [
            r#"userName Eq "john""#,
            r#"name.familyName co "O'Malley""#,
            r#"userName sw "J""#,
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J""#,
            r#"title pr"#,
            r#"meta.lastModified gt "2011-05-13T04:42:34Z""#,
            r#"title pr and userType eq "Employee""#,
            r#"title pr or userType eq "Intern""#,
            r#"schemas eq "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User""#,
            r#"userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")"#,
            r#"userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")"#,
            r#"userType eq "Employee" and (emails.type eq "work")"#,
            r#"userType eq "Employee" and emails[type eq "work" and value co "@example.com"]"#,
            r#"emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@foo.com"]"#,
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq "26118915-6090-4610-87e4-49d8ca9f808d""#,
            r#"active eq true"#,
            r#"x eq 42.5"#,
        ] {
            f(s);
        }
    }

    #[test]
    fn precedence_and_values() {
        let parsed = f(r#"a eq 1 or b eq 2 and c eq 3"#);
        assert!(matches!(parsed, Filter::Or(_, ref r) if matches!(**r, Filter::And(_, _))));
        assert_eq!(f(r#"active eq TRUE"#), Filter::Compare(AttrPath::new("active"), CompareOp::Eq, json!(true)));
        assert_eq!(f(r#"x eq "a\"b""#), Filter::Compare(AttrPath::new("x"), CompareOp::Eq, json!("a\"b")));
        let urn = f(r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq "x""#);
        let Filter::Compare(p, ..) = urn else { panic!() };
        assert_eq!(p.uri.as_deref(), Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"));
        assert_eq!((p.name.as_str(), p.sub.as_deref()), ("manager", Some("value")));
    }

    #[test]
    fn rejects_bad_filters_as_invalid_filter() {
        for s in [
            "",
            "userName",
            "userName eq",
            "userName eq john",
            "userName zz \"x\"",
            "(userName eq \"x\"",
            "userName eq \"x\")",
            "emails[type eq \"work\"",
            "emails[type[x eq 1]]",
            "userName eq \"unterminated",
            "1abc eq \"x\"",
            "a eq \"x\" and",
            "not userName eq \"x\"",
        ] {
            let e = Filter::parse(s).err().unwrap_or_else(|| panic!("{s:?} should fail"));
            assert_eq!(e.scim_type, Some(crate::error::ScimType::InvalidFilter), "{s}");
        }
        let deep = "(".repeat(100) + "a pr" + &")".repeat(100);
        assert!(Filter::parse(&deep).is_err());
    }

    #[test]
    fn patch_paths() {
        let p = PatchPath::parse(r#"members[value eq "2819c223-7f76-453a-919d-413861904646"]"#).unwrap();
        assert_eq!(p.attr.name, "members");
        assert!(p.filter.is_some() && p.sub_after_filter.is_none());
        let p = PatchPath::parse(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(p.sub_after_filter.as_deref(), Some("value"));
        let p = PatchPath::parse("name.familyName").unwrap();
        assert_eq!(p.attr.sub.as_deref(), Some("familyName"));
        let p = PatchPath::parse("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager").unwrap();
        assert!(p.attr.uri.is_some());
        for bad in ["", "emails[", "emails[type eq \"work\"]value", "a b", "emails.value[type eq \"x\"]"] {
            let e = PatchPath::parse(bad).err().unwrap_or_else(|| panic!("{bad:?}"));
            assert_eq!(e.scim_type, Some(crate::error::ScimType::InvalidPath), "{bad}");
        }
    }
}
