//! Checking a user's password against the directory (the pass-through
//! authentication agent): find the user's DN with the service account —
//! the user name escaped, so it cannot widen the filter — then bind as that
//! DN on a connection of its own, and read the outcome, including Active
//! Directory's bind sub-codes (`data 52e`, `533`, `701`, …).

use std::sync::Mutex;

use ldap3::Scope;
use proto::pta::Outcome;

use crate::connect::{self, Session};
use crate::error::LdapError;
use crate::settings::LdapSettings;

mod password_write;
pub use password_write::{outcome_of_ad_write_failure, outcome_of_passmod_failure};

/// `{upn}` in the filter template is replaced by the escaped user name.
pub const DEFAULT_USER_FILTER: &str =
    "(&(|(objectClass=user)(objectClass=person))(|(userPrincipalName={upn})(mail={upn})))";

/// Whether users' passwords may be sent over a connection without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainBinds {
    /// Only LDAPS or StartTLS (the default).
    Refuse,
    /// A lab without certificates: allowed, and logged loudly.
    AllowInsecure,
}

/// Validates passwords; keeps a service-account connection for lookups and
/// a pool of connections for the users' binds (a bind changes a
/// connection's identity, so each is used by one check at a time).
#[derive(Debug)]
pub struct Validator {
    settings: LdapSettings,
    user_filter: String,
    lookup: tokio::sync::Mutex<Option<Session>>,
    pool: Mutex<Vec<Session>>,
}

/// The outcome of a failed simple bind, from the result code and AD's sub-code.
pub fn outcome_of_bind_failure(code: u32, text: &str) -> Outcome {
    let sub = text.split("data ").nth(1).map(|s| s.chars().take_while(char::is_ascii_hexdigit).collect::<String>());
    match sub.as_deref() {
        Some("530") | Some("531") => Outcome::LogonHours,
        Some("532") => Outcome::PasswordExpired,
        Some("533") => Outcome::AccountDisabled,
        Some("701") => Outcome::AccountExpired,
        Some("773") => Outcome::MustChangePassword,
        Some("775") => Outcome::LockedOut,
        _ if code == 49 => Outcome::WrongPassword,
        // OpenLDAP's ppolicy and others refuse locked accounts as "unwilling".
        _ if code == 53 && text.to_ascii_lowercase().contains("lock") => Outcome::LockedOut,
        _ => Outcome::WrongPassword,
    }
}

impl Validator {
    pub fn new(settings: LdapSettings, user_filter: Option<String>, plain: PlainBinds) -> Result<Validator, LdapError> {
        let plain_urls: Vec<&String> =
            settings.urls.iter().filter(|u| u.to_ascii_lowercase().starts_with("ldap://")).collect();
        if !plain_urls.is_empty() && !settings.tls.starttls {
            match plain {
                PlainBinds::Refuse => {
                    return Err(LdapError::Settings(format!(
                        "{} would carry users' passwords in clear: use ldaps:// or StartTLS (or, in a lab only, allow_plain_binds = true)",
                        plain_urls.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", ")
                    )));
                }
                PlainBinds::AllowInsecure => tracing::warn!(
                    urls = ?plain_urls,
                    "INSECURE: users' passwords are sent to the directory without TLS (allow_plain_binds)"
                ),
            }
        }
        let user_filter = user_filter.unwrap_or_else(|| DEFAULT_USER_FILTER.to_string());
        if !user_filter.contains("{upn}") {
            return Err(LdapError::Settings("user_filter must contain {upn}".into()));
        }
        directory::Filter::parse(&user_filter.replace("{upn}", "x"))
            .map_err(|e| LdapError::Settings(format!("user_filter: {e}")))?;
        Ok(Validator { settings, user_filter, lookup: tokio::sync::Mutex::new(None), pool: Mutex::new(Vec::new()) })
    }

    /// The user's DN and whether a new password is due: exactly one match, else `None`.
    async fn find_dn(&self, username: &str) -> Result<Option<(String, bool)>, LdapError> {
        let filter = self.user_filter.replace("{upn}", &directory::filter::escape_value(username.as_bytes()));
        let mut guard = self.lookup.lock().await;
        if guard.as_mut().is_none_or(|s| s.ldap.is_closed()) {
            *guard = Some(connect::connect(&self.settings).await?);
        }
        let Some(session) = guard.as_ref() else { return Ok(None) };
        let bases: Vec<String> = if self.settings.base_dns.is_empty() {
            session.root_dse.default_naming_context.clone().into_iter().collect()
        } else {
            self.settings.base_dns.iter().map(ToString::to_string).collect()
        };
        let mut found = Vec::new();
        for base in bases {
            let mut ldap = session.ldap.clone();
            let result = ldap
                .with_timeout(session.operation_timeout)
                .search(&base, Scope::Subtree, &filter, vec!["pwdLastSet", "pwdReset"])
                .await
                .map_err(|e| LdapError::Connection {
                    url: session.url.clone(),
                    operation: "finding the user".into(),
                    reason: e.to_string(),
                })?;
            let (entries, _) = result.success().map_err(|e| LdapError::Connection {
                url: session.url.clone(),
                operation: "finding the user".into(),
                reason: e.to_string(),
            })?;
            found.extend(entries.into_iter().map(|e| {
                let entry = ldap3::SearchEntry::construct(e);
                let first = |name: &str| entry.attrs.get(name).and_then(|v| v.first()).map(String::as_str);
                // AD: pwdLastSet = 0; OpenLDAP ppolicy: pwdReset = TRUE. (Samba still accepts the bind.)
                let must_change = first("pwdLastSet") == Some("0")
                    || first("pwdReset").is_some_and(|v| v.eq_ignore_ascii_case("TRUE"));
                (entry.dn, must_change)
            }));
        }
        Ok(if found.len() == 1 { found.pop() } else { None })
    }

    async fn bind_session(&self) -> Result<Session, LdapError> {
        let pooled = self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        if let Some(mut s) = pooled
            && !s.ldap.is_closed()
        {
            return Ok(s);
        }
        // A connection for users' binds: no service account on it.
        let mut anonymous = self.settings.clone();
        anonymous.bind_dn = None;
        anonymous.password = None;
        connect::connect(&anonymous).await
    }

    /// Checks `password` for `username`. A connection that fails is
    /// replaced and the check tried once more, so a connection the server
    /// closed while idle (or a restarted DC) costs no sign-in.
    pub async fn validate(&self, username: &str, password: &str) -> Outcome {
        // An empty password would be an unauthenticated bind, which succeeds.
        if password.is_empty() || username.trim().is_empty() {
            return Outcome::WrongPassword;
        }
        match self.try_validate(username.trim(), password).await {
            Ok(outcome) => outcome,
            Err(first) => {
                tracing::info!(error = %first, "directory connection failed; trying a new one");
                match self.try_validate(username.trim(), password).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach the directory");
                        Outcome::DirectoryUnreachable
                    }
                }
            }
        }
    }

    /// One attempt; `Err` means the directory could not be asked (the
    /// failed connection is dropped, so the next attempt opens a new one).
    async fn try_validate(&self, username: &str, password: &str) -> Result<Outcome, LdapError> {
        let (dn, must_change) = match self.find_dn(username).await {
            Ok(Some(found)) => found,
            // Unknown (or ambiguous) users get the same answer as a wrong password.
            Ok(None) => return Ok(Outcome::WrongPassword),
            Err(e) => {
                *self.lookup.lock().await = None;
                return Err(e);
            }
        };
        let mut session = self.bind_session().await?;
        let result = session.ldap.with_timeout(session.operation_timeout).simple_bind(&dn, password).await;
        let outcome = match result {
            Ok(r) if r.rc == 0 && must_change => Outcome::MustChangePassword,
            Ok(r) if r.rc == 0 => Outcome::Success,
            Ok(r) => outcome_of_bind_failure(r.rc, &r.text),
            // The bind may have reached the server: asking again could count
            // a wrong password twice against the account's lockout.
            Err(e @ ldap3::LdapError::Timeout { .. }) => {
                tracing::warn!(error = %e, "the directory did not answer the bind in time");
                return Ok(Outcome::DirectoryUnreachable);
            }
            Err(e) => {
                return Err(LdapError::Connection {
                    url: session.url.clone(),
                    operation: "binding as the user".into(),
                    reason: e.to_string(),
                });
            }
        };
        self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(session);
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ad_sub_codes_map_to_outcomes() {
        let ad = |data: &str| {
            format!("80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, data {data}, v3839")
        };
        assert_eq!(outcome_of_bind_failure(49, &ad("52e")), Outcome::WrongPassword);
        assert_eq!(outcome_of_bind_failure(49, &ad("533")), Outcome::AccountDisabled);
        assert_eq!(outcome_of_bind_failure(49, &ad("701")), Outcome::AccountExpired);
        assert_eq!(outcome_of_bind_failure(49, &ad("532")), Outcome::PasswordExpired);
        assert_eq!(outcome_of_bind_failure(49, &ad("773")), Outcome::MustChangePassword);
        assert_eq!(outcome_of_bind_failure(49, &ad("775")), Outcome::LockedOut);
        assert_eq!(outcome_of_bind_failure(49, &ad("530")), Outcome::LogonHours);
        assert_eq!(outcome_of_bind_failure(49, ""), Outcome::WrongPassword);
    }
}
