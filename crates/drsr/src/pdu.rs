//! Connection-oriented DCE/RPC PDUs (C706 chapter 12, MS-RPCE 2.2.2): a
//! 16-byte common header, then the body of each type.
#![deny(clippy::indexing_slicing)]

use crate::{RpcError, Syntax};

pub const REQUEST: u8 = 0;
pub const RESPONSE: u8 = 2;
pub const FAULT: u8 = 3;
pub const BIND: u8 = 11;
pub const BIND_ACK: u8 = 12;
pub const BIND_NAK: u8 = 13;

pub const FIRST_FRAG: u8 = 0x01;
pub const LAST_FRAG: u8 = 0x02;

/// Fragment size we announce and send.
pub const MAX_FRAG: u16 = 4280;

/// The common header of every PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ptype: u8,
    pub flags: u8,
    pub frag_length: u16,
    pub auth_length: u16,
    pub call_id: u32,
}

impl Header {
    pub const LEN: usize = 16;

    pub fn encode(&self) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0] = 5; // version 5.0
        h[2] = self.ptype;
        h[3] = self.flags;
        h[4] = 0x10; // little-endian, ASCII, IEEE floats
        h[8..10].copy_from_slice(&self.frag_length.to_le_bytes());
        h[10..12].copy_from_slice(&self.auth_length.to_le_bytes());
        h[12..16].copy_from_slice(&self.call_id.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8]) -> Result<Header, RpcError> {
        let not_v5 = || RpcError::Malformed("PDU header (not DCE/RPC version 5)".into());
        let h: &[u8; 16] = h.get(..16).and_then(|h| h.try_into().ok()).ok_or_else(not_v5)?;
        if h[0] != 5 {
            return Err(RpcError::Malformed("PDU header (not DCE/RPC version 5)".into()));
        }
        if h[4] & 0xf0 != 0x10 {
            return Err(RpcError::Malformed("PDU header (big-endian data is not supported)".into()));
        }
        Ok(Header {
            ptype: h[2],
            flags: h[3],
            frag_length: u16::from_le_bytes([h[8], h[9]]),
            auth_length: u16::from_le_bytes([h[10], h[11]]),
            call_id: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
        })
    }
}

fn syntax_bytes(out: &mut Vec<u8>, s: &Syntax) {
    out.extend_from_slice(&s.uuid);
    out.extend_from_slice(&s.major.to_le_bytes());
    out.extend_from_slice(&s.minor.to_le_bytes());
}

/// A bind of one presentation context (`context_id`: `abstract_syntax` over NDR).
pub fn bind(call_id: u32, context_id: u16, abstract_syntax: &Syntax, auth: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&MAX_FRAG.to_le_bytes());
    body.extend_from_slice(&MAX_FRAG.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // new association group
    body.extend_from_slice(&[1, 0, 0, 0]); // one context element
    body.extend_from_slice(&context_id.to_le_bytes());
    body.extend_from_slice(&[1, 0]); // one transfer syntax
    syntax_bytes(&mut body, abstract_syntax);
    syntax_bytes(&mut body, &crate::NDR);
    finish(BIND, FIRST_FRAG | LAST_FRAG, call_id, body, auth)
}

/// The result of a bind: the server's fragment size and whether the context was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAck {
    pub max_recv_frag: u16,
    pub assoc_group: u32,
}

pub fn parse_bind_ack(header: &Header, pdu: &[u8]) -> Result<BindAck, RpcError> {
    if header.ptype == BIND_NAK {
        let reason = pdu.get(16..18).and_then(|r| r.try_into().ok()).map(u16::from_le_bytes).unwrap_or(0);
        return Err(RpcError::BindRefused { result: 2, reason });
    }
    if header.ptype != BIND_ACK {
        return Err(RpcError::Malformed(format!("answer to a bind (PDU type {})", header.ptype)));
    }
    let body = pdu.get(16..).ok_or_else(|| RpcError::Malformed("bind_ack".into()))?;
    let mut d = crate::ndr::Decoder::new(body);
    let _max_xmit = d.u16()?;
    let max_recv_frag = d.u16()?;
    let assoc_group = d.u32()?;
    let port_len = usize::from(d.u16()?);
    d.take(port_len, "the secondary address")?;
    // The result list is 4-aligned from the start of the PDU (the header is 16 bytes).
    d.align(4)?;
    let n = d.u8()?;
    d.take(3, "the result list")?;
    if n == 0 {
        return Err(RpcError::Malformed("bind_ack without results".into()));
    }
    let result = d.u16()?;
    let reason = d.u16()?;
    if result != 0 {
        return Err(RpcError::BindRefused { result, reason });
    }
    Ok(BindAck { max_recv_frag, assoc_group })
}

/// One fragment of a request.
pub fn request(
    call_id: u32,
    context_id: u16,
    opnum: u16,
    alloc_hint: u32,
    flags: u8,
    stub: &[u8],
    auth: &[u8],
) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + stub.len());
    body.extend_from_slice(&alloc_hint.to_le_bytes());
    body.extend_from_slice(&context_id.to_le_bytes());
    body.extend_from_slice(&opnum.to_le_bytes());
    body.extend_from_slice(stub);
    finish(REQUEST, flags, call_id, body, auth)
}

fn finish(ptype: u8, flags: u8, call_id: u32, body: Vec<u8>, auth: &[u8]) -> Vec<u8> {
    let frag_length = u16::try_from(Header::LEN + body.len() + auth.len()).unwrap_or(u16::MAX);
    let auth_length = u16::try_from(auth.len().saturating_sub(8)).unwrap_or(0);
    let header = Header { ptype, flags, frag_length, auth_length, call_id };
    let mut pdu = header.encode().to_vec();
    pdu.extend_from_slice(&body);
    pdu.extend_from_slice(auth);
    pdu
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_refuse_garbage() {
        let pdu = bind(7, 0, &crate::DRSUAPI, &[]);
        let h = Header::decode(&pdu).unwrap();
        assert_eq!((h.ptype, h.call_id, usize::from(h.frag_length)), (BIND, 7, pdu.len()));
        assert!(Header::decode(&[4u8; 16]).is_err());
        assert!(Header::decode(&[5u8; 8]).is_err());
        assert!(
            parse_bind_ack(
                &Header { ptype: BIND_ACK, flags: 3, frag_length: 20, auth_length: 0, call_id: 1 },
                &[0u8; 20]
            )
            .is_err()
        );
    }
}
