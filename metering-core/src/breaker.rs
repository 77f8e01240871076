//! Circuit breaker for the control plane (pure state machine, time passed in).
//!
//! Call order: before each request ask [`Breaker::permit`]; report the outcome of a permitted
//! request with [`Breaker::on_success`] or [`Breaker::on_failure`]. While open, consumers stop
//! taking items from Redis (items stay queued; nothing is dead-lettered because of an outage).
//! After `open_for` one probe is let through (half-open); its outcome closes or re-opens it.

use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failed attempt cycles that open the breaker (default 3).
    pub failure_threshold: u32,
    /// How long it stays open before a half-open probe (default 30 s).
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(30),
        }
    }
}

/// Externally visible state (also a metric: 0 closed, 1 half-open, 2 open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// One probe is allowed (or in flight).
    HalfOpen,
    /// Requests are held back.
    Open,
}

/// The answer to "may I send now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Send normally.
    Allowed,
    /// Send: this request is the half-open probe.
    Probe,
    /// Do not send; ask again at (or after) this instant.
    Wait(Instant),
}

/// The breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: Option<Instant>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            failures: 0,
            opened_at: None,
            probe_in_flight: None,
        }
    }

    /// Current state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.opened_at {
            None => BreakerState::Closed,
            Some(at) if now >= at + self.config.open_for => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// May a request be sent at `now`?
    pub fn permit(&mut self, now: Instant) -> Permit {
        let Some(opened) = self.opened_at else {
            return Permit::Allowed;
        };
        let reopen = opened + self.config.open_for;
        if now < reopen {
            return Permit::Wait(reopen);
        }
        match self.probe_in_flight {
            // A probe that never reported back (its task died) does not block forever.
            Some(started) if now < started + self.config.open_for => {
                Permit::Wait(started + self.config.open_for)
            }
            _ => {
                self.probe_in_flight = Some(now);
                Permit::Probe
            }
        }
    }

    /// A permitted request succeeded (the control plane answered with anything but a
    /// retryable failure).
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.opened_at = None;
        self.probe_in_flight = None;
    }

    /// A permitted request's attempt cycle failed with retryable errors.
    pub fn on_failure(&mut self, now: Instant) {
        self.probe_in_flight = None;
        if self.opened_at.is_some() {
            // Failed probe (or a late failure): stay open for another period.
            self.opened_at = Some(now);
            return;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.config.failure_threshold.max(1) {
            self.opened_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        }
    }

    #[test]
    fn opens_after_threshold_then_probes_then_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..2 {
            assert_eq!(b.permit(t0), Permit::Allowed);
            b.on_failure(t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(
            b.permit(t0 + Duration::from_secs(5)),
            Permit::Wait(t0 + Duration::from_secs(10))
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.permit(t1), Permit::Probe);
        // Only one probe at a time.
        assert!(matches!(b.permit(t1), Permit::Wait(_)));
        b.on_success();
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert_eq!(b.permit(t1), Permit::Allowed);
    }

    #[test]
    fn failed_probe_reopens_for_a_full_period() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 1,
            ..cfg()
        });
        b.on_failure(t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.permit(t1), Permit::Probe);
        b.on_failure(t1);
        assert_eq!(
            b.permit(t1 + Duration::from_secs(9)),
            Permit::Wait(t1 + Duration::from_secs(10))
        );
        assert_eq!(b.permit(t1 + Duration::from_secs(10)), Permit::Probe);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Advance(u64),
        Try(bool),
    }

    proptest! {
        /// Model: the breaker never lets requests through while fewer than `open_for` has passed
        /// since it opened, and a success always closes it.
        #[test]
        fn model(steps in proptest::collection::vec(prop_oneof![
            (0u64..15).prop_map(Step::Advance), any::<bool>().prop_map(Step::Try)], 0..60)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut b = Breaker::new(cfg());
            let mut consecutive = 0u32;
            let mut opened: Option<Instant> = None;
            for s in steps {
                match s {
                    Step::Advance(secs) => now += Duration::from_secs(secs),
                    Step::Try(ok) => match b.permit(now) {
                        Permit::Wait(until) => {
                            prop_assert!(opened.is_some());
                            prop_assert!(until > now);
                        }
                        p => {
                            if let Some(at) = opened {
                                prop_assert_eq!(p, Permit::Probe);
                                prop_assert!(now >= at + Duration::from_secs(10));
                            }
                            if ok {
                                b.on_success();
                                consecutive = 0;
                                opened = None;
                            } else {
                                b.on_failure(now);
                                consecutive += 1;
                                if opened.is_some() || consecutive >= 3 {
                                    opened = Some(now);
                                }
                            }
                        }
                    },
                }
                prop_assert_eq!(b.state(now) == BreakerState::Closed, opened.is_none());
            }
        }
    }
}
