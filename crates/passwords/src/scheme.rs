//! `userPassword` values as LDAP servers store them (RFC 2307 `{SCHEME}`
//! prefix), verified natively: the tenant can carry them as they are.
#![deny(clippy::indexing_slicing)]

use std::num::NonZeroU32;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ring::{digest, pbkdf2};

use crate::{PasswordError, constant_time_eq, malformed};

/// Bounds on work factors a stored value may ask for: one sign-in must not
/// cost minutes or gigabytes because of a strange record.
const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;
const MAX_ARGON2_TIME: u32 = 64;
const MAX_SHA_CRYPT_ROUNDS: u32 = 10_000_000;
const MAX_BCRYPT_COST: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sha {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Sha {
    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Sha::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Sha::Sha256 => &digest::SHA256,
            Sha::Sha384 => &digest::SHA384,
            Sha::Sha512 => &digest::SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Sha::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
            Sha::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Sha::Sha384 => pbkdf2::PBKDF2_HMAC_SHA384,
            Sha::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }
}

/// A parsed `userPassword` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredPassword {
    /// `{SHA*}`: unsalted digest. `{SSHA*}`: digest of password ‖ salt, then the salt.
    Digest { sha: Sha, digest: Vec<u8>, salt: Vec<u8> },
    /// `{PBKDF2-SHA*}<iterations>$<salt>$<key>` (OpenLDAP pw-pbkdf2, passlib's
    /// adapted base64).
    Pbkdf2 { sha: Sha, iterations: NonZeroU32, salt: Vec<u8>, key: Vec<u8> },
    /// `{ARGON2}$argon2id$v=19$m=…,t=…,p=…$salt$hash` (the PHC string).
    Argon2(String),
    /// `{CRYPT}$5$…`, `{CRYPT}$6$…` (SHA-crypt) and `{CRYPT}$2y$…` (bcrypt).
    Crypt(String),
}

/// A `{SSHA}` value (SHA-1 of password ‖ salt, then the salt): what
/// OpenLDAP stores by default. For sample data and tests; weak by design.
pub fn ssha(password: &str, salt: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(password.as_bytes());
    ctx.update(salt);
    let mut raw = ctx.finish().as_ref().to_vec();
    raw.extend_from_slice(salt);
    format!("{{SSHA}}{}", STANDARD.encode(raw))
}

impl StoredPassword {
    /// Parses a `userPassword` value. The whole value is the text as stored.
    pub fn parse(value: &[u8]) -> Result<StoredPassword, PasswordError> {
        let text = std::str::from_utf8(value).map_err(|_| malformed("userPassword", "not UTF-8 text"))?;
        let Some(rest) = text.strip_prefix('{') else {
            return Err(PasswordError::Unsupported(
                "(none: a cleartext userPassword — idbridge never carries cleartext; let the server hash passwords, e.g. olcPasswordHash)".into(),
            ));
        };
        let (scheme, body) =
            rest.split_once('}').ok_or_else(|| malformed("userPassword", "the {SCHEME} prefix is not closed"))?;
        let upper = scheme.to_ascii_uppercase();
        let salted = |sha| salted_digest(sha, body);
        match upper.as_str() {
            "SHA" => unsalted_digest(Sha::Sha1, body),
            "SHA256" => unsalted_digest(Sha::Sha256, body),
            "SHA384" => unsalted_digest(Sha::Sha384, body),
            "SHA512" => unsalted_digest(Sha::Sha512, body),
            "SSHA" => salted(Sha::Sha1),
            "SSHA256" => salted(Sha::Sha256),
            "SSHA384" => salted(Sha::Sha384),
            "SSHA512" => salted(Sha::Sha512),
            "PBKDF2" | "PBKDF2-SHA1" => pbkdf2_record(Sha::Sha1, body),
            "PBKDF2-SHA256" => pbkdf2_record(Sha::Sha256, body),
            "PBKDF2-SHA512" => pbkdf2_record(Sha::Sha512, body),
            "ARGON2" => argon2_record(body),
            "CRYPT" => crypt_record(body),
            _ => Err(PasswordError::Unsupported(format!("{{{scheme}}}"))),
        }
    }

    /// Checks a password against the stored value (constant-time compare).
    pub fn verify(&self, password: &str) -> bool {
        match self {
            StoredPassword::Digest { sha, digest: expected, salt } => {
                let mut ctx = digest::Context::new(sha.digest());
                ctx.update(password.as_bytes());
                ctx.update(salt);
                constant_time_eq(ctx.finish().as_ref(), expected)
            }
            StoredPassword::Pbkdf2 { sha, iterations, salt, key } => {
                pbkdf2::verify(sha.pbkdf2(), *iterations, salt, password.as_bytes(), key).is_ok()
            }
            StoredPassword::Argon2(phc) => PasswordHash::new(phc)
                .is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok()),
            StoredPassword::Crypt(text) if text.starts_with("$6$") => sha_crypt::sha512_check(password, text).is_ok(),
            StoredPassword::Crypt(text) if text.starts_with("$5$") => sha_crypt::sha256_check(password, text).is_ok(),
            StoredPassword::Crypt(text) => bcrypt::verify(password, text).unwrap_or(false),
        }
    }
}

fn decode_b64(text: &str, what: &'static str) -> Result<Vec<u8>, PasswordError> {
    STANDARD.decode(text.trim()).map_err(|e| malformed(what, format!("bad base64: {e}")))
}

fn unsalted_digest(sha: Sha, body: &str) -> Result<StoredPassword, PasswordError> {
    let digest = decode_b64(body, "{SHA} value")?;
    if digest.len() != sha.len() {
        return Err(malformed("{SHA} value", format!("{} bytes, expected {}", digest.len(), sha.len())));
    }
    Ok(StoredPassword::Digest { sha, digest, salt: Vec::new() })
}

fn salted_digest(sha: Sha, body: &str) -> Result<StoredPassword, PasswordError> {
    let mut raw = decode_b64(body, "{SSHA} value")?;
    if raw.len() <= sha.len() {
        return Err(malformed("{SSHA} value", "no salt after the digest"));
    }
    let salt = raw.split_off(sha.len());
    Ok(StoredPassword::Digest { sha, digest: raw, salt })
}

/// passlib's "adapted base64": `.` instead of `+`, no padding.
fn decode_ab64(text: &str, what: &'static str) -> Result<Vec<u8>, PasswordError> {
    let standard: String = text.trim_end_matches('=').chars().map(|c| if c == '.' { '+' } else { c }).collect();
    STANDARD_NO_PAD.decode(standard).map_err(|e| malformed(what, format!("bad base64: {e}")))
}

fn pbkdf2_record(sha: Sha, body: &str) -> Result<StoredPassword, PasswordError> {
    const WHAT: &str = "{PBKDF2} value";
    let parts: Vec<&str> = body.split('$').collect();
    let [iterations, salt, key] = parts.as_slice() else {
        return Err(malformed(WHAT, "expected <iterations>$<salt>$<key>"));
    };
    let iterations: u32 = iterations.parse().map_err(|_| malformed(WHAT, "iterations is not a number"))?;
    if iterations > MAX_PBKDF2_ITERATIONS {
        return Err(malformed(WHAT, format!("{iterations} iterations is more than {MAX_PBKDF2_ITERATIONS}")));
    }
    let iterations = NonZeroU32::new(iterations).ok_or_else(|| malformed(WHAT, "zero iterations"))?;
    let (salt, key) = (decode_ab64(salt, WHAT)?, decode_ab64(key, WHAT)?);
    if key.is_empty() {
        return Err(malformed(WHAT, "empty key"));
    }
    Ok(StoredPassword::Pbkdf2 { sha, iterations, salt, key })
}

fn argon2_record(body: &str) -> Result<StoredPassword, PasswordError> {
    const WHAT: &str = "{ARGON2} value";
    let hash = PasswordHash::new(body).map_err(|e| malformed(WHAT, e.to_string()))?;
    if !matches!(hash.algorithm.as_str(), "argon2i" | "argon2d" | "argon2id") {
        return Err(malformed(WHAT, format!("{} is not an Argon2 variant", hash.algorithm)));
    }
    let param = |name: &str| hash.params.get_decimal(name);
    if param("m").is_some_and(|m| m > MAX_ARGON2_MEMORY_KIB) || param("t").is_some_and(|t| t > MAX_ARGON2_TIME) {
        return Err(malformed(WHAT, "its memory or time cost is beyond what a sign-in may spend"));
    }
    Ok(StoredPassword::Argon2(body.to_string()))
}

fn crypt_record(body: &str) -> Result<StoredPassword, PasswordError> {
    const WHAT: &str = "{CRYPT} value";
    if body.starts_with("$5$") || body.starts_with("$6$") {
        let rounds = body.split('$').nth(2).and_then(|p| p.strip_prefix("rounds=")).map(str::parse::<u32>);
        match rounds {
            Some(Ok(r)) if r > MAX_SHA_CRYPT_ROUNDS => {
                return Err(malformed(WHAT, format!("{r} rounds is more than {MAX_SHA_CRYPT_ROUNDS}")));
            }
            Some(Err(_)) => return Err(malformed(WHAT, "rounds is not a number")),
            _ => {}
        }
        if body.split('$').count() < 4 {
            return Err(malformed(WHAT, "expected $N$[rounds=R$]salt$hash"));
        }
        return Ok(StoredPassword::Crypt(body.to_string()));
    }
    if ["$2a$", "$2b$", "$2x$", "$2y$"].iter().any(|p| body.starts_with(p)) {
        let cost: u32 =
            body.get(4..6).and_then(|c| c.parse().ok()).ok_or_else(|| malformed(WHAT, "bad bcrypt cost"))?;
        if cost > MAX_BCRYPT_COST {
            return Err(malformed(WHAT, format!("bcrypt cost {cost} is more than {MAX_BCRYPT_COST}")));
        }
        if body.len() != 60 {
            return Err(malformed(WHAT, "a bcrypt value is 60 characters"));
        }
        return Ok(StoredPassword::Crypt(body.to_string()));
    }
    let kind = body.split('$').nth(1).map(|k| format!("{{CRYPT}}${k}$")).unwrap_or_else(|| "{CRYPT} (DES)".into());
    Err(PasswordError::Unsupported(kind))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ok(value: &str, password: &str) {
        let stored = StoredPassword::parse(value.as_bytes()).unwrap_or_else(|e| panic!("{value}: {e}"));
        assert!(stored.verify(password), "{value} should accept {password:?}");
        assert!(!stored.verify(&format!("{password}x")), "{value} must refuse a wrong password");
        assert!(!stored.verify(""), "{value} must refuse the empty password");
    }

    #[test]
    fn salted_and_plain_digests() {
        // slappasswd -h {SSHA} -s secret, slappasswd -h {SHA} -s secret; the
        // SHA-2 forms (OpenLDAP contrib sha2 layout) from Python's hashlib.
        ok("{SSHA}Ouc4sZrcX2+ujbTggIsu9xBJo9saLNyZ", "secret");
        ok("{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=", "secret");
        ok("{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=", "secret");
        ok("{SSHA256}oBmrdHcA6OZEkkCLeXh71YAerbvhXz1qqwjrPsXmEtNzYWx0c2FsdA==", "secret");
        ok(
            "{SSHA512}aCu7JRc+kLsuEmFs1zTY+AiP7DSGnjjG+dH28Dp+E5usqoAixeTPihKqZmkWal4mUfp63tqvCAkFV1LKTDFH6XNhbHRzYWx0",
            "secret",
        );
        ok("{ssha}Ouc4sZrcX2+ujbTggIsu9xBJo9saLNyZ", "secret");
        ok(&ssha("Welcome-1", b"salt"), "Welcome-1");
    }

    #[test]
    fn key_derivation_schemes() {
        // passlib's documented pbkdf2_sha256 example, in OpenLDAP's {PBKDF2-SHA256} form.
        ok("{PBKDF2-SHA256}6400$0ZrzXitFSGltTQnBWOsdAw$Y11AchqV4b0sUisdZd0Xr97KWoymNE0LNNrnEgY4H9M", "password");
        // Python's hashlib.pbkdf2_hmac, salt "0123456789abcdef", 10,000 iterations.
        ok("{PBKDF2-SHA1}10000$MDEyMzQ1Njc4OWFiY2RlZg$QVljdW66hKXEevyu3tfWz0W/tzo", "secret");
        ok(
            "{PBKDF2-SHA512}10000$MDEyMzQ1Njc4OWFiY2RlZg$vmRQw0BpocKqrhRKR3m3G/IeOsJdowFFKr1BqQJRowa7rT6Pmm2h2hOQOkeCI6snZ9iO2b2vBKBYyAogx9T2vA",
            "secret",
        );
        // The Argon2 reference implementation's README example.
        ok("{ARGON2}$argon2i$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG", "password");
        // openssl passwd -6 -salt saltsalt secret / openssl passwd -5 -salt saltsalt secret
        ok(
            "{CRYPT}$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
            "secret",
        );
        ok("{CRYPT}$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA", "secret");
        // The bcrypt test vector used across implementations ("U*U", cost 5).
        ok("{CRYPT}$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "U*U");
    }

    #[test]
    fn unsupported_and_malformed_values_are_errors() {
        for bad in [
            "secret",
            "{MD5}Xr4ilOzQ4PCOq3aQ0qbuaQ==",
            "{CRYPT}abJnggxhB/yWI",
            "{CRYPT}$1$salt$hash",
            "{SSHA}c2hvcnQ=",
            "{SHA}!!!",
            "{SSHA",
            "{PBKDF2-SHA256}0$abc$def",
            "{PBKDF2-SHA256}99999999999$abc$def",
            "{PBKDF2-SHA256}1000$abc",
            "{ARGON2}$argon2id$v=19$m=99999999,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
            "{ARGON2}nonsense",
            "{CRYPT}$6$rounds=999999999$salt$hash",
            "{CRYPT}$2y$31$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
        ] {
            assert!(StoredPassword::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(StoredPassword::parse(&[0xff, 0xfe]).is_err());
    }
}
