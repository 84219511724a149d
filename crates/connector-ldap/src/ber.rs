//! BER encoding and decoding for the parts of LDAP messages we read ourselves:
//! search result entries and the paged-results, DirSync and content-sync
//! (RFC 4533) controls. Every decoder returns `None` on malformed input
//! instead of panicking (ldap3's own parsers panic).
#![deny(clippy::indexing_slicing)]

use ldap3::asn1::{
    ASNTag, Boolean, Enumerated, Integer, OctetString, PL, Sequence, StructureTag, Tag, TagClass, Types, parse_tag,
    write,
};
use ldap3::controls::RawControl;

pub const PAGED_RESULTS_OID: &str = "1.2.840.113556.1.4.319";
pub const DIRSYNC_OID: &str = "1.2.840.113556.1.4.841";
pub const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";
pub const SYNC_REQUEST_OID: &str = "1.3.6.1.4.1.4203.1.9.1.1";
pub const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
pub const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
pub const SYNC_INFO_OID: &str = "1.3.6.1.4.1.4203.1.9.1.4";
/// The password policy control (draft-behera-ldap-password-policy), as
/// OpenLDAP's and 389's ppolicy send it.
pub const PPOLICY_OID: &str = "1.3.6.1.4.1.42.2.27.8.5.1";

fn encode(tags: Vec<Tag>) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    let seq = Tag::Sequence(Sequence { inner: tags, ..Default::default() }).into_structure();
    // Encoding into memory cannot fail.
    if write::encode_into(&mut buf, seq).is_err() {
        return Vec::new();
    }
    buf.to_vec()
}

pub(crate) fn int(v: i64) -> Tag {
    Tag::Integer(Integer { inner: v, ..Default::default() })
}

pub(crate) fn octets(v: Vec<u8>) -> Tag {
    Tag::OctetString(OctetString { inner: v, ..Default::default() })
}

/// Simple paged results request (RFC 2696).
pub fn paged_control(size: u32, cookie: Vec<u8>) -> RawControl {
    RawControl {
        ctype: PAGED_RESULTS_OID.into(),
        crit: false,
        val: Some(encode(vec![int(i64::from(size)), octets(cookie)])),
    }
}

/// AD DirSync request: `{flags, maxBytes, cookie}`; must be critical.
pub fn dirsync_control(flags: i64, max_bytes: i64, cookie: Vec<u8>) -> RawControl {
    RawControl {
        ctype: DIRSYNC_OID.into(),
        crit: true,
        val: Some(encode(vec![int(flags), int(max_bytes), octets(cookie)])),
    }
}

pub fn show_deleted_control() -> RawControl {
    RawControl { ctype: SHOW_DELETED_OID.into(), crit: true, val: None }
}

/// RFC 4533 sync request in refreshOnly mode.
pub fn sync_request_control(cookie: Option<Vec<u8>>) -> RawControl {
    sync_request(1, cookie)
}

/// RFC 4533 sync request in refreshAndPersist mode (changes are pushed).
pub fn sync_persist_control(cookie: Option<Vec<u8>>) -> RawControl {
    sync_request(3, cookie)
}

fn sync_request(mode: i64, cookie: Option<Vec<u8>>) -> RawControl {
    let mut tags = vec![Tag::Enumerated(Enumerated { inner: mode, ..Default::default() })];
    if let Some(c) = cookie {
        tags.push(octets(c));
    }
    tags.push(Tag::Boolean(Boolean { inner: false, ..Default::default() }));
    RawControl { ctype: SYNC_REQUEST_OID.into(), crit: true, val: Some(encode(tags)) }
}

/// Active Directory's policy-hints control (`LDAP_SERVER_POLICY_HINTS_OID`,
/// Windows Server 2012 and later): a reset held to the password history
/// like a change.
pub const POLICY_HINTS_OID: &str = "1.2.840.113556.1.4.2239";

/// The policy-hints control, `SEQUENCE { Flags INTEGER 1 }`. Not critical:
/// a directory that does not know it (Samba) resets as it always does.
pub fn policy_hints_control() -> RawControl {
    RawControl { ctype: POLICY_HINTS_OID.into(), crit: false, val: Some(vec![0x30, 0x03, 0x02, 0x01, 0x01]) }
}

/// Asks the server for its password-policy response (no value).
pub fn ppolicy_request_control() -> RawControl {
    RawControl { ctype: PPOLICY_OID.into(), crit: false, val: None }
}

/// The error of a password-policy response, if it has one:
/// `SEQUENCE { warning [0] … OPTIONAL, error [1] ENUMERATED OPTIONAL }`.
pub fn parse_ppolicy_error(val: &[u8]) -> Option<i64> {
    let items = seq_items(parse_value(val)?)?;
    items.iter().find(|t| t.class == TagClass::Context && t.id == 1).and_then(as_int)
}

fn parse_value(bytes: &[u8]) -> Option<StructureTag> {
    parse_tag(bytes).ok().map(|(_, t)| t)
}

fn as_int(tag: &StructureTag) -> Option<i64> {
    match &tag.payload {
        PL::P(bytes) if !bytes.is_empty() && bytes.len() <= 8 => {
            let neg = bytes.first().is_some_and(|b| b & 0x80 != 0);
            let mut v: i64 = if neg { -1 } else { 0 };
            for b in bytes {
                v = (v << 8) | i64::from(*b);
            }
            Some(v)
        }
        _ => None,
    }
}

fn as_bool(tag: &StructureTag) -> Option<bool> {
    match &tag.payload {
        PL::P(bytes) => bytes.first().map(|b| *b != 0),
        PL::C(_) => None,
    }
}

fn seq_items(tag: StructureTag) -> Option<Vec<StructureTag>> {
    tag.expect_constructed()
}

/// Paged results response: the cookie (empty when done).
pub fn parse_paged_response(val: &[u8]) -> Option<Vec<u8>> {
    let mut items = seq_items(parse_value(val)?)?.into_iter();
    let _size = items.next()?;
    items.next()?.expect_primitive()
}

/// DirSync response: (more data follows, cookie).
pub fn parse_dirsync_response(val: &[u8]) -> Option<(bool, Vec<u8>)> {
    let mut items = seq_items(parse_value(val)?)?.into_iter();
    let more = as_int(&items.next()?)? != 0;
    let _unused = items.next()?;
    let cookie = items.next()?.expect_primitive()?;
    Some((more, cookie))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStateKind {
    Present,
    Add,
    Modify,
    Delete,
}

/// RFC 4533 Sync State control on an entry: (state, entryUUID, cookie).
pub fn parse_sync_state(val: &[u8]) -> Option<(SyncStateKind, Vec<u8>, Option<Vec<u8>>)> {
    let mut items = seq_items(parse_value(val)?)?.into_iter();
    let state = match as_int(&items.next()?)? {
        0 => SyncStateKind::Present,
        1 => SyncStateKind::Add,
        2 => SyncStateKind::Modify,
        3 => SyncStateKind::Delete,
        _ => return None,
    };
    let uuid = items.next()?.expect_primitive()?;
    let cookie = match items.next() {
        Some(t) => Some(t.expect_primitive()?),
        None => None,
    };
    Some((state, uuid, cookie))
}

/// RFC 4533 Sync Done control: (cookie, refreshDeletes).
pub fn parse_sync_done(val: &[u8]) -> Option<(Option<Vec<u8>>, bool)> {
    let items = seq_items(parse_value(val)?)?;
    let mut cookie = None;
    let mut refresh_deletes = false;
    for t in items {
        if t.id == Types::OctetString as u64 {
            cookie = Some(t.expect_primitive()?);
        } else if t.id == Types::Boolean as u64 {
            refresh_deletes = as_bool(&t)?;
        }
    }
    Some((cookie, refresh_deletes))
}

/// An RFC 4533 Sync Info intermediate message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncInfo {
    NewCookie(Vec<u8>),
    RefreshDelete { cookie: Option<Vec<u8>> },
    RefreshPresent { cookie: Option<Vec<u8>> },
    IdSet { cookie: Option<Vec<u8>>, refresh_deletes: bool, uuids: Vec<Vec<u8>> },
}

/// Decodes an IntermediateResponse message carrying a Sync Info value.
pub fn parse_sync_info(msg: StructureTag) -> Option<SyncInfo> {
    let items = msg.match_id(25)?.expect_constructed()?;
    let mut value = None;
    let mut oid_ok = false;
    for t in items {
        match t.id {
            0 => oid_ok = t.expect_primitive()? == SYNC_INFO_OID.as_bytes(),
            1 => value = Some(t.expect_primitive()?),
            _ => {}
        }
    }
    if !oid_ok {
        return None;
    }
    let info = parse_value(&value?)?;
    if info.class != TagClass::Context {
        return None;
    }
    match (info.id, info.payload) {
        (0, PL::P(cookie)) => Some(SyncInfo::NewCookie(cookie)),
        (id @ 1..=3, PL::C(parts)) => {
            let mut cookie = None;
            let mut flag = None;
            let mut uuids = Vec::new();
            for p in parts {
                if p.id == Types::OctetString as u64 && p.class == TagClass::Universal {
                    cookie = Some(p.expect_primitive()?);
                } else if p.id == Types::Boolean as u64 {
                    flag = Some(as_bool(&p)?);
                } else if p.id == Types::Set as u64 {
                    for u in p.expect_constructed()? {
                        uuids.push(u.expect_primitive()?);
                    }
                }
            }
            Some(match id {
                1 => SyncInfo::RefreshDelete { cookie },
                2 => SyncInfo::RefreshPresent { cookie },
                _ => SyncInfo::IdSet { cookie, refresh_deletes: flag.unwrap_or(false), uuids },
            })
        }
        _ => None,
    }
}

/// A search result entry as raw attribute bytes.
pub type RawEntry = (String, Vec<(String, Vec<Vec<u8>>)>);

/// Decodes a SearchResultEntry ([APPLICATION 4]).
pub fn parse_entry(msg: StructureTag) -> Option<RawEntry> {
    let mut parts = msg.match_id(4)?.expect_constructed()?.into_iter();
    let dn = String::from_utf8(parts.next()?.expect_primitive()?).ok()?;
    let mut attrs = Vec::new();
    for a in parts.next()?.expect_constructed()? {
        let mut pa = a.expect_constructed()?.into_iter();
        let name = String::from_utf8(pa.next()?.expect_primitive()?).ok()?;
        let values = match pa.next() {
            Some(v) => {
                v.expect_constructed()?.into_iter().map(StructureTag::expect_primitive).collect::<Option<Vec<_>>>()?
            }
            None => Vec::new(),
        };
        attrs.push((name, values));
    }
    Some((dn, attrs))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn dirsync_round_trip_shape() {
        let c = dirsync_control(0, 1_048_576, b"abc".to_vec());
        assert_eq!(c.ctype, DIRSYNC_OID);
        // A response has the same shape: {more, unused, cookie}.
        let resp = encode(vec![int(1), int(0), octets(b"xyz".to_vec())]);
        assert_eq!(parse_dirsync_response(&resp), Some((true, b"xyz".to_vec())));
        assert_eq!(parse_dirsync_response(&[0x30, 0x03, 0x02]), None);
        assert_eq!(parse_paged_response(&encode(vec![int(0), octets(vec![])])), Some(vec![]));
    }

    #[test]
    fn malformed_input_is_none() {
        assert_eq!(parse_sync_state(&[]), None);
        assert_eq!(parse_sync_done(&[0xff, 0xff]), None);
        let state = encode(vec![Tag::Enumerated(Enumerated { inner: 9, ..Default::default() }), octets(vec![1; 16])]);
        assert_eq!(parse_sync_state(&state), None);
        let ok = encode(vec![Tag::Enumerated(Enumerated { inner: 3, ..Default::default() }), octets(vec![1; 16])]);
        assert_eq!(parse_sync_state(&ok), Some((SyncStateKind::Delete, vec![1; 16], None)));
        assert_eq!(as_int(&StructureTag { class: TagClass::Universal, id: 2, payload: PL::P(vec![0xff]) }), Some(-1));
    }
}
