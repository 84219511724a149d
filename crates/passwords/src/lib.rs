//! Password hashes without IO.
//!
//! - [`nt`]: the NT hash (MD4 of the UTF-16LE password), the hash Active
//!   Directory and Samba (`sambaNTPassword`, `ipaNTHash`) keep.
//! - [`pph1`]: the record the tenant receives instead of an NT hash:
//!   `v1;PPH1_MD4,<salt hex>,<iterations>,<key hex>;` — PBKDF2-HMAC-SHA256
//!   over the upper-case hex NT hash as UTF-16LE (Connect's format).
//! - [`scheme`]: `userPassword` values ({SSHA}, {PBKDF2-*}, {ARGON2},
//!   {CRYPT} …), verified natively so they can be carried as they are.
//!
//! Every comparison of secret material is constant-time.

pub mod nt;
pub mod pph1;
pub mod scheme;

pub use nt::NtHash;
pub use pph1::Pph1;
pub use scheme::StoredPassword;

/// Why a stored hash cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("not a valid {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error(
        "the password scheme {0} is not supported (supported: {{SSHA}}, {{SSHA256}}, {{SSHA512}}, {{SHA}}, {{SHA256}}, {{SHA512}}, {{PBKDF2}}, {{PBKDF2-SHA1}}, {{PBKDF2-SHA256}}, {{PBKDF2-SHA512}}, {{ARGON2}}, {{CRYPT}} with $5$, $6$, $2a$/$2b$/$2y$)"
    )]
    Unsupported(String),
}

fn malformed(what: &'static str, reason: impl Into<String>) -> PasswordError {
    PasswordError::Malformed { what, reason: reason.into() }
}

/// Equal length and equal bytes, in time that does not depend on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn to_hex(bytes: &[u8], upper: bool) -> String {
    let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(digits[usize::from(b >> 4)]));
        out.push(char::from(digits[usize::from(b & 0xf)]));
    }
    out
}

pub(crate) fn from_hex(text: &str, what: &'static str) -> Result<Vec<u8>, PasswordError> {
    if !text.len().is_multiple_of(2) {
        return Err(malformed(what, "odd number of hex digits"));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(malformed(what, format!("{:?} is not a hex digit", char::from(c)))),
    };
    text.as_bytes().chunks(2).map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        assert_eq!(to_hex(&[0xab, 0x01], false), "ab01");
        assert_eq!(to_hex(&[0xab, 0x01], true), "AB01");
        assert_eq!(from_hex("aB01", "x"), Ok(vec![0xab, 0x01]));
        assert!(from_hex("abc", "x").is_err());
        assert!(from_hex("zz", "x").is_err());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
