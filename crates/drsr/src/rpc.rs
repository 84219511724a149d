//! One connection to an RPC server over TCP: bind a presentation context,
//! call operations, split requests and reassemble responses into fragments.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pdu::{self, Header};
use crate::{RpcError, Syntax};

/// Largest response we reassemble (a GetNCChanges batch is far below).
const MAX_RESPONSE: usize = 64 << 20;

/// The account a connection authenticates as (NTLM).
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    /// NetBIOS domain; `None` takes the one the server names in its challenge.
    pub domain: Option<String>,
    pub password: String,
}

/// The password never prints (logs, error chains, `{:?}` of a settings value).
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("domain", &self.domain)
            .field("password", &"<redacted>")
            .finish()
    }
}

const AUTH_NTLM: u8 = 10;
const AUTH_PRIVACY: u8 = 6;
const SIGNATURE: usize = 16;
const TRAILER: usize = 8;

fn sec_trailer(pad: u8) -> [u8; 8] {
    [AUTH_NTLM, AUTH_PRIVACY, pad, 0, 0, 0, 0, 0]
}

#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    call_id: u32,
    max_frag: usize,
    timeout: Duration,
    ntlm: Option<crate::ntlm::Session>,
}

impl Connection {
    /// A TCP connection, not yet bound to any interface.
    async fn open(addr: &str, timeout: Duration) -> Result<Connection, RpcError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| RpcError::Connect { addr: addr.to_string(), reason: format!("no answer within {timeout:?}") })?
            .map_err(|e| RpcError::Connect { addr: addr.to_string(), reason: e.to_string() })?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, call_id: 1, max_frag: usize::from(pdu::MAX_FRAG), timeout, ntlm: None })
    }

    /// Connects and binds `interface` (context 0), without authentication.
    pub async fn bind(addr: &str, interface: &Syntax, timeout: Duration) -> Result<Connection, RpcError> {
        let mut conn = Connection::open(addr, timeout).await?;
        let call_id = conn.next_call();
        conn.send(&pdu::bind(call_id, 0, interface, &[])).await?;
        let (header, pdu) = conn.receive().await?;
        let ack = pdu::parse_bind_ack(&header, &pdu)?;
        conn.max_frag = usize::from(ack.max_recv_frag).clamp(64, usize::from(pdu::MAX_FRAG));
        Ok(conn)
    }

    /// Connects and binds `interface` authenticated with NTLM at packet
    /// privacy: every call is encrypted and signed.
    pub async fn bind_sealed(
        addr: &str,
        interface: &Syntax,
        credentials: &Credentials,
        timeout: Duration,
    ) -> Result<Connection, RpcError> {
        let mut conn = Connection::open(addr, timeout).await?;
        let call_id = conn.next_call();
        let mut auth = sec_trailer(0).to_vec();
        auth.extend_from_slice(&crate::ntlm::negotiate());
        conn.send(&pdu::bind(call_id, 0, interface, &auth)).await?;
        let (header, ack_pdu) = conn.receive().await?;
        let ack = pdu::parse_bind_ack(&header, &ack_pdu)?;
        conn.max_frag = usize::from(ack.max_recv_frag).clamp(256, usize::from(pdu::MAX_FRAG));
        let auth_len = usize::from(header.auth_length);
        let challenge_bytes = ack_pdu
            .get(ack_pdu.len().saturating_sub(auth_len)..)
            .filter(|_| auth_len > 0)
            .ok_or_else(|| RpcError::Malformed("bind_ack (no NTLM challenge)".into()))?;
        let challenge = crate::ntlm::parse_challenge(challenge_bytes)?;
        let domain = credentials.domain.clone().or(challenge.netbios_domain.clone()).unwrap_or_default();
        let mut client_challenge = [0u8; 8];
        let mut session_key = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut client_challenge);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut session_key);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let filetime = (now + 11_644_473_600) * 10_000_000;
        let (message, session) = crate::ntlm::authenticate(
            &challenge,
            &credentials.user,
            &domain,
            &credentials.password,
            client_challenge,
            session_key,
            filetime,
        );
        // AUTH3: four bytes of padding, then the verifier.
        let mut body = vec![0u8; 4];
        body.extend_from_slice(&sec_trailer(0));
        body.extend_from_slice(&message);
        let frag_length = u16::try_from(Header::LEN + body.len()).unwrap_or(u16::MAX);
        let auth_length = u16::try_from(message.len()).unwrap_or(0);
        let header = Header { ptype: 16, flags: pdu::FIRST_FRAG | pdu::LAST_FRAG, frag_length, auth_length, call_id };
        let mut auth3 = header.encode().to_vec();
        auth3.extend_from_slice(&body);
        conn.send(&auth3).await?;
        conn.ntlm = Some(session);
        Ok(conn)
    }

    /// The NTLM session key (MS-DRSR encrypts secrets with it).
    pub fn session_key(&self) -> Option<[u8; 16]> {
        self.ntlm.as_ref().map(|s| s.session_key)
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
        let sealed = self.ntlm.is_some();
        let overhead = Header::LEN + 8 + if sealed { TRAILER + SIGNATURE + 15 } else { 0 };
        let mut room = self.max_frag.saturating_sub(overhead).max(16);
        if sealed {
            room -= room % 16;
        }
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
            let bytes = match self.ntlm.as_mut() {
                None => pdu::request(call_id, 0, opnum, hint, flags, chunk, &[]),
                Some(session) => {
                    let pad = (16 - chunk.len() % 16) % 16;
                    let mut padded = chunk.to_vec();
                    padded.resize(chunk.len() + pad, 0);
                    let mut auth = sec_trailer(u8::try_from(pad).unwrap_or(0)).to_vec();
                    auth.extend_from_slice(&[0u8; SIGNATURE]);
                    let mut pdu = pdu::request(call_id, 0, opnum, hint, flags, &padded, &auth);
                    let sig_at = pdu.len() - SIGNATURE;
                    let whole = pdu[..sig_at].to_vec();
                    let data_end = 24 + padded.len();
                    let signature = session.seal(&mut pdu[24..data_end], &whole);
                    pdu[sig_at..].copy_from_slice(&signature);
                    pdu
                }
            };
            self.send(&bytes).await?;
        }
        let mut out = Vec::new();
        loop {
            let (header, mut pdu) = self.receive().await?;
            if header.call_id != call_id {
                return Err(RpcError::Malformed(format!("response (call id {} instead of {call_id})", header.call_id)));
            }
            match header.ptype {
                pdu::FAULT => {
                    let status = pdu.get(24..28).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).unwrap_or(0);
                    return Err(RpcError::Fault(status));
                }
                pdu::RESPONSE => {
                    let auth_len = usize::from(header.auth_length);
                    let body = match self.ntlm.as_mut() {
                        Some(session) if auth_len == SIGNATURE => {
                            let sig_at = pdu
                                .len()
                                .checked_sub(SIGNATURE)
                                .ok_or_else(|| RpcError::Malformed("response".into()))?;
                            let trailer_at = sig_at
                                .checked_sub(TRAILER)
                                .filter(|t| *t >= 24)
                                .ok_or_else(|| RpcError::Malformed("response".into()))?;
                            session.unseal(&mut pdu[24..trailer_at]);
                            let signature = pdu[sig_at..].to_vec();
                            session.verify(&pdu[..sig_at], &signature)?;
                            let pad = usize::from(pdu[trailer_at + 2]);
                            pdu.get(24..trailer_at.saturating_sub(pad))
                                .ok_or_else(|| RpcError::Malformed("response padding".into()))?
                                .to_vec()
                        }
                        Some(_) => {
                            return Err(RpcError::Malformed("response (not sealed on a sealed connection)".into()));
                        }
                        None => {
                            let end = pdu.len().saturating_sub(if auth_len > 0 { auth_len + TRAILER } else { 0 });
                            pdu.get(24..end).ok_or_else(|| RpcError::Malformed("response PDU".into()))?.to_vec()
                        }
                    };
                    if out.len() + body.len() > MAX_RESPONSE {
                        return Err(RpcError::Malformed("response (larger than 64 MiB)".into()));
                    }
                    out.extend_from_slice(&body);
                    if header.flags & pdu::LAST_FRAG != 0 {
                        return Ok(out);
                    }
                }
                other => return Err(RpcError::Malformed(format!("answer to a request (PDU type {other})"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_never_print_the_password() {
        let c = super::Credentials { user: "svc".into(), domain: None, password: "Sëcret-Pässword".into() };
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("Sëcret") && shown.contains("svc") && shown.contains("redacted"), "{shown}");
    }
}
