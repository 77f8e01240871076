//! The response body stream on tokio's paused clock: first bytes at once, keep-alive comments
//! after silence, and the keep-alive timer reset by real traffic.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use sse_core::encoder::{BodyOptions, event_stream_body};
use sse_core::parser::{EventStreamParser, ParsedItem};
use sse_core::{EventId, StoredEvent, StreamItem};

fn item(n: u64) -> Result<StreamItem, sse_core::SseError> {
    Ok(StreamItem::Event(Arc::new(StoredEvent {
        id: EventId::new(1000, n),
        event_type: "log".into(),
        data: format!("line {n}\r\nsecond"),
        published_ms: 1000,
    })))
}

#[tokio::test(start_paused = true)]
async fn first_bytes_at_once_keep_alive_after_silence_reset_by_traffic() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let items = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let options = BodyOptions {
        keep_alive: Duration::from_secs(15),
        retry_ms: Some(2000),
    };
    let mut body = Box::pin(event_stream_body(items, options));

    let first = body
        .next()
        .now_or_never()
        .flatten()
        .expect("first chunk ready at once");
    assert_eq!(&first[..], b"retry: 2000\n: stream open\n\n");
    assert!(body.next().now_or_never().is_none(), "nothing else yet");

    tokio::time::advance(Duration::from_secs(14)).await;
    tx.send(item(1)).expect("send");
    let chunk = body.next().await.expect("event chunk");
    assert_eq!(
        &chunk[..],
        b"event: log\ndata: line 1\ndata: second\nid: 1000-1\n\n"
    );

    // 14 s after the event: the timer was reset by it, so no keep-alive yet.
    tokio::time::advance(Duration::from_secs(14)).await;
    assert!(
        body.next().now_or_never().is_none(),
        "keep-alive must wait 15 s after traffic"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let ka = body.next().await.expect("keep-alive");
    assert_eq!(&ka[..], b": keep-alive\n\n");

    // Parsing everything gives the retry and the event, with CRLF turned into LF.
    let mut parser = EventStreamParser::new();
    let mut out = Vec::new();
    for c in [first, chunk, ka] {
        parser.feed(&c, &mut out);
    }
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], ParsedItem::Retry(2000));
    match &out[1] {
        ParsedItem::Event(e) => {
            assert_eq!(
                (
                    e.event_type.as_str(),
                    e.data.as_str(),
                    e.last_event_id.as_str()
                ),
                ("log", "line 1\nsecond", "1000-1")
            );
        }
        other => panic!("{other:?}"),
    }
    drop(tx);
    assert!(
        body.next().await.is_none(),
        "body ends with the subscription"
    );
}
