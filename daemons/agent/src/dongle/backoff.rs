//! Jittered exponential backoff between a floor and a ceiling, on metering-core's full-jitter
//! [`RetryPolicy`].

use std::time::Duration;

use metering_core::backoff::RetryPolicy;
use rand::Rng;

/// Consecutive-failure counter producing delays in `[min, min(max, min·2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    min: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff from `min` to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            policy: RetryPolicy {
                max_retries: u32::MAX,
                base: min,
                cap: max,
                ..RetryPolicy::default()
            },
            min,
            failures: 0,
        }
    }

    /// The delay before the next attempt; counts a failure.
    pub fn next_delay(&mut self) -> Duration {
        let unit: f64 = rand::rng().random();
        let d = self.policy.delay(self.failures, unit, None).max(self.min);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// A success: start from the floor again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(min, max);
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(d >= min && d <= max, "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
