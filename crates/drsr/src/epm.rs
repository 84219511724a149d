//! The endpoint mapper (C706 appendix O, MS-RPCE 2.2.1.2): on TCP 135,
//! without authentication, `ept_map` tells which TCP port serves an interface.

use std::time::Duration;

use crate::ndr::{Decoder, Encoder};
use crate::rpc::Connection;
use crate::{RpcError, Syntax};

pub const EPM: Syntax = Syntax::new("e1af8308-5d1f-11c9-91a4-08002b14a0fa", 3, 0);
const EPT_MAP: u16 = 3;

const PROT_UUID: u8 = 0x0d;
const PROT_RPC_CO: u8 = 0x0b;
const PROT_TCP: u8 = 0x07;
const PROT_IP: u8 = 0x09;

fn floor(t: &mut Vec<u8>, lhs: &[u8], rhs: &[u8]) {
    t.extend_from_slice(&u16::try_from(lhs.len()).unwrap_or(0).to_le_bytes());
    t.extend_from_slice(lhs);
    t.extend_from_slice(&u16::try_from(rhs.len()).unwrap_or(0).to_le_bytes());
    t.extend_from_slice(rhs);
}

/// The protocol tower for `interface` over NDR, RPC/CO, TCP and IP.
pub fn tower(interface: &Syntax) -> Vec<u8> {
    let mut t = 5u16.to_le_bytes().to_vec();
    let syntax_lhs = |s: &Syntax| {
        let mut l = vec![PROT_UUID];
        l.extend_from_slice(&s.uuid);
        l.extend_from_slice(&s.major.to_le_bytes());
        l
    };
    floor(&mut t, &syntax_lhs(interface), &interface.minor.to_le_bytes());
    floor(&mut t, &syntax_lhs(&crate::NDR), &crate::NDR.minor.to_le_bytes());
    floor(&mut t, &[PROT_RPC_CO], &0u16.to_le_bytes());
    floor(&mut t, &[PROT_TCP], &0u16.to_be_bytes());
    floor(&mut t, &[PROT_IP], &[0, 0, 0, 0]);
    t
}

/// The TCP port in a tower, if it has one.
pub fn tower_port(t: &[u8]) -> Option<u16> {
    let count = u16::from_le_bytes([*t.first()?, *t.get(1)?]);
    let mut pos = 2;
    for _ in 0..count {
        let lhs_len = usize::from(u16::from_le_bytes([*t.get(pos)?, *t.get(pos + 1)?]));
        let lhs = t.get(pos + 2..pos + 2 + lhs_len)?;
        pos += 2 + lhs_len;
        let rhs_len = usize::from(u16::from_le_bytes([*t.get(pos)?, *t.get(pos + 1)?]));
        let rhs = t.get(pos + 2..pos + 2 + rhs_len)?;
        pos += 2 + rhs_len;
        if lhs.first() == Some(&PROT_TCP) && rhs.len() == 2 {
            return Some(u16::from_be_bytes([rhs[0], rhs[1]]));
        }
    }
    None
}

/// Asks the endpoint mapper at `host:135` for the TCP port of `interface`.
pub async fn map(host: &str, interface: &Syntax, timeout: Duration) -> Result<u16, RpcError> {
    let mut conn = Connection::bind(&format!("{host}:135"), &EPM, timeout).await?;
    let tower = tower(interface);
    let mut e = Encoder::new();
    e.referent(); // obj: a nil UUID
    e.bytes(&[0u8; 16]);
    e.referent(); // map_tower
    let len = u32::try_from(tower.len()).unwrap_or(0);
    e.u32(len); // tower_length
    e.u32(len); // conformant array: max count
    e.bytes(&tower);
    e.align(4);
    e.bytes(&[0u8; 20]); // entry_handle: none yet
    e.u32(4); // max_towers
    let stub = conn.call(EPT_MAP, &e.buf).await?;

    let mut d = Decoder::new(&stub);
    d.take(20, "the entry handle")?;
    let num_towers = d.u32()?;
    let _max = d.u32()?;
    let _offset = d.u32()?;
    let actual = d.count(4, "the tower array")?;
    let mut present = 0;
    for _ in 0..actual {
        if d.u32()? != 0 {
            present += 1;
        }
    }
    let mut port = None;
    for _ in 0..present {
        let _length = d.u32()?;
        let size = d.count(1, "a tower")?;
        let bytes = d.take(size, "a tower")?;
        d.align(4)?;
        if port.is_none() {
            port = tower_port(bytes);
        }
    }
    let status = d.u32()?;
    match port {
        Some(p) if num_towers > 0 && status == 0 => Ok(p),
        _ => Err(RpcError::NotRegistered(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn towers_carry_the_port() {
        let mut t = tower(&crate::DRSUAPI);
        assert_eq!(tower_port(&t), Some(0));
        // Port floor: the 4th; set it to 49152.
        let at = t.len() - (2 + 1 + 2 + 4) - 2;
        t[at..at + 2].copy_from_slice(&49152u16.to_be_bytes());
        assert_eq!(tower_port(&t), Some(49152));
        assert_eq!(tower_port(&[5, 0, 1]), None);
    }
}
