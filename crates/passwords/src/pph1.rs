//! The PPH1 record: what the tenant stores instead of an NT hash.
//!
//! `v1;PPH1_MD4,<salt hex>,<iterations>,<key hex>;` where key =
//! PBKDF2-HMAC-SHA256(UTF-16LE(upper-case hex NT hash), salt, iterations, 32).
//! Connect sends 1,000 iterations; the verifier honours whatever count the
//! record carries, so records from either side verify.

use std::fmt;
use std::num::NonZeroU32;

use ring::pbkdf2;

use crate::nt::NtHash;
use crate::{PasswordError, from_hex, malformed, to_hex};

pub const SALT_LEN: usize = 10;
/// Our default work factor (Connect: 1,000), chosen so that one verification
/// costs about 20–50 ms on the reference machine (BENCHMARKS.md, "PPH1").
pub const DEFAULT_ITERATIONS: u32 = 120_000;
pub const KEY_LEN: usize = 32;
/// Refuses records that would make one verification take minutes.
pub const MAX_ITERATIONS: u32 = 10_000_000;

#[derive(Clone, PartialEq, Eq)]
pub struct Pph1 {
    pub salt: Vec<u8>,
    pub iterations: NonZeroU32,
    pub key: [u8; KEY_LEN],
}

impl Pph1 {
    /// Derives the record for an NT hash with the given salt (the caller
    /// draws it from a CSPRNG: this crate does no IO).
    pub fn derive(nt: &NtHash, salt: &[u8], iterations: NonZeroU32) -> Pph1 {
        let mut key = [0u8; KEY_LEN];
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, &secret_input(nt), &mut key);
        Pph1 { salt: salt.to_vec(), iterations, key }
    }

    /// Checks a password typed at sign-in against the record, in constant time.
    pub fn verify(&self, password: &str) -> bool {
        let nt = NtHash::of_password(password);
        pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA256, self.iterations, &self.salt, &secret_input(&nt), &self.key).is_ok()
    }

    pub fn parse(text: &str) -> Result<Pph1, PasswordError> {
        const WHAT: &str = "PPH1 record";
        let body = text
            .trim()
            .strip_prefix("v1;PPH1_MD4,")
            .ok_or_else(|| malformed(WHAT, "it must start with \"v1;PPH1_MD4,\""))?;
        let body = body.strip_suffix(';').unwrap_or(body);
        let parts: Vec<&str> = body.split(',').collect();
        let [salt, iterations, key] = parts.as_slice() else {
            return Err(malformed(WHAT, "expected salt, iterations and key separated by commas"));
        };
        let salt = from_hex(salt, WHAT)?;
        if salt.is_empty() {
            return Err(malformed(WHAT, "empty salt"));
        }
        let iterations: u32 = iterations.trim().parse().map_err(|_| malformed(WHAT, "iterations is not a number"))?;
        if iterations > MAX_ITERATIONS {
            return Err(malformed(WHAT, format!("{iterations} iterations is more than {MAX_ITERATIONS}")));
        }
        let iterations = NonZeroU32::new(iterations).ok_or_else(|| malformed(WHAT, "zero iterations"))?;
        let key: [u8; KEY_LEN] = from_hex(key.trim(), WHAT)?
            .try_into()
            .map_err(|_| malformed(WHAT, format!("the key must be {KEY_LEN} bytes")))?;
        Ok(Pph1 { salt, iterations, key })
    }
}

/// UTF-16LE of the upper-case hex NT hash: the PBKDF2 password input.
fn secret_input(nt: &NtHash) -> Vec<u8> {
    to_hex(&nt.0, true).encode_utf16().flat_map(u16::to_le_bytes).collect()
}

impl fmt::Display for Pph1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v1;PPH1_MD4,{},{},{};", to_hex(&self.salt, false), self.iterations, to_hex(&self.key, false))
    }
}

impl fmt::Debug for Pph1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pph1 {{ iterations: {}, .. }}", self.iterations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
    }

    /// Published records: DSInternals' documentation of ConvertTo-OrgIdHash
    /// and its author's write-up of DirSync, both for "Pa$$w0rd".
    const PUBLISHED: &[&str] = &[
        "v1;PPH1_MD4,317ee9d1dec6508fa510,100,f4a257ffec53809081a605ce8ddedfbc9df9777b80256763bc0a6dd895ef404f;",
        "v1;PPH1_MD4,f76bc776428002f87f4b,100,0ab46c4a6351db87cc13323bb01eea073c90a52e376fffca559e57fbb19a441a;",
        "v1;PPH1_MD4,60eaffd2c886b419df7a,1000,ab9c532104713157395a70da85cc8a1b418508753c6997f02341d541328ef16b;",
    ];

    #[test]
    fn published_records_verify() {
        for text in PUBLISHED {
            let record = Pph1::parse(text).unwrap();
            assert!(record.verify("Pa$$w0rd"), "{text}");
            assert!(!record.verify("Pa$$w0rD"), "{text}");
            assert_eq!(record.to_string(), *text);
        }
    }

    #[test]
    fn derive_matches_the_published_form() {
        let salt = from_hex("317ee9d1dec6508fa510", "salt").unwrap();
        let record = Pph1::derive(&NtHash::of_password("Pa$$w0rd"), &salt, n(100));
        assert_eq!(record.to_string(), PUBLISHED[0]);
        let strong = Pph1::derive(&NtHash::of_password("secret"), &[7; SALT_LEN], n(20_000));
        assert!(Pph1::parse(&strong.to_string()).unwrap().verify("secret"));
    }

    #[test]
    fn malformed_records_are_errors() {
        for bad in [
            "",
            "v1;PPH1_MD4,",
            "v2;PPH1_MD4,00,1,00;",
            "v1;PPH1_MD4,zz,100,00;",
            "v1;PPH1_MD4,00,0,f4a257ffec53809081a605ce8ddedfbc9df9777b80256763bc0a6dd895ef404f;",
            "v1;PPH1_MD4,00,x,f4a257ffec53809081a605ce8ddedfbc9df9777b80256763bc0a6dd895ef404f;",
            "v1;PPH1_MD4,00,99999999999,f4a2;",
            "v1;PPH1_MD4,,100,f4a257ffec53809081a605ce8ddedfbc9df9777b80256763bc0a6dd895ef404f;",
            "v1;PPH1_MD4,00,100,f4a2;",
            "v1;PPH1_MD4,00,100,f4,a2;",
        ] {
            assert!(Pph1::parse(bad).is_err(), "{bad:?}");
        }
        assert!(!format!("{:?}", Pph1::parse(PUBLISHED[0]).unwrap()).contains("f4a2"));
    }
}
