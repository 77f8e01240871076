//! One conformance suite for every `EventBackend`: in-memory and Redis (the real server from
//! `REDIS_URL`, default `redis://127.0.0.1:6379`; the Redis run fails when it is unreachable).

mod support;

use std::time::Duration;

use futures::StreamExt;
use sse_core::sampler::{SamplingConfig, StreamSamplers};
use sse_core::{
    Clock, ConsoleEvent, EventBackend, EventId, ManualClock, MemoryBackend, RedisBackend,
    RedisBackendConfig, ResetReason, SseError, StreamBounds, StreamConfig, StreamItem,
    StreamPosition, Subscription,
};
use support::{for_each_backend, manual_clock, redis_backend};

/// Bound on how long we wait for an item that must come (not a timing assertion: a hang guard).
const ITEM_GUARD: Duration = Duration::from_secs(20);

async fn next_item(sub: &mut Subscription) -> StreamItem {
    match tokio::time::timeout(ITEM_GUARD, sub.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(err))) => panic!("subscription error: {err}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no item within the guard time"),
    }
}

async fn next_event(sub: &mut Subscription) -> (EventId, String, String) {
    match next_item(sub).await {
        StreamItem::Event(e) => (e.id, e.event_type.clone(), e.data.clone()),
        StreamItem::Reset(r) => panic!("unexpected reset {r:?}"),
    }
}

async fn next_reset(sub: &mut Subscription) -> sse_core::StreamReset {
    match next_item(sub).await {
        StreamItem::Reset(r) => *r,
        StreamItem::Event(e) => panic!("expected a reset, got event {}", e.id),
    }
}

/// The next items of `sub` are one reset for `reason` naming `retained[0]` as the oldest
/// event held, then exactly `retained`, in order. Returns the reset.
async fn expect_reset_then(
    sub: &mut Subscription,
    reason: ResetReason,
    retained: &[EventId],
) -> sse_core::StreamReset {
    let reset = next_reset(sub).await;
    assert_eq!(reset.reason, reason);
    assert_eq!(reset.oldest, retained.first().map(EventId::to_string));
    for id in retained {
        assert_eq!(next_event(sub).await.0, *id);
    }
    reset
}

/// Subscribes to `key` resuming after `last` (as a `Last-Event-ID` would).
async fn resume(b: &dyn EventBackend, key: &str, last: EventId) -> Subscription {
    b.subscribe(key, Some(&last.to_string()))
        .await
        .expect("subscribe")
}

async fn publish_n(b: &dyn EventBackend, key: &str, n: usize, tag: &str) -> Vec<EventId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            b.publish(key, "log", &format!("{{\"{tag}\":{i}}}"))
                .await
                .expect("publish"),
        );
    }
    ids
}

/// Bounds stream `key` to `max_events` events of at most `max_age_ms`.
fn bound(b: &dyn EventBackend, key: &str, max_events: usize, max_age_ms: u64) {
    let bounds = StreamBounds {
        max_events,
        max_age_ms,
    };
    b.configure_stream(key, StreamConfig { bounds })
        .expect("configure");
}

/// Publish a marker and read until it: returns what came before it. Used to prove that nothing
/// else was queued without waiting for a timeout.
async fn drain_until_marker(
    b: &dyn EventBackend,
    sub: &mut Subscription,
    key: &str,
) -> Vec<StreamItem> {
    let marker = b
        .publish(key, "presence", "{\"marker\":true}")
        .await
        .expect("marker");
    let mut before = Vec::new();
    loop {
        let item = next_item(sub).await;
        if let StreamItem::Event(e) = &item
            && e.id == marker
        {
            return before;
        }
        before.push(item);
    }
}

/// Offers one `can_frame` at `now` to `samplers` and publishes what they decide (the switch
/// notice first), as a publisher that samples before publishing does; records what it published.
async fn offer_frame(
    b: &dyn EventBackend,
    samplers: &StreamSamplers<&'static str>,
    now: u64,
    published: &mut Vec<(EventId, &'static str)>,
) {
    let key = cases::KEY;
    let decision = samplers.decide(&key, now);
    if let Some(switch) = decision.switch {
        let data = ConsoleEvent::Log(samplers.notice(switch, now)).to_data();
        published.push((b.publish(key, "log", &data).await.expect("publish"), "log"));
    }
    if decision.send {
        let id = b.publish(key, "can_frame", "{}").await.expect("publish");
        published.push((id, "can_frame"));
    }
}

mod cases {
    use super::*;

    /// The stream every case uses (and `<KEY>-other` beside it).
    pub(crate) const KEY: &str = "dongle:1";

    pub(crate) async fn ids_increase_and_no_id_means_live_only(
        b: &dyn EventBackend,
        _c: &ManualClock,
    ) {
        let key = KEY;
        let before = publish_n(b, key, 5, "old").await;
        assert!(
            before.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing: {before:?}"
        );
        let mut sub = b.subscribe(key, None).await.expect("subscribe");
        let live = publish_n(b, key, 3, "new").await;
        assert!(live[0] > before[4]);
        for id in &live {
            assert_eq!(next_event(&mut sub).await.0, *id);
        }
        assert!(drain_until_marker(b, &mut sub, key).await.is_empty());
    }

    pub(crate) async fn exact_resume_from_middle_then_live(b: &dyn EventBackend, _c: &ManualClock) {
        let key = KEY;
        let ids = publish_n(b, key, 10, "e").await;
        let mut sub = resume(b, key, ids[3]).await;
        for (i, id) in ids.iter().enumerate().skip(4) {
            let (got, t, data) = next_event(&mut sub).await;
            assert_eq!(
                (got, t.as_str(), data),
                (*id, "log", format!("{{\"e\":{i}}}"))
            );
        }
        let live = publish_n(b, key, 2, "l").await;
        for id in live {
            assert_eq!(next_event(&mut sub).await.0, id);
        }
    }

    pub(crate) async fn resume_from_latest_gets_only_live(b: &dyn EventBackend, _c: &ManualClock) {
        let key = KEY;
        let ids = publish_n(b, key, 4, "e").await;
        let mut sub = resume(b, key, ids[3]).await;
        assert!(drain_until_marker(b, &mut sub, key).await.is_empty());
    }

    pub(crate) async fn malformed_id_resets_once_then_history_then_live(
        b: &dyn EventBackend,
        _c: &ManualClock,
    ) {
        let key = KEY;
        let ids = publish_n(b, key, 3, "e").await;
        for bad in ["garbage", "", "12-", "-5", "1.5-0"] {
            let mut sub = b.subscribe(key, Some(bad)).await.expect("subscribe");
            let reset = next_reset(&mut sub).await;
            assert_eq!(reset.reason, ResetReason::Malformed, "{bad:?}");
            assert_eq!(reset.requested.as_deref(), Some(bad));
            assert_eq!(reset.oldest, Some(ids[0].to_string()));
            assert!(reset.latest.is_some());
            for id in &ids {
                assert_eq!(next_event(&mut sub).await.0, *id);
            }
            // Exactly one reset: everything after it is history, then the marker.
            let rest = drain_until_marker(b, &mut sub, key).await;
            assert!(
                rest.iter()
                    .all(|i| matches!(i, StreamItem::Event(e) if e.event_type == "presence")),
                "{rest:?}"
            );
        }
    }

    pub(crate) async fn newer_than_latest_resets(b: &dyn EventBackend, _c: &ManualClock) {
        let key = KEY;
        let ids = publish_n(b, key, 2, "e").await;
        let newer = EventId::new(ids[1].ms + 1_000_000, 0);
        let mut sub = resume(b, key, newer).await;
        let reset = expect_reset_then(&mut sub, ResetReason::NewerThanLatest, &ids).await;
        assert_eq!(reset.latest, Some(ids[1].to_string()));
    }

    pub(crate) async fn too_old_resets_then_retained_history(
        b: &dyn EventBackend,
        _c: &ManualClock,
    ) {
        let key = KEY;
        bound(b, key, 3, 60_000);
        let ids = publish_n(b, key, 8, "e").await;
        let mut sub = resume(b, key, ids[0]).await;
        let reset = expect_reset_then(&mut sub, ResetReason::TooOld, &ids[5..]).await;
        assert_eq!(reset.latest, Some(ids[7].to_string()));
    }

    pub(crate) async fn publishing_during_replay_loses_and_repeats_nothing(
        b: &dyn EventBackend,
        _c: &ManualClock,
    ) {
        let key = KEY;
        let first = publish_n(b, key, 300, "a").await;
        let mut sub = resume(b, key, first[0]).await;
        let (more, received) = tokio::join!(publish_n(b, key, 300, "b"), async {
            let mut got = Vec::new();
            for _ in 0..599 {
                got.push(next_event(&mut sub).await.0);
            }
            got
        });
        let expected: Vec<EventId> = first[1..].iter().chain(more.iter()).copied().collect();
        assert_eq!(received, expected);
    }

    pub(crate) async fn lagging_subscriber_gets_one_reset_and_continues_from_oldest(
        b: &dyn EventBackend,
        _c: &ManualClock,
    ) {
        let key = KEY;
        bound(b, key, 5, 60_000);
        let mut sub = b.subscribe(key, None).await.expect("subscribe");
        let ids = publish_n(b, key, 20, "e").await;
        expect_reset_then(&mut sub, ResetReason::Lagged, &ids[15..]).await;
        assert!(drain_until_marker(b, &mut sub, key).await.is_empty());
    }

    pub(crate) async fn bad_input_is_refused(b: &dyn EventBackend, _c: &ManualClock) {
        let key = KEY;
        assert!(b.publish(key, "bad\ntype", "x").await.is_err());
        assert!(b.publish(key, "", "x").await.is_err());
        assert!(b.publish("bad key", "log", "x").await.is_err());
        assert!(b.subscribe("", None).await.is_err());
        // Nothing was stored by the refused calls.
        let ok = b.publish(key, "log", "x").await.expect("publish");
        let mut sub = b.subscribe(key, Some("0-0")).await.expect("subscribe");
        let _reset = next_reset(&mut sub).await;
        assert_eq!(next_event(&mut sub).await.0, ok);
    }

    pub(crate) async fn streams_are_independent(b: &dyn EventBackend, _c: &ManualClock) {
        let key = KEY;
        let other = format!("{key}-other");
        let mut sub = b.subscribe(key, None).await.expect("subscribe");
        b.publish(&other, "log", "elsewhere")
            .await
            .expect("publish");
        let mine = b.publish(key, "log", "here").await.expect("publish");
        assert_eq!(next_event(&mut sub).await.0, mine);
    }

    /// Sampling happens before publishing (`StreamSamplers`): the backend stores and yields
    /// exactly what was published — the sampled frames and one `log` per switch.
    pub(crate) async fn sampled_before_publishing_each_switch_announced_once(
        b: &dyn EventBackend,
        c: &ManualClock,
    ) {
        let key = KEY;
        let samplers = StreamSamplers::new(SamplingConfig {
            threshold_per_s: 10,
        });
        let mut sub = b.subscribe(key, None).await.expect("subscribe");
        let mut published = Vec::new();
        // 100 frames within one second, then a quiet second, then one frame to close it.
        for _ in 0..100 {
            offer_frame(b, &samplers, c.now_ms(), &mut published).await;
            c.advance(5);
        }
        c.advance(1_000);
        offer_frame(b, &samplers, c.now_ms(), &mut published).await;
        c.advance(1_000);
        offer_frame(b, &samplers, c.now_ms(), &mut published).await;
        let items = drain_until_marker(b, &mut sub, key).await;
        let delivered: Vec<(EventId, &str)> = items
            .iter()
            .filter_map(|i| match i {
                StreamItem::Event(e) => Some((
                    e.id,
                    if e.event_type == "log" {
                        "log"
                    } else {
                        "can_frame"
                    },
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            delivered, published,
            "every published event is delivered, in order"
        );
        let logs: Vec<&String> = items
            .iter()
            .filter_map(|i| match i {
                StreamItem::Event(e) if e.event_type == "log" => Some(&e.data),
                _ => None,
            })
            .collect();
        assert_eq!(logs.len(), 2, "one log per switch: {logs:?}");
        assert!(
            logs[0].contains("\"active\":true") && logs[1].contains("\"active\":false"),
            "{logs:?}"
        );
        let frames = published.iter().filter(|(_, t)| *t == "can_frame").count();
        assert!(frames < 60 && frames > 10, "sampled output: {frames}");
        assert_eq!(
            published.last().map(|(_, t)| *t),
            Some("can_frame"),
            "sending resumes after sampling off"
        );
    }

    pub(crate) async fn position_tracks_latest_and_trimming(b: &dyn EventBackend, c: &ManualClock) {
        let key = KEY;
        let none = b.position(key).await.expect("position");
        assert_eq!(none, StreamPosition::default());
        assert!(none.complete());
        let first = publish_n(b, key, 2, "e").await;
        let at = b.position(key).await.expect("position");
        assert_eq!(
            (at.latest, at.published, at.retained),
            (Some(first[1]), 2, 2)
        );
        assert!(at.complete());
        bound(b, key, 2, 1_000);
        let more = publish_n(b, key, 2, "f").await;
        let trimmed = b.position(key).await.expect("position");
        assert_eq!(
            (trimmed.latest, trimmed.published, trimmed.retained),
            (Some(more[1]), 4, 2)
        );
        assert!(!trimmed.complete());
        // Aged out entirely: the latest ID is still known.
        c.advance(5_000);
        let aged = b.position(key).await.expect("position");
        assert_eq!(
            (aged.latest, aged.published, aged.retained),
            (Some(more[1]), 4, 0)
        );
        assert!(b.position("bad key").await.is_err());
    }

    pub(crate) async fn events_older_than_max_age_are_not_replayed(
        b: &dyn EventBackend,
        c: &ManualClock,
    ) {
        let key = KEY;
        bound(b, key, 100, 1_000);
        let old = publish_n(b, key, 3, "old").await;
        c.advance(600);
        let young = publish_n(b, key, 2, "young").await;
        c.advance(600);
        // old are now 1,200 ms old (> 1,000), young 600 ms.
        let mut sub = resume(b, key, old[0]).await;
        expect_reset_then(&mut sub, ResetReason::TooOld, &young).await;
    }
}

for_each_backend!(
    cleanup: ["dongle:1", "dongle:1-other"],
    ids_increase_and_no_id_means_live_only,
    exact_resume_from_middle_then_live,
    resume_from_latest_gets_only_live,
    malformed_id_resets_once_then_history_then_live,
    newer_than_latest_resets,
    too_old_resets_then_retained_history,
    publishing_during_replay_loses_and_repeats_nothing,
    lagging_subscriber_gets_one_reset_and_continues_from_oldest,
    bad_input_is_refused,
    streams_are_independent,
    sampled_before_publishing_each_switch_announced_once,
    events_older_than_max_age_are_not_replayed,
    position_tracks_latest_and_trimming,
);

#[tokio::test]
async fn memory_prunes_idle_streams_only() {
    let clock = manual_clock();
    let backend = MemoryBackend::new(clock.clone(), StreamConfig::default());
    publish_n(&backend, "dongle:1", 1, "e").await;
    let _sub = backend
        .subscribe("dongle:2", None)
        .await
        .expect("subscribe");
    backend.position("dongle:3").await.expect("position");
    assert_eq!(EventBackend::prune_idle_streams(&backend), 0);
    clock.advance(61_000);
    // dongle:1 aged out; dongle:2 has a subscriber; dongle:3 was never created.
    assert_eq!(EventBackend::prune_idle_streams(&backend), 1);
    assert!(backend.stream_stats("dongle:1").is_none());
    assert!(backend.stream_stats("dongle:2").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_prunes_local_state_of_idle_default_streams() {
    let clock = manual_clock();
    let backend = redis_backend(clock.clone()).await;
    let custom = StreamConfig {
        bounds: StreamBounds {
            max_events: 5,
            max_age_ms: 1_000_000,
        },
    };
    backend
        .configure_stream("group:1", custom)
        .expect("configure");
    publish_n(&backend, "group:1", 1, "e").await;
    publish_n(&backend, "dongle:1", 1, "e").await;
    assert_eq!(backend.prune_idle_streams(), 0);
    clock.advance(61_000);
    assert_eq!(backend.prune_idle_streams(), 1, "only the default stream");
    // Its history is in Redis, not in local state: still there.
    let at = backend.position("dongle:1").await.expect("position");
    assert_eq!(at.published, 1);
    for key in ["group:1", "dongle:1"] {
        backend.delete_stream(key).await.expect("cleanup");
    }
}

#[tokio::test]
async fn unreachable_redis_fails_fast_and_is_retried_later() {
    let clock = manual_clock();
    // Port 1 on loopback: connection refused.
    let mut config = RedisBackendConfig::new("redis://127.0.0.1:1");
    config.reconnect_pause = Duration::from_millis(200);
    assert!(
        RedisBackend::connect(config.clone(), clock.clone())
            .await
            .is_err()
    );
    let backend = RedisBackend::new(config, clock).expect("a valid URL is accepted");
    let first = backend.publish("dongle:1", "log", "{}").await;
    assert!(
        matches!(&first, Err(e @ SseError::Redis { .. }) if e.is_retryable()),
        "{first:?}"
    );
    let paused = backend.publish("dongle:1", "log", "{}").await;
    assert!(
        matches!(&paused, Err(e @ SseError::RedisUnavailable { .. }) if e.is_retryable()),
        "{paused:?}"
    );
    assert!(matches!(
        backend.subscribe("dongle:1", None).await,
        Err(SseError::RedisUnavailable { .. })
    ));
    assert!(matches!(
        backend.position("dongle:1").await,
        Err(SseError::RedisUnavailable { .. })
    ));
    // After the pause it tries again (and fails again, with the real error).
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        backend.publish("dongle:1", "log", "{}").await,
        Err(SseError::Redis { .. })
    ));
    assert!(RedisBackend::new(RedisBackendConfig::new("not a url"), manual_clock()).is_err());
}
