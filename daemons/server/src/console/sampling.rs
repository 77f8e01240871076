//! `can_frame` sampling before anything is allocated.
//!
//! The data plane reports every relayed frame; the console keeps one sse-core
//! [`CanFrameSampler`] per stream and decides under a short lock, sharded by stream, whether a
//! frame goes to the stream at all. Only frames that are sent are formatted and queued, so a
//! saturated bus costs a lock and a counter per frame. Frames left out are counted
//! (`console_can_frames_sampled_out_total`), and each switch on or off is announced on the
//! stream by one `log` event (`source: "sse.sampler"`), exactly as sse-core's hub would.

use std::collections::HashMap;
use std::sync::Mutex;

use sse_core::sampler::{CanFrameSampler, SampleDecision, SamplingConfig, SamplingSwitch};

use super::ConsoleScope;

const SHARDS: usize = 16;

#[derive(Debug)]
struct Entry {
    sampler: CanFrameSampler,
    last_ms: u64,
}

/// The samplers of every stream that carries `can_frame` events.
#[derive(Debug)]
pub(crate) struct Samplers {
    config: SamplingConfig,
    shards: Vec<Mutex<HashMap<ConsoleScope, Entry>>>,
}

impl Samplers {
    pub(crate) fn new(threshold_per_s: u32) -> Samplers {
        Samplers {
            config: SamplingConfig { threshold_per_s },
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, scope: ConsoleScope) -> &Mutex<HashMap<ConsoleScope, Entry>> {
        let id = match scope {
            ConsoleScope::Dongle(id) | ConsoleScope::Group(id) => id,
        };
        // UUIDs are random: their low bits spread evenly.
        &self.shards[(id.as_u128() % SHARDS as u128) as usize]
    }

    /// Whether a frame published on `scope` at `now_ms` is sent, and any switch to announce.
    pub(crate) fn decide(&self, scope: ConsoleScope, now_ms: u64) -> SampleDecision {
        let mut shard = self.shard(scope).lock().unwrap_or_else(|p| p.into_inner());
        let entry = shard.entry(scope).or_insert_with(|| Entry {
            sampler: CanFrameSampler::new(self.config),
            last_ms: now_ms,
        });
        entry.last_ms = now_ms;
        entry.sampler.handle_can_frame(now_ms)
    }

    /// Forgets samplers idle for more than `idle_ms` (a new one starts off, as they would).
    pub(crate) fn prune(&self, now_ms: u64, idle_ms: u64) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, e| now_ms.saturating_sub(e.last_ms) <= idle_ms);
        }
    }

    /// The `log` event data announcing `switch` (the same text as sse-core's hub writes).
    pub(crate) fn notice(&self, switch: SamplingSwitch, now_ms: u64) -> String {
        sse_core::backend::sampling_log(switch, self.config.threshold_per_s, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn samples_a_fast_stream_and_announces_once() {
        let samplers = Samplers::new(10);
        let scope = ConsoleScope::Dongle(Uuid::new_v4());
        let mut sent = 0;
        let mut switches = 0;
        for i in 0..100 {
            let d = samplers.decide(scope, 1_000 + i);
            sent += usize::from(d.send);
            switches += usize::from(d.switch.is_some());
        }
        assert_eq!(switches, 1);
        assert!((10..100).contains(&sent), "{sent}");
        let other = ConsoleScope::Group(Uuid::new_v4());
        assert!(samplers.decide(other, 1_050).send);
        samplers.prune(100_000, 1_000);
        assert!(
            samplers.decide(scope, 100_000).send,
            "a pruned sampler starts off"
        );
        let notice: serde_json::Value = serde_json::from_str(&samplers.notice(
            SamplingSwitch::Off {
                input_rate_per_s: 3,
            },
            0,
        ))
        .expect("json");
        assert_eq!(notice["sampling"]["active"], false);
        assert_eq!(notice["source"], "sse.sampler");
    }
}
