//! Resume stress: a publisher at full speed and subscribers that disconnect and resume at random
//! moments. Every subscriber's events must be contiguous in the published order with no
//! duplicate, except right after a `stream_reset`, which must come first in its subscription (or
//! be a `lagged` reset) and be followed by exactly the event it names as `oldest`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sse_core::{
    EventBackend, EventId, MemoryBackend, ResetReason, StreamBounds, StreamConfig, StreamItem,
    SystemClock,
};
use tokio::sync::watch;

const GUARD: Duration = Duration::from_secs(30);

#[derive(Debug)]
enum Seen {
    Event(EventId),
    Reset {
        reason: ResetReason,
        oldest: Option<String>,
        first_in_subscription: bool,
    },
}

async fn subscriber(
    b: Arc<dyn EventBackend>,
    key: String,
    seed: u64,
    first: EventId,
    mut done: watch::Receiver<Option<EventId>>,
) -> Vec<Seen> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = Vec::new();
    let mut last: Option<EventId> = Some(first);
    loop {
        let last_str = last.map(|id| id.to_string());
        let mut sub = b
            .subscribe(&key, last_str.as_deref())
            .await
            .expect("subscribe");
        let take = rng.random_range(1..400);
        for n in 0..take {
            if let Some(final_id) = *done.borrow_and_update()
                && last >= Some(final_id)
            {
                return seen;
            }
            let item = tokio::select! {
                item = sub.next() => item,
                // The publisher finished and we are caught up: no more items will come.
                _ = done.changed() => continue,
            };
            let item = tokio::time::timeout(GUARD, async { item })
                .await
                .expect("guard");
            match item.expect("stream open").expect("no error") {
                StreamItem::Event(e) => {
                    last = Some(e.id);
                    seen.push(Seen::Event(e.id));
                }
                StreamItem::Reset(r) => seen.push(Seen::Reset {
                    reason: r.reason,
                    oldest: r.oldest.clone(),
                    first_in_subscription: n == 0,
                }),
            }
        }
        // Disconnect at a random moment, sometimes after a pause, and resume with the last ID.
        drop(sub);
        if rng.random_bool(0.3) {
            tokio::task::yield_now().await;
        } else if rng.random_bool(0.1) {
            // Stall now and then so that some subscribers fall behind the buffer.
            tokio::time::sleep(Duration::from_millis(rng.random_range(1..20))).await;
        }
    }
}

fn check(published: &[EventId], seen: &[Seen], who: usize) -> usize {
    let index = |id: &EventId| {
        published
            .binary_search(id)
            .unwrap_or_else(|_| panic!("subscriber {who}: unknown id {id}"))
    };
    let mut prev: Option<usize> = Some(0);
    let mut resets = 0;
    let mut after_reset: Option<String> = None;
    for s in seen {
        match s {
            Seen::Reset {
                reason,
                oldest,
                first_in_subscription,
            } => {
                assert!(
                    *first_in_subscription || *reason == ResetReason::Lagged,
                    "subscriber {who}: reset in the middle: {s:?}"
                );
                // Two resets in a row are legitimate: a client that disconnects right after a
                // reset resumes with the same (still stale) ID and is reset again, and a
                // subscriber can lag twice before reading. What must hold is that the next
                // event is the oldest one the latest reset announced.
                after_reset = Some(oldest.clone().expect("history retained"));
                resets += 1;
            }
            Seen::Event(id) => {
                let i = index(id);
                if let Some(oldest) = after_reset.take() {
                    assert_eq!(
                        id.to_string(),
                        oldest,
                        "subscriber {who}: after a reset comes the oldest event"
                    );
                    assert!(
                        prev.is_none_or(|p| i > p),
                        "subscriber {who}: went back after reset"
                    );
                } else if let Some(p) = prev {
                    assert_eq!(i, p + 1, "subscriber {who}: gap or duplicate at {id}");
                }
                prev = Some(i);
            }
        }
    }
    assert_eq!(
        prev,
        Some(published.len() - 1),
        "subscriber {who} reached the end"
    );
    resets
}

async fn stress(
    b: Arc<dyn EventBackend>,
    key: &str,
    events: usize,
    subscribers: usize,
    max_events: usize,
) -> usize {
    b.configure_stream(
        key,
        StreamConfig {
            bounds: StreamBounds {
                max_events,
                max_age_ms: 600_000,
            },
        },
    )
    .expect("configure");
    let first = b.publish(key, "log", "start").await.expect("publish");
    let (done_tx, done_rx) = watch::channel(None);
    let subs: Vec<_> = (0..subscribers)
        .map(|i| {
            let b = Arc::clone(&b);
            let key = key.to_owned();
            let rx = done_rx.clone();
            tokio::spawn(async move { subscriber(b, key, i as u64, first, rx).await })
        })
        .collect();
    // Everyone starts from the first event, so every id after it must be seen.
    let mut published = vec![first];
    let publisher = {
        let b = Arc::clone(&b);
        let key = key.to_owned();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(events);
            for i in 0..events {
                ids.push(
                    b.publish(&key, "log", &i.to_string())
                        .await
                        .expect("publish"),
                );
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            ids
        })
    };
    published.extend(publisher.await.expect("publisher"));
    done_tx.send_replace(published.last().copied());
    let mut total_resets = 0;
    for (who, handle) in subs.into_iter().enumerate() {
        let seen = handle.await.expect("subscriber task");
        total_resets += check(&published, &seen, who);
    }
    total_resets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_resume_stress() {
    let b: Arc<dyn EventBackend> = Arc::new(MemoryBackend::new(
        Arc::new(SystemClock),
        StreamConfig::default(),
    ));
    let resets = stress(b, "dongle:stress", 8_000, 6, 300).await;
    eprintln!("memory stress: {resets} resets over 6 subscribers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_resume_stress() {
    let backend = Arc::new(support::redis_backend(Arc::new(SystemClock)).await);
    let b: Arc<dyn EventBackend> = backend.clone();
    let resets = stress(b, "dongle:stress", 1_500, 4, 150).await;
    eprintln!("redis stress: {resets} resets over 4 subscribers");
    backend
        .delete_stream("dongle:stress")
        .await
        .expect("cleanup");
}
