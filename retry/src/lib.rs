//! # tether-retry
//!
//! The one retry timing of Tether: exponential backoff with **full jitter**, and the parser of
//! an HTTP `Retry-After` header. Every place that waits before trying again — the uplink and
//! data-plane sessions of `relay-core`, the control-plane client and the Redis loops of
//! `metering-core`, the agent's reconnects — computes its delay here.
//!
//! Full jitter (as described in the AWS Architecture Blog's "Exponential Backoff and Jitter"):
//! after the n-th consecutive failure (0-based) the delay is uniform in
//! `0 ..= min(cap, base · 2ⁿ)`, optionally raised to a floor. Clients that failed together do
//! not retry together.
//!
//! What this crate does not do: it draws no random numbers and reads no clock. Callers pass a
//! uniform sample in `[0, 1)` (from whatever RNG they inject, so tests are deterministic) and,
//! for `Retry-After` dates, the current time. It does not sleep.

use std::time::{Duration, SystemTime};

/// A full-jitter exponential backoff policy.
///
/// ```
/// use std::time::Duration;
/// use tether_retry::FullJitter;
///
/// let policy = FullJitter::new(Duration::from_millis(100), Duration::from_secs(2));
/// // Third consecutive failure (attempt 2): the ceiling is 400 ms, the sample picks 50 % of it.
/// assert_eq!(policy.delay(2, 0.5), Duration::from_millis(200));
/// // From the fifth failure on, the ceiling is the cap.
/// assert_eq!(policy.delay(30, 0.25), Duration::from_millis(500));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullJitter {
    /// Ceiling of the first delay; doubles per consecutive failure.
    pub base: Duration,
    /// Largest ceiling.
    pub cap: Duration,
    /// Smallest delay returned (0 for pure full jitter). A floor above `cap` wins over `cap`.
    pub floor: Duration,
}

impl FullJitter {
    /// Pure full jitter from `base` up to `cap`, no floor.
    pub fn new(base: Duration, cap: Duration) -> Self {
        FullJitter {
            base,
            cap,
            floor: Duration::ZERO,
        }
    }

    /// The same policy with every delay raised to at least `floor`.
    pub fn with_floor(self, floor: Duration) -> Self {
        FullJitter { floor, ..self }
    }

    /// The ceiling after `attempt` consecutive failures: `min(cap, base · 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(2u32.saturating_pow(attempt.min(31)))
            .min(self.cap)
    }

    /// The delay after `attempt` consecutive failures (0-based) for a uniform sample `unit` in
    /// `[0, 1)`: `max(floor, unit · ceiling(attempt))`. A sample outside `[0, 1]` is clamped
    /// (NaN counts as 0), so the result never exceeds `max(ceiling, floor)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.ceiling(attempt).mul_f64(unit).max(self.floor)
    }
}

/// Counts consecutive failures and turns each into the next [`FullJitter`] delay.
///
/// ```
/// use std::time::Duration;
/// use tether_retry::{Backoff, FullJitter};
///
/// let mut backoff = Backoff::new(FullJitter::new(Duration::from_millis(100), Duration::from_secs(1)));
/// assert_eq!(backoff.next_delay(0.5), Duration::from_millis(50)); // ceiling 100 ms
/// assert_eq!(backoff.next_delay(0.5), Duration::from_millis(100)); // ceiling 200 ms
/// backoff.reset();
/// assert_eq!(backoff.failures(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    policy: FullJitter,
    failures: u32,
}

impl Backoff {
    /// No failure yet.
    pub fn new(policy: FullJitter) -> Self {
        Backoff {
            policy,
            failures: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> FullJitter {
        self.policy
    }

    /// Consecutive failures counted since the last [`reset`](Self::reset).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts a failure and returns the delay before the next attempt (`unit`: a uniform sample
    /// in `[0, 1)`).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let delay = self.policy.delay(self.failures, unit);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// A success: the next failure waits the shortest again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A bounded retry cycle for request/response calls (the metering control-plane client): at
/// most `max_retries` retries after the first try, full-jitter delays, and a server's
/// `Retry-After` honoured up to `max_retry_after`.
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
    /// The backoff part of the policy.
    pub fn jitter(&self) -> FullJitter {
        FullJitter::new(self.base, self.cap)
    }

    /// Delay before retry number `retry` (0-based) given a uniform sample `unit` in `[0, 1)`:
    /// `unit * min(cap, base * 2^retry)` ("full jitter"). A server `Retry-After` wins, clamped
    /// to `max_retry_after`.
    pub fn delay(&self, retry: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(ra) => ra.min(self.max_retry_after),
            None => self.jitter().delay(retry, unit),
        }
    }
}

/// Parses a `Retry-After` header value: delta-seconds or an HTTP date (RFC 9110; the date is
/// taken relative to `now`, a date in the past meaning "now"). `None` for anything else.
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
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
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
        assert_eq!(parse_retry_after("-3", now), None);
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

    #[test]
    fn floor_raises_short_delays_only() {
        let p = FullJitter::new(Duration::from_millis(100), Duration::from_secs(2))
            .with_floor(Duration::from_millis(100));
        // The first delay is exactly the floor (its ceiling is the floor), later ones spread
        // between the floor and the ceiling.
        assert_eq!(p.delay(0, 0.7), Duration::from_millis(100));
        assert_eq!(p.delay(3, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay(3, 0.5), Duration::from_millis(400));
        assert_eq!(p.delay(40, 0.5), Duration::from_secs(1));
    }

    #[test]
    fn bad_samples_are_clamped() {
        let p = FullJitter::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(p.delay(1, f64::NAN), Duration::ZERO);
        assert_eq!(p.delay(1, -1.0), Duration::ZERO);
        assert_eq!(p.delay(1, 7.0), Duration::from_millis(200));
        assert_eq!(p.delay(1, f64::INFINITY), Duration::ZERO);
    }

    #[test]
    fn backoff_counts_failures_and_resets() {
        let mut b = Backoff::new(FullJitter::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ));
        let ceilings: Vec<Duration> = (0..5).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(
            ceilings,
            [10, 20, 40, 50, 50].map(Duration::from_millis).to_vec()
        );
        assert_eq!(b.failures(), 5);
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(10));
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
        fn delay_grows_with_unit_and_attempt(retry in 0u32..20, a in 0.0f64..1.0, b in 0.0f64..1.0) {
            let p = FullJitter::new(Duration::from_millis(200), Duration::from_secs(10));
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(p.delay(retry, lo) <= p.delay(retry, hi));
            prop_assert!(p.ceiling(retry) <= p.ceiling(retry + 1));
        }

        #[test]
        fn floored_delay_is_between_floor_and_ceiling(retry in 0u32..64, unit in 0.0f64..1.0, floor_ms in 0u64..500) {
            let floor = Duration::from_millis(floor_ms);
            let p = FullJitter::new(Duration::from_millis(100), Duration::from_secs(3)).with_floor(floor);
            let d = p.delay(retry, unit);
            prop_assert!(d >= floor);
            prop_assert!(d <= p.ceiling(retry).max(floor));
        }
    }
}
