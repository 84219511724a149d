//! Password writeback: a password chosen in the cloud is set in the
//! on-premises directory through a pass-through agent, then — and only
//! then — in the tenant.
//!
//! - Per domain (`domains.password_writeback`), for synchronised users
//!   (an immutableId): a cloud-only user has no on-premises account.
//! - The request travels like a pass-through sign-in: sealed to each online
//!   agent, one user's requests one at a time ([`Broker::user_turn`]), the
//!   answer MAC-checked. The new password exists in clear only here and in
//!   the agent's LDAP operation; never in a log, the audit or a file.
//! - The directory decides: its refusal (too short, in history, too young,
//!   not complex, disabled, …) comes back as a specific
//!   [`WritebackError`], and nothing changes in the tenant. With
//!   [`Outcome::PasswordChanged`] the tenant's password record is replaced
//!   (users of password-hash-sync domains, or anyone who has one), ending
//!   the user's other sessions; the next sync cycle brings the directory's
//!   own hash of the same password.
//! - No agent, an agent that did not answer, an agent too old to write
//!   passwords, an unreachable directory: a clear error, nothing changed.
//!   Every attempt is audited with its outcome (never the password).

use std::sync::Arc;

use proto::pta::{Outcome, PasswordWrite};
use serde_json::json;

use crate::db::{OptionalExtension, params};
use crate::domains::{self, AuthType};
use crate::error::Result;
use crate::pta::{Broker, DispatchError};
use crate::store::Store;
use crate::{audit, credentials};

/// The longest password sent on (AD's limit is 256 characters).
pub const MAX_PASSWORD_CHARS: usize = 256;

/// A random password an administrator's reset sets when none is given:
/// letters, digits and symbols (AD's complexity rule), 22 characters.
pub fn random_password() -> String {
    format!("Rst-{}-9a", crate::util::random_token().get(..16).unwrap_or_default())
}

/// Why a password was not written. The texts are what the person sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WritebackError {
    #[error(
        "Passwords of {domain} cannot be changed here: password writeback is off for it. Change it on your organisation's network."
    )]
    NotEnabled { domain: String },
    #[error(
        "{name} is not a user synchronised from an on-premises directory, so there is no on-premises password to set."
    )]
    NotSynchronised { name: String },
    #[error("There is no user {name}.")]
    NoSuchUser { name: String },
    #[error("The new password is empty or longer than {MAX_PASSWORD_CHARS} characters.")]
    BadInput,
    #[error("No on-premises agent is online to set the password. Nothing was changed; try again in a few minutes.")]
    NoAgent,
    #[error("The on-premises agent did not answer in time. Nothing was changed in the cloud; try again.")]
    Timeout,
    #[error("The on-premises agent is too old to set passwords; upgrade it. Nothing was changed.")]
    AgentTooOld,
    #[error("Your current password is incorrect.")]
    WrongPassword,
    #[error("The new password is too short for your organisation's password policy.")]
    TooShort,
    #[error(
        "Your password was changed too recently; your organisation's policy requires you to wait before changing it again."
    )]
    TooYoung,
    #[error("The new password was used before; your organisation's policy does not allow reusing it.")]
    InHistory,
    #[error(
        "The new password does not meet your organisation's complexity rules (mix letters, digits and symbols; avoid your name)."
    )]
    NotComplex,
    #[error(
        "The new password does not meet your organisation's password policy (length, complexity, history or minimum age)."
    )]
    Refused,
    #[error(
        "The on-premises directory does not allow this password to be set this way (the agent's account may lack the right to reset passwords). Nothing was changed."
    )]
    NotAllowed,
    #[error("Your account is disabled. Contact your administrator.")]
    Disabled,
    #[error("Your account is locked on your organisation's network. Wait, or ask your administrator to unlock it.")]
    LockedOnPremises,
    #[error("Your account has expired. Contact your administrator.")]
    AccountExpired,
    #[error("Your organisation's directory cannot be reached right now. Nothing was changed; try again later.")]
    DirectoryUnreachable,
}

impl WritebackError {
    /// The audit's and metrics' word for it.
    pub fn reason(&self) -> &'static str {
        match self {
            WritebackError::NotEnabled { .. } => "writeback-off",
            WritebackError::NotSynchronised { .. } => "not-synchronised",
            WritebackError::NoSuchUser { .. } => "no-such-user",
            WritebackError::BadInput => "bad-input",
            WritebackError::NoAgent => "no-agent",
            WritebackError::Timeout => "agent-timeout",
            WritebackError::AgentTooOld => "agent-too-old",
            WritebackError::WrongPassword => "wrong-password",
            WritebackError::TooShort => "too-short",
            WritebackError::TooYoung => "too-young",
            WritebackError::InHistory => "in-history",
            WritebackError::NotComplex => "not-complex",
            WritebackError::Refused => "refused-by-policy",
            WritebackError::NotAllowed => "not-allowed",
            WritebackError::Disabled => "disabled",
            WritebackError::LockedOnPremises => "locked-on-premises",
            WritebackError::AccountExpired => "account-expired",
            WritebackError::DirectoryUnreachable => "directory-unreachable",
        }
    }

    fn of(outcome: Outcome) -> WritebackError {
        match outcome {
            Outcome::WrongPassword => WritebackError::WrongPassword,
            Outcome::PasswordTooShort => WritebackError::TooShort,
            Outcome::PasswordTooYoung => WritebackError::TooYoung,
            Outcome::PasswordInHistory => WritebackError::InHistory,
            Outcome::PasswordNotComplex => WritebackError::NotComplex,
            Outcome::PasswordRefused => WritebackError::Refused,
            Outcome::PasswordChangeNotAllowed => WritebackError::NotAllowed,
            Outcome::AccountDisabled => WritebackError::Disabled,
            Outcome::LockedOut => WritebackError::LockedOnPremises,
            Outcome::AccountExpired | Outcome::LogonHours => WritebackError::AccountExpired,
            Outcome::DirectoryUnreachable => WritebackError::DirectoryUnreachable,
            // A validation's answers: the agent did not write (it predates writeback).
            Outcome::Success | Outcome::PasswordExpired | Outcome::MustChangePassword | Outcome::PasswordChanged => {
                WritebackError::AgentTooOld
            }
        }
    }
}

/// Who asked: the user themself (a change) or a reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The user, with their current password.
    Change { current: String },
    /// An administrator or a tool (named in the audit), or the user's own
    /// verified reset (`enforce_policy`: the directory is asked to apply
    /// the rules of a change where it can).
    Reset { actor: String, enforce_policy: bool },
}

impl Request {
    /// `change` or `reset` (the metric's label).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Change { .. } => "change",
            Request::Reset { .. } => "reset",
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub user_id: String,
    /// Whether the tenant's own password record was replaced too.
    pub record_replaced: bool,
}

struct Target {
    user_id: String,
    user_name: String,
    replace_record: bool,
}

/// Finds the synchronised user `name` in a domain with writeback on.
fn target(conn: &crate::db::Connection, name: &str) -> Result<std::result::Result<Target, WritebackError>> {
    let lower = name.trim().to_lowercase();
    let found: Option<(String, String, Option<String>)> = conn
        .query_row(
            "SELECT id, user_name_lc, immutable_id FROM resources WHERE type = 'User' AND user_name_lc = ?1",
            params![lower],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((user_id, user_name, immutable_id)) = found else {
        return Ok(Err(WritebackError::NoSuchUser { name: name.trim().to_string() }));
    };
    if immutable_id.is_none_or(|i| i.is_empty()) {
        return Ok(Err(WritebackError::NotSynchronised { name: user_name }));
    }
    let domain_name = user_name.rsplit_once('@').map(|(_, d)| d.to_string()).unwrap_or_default();
    let domain = domains::get(conn, &domain_name)?;
    let Some(domain) = domain.filter(|d| d.password_writeback && d.auth != AuthType::Federated) else {
        return Ok(Err(WritebackError::NotEnabled { domain: domain_name }));
    };
    let replace_record = domain.auth == AuthType::ManagedPhs || credentials::load(conn, &user_id)?.is_some();
    Ok(Ok(Target { user_id, user_name, replace_record }))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    crate::util::blocking("password writeback", work).await
}

/// Sets `name`'s password to `new_password` on-premises through an agent,
/// then in the tenant. `Ok(Err(_))`: refused or not possible, nothing
/// changed anywhere (the reason is what the person should read).
pub async fn write_password(
    store: &Arc<Store>,
    broker: &Broker,
    name: &str,
    new_password: &str,
    request: Request,
) -> Result<std::result::Result<Written, WritebackError>> {
    let (action, actor) = match &request {
        Request::Change { .. } => ("password-change-writeback", "sign-in".to_string()),
        Request::Reset { actor, .. } => ("password-reset-writeback", actor.clone()),
    };
    let found = {
        let (store, name) = (store.clone(), name.to_string());
        blocking(move || target(&store.read(), &name)).await?
    };
    let target = match found {
        Ok(t) => t,
        Err(e) => {
            audit_refusal(store, &actor, action, None, name, &e).await?;
            return Ok(Err(e));
        }
    };
    if new_password.is_empty() || new_password.chars().count() > MAX_PASSWORD_CHARS {
        let e = WritebackError::BadInput;
        audit_refusal(store, &actor, action, Some(&target.user_id), &target.user_name, &e).await?;
        return Ok(Err(e));
    }
    let (current, write) = match request {
        Request::Change { current } => (current, PasswordWrite::Change { new_password: new_password.to_string() }),
        Request::Reset { enforce_policy, .. } => {
            (String::new(), PasswordWrite::Reset { new_password: new_password.to_string(), enforce_policy })
        }
    };
    let outcome = {
        let _turn = broker.user_turn(&target.user_name).await;
        broker
            .validate(&pta::Credentials { username: target.user_name.clone(), password: current, write: Some(write) })
            .await
    };
    let refusal = match outcome {
        Ok(Outcome::PasswordChanged) => None,
        Ok(other) => Some(WritebackError::of(other)),
        Err(DispatchError::NoAgent) => Some(WritebackError::NoAgent),
        Err(DispatchError::Timeout) => Some(WritebackError::Timeout),
    };
    if let Some(e) = refusal {
        audit_refusal(store, &actor, action, Some(&target.user_id), &target.user_name, &e).await?;
        return Ok(Err(e));
    }
    // The directory has the password: now the tenant's record, derived
    // off the async threads (it is deliberately slow).
    let record = if target.replace_record {
        let new = new_password.to_string();
        Some(
            blocking(move || {
                let salt = crate::util::random_bytes::<{ passwords::pph1::SALT_LEN }>();
                Ok(passwords::Pph1::derive(
                    &passwords::NtHash::of_password(&new),
                    &salt,
                    crate::signin::default_iterations(),
                )
                .to_string())
            })
            .await?,
        )
    } else {
        None
    };
    let store = store.clone();
    blocking(move || {
        let guard = store.lock();
        crate::signin::in_transaction(&guard, |conn| {
            let replaced = match &record {
                Some(record) => {
                    credentials::set(conn, &target.user_id, record)?;
                    true
                }
                None => {
                    credentials::end_sign_ins(conn, &target.user_id)?;
                    false
                }
            };
            let detail =
                json!({"userName": target.user_name, "outcome": "password-changed", "recordReplaced": replaced});
            audit::record(conn, &actor, action, Some("User"), Some(&target.user_id), Some(&detail))?;
            Ok(Ok(Written { user_id: target.user_id.clone(), record_replaced: replaced }))
        })
    })
    .await
}

async fn audit_refusal(
    store: &Arc<Store>,
    actor: &str,
    action: &str,
    user_id: Option<&str>,
    name: &str,
    e: &WritebackError,
) -> Result<()> {
    let (store, actor, action, user_id) =
        (store.clone(), actor.to_string(), action.to_string(), user_id.map(str::to_string));
    let detail = json!({"userName": name.trim(), "outcome": e.reason()});
    blocking(move || {
        let conn = store.lock();
        audit::record(&conn, &actor, &action, Some("User"), user_id.as_deref(), Some(&detail))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_own_reason_and_only_a_write_counts() {
        let all = [
            Outcome::WrongPassword,
            Outcome::PasswordTooShort,
            Outcome::PasswordTooYoung,
            Outcome::PasswordInHistory,
            Outcome::PasswordNotComplex,
            Outcome::PasswordRefused,
            Outcome::PasswordChangeNotAllowed,
            Outcome::AccountDisabled,
            Outcome::LockedOut,
            Outcome::DirectoryUnreachable,
        ];
        let reasons: std::collections::HashSet<&str> = all.iter().map(|o| WritebackError::of(*o).reason()).collect();
        assert_eq!(reasons.len(), all.len(), "each directory refusal reads differently");
        // An agent from before writeback validates and answers "success": not a write.
        assert_eq!(WritebackError::of(Outcome::Success), WritebackError::AgentTooOld);
        assert!(WritebackError::TooShort.to_string().contains("too short"));
    }
}
