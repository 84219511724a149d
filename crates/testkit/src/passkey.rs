//! A software passkey for benchmarks: answers the tenant's WebAuthn options
//! as an authenticator would (ES256, attestation "none", user present and
//! verified), so hundreds of passkey sign-ins run without a browser. Tests
//! use Chromium's virtual authenticator instead; this is for load, where a
//! browser per sign-in would measure the browser.
//!
//! Only what the tenant asks for is encoded: the attestation object is a
//! three-entry CBOR map and the public key a five-entry COSE map, written
//! by hand below (RFC 8949 major types 0, 1, 2, 3 and 5, short forms).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use crate::TestkitError;

/// One discoverable credential, bound to one relying party.
pub struct SoftPasskey {
    key: EcdsaKeyPair,
    credential_id: Vec<u8>,
    user_handle: Vec<u8>,
    counter: u32,
    rp_id: String,
    origin: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SoftPasskey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftPasskey").field("rp_id", &self.rp_id).field("counter", &self.counter).finish()
    }
}

fn fail(what: &str) -> TestkitError {
    TestkitError::Other(format!("soft passkey: {what}"))
}

fn b64(text: &Value) -> Result<Vec<u8>, TestkitError> {
    URL_SAFE_NO_PAD
        .decode(text.as_str().ok_or_else(|| fail("a binary field is not a string"))?)
        .map_err(|_| fail("not base64url"))
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().to_vec()
}

/// A CBOR head: major type and argument (RFC 8949 §3).
fn head(out: &mut Vec<u8>, major: u8, value: usize) {
    let major = major << 5;
    match value {
        0..=23 => out.push(major | value as u8),
        24..=0xff => out.extend([major | 24, value as u8]),
        _ => {
            out.push(major | 25);
            out.extend((value as u16).to_be_bytes());
        }
    }
}

fn cbor_int(out: &mut Vec<u8>, value: i64) {
    if value >= 0 {
        head(out, 0, value as usize);
    } else {
        head(out, 1, (-1 - value) as usize);
    }
}

fn cbor_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    head(out, 2, bytes.len());
    out.extend(bytes);
}

fn cbor_text(out: &mut Vec<u8>, text: &str) {
    head(out, 3, text.len());
    out.extend(text.as_bytes());
}

impl SoftPasskey {
    /// A new key pair and credential id for `origin` (its host is the RP id).
    pub fn new(origin: &str) -> Result<SoftPasskey, TestkitError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).map_err(|_| fail("keygen"))?;
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).map_err(|_| fail("key"))?;
        let mut credential_id = vec![0u8; 32];
        ring::rand::SecureRandom::fill(&rng, &mut credential_id).map_err(|_| fail("random"))?;
        let rp_id = url::Url::parse(origin)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .ok_or_else(|| fail("the origin has no host"))?;
        Ok(SoftPasskey {
            key,
            credential_id,
            user_handle: Vec::new(),
            counter: 0,
            rp_id,
            origin: origin.trim_end_matches('/').to_string(),
            rng,
        })
    }

    fn client_data(&self, kind: &str, challenge: &Value) -> Result<Vec<u8>, TestkitError> {
        let challenge = challenge.as_str().ok_or_else(|| fail("no challenge"))?;
        let data = json!({"type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": false});
        Ok(data.to_string().into_bytes())
    }

    /// rpIdHash, flags, counter (and, registering, the attested credential).
    fn authenticator_data(&mut self, attested: bool) -> Vec<u8> {
        self.counter += 1;
        let mut data = sha256(self.rp_id.as_bytes());
        // User present (0x01), user verified (0x04), attested credential data (0x40).
        data.push(if attested { 0x45 } else { 0x05 });
        data.extend(self.counter.to_be_bytes());
        if attested {
            data.extend([0u8; 16]); // AAGUID: none
            data.extend((self.credential_id.len() as u16).to_be_bytes());
            data.extend(&self.credential_id);
            let point = self.key.public_key().as_ref();
            let (x, y) = (point.get(1..33).unwrap_or_default(), point.get(33..65).unwrap_or_default());
            // COSE_Key: kty EC2, alg ES256, crv P-256, x, y.
            head(&mut data, 5, 5);
            for (label, value) in [(1, 2), (3, -7), (-1, 1)] {
                cbor_int(&mut data, label);
                cbor_int(&mut data, value);
            }
            cbor_int(&mut data, -2);
            cbor_bytes(&mut data, x);
            cbor_int(&mut data, -3);
            cbor_bytes(&mut data, y);
        }
        data
    }

    /// The answer to `navigator.credentials.create(options)`, as the
    /// tenant's page posts it (JSON text).
    pub fn register(&mut self, options: &Value) -> Result<String, TestkitError> {
        let o = &options["publicKey"];
        self.user_handle = b64(&o["user"]["id"])?;
        let client_data = self.client_data("webauthn.create", &o["challenge"])?;
        let auth_data = self.authenticator_data(true);
        let mut attestation = Vec::new();
        head(&mut attestation, 5, 3);
        cbor_text(&mut attestation, "fmt");
        cbor_text(&mut attestation, "none");
        cbor_text(&mut attestation, "attStmt");
        head(&mut attestation, 5, 0);
        cbor_text(&mut attestation, "authData");
        cbor_bytes(&mut attestation, &auth_data);
        let id = URL_SAFE_NO_PAD.encode(&self.credential_id);
        Ok(json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {
                "attestationObject": URL_SAFE_NO_PAD.encode(attestation),
                "clientDataJSON": URL_SAFE_NO_PAD.encode(client_data),
            },
        })
        .to_string())
    }

    /// The answer to `navigator.credentials.get(options)`.
    pub fn assert(&mut self, options: &Value) -> Result<String, TestkitError> {
        let client_data = self.client_data("webauthn.get", &options["publicKey"]["challenge"])?;
        let auth_data = self.authenticator_data(false);
        let mut signed = auth_data.clone();
        signed.extend(sha256(&client_data));
        let signature = self.key.sign(&self.rng, &signed).map_err(|_| fail("sign"))?;
        let id = URL_SAFE_NO_PAD.encode(&self.credential_id);
        Ok(json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {
                "authenticatorData": URL_SAFE_NO_PAD.encode(auth_data),
                "clientDataJSON": URL_SAFE_NO_PAD.encode(client_data),
                "signature": URL_SAFE_NO_PAD.encode(signature.as_ref()),
                "userHandle": URL_SAFE_NO_PAD.encode(&self.user_handle),
            },
        })
        .to_string())
    }
}
