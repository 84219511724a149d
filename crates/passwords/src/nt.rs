//! The NT hash: MD4 over the password as UTF-16LE.

use std::fmt;

use md4::{Digest, Md4};

use crate::{PasswordError, from_hex, malformed};

/// An NT hash. Its `Debug` never shows the bytes: it is as good as the password.
#[derive(Clone, PartialEq, Eq)]
pub struct NtHash(pub [u8; 16]);

impl NtHash {
    pub fn of_password(password: &str) -> NtHash {
        let mut md4 = Md4::new();
        for unit in password.encode_utf16() {
            md4.update(unit.to_le_bytes());
        }
        NtHash(md4.finalize().into())
    }

    /// From 32 hex digits (`sambaNTPassword`) or 16 raw bytes (`ipaNTHash`).
    pub fn from_stored(value: &[u8]) -> Result<NtHash, PasswordError> {
        let bytes = match value.len() {
            16 => value.to_vec(),
            32 => {
                let text = std::str::from_utf8(value).map_err(|_| malformed("NT hash", "not hex text"))?;
                from_hex(text, "NT hash")?
            }
            n => return Err(malformed("NT hash", format!("{n} bytes; expected 16 raw or 32 hex digits"))),
        };
        let mut out = [0u8; 16];
        out.copy_from_slice(&bytes);
        Ok(NtHash(out))
    }

    /// `NO PASSWORD*********************` is Samba's marker for "no password set".
    pub fn is_unset_marker(value: &[u8]) -> bool {
        value.starts_with(b"NO PASSWORD")
    }
}

impl fmt::Debug for NtHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NtHash(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::to_hex;

    #[test]
    fn known_nt_hashes() {
        // Values from the public NTLM literature (MS-NLMP §4.2.2.1.1: "Password").
        assert_eq!(to_hex(&NtHash::of_password("Password").0, false), "a4f49c406510bdcab6824ee7c30fd852");
        assert_eq!(to_hex(&NtHash::of_password("Pa$$w0rd").0, false), "92937945b518814341de3f726500d4ff");
        assert_eq!(to_hex(&NtHash::of_password("").0, false), "31d6cfe0d16ae931b73c59d7e0c089c0");
        // Non-BMP characters are two UTF-16 units.
        assert_ne!(NtHash::of_password("𝄞"), NtHash::of_password("?"));
    }

    #[test]
    fn stored_forms() {
        let h = NtHash::of_password("Pa$$w0rd");
        assert_eq!(NtHash::from_stored(b"92937945B518814341DE3F726500D4FF"), Ok(h.clone()));
        assert_eq!(NtHash::from_stored(&h.0), Ok(h.clone()));
        assert!(NtHash::from_stored(b"1234").is_err());
        assert!(NtHash::from_stored(b"9293794XB518814341DE3F726500D4FF").is_err());
        assert!(NtHash::is_unset_marker(b"NO PASSWORD*********************"));
        assert_eq!(format!("{h:?}"), "NtHash(…)");
    }
}
