//! Second factors: authenticator-app codes (TOTP, RFC 6238: HMAC-SHA-1,
//! 6 digits, 30-second steps, one step of clock drift either way) and
//! single-use recovery codes. No HTTP here.
//!
//! A TOTP key is stored sealed under the tenant's secrets key; a code is
//! accepted once (the step it belongs to must be later than the last one
//! accepted, checked and advanced in one statement, so two tenant nodes
//! cannot both accept it). Recovery codes are stored as SHA-256 hashes:
//! they are random (50 bits), so a slow hash would add nothing.

use crate::db::{Connection, OptionalExtension, params};
use crate::error::{Result, TenantError};
use crate::util::{new_id, now_secs, random_bytes, sha256, to_hex};

/// Seconds per step, digits per code and accepted drift (RFC 6238's defaults).
pub const STEP_SECS: i64 = 30;
pub const DIGITS: u32 = 6;
const DRIFT_STEPS: i64 = 1;
/// Recovery codes made at the first enrolment.
pub const RECOVERY_CODES: usize = 10;
/// A label longer than this is refused (it is shown on pages and in lists).
pub(crate) const MAX_LABEL_CHARS: usize = 64;

/// A key for an authenticator app, before it is confirmed: shown to the
/// person (as a QR code of `uri` and as `secret`), not stored yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpOffer {
    /// The key in base32 without padding, as apps accept it typed in.
    pub secret: String,
    /// `otpauth://totp/…` for the QR code.
    pub uri: String,
}

/// A registered second factor, as lists show it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MethodInfo {
    pub id: String,
    pub kind: MethodKind,
    pub label: String,
    /// Epoch seconds.
    pub created: i64,
    pub last_used: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodKind {
    Totp,
    /// A WebAuthn credential ([`crate::passkeys`]).
    Passkey,
}

impl MethodKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Totp => "totp",
            MethodKind::Passkey => "passkey",
        }
    }

    fn parse(text: &str) -> Option<MethodKind> {
        match text {
            "totp" => Some(MethodKind::Totp),
            "passkey" => Some(MethodKind::Passkey),
            _ => None,
        }
    }
}

/// What confirming an enrolment gives: the new method, and the recovery
/// codes when it was the user's first (shown once, never again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub method: MethodInfo,
    pub recovery_codes: Vec<String>,
}

/// How a second factor was proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// An authenticator code of this method.
    Totp { method_id: String },
    /// A recovery code; this many are left unused.
    RecoveryCode { left: usize },
}

/// Why a code was refused. The texts are what the person sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("That code is not right. Enter the code your authenticator app shows now.")]
    Wrong,
    #[error("That code was already used. Wait for the next code and enter it.")]
    Reused,
    #[error("Enter the {DIGITS}-digit code from your authenticator app, or a recovery code.")]
    Malformed,
    #[error("The label must be 1 to {MAX_LABEL_CHARS} characters.")]
    BadLabel,
    #[error("The key of this enrolment is not valid: start again.")]
    BadSecret,
}

/// A new key for `account` (the user name), named after `issuer` in the app.
pub fn offer_totp(issuer: &str, account: &str) -> TotpOffer {
    let key = random_bytes::<20>();
    totp_offer(issuer, account, &data_encoding::BASE32_NOPAD.encode(&key))
}

/// The offer of an existing key (the enrolment form shown again after a wrong code).
pub fn totp_offer(issuer: &str, account: &str, secret: &str) -> TotpOffer {
    let secret = secret.to_string();
    let label = format!("{}:{}", crate::util::urlencode(issuer), crate::util::urlencode(account));
    let uri = format!(
        "otpauth://totp/{label}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        crate::util::urlencode(&secret),
        crate::util::urlencode(issuer)
    );
    TotpOffer { secret, uri }
}

/// Registers the key of an offer once the person proves their app has it
/// (a current code). Nothing is stored when the code is wrong.
pub fn confirm_totp(
    conn: &Connection,
    user_id: &str,
    secret: &str,
    code: &str,
    label: &str,
) -> Result<std::result::Result<Enrolled, CodeError>> {
    let checked = checked_label(label).ok_or(CodeError::BadLabel).and_then(|label| {
        let key = decode_secret(secret).ok_or(CodeError::BadSecret)?;
        let code = parse_totp(code).ok_or(CodeError::Malformed)?;
        let step = matching_step(&key, code, now_secs(), i64::MIN).ok_or(CodeError::Wrong)?;
        Ok((label, key, step))
    });
    let (label, key, step) = match checked {
        Ok(found) => found,
        Err(e) => {
            let reason = match e {
                CodeError::Wrong => "wrong-code",
                CodeError::Reused => "code-reused",
                CodeError::Malformed => "code-malformed",
                CodeError::BadLabel => "bad-label",
                CodeError::BadSecret => "bad-key",
            };
            registration_refused(conn, user_id, MethodKind::Totp, reason)?;
            return Ok(Err(e));
        }
    };
    let sealed = crate::secrets::seal_text(conn, &data_encoding::BASE32_NOPAD.encode(&key))?;
    let first = count(conn, user_id)? == 0;
    let id = new_id();
    let created = now_secs();
    conn.execute(
        "INSERT INTO mfa_methods(id, user_id, kind, label, secret, last_step, created) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, user_id, MethodKind::Totp.as_str(), label, sealed, step, created],
    )?;
    let recovery_codes = if first { new_recovery_codes(conn, user_id)? } else { Vec::new() };
    let detail = serde_json::json!({"kind": "totp", "label": label});
    crate::audit::record(conn, user_id, "mfa-registered", Some("User"), Some(user_id), Some(&detail))?;
    let method = MethodInfo { id, kind: MethodKind::Totp, label: label.to_string(), created, last_used: None };
    Ok(Ok(Enrolled { method, recovery_codes }))
}

/// Checks a second factor: a current code of one of the user's
/// authenticator apps (each accepted once), or an unused recovery code.
pub fn verify(conn: &Connection, user_id: &str, code: &str) -> Result<std::result::Result<Proof, CodeError>> {
    if let Some(code) = parse_totp(code) {
        let now = now_secs();
        let rows: Vec<(String, String)> = conn
            .prepare("SELECT id, secret FROM mfa_methods WHERE user_id = ?1 AND kind = 'totp' ORDER BY created")?
            .query_map(params![user_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<crate::db::Result<_>>()?;
        let mut reused = false;
        for (id, sealed) in rows {
            let Some(key) = decode_secret(&crate::secrets::open_text(conn, &sealed)?) else { continue };
            let Some(step) = matching_step(&key, code, now, i64::MIN) else { continue };
            // Accepted once: the step must be later than the last accepted,
            // and advancing it is the check (one statement, any node).
            let advanced = conn.execute(
                "UPDATE mfa_methods SET last_step = ?1, last_used = ?2 WHERE id = ?3 AND last_step < ?1",
                params![step, now, id],
            )?;
            if advanced == 1 {
                return Ok(Ok(Proof::Totp { method_id: id }));
            }
            // The code is right but its step was accepted before.
            reused = true;
        }
        return Ok(Err(if reused { CodeError::Reused } else { CodeError::Wrong }));
    }
    let Some(normalized) = normalize_recovery_code(code) else { return Ok(Err(CodeError::Malformed)) };
    let used = conn.execute(
        "UPDATE recovery_codes SET used = ?1 WHERE user_id = ?2 AND code_hash = ?3 AND used IS NULL",
        params![now_secs(), user_id, to_hex(&sha256(normalized.as_bytes()))],
    )?;
    if used == 0 {
        return Ok(Err(CodeError::Wrong));
    }
    let left: i64 = conn.query_row(
        "SELECT count(*) FROM recovery_codes WHERE user_id = ?1 AND used IS NULL",
        params![user_id],
        |r| r.get(0),
    )?;
    Ok(Ok(Proof::RecoveryCode { left: usize::try_from(left).unwrap_or(0) }))
}

/// The user's registered methods, oldest first.
pub fn methods(conn: &Connection, user_id: &str) -> Result<Vec<MethodInfo>> {
    let rows: Vec<(String, String, String, i64, Option<i64>)> = conn
        .prepare("SELECT id, kind, label, created, last_used FROM mfa_methods WHERE user_id = ?1 ORDER BY created, id")?
        .query_map(params![user_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<crate::db::Result<_>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, kind, label, created, last_used)| {
            Some(MethodInfo { id, kind: MethodKind::parse(&kind)?, label, created, last_used })
        })
        .collect())
}

/// Unused recovery codes left.
pub fn recovery_codes_left(conn: &Connection, user_id: &str) -> Result<usize> {
    let left: i64 = conn.query_row(
        "SELECT count(*) FROM recovery_codes WHERE user_id = ?1 AND used IS NULL",
        params![user_id],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(left).unwrap_or(0))
}

/// Removes one method (a lost device). With the last one go the recovery
/// codes: they belonged to the second factor that is gone. Audited as `actor`.
pub fn remove(conn: &Connection, actor: &str, user_id: &str, method_id: &str) -> Result<bool> {
    let removed =
        conn.execute("DELETE FROM mfa_methods WHERE id = ?1 AND user_id = ?2", params![method_id, user_id])?;
    if removed == 0 {
        return Ok(false);
    }
    if count(conn, user_id)? == 0 {
        conn.execute("DELETE FROM recovery_codes WHERE user_id = ?1", params![user_id])?;
    }
    let detail = serde_json::json!({"method": method_id});
    crate::audit::record(conn, actor, "mfa-removed", Some("User"), Some(user_id), Some(&detail))?;
    Ok(true)
}

/// Everything of a deleted user.
pub(crate) fn forget_user(conn: &Connection, user_id: &str) -> Result<()> {
    conn.execute("DELETE FROM mfa_methods WHERE user_id = ?1", params![user_id])?;
    conn.execute("DELETE FROM recovery_codes WHERE user_id = ?1", params![user_id])?;
    Ok(())
}

/// Audits a registration that was refused (nothing was stored): `reason`
/// names why, for the administrator reading the audit.
pub(crate) fn registration_refused(conn: &Connection, user_id: &str, kind: MethodKind, reason: &str) -> Result<()> {
    let detail = serde_json::json!({"kind": kind.as_str(), "reason": reason});
    crate::audit::record(conn, user_id, "mfa-registration-refused", Some("User"), Some(user_id), Some(&detail))
}

/// A method's name as the person typed it, trimmed; `None` if empty, too
/// long or with control characters.
pub(crate) fn checked_label(label: &str) -> Option<&str> {
    let label = label.trim();
    (!label.is_empty() && label.chars().count() <= MAX_LABEL_CHARS && !label.chars().any(char::is_control))
        .then_some(label)
}

pub(crate) fn count(conn: &Connection, user_id: &str) -> Result<i64> {
    Ok(conn
        .query_row("SELECT count(*) FROM mfa_methods WHERE user_id = ?1", params![user_id], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Ten new codes replacing any the user had; returned once, stored hashed.
pub fn new_recovery_codes(conn: &Connection, user_id: &str) -> Result<Vec<String>> {
    conn.execute("DELETE FROM recovery_codes WHERE user_id = ?1", params![user_id])?;
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    while codes.len() < RECOVERY_CODES {
        // 50 bits as ten base32 letters, grouped for reading: ABCDE-FGHIJ.
        let letters = data_encoding::BASE32_NOPAD.encode(&random_bytes::<7>());
        let (first, second) = (letters.get(..5).unwrap_or_default(), letters.get(5..10).unwrap_or_default());
        let code = format!("{first}-{second}");
        let Some(normalized) = normalize_recovery_code(&code) else { continue };
        let hash = to_hex(&sha256(normalized.as_bytes()));
        let added = conn.execute(
            "INSERT INTO recovery_codes(user_id, code_hash) VALUES(?1, ?2) ON CONFLICT DO NOTHING",
            params![user_id, hash],
        )?;
        if added == 1 {
            codes.push(code);
        }
    }
    crate::audit::record(conn, user_id, "mfa-recovery-codes-issued", Some("User"), Some(user_id), None)?;
    Ok(codes)
}

/// A recovery code as typed (any case, spaces or dashes) in its stored form.
fn normalize_recovery_code(code: &str) -> Option<String> {
    let letters: String =
        code.chars().filter(|c| !c.is_whitespace() && *c != '-').map(|c| c.to_ascii_uppercase()).collect();
    (letters.len() == 10 && letters.chars().all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)))
        .then_some(letters)
}

/// Six digits (spaces allowed, as apps show "123 456").
fn parse_totp(code: &str) -> Option<u32> {
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() != DIGITS as usize || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A key typed or stored in base32 (any case, spaces ignored); 10 to 64 bytes.
fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    let cleaned: String =
        secret.chars().filter(|c| !c.is_whitespace() && *c != '=').map(|c| c.to_ascii_uppercase()).collect();
    let key = data_encoding::BASE32_NOPAD.decode(cleaned.as_bytes()).ok()?;
    (10..=64).contains(&key.len()).then_some(key)
}

/// The time step within the accepted drift of `now` whose code is `code`
/// and that is later than `after`, latest first.
fn matching_step(key: &[u8], code: u32, now: i64, after: i64) -> Option<i64> {
    let current = now.div_euclid(STEP_SECS);
    (-DRIFT_STEPS..=DRIFT_STEPS)
        .rev()
        .map(|d| current + d)
        .filter(|step| *step > after && *step >= 0)
        // (Comparing two integers takes the same time whatever they hold.)
        .find(|step| hotp(key, *step as u64) == code)
}

/// RFC 4226's HOTP value of `counter`, `DIGITS` digits.
pub(crate) fn hotp(key: &[u8], counter: u64) -> u32 {
    let mac =
        ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key), &counter.to_be_bytes());
    let mac = mac.as_ref();
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let mut word = [0u8; 4];
    if let Some(bytes) = mac.get(offset..offset + 4) {
        word.copy_from_slice(bytes);
    }
    (u32::from_be_bytes(word) & 0x7fff_ffff) % 10u32.pow(DIGITS)
}

/// The code an app shows at `secs` (tests and the benchmark compare it with
/// an independent implementation).
pub fn code_at(secret: &str, secs: i64) -> std::result::Result<String, TenantError> {
    let key = decode_secret(secret).ok_or_else(|| TenantError::Invalid("not a base32 key".into()))?;
    Ok(format!("{:0width$}", hotp(&key, secs.div_euclid(STEP_SECS).max(0) as u64), width = DIGITS as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B (SHA-1, the 20-byte ASCII key), last six digits.
    #[test]
    fn rfc_6238_vectors() {
        let key = b"12345678901234567890";
        for (secs, code) in [
            (59_i64, 94_287_082_u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
        ] {
            assert_eq!(hotp(key, (secs / STEP_SECS) as u64), code % 1_000_000, "at {secs}");
        }
    }

    #[test]
    fn codes_within_one_step_either_way_match_and_no_further() {
        let key = b"12345678901234567890";
        let now = 1_234_567_890;
        let step = now / STEP_SECS;
        for d in [-1, 0, 1] {
            assert_eq!(matching_step(key, hotp(key, (step + d) as u64), now, i64::MIN), Some(step + d));
        }
        for d in [-3, -2, 2] {
            assert_eq!(matching_step(key, hotp(key, (step + d) as u64), now, i64::MIN), None, "{d} steps away");
        }
        // Already accepted: not again.
        assert_eq!(matching_step(key, hotp(key, step as u64), now, step), None);
    }

    /// The code `oathtool` (Debian's, an implementation independent of this
    /// one) computes for `secret` at `secs`.
    fn oathtool(secret: &str, secs: i64) -> String {
        testkit::oathtool(secret, secs).unwrap()
    }

    #[test]
    fn enrolment_codes_and_recovery_codes_against_oathtool() {
        let dir = std::env::temp_dir().join(format!("idbridge-mfa-{}", crate::util::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::Store::open(&dir.join("tenant.db")).unwrap();
        let conn = store.lock();
        let user = "user-1";
        let offer = offer_totp("Zoë's Tenant", "zoë@example.org");
        assert!(
            offer.uri.starts_with("otpauth://totp/Zo%C3%AB%27s%20Tenant:zo%C3%AB%40example.org?secret="),
            "{}",
            offer.uri
        );
        assert!(offer.uri.contains(&format!("secret={}&", offer.secret)) && offer.uri.contains("&period=30"));
        let now = now_secs();
        assert_eq!(code_at(&offer.secret, now).unwrap(), oathtool(&offer.secret, now), "same code as oathtool");

        // A wrong code or label: refused, nothing stored.
        let wrong = format!("{:06}", (oathtool(&offer.secret, now).parse::<u32>().unwrap() + 1) % 1_000_000);
        assert_eq!(confirm_totp(&conn, user, &offer.secret, &wrong, "Phone").unwrap(), Err(CodeError::Wrong));
        assert_eq!(confirm_totp(&conn, user, &offer.secret, "12345", "Phone").unwrap(), Err(CodeError::Malformed));
        let now_code = oathtool(&offer.secret, now_secs());
        assert_eq!(confirm_totp(&conn, user, &offer.secret, &now_code, " ").unwrap(), Err(CodeError::BadLabel));
        assert_eq!(confirm_totp(&conn, user, "AAAA", &now_code, "Phone").unwrap(), Err(CodeError::BadSecret));
        assert!(methods(&conn, user).unwrap().is_empty());

        // Confirmed with the app's current code: stored sealed, ten recovery codes once.
        let enrolled = confirm_totp(&conn, user, &offer.secret, &now_code, "Zoë's phone").unwrap().unwrap();
        assert_eq!(enrolled.recovery_codes.len(), RECOVERY_CODES);
        let distinct: std::collections::BTreeSet<_> = enrolled.recovery_codes.iter().collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        assert_eq!(methods(&conn, user).unwrap(), std::slice::from_ref(&enrolled.method));
        let stored: String = conn.query_row("SELECT secret FROM mfa_methods", params![], |r| r.get(0)).unwrap();
        assert!(stored.starts_with("enc1:") && !stored.contains(&offer.secret), "the key is sealed");
        let hashes: String =
            conn.query_row("SELECT group_concat(code_hash) FROM recovery_codes", params![], |r| r.get(0)).unwrap();
        assert!(enrolled.recovery_codes.iter().all(|c| !hashes.contains(c.as_str())), "codes are stored hashed");

        // The code that confirmed it is spent; the next step's code works once.
        assert_eq!(verify(&conn, user, &now_code).unwrap(), Err(CodeError::Reused));
        let next = oathtool(&offer.secret, now_secs() + STEP_SECS);
        assert_eq!(verify(&conn, user, &next).unwrap(), Ok(Proof::Totp { method_id: enrolled.method.id.clone() }));
        assert_eq!(verify(&conn, user, &next).unwrap(), Err(CodeError::Reused));
        // Three steps ago: too old (and older than the last accepted).
        let old = oathtool(&offer.secret, now_secs() - 3 * STEP_SECS);
        assert!(verify(&conn, user, &old).unwrap().is_err());
        assert_eq!(verify(&conn, user, "abc").unwrap(), Err(CodeError::Malformed));

        // A recovery code works once, typed any way.
        let first = enrolled.recovery_codes.first().unwrap().to_lowercase().replace('-', " ");
        assert_eq!(verify(&conn, user, &first).unwrap(), Ok(Proof::RecoveryCode { left: RECOVERY_CODES - 1 }));
        assert_eq!(verify(&conn, user, &first).unwrap(), Err(CodeError::Wrong));
        assert_eq!(recovery_codes_left(&conn, user).unwrap(), RECOVERY_CODES - 1);
        // Another user's codes are not this user's.
        let second = enrolled.recovery_codes.get(1).unwrap();
        assert_eq!(verify(&conn, "user-2", second).unwrap(), Err(CodeError::Wrong));

        // A second app: no new recovery codes.
        let other = offer_totp("Tenant", "zoë@example.org");
        let code = oathtool(&other.secret, now_secs());
        let second_app = confirm_totp(&conn, user, &other.secret, &code, "Tablet").unwrap().unwrap();
        assert!(second_app.recovery_codes.is_empty());
        assert_eq!(methods(&conn, user).unwrap().len(), 2);

        // Removing methods; with the last go the recovery codes.
        assert!(!remove(&conn, "admin", user, "no-such-method").unwrap());
        assert!(remove(&conn, "admin", user, &enrolled.method.id).unwrap());
        assert_eq!(recovery_codes_left(&conn, user).unwrap(), RECOVERY_CODES - 1);
        assert!(remove(&conn, "admin", user, &second_app.method.id).unwrap());
        assert_eq!(recovery_codes_left(&conn, user).unwrap(), 0);
        assert!(verify(&conn, user, &oathtool(&other.secret, now_secs() + STEP_SECS)).unwrap().is_err());
        let audited: i64 =
            conn.query_row("SELECT count(*) FROM audit WHERE action LIKE 'mfa-%'", params![], |r| r.get(0)).unwrap();
        let refused: i64 = conn
            .query_row("SELECT count(*) FROM audit WHERE action = 'mfa-registration-refused'", params![], |r| r.get(0))
            .unwrap();
        assert_eq!(audited - refused, 5, "two registrations, one set of recovery codes, two removals");
        assert!(refused > 0, "the refused enrolments are audited too");
        drop(conn);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn input_is_parsed_strictly() {
        assert_eq!(parse_totp("123 456"), Some(123_456));
        for bad in ["12345", "1234567", "12a456", "١٢٣٤٥٦", "", "１２３４５６"] {
            assert_eq!(parse_totp(bad), None, "{bad}");
        }
        assert_eq!(normalize_recovery_code("abcde-fghij").as_deref(), Some("ABCDEFGHIJ"));
        for bad in ["ABCDE-FGHI", "ABCDE-FGH1J", "ÄBCDE-FGHIJ", "ABCDE-FGHIJK"] {
            assert_eq!(normalize_recovery_code(bad), None, "{bad}");
        }
        assert!(decode_secret("JBSWY3DPEHPK3PXP JBSWY3DP").is_some());
        for bad in ["JBSWY3DP", "not base32!", "ÅÄÖ", ""] {
            assert!(decode_secret(bad).is_none(), "{bad}");
        }
    }
}
