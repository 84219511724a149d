//! Password writeback: setting a user's password in the directory for the
//! pass-through agent, and reading the directory's refusal precisely.
//!
//! - Active Directory / Samba AD: a *change* is one modify that deletes the
//!   current `unicodePwd` and adds the new one (the directory checks the
//!   current password, history and minimum age); a *reset* replaces it as
//!   the service account (its "Reset Password" right). Both need LDAPS or
//!   StartTLS: AD refuses `unicodePwd` on a plain connection.
//! - OpenLDAP / 389: the Password Modify extended operation (RFC 3062) with
//!   the password-policy control, whose error says which rule refused.
//!
//! A change is made on a connection bound as the user, so the directory
//! applies the rules for users; a user AD will not let bind because a new
//! password is due (`773`, `532`) changes on the service account's
//! connection, where the old password still has to be right (AD grants
//! "Change Password" to everyone; knowing the old password is the check).
//!
//! A change that finds the current password wrong tries the new one: if it
//! binds, an earlier attempt of the same request went through (the agent
//! died before answering and the tenant handed the request to another),
//! and the answer is "changed" rather than a false "wrong password".

use ldap3::Mod;
use proto::pta::Outcome;
use proto::pta::PasswordWrite;

use super::{Validator, outcome_of_bind_failure};
use crate::ber;
use crate::connect::Session;
use crate::error::LdapError;
use crate::settings::ServerKind;

const INVALID_CREDENTIALS: u32 = 49;
const INSUFFICIENT_ACCESS: u32 = 50;
const UNWILLING_TO_PERFORM: u32 = 53;

/// `unicodePwd`'s value: the password in double quotes, UTF-16LE.
fn unicode_pwd(password: &str) -> Vec<u8> {
    format!("\"{password}\"").encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// What an Active Directory (or Samba AD) refusal of a `unicodePwd` write
/// means. Samba names the rule in its message; Windows says only
/// `0000052D` (a password restriction), so that is a general refusal.
pub fn outcome_of_ad_write_failure(code: u32, text: &str) -> Outcome {
    let lower = text.to_ascii_lowercase();
    let extended = text.get(..8).filter(|head| head.chars().all(|c| c.is_ascii_hexdigit()));
    match code {
        INSUFFICIENT_ACCESS => Outcome::PasswordChangeNotAllowed,
        // AD refuses passwords on connections without TLS as "unwilling".
        UNWILLING_TO_PERFORM => Outcome::PasswordChangeNotAllowed,
        _ if extended == Some("00000056") || lower.contains("old password specified doesn't match") => {
            Outcome::WrongPassword
        }
        _ if lower.contains("too short") => Outcome::PasswordTooShort,
        _ if lower.contains("too young") => Outcome::PasswordTooYoung,
        _ if lower.contains("history") => Outcome::PasswordInHistory,
        _ if lower.contains("complexity") => Outcome::PasswordNotComplex,
        INVALID_CREDENTIALS => outcome_of_bind_failure(code, text),
        _ => Outcome::PasswordRefused,
    }
}

/// What a Password Modify refusal means: the password-policy control's
/// error when the server sent one, else the result code and text.
pub fn outcome_of_passmod_failure(code: u32, text: &str, ppolicy_error: Option<i64>) -> Outcome {
    match ppolicy_error {
        Some(0) => return Outcome::PasswordExpired,
        Some(1) => return Outcome::LockedOut,
        Some(3) => return Outcome::PasswordChangeNotAllowed,
        Some(4) => return Outcome::WrongPassword,
        Some(5) => return Outcome::PasswordNotComplex,
        Some(6) => return Outcome::PasswordTooShort,
        Some(7) => return Outcome::PasswordTooYoung,
        Some(8) => return Outcome::PasswordInHistory,
        _ => {}
    }
    let lower = text.to_ascii_lowercase();
    match code {
        INVALID_CREDENTIALS => Outcome::WrongPassword,
        INSUFFICIENT_ACCESS => Outcome::PasswordChangeNotAllowed,
        _ if lower.contains("too young") => Outcome::PasswordTooYoung,
        _ if lower.contains("history") => Outcome::PasswordInHistory,
        _ if lower.contains("too short") => Outcome::PasswordTooShort,
        _ if lower.contains("quality") => Outcome::PasswordNotComplex,
        _ => Outcome::PasswordRefused,
    }
}

/// Where a write is made: on a connection bound as the user, or the
/// service account's.
enum Actor {
    User(Box<Session>),
    Service,
}

impl Validator {
    /// Sets `username`'s password as `write` says; `current` is the
    /// password the user gave (empty for a reset). The answer is
    /// [`Outcome::PasswordChanged`] only when the directory accepted it.
    pub async fn write_password(&self, username: &str, current: &str, write: &PasswordWrite) -> Outcome {
        let username = username.trim();
        if username.is_empty() {
            return Outcome::WrongPassword;
        }
        if write.new_password().is_empty() {
            return Outcome::PasswordTooShort;
        }
        if matches!(write, PasswordWrite::Change { .. }) && current.is_empty() {
            return Outcome::WrongPassword;
        }
        match self.try_write(username, current, write).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the password to the directory");
                *self.lookup.lock().await = None;
                Outcome::DirectoryUnreachable
            }
        }
    }

    async fn try_write(&self, username: &str, current: &str, write: &PasswordWrite) -> Result<Outcome, LdapError> {
        let Some((dn, _)) = self.find_dn(username).await? else { return Ok(Outcome::WrongPassword) };
        let kind = self.server_kind().await?;
        let actor = match write {
            PasswordWrite::Reset { .. } => Actor::Service,
            PasswordWrite::Change { new_password } => {
                let mut session = self.bind_session().await?;
                let bound = session.ldap.with_timeout(session.operation_timeout).simple_bind(&dn, current).await;
                match bound {
                    Ok(r) if r.rc == 0 => Actor::User(Box::new(session)),
                    Ok(r) => match outcome_of_bind_failure(r.rc, &r.text) {
                        // A new password is due: AD lets no such bind, so change where it can.
                        Outcome::MustChangePassword | Outcome::PasswordExpired
                            if kind == ServerKind::ActiveDirectory =>
                        {
                            Actor::Service
                        }
                        Outcome::WrongPassword => return Ok(self.already_changed(&dn, new_password).await),
                        refused => return Ok(refused),
                    },
                    Err(e) => {
                        return Err(LdapError::Connection {
                            url: session.url.clone(),
                            operation: "binding as the user".into(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
        };
        let outcome = match &actor {
            Actor::User(session) => write_with(session, kind, &dn, current, write).await?,
            Actor::Service => {
                let guard = self.lookup.lock().await;
                let Some(session) = guard.as_ref() else { return Ok(Outcome::DirectoryUnreachable) };
                write_with(session, kind, &dn, current, write).await?
            }
        };
        if let Actor::User(mut session) = actor {
            // The pool's connections bind anew for each check; this one is done.
            let _ = session.ldap.unbind().await;
        }
        Ok(match (outcome, write) {
            (Outcome::WrongPassword, PasswordWrite::Change { new_password }) => {
                self.already_changed(&dn, new_password).await
            }
            (other, _) => other,
        })
    }

    /// The server kind, from the service account's connection.
    async fn server_kind(&self) -> Result<ServerKind, LdapError> {
        let mut guard = self.lookup.lock().await;
        if guard.as_mut().is_none_or(|s| s.ldap.is_closed()) {
            *guard = Some(crate::connect::connect(&self.settings).await?);
        }
        Ok(guard.as_ref().map_or(ServerKind::Other, |s| s.root_dse.kind()))
    }

    /// After "wrong current password": whether the new password is the
    /// account's already (an earlier attempt of this change went through).
    async fn already_changed(&self, dn: &str, new_password: &str) -> Outcome {
        let Ok(mut session) = self.bind_session().await else { return Outcome::WrongPassword };
        match session.ldap.with_timeout(session.operation_timeout).simple_bind(dn, new_password).await {
            Ok(r) if r.rc == 0 => {
                let _ = session.ldap.unbind().await;
                Outcome::PasswordChanged
            }
            _ => Outcome::WrongPassword,
        }
    }
}

/// One write on `session`: one LDAP operation, applied whole or not at all.
async fn write_with(
    session: &Session,
    kind: ServerKind,
    dn: &str,
    current: &str,
    write: &PasswordWrite,
) -> Result<Outcome, LdapError> {
    let mut ldap = session.ldap.clone();
    let failed = |e: ldap3::LdapError| LdapError::Connection {
        url: session.url.clone(),
        operation: format!("setting the password of {dn}"),
        reason: e.to_string(),
    };
    if kind == ServerKind::ActiveDirectory {
        let attr = b"unicodePwd".to_vec();
        let new = std::collections::HashSet::from([unicode_pwd(write.new_password())]);
        let mods = match write {
            PasswordWrite::Change { .. } => vec![
                Mod::Delete(attr.clone(), std::collections::HashSet::from([unicode_pwd(current)])),
                Mod::Add(attr, new),
            ],
            PasswordWrite::Reset { .. } => vec![Mod::Replace(attr, new)],
        };
        let mut ldap = ldap.with_timeout(session.operation_timeout);
        if let PasswordWrite::Reset { enforce_policy: true, .. } = write {
            ldap = ldap.with_controls(ber::policy_hints_control());
        }
        let result = ldap.modify(dn, mods).await.map_err(failed)?;
        if result.rc == 0 {
            return Ok(Outcome::PasswordChanged);
        }
        let outcome = outcome_of_ad_write_failure(result.rc, &result.text);
        tracing::info!(code = result.rc, message = %result.text, outcome = outcome.as_str(), "the directory refused the password");
        return Ok(outcome);
    }
    let exop = ldap3::exop::PasswordModify {
        user_id: Some(dn),
        old_pass: match write {
            PasswordWrite::Change { .. } => Some(current),
            PasswordWrite::Reset { .. } => None,
        },
        new_pass: Some(write.new_password()),
    };
    let result = ldap
        .with_timeout(session.operation_timeout)
        .with_controls(ber::ppolicy_request_control())
        .extended(exop)
        .await
        .map_err(failed)?;
    let ldap3::result::ExopResult(_, result) = result;
    if result.rc == 0 {
        return Ok(Outcome::PasswordChanged);
    }
    let policy_error = result
        .ctrls
        .iter()
        .find(|c| c.1.ctype == ber::PPOLICY_OID)
        .and_then(|c| c.1.val.as_deref())
        .and_then(ber::parse_ppolicy_error);
    let outcome = outcome_of_passmod_failure(result.rc, &result.text, policy_error);
    tracing::info!(code = result.rc, message = %result.text, policy_error, outcome = outcome.as_str(), "the directory refused the password");
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_hints_control_asks_for_the_rules_of_a_change() {
        let control = ber::policy_hints_control();
        assert_eq!(control.ctype, "1.2.840.113556.1.4.2239");
        assert!(!control.crit, "a directory that does not know it still resets");
        // SEQUENCE { INTEGER 1 }
        assert_eq!(control.val.as_deref(), Some([0x30, 0x03, 0x02, 0x01, 0x01].as_slice()));
    }

    #[test]
    fn unicode_pwd_is_quoted_utf16le() {
        assert_eq!(unicode_pwd("aé"), vec![b'"', 0, b'a', 0, 0xe9, 0, b'"', 0]);
        // Outside the BMP: a surrogate pair.
        assert_eq!(unicode_pwd("😀").len(), 2 + 4 + 2);
    }

    #[test]
    fn samba_and_windows_refusals_map_to_their_rule() {
        let samba = |rule: &str| format!("0000052D: Constraint violation - check_password_restrictions: {rule}");
        let ad = |code, text: &str| outcome_of_ad_write_failure(code, text);
        assert_eq!(
            ad(19, &samba("the password is too short. It should be equal or longer than 7 characters!")),
            Outcome::PasswordTooShort
        );
        assert_eq!(ad(19, &samba("the password does not meet the complexity criteria!")), Outcome::PasswordNotComplex);
        assert_eq!(ad(19, &samba("the password was already used (in history)!")), Outcome::PasswordInHistory);
        assert_eq!(ad(19, &samba("password is too young to change!")), Outcome::PasswordTooYoung);
        assert_eq!(
            ad(19, "00000056: Constraint violation - The old password specified doesn't match!"),
            Outcome::WrongPassword
        );
        // Windows: which restriction is not said.
        assert_eq!(
            ad(19, "0000052D: Constraint violation - check_password_restrictions: problem 1005 (CONSTRAINT_ATT_TYPE)"),
            Outcome::PasswordRefused
        );
        assert_eq!(ad(19, "00000056: AtrErr: DSID-03190F80, #1:"), Outcome::WrongPassword);
        assert_eq!(ad(50, "00002098: SecErr: DSID-03150F94, problem 4003"), Outcome::PasswordChangeNotAllowed);
        assert_eq!(ad(53, "0000001F: SvcErr: DSID-031A12D2, problem 5003"), Outcome::PasswordChangeNotAllowed);
        assert_eq!(ad(19, "ünïcödé"), Outcome::PasswordRefused, "non-ASCII text: no panic, general refusal");
    }

    #[test]
    fn password_policy_errors_map_to_their_rule() {
        let pm = outcome_of_passmod_failure;
        assert_eq!(pm(19, "Password fails quality checking policy", Some(6)), Outcome::PasswordTooShort);
        assert_eq!(pm(19, "Password fails quality checking policy", Some(5)), Outcome::PasswordNotComplex);
        assert_eq!(pm(19, "Password is too young to change", Some(7)), Outcome::PasswordTooYoung);
        assert_eq!(pm(19, "Password is in history of old passwords", Some(8)), Outcome::PasswordInHistory);
        assert_eq!(pm(50, "", Some(3)), Outcome::PasswordChangeNotAllowed);
        // Without the control (a server that does not send it): the text.
        assert_eq!(pm(19, "Password is in history of old passwords", None), Outcome::PasswordInHistory);
        assert_eq!(pm(19, "Password is too young to change", None), Outcome::PasswordTooYoung);
        assert_eq!(pm(49, "", None), Outcome::WrongPassword);
        assert_eq!(pm(50, "no write access", None), Outcome::PasswordChangeNotAllowed);
        assert_eq!(pm(80, "", Some(42)), Outcome::PasswordRefused);
    }

    #[test]
    fn ppolicy_response_error_is_read() {
        // SEQUENCE { error [1] ENUMERATED 6 }
        assert_eq!(ber::parse_ppolicy_error(&[0x30, 0x03, 0x81, 0x01, 0x06]), Some(6));
        // A warning (graceAuthNsRemaining [0][1] 2) and no error.
        assert_eq!(ber::parse_ppolicy_error(&[0x30, 0x05, 0xa0, 0x03, 0x81, 0x01, 0x02]), None);
        assert_eq!(ber::parse_ppolicy_error(&[0x30, 0x08, 0x81]), None, "truncated");
        assert_eq!(ber::parse_ppolicy_error(&[]), None);
    }
}
