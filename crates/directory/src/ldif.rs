//! LDIF (RFC 2849): a streaming reader of content and change records, and a writer.
#![deny(clippy::indexing_slicing)]

use std::io::BufRead;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::dn::{Dn, DnError, Rdn};
use crate::entry::Entry;
use crate::value::Value;

/// An LDIF problem, with the (1-based) line where the offending line starts.
#[derive(Debug, thiserror::Error)]
#[error("LDIF line {line}: {kind}")]
pub struct LdifError {
    pub line: usize,
    pub kind: LdifErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum LdifErrorKind {
    #[error("could not read the input: {0}")]
    Io(String),
    #[error("the line is not valid UTF-8")]
    NotUtf8,
    #[error("a record must start with 'dn:', found {0:?}")]
    MissingDn(String),
    #[error("expected 'attribute: value', found {0:?}")]
    Syntax(String),
    #[error(
        "value of {0:?} is a URL ('{0}:< …'); URL values are not supported: inline the value, base64-encoded with '{0}::'"
    )]
    UrlValue(String),
    #[error("value of {0:?} is not valid base64")]
    Base64(String),
    #[error("{0}")]
    Dn(#[from] DnError),
    #[error("unsupported LDIF version {0:?} (only 1 is defined)")]
    Version(String),
    #[error("unknown changetype {0:?} (expected add, delete, modify, modrdn or moddn)")]
    ChangeType(String),
    #[error("in a modify record, expected 'add:', 'delete:', 'replace:' or 'increment:', found {0:?}")]
    ModifyOp(String),
    #[error("attribute {found:?} inside a '{op}: {expected}' block")]
    ModifyAttr { op: &'static str, expected: String, found: String },
    #[error("a modify block for {0:?} is not closed with '-'")]
    UnterminatedModify(String),
    #[error("{0} is required in a modrdn record")]
    ModRdnField(&'static str),
    #[error("deleteoldrdn must be 0 or 1, found {0:?}")]
    DeleteOldRdn(String),
    #[error("a delete record takes no attributes, found {0:?}")]
    DeleteWithAttributes(String),
}

/// One record of an LDIF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LdifRecord {
    /// A content record: an entry.
    Content(Entry),
    /// A change record.
    Change(ChangeRecord),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeRecord {
    Add(Entry),
    Delete { dn: Dn },
    Modify { dn: Dn, mods: Vec<Modification> },
    ModRdn { dn: Dn, new_rdn: Rdn, delete_old_rdn: bool, new_superior: Option<Dn> },
}

impl ChangeRecord {
    pub fn dn(&self) -> &Dn {
        match self {
            ChangeRecord::Add(e) => &e.dn,
            ChangeRecord::Delete { dn } | ChangeRecord::Modify { dn, .. } | ChangeRecord::ModRdn { dn, .. } => dn,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModOp {
    Add,
    Delete,
    Replace,
    Increment,
}

impl ModOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ModOp::Add => "add",
            ModOp::Delete => "delete",
            ModOp::Replace => "replace",
            ModOp::Increment => "increment",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modification {
    pub op: ModOp,
    pub attr: String,
    pub values: Vec<Value>,
}

/// A logical (unfolded) line and the physical line it starts on.
struct Line {
    no: usize,
    text: String,
}

/// Streams records out of an LDIF source, one at a time.
#[derive(Debug)]
pub struct LdifReader<R> {
    input: R,
    physical: usize,
    lookahead: Option<(usize, String)>,
    started: bool,
    done: bool,
}

impl<R: BufRead> LdifReader<R> {
    pub fn new(input: R) -> Self {
        LdifReader { input, physical: 0, lookahead: None, started: false, done: false }
    }

    fn read_physical(&mut self) -> Result<Option<(usize, String)>, LdifError> {
        if let Some(l) = self.lookahead.take() {
            return Ok(Some(l));
        }
        let mut buf = Vec::new();
        let n = self
            .input
            .read_until(b'\n', &mut buf)
            .map_err(|e| LdifError { line: self.physical + 1, kind: LdifErrorKind::Io(e.to_string()) })?;
        if n == 0 {
            return Ok(None);
        }
        self.physical += 1;
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        let text =
            String::from_utf8(buf).map_err(|_| LdifError { line: self.physical, kind: LdifErrorKind::NotUtf8 })?;
        Ok(Some((self.physical, text)))
    }

    /// The next logical line: continuation lines joined, comments skipped.
    /// `Ok(Some(None))` is a record separator (empty line).
    fn next_line(&mut self) -> Result<Option<Option<Line>>, LdifError> {
        loop {
            let Some((no, text)) = self.read_physical()? else {
                return Ok(None);
            };
            if text.is_empty() {
                return Ok(Some(None));
            }
            let is_comment = text.starts_with('#');
            let mut joined = text;
            loop {
                match self.read_physical()? {
                    Some((_, next)) if next.starts_with(' ') => joined.push_str(next.get(1..).unwrap_or_default()),
                    other => {
                        self.lookahead = other;
                        break;
                    }
                }
            }
            if !is_comment {
                return Ok(Some(Some(Line { no, text: joined })));
            }
        }
    }

    /// Gathers the lines of the next record; `None` at the end of input.
    fn next_record_lines(&mut self) -> Result<Option<Vec<Line>>, LdifError> {
        let mut lines = Vec::new();
        loop {
            match self.next_line()? {
                None => return Ok(if lines.is_empty() { None } else { Some(lines) }),
                Some(None) if lines.is_empty() => continue,
                Some(None) => return Ok(Some(lines)),
                Some(Some(line)) => {
                    if !self.started {
                        self.started = true;
                        if let Some((attr, _)) = line.text.split_once(':')
                            && attr.eq_ignore_ascii_case("version")
                        {
                            let (_, v) = parse_line(&line)?;
                            let v = String::from_utf8_lossy(&v).trim().to_string();
                            if v != "1" {
                                return Err(LdifError { line: line.no, kind: LdifErrorKind::Version(v) });
                            }
                            continue;
                        }
                    }
                    lines.push(line);
                }
            }
        }
    }
}

impl<R: BufRead> Iterator for LdifReader<R> {
    type Item = Result<LdifRecord, LdifError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = match self.next_record_lines() {
            Ok(Some(lines)) => parse_record(lines),
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            // A broken input stops the stream: later line numbers would mislead.
            self.done = true;
        }
        Some(result)
    }
}

/// Parses a whole LDIF text (for tests and small inputs).
pub fn parse_str(text: &str) -> Result<Vec<LdifRecord>, LdifError> {
    LdifReader::new(text.as_bytes()).collect()
}

fn parse_line(line: &Line) -> Result<(String, Vec<u8>), LdifError> {
    let err = |kind| LdifError { line: line.no, kind };
    let Some((attr, rest)) = line.text.split_once(':') else {
        return Err(err(LdifErrorKind::Syntax(line.text.clone())));
    };
    let attr = attr.trim_end();
    if attr.is_empty() || !attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';' || c == '.') {
        return Err(err(LdifErrorKind::Syntax(line.text.clone())));
    }
    if let Some(b64) = rest.strip_prefix(':') {
        let cleaned: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = STANDARD.decode(cleaned).map_err(|_| err(LdifErrorKind::Base64(attr.to_string())))?;
        Ok((attr.to_string(), bytes))
    } else if rest.starts_with('<') {
        Err(err(LdifErrorKind::UrlValue(attr.to_string())))
    } else {
        Ok((attr.to_string(), rest.trim_start_matches(' ').as_bytes().to_vec()))
    }
}

fn text_value(line: &Line, bytes: Vec<u8>) -> Result<String, LdifError> {
    String::from_utf8(bytes).map_err(|_| LdifError { line: line.no, kind: LdifErrorKind::NotUtf8 })
}

fn parse_dn(line: &Line, bytes: Vec<u8>) -> Result<Dn, LdifError> {
    let text = text_value(line, bytes)?;
    Dn::parse(&text).map_err(|e| LdifError { line: line.no, kind: LdifErrorKind::Dn(e) })
}

fn parse_record(lines: Vec<Line>) -> Result<LdifRecord, LdifError> {
    let mut it = lines.into_iter().peekable();
    let Some(first) = it.next() else {
        return Err(LdifError { line: 0, kind: LdifErrorKind::MissingDn(String::new()) });
    };
    let (attr, value) = parse_line(&first)?;
    if !attr.eq_ignore_ascii_case("dn") {
        return Err(LdifError { line: first.no, kind: LdifErrorKind::MissingDn(first.text.clone()) });
    }
    let dn = parse_dn(&first, value)?;
    // Controls are accepted and ignored: idbridge applies changes itself.
    while it.peek().is_some_and(|l| l.text.to_ascii_lowercase().starts_with("control:")) {
        it.next();
    }
    let is_change = it.peek().is_some_and(|l| l.text.to_ascii_lowercase().starts_with("changetype:"));
    if !is_change {
        let mut entry = Entry::new(dn);
        for line in it {
            let (attr, value) = parse_line(&line)?;
            entry.add(&attr, Value::from_bytes(&attr, value));
        }
        return Ok(LdifRecord::Content(entry));
    }
    let Some(ct_line) = it.next() else {
        return Err(LdifError { line: first.no, kind: LdifErrorKind::ChangeType(String::new()) });
    };
    let (_, ct) = parse_line(&ct_line)?;
    let ct = text_value(&ct_line, ct)?.trim().to_ascii_lowercase();
    let record = match ct.as_str() {
        "add" => {
            let mut entry = Entry::new(dn);
            for line in it {
                let (attr, value) = parse_line(&line)?;
                entry.add(&attr, Value::from_bytes(&attr, value));
            }
            ChangeRecord::Add(entry)
        }
        "delete" => {
            if let Some(line) = it.next() {
                return Err(LdifError { line: line.no, kind: LdifErrorKind::DeleteWithAttributes(line.text) });
            }
            ChangeRecord::Delete { dn }
        }
        "modify" => parse_modify(dn, it.collect())?,
        "modrdn" | "moddn" => parse_modrdn(dn, first.no, it.collect())?,
        _ => {
            return Err(LdifError { line: ct_line.no, kind: LdifErrorKind::ChangeType(ct) });
        }
    };
    Ok(LdifRecord::Change(record))
}

fn parse_modify(dn: Dn, lines: Vec<Line>) -> Result<ChangeRecord, LdifError> {
    let mut mods = Vec::new();
    let mut current: Option<(usize, Modification)> = None;
    for line in lines {
        if line.text.trim_end() == "-" {
            match current.take() {
                Some((_, m)) => mods.push(m),
                None => {
                    return Err(LdifError { line: line.no, kind: LdifErrorKind::ModifyOp(line.text) });
                }
            }
            continue;
        }
        let (attr, value) = parse_line(&line)?;
        match &mut current {
            None => {
                let op = match attr.to_ascii_lowercase().as_str() {
                    "add" => ModOp::Add,
                    "delete" => ModOp::Delete,
                    "replace" => ModOp::Replace,
                    "increment" => ModOp::Increment,
                    _ => {
                        return Err(LdifError { line: line.no, kind: LdifErrorKind::ModifyOp(line.text) });
                    }
                };
                let target = text_value(&line, value)?.trim().to_string();
                current = Some((line.no, Modification { op, attr: target, values: Vec::new() }));
            }
            Some((_, m)) => {
                if !attr.eq_ignore_ascii_case(&m.attr) {
                    return Err(LdifError {
                        line: line.no,
                        kind: LdifErrorKind::ModifyAttr { op: m.op.as_str(), expected: m.attr.clone(), found: attr },
                    });
                }
                m.values.push(Value::from_bytes(&attr, value));
            }
        }
    }
    if let Some((no, m)) = current {
        return Err(LdifError { line: no, kind: LdifErrorKind::UnterminatedModify(m.attr) });
    }
    Ok(ChangeRecord::Modify { dn, mods })
}

fn parse_modrdn(dn: Dn, dn_line: usize, lines: Vec<Line>) -> Result<ChangeRecord, LdifError> {
    let mut new_rdn = None;
    let mut delete_old = None;
    let mut new_superior = None;
    for line in lines {
        let (attr, value) = parse_line(&line)?;
        match attr.to_ascii_lowercase().as_str() {
            "newrdn" => {
                let text = text_value(&line, value)?;
                let parsed = Dn::parse(&text).map_err(|e| LdifError { line: line.no, kind: e.into() })?;
                match parsed.rdns() {
                    [rdn] => new_rdn = Some(rdn.clone()),
                    _ => {
                        return Err(LdifError { line: line.no, kind: LdifErrorKind::Syntax(line.text.clone()) });
                    }
                }
            }
            "deleteoldrdn" => {
                delete_old = match text_value(&line, value)?.trim() {
                    "0" => Some(false),
                    "1" => Some(true),
                    other => {
                        return Err(LdifError { line: line.no, kind: LdifErrorKind::DeleteOldRdn(other.to_string()) });
                    }
                }
            }
            "newsuperior" => new_superior = Some(parse_dn(&line, value)?),
            _ => {
                return Err(LdifError { line: line.no, kind: LdifErrorKind::Syntax(line.text.clone()) });
            }
        }
    }
    let new_rdn = new_rdn.ok_or(LdifError { line: dn_line, kind: LdifErrorKind::ModRdnField("newrdn") })?;
    let delete_old_rdn =
        delete_old.ok_or(LdifError { line: dn_line, kind: LdifErrorKind::ModRdnField("deleteoldrdn") })?;
    Ok(ChangeRecord::ModRdn { dn, new_rdn, delete_old_rdn, new_superior })
}

/// Writes LDIF records: values that are not SAFE-STRINGs are base64-encoded,
/// lines are folded at 76 columns.
#[derive(Debug)]
pub struct LdifWriter<W> {
    out: W,
    fold_at: usize,
    buf: String,
}

impl<W: std::io::Write> LdifWriter<W> {
    pub fn new(out: W) -> Self {
        LdifWriter { out, fold_at: 76, buf: String::new() }
    }

    /// Disables folding (one line per value), as some tools prefer.
    pub fn without_folding(mut self) -> Self {
        self.fold_at = usize::MAX;
        self
    }

    pub fn write_version(&mut self) -> std::io::Result<()> {
        self.out.write_all(b"version: 1\n\n")
    }

    pub fn write_comment(&mut self, text: &str) -> std::io::Result<()> {
        for line in text.lines() {
            writeln!(self.out, "# {line}")?;
        }
        Ok(())
    }

    pub fn write_entry(&mut self, entry: &Entry) -> std::io::Result<()> {
        self.buf.clear();
        self.push_dn("dn", &entry.dn);
        for attr in entry.attributes() {
            for v in &attr.values {
                self.push_value(&attr.name, v);
            }
        }
        self.flush_record()
    }

    pub fn write_change(&mut self, change: &ChangeRecord) -> std::io::Result<()> {
        self.buf.clear();
        self.push_dn("dn", change.dn());
        match change {
            ChangeRecord::Add(entry) => {
                self.push_value("changetype", &Value::from("add"));
                for attr in entry.attributes() {
                    for v in &attr.values {
                        self.push_value(&attr.name, v);
                    }
                }
            }
            ChangeRecord::Delete { .. } => self.push_value("changetype", &Value::from("delete")),
            ChangeRecord::Modify { mods, .. } => {
                self.push_value("changetype", &Value::from("modify"));
                for m in mods {
                    self.push_value(m.op.as_str(), &Value::Text(m.attr.clone()));
                    for v in &m.values {
                        self.push_value(&m.attr, v);
                    }
                    self.buf.push_str("-\n");
                }
            }
            ChangeRecord::ModRdn { new_rdn, delete_old_rdn, new_superior, .. } => {
                self.push_value("changetype", &Value::from("modrdn"));
                self.push_value("newrdn", &Value::Text(new_rdn.to_string()));
                self.push_value("deleteoldrdn", &Value::from(if *delete_old_rdn { "1" } else { "0" }));
                if let Some(sup) = new_superior {
                    self.push_dn("newsuperior", sup);
                }
            }
        }
        self.flush_record()
    }

    /// The underlying writer, for interleaving other output.
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn flush_record(&mut self) -> std::io::Result<()> {
        self.buf.push('\n');
        self.out.write_all(self.buf.as_bytes())
    }

    fn push_dn(&mut self, name: &str, dn: &Dn) {
        self.push_value(name, &Value::Text(dn.to_string()));
    }

    fn push_value(&mut self, name: &str, value: &Value) {
        let start = self.buf.len();
        self.buf.push_str(name);
        match value {
            Value::Text(s) if is_safe_string(s) => {
                self.buf.push_str(": ");
                self.buf.push_str(s);
            }
            other => {
                self.buf.push_str(":: ");
                STANDARD.encode_string(other.as_bytes(), &mut self.buf);
            }
        }
        if self.buf.len() - start > self.fold_at {
            let line = self.buf.split_off(start);
            fold_into(&mut self.buf, &line, self.fold_at);
        } else {
            self.buf.push('\n');
        }
    }
}

/// RFC 2849 SAFE-STRING: printable ASCII, not starting with space, ':' or '<',
/// and (for round-trip safety) not ending with a space.
pub fn is_safe_string(s: &str) -> bool {
    let bytes = s.as_bytes();
    match bytes.first() {
        None => true,
        Some(b' ' | b':' | b'<') => false,
        Some(_) => bytes.iter().all(|b| (0x01..=0x7f).contains(b) && *b != b'\n' && *b != b'\r') && !s.ends_with(' '),
    }
}

fn fold_into(buf: &mut String, line: &str, width: usize) {
    // Only ASCII reaches here (non-safe values are base64), so byte slicing is on char boundaries.
    if line.len() <= width || !line.is_ascii() {
        buf.push_str(line);
        buf.push('\n');
        return;
    }
    let (head, mut rest) = line.split_at(width);
    buf.push_str(head);
    buf.push('\n');
    while !rest.is_empty() {
        let take = rest.len().min(width - 1);
        let (chunk, tail) = rest.split_at(take);
        buf.push(' ');
        buf.push_str(chunk);
        buf.push('\n');
        rest = tail;
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn reads_folded_base64_comments_and_version() {
        let text = "version: 1\n# a comment\n#  folded comment\n continued\ndn: cn=Bj\n orn,dc=example,dc=org\nobjectClass: person\ncn:: QmrDtnJu\nsn: J\n ensen\n\n\ndn: cn=x,dc=org\nobjectGUID:: QPwpa0fKZxCzHQDdAQZi2g==\n";
        let recs = parse_str(text).unwrap_or_default();
        assert_eq!(recs.len(), 2);
        let LdifRecord::Content(e) = &recs[0] else { panic!() };
        assert_eq!(e.dn.to_string(), "cn=Bjorn,dc=example,dc=org");
        assert_eq!(e.first_text("CN"), Some("Björn"));
        assert_eq!(e.first_text("sn"), Some("Jensen"));
        let LdifRecord::Content(g) = &recs[1] else { panic!() };
        assert!(g.values("objectguid")[0].is_binary());
    }

    #[test]
    fn url_values_are_refused_with_line_number() {
        let err = parse_str("dn: cn=a,dc=x\ncn: a\njpegPhoto:< file:///etc/passwd\n").err();
        let err = err.map(|e| (e.line, e.to_string()));
        assert!(matches!(&err, Some((3, msg)) if msg.contains("URL values are not supported")), "{err:?}");
    }

    #[test]
    fn change_records() {
        let text = "dn: cn=a,dc=x\nchangetype: modify\nadd: mail\nmail: a@x\n-\ndelete: description\n-\nreplace: sn\nsn: A\nsn: B\n-\n\ndn: cn=a,dc=x\nchangetype: modrdn\nnewrdn: cn=b\ndeleteoldrdn: 1\nnewsuperior: ou=y,dc=x\n\ndn: cn=b,ou=y,dc=x\nchangetype: delete\n\ndn: cn=c,dc=x\nchangetype: add\ncn: c\n";
        let recs = parse_str(text).unwrap_or_default();
        assert_eq!(recs.len(), 4);
        let LdifRecord::Change(ChangeRecord::Modify { mods, .. }) = &recs[0] else { panic!() };
        assert_eq!(mods.len(), 3);
        assert_eq!(mods[2].values.len(), 2);
        assert!(matches!(
            &recs[1],
            LdifRecord::Change(ChangeRecord::ModRdn { delete_old_rdn: true, new_superior: Some(_), .. })
        ));
        assert!(matches!(&recs[2], LdifRecord::Change(ChangeRecord::Delete { .. })));
        // and the writer writes them back identically
        let mut w = LdifWriter::new(Vec::new());
        for r in &recs {
            let LdifRecord::Change(c) = r else { panic!() };
            assert!(w.write_change(c).is_ok());
        }
        let again = parse_str(&String::from_utf8_lossy(&w.into_inner())).unwrap_or_default();
        assert_eq!(again, recs);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("dn: cn=a,dc=x\nchangetype: modify\nadd: mail\nmail: a\n", 3),
            ("cn: a\n", 1),
            ("dn: cn=a,dc=x\ncn a\n", 2),
            ("version: 2\n", 1),
            ("dn: cn=a,dc=x\n\ndn: cn=b,dc=x\ncn:: !!!\n", 4),
            ("dn: cn=a,dc=x\nchangetype: frob\n", 2),
            ("dn: cn=a,,\n", 1),
        ] {
            let e = parse_str(text).err();
            assert_eq!(e.as_ref().map(|e| e.line), Some(line), "{text:?}: {e:?}");
        }
    }

    #[test]
    fn writer_round_trips_unsafe_and_long_values() {
        let mut e = Entry::new(Dn::parse("cn=Jürgen\\, M,dc=x").unwrap_or_default());
        e.add("cn", "Jürgen, M");
        e.add("description", " leading space");
        e.add("description", "x".repeat(200));
        e.add("objectGUID", Value::Binary(vec![0, 1, 2, 255]));
        let mut w = LdifWriter::new(Vec::new());
        assert!(w.write_entry(&e).is_ok());
        let text = String::from_utf8_lossy(&w.into_inner()).to_string();
        assert!(text.lines().all(|l| l.len() <= 76), "{text}");
        let back = parse_str(&text).unwrap_or_default();
        assert_eq!(back, vec![LdifRecord::Content(e)]);
    }
}
