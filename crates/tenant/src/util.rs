//! Small helpers: UTC timestamps (RFC 3339), random ids and tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

/// Seconds since the epoch → `YYYY-MM-DDTHH:MM:SS.mmmZ` (always three
/// fractional digits, so stored timestamps sort as text).
pub fn rfc3339(secs: i64, millis: u32) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .map(|t| t + time::Duration::milliseconds(i64::from(millis.min(999))))
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// Seconds since the epoch → `YYYY-MM-DD HH:MM:SS UTC`, for people.
pub fn display_time(secs: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(secs).ok().and_then(|t| t.format(&format).ok()).unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SS[.fff](Z|±hh:mm)` → seconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(text, &Rfc3339).ok().map(|t| t.unix_timestamp())
}

pub use proto::url::check_web_url;

/// RFC 3986's unreserved characters stay; everything else is percent-encoded.
const ENCODED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A query-string value (or path segment), percent-encoded.
pub fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, ENCODED).to_string()
}

pub fn now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // Fail closed: codes, sessions, CSRF tokens and salts come from here, and
    // predictable bytes would be worse than no service. The kernel's RNG does
    // not fail on a working system, so the process stops rather than go on.
    if SystemRandom::new().fill(&mut b).is_err() {
        tracing::error!("the system random number generator failed; stopping");
        eprintln!("fatal: the system random number generator failed");
        std::process::abort();
    }
    b
}

/// A version-7 UUID (RFC 9562): the time in milliseconds, then 74 random
/// bits. Ids made one after another sort together, so the many indexes on
/// ids (objects, members, claims, audit) grow at one end instead of
/// dirtying a page anywhere in the tree for every insert: a bulk load
/// writes a fraction of the pages a random id costs. An id tells when its
/// object was made, which `meta.created` says anyway.
pub fn new_id() -> String {
    let mut b = random_bytes::<16>();
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let (stamp, _) = b.split_at_mut(6);
    stamp.copy_from_slice(millis.to_be_bytes().get(2..).unwrap_or(&[0; 6]));
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    let (time_low, rest) = b.split_at(4);
    let (time_mid, rest) = rest.split_at(2);
    let (time_high, rest) = rest.split_at(2);
    let (clock, node) = rest.split_at(2);
    let mut id = String::with_capacity(36);
    for (i, part) in [time_low, time_mid, time_high, clock, node].into_iter().enumerate() {
        if i > 0 {
            id.push('-');
        }
        // Appended in place: a Bulk request makes an id per object, and a
        // `format!` per byte was a percent of the tenant's work.
        data_encoding::HEXLOWER.encode_append(part, &mut id);
    }
    id
}

/// 32 random bytes, base64url: codes, refresh tokens, sessions, CSRF
/// tokens. Fails closed (see [`random_bytes`]).
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// A bearer token: `idb_` and a [`random_token`].
pub fn new_token() -> Option<String> {
    Some(format!("idb_{}", random_token()))
}

pub fn to_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().to_vec()
}

/// A `WHERE` clause built from optional filters, with numbered parameters.
#[derive(Debug, Default)]
pub struct Where {
    clauses: Vec<String>,
    pub values: Vec<crate::db::OwnedValue>,
}

impl Where {
    /// Adds `clause`, whose one `?` stands for `value`.
    pub fn and(&mut self, clause: &str, value: impl crate::db::ToSql) {
        self.values.push(crate::db::OwnedValue::of(value.to_sql()));
        self.clauses.push(clause.replace('?', &format!("?{}", self.values.len())));
    }

    /// `WHERE a AND b …`, or nothing.
    pub fn sql(&self) -> String {
        if self.clauses.is_empty() { String::new() } else { format!("WHERE {}", self.clauses.join(" AND ")) }
    }

    /// Adds a last parameter (say, a LIMIT) and returns its placeholder.
    pub fn param(&mut self, value: impl crate::db::ToSql) -> String {
        self.values.push(crate::db::OwnedValue::of(value.to_sql()));
        format!("?{}", self.values.len())
    }
}

/// Runs database or CPU-heavy `work` off the async threads; `what` names it
/// if the worker dies (a panic is reported as an error, never propagated).
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> crate::error::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(crate::error::TenantError::Invalid(format!("{what} worker failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints() {
        for secs in [0, 951_782_400, 1_800_000_000, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&rfc3339(secs, 250)), Some(secs));
        }
        assert_eq!(parse_rfc3339("2026-11-25T14:00:00+01:00"), parse_rfc3339("2026-11-25T13:00:00Z"));
        assert_eq!(parse_rfc3339("2026-13-25T14:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn timestamps_and_ids() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_868_800, 5), "2000-03-01T00:00:00.005Z");
        assert_eq!(rfc3339(1_700_000_000, 0), "2023-11-14T22:13:20.000Z");
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.chars().nth(14), Some('7'));
        assert!(webauthn_rs::prelude::Uuid::parse_str(&id).is_ok_and(|u| u.get_version_num() == 7), "{id}");
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert!(matches!(id.chars().nth(19), Some('8' | '9' | 'a' | 'b')), "{id}");
        let later = new_id();
        assert_ne!(later, id);
        // The first 48 bits are the time: ids made later never sort first.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(new_id() > id, "{id}");
        assert!(new_token().is_some_and(|t| t.starts_with("idb_") && t.len() > 40));
    }
}
