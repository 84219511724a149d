//! Passkeys (WebAuthn / FIDO2): registering one, signing in with it alone
//! (a discoverable credential: no name, no password) and using it as the
//! second step after a password. No HTTP here: the pages hand over the
//! browser's JSON and get back the options for `navigator.credentials`.
//!
//! The protocol (CBOR, COSE keys, signatures, counters, user verification)
//! is the `webauthn-rs` crate's: well kept, reviewed, and used by kanidm —
//! not something to write again. This module keeps what it needs between
//! the two halves of each ceremony in the database (`webauthn_challenges`,
//! single use, five minutes), so any tenant node can finish what another
//! began, and stores each passkey as a method of `mfa_methods` (kind
//! `passkey`) with its credential id for the lookup a nameless sign-in
//! starts from.
//!
//! Browsers accept a relying party only on a domain name, never an IP
//! address: a tenant reached as `http://127.0.0.1:…` has no passkeys
//! ([`RelyingParty::for_issuer`] says why), one at `http://localhost:…` or
//! a real name does.

use webauthn_rs::prelude::{
    CredentialID, DiscoverableAuthentication, DiscoverableKey, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use crate::db::{Connection, OptionalExtension, params};
use crate::error::{Result, TenantError};
use crate::mfa::{Enrolled, MethodInfo, MethodKind};
use crate::util::{new_id, now_secs, random_token, sha256};

/// How long the browser has between the options and its answer.
pub const CEREMONY_SECS: i64 = 300;
/// A browser's answer larger than this is refused unread (real ones are
/// around 1 KiB; attestation "none" carries no certificates).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024;

/// The tenant as a WebAuthn relying party: its id is the issuer's host name.
#[derive(Debug)]
pub struct RelyingParty {
    webauthn: Webauthn,
}

impl RelyingParty {
    /// The relying party of the tenant at `issuer` (its public URL), named
    /// `name` on the authenticator's prompt. `Err` with the reason when the
    /// URL cannot have passkeys (an IP address, no host).
    pub fn for_issuer(issuer: &str, name: &str) -> std::result::Result<RelyingParty, String> {
        let url = Url::parse(issuer).map_err(|e| format!("the public URL {issuer} is not a URL: {e}"))?;
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(_) => {
                return Err(format!(
                    "passkeys need the tenant reached by a domain name, and {issuer} is an IP address: give --public-url with a name (http://localhost:PORT on this machine)"
                ));
            }
            None => return Err(format!("the public URL {issuer} has no host")),
        };
        let origin = Url::parse(&url.origin().ascii_serialization())
            .map_err(|e| format!("the public URL {issuer} has no origin: {e}"))?;
        let webauthn = WebauthnBuilder::new(&host, &origin)
            .and_then(|b| b.rp_name(name).build())
            .map_err(|e| format!("passkeys cannot work at {issuer}: {e}"))?;
        Ok(RelyingParty { webauthn })
    }
}

/// What a ceremony's first half gives the browser: the options for
/// `navigator.credentials.create` / `get` (binary fields in base64url) and
/// the token that names the waiting challenge in the second half.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ceremony {
    pub token: String,
    pub options: serde_json::Value,
}

/// A passkey that signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    pub user_id: String,
    pub method_id: String,
    /// The credential may be copied to other devices (a synced passkey):
    /// `amr` says `swk` then, `hwk` when it is bound to one authenticator.
    pub backup_eligible: bool,
}

/// Why a passkey was refused. The texts are what the person sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasskeyError {
    #[error("The passkey request expired. Try again.")]
    Expired,
    #[error("The browser's answer could not be read. Try again.")]
    Malformed,
    #[error("That passkey was not accepted. Try again, or use another way to sign in.")]
    Refused { reason: String },
    #[error("That passkey is not registered here. Use another passkey, or sign in with your password.")]
    Unknown,
    #[error("This passkey is registered already.")]
    AlreadyRegistered,
    #[error(
        "The passkey's counter went backwards, which a copied key would do. It was not accepted: remove it and register it again."
    )]
    PossiblyCloned,
    #[error("The name must be 1 to {} characters.", crate::mfa::MAX_LABEL_CHARS)]
    BadLabel,
}

impl PasskeyError {
    /// The sign-in log's reason.
    pub fn reason(&self) -> &str {
        match self {
            PasskeyError::Expired => "passkey-expired",
            PasskeyError::Malformed => "passkey-malformed",
            PasskeyError::Refused { .. } => "passkey-refused",
            PasskeyError::Unknown => "passkey-unknown",
            PasskeyError::AlreadyRegistered => "passkey-already-registered",
            PasskeyError::PossiblyCloned => "passkey-counter-went-back",
            PasskeyError::BadLabel => "bad-label",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Register,
    SignIn,
    SecondFactor,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Register => "register",
            Purpose::SignIn => "sign-in",
            Purpose::SecondFactor => "second-factor",
        }
    }
}

/// The WebAuthn user handle of a tenant user: its id when that is a UUID
/// (ids made by this tenant are), else one derived from it.
fn user_handle(user_id: &str) -> Uuid {
    Uuid::parse_str(user_id).unwrap_or_else(|_| {
        let digest = sha256(user_id.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
        Uuid::from_bytes(bytes)
    })
}

fn credential_key(id: &CredentialID) -> String {
    data_encoding::BASE64URL_NOPAD.encode(id.as_ref())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| TenantError::Invalid(format!("cannot encode passkey state: {e}")))
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| TenantError::Invalid(format!("cannot encode passkey options: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| TenantError::Invalid(format!("a stored passkey record does not read: {e}")))
}

/// The browser's answer, bounded before it is parsed.
fn parse_response<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    if text.len() > MAX_RESPONSE_BYTES {
        return None;
    }
    serde_json::from_str(text).ok()
}

fn store_challenge(conn: &Connection, purpose: Purpose, user_id: Option<&str>, state: &str) -> Result<String> {
    let now = now_secs();
    conn.execute("DELETE FROM webauthn_challenges WHERE expires <= ?1", params![now])?;
    let token = random_token();
    conn.execute(
        "INSERT INTO webauthn_challenges(hash, purpose, user_id, state, expires) VALUES(?1, ?2, ?3, ?4, ?5)",
        params![sha256(token.as_bytes()), purpose.as_str(), user_id, state, now + CEREMONY_SECS],
    )?;
    Ok(token)
}

/// The challenge `token` names, taken (single use): its user and state.
fn take_challenge(conn: &Connection, token: &str, purpose: Purpose) -> Result<Option<(Option<String>, String)>> {
    let hash = sha256(token.as_bytes());
    let found: Option<(Option<String>, String)> = conn
        .query_row(
            "SELECT user_id, state FROM webauthn_challenges WHERE hash = ?1 AND purpose = ?2 AND expires > ?3",
            params![hash, purpose.as_str(), now_secs()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if found.is_some() {
        conn.execute("DELETE FROM webauthn_challenges WHERE hash = ?1", params![hash])?;
    }
    Ok(found)
}

/// A ceremony's second half: takes the challenge `token` names (single
/// use), checks it was begun by `owner` (when the ceremony has one), and
/// reads its stored state and the browser's bounded answer.
fn take_ceremony<S, R>(
    conn: &Connection,
    token: &str,
    purpose: Purpose,
    owner: Option<&str>,
    response: &str,
) -> Result<std::result::Result<(S, R), PasskeyError>>
where
    S: serde::de::DeserializeOwned,
    R: serde::de::DeserializeOwned,
{
    let Some((began_by, state)) = take_challenge(conn, token, purpose)? else {
        return Ok(Err(PasskeyError::Expired));
    };
    if owner.is_some() && began_by.as_deref() != owner {
        return Ok(Err(PasskeyError::Expired));
    }
    let state: S = from_json(&state)?;
    let Some(response) = parse_response::<R>(response) else {
        return Ok(Err(PasskeyError::Malformed));
    };
    Ok(Ok((state, response)))
}

/// A user's passkeys: (method id, credential).
fn passkeys_of(conn: &Connection, user_id: &str) -> Result<Vec<(String, Passkey)>> {
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT id, credential FROM mfa_methods WHERE user_id = ?1 AND kind = 'passkey' ORDER BY created")?
        .query_map(params![user_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?;
    rows.into_iter().map(|(id, json)| Ok((id, from_json(&json)?))).collect()
}

/// Starts registering a passkey for the signed-in user: a discoverable
/// credential (so it can sign in without a name later) with user
/// verification, attestation "none"; the user's passkeys are excluded, so
/// an authenticator that holds one already says so.
pub fn begin_registration(
    conn: &Connection,
    rp: &RelyingParty,
    user_id: &str,
    user_name: &str,
    display_name: &str,
) -> Result<Ceremony> {
    let exclude: Vec<CredentialID> = passkeys_of(conn, user_id)?.iter().map(|(_, p)| p.cred_id().clone()).collect();
    let (options, state) = rp
        .webauthn
        .start_passkey_registration(
            user_handle(user_id),
            user_name,
            if display_name.is_empty() { user_name } else { display_name },
            Some(exclude),
        )
        .map_err(|e| TenantError::Invalid(format!("cannot start a passkey registration: {e}")))?;
    // Discoverable ("resident") credentials: the passkey names its user, so
    // signing in needs neither name nor password. (The crate's passkey
    // options leave this to the authenticator; only the browser reads it.)
    let mut options = to_value(&options)?;
    if let Some(selection) = options.pointer_mut("/publicKey/authenticatorSelection").and_then(|s| s.as_object_mut()) {
        selection.insert("residentKey".into(), "required".into());
        selection.insert("requireResidentKey".into(), true.into());
    }
    let token = store_challenge(conn, Purpose::Register, Some(user_id), &to_json(&state)?)?;
    Ok(Ceremony { token, options })
}

/// Finishes a registration the same user began: checks the authenticator's
/// answer and stores the passkey as `label`. The first method of a user
/// brings recovery codes, as an authenticator app's does.
pub fn finish_registration(
    conn: &Connection,
    rp: &RelyingParty,
    user_id: &str,
    token: &str,
    response: &str,
    label: &str,
) -> Result<std::result::Result<Enrolled, PasskeyError>> {
    let outcome = register(conn, rp, user_id, token, response, label)?;
    if let Err(e) = &outcome {
        let reason = match e {
            PasskeyError::Refused { reason } => format!("{}: {reason}", e.reason()),
            _ => e.reason().to_string(),
        };
        crate::mfa::registration_refused(conn, user_id, MethodKind::Passkey, &reason)?;
    }
    Ok(outcome)
}

fn register(
    conn: &Connection,
    rp: &RelyingParty,
    user_id: &str,
    token: &str,
    response: &str,
    label: &str,
) -> Result<std::result::Result<Enrolled, PasskeyError>> {
    let Some(label) = crate::mfa::checked_label(label) else { return Ok(Err(PasskeyError::BadLabel)) };
    let (state, response): (PasskeyRegistration, RegisterPublicKeyCredential) =
        match take_ceremony(conn, token, Purpose::Register, Some(user_id), response)? {
            Ok(taken) => taken,
            Err(e) => return Ok(Err(e)),
        };
    let passkey = match rp.webauthn.finish_passkey_registration(&response, &state) {
        Ok(p) => p,
        Err(e) => return Ok(Err(PasskeyError::Refused { reason: e.to_string() })),
    };
    let credential_id = credential_key(passkey.cred_id());
    let taken: Option<i64> = conn
        .query_row("SELECT 1 FROM mfa_methods WHERE credential_id = ?1", params![credential_id], |r| r.get(0))
        .optional()?;
    if taken.is_some() {
        return Ok(Err(PasskeyError::AlreadyRegistered));
    }
    let first = crate::mfa::count(conn, user_id)? == 0;
    let (id, created) = (new_id(), now_secs());
    conn.execute(
        "INSERT INTO mfa_methods(id, user_id, kind, label, secret, last_step, created, credential_id, credential)
         VALUES(?1, ?2, ?3, ?4, '', 0, ?5, ?6, ?7)",
        params![id, user_id, MethodKind::Passkey.as_str(), label, created, credential_id, to_json(&passkey)?],
    )?;
    let recovery_codes = if first { crate::mfa::new_recovery_codes(conn, user_id)? } else { Vec::new() };
    let detail = serde_json::json!({"kind": "passkey", "label": label});
    crate::audit::record(conn, user_id, "mfa-registered", Some("User"), Some(user_id), Some(&detail))?;
    let method = MethodInfo { id, kind: MethodKind::Passkey, label: label.to_string(), created, last_used: None };
    Ok(Ok(Enrolled { method, recovery_codes }))
}

/// Whether the registered passkey `method_id` may be synced to other
/// devices (backup eligible; the crate keeps the flag in the credential).
pub fn backup_eligible(conn: &Connection, method_id: &str) -> Result<bool> {
    let credential: Option<String> = conn
        .query_row("SELECT credential FROM mfa_methods WHERE id = ?1", params![method_id], |r| r.get(0))
        .optional()?;
    let value: serde_json::Value = match credential {
        Some(text) => from_json(&text)?,
        None => return Ok(false),
    };
    Ok(value.pointer("/cred/backup_eligible").and_then(serde_json::Value::as_bool).unwrap_or(false))
}

/// Starts a sign-in with a passkey alone: the browser offers the passkeys
/// it holds for this site; the one chosen names its user.
pub fn begin_sign_in(conn: &Connection, rp: &RelyingParty) -> Result<Ceremony> {
    let (mut options, state) = rp
        .webauthn
        .start_discoverable_authentication()
        .map_err(|e| TenantError::Invalid(format!("cannot start a passkey sign-in: {e}")))?;
    // The page asks when the person presses "Sign in with a passkey", not
    // as autofill ("conditional" mediation).
    options.mediation = None;
    let token = store_challenge(conn, Purpose::SignIn, None, &to_json(&state)?)?;
    Ok(Ceremony { token, options: to_value(&options)? })
}

/// Starts the passkey step after `user_id`'s password; `None` when the
/// user has no passkey.
pub fn begin_second_factor(conn: &Connection, rp: &RelyingParty, user_id: &str) -> Result<Option<Ceremony>> {
    let passkeys: Vec<Passkey> = passkeys_of(conn, user_id)?.into_iter().map(|(_, p)| p).collect();
    if passkeys.is_empty() {
        return Ok(None);
    }
    let (options, state) = rp
        .webauthn
        .start_passkey_authentication(&passkeys)
        .map_err(|e| TenantError::Invalid(format!("cannot start a passkey check: {e}")))?;
    let token = store_challenge(conn, Purpose::SecondFactor, Some(user_id), &to_json(&state)?)?;
    Ok(Some(Ceremony { token, options: to_value(&options)? }))
}

/// Finishes a nameless sign-in: the passkey's user, if the passkey is one
/// of theirs and its signature, user verification and counter are right.
pub fn finish_sign_in(
    conn: &Connection,
    rp: &RelyingParty,
    token: &str,
    response: &str,
) -> Result<std::result::Result<Used, PasskeyError>> {
    finish_discoverable(conn, rp, token, response, None)
}

/// Finishes a ceremony begun by [`begin_sign_in`] that must prove `user_id`
/// (a self-service password reset: the options name no one, so they tell
/// nothing about the account; a passkey of someone else is refused before
/// its counter moves).
pub fn finish_for_user(
    conn: &Connection,
    rp: &RelyingParty,
    user_id: &str,
    token: &str,
    response: &str,
) -> Result<std::result::Result<Used, PasskeyError>> {
    finish_discoverable(conn, rp, token, response, Some(user_id))
}

fn finish_discoverable(
    conn: &Connection,
    rp: &RelyingParty,
    token: &str,
    response: &str,
    expected_user: Option<&str>,
) -> Result<std::result::Result<Used, PasskeyError>> {
    let (state, response): (DiscoverableAuthentication, PublicKeyCredential) =
        match take_ceremony(conn, token, Purpose::SignIn, None, response)? {
            Ok(taken) => taken,
            Err(e) => return Ok(Err(e)),
        };
    let Ok((handle, credential_id)) = rp.webauthn.identify_discoverable_authentication(&response) else {
        return Ok(Err(PasskeyError::Unknown));
    };
    let key = data_encoding::BASE64URL_NOPAD.encode(credential_id);
    let row: Option<(String, String, String)> = conn
        .query_row(
            "SELECT id, user_id, credential FROM mfa_methods WHERE credential_id = ?1 AND kind = 'passkey'",
            params![key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    // The credential must be registered, and to the user it names.
    let Some((method_id, user_id, credential)) =
        row.filter(|(_, user, _)| user_handle(user) == handle && expected_user.is_none_or(|expected| expected == user))
    else {
        return Ok(Err(PasskeyError::Unknown));
    };
    let mut passkey: Passkey = from_json(&credential)?;
    let result = rp.webauthn.finish_discoverable_authentication(&response, state, &[DiscoverableKey::from(&passkey)]);
    accepted(conn, result, &method_id, &user_id, &mut passkey)
}

/// Finishes the passkey step of `user_id`'s sign-in.
pub fn finish_second_factor(
    conn: &Connection,
    rp: &RelyingParty,
    user_id: &str,
    token: &str,
    response: &str,
) -> Result<std::result::Result<Used, PasskeyError>> {
    let (state, response): (PasskeyAuthentication, PublicKeyCredential) =
        match take_ceremony(conn, token, Purpose::SecondFactor, Some(user_id), response)? {
            Ok(taken) => taken,
            Err(e) => return Ok(Err(e)),
        };
    let used = data_encoding::BASE64URL_NOPAD.encode(response.get_credential_id());
    let Some((method_id, mut passkey)) =
        passkeys_of(conn, user_id)?.into_iter().find(|(_, p)| credential_key(p.cred_id()) == used)
    else {
        return Ok(Err(PasskeyError::Unknown));
    };
    let result = rp.webauthn.finish_passkey_authentication(&response, &state);
    accepted(conn, result, &method_id, user_id, &mut passkey)
}

/// The verdict on an assertion: on success the stored counter and flags
/// move on (in the same transaction as the caller's sign-in).
fn accepted(
    conn: &Connection,
    result: std::result::Result<webauthn_rs::prelude::AuthenticationResult, webauthn_rs::prelude::WebauthnError>,
    method_id: &str,
    user_id: &str,
    passkey: &mut Passkey,
) -> Result<std::result::Result<Used, PasskeyError>> {
    let result = match result {
        Ok(r) => r,
        Err(webauthn_rs::prelude::WebauthnError::CredentialPossibleCompromise) => {
            return Ok(Err(PasskeyError::PossiblyCloned));
        }
        Err(e) => return Ok(Err(PasskeyError::Refused { reason: e.to_string() })),
    };
    let now = now_secs();
    if passkey.update_credential(&result) == Some(true) {
        conn.execute(
            "UPDATE mfa_methods SET credential = ?1, last_used = ?2 WHERE id = ?3",
            params![to_json(passkey)?, now, method_id],
        )?;
    } else {
        conn.execute("UPDATE mfa_methods SET last_used = ?1 WHERE id = ?2", params![now, method_id])?;
    }
    Ok(Ok(Used {
        user_id: user_id.to_string(),
        method_id: method_id.to_string(),
        backup_eligible: result.backup_eligible(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relying_party_needs_a_domain_name() {
        assert!(RelyingParty::for_issuer("http://localhost:8080", "idbridge").is_ok());
        assert!(RelyingParty::for_issuer("https://login.example.com", "idbridge").is_ok());
        let ip = RelyingParty::for_issuer("http://127.0.0.1:8080", "idbridge").unwrap_err();
        assert!(ip.contains("IP address"), "{ip}");
        assert!(RelyingParty::for_issuer("http://[::1]:8080", "idbridge").is_err());
        assert!(RelyingParty::for_issuer("not a url", "idbridge").is_err());
    }

    #[test]
    fn user_handles_are_stable_uuids() {
        let id = crate::util::new_id();
        assert_eq!(user_handle(&id).to_string(), id);
        assert_eq!(user_handle("user-1"), user_handle("user-1"));
        assert_ne!(user_handle("user-1"), user_handle("user-2"));
    }

    /// The whole ceremony against a software authenticator (testkit's, the
    /// benchmarks' load generator): registered, a nameless sign-in, the
    /// second step, someone else's step and a stranger's key refused (a
    /// counter that does not move on is refused in the Chromium test). Browsers are tested
    /// with Chromium's virtual authenticator (the CLI's demo tests).
    #[test]
    fn register_sign_in_and_second_step_with_a_software_authenticator() {
        let dir = std::env::temp_dir().join(format!("idbridge-passkeys-{}", crate::util::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::Store::open(&dir.join("tenant.db")).unwrap();
        let conn = store.lock();
        let rp = RelyingParty::for_issuer("http://localhost:8080", "idbridge").unwrap();
        let user = crate::util::new_id();
        let mut key = testkit::passkey::SoftPasskey::new("http://localhost:8080").unwrap();
        let reg = begin_registration(&conn, &rp, &user, "ana@example.com", "Ana").unwrap();
        let answer = key.register(&reg.options).unwrap();
        let enrolled = finish_registration(&conn, &rp, &user, &reg.token, &answer, "Soft key").unwrap().unwrap();
        assert_eq!(enrolled.recovery_codes.len(), crate::mfa::RECOVERY_CODES);
        assert!(!backup_eligible(&conn, &enrolled.method.id).unwrap());
        // A key that answers a registration no one finished.
        let unfinished = begin_registration(&conn, &rp, &user, "ana@example.com", "Ana").unwrap();
        let mut copy_key = testkit::passkey::SoftPasskey::new("http://localhost:8080").unwrap();
        let _ = copy_key.register(&unfinished.options).unwrap();
        let sign_in = begin_sign_in(&conn, &rp).unwrap();
        let used = finish_sign_in(&conn, &rp, &sign_in.token, &key.assert(&sign_in.options).unwrap()).unwrap().unwrap();
        assert_eq!((used.user_id.as_str(), used.method_id.as_str()), (user.as_str(), enrolled.method.id.as_str()));
        let step = begin_second_factor(&conn, &rp, &user).unwrap().unwrap();
        let used = finish_second_factor(&conn, &rp, &user, &step.token, &key.assert(&step.options).unwrap());
        assert!(used.unwrap().is_ok());
        // Another user's sign-in step does not take this user's passkey.
        let other = begin_sign_in(&conn, &rp).unwrap();
        let answer = key.assert(&other.options).unwrap();
        assert_eq!(
            finish_second_factor(&conn, &rp, "someone-else", &other.token, &answer).unwrap(),
            Err(PasskeyError::Expired)
        );
        // A nameless ceremony bound to one user (a password reset's proof):
        // this user's passkey is refused for someone else, then proves its own.
        let reset = begin_sign_in(&conn, &rp).unwrap();
        let answer = key.assert(&reset.options).unwrap();
        assert_eq!(
            finish_for_user(&conn, &rp, "someone-else", &reset.token, &answer).unwrap(),
            Err(PasskeyError::Unknown)
        );
        let reset = begin_sign_in(&conn, &rp).unwrap();
        let answer = key.assert(&reset.options).unwrap();
        assert_eq!(finish_for_user(&conn, &rp, &user, &reset.token, &answer).unwrap().unwrap().user_id, user);
        // A key that was never registered here.
        let stranger = begin_sign_in(&conn, &rp).unwrap();
        let answer = copy_key.assert(&stranger.options).unwrap();
        assert_eq!(finish_sign_in(&conn, &rp, &stranger.token, &answer).unwrap(), Err(PasskeyError::Unknown));
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hostile_answers_are_refused_before_any_lookup() {
        let dir = std::env::temp_dir().join(format!("idbridge-passkeys-{}", crate::util::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::Store::open(&dir.join("tenant.db")).unwrap();
        let conn = store.lock();
        let rp = RelyingParty::for_issuer("http://localhost:8080", "idbridge").unwrap();
        // Options a browser can take: discoverable, user verification required.
        let reg = begin_registration(&conn, &rp, "user-1", "ana@example.com", "Ana").unwrap();
        let selection = &reg.options["publicKey"]["authenticatorSelection"];
        assert_eq!(selection["residentKey"], "required");
        assert_eq!(selection["userVerification"], "required");
        assert_eq!(reg.options["publicKey"]["attestation"], "none");
        // Another user cannot finish it; a wrong token is an expired request.
        let other = finish_registration(&conn, &rp, "user-2", &reg.token, "{}", "Key").unwrap();
        assert_eq!(other, Err(PasskeyError::Expired));
        let sign_in = begin_sign_in(&conn, &rp).unwrap();
        assert!(sign_in.options.get("mediation").is_none());
        for answer in ["", "{", "[[[[[[[[[[", "\u{0}\u{ffff}ü", &"x".repeat(MAX_RESPONSE_BYTES + 1), "{\"id\":\"ü\"}"]
        {
            let token = begin_sign_in(&conn, &rp).unwrap().token;
            assert_eq!(
                finish_sign_in(&conn, &rp, &token, answer).unwrap(),
                Err(PasskeyError::Malformed),
                "{answer:.20}"
            );
        }
        // Single use: the token of a finished attempt is gone.
        assert_eq!(finish_sign_in(&conn, &rp, &sign_in.token, "{").unwrap(), Err(PasskeyError::Malformed));
        assert_eq!(finish_sign_in(&conn, &rp, &sign_in.token, "{").unwrap(), Err(PasskeyError::Expired));
        assert_eq!(begin_second_factor(&conn, &rp, "user-1").unwrap(), None);
        let label = finish_registration(&conn, &rp, "user-1", "token", "{}", " ").unwrap();
        assert_eq!(label, Err(PasskeyError::BadLabel));
        // A ceremony past its five minutes is expired; each refusal is audited.
        let late = begin_registration(&conn, &rp, "user-1", "ana@example.com", "Ana").unwrap();
        conn.execute("UPDATE webauthn_challenges SET expires = ?1", params![now_secs() - 1]).unwrap();
        let expired = finish_registration(&conn, &rp, "user-1", &late.token, "{}", "Key").unwrap();
        assert_eq!(expired, Err(PasskeyError::Expired));
        let audited = crate::audit::recent(&conn, 20).unwrap();
        let refusals: Vec<_> = audited.iter().filter(|e| e.action == "mfa-registration-refused").collect();
        assert_eq!(refusals.len(), 3, "{audited:?}");
        assert!(refusals.iter().any(|e| e.detail.as_ref().is_some_and(|d| d["reason"] == "passkey-expired")));
        assert!(crate::mfa::methods(&conn, "user-1").unwrap().is_empty(), "nothing stored");
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
