//! `/pta/v1`: pass-through agents. An agent registers once with a one-time
//! token and its public key, then long-polls for sealed requests — sign-ins
//! to check and passwords to write (password writeback) —, answers each with an outcome and a MAC, and rotates its credential at
//! half-life. Every call but `register` carries the agent's credential as a
//! bearer token. Errors are [`crate::ErrorReply`].

use serde::{Deserialize, Serialize};

pub const REGISTER_PATH: &str = "/pta/v1/register";
/// `GET ?wait_secs=N` → [`PollReply`]; doubles as the heartbeat.
pub const POLL_PATH: &str = "/pta/v1/poll";
pub const RESPOND_PATH: &str = "/pta/v1/respond";
pub const ROTATE_PATH: &str = "/pta/v1/rotate";

/// Agent credentials live this long; agents rotate them at half-life.
pub const CREDENTIAL_LIFETIME_SECS: i64 = 30 * 24 * 3600;
/// The longest a poll waits for work before it returns empty.
pub const MAX_POLL_WAIT_SECS: u64 = 25;

/// `POST` [`REGISTER_PATH`] → [`Credential`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The one-time registration token.
    pub token: String,
    /// The agent's X25519 public key, base64url.
    pub public_key: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// An agent's credential: from registration (with its id) and rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub credential: String,
    /// Unix seconds.
    pub credential_expires: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollReply {
    pub requests: Vec<Sealed>,
}

/// `POST` [`RESPOND_PATH`] → [`AnswerReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub request_id: String,
    pub outcome: Outcome,
    /// HMAC over the request id and outcome with the request's answer key (base64url).
    #[serde(default)]
    pub mac: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerReply {
    /// False when the request was not this agent's, was answered already, or the MAC was wrong.
    pub accepted: bool,
}

/// A sign-in request as it travels (base64url fields); opened by the agent
/// it was sealed to (`pta::open`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub request_id: String,
    /// Unix seconds after which the agent must not answer.
    pub deadline: i64,
    pub agent_id: String,
    /// The tenant's ephemeral public key.
    pub ephemeral: String,
    pub nonce: String,
    pub ciphertext: String,
}

/// How a validation or a password write ended; the agent's whole answer.
/// A password write succeeded only on [`Outcome::PasswordChanged`]: an
/// agent too old to write passwords ignores the request's write and
/// answers a validation outcome, which the tenant reads as "not written".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Success,
    WrongPassword,
    AccountDisabled,
    AccountExpired,
    PasswordExpired,
    MustChangePassword,
    LockedOut,
    LogonHours,
    DirectoryUnreachable,
    /// The directory accepted the new password.
    PasswordChanged,
    /// Refused by the directory's password policy: shorter than its minimum.
    PasswordTooShort,
    /// Refused: the current password is younger than the policy's minimum age.
    PasswordTooYoung,
    /// Refused: the new password is in the account's password history.
    PasswordInHistory,
    /// Refused: the new password does not meet the complexity or quality rules.
    PasswordNotComplex,
    /// Refused by the policy without saying which rule (Active Directory
    /// on Windows reports length, complexity, history and age alike).
    PasswordRefused,
    /// The directory does not let this account's password be set this way
    /// (the agent's service account lacks the reset right, or the policy
    /// forbids users changing their own password).
    PasswordChangeNotAllowed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::WrongPassword => "wrong-password",
            Outcome::AccountDisabled => "account-disabled",
            Outcome::AccountExpired => "account-expired",
            Outcome::PasswordExpired => "password-expired",
            Outcome::MustChangePassword => "must-change-password",
            Outcome::LockedOut => "locked-out",
            Outcome::LogonHours => "logon-hours",
            Outcome::DirectoryUnreachable => "directory-unreachable",
            Outcome::PasswordChanged => "password-changed",
            Outcome::PasswordTooShort => "password-too-short",
            Outcome::PasswordTooYoung => "password-too-young",
            Outcome::PasswordInHistory => "password-in-history",
            Outcome::PasswordNotComplex => "password-not-complex",
            Outcome::PasswordRefused => "password-refused",
            Outcome::PasswordChangeNotAllowed => "password-change-not-allowed",
        }
    }
}

/// A new password for the directory. The agent answers
/// [`Outcome::PasswordChanged`] only when the directory accepted it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PasswordWrite {
    /// The user changes their own password: done as the user (with the
    /// current password), so the directory's history and minimum age apply.
    Change { new_password: String },
    /// An administrator's reset (or a verified self-service reset): done as
    /// the agent's service account, which needs the right to reset.
    /// `enforce_policy` (a self-service reset): Active Directory is asked to
    /// hold it to the rules of a change (password history) with the
    /// policy-hints control; an agent from before it resets plainly.
    Reset {
        new_password: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        enforce_policy: bool,
    },
}

impl PasswordWrite {
    pub fn new_password(&self) -> &str {
        match self {
            PasswordWrite::Change { new_password } | PasswordWrite::Reset { new_password, .. } => new_password,
        }
    }
}

impl std::fmt::Debug for PasswordWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PasswordWrite::Change { .. } => "Change { new_password: (hidden) }",
            PasswordWrite::Reset { .. } => "Reset { new_password: (hidden) }",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_without_the_policy_flag_reads_as_before_and_the_flag_travels() {
        let old: PasswordWrite = serde_json::from_str(r#"{"kind":"reset","new_password":"Nouveau-mot-de-passe-é"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old, PasswordWrite::Reset { new_password: "Nouveau-mot-de-passe-é".into(), enforce_policy: false });
        let plain = serde_json::to_string(&old).unwrap_or_default();
        assert!(!plain.contains("enforce_policy"), "an administrator's reset is written as before: {plain}");
        let held = PasswordWrite::Reset { new_password: "x".into(), enforce_policy: true };
        let text = serde_json::to_string(&held).unwrap_or_default();
        assert_eq!(serde_json::from_str::<PasswordWrite>(&text).ok(), Some(held));
        assert!(!format!("{:?}", PasswordWrite::Change { new_password: "secret".into() }).contains("secret"));
    }
}
