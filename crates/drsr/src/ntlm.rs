//! NTLMv2 (MS-NLMP) for DCE/RPC packet privacy: the three messages, the
//! session key (with key exchange), and sealing — RC4 streams per direction,
//! HMAC-MD5 signatures with sequence numbers (extended session security).
//! The exported session key is also what MS-DRSR encrypts secrets with.

use hmac::{Hmac, Mac};
use md4::Md4;
use md5::{Digest, Md5};
use rc4::{KeyInit, Rc4, StreamCipher, consts::U16};

use crate::RpcError;

type HmacMd5 = Hmac<Md5>;

const UNICODE: u32 = 0x0000_0001;
const REQUEST_TARGET: u32 = 0x0000_0004;
const SIGN: u32 = 0x0000_0010;
const SEAL: u32 = 0x0000_0020;
const NTLM: u32 = 0x0000_0200;
const ALWAYS_SIGN: u32 = 0x0000_8000;
const EXTENDED_SESSION_SECURITY: u32 = 0x0008_0000;
const TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_128: u32 = 0x2000_0000;
const KEY_EXCH: u32 = 0x4000_0000;
const NEGOTIATE_56: u32 = 0x8000_0000;

pub const FLAGS: u32 = UNICODE
    | REQUEST_TARGET
    | SIGN
    | SEAL
    | NTLM
    | ALWAYS_SIGN
    | EXTENDED_SESSION_SECURITY
    | NEGOTIATE_128
    | KEY_EXCH
    | NEGOTIATE_56;

const AV_EOL: u16 = 0;
const AV_NB_DOMAIN: u16 = 2;
const AV_TIMESTAMP: u16 = 7;

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC takes keys of any length: the error case does not happen.
    let Ok(mut mac) = <HmacMd5 as Mac>::new_from_slice(key) else { return [0u8; 16] };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The first message.
pub fn negotiate() -> Vec<u8> {
    let mut m = b"NTLMSSP\0".to_vec();
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&FLAGS.to_le_bytes());
    m.extend_from_slice(&[0u8; 16]); // no domain, no workstation
    m
}

/// What the server's challenge says.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub flags: u32,
    pub server_challenge: [u8; 8],
    pub target_info: Vec<u8>,
    pub netbios_domain: Option<String>,
    pub timestamp: Option<[u8; 8]>,
}

fn field(m: &[u8], at: usize) -> Option<&[u8]> {
    let len = usize::from(u16::from_le_bytes([*m.get(at)?, *m.get(at + 1)?]));
    let off = usize::try_from(u32::from_le_bytes([*m.get(at + 4)?, *m.get(at + 5)?, *m.get(at + 6)?, *m.get(at + 7)?]))
        .ok()?;
    m.get(off..off.checked_add(len)?)
}

pub fn parse_challenge(m: &[u8]) -> Result<Challenge, RpcError> {
    let bad = || RpcError::Malformed("NTLM challenge".into());
    if m.get(..8) != Some(b"NTLMSSP\0") || m.get(8..12) != Some(&2u32.to_le_bytes()[..]) {
        return Err(bad());
    }
    let flags = u32::from_le_bytes(m.get(20..24).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let server_challenge: [u8; 8] = m.get(24..32).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
    let target_info = if flags & TARGET_INFO != 0 { field(m, 40).ok_or_else(bad)?.to_vec() } else { Vec::new() };
    let (mut netbios_domain, mut timestamp) = (None, None);
    let mut pos = 0;
    while pos + 4 <= target_info.len() {
        let id = u16::from_le_bytes([target_info[pos], target_info[pos + 1]]);
        let len = usize::from(u16::from_le_bytes([target_info[pos + 2], target_info[pos + 3]]));
        let value = target_info.get(pos + 4..pos + 4 + len).ok_or_else(bad)?;
        match id {
            AV_EOL => break,
            AV_NB_DOMAIN => {
                let units: Vec<u16> = value.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                netbios_domain = Some(String::from_utf16_lossy(&units));
            }
            AV_TIMESTAMP => timestamp = value.try_into().ok(),
            _ => {}
        }
        pos += 4 + len;
    }
    Ok(Challenge { flags, server_challenge, target_info, netbios_domain, timestamp })
}

/// The third message and the keys of the session it opens.
pub fn authenticate(
    challenge: &Challenge,
    user: &str,
    domain: &str,
    password: &str,
    client_challenge: [u8; 8],
    exported_session_key: [u8; 16],
    now_filetime: u64,
) -> (Vec<u8>, Session) {
    let mut nt = Md4::new();
    nt.update(utf16(password));
    let nt_hash: [u8; 16] = nt.finalize().into();
    let response_key = hmac_md5(&nt_hash, &[&utf16(&user.to_uppercase()), &utf16(domain)]);
    let timestamp = challenge.timestamp.unwrap_or(now_filetime.to_le_bytes());
    let mut temp = vec![1, 1, 0, 0, 0, 0, 0, 0];
    temp.extend_from_slice(&timestamp);
    temp.extend_from_slice(&client_challenge);
    temp.extend_from_slice(&[0, 0, 0, 0]);
    temp.extend_from_slice(&challenge.target_info);
    temp.extend_from_slice(&[0, 0, 0, 0]);
    let proof = hmac_md5(&response_key, &[&challenge.server_challenge, &temp]);
    let mut nt_response = proof.to_vec();
    nt_response.extend_from_slice(&temp);
    let lm_response = if challenge.timestamp.is_some() {
        vec![0u8; 24]
    } else {
        let mut lm = hmac_md5(&response_key, &[&challenge.server_challenge, &client_challenge]).to_vec();
        lm.extend_from_slice(&client_challenge);
        lm
    };
    let session_base_key = hmac_md5(&response_key, &[&proof]);
    let mut encrypted_key = exported_session_key;
    let mut rc4 = Rc4::<U16>::new(&session_base_key.into());
    rc4.apply_keystream(&mut encrypted_key);

    let flags = FLAGS & challenge.flags | KEY_EXCH;
    let payload: [&[u8]; 6] = [&lm_response, &nt_response, &utf16(domain), &utf16(user), &[], &encrypted_key];
    let mut m = b"NTLMSSP\0".to_vec();
    m.extend_from_slice(&3u32.to_le_bytes());
    let mut offset = 64u32;
    let mut body = Vec::new();
    for p in payload {
        let len = u16::try_from(p.len()).unwrap_or(0);
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&offset.to_le_bytes());
        offset += u32::from(len);
        body.extend_from_slice(p);
    }
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&body);
    (m, Session::new(&exported_session_key))
}

/// Sealing and signing after authentication (client side).
pub struct Session {
    pub session_key: [u8; 16],
    sign_out: [u8; 16],
    sign_in: [u8; 16],
    seal_out: Rc4<U16>,
    seal_in: Rc4<U16>,
    seq_out: u32,
    seq_in: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ntlm::Session(…)")
    }
}

impl Session {
    fn new(key: &[u8; 16]) -> Session {
        let k = |magic: &[u8]| md5(&[key, magic]);
        let sign_out = k(b"session key to client-to-server signing key magic constant\0");
        let sign_in = k(b"session key to server-to-client signing key magic constant\0");
        let seal_out = Rc4::<U16>::new(&k(b"session key to client-to-server sealing key magic constant\0").into());
        let seal_in = Rc4::<U16>::new(&k(b"session key to server-to-client sealing key magic constant\0").into());
        Session { session_key: *key, sign_out, sign_in, seal_out, seal_in, seq_out: 0, seq_in: 0 }
    }

    /// Encrypts `data` in place and returns the 16-byte signature of `whole`
    /// (the PDU as it is before encryption, up to the signature).
    pub fn seal(&mut self, data: &mut [u8], whole: &[u8]) -> [u8; 16] {
        let seq = self.seq_out;
        self.seq_out = self.seq_out.wrapping_add(1);
        let checksum = hmac_md5(&self.sign_out, &[&seq.to_le_bytes(), whole]);
        self.seal_out.apply_keystream(data);
        let mut c = [0u8; 8];
        c.copy_from_slice(&checksum[..8]);
        self.seal_out.apply_keystream(&mut c);
        let mut sig = [0u8; 16];
        sig[..4].copy_from_slice(&1u32.to_le_bytes());
        sig[4..12].copy_from_slice(&c);
        sig[12..].copy_from_slice(&seq.to_le_bytes());
        sig
    }

    /// Decrypts `data` in place (then call `verify` on the plaintext PDU).
    pub fn unseal(&mut self, data: &mut [u8]) {
        self.seal_in.apply_keystream(data);
    }

    pub fn verify(&mut self, whole_plain: &[u8], signature: &[u8]) -> Result<(), RpcError> {
        let seq = self.seq_in;
        self.seq_in = self.seq_in.wrapping_add(1);
        let expected = hmac_md5(&self.sign_in, &[&seq.to_le_bytes(), whole_plain]);
        let mut c = [0u8; 8];
        c.copy_from_slice(signature.get(4..12).ok_or_else(|| RpcError::Malformed("signature".into()))?);
        self.seal_in.apply_keystream(&mut c);
        if c != expected[..8] || signature.get(12..16) != Some(&seq.to_le_bytes()[..]) {
            return Err(RpcError::Malformed("response (its NTLM signature does not verify)".into()));
        }
        Ok(())
    }
}
