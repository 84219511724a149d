//! LDAP messages read straight from the receive buffer (RFC 4511 §4.1–4.5),
//! for the connection that runs paged searches ([`crate::reader`]).
//!
//! Why our own decoder: ldap3 parses every message into a tree of owned BER
//! nodes and copies that tree once more before we see it; in a full import
//! that was about half of the CPU time. Here a message is a borrowed slice,
//! an entry is built from it in one pass, and nothing else is allocated.
//!
//! Bounds: a message is at most [`MAX_MESSAGE`] bytes (checked from its
//! header, before it is buffered); every length is checked against the bytes
//! that hold it; the structure is fixed by RFC 4511, so decoding is a loop
//! per level and never recursion driven by the input. Malformed input is an
//! error, never a panic.
#![deny(clippy::indexing_slicing)]

use crate::ber::RawEntry;

/// The largest message accepted: an entry with a million 200-byte values
/// fits (OpenLDAP returns a group's members in one entry).
pub const MAX_MESSAGE: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed BER: {0}")]
    Malformed(&'static str),
    #[error("a message of {0} bytes is larger than the limit of {MAX_MESSAGE} bytes")]
    TooLarge(usize),
    #[error("a DN or attribute name is not UTF-8")]
    NotUtf8,
}

const UNIVERSAL: u8 = 0x00;
const APPLICATION: u8 = 0x40;
const CONTEXT: u8 = 0x80;

/// One BER element: its identifier and its contents.
#[derive(Debug, Clone, Copy)]
struct Element<'a> {
    class: u8,
    constructed: bool,
    number: u32,
    content: &'a [u8],
}

impl Element<'_> {
    fn is(&self, class: u8, number: u32) -> bool {
        self.class == class && self.number == number
    }
}

/// An element's identifier and length.
#[derive(Debug, Clone, Copy)]
struct Header {
    class: u8,
    constructed: bool,
    number: u32,
    /// Bytes of identifier and length.
    size: usize,
    /// Bytes of contents.
    length: usize,
}

/// The header at the start of `input`, or `None` when `input` ends inside it.
fn header(input: &[u8]) -> Result<Option<Header>, WireError> {
    let Some(&first) = input.first() else { return Ok(None) };
    let mut at = 1;
    let mut number = u32::from(first & 0x1f);
    if number == 0x1f {
        // High tag numbers: base-128, at most four bytes (LDAP uses none of them).
        number = 0;
        loop {
            let Some(&b) = input.get(at) else { return Ok(None) };
            at += 1;
            if at > 5 {
                return Err(WireError::Malformed("tag number too long"));
            }
            number = (number << 7) | u32::from(b & 0x7f);
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let Some(&len0) = input.get(at) else { return Ok(None) };
    at += 1;
    let length = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let count = usize::from(len0 & 0x7f);
        // 0x80 is the indefinite form, which LDAP forbids (RFC 4511 §5.1).
        if count == 0 || count > 4 {
            return Err(WireError::Malformed("unsupported length form"));
        }
        let mut length = 0usize;
        for _ in 0..count {
            let Some(&b) = input.get(at) else { return Ok(None) };
            at += 1;
            length = (length << 8) | usize::from(b);
        }
        length
    };
    Ok(Some(Header { class: first & 0xc0, constructed: first & 0x20 != 0, number, size: at, length }))
}

/// The length of the first whole message in `buf`, or `None` while more bytes
/// are needed. A message larger than [`MAX_MESSAGE`] is refused from its header.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(h) = header(buf)? else { return Ok(None) };
    if !(h.class == UNIVERSAL && h.constructed && h.number == 16) {
        return Err(WireError::Malformed("an LDAP message is not a SEQUENCE"));
    }
    let total = h.size.checked_add(h.length).ok_or(WireError::TooLarge(usize::MAX))?;
    if total > MAX_MESSAGE {
        return Err(WireError::TooLarge(total));
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Splits the first element off `input`.
fn element(input: &[u8]) -> Result<(Element<'_>, &[u8]), WireError> {
    let h = header(input)?.ok_or(WireError::Malformed("truncated element header"))?;
    let end = h.size.checked_add(h.length).ok_or(WireError::Malformed("length overflows"))?;
    let content = input.get(h.size..end).ok_or(WireError::Malformed("element longer than its container"))?;
    let rest = input.get(end..).ok_or(WireError::Malformed("element longer than its container"))?;
    Ok((Element { class: h.class, constructed: h.constructed, number: h.number, content }, rest))
}

/// The elements of a constructed element's contents, in order.
struct Elements<'a>(&'a [u8]);

impl<'a> Elements<'a> {
    fn next(&mut self) -> Result<Option<Element<'a>>, WireError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let (e, rest) = element(self.0)?;
        self.0 = rest;
        Ok(Some(e))
    }

    fn expect(&mut self, what: &'static str) -> Result<Element<'a>, WireError> {
        self.next()?.ok_or(WireError::Malformed(what))
    }
}

fn integer(e: &Element<'_>) -> Result<i64, WireError> {
    if e.constructed || e.content.is_empty() || e.content.len() > 8 {
        return Err(WireError::Malformed("bad INTEGER"));
    }
    let negative = e.content.first().is_some_and(|b| b & 0x80 != 0);
    let mut v: i64 = if negative { -1 } else { 0 };
    for b in e.content {
        v = (v << 8) | i64::from(*b);
    }
    Ok(v)
}

fn text(e: &Element<'_>) -> Result<String, WireError> {
    if e.constructed {
        return Err(WireError::Malformed("constructed string"));
    }
    String::from_utf8(e.content.to_vec()).map_err(|_| WireError::NotUtf8)
}

/// What a server said at the end of an operation (LDAPResult).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationResult {
    pub code: u32,
    pub matched_dn: String,
    pub message: String,
    /// Response controls: (OID, value).
    pub controls: Vec<(String, Option<Vec<u8>>)>,
}

/// A decoded message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// SearchResultEntry.
    Entry(RawEntry),
    /// SearchResultReference (a referral to another server).
    Reference,
    /// SearchResultDone.
    SearchDone(OperationResult),
    /// BindResponse.
    Bind(OperationResult),
    /// ExtendedResponse (StartTLS's answer, or a notice of disconnection).
    Extended(OperationResult),
    /// Any other operation (an IntermediateResponse, say): its tag number.
    Other(u32),
}

/// A message: its id and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: i64,
    pub response: Response,
}

/// Decodes one whole message (as [`frame_len`] delimited it).
pub fn decode(message: &[u8]) -> Result<Message, WireError> {
    let (outer, _) = element(message)?;
    let mut parts = Elements(outer.content);
    let id_element = parts.expect("no message id")?;
    if !id_element.is(UNIVERSAL, 2) {
        return Err(WireError::Malformed("message id is not an INTEGER"));
    }
    let id = integer(&id_element)?;
    let op = parts.expect("no protocol operation")?;
    // Active Directory puts a notice of disconnection's OID after the
    // operation, where the controls belong: only a [0] there is read as controls.
    let controls = match parts.next()? {
        Some(c) if c.is(CONTEXT, 0) && c.constructed => Some(c),
        _ => None,
    };
    if op.class != APPLICATION {
        return Err(WireError::Malformed("protocol operation is not an application tag"));
    }
    let response = match op.number {
        4 => Response::Entry(entry(&op)?),
        19 => Response::Reference,
        5 => Response::SearchDone(operation_result(&op, controls)?),
        1 => Response::Bind(operation_result(&op, controls)?),
        24 => Response::Extended(operation_result(&op, controls)?),
        other => Response::Other(other),
    };
    Ok(Message { id, response })
}

/// SearchResultEntry: `{ objectName, attributes SEQUENCE OF { type, vals SET OF value } }`.
fn entry(op: &Element<'_>) -> Result<RawEntry, WireError> {
    if !op.constructed {
        return Err(WireError::Malformed("primitive search result entry"));
    }
    let mut parts = Elements(op.content);
    let dn = text(&parts.expect("entry without a DN")?)?;
    let list = parts.expect("entry without attributes")?;
    if !list.constructed {
        return Err(WireError::Malformed("attribute list is not a SEQUENCE"));
    }
    let mut attributes = Vec::new();
    let mut items = Elements(list.content);
    while let Some(attribute) = items.next()? {
        if !attribute.constructed {
            return Err(WireError::Malformed("attribute is not a SEQUENCE"));
        }
        let mut fields = Elements(attribute.content);
        let name = text(&fields.expect("attribute without a type")?)?;
        let mut values = Vec::new();
        if let Some(set) = fields.next()? {
            if !set.constructed {
                return Err(WireError::Malformed("attribute values are not a SET"));
            }
            let mut each = Elements(set.content);
            while let Some(value) = each.next()? {
                if value.constructed {
                    return Err(WireError::Malformed("constructed attribute value"));
                }
                values.push(value.content.to_vec());
            }
        }
        attributes.push((name, values));
    }
    Ok((dn, attributes))
}

/// LDAPResult: `{ resultCode, matchedDN, diagnosticMessage, referral [3] OPTIONAL, … }`.
fn operation_result(op: &Element<'_>, controls: Option<Element<'_>>) -> Result<OperationResult, WireError> {
    if !op.constructed {
        return Err(WireError::Malformed("primitive LDAPResult"));
    }
    let mut parts = Elements(op.content);
    let code = integer(&parts.expect("result without a code")?)?;
    let code = u32::try_from(code).map_err(|_| WireError::Malformed("negative result code"))?;
    // A DN or message that is not UTF-8 is shown lossily rather than refused:
    // it is only ever displayed.
    let matched_dn = String::from_utf8_lossy(parts.expect("result without a matched DN")?.content).into_owned();
    let message = String::from_utf8_lossy(parts.expect("result without a message")?.content).into_owned();
    let mut list = Vec::new();
    if let Some(controls) = controls {
        let mut each = Elements(controls.content);
        while let Some(control) = each.next()? {
            let mut fields = Elements(control.content);
            let oid = text(&fields.expect("control without a type")?)?;
            let mut value = None;
            while let Some(field) = fields.next()? {
                // criticality BOOLEAN DEFAULT FALSE, then controlValue OCTET STRING OPTIONAL
                if field.is(UNIVERSAL, 4) {
                    value = Some(field.content.to_vec());
                }
            }
            list.push((oid, value));
        }
    }
    Ok(OperationResult { code, matched_dn, message, controls: list })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// BER for tests: tag, definite length, contents.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes = (n as u32).to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (4 - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn entry_message(id: u8, dn: &str, attrs: &[(&str, &[&[u8]])]) -> Vec<u8> {
        let attributes: Vec<Vec<u8>> = attrs
            .iter()
            .map(|(name, values)| {
                let vals: Vec<Vec<u8>> = values.iter().map(|v| tlv(0x04, v)).collect();
                seq(&[tlv(0x04, name.as_bytes()), tlv(0x31, &vals.concat())])
            })
            .collect();
        let op = tlv(0x64, &[tlv(0x04, dn.as_bytes()), seq(&attributes)].concat());
        seq(&[tlv(0x02, &[id]), op])
    }

    #[test]
    fn entries_decode_with_non_ascii_and_large_values() {
        let big = vec![0xABu8; 70_000];
        let msg = entry_message(
            7,
            "cn=Zoë Ødegård,ou=Людиe,dc=example",
            &[("cn", &[b"Zo\xc3\xab", b"second"]), ("jpegPhoto", &[&big]), ("empty", &[])],
        );
        assert_eq!(frame_len(&msg), Ok(Some(msg.len())));
        for cut in [0, 1, 2, 5, msg.len() - 1] {
            assert_eq!(frame_len(&msg[..cut]), Ok(None), "cut at {cut}");
        }
        let decoded = decode(&msg).unwrap();
        assert_eq!(decoded.id, 7);
        let Response::Entry((dn, attrs)) = decoded.response else { panic!("not an entry") };
        assert_eq!(dn, "cn=Zoë Ødegård,ou=Людиe,dc=example");
        assert_eq!(attrs[0], ("cn".to_string(), vec![b"Zo\xc3\xab".to_vec(), b"second".to_vec()]));
        assert_eq!(attrs[1].1[0].len(), 70_000);
        assert_eq!(attrs[2], ("empty".to_string(), vec![]));
    }

    #[test]
    fn search_done_with_a_paged_cookie() {
        let result = tlv(0x65, &[tlv(0x0a, &[0]), tlv(0x04, b""), tlv(0x04, "fine ✓".as_bytes())].concat());
        let cookie = seq(&[tlv(0x02, &[0]), tlv(0x04, b"\x01\x02")]);
        let control = seq(&[tlv(0x04, crate::ber::PAGED_RESULTS_OID.as_bytes()), tlv(0x04, &cookie)]);
        let msg = seq(&[tlv(0x02, &[0x01, 0x00]), result, tlv(0xa0, &control)]);
        let decoded = decode(&msg).unwrap();
        assert_eq!(decoded.id, 256);
        let Response::SearchDone(done) = decoded.response else { panic!("not a SearchResultDone") };
        assert_eq!((done.code, done.message.as_str()), (0, "fine ✓"));
        assert_eq!(done.controls, vec![(crate::ber::PAGED_RESULTS_OID.to_string(), Some(cookie))]);
    }

    #[test]
    fn ad_notice_of_disconnection_is_read() {
        // The OID after the operation, where controls belong (Active Directory).
        let result = tlv(0x78, &[tlv(0x0a, &[52]), tlv(0x04, b""), tlv(0x04, b"bye")].concat());
        let msg = seq(&[tlv(0x02, &[0]), result, tlv(0x8a, b"1.3.6.1.4.1.1466.20036")]);
        let decoded = decode(&msg).unwrap();
        assert!(matches!(decoded.response, Response::Extended(ref r) if r.code == 52 && r.controls.is_empty()));
    }

    #[test]
    fn malformed_and_oversized_input_is_an_error() {
        // Indefinite length, a header claiming more than the limit, a non-SEQUENCE.
        assert!(frame_len(&[0x30, 0x80]).is_err());
        assert_eq!(frame_len(&[0x30, 0x84, 0x7f, 0xff, 0xff, 0xff]), Err(WireError::TooLarge(0x7fff_ffff + 6)));
        assert!(frame_len(&[0x04, 0x00]).is_err());
        // An attribute whose length runs past its entry.
        let mut msg = entry_message(1, "cn=a", &[("cn", &[b"x"])]);
        let at = msg.len() - 2;
        msg[at] = 0x7f;
        assert!(decode(&msg).is_err());
        // A DN that is not UTF-8.
        let msg = entry_message(1, "cn=a", &[]);
        let mut bad = msg.clone();
        let dn_at = bad.iter().position(|b| *b == b'c').unwrap();
        bad[dn_at] = 0xff;
        assert_eq!(decode(&bad), Err(WireError::NotUtf8));
    }

    #[test]
    fn every_truncation_and_corruption_of_a_message_is_handled() {
        // Bounded fuzzing without a dependency: every prefix, and every single
        // byte replaced by a few values, of entries with non-ASCII contents.
        let msg = entry_message(3, "uid=jürgen,ou=Benutzer,dc=müller", &[("description", &["Grüße 🌍".as_bytes()])]);
        for cut in 0..msg.len() {
            let _ = frame_len(&msg[..cut]);
            let _ = decode(&msg[..cut]);
        }
        for at in 0..msg.len() {
            for value in [0x00, 0x1f, 0x30, 0x7f, 0x80, 0x84, 0xff] {
                let mut bad = msg.clone();
                bad[at] = value;
                if let Ok(Some(n)) = frame_len(&bad) {
                    let _ = decode(&bad[..n]);
                }
                let _ = decode(&bad);
            }
        }
    }
}
