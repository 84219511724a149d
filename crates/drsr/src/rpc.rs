//! One connection to an RPC server over TCP: bind a presentation context,
//! call operations, split requests and reassemble responses into fragments.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pdu::{self, Header};
use crate::{RpcError, Syntax};

/// Largest response we reassemble (a GetNCChanges batch is far below).
const MAX_RESPONSE: usize = 64 << 20;

#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    call_id: u32,
    max_frag: usize,
    timeout: Duration,
}

impl Connection {
    /// Connects and binds `interface` (context 0), without authentication.
    pub async fn bind(addr: &str, interface: &Syntax, timeout: Duration) -> Result<Connection, RpcError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| RpcError::Connect { addr: addr.to_string(), reason: format!("no answer within {timeout:?}") })?
            .map_err(|e| RpcError::Connect { addr: addr.to_string(), reason: e.to_string() })?;
        stream.set_nodelay(true)?;
        let mut conn = Connection { stream, call_id: 1, max_frag: usize::from(pdu::MAX_FRAG), timeout };
        let call_id = conn.next_call();
        conn.send(&pdu::bind(call_id, 0, interface, &[])).await?;
        let (header, pdu) = conn.receive().await?;
        let ack = pdu::parse_bind_ack(&header, &pdu)?;
        conn.max_frag = usize::from(ack.max_recv_frag).clamp(64, usize::from(pdu::MAX_FRAG));
        Ok(conn)
    }

    fn next_call(&mut self) -> u32 {
        let id = self.call_id;
        self.call_id += 1;
        id
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), RpcError> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| RpcError::Timeout(self.timeout))??;
        Ok(())
    }

    /// One whole PDU.
    async fn receive(&mut self) -> Result<(Header, Vec<u8>), RpcError> {
        let mut head = [0u8; Header::LEN];
        tokio::time::timeout(self.timeout, self.stream.read_exact(&mut head))
            .await
            .map_err(|_| RpcError::Timeout(self.timeout))??;
        let header = Header::decode(&head)?;
        let len = usize::from(header.frag_length);
        if len < Header::LEN {
            return Err(RpcError::Malformed("PDU (shorter than its header)".into()));
        }
        let mut pdu = head.to_vec();
        pdu.resize(len, 0);
        tokio::time::timeout(self.timeout, self.stream.read_exact(&mut pdu[Header::LEN..]))
            .await
            .map_err(|_| RpcError::Timeout(self.timeout))??;
        Ok((header, pdu))
    }

    /// Calls `opnum` with NDR `stub` data; returns the response's stub data.
    pub async fn call(&mut self, opnum: u16, stub: &[u8]) -> Result<Vec<u8>, RpcError> {
        let call_id = self.next_call();
        let room = self.max_frag - Header::LEN - 8;
        let chunks: Vec<&[u8]> = if stub.is_empty() { vec![&[][..]] } else { stub.chunks(room).collect() };
        let hint = u32::try_from(stub.len()).unwrap_or(u32::MAX);
        for (i, chunk) in chunks.iter().enumerate() {
            let mut flags = 0;
            if i == 0 {
                flags |= pdu::FIRST_FRAG;
            }
            if i == chunks.len() - 1 {
                flags |= pdu::LAST_FRAG;
            }
            self.send(&pdu::request(call_id, 0, opnum, hint, flags, chunk, &[])).await?;
        }
        let mut out = Vec::new();
        loop {
            let (header, pdu) = self.receive().await?;
            if header.call_id != call_id {
                return Err(RpcError::Malformed(format!("response (call id {} instead of {call_id})", header.call_id)));
            }
            match header.ptype {
                pdu::FAULT => {
                    let status = pdu.get(24..28).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).unwrap_or(0);
                    return Err(RpcError::Fault(status));
                }
                pdu::RESPONSE => {
                    let end = pdu
                        .len()
                        .saturating_sub(usize::from(header.auth_length) + if header.auth_length > 0 { 8 } else { 0 });
                    let body = pdu.get(24..end).ok_or_else(|| RpcError::Malformed("response PDU".into()))?;
                    if out.len() + body.len() > MAX_RESPONSE {
                        return Err(RpcError::Malformed("response (larger than 64 MiB)".into()));
                    }
                    out.extend_from_slice(body);
                    if header.flags & pdu::LAST_FRAG != 0 {
                        return Ok(out);
                    }
                }
                other => return Err(RpcError::Malformed(format!("answer to a request (PDU type {other})"))),
            }
        }
    }
}
