//! Secrets at rest: the OpenID Connect signing keys and federation client
//! secrets are stored sealed (ChaCha20-Poly1305) under a key kept outside
//! the database, in `secrets.key` (0600) beside it — a copy of `tenant.db`
//! alone (a backup, a support bundle) does not hand out the keys that sign
//! every token. With PostgreSQL every node is given a copy of the key file
//! (`--secrets-key`); the database remembers which key it was sealed with.
//! An in-memory database (tests) keeps them as they are.
//!
//! Sealed values start with `enc1`; older plain values are sealed when the
//! database is opened.

use std::path::Path;

use crate::db::{Connection, params};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::error::{Result, TenantError};

const MARK: &[u8] = b"enc1";
/// The key file's name, beside the database.
pub const KEY_FILE: &str = "secrets.key";

/// Loads (or makes, 0600) the master key in `file`.
pub fn load_key_file(file: &Path) -> Result<[u8; 32]> {
    match std::fs::read(file) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| TenantError::Invalid(format!("{} is not a tenant secrets key (32 bytes)", file.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = crate::util::random_bytes::<32>();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut f = options
                .open(file)
                .map_err(|e| TenantError::Io { what: format!("cannot create {}", file.display()), error: e })?;
            std::io::Write::write_all(&mut f, &key)
                .and_then(|()| f.sync_all())
                .map_err(|e| TenantError::Io { what: format!("cannot write {}", file.display()), error: e })?;
            Ok(key)
        }
        Err(e) => Err(TenantError::Io { what: format!("cannot read {}", file.display()), error: e }),
    }
}

/// A shared database (PostgreSQL) remembers which key seals its secrets:
/// a node started with another key file is refused before it seals
/// anything with it. The first node to start records its key's check value.
pub fn check_key(conn: &Connection, file: &Path) -> Result<()> {
    let Some(key) = conn.secrets_key() else { return Ok(()) };
    let check = STANDARD.encode(ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), MARK));
    conn.execute(
        "INSERT INTO meta(key, value) VALUES('secrets_key_check', ?1) ON CONFLICT(key) DO NOTHING",
        params![check],
    )?;
    if crate::store::get_meta(conn, "secrets_key_check")?.as_deref() != Some(check.as_str()) {
        return Err(TenantError::Invalid(format!(
            "{} is not the secrets key of this database: every tenant node needs a copy of the same key file",
            file.display()
        )));
    }
    Ok(())
}

fn key_of(conn: &Connection) -> Option<[u8; 32]> {
    conn.secrets_key()
}

fn aead(key: &[u8; 32]) -> Result<LessSafeKey> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| TenantError::Invalid("the secrets key is not usable".into()))
}

/// Seals `plain` for this database (unchanged without a key: in memory).
pub fn seal(conn: &Connection, plain: &[u8]) -> Result<Vec<u8>> {
    let Some(key) = key_of(conn) else { return Ok(plain.to_vec()) };
    let nonce = crate::util::random_bytes::<12>();
    let mut data = plain.to_vec();
    aead(&key)?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(MARK), &mut data)
        .map_err(|_| TenantError::Invalid("sealing a secret failed".into()))?;
    let mut out = MARK.to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Opens what [`seal`] made; a value without the mark is returned as it is.
pub fn open(conn: &Connection, stored: &[u8]) -> Result<Vec<u8>> {
    let Some(rest) = stored.strip_prefix(MARK) else { return Ok(stored.to_vec()) };
    let key = key_of(conn).ok_or_else(|| {
        TenantError::Invalid(format!("a sealed secret needs {KEY_FILE} beside the database, and it is not loaded"))
    })?;
    if rest.len() < 12 {
        return Err(TenantError::Invalid("a sealed secret is cut short".into()));
    }
    let (nonce, sealed) = rest.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| TenantError::Invalid("a sealed secret is cut short".into()))?;
    let mut data = sealed.to_vec();
    let plain =
        aead(&key)?.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(MARK), &mut data).map_err(|_| {
            TenantError::Invalid(format!("a sealed secret does not open with {KEY_FILE} (another tenant's key?)"))
        })?;
    Ok(plain.to_vec())
}

/// Text form: `enc1:` and base64 of the sealed bytes.
pub fn seal_text(conn: &Connection, plain: &str) -> Result<String> {
    if key_of(conn).is_none() {
        return Ok(plain.to_string());
    }
    Ok(format!("enc1:{}", STANDARD.encode(seal(conn, plain.as_bytes())?)))
}

pub fn open_text(conn: &Connection, stored: &str) -> Result<String> {
    let Some(encoded) = stored.strip_prefix("enc1:") else { return Ok(stored.to_string()) };
    let bytes = STANDARD.decode(encoded).map_err(|_| TenantError::Invalid("a sealed secret is not base64".into()))?;
    String::from_utf8(open(conn, &bytes)?).map_err(|_| TenantError::Invalid("a sealed secret is not text".into()))
}

/// Seals what an older version stored in clear: signing keys and federation
/// client secrets.
pub fn seal_existing(conn: &Connection) -> Result<()> {
    if key_of(conn).is_none() {
        return Ok(());
    }
    let plain_keys: Vec<(String, Vec<u8>)> = conn
        .query_map("SELECT kid, pkcs8 FROM signing_keys", params![], |r| Ok((r.get(0)?, r.get(1)?)))?
        .into_iter()
        .filter(|(_, k): &(String, Vec<u8>)| !k.starts_with(MARK))
        .collect();
    for (kid, pkcs8) in plain_keys {
        conn.execute("UPDATE signing_keys SET pkcs8 = ?2 WHERE kid = ?1", params![kid, seal(conn, &pkcs8)?])?;
    }
    let federations: Vec<(String, String)> =
        conn.query_map("SELECT name, federation FROM domains WHERE federation IS NOT NULL", params![], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    for (name, text) in federations {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let secret = value.get("client_secret").and_then(|s| s.as_str()).map(str::to_string);
        if let Some(secret) = secret.filter(|s| !s.starts_with("enc1:"))
            && let Some(slot) = value.get_mut("client_secret")
        {
            *slot = serde_json::Value::String(seal_text(conn, &secret)?);
            conn.execute("UPDATE domains SET federation = ?2 WHERE name = ?1", params![name, value.to_string()])?;
        }
    }
    Ok(())
}
