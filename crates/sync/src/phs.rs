//! Password hash sync on the engine's side: secrets are taken
//! out of every imported entry before it reaches the store, and — where the
//! source has password hash sync on — kept in memory for this cycle only,
//! then handed to the target for the users it holds.

use std::fmt;

use directory::Entry;
use passwords::{NtHash, StoredPassword};

use crate::source::SourceId;

/// Attributes that hold password material. They never reach the connector
/// space, the metaverse, a log or an export, whatever the rules say.
pub const SECRET_ATTRIBUTES: &[&str] = &[
    "userPassword",
    "sambaNTPassword",
    "sambaLMPassword",
    "sambaPasswordHistory",
    "ipaNTHash",
    "unicodePwd",
    "dBCSPwd",
    "supplementalCredentials",
    "ntPwdHistory",
    "lmPwdHistory",
    "krbPrincipalKey",
    "userPKCS12",
];

/// A password hash as a directory keeps it.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordSecret {
    /// An NT hash: sent only as a PPH1 record derived from it.
    Nt(NtHash),
    /// A `userPassword` value in a scheme the tenant verifies natively.
    Stored(String),
}

impl fmt::Debug for PasswordSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSecret::Nt(_) => f.write_str("Nt(…)"),
            PasswordSecret::Stored(_) => f.write_str("Stored(…)"),
        }
    }
}

/// What one import found for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Secret(PasswordSecret),
    /// A password attribute was there but cannot be used (named in the log, never shown).
    Unusable(String),
}

/// A user's password as captured during an import. Kept small (no DN: the
/// metaverse object is found by `id`): an import holds one per user.
#[derive(Debug, Clone)]
pub struct Captured {
    pub id: SourceId,
    pub found: Found,
    /// "Must change password at next logon" on-premises.
    pub must_change: bool,
}

/// One item for the target: the tenant user (by immutableId) and its secret.
#[derive(Debug, Clone)]
pub struct CredentialPush {
    pub immutable_id: String,
    pub secret: PasswordSecret,
    pub must_change: bool,
}

/// What the target did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    pub stored: u64,
    /// Already in the tenant as it is (not sent again).
    pub unchanged: u64,
    /// (immutableId, why) for items the target refused.
    pub failed: Vec<(String, String)>,
}

/// Removes every secret attribute from `entry`; returns the best password
/// found: an NT hash over a `userPassword` (the PPH1 record derived from it
/// is slower to attack than most `userPassword` schemes).
pub fn take_secrets(entry: &mut Entry) -> Option<Found> {
    let mut nt = None;
    let mut stored = None;
    for name in SECRET_ATTRIBUTES {
        let Some(attribute) = entry.remove(name) else { continue };
        let Some(value) = attribute.values.into_iter().next() else { continue };
        let bytes = value.as_bytes().to_vec();
        if name.eq_ignore_ascii_case("sambaNTPassword") || name.eq_ignore_ascii_case("ipaNTHash") {
            nt = Some(if NtHash::is_unset_marker(&bytes) {
                Found::Unusable(format!("{name} says no password is set"))
            } else {
                match NtHash::from_stored(&bytes) {
                    Ok(h) => Found::Secret(PasswordSecret::Nt(h)),
                    Err(e) => Found::Unusable(format!("{name}: {e}")),
                }
            });
        } else if name.eq_ignore_ascii_case("userPassword") {
            stored = Some(match StoredPassword::parse(&bytes) {
                Ok(_) => match String::from_utf8(bytes) {
                    Ok(text) => Found::Secret(PasswordSecret::Stored(text)),
                    Err(_) => Found::Unusable("userPassword is not text".into()),
                },
                Err(e) => Found::Unusable(format!("userPassword: {e}")),
            });
        }
    }
    match (nt, stored) {
        (Some(Found::Secret(s)), _) => Some(Found::Secret(s)),
        (_, Some(Found::Secret(s))) => Some(Found::Secret(s)),
        (nt, stored) => nt.or(stored),
    }
}

/// "Must change password at next logon": AD `pwdLastSet` = 0, OpenLDAP
/// ppolicy `pwdReset` = TRUE.
pub fn must_change(entry: &Entry) -> bool {
    entry.first_text("pwdLastSet") == Some("0")
        || entry.first_text("pwdReset").is_some_and(|v| v.eq_ignore_ascii_case("TRUE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::Value;

    fn entry(attrs: &[(&str, &[u8])]) -> Entry {
        let mut e = Entry::new(directory::Dn::parse("uid=a,dc=x").unwrap());
        for (k, v) in attrs {
            e.add(k, Value::from_bytes_as(false, v.to_vec()));
        }
        e
    }

    #[test]
    fn secrets_leave_the_entry_and_nt_hashes_win() {
        let mut e = entry(&[
            ("cn", b"a"),
            ("userPassword", b"{SSHA}Ouc4sZrcX2+ujbTggIsu9xBJo9saLNyZ"),
            ("sambaNTPassword", b"92937945B518814341DE3F726500D4FF"),
            ("sambaLMPassword", b"AAD3B435B51404EEAAD3B435B51404EE"),
        ]);
        let found = take_secrets(&mut e);
        assert!(matches!(found, Some(Found::Secret(PasswordSecret::Nt(_)))));
        assert_eq!(e.attribute_count(), 1, "only cn is left");
        assert_eq!(format!("{found:?}"), "Some(Secret(Nt(…)))");

        let mut e = entry(&[("userPassword", b"{SSHA}Ouc4sZrcX2+ujbTggIsu9xBJo9saLNyZ")]);
        assert!(matches!(take_secrets(&mut e), Some(Found::Secret(PasswordSecret::Stored(_)))));
        let mut e = entry(&[("userPassword", b"plaintext")]);
        assert!(matches!(take_secrets(&mut e), Some(Found::Unusable(_))));
        assert!(!e.has("userPassword"), "an unusable secret is still removed");
        let mut e = entry(&[("cn", b"a")]);
        assert_eq!(take_secrets(&mut e), None);
    }

    #[test]
    fn must_change_flags() {
        assert!(must_change(&entry(&[("pwdLastSet", b"0")])));
        assert!(must_change(&entry(&[("pwdReset", b"TRUE")])));
        assert!(!must_change(&entry(&[("pwdLastSet", b"133000000000000000")])));
    }
}
