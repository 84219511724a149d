//! The expression language of flows, with the function names
//! administrators know from Connect: `IIF(IsPresent([mail]), LCase([mail]),
//! [uid] & "@example.org")`.
//!
//! Grammar: literals (`"text"` with `\"` and `\\` escapes, integers and
//! `&H` hexadecimal integers, `True`, `False`, `Null`, and the flow markers
//! `AuthoritativeNull` and `IgnoreThisFlow`), attributes in brackets
//! (`[givenName]`), the object's domain as Connect names it
//! (`%Domain.FQDN%`, `%Domain.LDAP%`, from its DN), function calls, `&`
//! (concatenate), comparisons `= <> < <= > >=`, `&&` and `||` (binding in
//! that order, both short-circuit), parentheses. Names of
//! functions are case-insensitive. Unknown functions and wrong argument counts
//! are found when the rule loads, with the column.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use directory::{Dn, Entry, Guid, Sid, Value};

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Str(String),
    Int(i64),
    Bool(bool),
    Bin(Vec<u8>),
    Multi(Vec<String>),
    /// The flow sets the attribute to nothing, and rules of lower
    /// precedence may not give it a value either.
    AuthoritativeNull,
    /// The flow contributes nothing; rules of lower precedence may.
    IgnoreThisFlow,
}

impl Val {
    fn text(&self) -> Option<String> {
        match self {
            Val::Null | Val::AuthoritativeNull | Val::IgnoreThisFlow => None,
            Val::Str(s) => Some(s.clone()),
            Val::Int(i) => Some(i.to_string()),
            Val::Bool(b) => Some(if *b { "True".into() } else { "False".into() }),
            Val::Bin(b) => Some(STANDARD.encode(b)),
            Val::Multi(m) => m.first().cloned(),
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            Val::Bool(b) => Some(i64::from(*b)),
            other => other.text().and_then(|t| t.trim().parse().ok()),
        }
    }

    fn truthy(&self) -> bool {
        match self {
            Val::Bool(b) => *b,
            Val::Null => false,
            Val::Int(i) => *i != 0,
            other => other.text().is_some_and(|t| t.eq_ignore_ascii_case("true")),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Val::Null | Val::AuthoritativeNull | Val::IgnoreThisFlow => true,
            Val::Str(s) => s.is_empty(),
            Val::Multi(m) => m.is_empty(),
            Val::Bin(b) => b.is_empty(),
            _ => false,
        }
    }

    fn list(&self) -> Vec<String> {
        match self {
            Val::Multi(m) => m.clone(),
            Val::Null | Val::AuthoritativeNull | Val::IgnoreThisFlow => Vec::new(),
            other => other.text().into_iter().collect(),
        }
    }

    /// As JSON for the metaverse.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Val::Null | Val::AuthoritativeNull | Val::IgnoreThisFlow => serde_json::Value::Null,
            Val::Str(s) => serde_json::json!(s),
            Val::Int(i) => serde_json::json!(i),
            Val::Bool(b) => serde_json::json!(b),
            Val::Bin(b) => serde_json::json!(STANDARD.encode(b)),
            Val::Multi(m) => serde_json::json!(m),
        }
    }
}

/// A parse or check error, with the 1-based column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ExprError {
    pub column: usize,
    pub message: String,
}

/// An evaluation error (the `Error()` function, or a bad argument).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Concat,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

/// What Connect's `%…%` parameters name, as far as an object's DN tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// `%Domain.FQDN%`: the DC= components joined with dots (`corp.example.com`).
    DomainFqdn,
    /// `%Domain.LDAP%`: the DC= components as a DN (`DC=corp,DC=example,DC=com`).
    DomainLdap,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Val),
    Attr(String),
    Param(Param),
    Call { name: &'static str, args: Vec<Expr> },
    Binary(Op, Box<Expr>, Box<Expr>),
}

/// Functions: name, minimum and maximum argument count, and documentation.
pub const FUNCTIONS: &[(&str, usize, usize, &str, &str)] = &[
    ("BitAnd", 2, 2, "bitwise AND of two integers", "BitAnd([userAccountControl], 2) = 0"),
    ("BitOr", 2, 2, "bitwise OR of two integers", "BitOr(512, 2)"),
    ("CBool", 1, 1, "a value as a boolean (True, non-zero)", "CBool(\"True\")"),
    ("CGuid", 1, 1, "a GUID's text as its 16 bytes (AD byte order)", "CGuid(\"6b29fc40-ca47-1067-b31d-00dd010662da\")"),
    ("CNum", 1, 1, "a value as an integer", "CNum(\"42\")"),
    ("CRef", 1, 1, "a DN as a reference (the DN's text here)", "DNComponent(CRef([manager]), 1)"),
    ("CStr", 1, 1, "a value as text", "CStr(42)"),
    ("Coalesce", 1, 16, "the first argument that is not null or empty", "Coalesce([mail], [userPrincipalName])"),
    (
        "Contains",
        2,
        2,
        "1-based index of the first value containing the text (case-insensitive), else 0",
        "Contains([proxyAddresses], \"SMTP:\")",
    ),
    (
        "ConvertFromBase64",
        1,
        1,
        "base64 (of UTF-16LE text, as Connect writes it) back to text",
        "ConvertFromBase64(\"SABpAA==\")",
    ),
    ("ConvertToBase64", 1, 1, "text as base64 of its UTF-16LE bytes (as Connect does)", "ConvertToBase64(\"Hi\")"),
    ("ConvertFromUTF8Hex", 1, 1, "hexadecimal UTF-8 bytes back to text", "ConvertFromUTF8Hex(\"48C3A9\")"),
    ("ConvertToUTF8Hex", 1, 1, "text as the hexadecimal of its UTF-8 bytes (upper case)", "ConvertToUTF8Hex(\"Hé\")"),
    ("Count", 1, 1, "the number of values", "Count([proxyAddresses])"),
    ("DNComponent", 2, 2, "the value of the n-th RDN of a DN, from the left (1-based)", "DNComponent([manager], 1)"),
    (
        "DNComponentRev",
        2,
        2,
        "the value of the n-th RDN of a DN, from the right (1-based)",
        "DNComponentRev([distinguishedName], 1)",
    ),
    (
        "Error",
        1,
        1,
        "fails the flow with the message (the object is reported)",
        "IIF(IsPresent([mail]), [mail], Error(\"no mail\"))",
    ),
    ("EscapeDNComponent", 1, 1, "text escaped for use in a DN", "\"CN=\" & EscapeDNComponent([cn])"),
    (
        "IIF",
        3,
        3,
        "the second argument if the first is true, else the third",
        "IIF([employeeType] = \"contractor\", \"External\", \"Staff\")",
    ),
    (
        "InStr",
        2,
        3,
        "1-based position of the second text in the first (from an optional start), else 0",
        "InStr([mail], \"@\")",
    ),
    ("InStrRev", 2, 2, "1-based position of the last occurrence, else 0", "InStrRev([mail], \".\")"),
    ("IsBitSet", 2, 2, "true if every bit of the flag is set in the value", "IsBitSet([userAccountControl], 2)"),
    ("IsEmpty", 1, 1, "true if the value is present but empty, or missing", "IsEmpty([title])"),
    ("IsGuid", 1, 1, "true if the value is a GUID (16 bytes, or its text)", "IsGuid([objectGUID])"),
    ("IsNull", 1, 1, "true if the value is missing", "IsNull([manager])"),
    ("IsNullOrEmpty", 1, 1, "true if the value is missing or empty", "IsNullOrEmpty([title])"),
    ("IsNumeric", 1, 1, "true if the value is an integer", "IsNumeric([employeeID])"),
    ("IsPresent", 1, 1, "true if the value is present and not empty", "IsPresent([mail])"),
    ("IsString", 1, 1, "true if the value is text (not binary, not missing)", "IsString([mail])"),
    ("Item", 2, 2, "the n-th value (1-based) of a multi-valued attribute", "Item([proxyAddresses], 1)"),
    ("ItemOrNull", 2, 2, "the n-th value (1-based), or null when there are fewer", "ItemOrNull([proxyAddresses], 9)"),
    ("Join", 1, 2, "the values joined with a separator (default none)", "Join([otherTelephone], \", \")"),
    ("LCase", 1, 1, "lower case", "LCase([mail])"),
    ("LTrim", 1, 1, "without leading white space", "LTrim([cn])"),
    ("Left", 2, 2, "the first n characters", "Left([givenName], 1)"),
    ("Len", 1, 1, "the number of characters", "Len([sAMAccountName])"),
    ("Mid", 3, 3, "n characters from a 1-based start", "Mid([employeeID], 2, 4)"),
    ("PadLeft", 2, 3, "padded on the left to a length (default pad \" \")", "PadLeft([employeeID], 6, \"0\")"),
    ("PadRight", 2, 3, "padded on the right to a length (default pad \" \")", "PadRight([code], 4, \"_\")"),
    ("PCase", 1, 1, "each word capitalised (as ProperCase)", "PCase(\"jane DOE\")"),
    ("ProperCase", 1, 1, "each word capitalised", "ProperCase(\"jane DOE\")"),
    ("RTrim", 1, 1, "without trailing white space", "RTrim([cn])"),
    ("RemoveDuplicates", 1, 1, "the values without repeats (case-insensitive)", "RemoveDuplicates([proxyAddresses])"),
    (
        "Replace",
        3,
        3,
        "every occurrence of the second text replaced by the third",
        "Replace([telephoneNumber], \" \", \"\")",
    ),
    ("Right", 2, 2, "the last n characters", "Right([employeeID], 4)"),
    ("Split", 2, 2, "text split at a separator into values", "Split([description], \";\")"),
    ("StringFromGuid", 1, 1, "a GUID's 16 bytes (AD order) as text", "StringFromGuid([objectGUID])"),
    ("StringFromSid", 1, 1, "a SID's bytes as S-1-5-…", "StringFromSid([objectSid])"),
    (
        "Switch",
        2,
        32,
        "the value after the first true condition (pairs), else null",
        "Switch([c] = \"DE\", \"Germany\", [c] = \"FR\", \"France\")",
    ),
    ("Trim", 1, 1, "without leading and trailing white space", "Trim([displayName])"),
    ("UCase", 1, 1, "upper case", "UCase([c])"),
    ("Word", 3, 3, "the n-th word (1-based) split at any of the given characters", "Word([displayName], 1, \" ,\")"),
];

/// The deepest nesting of parentheses and calls an expression may have, and
/// its longest text: expressions also come from files others wrote (Connect
/// exports), and parsing and evaluation recurse once per level.
pub const MAX_DEPTH: usize = 64;
pub const MAX_CHARS: usize = 64 * 1024;

struct Parser<'a> {
    text: &'a str,
    chars: Vec<(usize, char)>,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn column(&self) -> usize {
        self.chars.get(self.pos).map_or(self.text.chars().count() + 1, |_| self.pos + 1)
    }

    fn err(&self, message: impl Into<String>) -> ExprError {
        ExprError { column: self.column(), message: message.into() }
    }

    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|(_, c)| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.get(self.pos).map(|(_, c)| *c)
    }

    fn eat(&mut self, s: &str) -> bool {
        self.skip_ws();
        let n = s.chars().count();
        let got: String = self.chars.iter().skip(self.pos).take(n).map(|(_, c)| *c).collect();
        if got == s {
            self.pos += n;
            true
        } else {
            false
        }
    }

    /// Whether the text at the cursor starts with `s` (nothing consumed).
    fn at(&mut self, s: &str) -> bool {
        self.skip_ws();
        let mut ahead = self.chars.iter().skip(self.pos).map(|(_, c)| *c);
        s.chars().all(|want| ahead.next() == Some(want))
    }

    fn logical_or(&mut self) -> Result<Expr, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("nested more than {MAX_DEPTH} levels deep")));
        }
        let mut left = self.logical_and()?;
        while self.eat("||") {
            let right = self.logical_and()?;
            left = Expr::Binary(Op::Or, Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn logical_and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.comparison()?;
        while self.eat("&&") {
            let right = self.comparison()?;
            left = Expr::Binary(Op::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn comparison(&mut self) -> Result<Expr, ExprError> {
        let left = self.concat()?;
        for (s, op) in [("<>", Op::Ne), ("<=", Op::Le), (">=", Op::Ge), ("=", Op::Eq), ("<", Op::Lt), (">", Op::Gt)] {
            if self.eat(s) {
                let right = self.concat()?;
                return Ok(Expr::Binary(op, Box::new(left), Box::new(right)));
            }
        }
        Ok(left)
    }

    fn concat(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.primary()?;
        while !self.at("&&") && self.eat("&") {
            let right = self.primary()?;
            left = Expr::Binary(Op::Concat, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        match self.peek() {
            None => Err(self.err("the expression ends too early")),
            Some('(') => {
                self.pos += 1;
                let e = self.logical_or()?;
                if !self.eat(")") {
                    return Err(self.err("expected ')'"));
                }
                Ok(e)
            }
            Some('"') => {
                self.pos += 1;
                let mut s = String::new();
                loop {
                    match self.chars.get(self.pos).map(|(_, c)| *c) {
                        None => return Err(self.err("unterminated string")),
                        Some('"') => {
                            self.pos += 1;
                            break;
                        }
                        Some('\\') => {
                            match self.chars.get(self.pos + 1).map(|(_, c)| *c) {
                                Some(c @ ('"' | '\\')) => s.push(c),
                                _ => return Err(self.err("'\\' escapes only '\"' and '\\'")),
                            }
                            self.pos += 2;
                        }
                        Some(c) => {
                            s.push(c);
                            self.pos += 1;
                        }
                    }
                }
                Ok(Expr::Lit(Val::Str(s)))
            }
            Some('&') => {
                // `&H1F`: a hexadecimal integer, as Connect writes bit masks.
                let start = self.pos;
                self.pos += 1;
                if !self.chars.get(self.pos).is_some_and(|(_, c)| c.eq_ignore_ascii_case(&'h')) {
                    return Err(self.err("expected a value, not '&'"));
                }
                self.pos += 1;
                let digits_start = self.pos;
                while self.chars.get(self.pos).is_some_and(|(_, c)| c.is_ascii_hexdigit()) {
                    self.pos += 1;
                }
                let digits: String = self.chars[digits_start..self.pos].iter().map(|(_, c)| *c).collect();
                i64::from_str_radix(&digits, 16).map(|n| Expr::Lit(Val::Int(n))).map_err(|_| ExprError {
                    column: start + 1,
                    message: format!("&H{digits} is not a hexadecimal number"),
                })
            }
            Some('%') => {
                let start = self.pos;
                self.pos += 1;
                let name_start = self.pos;
                while self.chars.get(self.pos).is_some_and(|(_, c)| c.is_ascii_alphanumeric() || *c == '.') {
                    self.pos += 1;
                }
                let name: String = self.chars[name_start..self.pos].iter().map(|(_, c)| *c).collect();
                if self.chars.get(self.pos).map(|(_, c)| *c) != Some('%') {
                    return Err(self.err("expected a parameter name and '%'"));
                }
                self.pos += 1;
                match name.to_ascii_lowercase().as_str() {
                    "domain.fqdn" => Ok(Expr::Param(Param::DomainFqdn)),
                    "domain.ldap" => Ok(Expr::Param(Param::DomainLdap)),
                    _ => Err(ExprError {
                        column: start + 1,
                        message: format!(
                            "%{name}% is not known here: idbridge knows %Domain.FQDN% and %Domain.LDAP% (from the object's DN)"
                        ),
                    }),
                }
            }
            Some('[') => {
                self.pos += 1;
                let start = self.pos;
                while self
                    .chars
                    .get(self.pos)
                    .is_some_and(|(_, c)| c.is_ascii_alphanumeric() || *c == '-' || *c == ';' || *c == '_')
                {
                    self.pos += 1;
                }
                let name: String = self.chars[start..self.pos].iter().map(|(_, c)| *c).collect();
                if name.is_empty() || self.chars.get(self.pos).map(|(_, c)| *c) != Some(']') {
                    return Err(self.err("expected an attribute name and ']'"));
                }
                self.pos += 1;
                Ok(Expr::Attr(name))
            }
            Some(c) if c.is_ascii_digit() || c == '-' => {
                let start = self.pos;
                self.pos += 1;
                while self.chars.get(self.pos).is_some_and(|(_, c)| c.is_ascii_digit()) {
                    self.pos += 1;
                }
                let text: String = self.chars[start..self.pos].iter().map(|(_, c)| *c).collect();
                text.parse()
                    .map(|n| Expr::Lit(Val::Int(n)))
                    .map_err(|_| ExprError { column: start + 1, message: format!("{text:?} is not a number") })
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.chars.get(self.pos).is_some_and(|(_, c)| c.is_ascii_alphanumeric()) {
                    self.pos += 1;
                }
                let word: String = self.chars[start..self.pos].iter().map(|(_, c)| *c).collect();
                match word.to_ascii_lowercase().as_str() {
                    "true" => return Ok(Expr::Lit(Val::Bool(true))),
                    "false" => return Ok(Expr::Lit(Val::Bool(false))),
                    "null" | "nothing" => return Ok(Expr::Lit(Val::Null)),
                    "authoritativenull" => return Ok(Expr::Lit(Val::AuthoritativeNull)),
                    "ignorethisflow" => return Ok(Expr::Lit(Val::IgnoreThisFlow)),
                    _ => {}
                }
                let Some(&(name, min, max, _, _)) = FUNCTIONS.iter().find(|f| f.0.eq_ignore_ascii_case(&word)) else {
                    return Err(ExprError { column: start + 1, message: format!("unknown function {word:?}") });
                };
                if !self.eat("(") {
                    return Err(self.err(format!("expected '(' after {name}")));
                }
                let mut args = Vec::new();
                if !self.eat(")") {
                    loop {
                        args.push(self.logical_or()?);
                        if self.eat(")") {
                            break;
                        }
                        if !self.eat(",") {
                            return Err(self.err("expected ',' or ')'"));
                        }
                    }
                }
                if args.len() < min || args.len() > max {
                    let want = if min == max { format!("{min}") } else { format!("{min} to {max}") };
                    return Err(ExprError {
                        column: start + 1,
                        message: format!("{name} takes {want} argument(s), not {}", args.len()),
                    });
                }
                Ok(Expr::Call { name, args })
            }
            Some(c) => Err(self.err(format!("unexpected {c:?}"))),
        }
    }
}

impl Expr {
    /// Parses and checks an expression.
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        if text.chars().count() > MAX_CHARS {
            return Err(ExprError { column: 1, message: format!("longer than {MAX_CHARS} characters") });
        }
        let mut p = Parser { text, chars: text.char_indices().collect(), pos: 0, depth: 0 };
        let e = p.logical_or()?;
        if p.peek().is_some() {
            return Err(p.err("unexpected text after the expression"));
        }
        Ok(e)
    }

    /// Whether the expression reads the source attribute `name` (case-insensitively).
    pub fn reads(&self, name: &str) -> bool {
        // Iterative: nesting comes from configuration, but a walk never needs the stack.
        let mut todo = vec![self];
        while let Some(e) = todo.pop() {
            match e {
                Expr::Lit(_) | Expr::Param(_) => {}
                Expr::Attr(a) if a.eq_ignore_ascii_case(name) => return true,
                Expr::Attr(_) => {}
                Expr::Call { args, .. } => todo.extend(args),
                Expr::Binary(_, a, b) => todo.extend([a.as_ref(), b.as_ref()]),
            }
        }
        false
    }

    /// Evaluates against a source object.
    pub fn eval(&self, entry: &Entry) -> Result<Val, EvalError> {
        match self {
            Expr::Lit(v) => Ok(v.clone()),
            Expr::Attr(name) => Ok(attribute(entry, name)),
            Expr::Param(param) => Ok(domain_of(&entry.dn, *param)),
            Expr::Binary(Op::And, a, b) => Ok(Val::Bool(a.eval(entry)?.truthy() && b.eval(entry)?.truthy())),
            Expr::Binary(Op::Or, a, b) => Ok(Val::Bool(a.eval(entry)?.truthy() || b.eval(entry)?.truthy())),
            Expr::Binary(op, a, b) => {
                let (x, y) = (a.eval(entry)?, b.eval(entry)?);
                Ok(match op {
                    Op::Concat => Val::Str(format!("{}{}", x.text().unwrap_or_default(), y.text().unwrap_or_default())),
                    _ => Val::Bool(compare(*op, &x, &y)),
                })
            }
            Expr::Call { name, args } => call(name, args, entry),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Lit(Val::Str(s)) => write!(f, "\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
            Expr::Lit(Val::Int(i)) => write!(f, "{i}"),
            Expr::Lit(Val::Bool(b)) => f.write_str(if *b { "True" } else { "False" }),
            Expr::Lit(Val::AuthoritativeNull) => f.write_str("AuthoritativeNull"),
            Expr::Lit(Val::IgnoreThisFlow) => f.write_str("IgnoreThisFlow"),
            Expr::Lit(_) => f.write_str("Null"),
            Expr::Attr(a) => write!(f, "[{a}]"),
            Expr::Param(Param::DomainFqdn) => f.write_str("%Domain.FQDN%"),
            Expr::Param(Param::DomainLdap) => f.write_str("%Domain.LDAP%"),
            Expr::Binary(op, a, b) => {
                let o = match op {
                    Op::Concat => "&",
                    Op::Eq => "=",
                    Op::Ne => "<>",
                    Op::Lt => "<",
                    Op::Le => "<=",
                    Op::Gt => ">",
                    Op::Ge => ">=",
                    Op::And => "&&",
                    Op::Or => "||",
                };
                write!(f, "({a} {o} {b})")
            }
            Expr::Call { name, args } => {
                write!(f, "{name}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// The object's domain from the DC= components of its DN; Null without any.
fn domain_of(dn: &Dn, param: Param) -> Val {
    let labels: Vec<&str> = dn
        .rdns()
        .iter()
        .filter_map(|r| r.avas().first())
        .filter(|a| a.attr.eq_ignore_ascii_case("dc"))
        .filter_map(|a| a.text())
        .collect();
    if labels.is_empty() {
        return Val::Null;
    }
    Val::Str(match param {
        Param::DomainFqdn => labels.join("."),
        Param::DomainLdap => {
            labels.iter().map(|l| format!("DC={}", directory::dn::escape_value(l))).collect::<Vec<_>>().join(",")
        }
    })
}

fn attribute(entry: &Entry, name: &str) -> Val {
    let values = entry.values(name);
    match values {
        [] => Val::Null,
        [Value::Binary(b)] => Val::Bin(b.clone()),
        [v] => Val::Str(v.as_text().unwrap_or_default().to_string()),
        many => Val::Multi(many.iter().filter_map(Value::as_text).map(str::to_string).collect()),
    }
}

fn compare(op: Op, x: &Val, y: &Val) -> bool {
    // Null equals only Null, and orders with nothing.
    match (x == &Val::Null, y == &Val::Null) {
        (true, true) => return matches!(op, Op::Eq | Op::Le | Op::Ge),
        (true, false) | (false, true) => return op == Op::Ne,
        (false, false) => {}
    }
    let ord = match (x.int(), y.int(), x, y) {
        (Some(a), Some(b), Val::Int(_) | Val::Bool(_), _) | (Some(a), Some(b), _, Val::Int(_) | Val::Bool(_)) => {
            a.cmp(&b)
        }
        _ => x.text().unwrap_or_default().to_lowercase().cmp(&y.text().unwrap_or_default().to_lowercase()),
    };
    match op {
        Op::Eq => ord.is_eq(),
        Op::Ne => !ord.is_eq(),
        Op::Lt => ord.is_lt(),
        Op::Le => ord.is_le(),
        Op::Gt => ord.is_gt(),
        Op::Ge => ord.is_ge(),
        Op::Concat | Op::And | Op::Or => false,
    }
}

fn chars(s: &str) -> Vec<char> {
    s.chars().collect()
}

fn call(name: &str, args: &[Expr], entry: &Entry) -> Result<Val, EvalError> {
    // IIF, Switch and Coalesce evaluate lazily.
    match name {
        "IIF" => return if args[0].eval(entry)?.truthy() { args[1].eval(entry) } else { args[2].eval(entry) },
        "Switch" => {
            for pair in args.chunks(2) {
                if let [cond, value] = pair
                    && cond.eval(entry)?.truthy()
                {
                    return value.eval(entry);
                }
            }
            return Ok(Val::Null);
        }
        "Coalesce" => {
            for a in args {
                let v = a.eval(entry)?;
                if !v.is_empty() {
                    return Ok(v);
                }
            }
            return Ok(Val::Null);
        }
        _ => {}
    }
    let v: Vec<Val> = args.iter().map(|a| a.eval(entry)).collect::<Result<_, _>>()?;
    let s = |i: usize| v.get(i).and_then(Val::text).unwrap_or_default();
    let n = |i: usize| -> Result<i64, EvalError> {
        v.get(i).and_then(Val::int).ok_or_else(|| EvalError(format!("{name}: argument {} must be a number", i + 1)))
    };
    let null_in = v.first().is_some_and(|x| *x == Val::Null);
    let text_fn = |f: &dyn Fn(&str) -> String| -> Val { if null_in { Val::Null } else { Val::Str(f(&s(0))) } };
    Ok(match name {
        "IsPresent" => Val::Bool(!v[0].is_empty()),
        "IsNull" => Val::Bool(v[0] == Val::Null),
        "IsNullOrEmpty" => Val::Bool(v[0].is_empty()),
        "Trim" => text_fn(&|x| x.trim().to_string()),
        "LTrim" => text_fn(&|x| x.trim_start().to_string()),
        "RTrim" => text_fn(&|x| x.trim_end().to_string()),
        "LCase" => text_fn(&|x| x.to_lowercase()),
        "UCase" => text_fn(&|x| x.to_uppercase()),
        "ProperCase" | "PCase" => text_fn(&|x| {
            x.split(' ')
                .map(|w| {
                    let mut c = w.chars();
                    match c.next() {
                        Some(f) => f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase(),
                        None => String::new(),
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        }),
        "Len" => Val::Int(s(0).chars().count() as i64),
        "Left" => {
            let k = n(1)?.max(0) as usize;
            text_fn(&|x| x.chars().take(k).collect())
        }
        "Right" => {
            let k = n(1)?.max(0) as usize;
            text_fn(&|x| {
                let c = chars(x);
                c[c.len().saturating_sub(k)..].iter().collect()
            })
        }
        "Mid" => {
            let (start, len) = (n(1)?.max(1) as usize, n(2)?.max(0) as usize);
            text_fn(&|x| x.chars().skip(start - 1).take(len).collect())
        }
        "InStr" => {
            let start = if v.len() > 2 { n(2)?.max(1) as usize } else { 1 };
            let hay = chars(&s(0));
            let needle = chars(&s(1));
            let found = (start - 1..hay.len().saturating_sub(needle.len()) + 1)
                .find(|&i| hay.get(i..i + needle.len()) == Some(&needle[..]));
            Val::Int(found.map_or(0, |i| i as i64 + 1))
        }
        "InStrRev" => {
            let hay = chars(&s(0));
            let needle = chars(&s(1));
            let found = (0..hay.len().saturating_sub(needle.len()) + 1)
                .rev()
                .find(|&i| hay.get(i..i + needle.len()) == Some(&needle[..]));
            Val::Int(found.map_or(0, |i| i as i64 + 1))
        }
        "Replace" => text_fn(&|x| if s(1).is_empty() { x.to_string() } else { x.replace(&s(1), &s(2)) }),
        "PadLeft" | "PadRight" => {
            let len = n(1)?.max(0) as usize;
            let pad = if v.len() > 2 { s(2).chars().next().unwrap_or(' ') } else { ' ' };
            text_fn(&|x| {
                let missing = len.saturating_sub(x.chars().count());
                let fill: String = std::iter::repeat_n(pad, missing).collect();
                if name == "PadLeft" { fill + x } else { x.to_string() + &fill }
            })
        }
        "Split" => {
            if null_in {
                Val::Null
            } else {
                let sep = s(1);
                Val::Multi(if sep.is_empty() {
                    vec![s(0)]
                } else {
                    s(0).split(sep.as_str()).map(str::to_string).collect()
                })
            }
        }
        "Join" => Val::Str(v[0].list().join(&if v.len() > 1 { s(1) } else { String::new() })),
        "Item" => {
            let i = n(1)?;
            v[0].list().get((i.max(1) - 1) as usize).map_or(Val::Null, |x| Val::Str(x.clone()))
        }
        "ItemOrNull" => {
            let i = n(1)?;
            if i < 1 { Val::Null } else { v[0].list().get((i - 1) as usize).map_or(Val::Null, |x| Val::Str(x.clone())) }
        }
        "IsBitSet" => Val::Bool({
            let flag = n(1)?;
            v[0].int().is_some_and(|x| x & flag == flag)
        }),
        "IsEmpty" => Val::Bool(v[0].is_empty()),
        "IsString" => Val::Bool(matches!(v[0], Val::Str(_) | Val::Multi(_))),
        "IsNumeric" => Val::Bool(match &v[0] {
            Val::Int(_) => true,
            Val::Str(t) => t.trim().parse::<i64>().is_ok(),
            _ => false,
        }),
        "IsGuid" => Val::Bool(match &v[0] {
            Val::Bin(b) => b.len() == 16,
            Val::Str(t) => Guid::parse(t).is_ok(),
            _ => false,
        }),
        "CRef" => v[0].text().map_or(Val::Null, Val::Str),
        "ConvertToUTF8Hex" => text_fn(&|x| x.bytes().map(|b| format!("{b:02X}")).collect()),
        "ConvertFromUTF8Hex" => {
            if null_in {
                Val::Null
            } else {
                let text = s(0);
                let bytes: Option<Vec<u8>> = text
                    .as_bytes()
                    .chunks(2)
                    .map(|pair| std::str::from_utf8(pair).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect();
                match bytes.filter(|_| text.len() % 2 == 0).and_then(|b| String::from_utf8(b).ok()) {
                    Some(t) => Val::Str(t),
                    None => return Err(EvalError(format!("ConvertFromUTF8Hex: {text:?} is not hexadecimal UTF-8"))),
                }
            }
        }
        "Count" => Val::Int(v[0].list().len() as i64),
        "Contains" => {
            let needle = s(1).to_lowercase();
            Val::Int(v[0].list().iter().position(|x| x.to_lowercase().contains(&needle)).map_or(0, |i| i as i64 + 1))
        }
        "RemoveDuplicates" => {
            let mut seen = std::collections::HashSet::new();
            Val::Multi(v[0].list().into_iter().filter(|x| seen.insert(x.to_lowercase())).collect())
        }
        "Word" => {
            let k = n(1)?.max(1) as usize;
            let delims = chars(&s(2));
            text_fn(&|x| {
                x.split(|c| delims.contains(&c)).filter(|w| !w.is_empty()).nth(k - 1).unwrap_or_default().to_string()
            })
        }
        "BitAnd" => Val::Int(n(0)? & n(1)?),
        "BitOr" => Val::Int(n(0)? | n(1)?),
        "CBool" => Val::Bool(v[0].truthy()),
        "CNum" => Val::Int(n(0)?),
        "CStr" => v[0].text().map_or(Val::Null, Val::Str),
        "CGuid" => Val::Bin(Guid::parse(&s(0)).map_err(|e| EvalError(format!("CGuid: {e}")))?.ad_bytes().to_vec()),
        "StringFromGuid" => match &v[0] {
            Val::Bin(b) => {
                Val::Str(Guid::from_ad_bytes(b).map_err(|e| EvalError(format!("StringFromGuid: {e}")))?.to_string())
            }
            Val::Null => Val::Null,
            _ => return Err(EvalError("StringFromGuid takes binary GUID bytes".into())),
        },
        "StringFromSid" => match &v[0] {
            Val::Bin(b) => {
                Val::Str(Sid::from_bytes(b).map_err(|e| EvalError(format!("StringFromSid: {e}")))?.to_string())
            }
            Val::Null => Val::Null,
            _ => return Err(EvalError("StringFromSid takes binary SID bytes".into())),
        },
        "ConvertToBase64" => {
            let utf16: Vec<u8> = s(0).encode_utf16().flat_map(u16::to_le_bytes).collect();
            Val::Str(STANDARD.encode(utf16))
        }
        "ConvertFromBase64" => {
            let bytes = STANDARD.decode(s(0).trim()).map_err(|e| EvalError(format!("ConvertFromBase64: {e}")))?;
            let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            Val::Str(String::from_utf16_lossy(&units))
        }
        "DNComponent" | "DNComponentRev" => {
            let dn = Dn::parse(&s(0)).map_err(|e| EvalError(format!("{name}: {e}")))?;
            let k = n(1)?.max(1) as usize;
            let rdns = dn.rdns();
            let rdn = if name == "DNComponent" {
                rdns.get(k - 1)
            } else {
                rdns.len().checked_sub(k).and_then(|i| rdns.get(i))
            };
            rdn.and_then(|r| r.avas().first()).and_then(|a| a.text()).map_or(Val::Null, |t| Val::Str(t.to_string()))
        }
        "EscapeDNComponent" => text_fn(&directory::dn::escape_value),
        "Error" => return Err(EvalError(s(0))),
        other => return Err(EvalError(format!("{other} is not implemented"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut e = Entry::new(Dn::parse("CN=Jane Doe,OU=Sales,DC=corp,DC=example,DC=com").unwrap());
        e.add("givenName", "  Jane ");
        e.add("sn", "Doe");
        e.add("mail", "Jane.Doe@Example.COM");
        e.add("userAccountControl", "514");
        e.add("proxyAddresses", "SMTP:jane@example.com");
        e.add("proxyAddresses", "smtp:j.doe@example.com");
        e.add("proxyAddresses", "SMTP:JANE@example.com");
        e.add("manager", "CN=Boss\\, Big,OU=Sales,DC=corp,DC=example,DC=com");
        e
    }

    #[test]
    fn connect_functions_added_for_migrations() {
        assert_eq!(ev("IsBitSet([userAccountControl], 2)"), Val::Bool(true));
        assert_eq!(ev("IsBitSet([userAccountControl], 1)"), Val::Bool(false));
        assert_eq!(ev("IsEmpty([nothing])"), Val::Bool(true));
        assert_eq!(ev("IsString([sn])"), Val::Bool(true));
        assert_eq!(ev("IsString([nothing])"), Val::Bool(false));
        assert_eq!(ev("IsNumeric([userAccountControl])"), Val::Bool(true));
        assert_eq!(ev("IsNumeric([sn])"), Val::Bool(false));
        assert_eq!(ev("IsGuid(\"6b29fc40-ca47-1067-b31d-00dd010662da\")"), Val::Bool(true));
        assert_eq!(ev("IsGuid([sn])"), Val::Bool(false));
        assert_eq!(ev("ItemOrNull([proxyAddresses], 2)"), Val::Str("smtp:j.doe@example.com".into()));
        assert_eq!(ev("ItemOrNull([proxyAddresses], 9)"), Val::Null);
        assert_eq!(ev("ItemOrNull([proxyAddresses], 0)"), Val::Null);
        assert_eq!(s("PCase(\"jane DOE\")"), s("ProperCase(\"jane DOE\")"));
        assert_eq!(s("ConvertToUTF8Hex(\"Hé\")"), "48C3A9");
        assert_eq!(s("ConvertFromUTF8Hex(ConvertToUTF8Hex(\"Müller 東京\"))"), "Müller 東京");
        assert!(Expr::parse("ConvertFromUTF8Hex(\"ZZ\")").unwrap().eval(&entry()).is_err());
        assert!(Expr::parse("ConvertFromUTF8Hex(\"ABC\")").unwrap().eval(&entry()).is_err());
        assert_eq!(s("DNComponent(CRef([manager]), 1)"), "Boss, Big");
    }

    #[test]
    fn connect_operators_parameters_and_hex() {
        // && binds tighter than ||, comparisons tighter than both; & still concatenates.
        assert_eq!(ev("[sn] = \"Doe\" && [givenName] = \"x\" || 1 = 1"), Val::Bool(true));
        assert_eq!(ev("[sn] = \"Doe\" && ([givenName] = \"x\" || 1 = 2)"), Val::Bool(false));
        assert_eq!(ev("IIF(IsPresent([mail]) && [sn] & \"!\" = \"Doe!\", \"yes\", \"no\")"), Val::Str("yes".into()));
        // Short-circuit: the right side is not evaluated.
        assert_eq!(ev("1 = 1 || Error(\"not evaluated\")"), Val::Bool(true));
        assert_eq!(ev("1 = 2 && Error(\"not evaluated\")"), Val::Bool(false));
        assert_eq!(ev("BitAnd([userAccountControl], &H2)"), Val::Int(2));
        assert_eq!(ev("&H21C07000"), Val::Int(0x21C0_7000));
        assert_eq!(ev("[sn] & \"@\" & %Domain.FQDN%"), Val::Str("Doe@corp.example.com".into()));
        assert_eq!(ev("%domain.ldap%"), Val::Str("DC=corp,DC=example,DC=com".into()));
        let round = Expr::parse("[a] = 1 && [b] = 2 || %Domain.FQDN% = \"x\"").unwrap().to_string();
        assert_eq!(Expr::parse(&round).unwrap().to_string(), round);
        for (bad, says) in [
            ("%Forest.Netbios%", "not known here"),
            ("%Domain.FQDN", "'%'"),
            ("&Hzz", "hexadecimal"),
            ("[a] &", "ends too early"),
            ("&", "not '&'"),
        ] {
            let e = Expr::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // Depth and length come from files others wrote: bounded.
        let deep = format!("{}1{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert!(Expr::parse(&deep).unwrap_err().to_string().contains("nested"));
        let calls = format!("{}[a]{}", "LCase(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert!(Expr::parse(&calls).is_err());
        assert!(Expr::parse(&"ü".repeat(MAX_CHARS + 1)).unwrap_err().to_string().contains("longer"));
        let fine = format!("{}1{}", "(".repeat(MAX_DEPTH - 1), ")".repeat(MAX_DEPTH - 1));
        assert!(Expr::parse(&fine).is_ok());
    }

    fn ev(text: &str) -> Val {
        Expr::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .eval(&entry())
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn s(text: &str) -> String {
        match ev(text) {
            Val::Str(s) => s,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn every_documented_example_parses_and_evaluates() {
        for (name, _, _, _, example) in FUNCTIONS {
            let e = Expr::parse(example).unwrap_or_else(|e| panic!("{name}: {example}: {e}"));
            // Error() is meant to fail; the rest evaluate.
            if *name != "Error" {
                assert!(
                    e.eval(&entry()).is_ok() || matches!(*name, "StringFromSid" | "StringFromGuid"),
                    "{name}: {example}"
                );
            }
        }
    }

    #[test]
    fn functions_behave_like_connect() {
        assert_eq!(s(r#"LCase(Trim([givenName])) & "." & LCase([sn])"#), "jane.doe");
        assert_eq!(ev("BitAnd([userAccountControl], 2) = 0"), Val::Bool(false));
        assert_eq!(s(r#"IIF(BitAnd([userAccountControl], 2) = 2, "disabled", "enabled")"#), "disabled");
        assert_eq!(s(r#"Left([mail], 4)"#), "Jane");
        assert_eq!(ev(r#"InStr([mail], "@")"#), Val::Int(9));
        assert_eq!(s(r#"Mid([mail], 1, 4)"#), "Jane");
        assert_eq!(s(r#"Right([sn], 2)"#), "oe");
        assert_eq!(s(r#"Replace([mail], "Example.COM", "corp.test")"#), "Jane.Doe@corp.test");
        assert_eq!(ev(r#"Count(RemoveDuplicates([proxyAddresses]))"#), Val::Int(2));
        assert_eq!(ev(r#"Contains([proxyAddresses], "j.doe")"#), Val::Int(2));
        assert_eq!(s(r#"Item([proxyAddresses], 2)"#), "smtp:j.doe@example.com");
        assert_eq!(s(r#"Join(Split("a;b;c", ";"), "-")"#), "a-b-c");
        assert_eq!(s(r#"DNComponent([manager], 1)"#), "Boss, Big");
        assert_eq!(s(r#"DNComponentRev([manager], 1)"#), "com");
        assert_eq!(s(r#"Coalesce([nickName], [title], [givenName])"#), "  Jane ");
        assert_eq!(ev(r#"IsPresent([title])"#), Val::Bool(false));
        assert_eq!(s(r#"Switch([sn] = "Smith", "S", [sn] = "doe", "D")"#), "D");
        assert_eq!(s(r#"PadLeft("42", 5, "0")"#), "00042");
        assert_eq!(s(r#"ProperCase("jANE dOE")"#), "Jane Doe");
        assert_eq!(s(r#"Word("a, b c", 2, ", ")"#), "b");
        assert_eq!(s(r#"ConvertFromBase64(ConvertToBase64("Héllo"))"#), "Héllo");
        assert_eq!(
            s(r#"StringFromGuid(CGuid("6b29fc40-ca47-1067-b31d-00dd010662da"))"#),
            "6b29fc40-ca47-1067-b31d-00dd010662da"
        );
        assert_eq!(s(r#""CN=" & EscapeDNComponent("Doe, Jane")"#), "CN=Doe\\, Jane");
        assert_eq!(ev(r#"LCase([nickName])"#), Val::Null, "null stays null");
        assert_eq!(
            Expr::parse(r#"IIF(IsPresent([mail]), [mail], Error("no mail"))"#)
                .unwrap()
                .eval(&Entry::default())
                .unwrap_err(),
            EvalError("no mail".into())
        );
    }

    #[test]
    fn docs_list_every_function() {
        let docs = include_str!("../../../docs/expressions.md");
        for (name, ..) in FUNCTIONS {
            assert!(docs.contains(&format!("| `{name}` |")), "docs/expressions.md misses {name}");
        }
    }

    #[test]
    fn load_time_errors_name_the_column() {
        for (text, column, needle) in [
            ("LCase([mail]", 13, "')'"),
            ("Frobnicate([mail])", 1, "unknown function"),
            ("IIF([a], [b])", 1, "IIF takes 3"),
            ("[mail] &", 9, "ends too early"),
            ("\"abc", 5, "unterminated"),
            ("[mail] ]", 8, "unexpected text"),
            ("[]", 2, "attribute name"),
        ] {
            let e = Expr::parse(text).unwrap_err();
            assert!(e.column == column && e.message.contains(needle), "{text}: {e:?}");
        }
        let round = Expr::parse(r#"IIF([a] = "x\"y", LCase([b]) & "c", Null)"#).unwrap();
        assert_eq!(Expr::parse(&round.to_string()).unwrap(), round);
    }
}
