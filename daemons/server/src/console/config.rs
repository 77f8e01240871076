//! The `console:` section of the server configuration.

use std::time::Duration;

use serde::Deserialize;

use crate::setting::bounded;

/// Default number of events each console stream keeps for resuming.
pub const DEFAULT_HISTORY_EVENTS: usize = 10_000;
/// Default age bound of console history, in seconds.
pub const DEFAULT_HISTORY_MAX_AGE_SECS: u64 = 60;
/// Default `can_frame` rate per stream above which the console samples (frames per second).
pub const DEFAULT_SAMPLING_THRESHOLD_PER_S: u32 = sse_core::sampler::DEFAULT_THRESHOLD_PER_S;
/// Default interval between keep-alive comments on an idle stream, in seconds.
pub const DEFAULT_KEEP_ALIVE_SECS: u64 = 15;
/// Default reconnection delay told to clients (`retry:`), in milliseconds.
pub const DEFAULT_RETRY_MS: u64 = 2_000;
/// Default capacity of the queue between event sources and the publisher.
pub const DEFAULT_QUEUE_CAPACITY: usize = 16_384;
/// Default shortest interval between two `presence` `seen` events of one dongle, in seconds.
pub const DEFAULT_SEEN_INTERVAL_SECS: u64 = 10;
/// Default Redis key prefix of console streams.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = sse_core::backend::redis::DEFAULT_KEY_PREFIX;
/// Smallest default history budget (bytes), whatever the machine.
const MIN_DEFAULT_BUDGET: u64 = 64 << 20;
/// Largest default history budget (bytes), whatever the machine.
const MAX_DEFAULT_BUDGET: u64 = 2 << 30;

/// The default global history budget: a sixteenth of the machine's memory, between 64 MiB and
/// 2 GiB (256 MiB where the memory size cannot be read).
pub fn default_history_budget_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    match total {
        Some(bytes) => (bytes / 16).clamp(MIN_DEFAULT_BUDGET, MAX_DEFAULT_BUDGET),
        None => 256 << 20,
    }
}

/// Most streams one multiplexed connection may carry.
pub const MAX_MULTIPLEXED_STREAMS: usize = 32;

/// The `console:` section as written in the file; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Events kept per stream for resuming (count bound).
    pub history_events: Option<usize>,
    /// Seconds an event stays resumable (age bound).
    pub history_max_age_secs: Option<u64>,
    /// Bytes all in-memory streams together keep; over it the oldest events across streams
    /// are trimmed first.
    pub history_budget_bytes: Option<u64>,
    /// `can_frame` events per second and stream above which the console samples.
    pub sampling_threshold_per_s: Option<u32>,
    /// Seconds of silence before a keep-alive comment.
    pub keep_alive_secs: Option<u64>,
    /// Reconnection delay sent to clients as `retry:` (ms).
    pub retry_ms: Option<u64>,
    /// Events waiting for the publisher before new ones are dropped (and counted).
    pub queue_capacity: Option<usize>,
    /// Shortest interval between two `presence` `seen` events of one dongle (seconds).
    pub seen_interval_secs: Option<u64>,
    /// Prefix of the Redis keys of console streams (with a Redis URL only).
    pub redis_key_prefix: Option<String>,
}

/// The validated console settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Events kept per stream.
    pub history_events: usize,
    /// Age bound of history.
    pub history_max_age: Duration,
    /// Global budget of the in-memory history (bytes).
    pub history_budget_bytes: u64,
    /// Sampling threshold (`can_frame` per second and stream).
    pub sampling_threshold_per_s: u32,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// `retry:` value sent at the start of every stream (ms).
    pub retry_ms: u64,
    /// Publisher queue capacity.
    pub queue_capacity: usize,
    /// Shortest interval between `seen` events of one dongle.
    pub seen_interval: Duration,
    /// Redis key prefix.
    pub redis_key_prefix: String,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            history_events: DEFAULT_HISTORY_EVENTS,
            history_max_age: Duration::from_secs(DEFAULT_HISTORY_MAX_AGE_SECS),
            history_budget_bytes: default_history_budget_bytes(),
            sampling_threshold_per_s: DEFAULT_SAMPLING_THRESHOLD_PER_S,
            keep_alive: Duration::from_secs(DEFAULT_KEEP_ALIVE_SECS),
            retry_ms: DEFAULT_RETRY_MS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            seen_interval: Duration::from_secs(DEFAULT_SEEN_INTERVAL_SECS),
            redis_key_prefix: DEFAULT_REDIS_KEY_PREFIX.to_owned(),
        }
    }
}

impl ConsoleConfig {
    /// Applies `settings` over the defaults and checks every value's range; the error text names
    /// the field (`console.<field>`).
    pub fn resolve(settings: Option<ConsoleSettings>) -> Result<ConsoleConfig, String> {
        let s = settings.unwrap_or_default();
        let d = ConsoleConfig::default();
        let history_events = bounded(
            "console.history_events",
            s.history_events,
            d.history_events,
            1..=1_000_000,
        )?;
        let age = bounded(
            "console.history_max_age_secs",
            s.history_max_age_secs,
            DEFAULT_HISTORY_MAX_AGE_SECS,
            1..=7 * 24 * 3600,
        )?;
        let budget = bounded(
            "console.history_budget_bytes",
            s.history_budget_bytes,
            d.history_budget_bytes,
            (1 << 20)..=(1 << 40),
        )?;
        let threshold = bounded(
            "console.sampling_threshold_per_s",
            s.sampling_threshold_per_s,
            d.sampling_threshold_per_s,
            1..=1_000_000,
        )?;
        let keep_alive = bounded(
            "console.keep_alive_secs",
            s.keep_alive_secs,
            DEFAULT_KEEP_ALIVE_SECS,
            1..=3600,
        )?;
        let retry_ms = bounded("console.retry_ms", s.retry_ms, d.retry_ms, 100..=3_600_000)?;
        let queue_capacity = bounded(
            "console.queue_capacity",
            s.queue_capacity,
            d.queue_capacity,
            16..=10_000_000,
        )?;
        let seen = bounded(
            "console.seen_interval_secs",
            s.seen_interval_secs,
            DEFAULT_SEEN_INTERVAL_SECS,
            0..=24 * 3600,
        )?;
        let redis_key_prefix = s.redis_key_prefix.unwrap_or(d.redis_key_prefix);
        if redis_key_prefix.len() > 100 || redis_key_prefix.chars().any(char::is_control) {
            return Err(
                "console.redis_key_prefix must be at most 100 characters without control characters"
                    .to_owned(),
            );
        }
        Ok(ConsoleConfig {
            history_events,
            history_max_age: Duration::from_secs(age),
            history_budget_bytes: budget,
            sampling_threshold_per_s: threshold,
            keep_alive: Duration::from_secs(keep_alive),
            retry_ms,
            queue_capacity,
            seen_interval: Duration::from_secs(seen),
            redis_key_prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_ranges() {
        assert_eq!(ConsoleConfig::resolve(None), Ok(ConsoleConfig::default()));
        let custom = ConsoleConfig::resolve(Some(ConsoleSettings {
            history_events: Some(5),
            sampling_threshold_per_s: Some(10),
            ..ConsoleSettings::default()
        }));
        assert_eq!(
            custom.map(|c| (c.history_events, c.sampling_threshold_per_s)),
            Ok((5, 10))
        );
        for bad in [
            ConsoleSettings {
                history_events: Some(0),
                ..ConsoleSettings::default()
            },
            ConsoleSettings {
                keep_alive_secs: Some(0),
                ..ConsoleSettings::default()
            },
            ConsoleSettings {
                redis_key_prefix: Some("a\nb".to_owned()),
                ..ConsoleSettings::default()
            },
        ] {
            let err = ConsoleConfig::resolve(Some(bad)).err().unwrap_or_default();
            assert!(err.starts_with("console."), "{err}");
        }
    }
}
