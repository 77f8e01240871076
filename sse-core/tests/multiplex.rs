//! The multiplexed body end to end, as a client reads it: composite IDs, stream-tagged data,
//! exact resume per stream, `~` parts and resets. Run against the in-memory hub and real Redis
//! (`REDIS_URL`, default `redis://127.0.0.1:6379`; the Redis run fails when it is unreachable).

mod support;

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;
use sse_core::encoder::BodyOptions;
use sse_core::multiplex::open_body;
use sse_core::parser::{EventStreamParser, ParsedEvent, ParsedItem};
use sse_core::{
    EventBackend, EventId, ManualClock, RedisBackend, RedisBackendConfig, StreamBounds,
    StreamConfig,
};
use support::{for_each_backend, manual_clock};

/// A hang guard, not a timing assertion.
const GUARD: Duration = Duration::from_secs(20);

type Body = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// A client of one multiplexed response.
struct Client {
    body: Body,
    parser: EventStreamParser,
    ready: Vec<ParsedEvent>,
}

impl Client {
    async fn open(b: &dyn EventBackend, keys: &[&str], last: Option<&str>) -> Client {
        let keys = keys.iter().map(|k| (*k).to_owned()).collect();
        let options = BodyOptions {
            keep_alive: Duration::from_secs(3600),
            retry_ms: Some(1000),
        };
        let body = open_body(b, keys, last, options).await;
        let mut parser = EventStreamParser::new();
        if let Some(last) = last {
            parser.set_last_event_id(last);
        }
        Client {
            body: Box::pin(body),
            parser,
            ready: Vec::new(),
        }
    }

    async fn next(&mut self) -> ParsedEvent {
        loop {
            if !self.ready.is_empty() {
                return self.ready.remove(0);
            }
            let chunk = tokio::time::timeout(GUARD, self.body.next())
                .await
                .expect("an event within the guard time")
                .expect("the body goes on");
            let mut out = Vec::new();
            self.parser.feed(&chunk, &mut out);
            self.ready.extend(out.into_iter().filter_map(|i| match i {
                ParsedItem::Event(e) => Some(e),
                ParsedItem::Retry(_) => None,
            }));
        }
    }

    async fn take(&mut self, n: usize) -> Vec<ParsedEvent> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next().await);
        }
        events
    }
}

fn json(e: &ParsedEvent) -> Value {
    serde_json::from_str(&e.data).expect("data is JSON")
}

async fn log(b: &dyn EventBackend, key: &str, text: &str) -> EventId {
    let data = format!("{{\"message\":\"{text}\"}}");
    b.publish(key, "log", &data).await.expect("publish")
}

const A: &str = "dongle:a";
const G: &str = "group:g";

mod cases {
    use super::*;

    pub(crate) async fn both_streams_tagged_and_resumed_exactly(
        b: &dyn EventBackend,
        _c: &ManualClock,
    ) {
        let mut client = Client::open(b, &[A, G], None).await;
        // Nothing was ever published on either stream: both parts start as `~`.
        let g1 = log(b, G, "g1").await;
        let event = client.next().await;
        assert_eq!(event.event_type, "log");
        assert_eq!(event.last_event_id, format!("~,{g1}"));
        assert_eq!(
            event.data,
            format!(r#"{{"stream":"group:g","stream_id":"{g1}","message":"g1"}}"#)
        );
        let a1 = log(b, A, "a1").await;
        let event = client.next().await;
        assert_eq!(event.last_event_id, format!("{a1},{g1}"));
        assert_eq!(json(&event)["stream"], A);
        let last = event.last_event_id;
        drop(client);

        log(b, A, "a-away-1").await;
        log(b, G, "g-away").await;
        log(b, A, "a-away-2").await;
        let mut resumed = Client::open(b, &[A, G], Some(&last)).await;
        let missed = resumed.take(3).await;
        let (mut on_a, mut on_g) = (Vec::new(), Vec::new());
        for event in &missed {
            assert_eq!(event.event_type, "log", "no reset on an exact resume");
            let body = json(event);
            let line = body["message"].as_str().expect("message").to_owned();
            if body["stream"] == A {
                on_a.push(line)
            } else {
                on_g.push(line)
            }
        }
        assert_eq!(on_a, ["a-away-1", "a-away-2"]);
        assert_eq!(on_g, ["g-away"]);
        // Live after the history.
        let live = log(b, G, "live").await;
        let event = resumed.next().await;
        assert!(
            event.last_event_id.ends_with(&format!(",{live}")),
            "{}",
            event.last_event_id
        );
    }

    pub(crate) async fn fresh_connection_starts_after_the_latest_event(
        b: &dyn EventBackend,
        _c: &ManualClock,
    ) {
        let before = log(b, A, "before").await;
        let mut client = Client::open(b, &[A, G], None).await;
        let live = log(b, A, "live").await;
        let event = client.next().await;
        assert_eq!(json(&event)["message"], "live");
        assert_eq!(event.last_event_id, format!("{live},~"));
        assert!(live > before);
    }

    pub(crate) async fn a_from_start_part_replays_a_complete_stream_without_reset(
        b: &dyn EventBackend,
        _c: &ManualClock,
    ) {
        let mut client = Client::open(b, &[A, G], None).await;
        let a1 = log(b, A, "a1").await;
        let first = client.next().await;
        assert_eq!(first.last_event_id, format!("{a1},~"));
        drop(client);
        let g1 = log(b, G, "g-while-away").await;
        let mut back = Client::open(b, &[A, G], Some(&first.last_event_id)).await;
        let event = back.next().await;
        assert_eq!(event.event_type, "log");
        assert_eq!(json(&event)["message"], "g-while-away");
        assert_eq!(event.last_event_id, format!("{a1},{g1}"));
    }

    pub(crate) async fn a_from_start_part_of_a_trimmed_stream_resets_that_stream(
        b: &dyn EventBackend,
        _c: &ManualClock,
    ) {
        let small = StreamConfig {
            bounds: StreamBounds {
                max_events: 2,
                max_age_ms: 60_000,
            },
        };
        b.configure_stream(G, small).expect("configure");
        let mut client = Client::open(b, &[A, G], None).await;
        let a1 = log(b, A, "a1").await;
        let first = client.next().await;
        drop(client);
        let mut g = Vec::new();
        for i in 0..5 {
            g.push(log(b, G, &format!("g{i}")).await);
        }
        let mut back = Client::open(b, &[A, G], Some(&first.last_event_id)).await;
        let events = back.take(3).await;
        assert_eq!(events[0].event_type, "stream_reset");
        let reset = json(&events[0]);
        assert_eq!(reset["stream"], G);
        assert!(reset.get("stream_id").is_none());
        assert_eq!(reset["oldest"], g[3].to_string());
        assert_eq!(reset["latest"], g[4].to_string());
        assert_eq!(
            events[0].last_event_id,
            format!("{a1},~"),
            "a reset has no id: line"
        );
        assert_eq!(json(&events[1])["message"], "g3");
        assert_eq!(events[2].last_event_id, format!("{a1},{}", g[4]));
    }

    pub(crate) async fn a_wrong_part_count_resets_every_stream(
        b: &dyn EventBackend,
        _c: &ManualClock,
    ) {
        let a1 = log(b, A, "a1").await;
        let mut client = Client::open(b, &[A, G], Some("1-0")).await;
        let resets = client.take(2).await;
        for (reset, stream) in resets.iter().zip([A, G]) {
            assert_eq!(reset.event_type, "stream_reset");
            let body = json(reset);
            assert_eq!(body["stream"], stream);
            assert_eq!(body["reason"], "malformed");
            assert_eq!(body["requested"], "1-0,");
        }
        // Then A's history; parts that were not IDs are written as `x`.
        let event = client.next().await;
        assert_eq!(event.last_event_id, format!("{a1},x"));
    }
}

for_each_backend!(
    cleanup: [super::A, super::G],
    both_streams_tagged_and_resumed_exactly,
    fresh_connection_starts_after_the_latest_event,
    a_from_start_part_replays_a_complete_stream_without_reset,
    a_from_start_part_of_a_trimmed_stream_resets_that_stream,
    a_wrong_part_count_resets_every_stream,
);

#[tokio::test]
async fn an_unreachable_hub_ends_the_body_after_an_error_comment() {
    let backend = RedisBackend::new(
        RedisBackendConfig::new("redis://127.0.0.1:1"),
        manual_clock(),
    )
    .expect("valid URL");
    let options = BodyOptions {
        keep_alive: Duration::from_secs(3600),
        retry_ms: Some(1000),
    };
    let body = open_body(&backend, vec![A.to_owned()], None, options).await;
    let chunks: Vec<Bytes> = tokio::time::timeout(GUARD, body.collect())
        .await
        .expect("the body ends");
    assert_eq!(&chunks[0][..], b"retry: 1000\n: stream open\n\n");
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    let comment = String::from_utf8_lossy(&chunks[1]);
    assert!(
        comment.starts_with(": error: redis error during position"),
        "{comment}"
    );
    assert!(
        comment.ends_with('\n') && !comment.contains("\n:"),
        "{comment}"
    );
}
