//! Sign-in policy: who must give a second factor, whether people without
//! one are asked to register one (a registration campaign), and whether a
//! federated identity provider's multi-factor sign-in counts here. No HTTP.
//!
//! A second factor is required when any of these holds: the tenant requires
//! it of everyone; the user is a member (directly or through nested groups)
//! of a group the policy names; the user holds an admin console role and
//! the policy covers administrators; the application requires it; the
//! application asked for it (`acr_values`). A user who has registered a
//! method is always asked for it after the password, required or not.

use serde::{Deserialize, Serialize};

use crate::db::{Connection, OptionalExtension, params};
use crate::error::{Result, TenantError};
use crate::objects::{self, Kind};

/// The tenant's sign-in policy (`idbridge tenant sign-in-policy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SignInPolicy {
    /// Require a second factor of every user.
    pub everyone: bool,
    /// Require it of the members of these groups (ids), nested included.
    pub groups: Vec<String>,
    /// Require it of everyone with an admin console role.
    pub administrators: bool,
    /// Ask users without a method to register one after the password.
    pub registration_campaign: bool,
    /// How many times a person may answer the campaign "not now"; after
    /// that, registering is required. `None`: always skippable.
    pub campaign_skips: Option<u32>,
    /// A federated sign-in whose identity provider says it used several
    /// factors (OIDC `amr` with `mfa`, `otp`, `hwk`, `swk`, … or a SAML
    /// multi-factor AuthnContextClassRef) satisfies a requirement here.
    pub accept_federated_mfa: bool,
}

const META_KEY: &str = "sign_in_policy";

impl SignInPolicy {
    pub fn load(conn: &Connection) -> Result<SignInPolicy> {
        match crate::store::get_meta(conn, META_KEY)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| TenantError::Invalid(format!("the stored sign-in policy does not read: {e}"))),
            None => Ok(SignInPolicy::default()),
        }
    }

    /// Saves the policy; every group must exist.
    pub fn save(&self, conn: &Connection) -> Result<()> {
        for id in &self.groups {
            if objects::load(conn, Some(Kind::Group), id)?.is_none() {
                return Err(TenantError::NotFound(format!("group {id}")));
            }
        }
        let text = serde_json::to_string(self)
            .map_err(|e| TenantError::Invalid(format!("cannot encode the sign-in policy: {e}")))?;
        crate::store::set_meta(conn, META_KEY, &text)
    }
}

/// Why a second factor is required: shown to the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Everyone,
    /// A member of this group (its display name).
    Group(String),
    Administrator,
    /// This application (its name) requires it.
    Application(String),
    /// The application asked for it in this sign-in (`acr_values`).
    Requested,
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requirement::Everyone => write!(f, "Your organisation requires a second sign-in method."),
            Requirement::Group(group) => {
                write!(f, "Your organisation requires a second sign-in method of the members of {group}.")
            }
            Requirement::Administrator => {
                write!(f, "Your organisation requires a second sign-in method of administrators.")
            }
            Requirement::Application(app) => write!(f, "{app} requires a second sign-in method."),
            Requirement::Requested => write!(f, "The application asked for a second sign-in method."),
        }
    }
}

/// Whether `user_id` must give a second factor to sign in to `client`
/// (`requested`: the application asked for it), and why.
pub fn required(
    conn: &Connection,
    policy: &SignInPolicy,
    user_id: &str,
    client: Option<&crate::oidc::clients::Client>,
    requested: bool,
) -> Result<Option<Requirement>> {
    if requested {
        return Ok(Some(Requirement::Requested));
    }
    if let Some(client) = client.filter(|c| c.require_mfa) {
        return Ok(Some(Requirement::Application(client.name.clone())));
    }
    if policy.everyone {
        return Ok(Some(Requirement::Everyone));
    }
    if !policy.groups.is_empty() {
        let member_of = crate::console::groups_of(conn, user_id)?;
        if let Some(group) = policy.groups.iter().find(|g| member_of.contains(g)) {
            let name = objects::load(conn, Some(Kind::Group), group)?
                .and_then(|g| g.data.get("displayName").and_then(|n| n.as_str()).map(str::to_string))
                .unwrap_or_else(|| group.clone());
            return Ok(Some(Requirement::Group(name)));
        }
    }
    if policy.administrators && crate::console::role_of(conn, user_id)?.is_some() {
        return Ok(Some(Requirement::Administrator));
    }
    Ok(None)
}

/// What a user without a second factor meets after the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Register a method now: there is no other way in.
    Required(Requirement),
    /// The campaign asks; "not now" is allowed (`skips_left`: how many more
    /// times; `None`: always).
    Offered { skips_left: Option<u32> },
    /// Nothing to ask.
    NotAsked,
}

fn skips_used(conn: &Connection, user_id: &str) -> Result<u32> {
    Ok(conn
        .query_row("SELECT skips FROM mfa_campaign_skips WHERE user_id = ?1", params![user_id], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// The registration step for `user_id`, who has no method yet.
pub fn registration(
    conn: &Connection,
    policy: &SignInPolicy,
    user_id: &str,
    requirement: Option<Requirement>,
) -> Result<Registration> {
    if let Some(why) = requirement {
        return Ok(Registration::Required(why));
    }
    if !policy.registration_campaign {
        return Ok(Registration::NotAsked);
    }
    match policy.campaign_skips {
        None => Ok(Registration::Offered { skips_left: None }),
        Some(allowed) => match allowed.checked_sub(skips_used(conn, user_id)?).filter(|left| *left > 0) {
            Some(left) => Ok(Registration::Offered { skips_left: Some(left) }),
            None => Ok(Registration::Required(Requirement::Everyone)),
        },
    }
}

/// "Not now": counts a skip of the campaign. `false` when none is left
/// (registering is required then).
pub fn skip(conn: &Connection, policy: &SignInPolicy, user_id: &str) -> Result<bool> {
    if !matches!(registration(conn, policy, user_id, None)?, Registration::Offered { .. }) {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO mfa_campaign_skips(user_id, skips) VALUES(?1, 1)
         ON CONFLICT(user_id) DO UPDATE SET skips = mfa_campaign_skips.skips + 1",
        params![user_id],
    )?;
    crate::audit::record(conn, user_id, "mfa-registration-skipped", Some("User"), Some(user_id), None)?;
    Ok(true)
}

/// Whether a federated identity provider's `amr` values say it used
/// several factors (RFC 8176).
pub fn federated_amr_is_mfa(amr: &[String]) -> bool {
    const MULTI: &[&str] = &["mfa", "otp", "hwk", "swk", "sms", "tel", "fpt", "face", "iris", "retina", "vbm", "sc"];
    amr.iter().any(|m| MULTI.contains(&m.as_str()))
}

/// Whether a SAML AuthnContextClassRef names a multi-factor sign-in.
pub fn saml_context_is_mfa(class_ref: &str) -> bool {
    const MULTI: &[&str] = &[
        "http://schemas.microsoft.com/claims/multipleauthn",
        "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract",
        "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorUnregistered",
        "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken",
        "urn:oasis:names:tc:SAML:2.0:ac:classes:Smartcard",
        "urn:oasis:names:tc:SAML:2.0:ac:classes:SmartcardPKI",
        "https://refeds.org/profile/mfa",
    ];
    MULTI.contains(&class_ref.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federated_multi_factor_is_recognised() {
        let amr = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(federated_amr_is_mfa(&amr(&["pwd", "mfa"])));
        assert!(federated_amr_is_mfa(&amr(&["hwk"])));
        assert!(!federated_amr_is_mfa(&amr(&["pwd"])));
        assert!(!federated_amr_is_mfa(&amr(&[])));
        assert!(saml_context_is_mfa("http://schemas.microsoft.com/claims/multipleauthn"));
        assert!(saml_context_is_mfa("https://refeds.org/profile/mfa"));
        assert!(!saml_context_is_mfa("urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"));
    }
}
