//! Times for people: stored timestamps are RFC 3339 in UTC; commands show
//! them in the machine's local time.

use std::sync::OnceLock;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

static LOCAL: OnceLock<UtcOffset> = OnceLock::new();

/// Reads the local UTC offset. Must run before any thread starts: the
/// `time` crate refuses to read it in a multi-threaded process (the C
/// library's time-zone access is not thread-safe). UTC if it cannot.
pub fn init_local_offset() {
    let _ = LOCAL.set(UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC));
}

/// `2026-12-03T10:15:00.123Z` (or epoch seconds, as older stores wrote)
/// → `2026-12-03 11:15:00 +01:00`; unreadable text as it is.
pub fn local_time(stamp: &str) -> String {
    let offset = LOCAL.get().copied().unwrap_or(UtcOffset::UTC);
    let format = format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory]:[offset_minute]"
    );
    let parsed = match stamp.parse::<i64>() {
        Ok(secs) => OffsetDateTime::from_unix_timestamp(secs).ok(),
        Err(_) => OffsetDateTime::parse(stamp, &Rfc3339).ok(),
    };
    parsed.and_then(|t| t.to_offset(offset).format(&format).ok()).unwrap_or_else(|| stamp.to_string())
}

/// Milliseconds as seconds.
pub fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_local_time_and_keeps_what_it_cannot_read() {
        let _ = LOCAL.set(UtcOffset::UTC);
        assert_eq!(local_time("2026-12-03T10:15:00.123Z"), "2026-12-03 10:15:00 +00:00");
        assert_eq!(local_time("1764756900"), "2025-12-03 10:15:00 +00:00");
        assert_eq!(local_time("gestern"), "gestern");
    }
}
