//! The hub API behind one trait, with two backends: in-memory (default) and Redis.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::Stream;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::buffer::{StreamBounds, StreamItem};
use crate::error::SseError;
use crate::events::ConsoleEvent;
use crate::id::EventId;

pub mod memory;
pub mod redis;

/// Where the hub gets the time (ms since the Unix epoch). Tests pass a [`ManualClock`].
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in ms since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (virtual time for tests and simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `ms`.
    pub fn new(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }

    /// Move forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Set the reading.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Per-stream settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamConfig {
    /// History bounds.
    pub bounds: StreamBounds,
}

/// Where a stream stands: its latest ID, and how many events it ever had and still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamPosition {
    /// The latest ID published on the stream (remembered even after it was trimmed), if any.
    pub latest: Option<EventId>,
    /// Events ever published on it (as far as the backend remembers the stream).
    pub published: u64,
    /// Events it retains now.
    pub retained: u64,
}

impl StreamPosition {
    /// Whether it still holds every event ever published on it (nothing trimmed), so that
    /// reading it from the start misses nothing.
    pub fn complete(&self) -> bool {
        self.published == self.retained
    }
}

/// A subscription: replayed events, then live ones, as a stream of items. Dropping it
/// unsubscribes.
pub struct Subscription {
    inner: BoxStream<'static, Result<StreamItem, SseError>>,
}

impl Subscription {
    /// Wrap any item stream.
    pub fn new(inner: BoxStream<'static, Result<StreamItem, SseError>>) -> Self {
        Self { inner }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

impl Stream for Subscription {
    type Item = Result<StreamItem, SseError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The hub: publish into named streams and subscribe with a last-seen ID.
///
/// Contract (checked by the conformance suite for every backend):
/// - `publish` returns a new ID, strictly greater than every earlier ID of that stream;
/// - `subscribe(key, None)` yields only events published after it returned;
/// - `subscribe(key, Some(id))` with `id` retained (or the latest ID) yields exactly the later
///   events in order, then live ones, with no gap or duplicate even while publishing goes on;
/// - otherwise it yields exactly one `stream_reset` first, then the retained history, then live;
/// - a subscriber that falls behind the buffer gets one `stream_reset` (`lagged`) and goes on
///   from the oldest retained event.
///
/// Backends store and yield every event published: `can_frame` sampling happens before
/// publishing ([`crate::sampler::StreamSamplers`]), so a frame left out is never stored.
pub trait EventBackend: Send + Sync {
    /// Append an event to `stream_key` and return its ID.
    fn publish<'a>(
        &'a self,
        stream_key: &'a str,
        event_type: &'a str,
        data: &'a str,
    ) -> BoxFuture<'a, Result<EventId, SseError>>;

    /// Subscribe to `stream_key`, resuming after `last_event_id` if given.
    fn subscribe<'a>(
        &'a self,
        stream_key: &'a str,
        last_event_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Subscription, SseError>>;

    /// Set the history bounds of one stream (default: [`StreamConfig::default`]).
    fn configure_stream(&self, stream_key: &str, config: StreamConfig) -> Result<(), SseError>;

    /// Where `stream_key` stands now (after trimming by age). A stream never published on is
    /// at `StreamPosition::default()`: no latest ID, complete.
    fn position<'a>(
        &'a self,
        stream_key: &'a str,
    ) -> BoxFuture<'a, Result<StreamPosition, SseError>>;

    /// Forget what this process keeps for streams gone idle (in memory: streams with no
    /// retained event and no subscriber; with Redis: local settings of streams with default
    /// settings and no publish for a minute; Redis keys expire by themselves). Call it now and
    /// then; returns how many streams were forgotten.
    fn prune_idle_streams(&self) -> usize;

    /// Memory held by this process for the whole history, when the backend keeps it in memory
    /// (`None` for backends whose history lives elsewhere, such as Redis).
    fn history_stats(&self) -> Option<memory::HistoryStats> {
        None
    }
}

/// Publish a typed console event.
pub async fn publish_console<B: EventBackend + ?Sized>(
    backend: &B,
    stream_key: &str,
    event: &ConsoleEvent,
) -> Result<EventId, SseError> {
    backend
        .publish(stream_key, event.event_type(), &event.to_data())
        .await
}

/// Stream keys: 1–200 bytes of ASCII letters, digits and `:_-.@`, e.g. `dongle:42`, `group:7`.
pub fn validate_stream_key(key: &str) -> Result<(), SseError> {
    if key.is_empty() || key.len() > 200 {
        return Err(SseError::InvalidStreamKey {
            key: key.to_owned(),
            reason: "length must be 1..=200",
        });
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b":_-.@".contains(&b))
    {
        return Err(SseError::InvalidStreamKey {
            key: key.to_owned(),
            reason: "only ASCII letters, digits and :_-.@ are allowed",
        });
    }
    Ok(())
}

/// A shared handle to any backend.
pub type SharedBackend = Arc<dyn EventBackend>;
