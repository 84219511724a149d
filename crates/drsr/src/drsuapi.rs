//! The DRSUAPI calls (MS-DRSR 4.1): `IDL_DRSBind`, `IDL_DRSGetNCChanges`, `IDL_DRSUnbind`.
#![deny(clippy::indexing_slicing)]

use crate::RpcError;
use crate::ndr::{Decoder, Encoder};
use crate::rpc::Connection;

const DRS_BIND: u16 = 0;
const DRS_UNBIND: u16 = 1;

/// NTDSAPI_CLIENT_GUID: the client DSA GUID of a tool that is not a DC.
const CLIENT_DSA: [u8; 16] =
    [0x1a, 0x20, 0x4d, 0xe2, 0xd6, 0x4f, 0xd1, 0x11, 0xa3, 0xda, 0x00, 0x00, 0xf8, 0x75, 0xae, 0x0d];

const DRS_EXT_BASE: u32 = 0x0000_0001;
const DRS_EXT_STRONG_ENCRYPTION: u32 = 0x0000_8000;
const DRS_EXT_GETCHGREQ_V8: u32 = 0x0100_0000;
const DRS_EXT_GETCHGREPLY_V6: u32 = 0x0400_0000;

/// A bound DRS session: the context handle the other calls take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrsHandle(pub [u8; 20]);

/// What the server said it supports (DRS_EXTENSIONS_INT.dwFlags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerExtensions {
    pub flags: u32,
}

pub async fn bind(conn: &mut Connection) -> Result<(DrsHandle, ServerExtensions), RpcError> {
    let mut e = Encoder::new();
    e.referent();
    e.bytes(&CLIENT_DSA);
    e.referent();
    let ext_flags = DRS_EXT_BASE | DRS_EXT_STRONG_ENCRYPTION | DRS_EXT_GETCHGREQ_V8 | DRS_EXT_GETCHGREPLY_V6;
    let mut ext = ext_flags.to_le_bytes().to_vec();
    ext.extend_from_slice(&[0u8; 16]); // site object GUID
    ext.extend_from_slice(&0u32.to_le_bytes()); // pid
    ext.extend_from_slice(&0u32.to_le_bytes()); // replication epoch
    let cb = u32::try_from(ext.len()).unwrap_or(0);
    e.u32(cb); // conformance
    e.u32(cb);
    e.bytes(&ext);
    let stub = conn.call(DRS_BIND, &e.buf).await?;
    let mut d = Decoder::new(&stub);
    let mut flags = 0;
    if d.u32()? != 0 {
        let _max = d.u32()?;
        let cb = d.count(1, "the server's extensions")?;
        let bytes = d.take(cb, "the server's extensions")?;
        flags = bytes.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes).unwrap_or(0);
        d.align(4)?;
    }
    let handle: [u8; 20] =
        d.take(20, "the DRS handle")?.try_into().map_err(|_| RpcError::Malformed("DRS handle".into()))?;
    let status = d.u32()?;
    if status != 0 {
        return Err(RpcError::Fault(status));
    }
    Ok((DrsHandle(handle), ServerExtensions { flags }))
}

pub async fn unbind(conn: &mut Connection, handle: DrsHandle) -> Result<(), RpcError> {
    let mut e = Encoder::new();
    e.bytes(&handle.0);
    let stub = conn.call(DRS_UNBIND, &e.buf).await?;
    let mut d = Decoder::new(&stub);
    d.take(20, "the closed handle")?;
    match d.u32()? {
        0 => Ok(()),
        status => Err(RpcError::Fault(status)),
    }
}

const DRS_GET_NC_CHANGES: u16 = 3;
const ERROR_ACCESS_DENIED: u32 = 5;
const ERROR_DS_DRA_ACCESS_DENIED: u32 = 0x2105;
const ERROR_DS_DRA_SOURCE_DISABLED: u32 = 0x2108;

pub const DRS_INIT_SYNC: u32 = 0x0000_0020;
pub const DRS_WRIT_REP: u32 = 0x0000_0010;
pub const DRS_NEVER_SYNCED: u32 = 0x0020_0000;
pub const DRS_GET_ANC: u32 = 0x0000_0800;
pub const EXOP_REPL_OBJ: u32 = 6;

/// Attribute ids in the default prefix table (MS-DRSR 5.16.4: index 9 is 1.2.840.113556.1.4).
pub const ATT_UNICODE_PWD: u32 = 0x0009_005a;
pub const ATT_OBJECT_SID: u32 = 0x0009_0092;
pub const ATT_SAM_ACCOUNT_NAME: u32 = 0x0009_00dd;
pub const ATT_PWD_LAST_SET: u32 = 0x0009_0060;
pub const ATT_USER_ACCOUNT_CONTROL: u32 = 0x0009_0008;

/// What to replicate.
#[derive(Debug, Clone)]
pub struct ChangesRequest {
    /// The naming context, or the one object with `EXOP_REPL_OBJ`.
    pub dn: String,
    /// Where the last round ended (usnHighObjUpdate, usnHighPropUpdate).
    pub usn_from: (u64, u64),
    pub flags: u32,
    pub max_objects: u32,
    pub max_bytes: u32,
    pub extended_op: u32,
    /// Only these attributes (default prefix table ids); empty = all.
    pub attributes: Vec<u32>,
}

/// One replicated object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplObject {
    pub dn: String,
    pub guid: [u8; 16],
    /// The object's SID as stored in its DSNAME (binary), if any.
    pub sid: Vec<u8>,
    /// Attribute id (as the server's prefix table names it, translated to
    /// the default table where it can be) and values.
    pub attrs: Vec<(u32, Vec<Vec<u8>>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesReply {
    pub objects: Vec<ReplObject>,
    pub usn_to: (u64, u64),
    pub more: bool,
    pub extended_ret: u32,
}

fn dsname(e: &mut Encoder, dn: &str) {
    let chars: Vec<u16> = dn.encode_utf16().collect();
    let name_len = u32::try_from(chars.len()).unwrap_or(0);
    e.u32(name_len + 1); // conformance
    let struct_len = 4 + 4 + 16 + 28 + 4 + 2 * (name_len + 1);
    e.u32(struct_len);
    e.u32(0); // SidLen
    e.bytes(&[0u8; 16]); // Guid
    e.bytes(&[0u8; 28]); // Sid
    e.u32(name_len);
    for c in chars {
        e.u16(c);
    }
    e.u16(0);
}

fn read_dsname(d: &mut Decoder<'_>) -> Result<(String, [u8; 16], Vec<u8>), RpcError> {
    let count = d.count(2, "a DSNAME")?;
    let _struct_len = d.u32()?;
    let sid_len = usize::try_from(d.u32()?).unwrap_or(0).min(28);
    let guid: [u8; 16] = d.take(16, "a GUID")?.try_into().map_err(|_| RpcError::Malformed("GUID".into()))?;
    let sid = d.take(28, "a SID")?.get(..sid_len).unwrap_or_default().to_vec();
    let _name_len = d.u32()?;
    let mut units = Vec::with_capacity(count);
    for _ in 0..count {
        units.push(d.u16()?);
    }
    while units.last() == Some(&0) {
        units.pop();
    }
    Ok((String::from_utf16_lossy(&units), guid, sid))
}

/// One `IDL_DRSGetNCChanges` round (request V8, reply V6; no compression).
pub async fn get_nc_changes(
    conn: &mut Connection,
    handle: DrsHandle,
    req: &ChangesRequest,
) -> Result<ChangesReply, RpcError> {
    let mut e = Encoder::new();
    e.bytes(&handle.0);
    e.u32(8); // dwInVersion
    e.u32(8); // union discriminant
    e.align(8);
    e.bytes(&CLIENT_DSA); // uuidDsaObjDest
    e.bytes(&[0u8; 16]); // uuidInvocIdSrc
    e.referent(); // pNC
    e.u64(req.usn_from.0);
    e.u64(0);
    e.u64(req.usn_from.1);
    e.null(); // pUpToDateVecDest
    e.u32(req.flags);
    e.u32(req.max_objects);
    e.u32(req.max_bytes);
    e.u32(req.extended_op);
    e.u64(0); // liFsmoInfo
    if req.attributes.is_empty() {
        e.null();
    } else {
        e.referent();
    }
    e.null(); // pPartialAttrSetEx
    e.u32(0); // PrefixTableDest: no entries (the default table applies)
    e.null();
    // Deferred: pNC, then the partial attribute set.
    dsname(&mut e, &req.dn);
    if !req.attributes.is_empty() {
        let n = u32::try_from(req.attributes.len()).unwrap_or(0);
        e.u32(n); // conformance
        e.u32(1); // dwVersion
        e.u32(0);
        e.u32(n);
        for a in &req.attributes {
            e.u32(*a);
        }
    }
    let stub = conn.call(DRS_GET_NC_CHANGES, &e.buf).await?;
    parse_reply(&stub)
}

/// An OID prefix table: index → the BER bytes of the OID without its last arc.
type Prefixes = Vec<(u32, Vec<u8>)>;

/// The default prefix table's entries that this client asks for attributes by.
const DEFAULT_PREFIXES: &[(u32, &[u8])] = &[(9, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x14, 0x01, 0x04])];

/// An attribute id of the server's table, in the default table where its prefix is there.
fn to_default(attr: u32, prefixes: &Prefixes) -> u32 {
    let (index, low) = (attr >> 16, attr & 0xffff);
    let Some((_, prefix)) = prefixes.iter().find(|(i, _)| *i == index) else { return attr };
    match DEFAULT_PREFIXES.iter().find(|(_, p)| *p == prefix.as_slice()) {
        Some((default_index, _)) => (default_index << 16) | low,
        None => attr,
    }
}

fn parse_reply(stub: &[u8]) -> Result<ChangesReply, RpcError> {
    let mut d = Decoder::new(stub);
    let version = d.u32()?;
    let arm = d.u32()?;
    if version != 6 || arm != 6 {
        return Err(RpcError::Malformed(format!("GetNCChanges reply (version {version}; only 6 is read)")));
    }
    d.align(8)?;
    d.take(32, "the source DSA")?;
    let p_nc = d.u32()?;
    let _from = (d.u64()?, d.u64()?, d.u64()?);
    let to = (d.u64()?, d.u64()?, d.u64()?);
    let p_utd = d.u32()?;
    let prefix_count = d.u32()?;
    let p_prefix = d.u32()?;
    let extended_ret = d.u32()?;
    let _objects = d.u32()?;
    let _bytes = d.u32()?;
    let p_objects = d.u32()?;
    let more = d.u32()? != 0;
    let _nc_objects = d.u32()?;
    let _nc_values = d.u32()?;
    let num_values = d.u32()?;
    let p_values = d.u32()?;
    let drs_error = d.u32()?;
    // Deferred, in order.
    if p_nc != 0 {
        read_dsname(&mut d)?;
    }
    if p_utd != 0 {
        let count = d.count(32, "the up-to-date vector")?;
        d.align(8)?;
        let _version = d.u32()?;
        let _r1 = d.u32()?;
        let _n = d.u32()?;
        let _r2 = d.u32()?;
        for _ in 0..count {
            d.align(8)?;
            d.take(16, "a cursor")?;
            d.u64()?;
            d.u64()?;
        }
    }
    let mut prefixes: Prefixes = Vec::new();
    if p_prefix != 0 {
        let count = d.count(12, "the prefix table")?;
        if count != usize::try_from(prefix_count).unwrap_or(0) {
            return Err(RpcError::Malformed("prefix table (counts disagree)".into()));
        }
        let mut heads = Vec::with_capacity(count);
        for _ in 0..count {
            let index = d.u32()?;
            let _len = d.u32()?;
            let ptr = d.u32()?;
            heads.push((index, ptr));
        }
        for (index, ptr) in heads {
            if ptr != 0 {
                let n = d.count(1, "an OID prefix")?;
                prefixes.push((index, d.take(n, "an OID prefix")?.to_vec()));
            }
        }
    }
    let mut objects = Vec::new();
    if p_objects != 0 {
        read_entry_list(&mut d, &prefixes, &mut objects)?;
    }
    if p_values != 0 {
        // Linked values (group members and the like): read past, not kept.
        let count = d.count(72, "the linked values")?;
        if count != usize::try_from(num_values).unwrap_or(0) {
            return Err(RpcError::Malformed("linked values (counts disagree)".into()));
        }
        let mut heads = Vec::with_capacity(count);
        for _ in 0..count {
            d.align(8)?;
            let _typ = d.u32()?;
            let p_object = d.u32()?;
            let _len = d.u32()?;
            let p_val = d.u32()?;
            let _present = d.u32()?;
            d.align(8)?;
            d.take(8, "a creation time")?;
            d.u32()?;
            d.align(8)?;
            d.take(8 + 16 + 8, "value metadata")?;
            heads.push((p_object, p_val));
        }
        for (p_object, p_val) in heads {
            if p_object != 0 {
                read_dsname(&mut d)?;
            }
            if p_val != 0 {
                let n = d.count(1, "a linked value")?;
                d.take(n, "a linked value")?;
            }
        }
    }
    let status = d.u32()?;
    for code in [status, drs_error] {
        if code == ERROR_DS_DRA_ACCESS_DENIED || code == ERROR_ACCESS_DENIED {
            return Err(RpcError::ReplicationDenied);
        }
        if code == ERROR_DS_DRA_SOURCE_DISABLED {
            return Err(RpcError::OutboundReplicationDisabled);
        }
        if code != 0 {
            return Err(RpcError::Fault(code));
        }
    }
    Ok(ChangesReply { objects, usn_to: (to.0, to.2), more, extended_ret })
}

/// Most objects one reply may carry: far above what a DC sends per round
/// (the request asks for at most a few thousand), low enough to bound memory.
const MAX_OBJECTS_PER_REPLY: usize = 1_000_000;

/// One REPLENTINFLIST's scalars: what its deferred buffers hold.
struct EntryHead {
    p_name: u32,
    attr_count: u32,
    p_attr: u32,
    p_parent: u32,
    p_meta: u32,
}

/// The REPLENTINFLIST chain. NDR writes it as every entry's scalars first
/// (each one's `pNextEntInf` referent is the next entry), then the buffers
/// from the last entry back to the first. Read in two loops — never by
/// recursion, which a long list from a hostile server could use to
/// overflow the stack.
fn read_entry_list(d: &mut Decoder<'_>, prefixes: &Prefixes, out: &mut Vec<ReplObject>) -> Result<(), RpcError> {
    let mut heads = Vec::new();
    loop {
        if heads.len() >= MAX_OBJECTS_PER_REPLY {
            return Err(RpcError::Malformed("object list (too long)".into()));
        }
        let p_next = d.u32()?;
        let p_name = d.u32()?;
        let _flags = d.u32()?;
        let attr_count = d.u32()?;
        let p_attr = d.u32()?;
        let _is_nc_prefix = d.u32()?;
        let p_parent = d.u32()?;
        let p_meta = d.u32()?;
        heads.push(EntryHead { p_name, attr_count, p_attr, p_parent, p_meta });
        if p_next == 0 {
            break;
        }
    }
    let first = out.len();
    for head in heads.iter().rev() {
        out.push(read_entry_buffers(d, prefixes, head)?);
    }
    out.get_mut(first..).unwrap_or_default().reverse();
    Ok(())
}

fn read_entry_buffers(d: &mut Decoder<'_>, prefixes: &Prefixes, head: &EntryHead) -> Result<ReplObject, RpcError> {
    let (dn, guid, sid) = if head.p_name != 0 { read_dsname(d)? } else { (String::new(), [0u8; 16], Vec::new()) };
    let mut attrs = Vec::new();
    if head.p_attr != 0 {
        let count = d.count(12, "an attribute block")?;
        if count != usize::try_from(head.attr_count).unwrap_or(0) {
            return Err(RpcError::Malformed("attribute block (counts disagree)".into()));
        }
        let mut heads = Vec::with_capacity(count);
        for _ in 0..count {
            let typ = d.u32()?;
            let n = d.u32()?;
            let ptr = d.u32()?;
            heads.push((typ, n, ptr));
        }
        for (typ, _n, ptr) in heads {
            let mut values = Vec::new();
            if ptr != 0 {
                let n = d.count(8, "attribute values")?;
                let mut vheads = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = d.u32()?;
                    let vptr = d.u32()?;
                    vheads.push((len, vptr));
                }
                for (_len, vptr) in vheads {
                    if vptr != 0 {
                        let size = d.count(1, "a value")?;
                        values.push(d.take(size, "a value")?.to_vec());
                    }
                }
            }
            attrs.push((to_default(typ, prefixes), values));
        }
    }
    if head.p_parent != 0 {
        d.take(16, "the parent GUID")?;
    }
    if head.p_meta != 0 {
        let count = d.count(40, "the metadata vector")?;
        d.align(8)?;
        let _n = d.u32()?;
        for _ in 0..count {
            d.align(8)?;
            d.take(40, "a metadata entry")?;
        }
    }
    Ok(ReplObject { dn, guid, sid, attrs })
}

/// Every object of a naming context with the given attributes, round by
/// round from `usn_from`; returns the objects and where the next run starts.
pub async fn replicate(
    conn: &mut Connection,
    handle: DrsHandle,
    nc: &str,
    usn_from: (u64, u64),
    attributes: &[u32],
    mut each: impl FnMut(ReplObject),
) -> Result<(u64, u64), RpcError> {
    let mut from = usn_from;
    // Bounded: a server that never says "no more" cannot keep us here.
    for _ in 0..1_000_000 {
        let req = ChangesRequest {
            dn: nc.to_string(),
            usn_from: from,
            flags: DRS_INIT_SYNC | DRS_WRIT_REP | DRS_GET_ANC | if from == (0, 0) { DRS_NEVER_SYNCED } else { 0 },
            max_objects: 400,
            max_bytes: 4 << 20,
            extended_op: 0,
            attributes: attributes.to_vec(),
        };
        let reply = get_nc_changes(conn, handle, &req).await?;
        for o in reply.objects {
            each(o);
        }
        from = reply.usn_to;
        if !reply.more {
            return Ok(from);
        }
    }
    Err(RpcError::Malformed("replication (did not finish)".into()))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A long object list (as a broken or hostile DC might send) is read
    /// without recursion: 300,000 entries would overflow a recursive reader's stack.
    #[test]
    fn a_long_object_list_is_read_iteratively() {
        let entries = 300_000usize;
        let mut stub = Vec::with_capacity(entries * 32);
        for i in 0..entries {
            let p_next: u32 = if i + 1 < entries { 0x2_0000 } else { 0 };
            stub.extend_from_slice(&p_next.to_le_bytes());
            stub.extend_from_slice(&[0u8; 28]);
        }
        let mut objects = Vec::new();
        read_entry_list(&mut Decoder::new(&stub), &Vec::new(), &mut objects).unwrap();
        assert_eq!(objects.len(), entries);
        // Cut short: an error, not a panic.
        let cut = stub.get(..stub.len() - 40).unwrap();
        assert!(read_entry_list(&mut Decoder::new(cut), &Vec::new(), &mut Vec::new()).is_err());
        // A chain that never ends within the data.
        let endless: Vec<u8> =
            std::iter::repeat_n([0x00u8, 0x00, 0x02, 0x00].into_iter().chain([0u8; 28]), 50_000).flatten().collect();
        assert!(read_entry_list(&mut Decoder::new(&endless), &Vec::new(), &mut Vec::new()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever a server sends, the reply parser returns an error or a reply; it never panics.
        #[test]
        fn replies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600), ptrs in any::<[bool; 6]>()) {
            let mut stub = Vec::new();
            stub.extend_from_slice(&6u32.to_le_bytes());
            stub.extend_from_slice(&6u32.to_le_bytes());
            // Pointer-ish words in the places the parser looks, to reach the deferred parts.
            for (i, p) in ptrs.iter().enumerate() {
                stub.extend_from_slice(&(if *p { 0x2_0000 + i as u32 } else { 0 }).to_le_bytes());
            }
            stub.extend_from_slice(&body);
            let _ = parse_reply(&stub);
            let _ = parse_reply(&body);
        }

        #[test]
        fn challenges_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut m = b"NTLMSSP\0".to_vec();
            m.extend_from_slice(&2u32.to_le_bytes());
            m.extend_from_slice(&body);
            let _ = crate::ntlm::parse_challenge(&m);
            let _ = crate::epm::tower_port(&body);
            let _ = crate::pdu::Header::decode(&body);
            let _ = crate::secrets::decrypt_secret(&[7u8; 16], &body);
            let _ = crate::secrets::nt_hash_from_rid_encrypted(&body, 1104);
        }
    }
}
