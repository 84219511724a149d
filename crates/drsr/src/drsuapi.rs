//! The DRSUAPI calls (MS-DRSR 4.1): `IDL_DRSBind` so far.

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
        flags = bytes.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
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
