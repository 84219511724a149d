//! Requests per bearer token: a token bucket each, so one client (a
//! runaway script, a read-only token paging through everything) cannot
//! take the tenant's whole capacity. Over the limit the answer is
//! `429 Too Many Requests` with `Retry-After`, which idbridge's own
//! connector honours. Keys are token ids, so memory is bounded by the
//! tokens that exist.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Requests per second and burst for one token. `per_sec == 0` is no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub per_sec: u32,
    pub burst: u32,
}

impl Default for Limit {
    /// Far above what a sync needs (one Bulk request carries 1,000
    /// operations), low enough that one token cannot starve the others.
    fn default() -> Self {
        Limit { per_sec: 2000, burst: 4000 }
    }
}

#[derive(Debug)]
pub struct RateLimiter {
    limit: Limit,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(limit: Limit) -> RateLimiter {
        RateLimiter { limit, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request from `key`'s bucket, or says in how many whole
    /// seconds (at least 1) one will be there.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        if self.limit.per_sec == 0 {
            return Ok(());
        }
        let rate = f64::from(self.limit.per_sec);
        let burst = f64::from(self.limit.burst.max(1));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - *tokens) / rate).ceil();
            // Finite and small: rate ≥ 1 and the deficit < 1.
            Err(if wait.is_finite() && wait >= 1.0 { wait as u64 } else { 1 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_with_a_wait_and_tokens_are_apart() {
        let limiter = RateLimiter::new(Limit { per_sec: 1, burst: 3 });
        for _ in 0..3 {
            assert_eq!(limiter.check("a"), Ok(()));
        }
        assert_eq!(limiter.check("a"), Err(1));
        assert_eq!(limiter.check("b"), Ok(()), "another token has its own bucket");
        assert_eq!(RateLimiter::new(Limit { per_sec: 0, burst: 0 }).check("a"), Ok(()));
    }
}
