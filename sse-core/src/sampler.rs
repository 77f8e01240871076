//! `can_frame` output sampling, as a sans-IO state machine.
//!
//! The sampler counts `can_frame` events in fixed one-second windows. When a window's count goes
//! above the threshold, sampling switches on and only every `k`-th frame is marked for output
//! (`k = ceil(rate / threshold)`); when a whole window stays at or below the threshold it switches
//! off. Every switch is reported once, so the hub can publish exactly one `log` event per switch.
//! Sampling only marks events: they all stay in the buffer with their own IDs.

use serde::{Deserialize, Serialize};

/// Sampling settings for one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// `can_frame` events per second above which sampling switches on.
    pub threshold_per_s: u32,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            threshold_per_s: 1_000,
        }
    }
}

const WINDOW_MS: u64 = 1_000;

/// A change of sampling state, to be announced with one `log` event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplingSwitch {
    /// Sampling switched on: `input_rate_per_s` frames/s seen, `fraction` of them are sent.
    On {
        /// Observed input rate (frames per second).
        input_rate_per_s: u64,
        /// Fraction of `can_frame` events sent from now on (`1 / k`).
        fraction: f64,
    },
    /// Sampling switched off: every frame is sent again.
    Off {
        /// Observed input rate in the last full window (frames per second).
        input_rate_per_s: u64,
    },
}

/// The decision for one `can_frame`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleDecision {
    /// Whether the frame goes to SSE output.
    pub send: bool,
    /// A switch that happened just before this frame, if any.
    pub switch: Option<SamplingSwitch>,
}

/// Sampler state of one stream.
#[derive(Debug, Clone)]
pub struct CanFrameSampler {
    config: SamplingConfig,
    window_start: Option<u64>,
    count: u64,
    /// `Some(k)`: sampling on, send every k-th frame.
    keep_every: Option<u64>,
    since_kept: u64,
}

impl CanFrameSampler {
    /// A sampler that starts off.
    pub fn new(config: SamplingConfig) -> Self {
        Self {
            config,
            window_start: None,
            count: 0,
            keep_every: None,
            since_kept: 0,
        }
    }

    /// Whether sampling is on now.
    pub fn is_on(&self) -> bool {
        self.keep_every.is_some()
    }

    /// Handle one `can_frame` published at `now_ms`.
    pub fn handle_can_frame(&mut self, now_ms: u64) -> SampleDecision {
        let threshold = u64::from(self.config.threshold_per_s.max(1));
        let mut switch = None;
        match self.window_start {
            Some(start) if now_ms < start.saturating_add(WINDOW_MS) => {}
            Some(start) => {
                // A window ended. The rate of the window just closed decides; windows skipped
                // without any frame count as zero.
                let closed_rate = if now_ms < start.saturating_add(2 * WINDOW_MS) {
                    self.count
                } else {
                    0
                };
                if self.keep_every.is_some() && closed_rate <= threshold {
                    self.keep_every = None;
                    switch = Some(SamplingSwitch::Off {
                        input_rate_per_s: closed_rate,
                    });
                } else if self.keep_every.is_some() {
                    // Still on: follow the rate silently (one log per switch, not per change).
                    self.keep_every = Some(closed_rate.div_ceil(threshold).max(2));
                }
                self.window_start = Some(now_ms - (now_ms - start) % WINDOW_MS);
                self.count = 0;
            }
            None => self.window_start = Some(now_ms),
        }
        self.count += 1;
        if self.keep_every.is_none() && self.count > threshold {
            let k = self.count.div_ceil(threshold).max(2);
            self.keep_every = Some(k);
            self.since_kept = 0;
            switch = Some(SamplingSwitch::On {
                input_rate_per_s: self.count,
                fraction: 1.0 / k as f64,
            });
        }
        let send = match self.keep_every {
            None => true,
            Some(k) => {
                let send = self.since_kept == 0;
                self.since_kept = (self.since_kept + 1) % k;
                send
            }
        };
        SampleDecision { send, switch }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_on_above_threshold_and_off_after_a_quiet_window() {
        let mut s = CanFrameSampler::new(SamplingConfig {
            threshold_per_s: 10,
        });
        let mut switches = Vec::new();
        let mut sent = 0;
        // 40 frames within the first second.
        for i in 0..40 {
            let d = s.handle_can_frame(1_000 + i * 20);
            sent += usize::from(d.send);
            switches.extend(d.switch);
        }
        assert!(s.is_on());
        assert_eq!(switches.len(), 1);
        assert!(sent < 40 && sent > 10);
        // A quiet second with 5 frames, then the next window closes it.
        for i in 0..5 {
            switches.extend(s.handle_can_frame(2_000 + i * 100).switch);
        }
        switches.extend(s.handle_can_frame(3_000).switch);
        assert!(!s.is_on());
        assert_eq!(switches.len(), 2);
        assert!(matches!(switches[1], SamplingSwitch::Off { .. }));
    }
}
