//! Signing keys for ID and access tokens and SAML assertions: one active
//! key per algorithm (RS256, ES256), kept in the database; rotation retires
//! the old key but keeps publishing it until every token it signed has
//! expired. A key may be *prepared* ahead of a rotation: published (JWKS,
//! SAML metadata) but not signing yet, so relying parties that pin keys —
//! SAML service providers do — can take it from the metadata first; the
//! next rotation then makes it the active one.

use crate::db::{Connection, OptionalExtension, params};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};

use crate::error::{Result, TenantError};
use crate::util::{new_id, now_secs};

/// How long a retired key stays in the JWKS: longer than any token lives.
pub const RETIRED_KEY_GRACE_SECS: i64 = 2 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    pub fn parse(text: &str) -> Option<Alg> {
        match text {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }
}

/// A private key ready to sign.
#[derive(Debug)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Alg,
    pkcs8: Vec<u8>,
}

fn key_error(what: &str, e: impl std::fmt::Display) -> TenantError {
    TenantError::Invalid(format!("signing key: {what}: {e}"))
}

impl SigningKey {
    /// The public key as a DER SubjectPublicKeyInfo (RSA keys: for the SAML
    /// signing certificate).
    pub fn public_key_der(&self) -> Result<Vec<u8>> {
        use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
        match self.alg {
            Alg::Rs256 => {
                let private = rsa::RsaPrivateKey::from_pkcs8_der(&self.pkcs8).map_err(|e| key_error("RSA key", e))?;
                let der = private.to_public_key().to_public_key_der().map_err(|e| key_error("public key", e))?;
                Ok(der.as_bytes().to_vec())
            }
            Alg::Es256 => Err(key_error("public key", "only RSA keys sign SAML here")),
        }
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let rng = SystemRandom::new();
        match self.alg {
            Alg::Rs256 => {
                let pair = RsaKeyPair::from_pkcs8(&self.pkcs8).map_err(|e| key_error("RSA key", e))?;
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig).map_err(|e| key_error("sign", e))?;
                Ok(sig)
            }
            Alg::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &self.pkcs8, &rng)
                    .map_err(|e| key_error("EC key", e))?;
                Ok(pair.sign(&rng, message).map_err(|e| key_error("sign", e))?.as_ref().to_vec())
            }
        }
    }
}

/// The active key for `alg`, created on first use.
pub fn active(conn: &Connection, alg: Alg) -> Result<SigningKey> {
    let found: Option<(String, Vec<u8>)> = conn
        .query_row(
            "SELECT kid, pkcs8 FROM signing_keys WHERE alg = ?1 AND retired IS NULL AND prepared = 0 ORDER BY created DESC LIMIT 1",
            params![alg.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match found {
        Some((kid, sealed)) => Ok(SigningKey { kid, alg, pkcs8: crate::secrets::open(conn, &sealed)? }),
        None => create(conn, alg, false),
    }
}

/// Makes a new active key for `alg` — the prepared one if there is one,
/// else a fresh key; the previous one is retired.
pub fn rotate(conn: &Connection, alg: Alg) -> Result<SigningKey> {
    let prepared = prepared(conn, alg)?;
    conn.execute(
        "UPDATE signing_keys SET retired = ?1 WHERE alg = ?2 AND retired IS NULL AND prepared = 0",
        params![now_secs(), alg.as_str()],
    )?;
    match prepared {
        Some(key) => {
            conn.execute("UPDATE signing_keys SET prepared = 0 WHERE kid = ?1", params![key.kid])?;
            Ok(key)
        }
        None => create(conn, alg, false),
    }
}

/// The key the next rotation of `alg` activates, made now and published
/// from now on (the same one when it was made already).
pub fn prepare(conn: &Connection, alg: Alg) -> Result<SigningKey> {
    match prepared(conn, alg)? {
        Some(key) => Ok(key),
        None => create(conn, alg, true),
    }
}

fn prepared(conn: &Connection, alg: Alg) -> Result<Option<SigningKey>> {
    let found: Option<(String, Vec<u8>)> = conn
        .query_row(
            "SELECT kid, pkcs8 FROM signing_keys WHERE alg = ?1 AND retired IS NULL AND prepared = 1 ORDER BY created DESC LIMIT 1",
            params![alg.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    found.map(|(kid, sealed)| Ok(SigningKey { kid, alg, pkcs8: crate::secrets::open(conn, &sealed)? })).transpose()
}

/// A published key, as `idbridge tenant keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: String,
    pub created: i64,
    /// `active`, `prepared` (published, not signing yet) or `retired`.
    pub state: &'static str,
    /// Retired keys: when they stop being published.
    pub published_until: Option<i64>,
}

/// Every published key, newest first.
pub fn list(conn: &Connection) -> Result<Vec<KeyInfo>> {
    let cutoff = now_secs() - RETIRED_KEY_GRACE_SECS;
    let rows: Vec<(String, String, i64, Option<i64>, bool)> = conn
        .prepare(
            "SELECT kid, alg, created, retired, prepared FROM signing_keys WHERE retired IS NULL OR retired > ?1 ORDER BY created DESC",
        )?
        .query_map(params![cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<std::result::Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(kid, alg, created, retired, prepared)| KeyInfo {
            kid,
            alg,
            created,
            state: match (retired, prepared) {
                (Some(_), _) => "retired",
                (None, true) => "prepared",
                (None, false) => "active",
            },
            published_until: retired.map(|r| r + RETIRED_KEY_GRACE_SECS),
        })
        .collect())
}

fn create(conn: &Connection, alg: Alg, prepared: bool) -> Result<SigningKey> {
    let kid = new_id();
    let (pkcs8, jwk) = match alg {
        Alg::Rs256 => generate_rsa()?,
        Alg::Es256 => generate_ec()?,
    };
    let mut jwk = jwk;
    if let Some(o) = jwk.as_object_mut() {
        o.insert("kid".into(), json!(kid));
        o.insert("alg".into(), json!(alg.as_str()));
        o.insert("use".into(), json!("sig"));
    }
    conn.execute(
        "INSERT INTO signing_keys(kid, alg, pkcs8, public_jwk, created, prepared) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
        params![kid, alg.as_str(), crate::secrets::seal(conn, &pkcs8)?, jwk.to_string(), now_secs(), prepared],
    )?;
    Ok(SigningKey { kid, alg, pkcs8 })
}

fn generate_rsa() -> Result<(Vec<u8>, Value)> {
    use rsa::pkcs8::EncodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).map_err(|e| key_error("RSA generation", e))?;
    let der = key.to_pkcs8_der().map_err(|e| key_error("RSA encoding", e))?;
    let jwk = json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()), "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be())});
    Ok((der.as_bytes().to_vec(), jwk))
}

fn generate_ec() -> Result<(Vec<u8>, Value)> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| key_error("EC generation", e))?;
    let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| key_error("EC key", e))?;
    // Uncompressed point: 0x04 ‖ x ‖ y.
    let point = pair.public_key().as_ref();
    let (x, y) = point.get(1..33).zip(point.get(33..65)).ok_or_else(|| key_error("EC key", "bad public point"))?;
    Ok((
        pkcs8.as_ref().to_vec(),
        json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}),
    ))
}

/// The RSA keys a relying party may see signatures of: the active one first,
/// then a prepared one, then those retired within the grace period; each
/// with when it was made.
pub fn published_rsa(conn: &Connection) -> Result<Vec<(SigningKey, i64)>> {
    let cutoff = now_secs() - RETIRED_KEY_GRACE_SECS;
    let mut stmt = conn.prepare(
        "SELECT kid, pkcs8, created FROM signing_keys WHERE alg = 'RS256' AND (retired IS NULL OR retired > ?1) ORDER BY retired IS NOT NULL, prepared, created DESC",
    )?;
    let rows: Vec<(String, Vec<u8>, i64)> = stmt
        .query_map(params![cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<std::result::Result<_, _>>()?;
    rows.into_iter()
        .map(|(kid, sealed, created)| {
            Ok((SigningKey { kid, alg: Alg::Rs256, pkcs8: crate::secrets::open(conn, &sealed)? }, created))
        })
        .collect()
}

/// The published keys: active ones and those retired within the grace period.
pub fn jwks(conn: &Connection) -> Result<Value> {
    let cutoff = now_secs() - RETIRED_KEY_GRACE_SECS;
    let mut stmt =
        conn.prepare("SELECT public_jwk FROM signing_keys WHERE retired IS NULL OR retired > ?1 ORDER BY created")?;
    let keys: Vec<Value> = stmt
        .query_map(params![cutoff], |r| r.get::<_, String>(0))?
        .filter_map(|k| k.ok().and_then(|k| serde_json::from_str(&k).ok()))
        .collect();
    Ok(json!({ "keys": keys }))
}

/// Checks a signature made by one of our published keys.
pub fn verify(conn: &Connection, kid: &str, message: &[u8], sig: &[u8]) -> Result<bool> {
    let cutoff = now_secs() - RETIRED_KEY_GRACE_SECS;
    let found: Option<(String, Vec<u8>)> = conn
        .query_row(
            "SELECT alg, pkcs8 FROM signing_keys WHERE kid = ?1 AND (retired IS NULL OR retired > ?2)",
            params![kid, cutoff],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    let Some((alg, sealed)) = found else { return Ok(false) };
    let pkcs8 = crate::secrets::open(conn, &sealed)?;
    let rng = SystemRandom::new();
    let ok = match Alg::parse(&alg) {
        Some(Alg::Rs256) => {
            let pair = RsaKeyPair::from_pkcs8(&pkcs8).map_err(|e| key_error("RSA key", e))?;
            signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, pair.public().as_ref())
                .verify(message, sig)
                .is_ok()
        }
        Some(Alg::Es256) => {
            let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
                .map_err(|e| key_error("EC key", e))?;
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref())
                .verify(message, sig)
                .is_ok()
        }
        None => false,
    };
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prepared key is published before it signs; the rotation that
    /// follows activates that very key and keeps the old one published.
    #[test]
    fn a_prepared_key_is_published_first_and_activated_by_the_next_rotation() {
        let dir = std::env::temp_dir().join(format!("idbridge-keys-{}", new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::Store::open(&dir.join("tenant.db")).unwrap();
        let conn = store.lock();
        let first = active(&conn, Alg::Rs256).unwrap();
        let next = prepare(&conn, Alg::Rs256).unwrap();
        assert_eq!(prepare(&conn, Alg::Rs256).unwrap().kid, next.kid, "one prepared key at a time");
        assert_eq!(active(&conn, Alg::Rs256).unwrap().kid, first.kid, "the prepared key does not sign yet");
        let published: Vec<String> = published_rsa(&conn).unwrap().into_iter().map(|(k, _)| k.kid).collect();
        assert_eq!(published, vec![first.kid.clone(), next.kid.clone()], "active first, then the prepared one");
        assert!(jwks(&conn).unwrap().to_string().contains(&next.kid));
        let states: Vec<&str> = list(&conn).unwrap().iter().map(|k| k.state).collect();
        assert!(states.contains(&"prepared") && states.contains(&"active"), "{states:?}");

        assert_eq!(rotate(&conn, Alg::Rs256).unwrap().kid, next.kid, "the rotation activates the prepared key");
        assert_eq!(active(&conn, Alg::Rs256).unwrap().kid, next.kid);
        let published: Vec<String> = published_rsa(&conn).unwrap().into_iter().map(|(k, _)| k.kid).collect();
        assert_eq!(published, vec![next.kid.clone(), first.kid.clone()], "the old key stays published");
        let retired = list(&conn).unwrap().into_iter().find(|k| k.kid == first.kid).unwrap();
        assert_eq!(retired.state, "retired");
        assert!(retired.published_until.is_some());
        // With nothing prepared, a rotation makes a fresh key.
        let fresh = rotate(&conn, Alg::Rs256).unwrap();
        assert!(fresh.kid != next.kid && fresh.kid != first.kid);
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
