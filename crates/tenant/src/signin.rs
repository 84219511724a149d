//! Checking a user name and password (managed domains with password hash
//! sync), with smart lockout. No HTTP here: the sign-in page and
//! any other front end call [`sign_in`].
//!
//! Lockout counts failures per user name and per client address; a locked
//! key refuses every attempt, right or wrong, so the lock reveals nothing
//! about the password. Unknown users cost the same time and get the same
//! answer as a wrong password.

use std::num::NonZeroU32;
use std::sync::Arc;

use crate::db::{Connection, OptionalExtension, params};
use passwords::{NtHash, Pph1};
use serde_json::{Value, json};

use crate::credentials::{self, Credential};
use crate::domains::{self, AuthType};
use crate::error::Result;
use crate::objects::{self, Stored};
use crate::passkeys::{self, PasskeyError, RelyingParty};
use crate::signin_log::{self, Method};
use crate::store::{Settings, Store};
use crate::util::now_secs;
use crate::{audit, console};

/// Smart lockout thresholds. Keep `user_threshold` below the on-premises
/// lockout threshold, so the tenant never locks anyone out on-premises.
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    pub user_threshold: u32,
    pub address_threshold: u32,
    pub lock_secs: i64,
    pub max_lock_secs: i64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy { user_threshold: 10, address_threshold: 100, lock_secs: 60, max_lock_secs: 3600 }
    }
}

/// Why a sign-in did not succeed. The `Display` texts are what the person sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// Unknown user, wrong password, or no synchronised password: one answer for all.
    #[error("Your user name or password is incorrect.")]
    InvalidCredentials,
    #[error("Your account is temporarily locked to prevent unauthorised use. Try again in {}.", wait_text(*.retry_after_secs))]
    LockedOut { retry_after_secs: i64 },
    #[error("Your account is disabled. Contact your administrator.")]
    Disabled,
    #[error(
        "You must change your password before you can sign in, and your organisation does not allow password changes here. Change it on your organisation's network, then try again."
    )]
    MustChangeOnPremises,
    /// The password was right and a new one is due; the caller asks for it.
    #[error("You must choose a new password.")]
    MustChangePassword { user_id: String },
    /// No pass-through agent is online (or none that could answer is left).
    #[error(
        "The on-premises authentication service is not available: no agent is online to check your password. Try again in a few minutes; if it persists, contact your administrator."
    )]
    NoAgentOnline,
    #[error("The on-premises validator did not answer in time. Try again.")]
    ValidatorTimeout,
    #[error("Your account has expired. Contact your administrator.")]
    AccountExpired,
    #[error("Your password has expired. Change it on your organisation's network, then try again.")]
    PasswordExpired,
    #[error("Your account is locked on your organisation's network. Wait, or ask your administrator to unlock it.")]
    LockedOnPremises,
    #[error("You may not sign in at this time (your account's logon hours).")]
    LogonHours,
    #[error("Your organisation's directory cannot be reached right now. Try again later.")]
    DirectoryUnreachable,
    #[error("Sign-in for {domain} is handled by {method}, which is not available yet.")]
    MethodNotAvailable { domain: String, method: &'static str },
}

/// A wait for people: "30 seconds", "a minute", "5 minutes", "an hour".
fn wait_text(secs: i64) -> String {
    match secs.max(1) {
        1 => "a second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "a minute".into(),
        s if s < 3600 => format!("{} minutes", (s + 59) / 60),
        s if s < 7200 => "an hour".into(),
        s => format!("{} hours", (s + 3599) / 3600),
    }
}

/// What a successful sign-in returns.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: Stored,
}

/// What the first, locked step found out about the attempt.
enum Lookup {
    Locked(i64),
    Candidate {
        user: Option<Stored>,
        record: Option<(String, bool)>,
    },
    NotManaged {
        domain: String,
        auth: AuthType,
    },
    /// The user's domain signs in by pass-through authentication.
    PassThrough {
        user: Option<Stored>,
    },
}

/// Where a sign-in comes from: the client's address (lockout, log) and
/// the application it signs in to (log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub address: String,
    pub application: Option<String>,
}

impl Origin {
    /// From `address`, for no application in particular.
    pub fn at(address: &str) -> Origin {
        Origin { address: address.to_string(), application: None }
    }
}

/// Checks `password` for `username`, coming from `origin`. The expensive
/// verification runs without holding the database.
pub async fn sign_in(
    store: &Arc<Store>,
    pta: &crate::pta::Broker,
    username: &str,
    password: &str,
    origin: &Origin,
    policy: LockoutPolicy,
) -> Result<std::result::Result<SignedIn, SignInError>> {
    let address = origin.address.as_str();
    // Before any work: a name no directory has (UPNs are at most 256 characters).
    if username.chars().count() > MAX_USER_NAME_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Ok(Err(SignInError::InvalidCredentials));
    }
    let name = username.trim().to_lowercase();
    let location = location_of(address);
    // Smart lockout keys (like Entra's): a user's failures count per
    // familiar location (one they signed in from before) and together for
    // all unfamiliar ones, so failures elsewhere never lock the user out
    // where they usually are. An address counts all its failures, and once
    // it is locked refuses only the names that failed from it.
    let addr_key = format!("addr:{location}");
    let name_at_addr_key = format!("addrname:{location}|{name}");
    let (lookup, user_key) = {
        let (store, name, addr_key, name_at_addr_key, location) =
            (store.clone(), name.clone(), addr_key.clone(), name_at_addr_key.clone(), location.clone());
        blocking(move || {
            let guard = store.lock();
            in_transaction(&guard, |conn| {
                let now = now_secs();
                prune_lockouts(conn, now)?;
                let user_key = if is_familiar(conn, &name, &location)? {
                    format!("user:{name}|{location}")
                } else {
                    format!("user:{name}|unfamiliar")
                };
                let mut locked = vec![locked_until(conn, &user_key)?];
                if failures(conn, &name_at_addr_key)? > 0 {
                    locked.push(locked_until(conn, &addr_key)?);
                }
                if let Some(until) = locked.into_iter().flatten().filter(|u| *u > now).max() {
                    return Ok((Lookup::Locked(until - now), user_key));
                }
                let user = find_user(conn, &name)?;
                let mut pass_through = false;
                if let Some(domain) = name.rsplit_once('@').map(|(_, d)| d.to_string())
                    && let Some(found) = domains::get(conn, &domain)?
                {
                    match found.auth {
                        AuthType::ManagedPta => pass_through = true,
                        // Known or not: the same answer for every name in the domain.
                        AuthType::Federated => return Ok((Lookup::NotManaged { domain, auth: found.auth }, user_key)),
                        _ => {}
                    }
                }
                // Reserve the attempt in the same locked step as the check: it
                // counts as a failure until it is known to be otherwise, so
                // concurrent attempts cannot all pass the check before any is
                // counted (at most `threshold` are ever evaluated).
                count_failure(conn, &user_key, policy.user_threshold, policy, now)?;
                count_failure(conn, &addr_key, policy.address_threshold, policy, now)?;
                count_failure(conn, &name_at_addr_key, u32::MAX, policy, now)?;
                if pass_through {
                    return Ok((Lookup::PassThrough { user }, user_key));
                }
                let record = match &user {
                    Some(u) => credentials::load(conn, &u.id)?,
                    None => None,
                };
                Ok((Lookup::Candidate { user, record }, user_key))
            })
        })
        .await?
    };
    let keys = Keys { user: user_key, addr: addr_key, name_at_addr: name_at_addr_key, location };
    let (user, record) = match lookup {
        Lookup::Locked(secs) => {
            let store = store.clone();
            let name = name.clone();
            let origin = origin.clone();
            blocking(move || {
                let conn = store.lock();
                audit_attempt(&conn, &name, &origin, Method::Password, false, "locked-out", None)
            })
            .await?;
            return Ok(Err(SignInError::LockedOut { retry_after_secs: secs }));
        }
        Lookup::NotManaged { domain, auth } => {
            let method = match auth {
                AuthType::ManagedPta => "pass-through authentication",
                _ => "federation",
            };
            return Ok(Err(SignInError::MethodNotAvailable { domain, method }));
        }
        Lookup::PassThrough { user } => {
            return pass_through(store, pta, user, &name, username, password, origin, keys).await;
        }
        Lookup::Candidate { user, record } => (user, record),
    };

    // The expensive part, off the async threads and outside the database lock.
    let pw = password.to_string();
    let check_record = record.as_ref().map(|(r, _)| r.clone());
    let (verified, reason) = blocking(move || {
        Ok(match check_record.as_deref().map(Credential::parse) {
            Some(Ok(cred)) => {
                let ok = cred.verify(&pw);
                if !cred.costs_at_least_the_decoy() {
                    decoy(&pw);
                }
                (ok, if ok { "ok" } else { "wrong-password" })
            }
            Some(Err(_)) => (decoy(&pw), "unusable-record"),
            None => (decoy(&pw), "no-such-user-or-password"),
        })
    })
    .await?;
    let verified = verified && user.is_some() && reason == "ok";

    let store2 = store.clone();
    let origin = origin.clone();
    blocking(move || {
        let guard = store2.lock();
        in_transaction(&guard, |conn| {
        let now = now_secs();
        if !verified {
            // Counted when it was reserved.
            let detail = json!({"userLocked": is_locked(conn, &keys.user, now)?, "addressLocked": is_locked(conn, &keys.addr, now)?});
            audit_attempt(conn, &name, &origin, Method::Password, false, reason, Some(detail))?;
            return Ok(Err(SignInError::InvalidCredentials));
        }
        let Some(user) = user else { return Ok(Err(SignInError::InvalidCredentials)) };
        keys.succeeded(conn, &name, now)?;
        if user.data.get("active") == Some(&Value::Bool(false)) {
            audit_attempt(conn, &name, &origin, Method::Password, false, "disabled", None)?;
            return Ok(Err(SignInError::Disabled));
        }
        if console::is_blocked(conn, &user.id)? {
            audit_attempt(conn, &name, &origin, Method::Password, false, "blocked", None)?;
            return Ok(Err(SignInError::Disabled));
        }
        if record.as_ref().is_some_and(|(_, must_change)| *must_change) {
            if Settings::load(conn)?.allow_cloud_password_change || writes_back(conn, &user)? {
                audit_attempt(conn, &name, &origin, Method::Password, false, "must-change-password", None)?;
                return Ok(Err(SignInError::MustChangePassword { user_id: user.id }));
            }
            audit_attempt(conn, &name, &origin, Method::Password, false, "must-change-password-on-premises", None)?;
            return Ok(Err(SignInError::MustChangeOnPremises));
        }
        audit_attempt(conn, &name, &origin, Method::Password, true, "ok", None)?;
        Ok(Ok(SignedIn { user }))
        })
    })
    .await
}

/// How long a sign-in waits for its second factor after the password.
pub const SECOND_FACTOR_SECS: i64 = 600;

/// Why a second factor was refused. The texts are what the person sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecondFactorError {
    #[error("This sign-in took too long. Sign in again.")]
    Expired,
    #[error("Your account is temporarily locked to prevent unauthorised use. Try again in {}.", wait_text(*.retry_after_secs))]
    LockedOut { retry_after_secs: i64 },
    #[error("{0}")]
    Code(crate::mfa::CodeError),
    #[error("{0}")]
    Passkey(PasskeyError),
    /// Registering during a sign-in is only for users without a method: one
    /// who has one proves it instead (else a stolen password could add its own).
    #[error("This account has a sign-in method already: use it to verify it’s you.")]
    HasMethod,
}

/// The second step of a sign-in: the token the sign-in form carries, and
/// which kinds of second factor the user has (what the page offers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondStep {
    pub challenge: String,
    pub authenticator_app: bool,
    pub passkey: bool,
}

impl SecondStep {
    fn of(conn: &Connection, user_id: &str, challenge: String) -> Result<SecondStep> {
        let methods = crate::mfa::methods(conn, user_id)?;
        let has = |kind| methods.iter().any(|m| m.kind == kind);
        Ok(SecondStep {
            challenge,
            authenticator_app: has(crate::mfa::MethodKind::Totp),
            passkey: has(crate::mfa::MethodKind::Passkey),
        })
    }
}

/// After the right password: the second step when the user has a second
/// factor (its token is stored hashed, valid [`SECOND_FACTOR_SECS`]),
/// `None` when the password is all it takes.
pub fn second_factor_challenge(conn: &Connection, user_id: &str) -> Result<Option<SecondStep>> {
    if crate::mfa::methods(conn, user_id)?.is_empty() {
        return Ok(None);
    }
    open_second_step(conn, user_id, "pwd").map(Some)
}

/// A second step for `user_id` whatever they have registered: the one
/// that asks for their method, or the one where they register one.
/// `first`: how the step before signed them in (`amr`: `pwd`, `fed`).
pub fn open_second_step(conn: &Connection, user_id: &str, first: &str) -> Result<SecondStep> {
    let now = now_secs();
    conn.execute("DELETE FROM mfa_challenges WHERE expires <= ?1", params![now])?;
    let token = crate::util::random_token();
    conn.execute(
        "INSERT INTO mfa_challenges(hash, user_id, expires, first_factor) VALUES(?1, ?2, ?3, ?4)",
        params![crate::util::sha256(token.as_bytes()), user_id, now + SECOND_FACTOR_SECS, first],
    )?;
    SecondStep::of(conn, user_id, token)
}

/// The user who may register a method in the sign-in `challenge` stands
/// for: only one without any (one who has a method proves it instead, or a
/// stolen password could add its own).
fn enrolling_user(conn: &Connection, challenge: &str) -> Result<std::result::Result<String, SecondFactorError>> {
    let Some(user_id) = challenged_user(conn, challenge)? else { return Ok(Err(SecondFactorError::Expired)) };
    if crate::mfa::count(conn, &user_id)? > 0 {
        return Ok(Err(SecondFactorError::HasMethod));
    }
    Ok(Ok(user_id))
}

/// Registers an authenticator app in the sign-in `challenge` stands for
/// (the policy asked for a method, and the user has none): a right code
/// proves the second step too (`otp`), finished by [`proven_step`].
pub fn enrol_app_at_sign_in(
    conn: &Connection,
    challenge: &str,
    secret: &str,
    code: &str,
    label: &str,
) -> Result<std::result::Result<crate::mfa::Enrolled, SecondFactorError>> {
    let user_id = match enrolling_user(conn, challenge)? {
        Ok(id) => id,
        Err(e) => return Ok(Err(e)),
    };
    match crate::mfa::confirm_totp(conn, &user_id, secret, code, label)? {
        Ok(enrolled) => {
            mark_proven(conn, challenge, "otp")?;
            Ok(Ok(enrolled))
        }
        Err(e) => Ok(Err(SecondFactorError::Code(e))),
    }
}

/// The passkey registration of the sign-in `challenge` stands for.
pub fn enrolment_passkey_step(
    conn: &Connection,
    rp: &RelyingParty,
    challenge: &str,
) -> Result<Option<passkeys::Ceremony>> {
    let Ok(user_id) = enrolling_user(conn, challenge)? else { return Ok(None) };
    let Some(user) = objects::load(conn, Some(objects::Kind::User), &user_id)? else { return Ok(None) };
    let text = |key: &str| user.data.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    passkeys::begin_registration(conn, rp, &user_id, &text("userName"), &text("displayName")).map(Some)
}

/// Registers a passkey in the sign-in `challenge` stands for; the passkey
/// verified its user as it was made, which proves the second step.
pub fn enrol_passkey_at_sign_in(
    conn: &Connection,
    rp: &RelyingParty,
    challenge: &str,
    token: &str,
    response: &str,
    label: &str,
) -> Result<std::result::Result<crate::mfa::Enrolled, SecondFactorError>> {
    let user_id = match enrolling_user(conn, challenge)? {
        Ok(id) => id,
        Err(e) => return Ok(Err(e)),
    };
    match passkeys::finish_registration(conn, rp, &user_id, token, response, label)? {
        Ok(enrolled) => {
            let synced = passkeys::backup_eligible(conn, &enrolled.method.id)?;
            mark_proven(conn, challenge, if synced { "swk" } else { "hwk" })?;
            Ok(Ok(enrolled))
        }
        Err(e) => Ok(Err(SecondFactorError::Passkey(e))),
    }
}

fn mark_proven(conn: &Connection, challenge: &str, methods: &str) -> Result<()> {
    conn.execute(
        "UPDATE mfa_challenges SET proven = ?2 WHERE hash = ?1",
        params![crate::util::sha256(challenge.as_bytes()), methods],
    )?;
    Ok(())
}

/// The sign-in `challenge` stands for, once a method registered in it
/// proved the second step. The challenge is used up.
pub fn proven_step(conn: &Connection, challenge: &str) -> Result<Option<SecondStepPassed>> {
    let hash = crate::util::sha256(challenge.as_bytes());
    let found: Option<(String, Option<String>, Option<String>)> = conn
        .query_row(
            "SELECT user_id, proven, first_factor FROM mfa_challenges WHERE hash = ?1 AND expires > ?2",
            params![hash, now_secs()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((user_id, Some(proven), first)) = found else { return Ok(None) };
    conn.execute("DELETE FROM mfa_challenges WHERE hash = ?1", params![hash])?;
    Ok(objects::load(conn, Some(objects::Kind::User), &user_id)?
        .map(|user| SecondStepPassed { user, methods: both_steps(first, &proven) }))
}

/// "Not now" at the registration campaign of the sign-in `challenge`
/// stands for (to `client`; `requested`: it asked for a second factor):
/// the user, when a skip was left (the challenge is used up); `None` when
/// registering is required, the user has a method to give instead, or the
/// sign-in expired.
pub fn skip_registration(
    conn: &Connection,
    policy: &crate::policy::SignInPolicy,
    challenge: &str,
    client: Option<&crate::oidc::clients::Client>,
    requested: bool,
) -> Result<Option<Stored>> {
    let Some(user_id) = challenged_user(conn, challenge)? else { return Ok(None) };
    if crate::mfa::count(conn, &user_id)? > 0
        || crate::policy::required(conn, policy, &user_id, client, requested)?.is_some()
        || !crate::policy::skip(conn, policy, &user_id)?
    {
        return Ok(None);
    }
    conn.execute("DELETE FROM mfa_challenges WHERE hash = ?1", params![crate::util::sha256(challenge.as_bytes())])?;
    objects::load(conn, Some(objects::Kind::User), &user_id)
}

/// The user a waiting second step `challenge` belongs to.
pub fn challenged_user(conn: &Connection, challenge: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT user_id FROM mfa_challenges WHERE hash = ?1 AND expires > ?2",
            params![crate::util::sha256(challenge.as_bytes()), now_secs()],
            |r| r.get(0),
        )
        .optional()?)
}

/// The second step `challenge` stands for, while it waits (the page shown
/// again after a refused answer); `None` once it expired or was used.
pub fn second_step(conn: &Connection, challenge: &str) -> Result<Option<SecondStep>> {
    match challenged_user(conn, challenge)? {
        Some(user_id) => Ok(Some(SecondStep::of(conn, &user_id, challenge.to_string())?)),
        None => Ok(None),
    }
}

/// What the person gave at the second step.
#[derive(Debug, Clone)]
pub enum SecondFactorAnswer {
    /// An authenticator app's code, or a recovery code.
    Code(String),
    /// The browser's answer to the passkey ceremony `token` names
    /// (begun by [`passkey_step`]).
    Passkey { rp: Arc<RelyingParty>, token: String, response: String },
    /// The browser's answer to a ceremony that named no one (begun by
    /// [`passkeys::begin_sign_in`]); it must be one of this user's passkeys.
    NamelessPasskey { rp: Arc<RelyingParty>, token: String, response: String },
}

/// Which second factor signed in (for `amr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondFactorUsed {
    AuthenticatorCode,
    RecoveryCode,
    /// `backup_eligible`: a passkey that may be synced to other devices.
    Passkey {
        backup_eligible: bool,
    },
}

impl SecondFactorUsed {
    /// Its RFC 8176 `amr` value: `otp`, or `hwk`/`swk` for a passkey bound
    /// to one device or synced.
    pub fn amr(self) -> &'static str {
        match self {
            SecondFactorUsed::AuthenticatorCode | SecondFactorUsed::RecoveryCode => "otp",
            SecondFactorUsed::Passkey { backup_eligible: false } => "hwk",
            SecondFactorUsed::Passkey { backup_eligible: true } => "swk",
        }
    }
}

/// A second step passed: who, and everything proven.
#[derive(Debug, Clone)]
pub struct SecondStepPassed {
    pub user: Stored,
    /// `amr`: the first step's, the second's, and `mfa` (`pwd otp mfa`).
    pub methods: String,
}

fn both_steps(first: Option<String>, second: &str) -> String {
    format!("{} {second} mfa", first.as_deref().unwrap_or("pwd"))
}

/// The passkey ceremony of the second step of the sign-in `challenge`
/// stands for; `None` when the sign-in expired or the user has no passkey.
pub fn passkey_step(conn: &Connection, rp: &RelyingParty, challenge: &str) -> Result<Option<passkeys::Ceremony>> {
    match challenged_user(conn, challenge)? {
        Some(user_id) => passkeys::begin_second_factor(conn, rp, &user_id),
        None => Ok(None),
    }
}

/// The second step of a sign-in: `answer` (a code, or a passkey) for the
/// sign-in `challenge` stands for. Wrong and reused codes and refused
/// passkeys count toward smart lockout like wrong passwords, on the same key.
pub async fn second_factor(
    store: &Arc<Store>,
    challenge: &str,
    answer: SecondFactorAnswer,
    origin: &Origin,
    policy: LockoutPolicy,
) -> Result<std::result::Result<SecondStepPassed, SecondFactorError>> {
    let (store, hash, origin) = (store.clone(), crate::util::sha256(challenge.as_bytes()), origin.clone());
    // No key derivation here (an HMAC per method, one signature check): done under the lock.
    blocking(move || {
        let guard = store.lock();
        in_transaction(&guard, |conn| {
            let now = now_secs();
            let found: Option<(String, Option<String>)> = conn
                .query_row(
                    "SELECT user_id, first_factor FROM mfa_challenges WHERE hash = ?1 AND expires > ?2",
                    params![hash, now],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((user_id, first)) = found else { return Ok(Err(SecondFactorError::Expired)) };
            let Some(user) = objects::load(conn, Some(objects::Kind::User), &user_id)? else {
                return Ok(Err(SecondFactorError::Expired));
            };
            match check_second_factor(conn, &user, &answer, &origin, policy)? {
                Ok(used) => {
                    conn.execute("DELETE FROM mfa_challenges WHERE hash = ?1", params![hash])?;
                    Ok(Ok(SecondStepPassed { user, methods: both_steps(first, used.amr()) }))
                }
                Err(e) => Ok(Err(e)),
            }
        })
    })
    .await
}

/// `answer` as `user`'s second factor, under the lock: smart lockout first
/// (wrong and reused codes and refused passkeys count like wrong passwords,
/// on the same key), every attempt in the sign-in log. Shared by the sign-in
/// and the self-service password reset.
pub(crate) fn check_second_factor(
    conn: &Connection,
    user: &Stored,
    answer: &SecondFactorAnswer,
    origin: &Origin,
    policy: LockoutPolicy,
) -> Result<std::result::Result<SecondFactorUsed, SecondFactorError>> {
    let now = now_secs();
    let name = user.data.get("userName").and_then(Value::as_str).unwrap_or_default().to_lowercase();
    let location = location_of(&origin.address);
    let user_key = if is_familiar(conn, &name, &location)? {
        format!("user:{name}|{location}")
    } else {
        format!("user:{name}|unfamiliar")
    };
    let log_method = match answer {
        SecondFactorAnswer::Code(_) => Method::AuthenticatorCode,
        SecondFactorAnswer::Passkey { .. } | SecondFactorAnswer::NamelessPasskey { .. } => Method::Passkey,
    };
    if let Some(until) = locked_until(conn, &user_key)?.filter(|until| *until > now) {
        audit_attempt(conn, &name, origin, log_method, false, "locked-out", None)?;
        return Ok(Err(SecondFactorError::LockedOut { retry_after_secs: until - now }));
    }
    // (the failure's reason, whether it counts toward lockout, the error)
    let verdict = match answer {
        SecondFactorAnswer::Code(code) => match crate::mfa::verify(conn, &user.id, code)? {
            Ok(crate::mfa::Proof::Totp { .. }) => Ok(SecondFactorUsed::AuthenticatorCode),
            Ok(crate::mfa::Proof::RecoveryCode { .. }) => Ok(SecondFactorUsed::RecoveryCode),
            Err(e) => {
                let reason = match e {
                    crate::mfa::CodeError::Reused => "code-reused",
                    crate::mfa::CodeError::Malformed => "code-malformed",
                    _ => "wrong-code",
                };
                let counts = e != crate::mfa::CodeError::Malformed;
                Err((reason.to_string(), counts, SecondFactorError::Code(e)))
            }
        },
        SecondFactorAnswer::Passkey { rp, token, response } => {
            passkey_verdict(passkeys::finish_second_factor(conn, rp, &user.id, token, response)?)
        }
        SecondFactorAnswer::NamelessPasskey { rp, token, response } => {
            passkey_verdict(passkeys::finish_for_user(conn, rp, &user.id, token, response)?)
        }
    };
    match verdict {
        Ok(used) => {
            conn.execute("DELETE FROM lockouts WHERE key = ?1", params![user_key])?;
            let method = match used {
                SecondFactorUsed::AuthenticatorCode => Method::AuthenticatorCode,
                SecondFactorUsed::RecoveryCode => Method::RecoveryCode,
                SecondFactorUsed::Passkey { .. } => Method::Passkey,
            };
            audit_attempt(conn, &name, origin, method, true, "ok", None)?;
            Ok(Ok(used))
        }
        Err((reason, counts, error)) => {
            if counts {
                count_failure(conn, &user_key, policy.user_threshold, policy, now)?;
            }
            let detail = json!({"userLocked": is_locked(conn, &user_key, now)?});
            audit_attempt(conn, &name, origin, log_method, false, &reason, Some(detail))?;
            Ok(Err(error))
        }
    }
}

/// A passkey's verdict as the second factor's: (the failure's reason,
/// whether it counts toward lockout, the error) when refused.
fn passkey_verdict(
    finished: std::result::Result<passkeys::Used, PasskeyError>,
) -> std::result::Result<SecondFactorUsed, (String, bool, SecondFactorError)> {
    finished.map(|used| SecondFactorUsed::Passkey { backup_eligible: used.backup_eligible }).map_err(|e| {
        // A page that waited too long, or a browser's garbled answer, is no guess.
        let counts = !matches!(e, PasskeyError::Expired | PasskeyError::Malformed);
        (e.reason().to_string(), counts, SecondFactorError::Passkey(e))
    })
}

/// Why a sign-in with a passkey alone did not succeed. The texts are what
/// the person sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasskeySignInError {
    #[error("{0}")]
    Passkey(PasskeyError),
    #[error("Your account is disabled. Contact your administrator.")]
    Disabled,
}

/// A sign-in with a passkey alone (no name, no password): the passkey's
/// user, once its signature, user verification and counter are right.
/// Smart lockout is not consulted: it guards passwords against guessing,
/// and a passkey cannot be guessed (a lock an attacker caused with wrong
/// passwords does not keep the owner of a passkey out).
pub async fn passkey_sign_in(
    store: &Arc<Store>,
    rp: Arc<RelyingParty>,
    token: String,
    response: String,
    origin: &Origin,
) -> Result<std::result::Result<(SignedIn, passkeys::Used), PasskeySignInError>> {
    let (store, origin) = (store.clone(), origin.clone());
    blocking(move || {
        let guard = store.lock();
        in_transaction(&guard, |conn| {
            let used = match passkeys::finish_sign_in(conn, &rp, &token, &response)? {
                Ok(used) => used,
                Err(e) => {
                    audit_attempt(conn, "", &origin, Method::Passkey, false, e.reason(), None)?;
                    return Ok(Err(PasskeySignInError::Passkey(e)));
                }
            };
            let Some(user) = objects::load(conn, Some(objects::Kind::User), &used.user_id)? else {
                audit_attempt(conn, "", &origin, Method::Passkey, false, "passkey-unknown", None)?;
                return Ok(Err(PasskeySignInError::Passkey(PasskeyError::Unknown)));
            };
            let name = user.data.get("userName").and_then(Value::as_str).unwrap_or_default().to_lowercase();
            if user.data.get("active") == Some(&Value::Bool(false)) {
                audit_attempt(conn, &name, &origin, Method::Passkey, false, "disabled", None)?;
                return Ok(Err(PasskeySignInError::Disabled));
            }
            if console::is_blocked(conn, &user.id)? {
                audit_attempt(conn, &name, &origin, Method::Passkey, false, "blocked", None)?;
                return Ok(Err(PasskeySignInError::Disabled));
            }
            audit_attempt(conn, &name, &origin, Method::Passkey, true, "ok", None)?;
            Ok(Ok((SignedIn { user }, used)))
        })
    })
    .await
}

/// Pass-through authentication: an on-premises agent checks the password
/// against the directory. Smart lockout was checked before; failures count
/// toward it here, so the tenant locks before the directory would.
#[allow(clippy::too_many_arguments)]
async fn pass_through(
    store: &Arc<Store>,
    pta: &crate::pta::Broker,
    user: Option<Stored>,
    name: &str,
    username: &str,
    password: &str,
    origin: &Origin,
    keys: Keys,
) -> Result<std::result::Result<SignedIn, SignInError>> {
    use pta::Outcome;
    // Unknown users go the same way as known ones (the agent finds no such
    // account and answers "wrong password"), so neither the answer nor its
    // timing tells them apart — with or without an agent online.
    let outcome = {
        // One validation per user name at a time reaches the directory.
        let _turn = pta.user_turn(name).await;
        pta.validate(&pta::Credentials::check(username.trim(), password)).await
    };
    let (store, name, origin) = (store.clone(), name.to_string(), origin.clone());
    blocking(move || {
        let conn = store.lock();
        let now = now_secs();
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                // Nothing was checked: the reserved attempt is given back.
                keys.refund(&conn, now)?;
                let (reason, error) = match e {
                    crate::pta::DispatchError::NoAgent => ("pta-no-agent", SignInError::NoAgentOnline),
                    crate::pta::DispatchError::Timeout => ("pta-timeout", SignInError::ValidatorTimeout),
                };
                audit_attempt(&conn, &name, &origin, Method::PassThrough, false, reason, None)?;
                return Ok(Err(error));
            }
        };
        let reason = format!("pta-{}", outcome.as_str());
        if outcome == Outcome::WrongPassword {
            // Counted when it was reserved.
            let detail = json!({"userLocked": is_locked(&conn, &keys.user, now)?, "addressLocked": is_locked(&conn, &keys.addr, now)?});
            audit_attempt(&conn, &name, &origin, Method::PassThrough, false, &reason, Some(detail))?;
            return Ok(Err(SignInError::InvalidCredentials));
        }
        // Any other answer is not a wrong password: not counted.
        keys.refund(&conn, now)?;
        audit_attempt(&conn, &name, &origin, Method::PassThrough, outcome == Outcome::Success, &reason, None)?;
        let Some(user) = user else { return Ok(Err(SignInError::InvalidCredentials)) };
        Ok(match outcome {
            Outcome::Success
                if user.data.get("active") == Some(&Value::Bool(false)) || console::is_blocked(&conn, &user.id)? =>
            {
                Err(SignInError::Disabled)
            }
            Outcome::Success => {
                keys.succeeded(&conn, &name, now)?;
                Ok(SignedIn { user })
            }
            Outcome::AccountDisabled => Err(SignInError::Disabled),
            Outcome::AccountExpired => Err(SignInError::AccountExpired),
            // The password was right and a new one is due: chosen here when
            // it can be written back on-premises.
            Outcome::PasswordExpired | Outcome::MustChangePassword if writes_back(&conn, &user)? => {
                Err(SignInError::MustChangePassword { user_id: user.id })
            }
            Outcome::PasswordExpired => Err(SignInError::PasswordExpired),
            Outcome::MustChangePassword => Err(SignInError::MustChangeOnPremises),
            Outcome::LockedOut => Err(SignInError::LockedOnPremises),
            Outcome::LogonHours => Err(SignInError::LogonHours),
            Outcome::DirectoryUnreachable => Err(SignInError::DirectoryUnreachable),
            // Answers to a password write, never to a check.
            Outcome::WrongPassword
            | Outcome::PasswordChanged
            | Outcome::PasswordTooShort
            | Outcome::PasswordTooYoung
            | Outcome::PasswordInHistory
            | Outcome::PasswordNotComplex
            | Outcome::PasswordRefused
            | Outcome::PasswordChangeNotAllowed => Err(SignInError::InvalidCredentials),
        })
    })
    .await
}

/// Whether a new password `user` chooses here is written back on-premises:
/// a synchronised user of a domain with password writeback on.
pub fn writes_back(conn: &Connection, user: &Stored) -> Result<bool> {
    let synced = objects::is_synchronised(&user.data);
    let name = user.data.get("userName").and_then(Value::as_str).unwrap_or_default().to_lowercase();
    let Some((_, domain)) = name.rsplit_once('@') else { return Ok(false) };
    Ok(synced && domains::get(conn, domain)?.is_some_and(|d| d.password_writeback && d.auth != AuthType::Federated))
}

/// The default work factor of records derived here (cloud password change)
/// and of the decoy for unknown users.
pub fn default_iterations() -> NonZeroU32 {
    NonZeroU32::new(passwords::pph1::DEFAULT_ITERATIONS).unwrap_or(NonZeroU32::MIN)
}

/// Spends what a real verification costs, so an unknown user is not faster.
fn decoy(password: &str) -> bool {
    let _ = Pph1::derive(&NtHash::of_password(password), &[0u8; passwords::pph1::SALT_LEN], default_iterations());
    false
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    crate::util::blocking("sign-in", work).await
}

fn find_user(conn: &Connection, name: &str) -> Result<Option<Stored>> {
    let id: Option<String> = conn
        .query_row("SELECT id FROM resources WHERE type = 'User' AND user_name_lc = ?1", params![name], |r| r.get(0))
        .optional()?;
    match id {
        Some(id) => objects::load(conn, Some(objects::Kind::User), &id),
        None => Ok(None),
    }
}

/// The lockout counters one attempt counts toward.
struct Keys {
    user: String,
    addr: String,
    name_at_addr: String,
    location: String,
}

impl Keys {
    /// The attempt was not a wrong password: what it reserved is given back.
    fn refund(&self, conn: &Connection, now: i64) -> Result<()> {
        for key in [&self.user, &self.addr, &self.name_at_addr] {
            refund(conn, key, now)?;
        }
        Ok(())
    }

    /// The right password: this location's counter starts again, and the
    /// location becomes familiar for the user.
    fn succeeded(&self, conn: &Connection, name: &str, now: i64) -> Result<()> {
        conn.execute("DELETE FROM lockouts WHERE key = ?1", params![self.user])?;
        refund(conn, &self.addr, now)?;
        conn.execute("DELETE FROM lockouts WHERE key = ?1", params![self.name_at_addr])?;
        conn.execute(
            "INSERT INTO familiar_locations(name, location, last) VALUES(?1, ?2, ?3)
             ON CONFLICT(name, location) DO UPDATE SET last = excluded.last",
            params![name, self.location, now],
        )?;
        Ok(())
    }
}

/// Where an attempt comes from, for lockout: the IPv4 address, or the /64
/// of an IPv6 address (one network's hosts share their prefix).
pub fn location_of(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(std::net::IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(|v4| v4.to_string()).unwrap_or_default(),
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => address.to_string(),
    }
}

/// Familiar locations are remembered this long after the last success there.
const FAMILIAR_FOR_SECS: i64 = 90 * 86_400;

fn is_familiar(conn: &Connection, name: &str, location: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM familiar_locations WHERE name = ?1 AND location = ?2 AND last > ?3",
            params![name, location, now_secs() - FAMILIAR_FOR_SECS],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn failures(conn: &Connection, key: &str) -> Result<u32> {
    Ok(conn
        .query_row("SELECT failures FROM lockouts WHERE key = ?1", params![key], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Runs `work` in one transaction (one commit for a step's lockout and
/// audit writes instead of one each); rolled back if it fails. Serialises
/// with sign-in state only (PostgreSQL), not with directory writes.
pub fn in_transaction<T>(conn: &Connection, work: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    let tx = conn.transaction_for(crate::db::WriteLock::SignIn)?;
    let out = work(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// Longest user name looked at (a UPN is at most 256 characters); longer
/// ones are refused before any work.
pub const MAX_USER_NAME_CHARS: usize = 256;
/// Longest password looked at (AD's limit is 256 characters).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Lockout rows untouched this long, and not locked, are forgotten.
const LOCKOUT_MEMORY_SECS: i64 = 86_400;

/// Forgets a bounded number of stale lockout rows per attempt, so the table
/// does not grow with every name anyone ever tried.
fn prune_lockouts(conn: &Connection, now: i64) -> Result<()> {
    conn.execute(
        "DELETE FROM lockouts WHERE key IN (SELECT key FROM lockouts WHERE last < ?1 AND locked_until < ?2 LIMIT 64)",
        params![now - LOCKOUT_MEMORY_SECS, now],
    )?;
    conn.execute(
        "DELETE FROM familiar_locations WHERE (name, location) IN
         (SELECT name, location FROM familiar_locations WHERE last < ?1 LIMIT 64)",
        params![now - FAMILIAR_FOR_SECS],
    )?;
    Ok(())
}

fn is_locked(conn: &Connection, key: &str, now: i64) -> Result<bool> {
    Ok(locked_until(conn, key)?.is_some_and(|until| until > now))
}

/// Gives back a reserved attempt that turned out not to be a failure.
fn refund(conn: &Connection, key: &str, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE lockouts SET failures = CASE WHEN failures > 0 THEN failures - 1 ELSE 0 END, last = ?2 WHERE key = ?1 AND locked_until <= ?2",
        params![key, now],
    )?;
    Ok(())
}

fn locked_until(conn: &Connection, key: &str) -> Result<Option<i64>> {
    Ok(conn.query_row("SELECT locked_until FROM lockouts WHERE key = ?1", params![key], |r| r.get(0)).optional()?)
}

/// Counts a failure; at the threshold the key is locked, for longer each time.
fn count_failure(conn: &Connection, key: &str, threshold: u32, policy: LockoutPolicy, now: i64) -> Result<bool> {
    let (failures, lockouts): (u32, u32) = conn
        .query_row("SELECT failures, lockouts FROM lockouts WHERE key = ?1", params![key], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .unwrap_or((0, 0));
    let failures = failures + 1;
    if failures >= threshold {
        let secs = policy.lock_secs.saturating_mul(1i64 << lockouts.min(20)).min(policy.max_lock_secs);
        conn.execute(
            "INSERT INTO lockouts(key, failures, locked_until, lockouts, last) VALUES(?1, 0, ?2, ?3, ?4)
             ON CONFLICT(key) DO UPDATE SET failures = 0, locked_until = ?2, lockouts = ?3, last = ?4",
            params![key, now + secs, lockouts + 1, now],
        )?;
        return Ok(true);
    }
    conn.execute(
        "INSERT INTO lockouts(key, failures, locked_until, lockouts, last) VALUES(?1, ?2, 0, ?3, ?4)
         ON CONFLICT(key) DO UPDATE SET failures = ?2, last = ?4",
        params![key, failures, lockouts, now],
    )?;
    Ok(false)
}

fn audit_attempt(
    conn: &Connection,
    name: &str,
    origin: &Origin,
    method: Method,
    success: bool,
    reason: &str,
    extra: Option<Value>,
) -> Result<()> {
    let mut detail = json!({"userName": name, "address": origin.address, "result": reason});
    if let (Some(Value::Object(extra)), Some(d)) = (extra, detail.as_object_mut()) {
        d.extend(extra);
    }
    signin_log::record(
        conn,
        &signin_log::Attempt {
            user_name: name,
            method,
            success,
            reason,
            application: origin.application.as_deref(),
            address: Some(&origin.address),
        },
    )?;
    audit::record(conn, "sign-in", if success { "sign-in" } else { "sign-in-failed" }, None, None, Some(&detail))
}

#[cfg(test)]
mod wait_tests {
    use super::wait_text;

    #[test]
    fn waits_are_said_in_words() {
        assert_eq!(wait_text(0), "a second");
        assert_eq!(wait_text(45), "45 seconds");
        assert_eq!(wait_text(61), "a minute");
        assert_eq!(wait_text(121), "3 minutes");
        assert_eq!(wait_text(3600), "an hour");
        assert_eq!(wait_text(7201), "3 hours");
    }
}
