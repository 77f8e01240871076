//! Buffer bounds on a virtual clock: count bound, per-event age bound on a busy stream, and the
//! memory bound of a subscriber that stops reading.

use std::sync::Arc;

use sse_core::{Clock, ManualClock, MemoryBackend, ResetReason, StreamConfig, StreamItem};

const T0: u64 = 1_800_000_000_000;

fn hub() -> (Arc<ManualClock>, MemoryBackend) {
    let clock = Arc::new(ManualClock::new(T0));
    let hub = MemoryBackend::new(clock.clone(), StreamConfig::default());
    (clock, hub)
}

#[test]
fn count_bound_keeps_the_newest_10000_and_counts_the_rest() {
    let (_clock, hub) = hub();
    let mut ids = Vec::new();
    for i in 0..25_000 {
        ids.push(
            hub.publish_now("dongle:1", "log", &i.to_string())
                .expect("publish"),
        );
    }
    let stats = hub.stream_stats("dongle:1").expect("stream exists");
    assert_eq!(stats.retained, 10_000);
    assert_eq!(stats.trimmed_by_count, 15_000);
    assert_eq!(stats.trimmed_by_age, 0);
    assert_eq!(stats.oldest, Some(ids[15_000]));
    assert_eq!(stats.latest, ids.last().copied());
}

#[test]
fn age_bound_is_checked_per_event_on_a_busy_stream() {
    let (clock, hub) = hub();
    let mut published: Vec<(sse_core::EventId, u64)> = Vec::new();
    let mut expected_first = 0;
    // One event every 7 ms of virtual time for 3 minutes: far below the count bound, so only age trims.
    for _ in 0..(180_000 / 7) {
        let id = hub.publish_now("dongle:1", "log", "{}").expect("publish");
        published.push((id, clock.now_ms()));
        let stats = hub.stream_stats("dongle:1").expect("stream");
        let oldest = stats.oldest.expect("non-empty");
        let (_, oldest_ms) = published[published
            .binary_search_by(|(i, _)| i.cmp(&oldest))
            .expect("known id")];
        assert!(
            clock.now_ms() - oldest_ms <= 60_000,
            "an event older than 60 s was kept"
        );
        // Every event younger than the bound is kept (the model: first event within 60 s).
        while clock.now_ms() - published[expected_first].1 > 60_000 {
            expected_first += 1;
        }
        assert_eq!(oldest, published[expected_first].0);
        clock.advance(7);
    }
    let stats = hub.stream_stats("dongle:1").expect("stream");
    assert_eq!(stats.trimmed_by_count, 0);
    assert_eq!(
        stats.trimmed_by_age as usize + stats.retained,
        published.len()
    );
}

#[test]
fn a_quiet_stream_ages_out_on_subscribe() {
    let (clock, hub) = hub();
    let first = hub.publish_now("dongle:1", "log", "{}").expect("publish");
    clock.advance(60_001);
    let mut sub = hub
        .subscribe_now("dongle:1", Some(&first.to_string()))
        .expect("subscribe");
    // The event is gone but it was the latest ID: the subscriber is exactly up to date.
    assert_eq!(sub.try_next(), None);
    assert_eq!(hub.stream_stats("dongle:1").expect("stream").retained, 0);
}

#[test]
fn a_stalled_subscriber_never_grows_memory() {
    let (clock, hub) = hub();
    let mut stalled = hub.subscribe_now("dongle:1", None).expect("subscribe");
    let size = std::mem::size_of_val(&stalled);
    let mut ids = Vec::new();
    for i in 0..50_000 {
        ids.push(
            hub.publish_now("dongle:1", "log", &i.to_string())
                .expect("publish"),
        );
        if i % 1000 == 0 {
            clock.advance(1);
        }
        // The stalled subscriber holds nothing: the buffer is the only copy.
        assert_eq!(stalled.buffered(), 0);
    }
    assert_eq!(std::mem::size_of_val(&stalled), size);
    assert_eq!(
        hub.stream_stats("dongle:1").expect("stream").retained,
        10_000
    );
    // When it reads again: exactly one lagged reset, then the oldest retained event onwards.
    match stalled.try_next() {
        Some(StreamItem::Reset(r)) => {
            assert_eq!(r.reason, ResetReason::Lagged);
            assert_eq!(r.oldest, Some(ids[40_000].to_string()));
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    assert!(stalled.buffered() <= 16, "one read batch at most");
    for id in &ids[40_000..] {
        match stalled.try_next() {
            Some(StreamItem::Event(e)) => assert_eq!(e.id, *id),
            other => panic!("expected {id}, got {other:?}"),
        }
    }
    assert_eq!(stalled.try_next(), None);
}

#[test]
fn ids_from_an_earlier_process_are_recognised() {
    let (clock, first_process) = hub();
    let old = first_process
        .publish_now("dongle:1", "log", "{}")
        .expect("publish");
    clock.advance(5_000);
    // A restart: a new hub with the same (later) clock.
    let second_process = MemoryBackend::new(clock.clone(), StreamConfig::default());
    let new = second_process
        .publish_now("dongle:1", "log", "{}")
        .expect("publish");
    assert!(
        new.ms >= old.ms + 5_000,
        "the new process starts at its own start time"
    );
    let mut sub = second_process
        .subscribe_now("dongle:1", Some(&old.to_string()))
        .expect("subscribe");
    match sub.try_next() {
        Some(StreamItem::Reset(r)) => assert_eq!(r.reason, ResetReason::EarlierProcess),
        other => panic!("expected a reset, got {other:?}"),
    }
    assert!(matches!(sub.try_next(), Some(StreamItem::Event(e)) if e.id == new));
}

#[test]
fn idle_empty_streams_are_pruned_but_subscribed_ones_are_kept() {
    let (clock, hub) = hub();
    hub.publish_now("dongle:old", "log", "{}").expect("publish");
    hub.publish_now("dongle:watched", "log", "{}")
        .expect("publish");
    let _watcher = hub
        .subscribe_now("dongle:watched", None)
        .expect("subscribe");
    hub.publish_now("dongle:fresh", "log", "{}")
        .expect("publish");
    assert_eq!(hub.prune_idle_streams(), 0, "nothing aged yet");
    clock.advance(60_001);
    hub.publish_now("dongle:fresh", "log", "{}")
        .expect("publish");
    assert_eq!(
        hub.prune_idle_streams(),
        1,
        "only dongle:old is empty and unwatched"
    );
    assert!(hub.stream_stats("dongle:old").is_none());
    assert!(hub.stream_stats("dongle:watched").is_some());
    assert_eq!(
        hub.stream_stats("dongle:fresh").map(|s| s.retained),
        Some(1)
    );
}
