//! Self-service password reset ("Forgot my password"): a synchronised user
//! of a domain that writes passwords back proves a registered second factor
//! (a passkey, an authenticator app's code, or a recovery code), then
//! chooses a new password, which is
//! set on-premises through an agent ([`crate::writeback`], as a reset) and
//! only then here.
//!
//! - Nothing tells whether a user exists or may reset here: an unknown or
//!   ineligible name gets a token that matches nothing, every refusal of
//!   the proof step reads the same ([`ResetError::Refused`]), and the
//!   passkey ceremony names no one (its options are a nameless sign-in's;
//!   the answer must be one of the token's user's passkeys).
//! - The token is stored hashed in `password_resets` (tenant schema 21) for
//!   [`RESET_SECS`]; the code step counts wrong and reused codes on the
//!   user's smart-lockout key exactly as the sign-in's second step does
//!   ([`crate::signin`]), and is in the sign-in log.
//! - The last step claims the token before it writes (two submissions do not
//!   both write) and gives it back when the directory refuses the password,
//!   so the person can choose another.

use std::sync::Arc;

use crate::db::{Connection, OptionalExtension, params};
use crate::error::Result;
use crate::pta::Broker;
use crate::signin::{LockoutPolicy, Origin, SecondFactorAnswer, check_second_factor, in_transaction};
use crate::store::Store;
use crate::util::{now_secs, sha256};
use crate::writeback::{self, WritebackError, Written};
use crate::{mfa, objects};

/// How long each step waits.
pub const RESET_SECS: i64 = 600;

/// A token's stages: waiting for the code, proven, being written.
const WAITING: i64 = 0;
const PROVEN: i64 = 1;
const WRITING: i64 = 2;

/// Why a step was refused. The texts are what the person sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResetError {
    #[error(
        "That did not work: the code is wrong or was used already, or this account cannot reset its password here. Ask your administrator if it keeps failing."
    )]
    Refused,
    #[error("This password reset took too long. Start again.")]
    Expired,
    #[error("{0}")]
    Writeback(WritebackError),
}

/// Whether `user` may reset here: synchronised, its domain writes passwords
/// back, and it has an authenticator app or a passkey to prove.
fn eligible(conn: &Connection, user: &objects::Stored) -> Result<bool> {
    Ok(crate::signin::writes_back(conn, user)?
        && mfa::methods(conn, &user.id)?
            .iter()
            .any(|m| matches!(m.kind, mfa::MethodKind::Totp | mfa::MethodKind::Passkey)))
}

/// Starts a reset for the user named `name`: the token the next form
/// carries, whoever asked (it matches nothing for an unknown or ineligible
/// name).
pub fn begin(conn: &Connection, name: &str) -> Result<String> {
    let token = crate::util::random_token();
    let now = now_secs();
    conn.execute("DELETE FROM password_resets WHERE expires <= ?1", params![now])?;
    if let Some(user) = crate::console::user_by_name(conn, name)?
        && eligible(conn, &user)?
    {
        conn.execute(
            "INSERT INTO password_resets(hash, user_id, stage, expires) VALUES(?1, ?2, ?3, ?4)",
            params![sha256(token.as_bytes()), user.id, WAITING, now + RESET_SECS],
        )?;
    }
    Ok(token)
}

/// The user a token (its `hash`) at `stage` stands for, while it is valid.
fn user_at(conn: &Connection, hash: &[u8], stage: i64) -> Result<Option<objects::Stored>> {
    let id: Option<String> = conn
        .query_row(
            "SELECT user_id FROM password_resets WHERE hash = ?1 AND stage = ?2 AND expires > ?3",
            params![hash, stage, now_secs()],
            |r| r.get(0),
        )
        .optional()?;
    match id {
        Some(id) => objects::load(conn, Some(objects::Kind::User), &id),
        None => Ok(None),
    }
}

/// The proof step: `answer` (an authenticator app's code, a recovery code,
/// or a [`SecondFactorAnswer::NamelessPasskey`]) for the user `token` stands
/// for. On success the same token may set the password for [`RESET_SECS`].
pub async fn prove(
    store: &Arc<Store>,
    token: &str,
    answer: SecondFactorAnswer,
    origin: &Origin,
    policy: LockoutPolicy,
) -> Result<std::result::Result<(), ResetError>> {
    let (store, token, origin) = (store.clone(), token.to_string(), origin.clone());
    blocking(move || {
        let guard = store.lock();
        in_transaction(&guard, |conn| {
            let Some(user) = user_at(conn, &sha256(token.as_bytes()), WAITING)? else {
                return Ok(Err(ResetError::Refused));
            };
            match check_second_factor(conn, &user, &answer, &origin, policy)? {
                Ok(_) => {
                    conn.execute(
                        "UPDATE password_resets SET stage = ?2, expires = ?3 WHERE hash = ?1",
                        params![sha256(token.as_bytes()), PROVEN, now_secs() + RESET_SECS],
                    )?;
                    Ok(Ok(()))
                }
                Err(_) => Ok(Err(ResetError::Refused)),
            }
        })
    })
    .await
}

/// The user name a proven `token` may set the password of (the page shows it).
pub fn proven_user(conn: &Connection, token: &str) -> Result<Option<String>> {
    proven_user_by_hash(conn, &sha256(token.as_bytes()))
}

/// The last step: `new_password` for the user a proven `token` stands for,
/// on-premises first. The token is used up when the password was set.
pub async fn finish(
    store: &Arc<Store>,
    broker: &Broker,
    token: &str,
    new_password: &str,
) -> Result<std::result::Result<Written, ResetError>> {
    let hash = sha256(token.as_bytes());
    let claimed = {
        let (store, hash) = (store.clone(), hash.clone());
        blocking(move || {
            let conn = store.lock();
            let name = proven_user_by_hash(&conn, &hash)?;
            if name.is_some() {
                conn.execute(
                    "UPDATE password_resets SET stage = ?2 WHERE hash = ?1 AND stage = ?3",
                    params![hash, WRITING, PROVEN],
                )?;
            }
            Ok(name)
        })
        .await?
    };
    let Some(name) = claimed else { return Ok(Err(ResetError::Expired)) };
    let request = writeback::Request::Reset { actor: format!("self-service:{name}"), enforce_policy: true };
    let written = writeback::write_password(store, broker, &name, new_password, request).await?;
    let (store, done) = (store.clone(), written.is_ok());
    blocking(move || {
        let conn = store.lock();
        if done {
            conn.execute("DELETE FROM password_resets WHERE hash = ?1", params![hash])?;
        } else {
            // Refused: the person may choose another password with the same token.
            conn.execute(
                "UPDATE password_resets SET stage = ?2 WHERE hash = ?1 AND stage = ?3",
                params![hash, PROVEN, WRITING],
            )?;
        }
        Ok(())
    })
    .await?;
    Ok(written.map_err(ResetError::Writeback))
}

fn proven_user_by_hash(conn: &Connection, hash: &[u8]) -> Result<Option<String>> {
    Ok(user_at(conn, hash, PROVEN)?
        .and_then(|u| u.data.get("userName").and_then(serde_json::Value::as_str).map(str::to_string)))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    crate::util::blocking("password reset", work).await
}
