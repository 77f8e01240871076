//! `can_frame` output sampling, as sans-IO state machines.
//!
//! [`CanFrameSampler`] is the policy for one stream. It counts `can_frame` events in fixed
//! one-second windows. When a window's count goes above the threshold, sampling switches on and
//! only every `k`-th frame is sent (`k = ceil(rate / threshold)`); when a whole window stays at or
//! below the threshold it switches off. Every switch is reported once, so exactly one `log` event
//! ([`sampling_notice`]) announces it.
//!
//! [`StreamSamplers`] keeps one sampler per stream for a publisher that samples *before*
//! publishing, as `tether server` does: frames that are not sent are never formatted or stored
//! (the caller counts them), so stream IDs do not skip and a saturated bus costs a short sharded
//! lock per frame. Sampling concerns console output only, never the relay, and never any event
//! type but `can_frame`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::events::{LogEvent, LogLevel, SAMPLER_SOURCE, SamplingNotice, timestamp_from_unix_ms};

/// Default `can_frame` rate per stream above which sampling switches on (frames per second).
pub const DEFAULT_THRESHOLD_PER_S: u32 = 200;

/// Sampling settings for one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// `can_frame` events per second above which sampling switches on.
    pub threshold_per_s: u32,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            threshold_per_s: DEFAULT_THRESHOLD_PER_S,
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

/// The `log` event announcing `switch` on a stream sampled at `threshold_per_s`, published at
/// `now_ms`: `level` `info`, `source` [`SAMPLER_SOURCE`], and a `sampling` object.
pub fn sampling_notice(switch: SamplingSwitch, threshold_per_s: u32, now_ms: u64) -> LogEvent {
    let (active, input_rate_per_s, fraction) = match switch {
        SamplingSwitch::On {
            input_rate_per_s,
            fraction,
        } => (true, input_rate_per_s, fraction),
        SamplingSwitch::Off { input_rate_per_s } => (false, input_rate_per_s, 1.0),
    };
    let message = if active {
        format!(
            "can_frame sampling on: {input_rate_per_s} frames/s in, sending {fraction:.4} of them"
        )
    } else {
        format!("can_frame sampling off: {input_rate_per_s} frames/s in, sending all")
    };
    LogEvent {
        ts: timestamp_from_unix_ms(now_ms),
        level: LogLevel::Info,
        source: SAMPLER_SOURCE.to_owned(),
        message,
        sampling: Some(SamplingNotice {
            active,
            input_rate_per_s,
            fraction,
            threshold_per_s,
        }),
        fields: None,
    }
}

const SHARDS: usize = 16;

#[derive(Debug)]
struct Tracked {
    sampler: CanFrameSampler,
    last_ms: u64,
}

/// One [`CanFrameSampler`] per stream, created on a stream's first frame, behind locks sharded
/// by stream so that publishers of different streams rarely wait on each other.
///
/// Call [`decide`](Self::decide) for every `can_frame` before formatting it; publish the frame
/// only when the decision says `send`, and publish [`notice`](Self::notice) first when it
/// carries a switch. Call [`prune`](Self::prune) now and then so that streams gone quiet do not
/// keep their sampler forever.
#[derive(Debug)]
pub struct StreamSamplers<K> {
    config: SamplingConfig,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<K, Tracked>>]>,
}

impl<K: Hash + Eq + Clone> StreamSamplers<K> {
    /// Samplers that all use `config`.
    pub fn new(config: SamplingConfig) -> Self {
        Self {
            config,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The settings every stream is sampled with.
    pub fn config(&self) -> SamplingConfig {
        self.config
    }

    fn shard(&self, stream: &K) -> &Mutex<HashMap<K, Tracked>> {
        let i = usize::try_from(self.hasher.hash_one(stream) % SHARDS as u64).unwrap_or(0);
        &self.shards[i]
    }

    /// Whether a `can_frame` published on `stream` at `now_ms` is sent, and the switch to
    /// announce first, if any.
    pub fn decide(&self, stream: &K, now_ms: u64) -> SampleDecision {
        let mut shard = self.shard(stream).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tracked) = shard.get_mut(stream) {
            tracked.last_ms = now_ms;
            return tracked.sampler.handle_can_frame(now_ms);
        }
        let mut sampler = CanFrameSampler::new(self.config);
        let decision = sampler.handle_can_frame(now_ms);
        shard.insert(
            stream.clone(),
            Tracked {
                sampler,
                last_ms: now_ms,
            },
        );
        decision
    }

    /// The `log` event announcing `switch`, published at `now_ms`.
    pub fn notice(&self, switch: SamplingSwitch, now_ms: u64) -> LogEvent {
        sampling_notice(switch, self.config.threshold_per_s, now_ms)
    }

    /// Forgets the samplers of streams without a frame for more than `idle_ms`; returns how
    /// many. A forgotten stream starts again with sampling off, as a new one would.
    pub fn prune(&self, now_ms: u64, idle_ms: u64) -> usize {
        let mut pruned = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = shard.len();
            shard.retain(|_, t| now_ms.saturating_sub(t.last_ms) <= idle_ms);
            pruned += before - shard.len();
        }
        pruned
    }

    /// How many streams have a sampler now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no stream has a sampler.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_samplers_sample_each_stream_alone_and_prune_idle_ones() {
        let samplers = StreamSamplers::new(SamplingConfig {
            threshold_per_s: 10,
        });
        let (mut sent, mut switches) = (0, Vec::new());
        for i in 0..100 {
            let d = samplers.decide(&"dongle:1", 1_000 + i);
            sent += usize::from(d.send);
            switches.extend(d.switch);
        }
        assert_eq!(switches.len(), 1, "one switch: {switches:?}");
        assert!((10..100).contains(&sent), "{sent}");
        assert!(
            samplers.decide(&"group:1", 1_050).send,
            "another stream is not sampled"
        );
        assert_eq!(samplers.len(), 2);
        assert_eq!(samplers.prune(1_500, 1_000), 0);
        assert_eq!(samplers.prune(100_000, 1_000), 2);
        assert!(samplers.is_empty());
        assert!(
            samplers.decide(&"dongle:1", 100_000).send,
            "a pruned sampler starts off"
        );
        let on = samplers.notice(switches[0], 1_000);
        let json = crate::events::ConsoleEvent::from(on).to_data();
        assert!(
            json.starts_with(
                r#"{"ts":"1970-01-01T00:00:01.000Z","level":"info","source":"sse.sampler","message":"can_frame sampling on: 11 frames/s in, sending 0.5000 of them","sampling":{"active":true,"input_rate_per_s":11,"fraction":0.5,"threshold_per_s":10}}"#
            ),
            "{json}"
        );
        let off = samplers.notice(
            SamplingSwitch::Off {
                input_rate_per_s: 3,
            },
            0,
        );
        assert_eq!(
            off.message,
            "can_frame sampling off: 3 frames/s in, sending all"
        );
        assert_eq!(
            off.sampling.map(|s| (s.active, s.fraction)),
            Some((false, 1.0))
        );
    }

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
