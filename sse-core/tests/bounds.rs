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

/// A hub of `streams` busy streams under a global budget of `budget` bytes.
fn budget_hub(budget: u64) -> (Arc<ManualClock>, MemoryBackend) {
    let clock = Arc::new(ManualClock::new(T0));
    let hub = MemoryBackend::with_budget(clock.clone(), StreamConfig::default(), budget);
    (clock, hub)
}

#[test]
fn the_global_budget_trims_the_oldest_events_across_streams_first() {
    const BUDGET: u64 = 2_000_000;
    let (clock, hub) = budget_hub(BUDGET);
    let payload = "x".repeat(200);
    // 50 streams, one event each per ms in turn: 30,000 events of ~300 bytes, 4.5x the budget,
    // far below each stream's own count and age bounds.
    let mut published = Vec::new();
    for round in 0..600u64 {
        for s in 0..50 {
            let key = format!("dongle:{s}");
            let id = hub.publish_now(&key, "log", &payload).expect("publish");
            published.push((key, id, clock.now_ms()));
            let stats = hub.history_stats();
            assert!(
                stats.bytes <= BUDGET,
                "over budget after a publish: {stats:?}"
            );
        }
        if round % 2 == 1 {
            clock.advance(1);
        }
        clock.advance(10);
    }
    let stats = hub.history_stats();
    assert_eq!(stats.budget_bytes, Some(BUDGET));
    assert!(stats.trimmed_by_budget > 0);
    assert!(
        stats.bytes >= BUDGET / 2,
        "trimmed far below the budget: {stats:?}"
    );
    // What remains is the newest events of every stream: each stream keeps a suffix, and
    // every retained event is newer than every trimmed one (up to one ledger bucket).
    let mut oldest_kept = u64::MAX;
    let mut newest_trimmed = 0;
    let mut retained = 0;
    let mut trimmed = 0;
    for s in 0..50 {
        let key = format!("dongle:{s}");
        let st = hub.stream_stats(&key).expect("stream");
        let oldest = st.oldest.expect("every stream keeps its newest events");
        for (k, id, ms) in published.iter().filter(|(k, _, _)| *k == key) {
            assert_eq!(k, &key);
            if *id < oldest {
                newest_trimmed = newest_trimmed.max(*ms);
            } else {
                oldest_kept = oldest_kept.min(*ms);
            }
        }
        assert_eq!(st.trimmed_by_count + st.trimmed_by_age, 0);
        retained += st.retained as u64;
        trimmed += st.trimmed_by_budget;
    }
    assert!(
        newest_trimmed < oldest_kept + sse_core::buffer::LEDGER_BUCKET_MS,
        "a newer event was trimmed before an older one: {newest_trimmed} vs {oldest_kept}"
    );
    assert_eq!(retained, stats.events);
    assert_eq!(trimmed, stats.trimmed_by_budget);
    assert_eq!(
        retained + trimmed,
        published.len() as u64,
        "nothing left uncounted"
    );
}

#[test]
fn budget_trims_follow_the_reset_rules() {
    let (clock, hub) = budget_hub(200_000);
    let payload = "y".repeat(500);
    let first = hub
        .publish_now("group:1", "log", &payload)
        .expect("publish");
    let mut lagging = hub
        .subscribe_now("group:1", Some(&first.to_string()))
        .expect("subscribe");
    hub.publish_now("group:1", "log", &payload)
        .expect("publish");
    clock.advance(1);
    // A busy stream pushes both events of the quiet one out of the budget.
    for _ in 0..2_000 {
        hub.publish_now("dongle:9", "log", &payload)
            .expect("publish");
        clock.advance(1);
    }
    let stats = hub.stream_stats("group:1").expect("stream");
    assert_eq!((stats.retained, stats.trimmed_by_budget), (0, 2));
    let next = hub.publish_now("group:1", "log", "{}").expect("publish");
    // A resume from the trimmed `first` is `too_old`; the reader that had not read the second
    // event yet is `lagged`; both go on with the next event, nothing twice.
    let mut late = hub
        .subscribe_now("group:1", Some(&first.to_string()))
        .expect("subscribe");
    for (sub, reason) in [
        (&mut late, ResetReason::TooOld),
        (&mut lagging, ResetReason::Lagged),
    ] {
        match sub.try_next() {
            Some(StreamItem::Reset(reset)) => assert_eq!(reset.reason, reason),
            other => panic!("expected a {reason:?} reset, got {other:?}"),
        }
        match sub.try_next() {
            Some(StreamItem::Event(ev)) => assert_eq!(ev.id, next),
            other => panic!("expected the next event, got {other:?}"),
        }
        assert_eq!(sub.try_next(), None);
    }
}

#[test]
fn forgotten_streams_give_their_bytes_back() {
    let (clock, hub) = budget_hub(u64::MAX);
    for s in 0..100 {
        hub.publish_now(&format!("dongle:{s}"), "log", "{}")
            .expect("publish");
    }
    assert_eq!(hub.history_stats().events, 100);
    assert!(hub.history_stats().bytes > 100 * 2);
    clock.advance(60_001);
    assert_eq!(hub.prune_idle_streams(), 100);
    assert_eq!(hub.history_stats().bytes, 0);
    assert_eq!(hub.history_stats().events, 0);
}
