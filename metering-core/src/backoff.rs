//! Full-jitter exponential backoff and `Retry-After` parsing (pure).

use std::time::{Duration, SystemTime};

/// Retry policy for one attempt cycle against the control plane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try within one cycle (default 2).
    pub max_retries: u32,
    /// Base delay of the exponential (default 200 ms).
    pub base: Duration,
    /// Upper bound of any computed delay (default 10 s).
    pub cap: Duration,
    /// Upper bound applied to a server's `Retry-After` (default 60 s).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `retry` (0-based) given a uniform sample `unit` in `[0, 1)`:
    /// `unit * min(cap, base * 2^retry)` ("full jitter"). A server `Retry-After` wins, clamped
    /// to `max_retry_after`.
    pub fn delay(&self, retry: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        let exp = self.base.saturating_mul(2u32.saturating_pow(retry.min(31)));
        let ceiling = exp.min(self.cap);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling.mul_f64(unit)
    }
}

/// Parse a `Retry-After` header: delta-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let when: SystemTime = when.with_timezone(&chrono::Utc).into();
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        // 2001-09-09T01:46:40Z is exactly 1e9; ten seconds later:
        assert_eq!(
            parse_retry_after("Sun, 09 Sep 2001 01:46:50 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 09 Sep 2001 01:46:30 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_wins_but_is_clamped() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(0, 0.5, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(0, 0.5, Some(Duration::from_secs(3600))),
            p.max_retry_after
        );
    }

    proptest! {
        #[test]
        fn delay_is_within_the_full_jitter_window(retry in 0u32..100, unit in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let d = p.delay(retry, unit, None);
            let ceiling = p.base.saturating_mul(2u32.saturating_pow(retry.min(31))).min(p.cap);
            prop_assert!(d <= ceiling);
            prop_assert!(d <= Duration::from_secs(10));
        }

        #[test]
        fn delay_grows_with_unit(retry in 0u32..20, a in 0.0f64..1.0, b in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(p.delay(retry, lo, None) <= p.delay(retry, hi, None));
        }
    }
}
