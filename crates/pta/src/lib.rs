//! Pass-through authentication, the part both sides share.
//!
//! The tenant seals each sign-in request to an agent's public key: an
//! ephemeral X25519 key agreement, HKDF-SHA256, ChaCha20-Poly1305. The
//! request id, the deadline and the agent id are the AEAD's associated data,
//! so a ciphertext cannot be moved to another request, agent or time; the
//! agent refuses what is past its deadline and what it has seen before.
//! The same key agreement gives an answer key: the agent's answer carries an
//! HMAC over the request id and the outcome with it, so only the agent the
//! request was sealed to can answer it.
//! Passwords exist in clear only in the tenant's sign-in handler and in the
//! agent's bind, never on a disk or in a log.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use serde::{Deserialize, Serialize};
use x25519_dalek::{EphemeralSecret, PublicKey, StaticSecret};

const INFO: &[u8] = b"idbridge-pta-v1";
const ANSWER_INFO: &[u8] = b"idbridge-pta-v1-answer";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PtaError {
    #[error("the request does not decrypt (tampered, or sealed for another agent)")]
    Tampered,
    #[error("the request's deadline has passed")]
    Expired,
    #[error("the request was seen before (replayed)")]
    Replayed,
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("the key agreement is not contributory (a low-order public key)")]
    WeakKey,
}

/// Authenticates an agent's answer to one request (HMAC-SHA256 key from the
/// request's key agreement). Never printed.
#[derive(Clone)]
pub struct AnswerKey([u8; 32]);

impl fmt::Debug for AnswerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnswerKey(…)")
    }
}

impl AnswerKey {
    /// The key's bytes, to keep it where several tenant nodes can check an
    /// answer (sealed under the tenant's secrets key).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> AnswerKey {
        AnswerKey(bytes)
    }

    fn message(request_id: &str, outcome: Outcome) -> Vec<u8> {
        format!("{request_id}|{}", outcome.as_str()).into_bytes()
    }

    /// The agent's side: the MAC to send with `outcome` (base64url).
    pub fn sign(&self, request_id: &str, outcome: Outcome) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, &Self::message(request_id, outcome)).as_ref())
    }

    /// The tenant's side: whether `mac` is this request's agent's, for this outcome (constant time).
    pub fn verify(&self, request_id: &str, outcome: Outcome, mac: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(mac) else { return false };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        ring::hmac::verify(&key, &Self::message(request_id, outcome), &tag).is_ok()
    }
}

/// Refuses a public key that makes every key agreement predictable (the
/// low-order points of Curve25519): the tenant checks agents' keys with it
/// when they register.
pub fn check_public_key(public: &str) -> Result<(), PtaError> {
    let public: [u8; 32] = unb64(public, "the public key")?;
    let probe = EphemeralSecret::random_from_rng(rand_core::OsRng);
    if probe.diffie_hellman(&PublicKey::from(public)).was_contributory() { Ok(()) } else { Err(PtaError::WeakKey) }
}

/// What the agent learns from a request: a password to check, or with
/// `write`, a password to set (password writeback).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    /// The current password; empty for an administrator's reset.
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<PasswordWrite>,
}

impl Credentials {
    /// A sign-in to check.
    pub fn check(username: &str, password: &str) -> Credentials {
        Credentials { username: username.to_string(), password: password.to_string(), write: None }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: (hidden), write: {:?} }}", self.username, self.write)
    }
}

pub use proto::pta::{Outcome, PasswordWrite, Sealed};

/// An agent's key pair. The secret never leaves the agent's machine.
pub struct AgentKey(StaticSecret);

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentKey(…)")
    }
}

impl AgentKey {
    pub fn generate() -> AgentKey {
        AgentKey(StaticSecret::random_from_rng(rand_core::OsRng))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> AgentKey {
        AgentKey(StaticSecret::from(bytes))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public key, base64url.
    pub fn public(&self) -> String {
        URL_SAFE_NO_PAD.encode(PublicKey::from(&self.0).as_bytes())
    }
}

fn unb64<const N: usize>(text: &str, what: &str) -> Result<[u8; N], PtaError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| PtaError::Malformed(format!("{what} is not {N} bytes of base64url")))
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The request's AEAD key and answer key, both from the key agreement.
fn derive_keys(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    agent_public: &[u8; 32],
) -> Result<(LessSafeKey, AnswerKey), PtaError> {
    let mut salt_bytes = Vec::with_capacity(64);
    salt_bytes.extend_from_slice(ephemeral);
    salt_bytes.extend_from_slice(agent_public);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt_bytes).extract(shared);
    let expand = |info: &[u8]| -> Result<[u8; 32], PtaError> {
        let info = [info];
        let okm = prk.expand(&info, Len(32)).map_err(|_| PtaError::Malformed("key derivation".into()))?;
        let mut key = [0u8; 32];
        okm.fill(&mut key).map_err(|_| PtaError::Malformed("key derivation".into()))?;
        Ok(key)
    };
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &expand(INFO)?).map_err(|_| PtaError::Malformed("key".into()))?;
    Ok((LessSafeKey::new(unbound), AnswerKey(expand(ANSWER_INFO)?)))
}

fn associated(request_id: &str, deadline: i64, agent_id: &str) -> Vec<u8> {
    format!("{INFO:?}|{request_id}|{deadline}|{agent_id}").into_bytes()
}

/// Seals credentials for one agent (the tenant's side); the answer key
/// checks that agent's answer.
pub fn seal(
    agent_public: &str,
    agent_id: &str,
    request_id: &str,
    deadline: i64,
    credentials: &Credentials,
) -> Result<(Sealed, AnswerKey), PtaError> {
    let agent_public: [u8; 32] = unb64(agent_public, "the agent's public key")?;
    let ephemeral = EphemeralSecret::random_from_rng(rand_core::OsRng);
    let ephemeral_public = PublicKey::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(&PublicKey::from(agent_public));
    if !shared.was_contributory() {
        return Err(PtaError::WeakKey);
    }
    let (key, answer_key) = derive_keys(shared.as_bytes(), ephemeral_public.as_bytes(), &agent_public)?;
    let mut nonce = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let mut data = serde_json::to_vec(credentials).map_err(|e| PtaError::Malformed(e.to_string()))?;
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(associated(request_id, deadline, agent_id)),
        &mut data,
    )
    .map_err(|_| PtaError::Malformed("sealing".into()))?;
    let sealed = Sealed {
        request_id: request_id.to_string(),
        deadline,
        agent_id: agent_id.to_string(),
        ephemeral: URL_SAFE_NO_PAD.encode(ephemeral_public.as_bytes()),
        nonce: URL_SAFE_NO_PAD.encode(nonce),
        ciphertext: URL_SAFE_NO_PAD.encode(&data),
    };
    Ok((sealed, answer_key))
}

/// Opens a request (the agent's side): authentic, for this agent, not
/// expired at `now`, not seen before. The answer key signs the answer.
pub fn open(
    key: &AgentKey,
    agent_id: &str,
    sealed: &Sealed,
    now: i64,
    seen: &mut Seen,
) -> Result<(Credentials, AnswerKey), PtaError> {
    if sealed.agent_id != agent_id {
        return Err(PtaError::Tampered);
    }
    if sealed.deadline < now {
        return Err(PtaError::Expired);
    }
    let ephemeral: [u8; 32] = unb64(&sealed.ephemeral, "the ephemeral key")?;
    let nonce: [u8; 12] = unb64(&sealed.nonce, "the nonce")?;
    let mut data = URL_SAFE_NO_PAD
        .decode(&sealed.ciphertext)
        .map_err(|_| PtaError::Malformed("ciphertext is not base64url".into()))?;
    let public = PublicKey::from(&key.0);
    let shared = key.0.diffie_hellman(&PublicKey::from(ephemeral));
    if !shared.was_contributory() {
        return Err(PtaError::WeakKey);
    }
    let (aead, answer_key) = derive_keys(shared.as_bytes(), &ephemeral, public.as_bytes())?;
    let plain = aead
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated(&sealed.request_id, sealed.deadline, agent_id)),
            &mut data,
        )
        .map_err(|_| PtaError::Tampered)?;
    let credentials: Credentials = serde_json::from_slice(plain).map_err(|_| PtaError::Tampered)?;
    // Only authentic requests are remembered, so garbage cannot fill the memory.
    seen.check(&sealed.request_id, sealed.deadline, now)?;
    Ok((credentials, answer_key))
}

/// Request ids an agent has answered, kept until their deadline.
#[derive(Debug, Default)]
pub struct Seen(HashMap<String, i64>);

impl Seen {
    fn check(&mut self, request_id: &str, deadline: i64, now: i64) -> Result<(), PtaError> {
        self.0.retain(|_, d| *d >= now);
        if self.0.contains_key(request_id) {
            return Err(PtaError::Replayed);
        }
        self.0.insert(request_id.to_string(), deadline);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials::check("ann@x.org", "s3cret!")
    }

    #[test]
    fn password_writes_travel_sealed_and_print_hidden() {
        let key = AgentKey::generate();
        let write = Credentials {
            write: Some(PasswordWrite::Change { new_password: "Nëw-pässword-ü".into() }),
            ..Credentials::check("zoë@x.org", "old-sécret")
        };
        let (sealed, _) = seal(&key.public(), "agent-1", "req-1", 1000, &write).unwrap();
        assert!(!sealed.ciphertext.contains("pässword"));
        let (opened, _) = open(&key, "agent-1", &sealed, 990, &mut Seen::default()).unwrap();
        assert_eq!(opened, write);
        assert_eq!(opened.write.as_ref().map(PasswordWrite::new_password), Some("Nëw-pässword-ü"));
        let shown = format!("{opened:?}");
        assert!(!shown.contains("pässword") && !shown.contains("sécret") && shown.contains("Change"), "{shown}");
        // A request without a write (what agents of before writeback read) is a sign-in check.
        let plain: Credentials = serde_json::from_str(r#"{"username":"a@x.org","password":"p"}"#).unwrap();
        assert_eq!(plain, Credentials::check("a@x.org", "p"));
        // A request an older agent reads: the write is ignored, so it can only answer a check's outcome.
        let json = serde_json::to_string(&write).unwrap();
        assert!(json.contains(r#""kind":"change""#), "{json}");
    }

    #[test]
    fn sealed_requests_open_once_for_their_agent_only() {
        let key = AgentKey::generate();
        let (sealed, answer_key) = seal(&key.public(), "agent-1", "req-1", 1000, &creds()).unwrap();
        assert!(!sealed.ciphertext.contains("s3cret"));
        let mut seen = Seen::default();
        let (opened, agents_key) = open(&key, "agent-1", &sealed, 990, &mut seen).unwrap();
        assert_eq!(opened, creds());
        // The answer: only this request's agent can sign it, for this outcome and request.
        let mac = agents_key.sign("req-1", Outcome::Success);
        assert!(answer_key.verify("req-1", Outcome::Success, &mac));
        assert!(!answer_key.verify("req-1", Outcome::WrongPassword, &mac));
        assert!(!answer_key.verify("req-2", Outcome::Success, &mac));
        let (_, other_key) = seal(&key.public(), "agent-1", "req-1", 1000, &creds()).unwrap();
        assert!(!other_key.verify("req-1", Outcome::Success, &mac));
        assert!(!answer_key.verify("req-1", Outcome::Success, "not base64 ü"));
        let err = |r: Result<(Credentials, AnswerKey), PtaError>| r.map(|(c, _)| c).unwrap_err();
        assert_eq!(err(open(&key, "agent-1", &sealed, 991, &mut seen)), PtaError::Replayed);
        assert_eq!(err(open(&key, "agent-1", &sealed, 1001, &mut Seen::default())), PtaError::Expired);
        assert_eq!(err(open(&key, "agent-2", &sealed, 990, &mut Seen::default())), PtaError::Tampered);
        // Another agent's key, a moved request id, a later deadline, a flipped bit: all refused.
        assert_eq!(err(open(&AgentKey::generate(), "agent-1", &sealed, 990, &mut Seen::default())), PtaError::Tampered);
        let moved = Sealed { request_id: "req-2".into(), ..sealed.clone() };
        assert_eq!(err(open(&key, "agent-1", &moved, 990, &mut Seen::default())), PtaError::Tampered);
        let extended = Sealed { deadline: 5000, ..sealed.clone() };
        assert_eq!(err(open(&key, "agent-1", &extended, 990, &mut Seen::default())), PtaError::Tampered);
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed.ciphertext).unwrap();
        bytes[0] ^= 1;
        let flipped = Sealed { ciphertext: URL_SAFE_NO_PAD.encode(&bytes), ..sealed.clone() };
        assert_eq!(err(open(&key, "agent-1", &flipped, 990, &mut Seen::default())), PtaError::Tampered);
        // A low-order public key (all zeros, a point of order 1) is refused.
        let zero = URL_SAFE_NO_PAD.encode([0u8; 32]);
        assert_eq!(check_public_key(&zero), Err(PtaError::WeakKey));
        assert_eq!(seal(&zero, "agent-1", "req-1", 1000, &creds()).map(|_| ()), Err(PtaError::WeakKey));
        assert_eq!(check_public_key(&key.public()), Ok(()));
        assert!(format!("{:?}", creds()).contains("hidden"));
        let again = AgentKey::from_bytes(key.to_bytes());
        assert_eq!(again.public(), key.public());
    }
}
