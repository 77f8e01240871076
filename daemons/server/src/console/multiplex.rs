//! The multiplexed console stream: several dongle and group streams on one connection.
//!
//! ## IDs and resume
//! Every event carries a composite ID: one part per stream, in the order the streams are named
//! in the URL (dongles first, then groups), joined by `,`. A part is the ID of the last event
//! delivered from that stream, or `~` when none was delivered yet and the stream's retained
//! history was complete when this connection started. A browser's `EventSource` sends the last
//! composite back as `Last-Event-ID` on reconnect, and each stream resumes from its own part
//! exactly as a single stream would (`stream_reset` per stream when it cannot). A `~` part
//! resumes from the start of the stream's history; if the stream lost events to trimming
//! meanwhile, it gets a `stream_reset` instead of silently missing them. A composite with the
//! wrong number of parts resets every stream (`malformed`).
//!
//! Each event's data is the stream's own JSON object with `stream` (`dongle:<id>` or
//! `group:<id>`) and `stream_id` (its ID in that stream) added first; a `stream_reset` gets
//! `stream` only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sse_core::encoder::{encode_comment, encode_event};
use sse_core::{SseError, StreamItem};

use super::events::tag_with_stream;
use super::hub::Hub;

/// The part that stands for "from the start of a stream that had lost nothing".
pub(crate) const FROM_START: &str = "~";
/// The ID resumed from for a [`FROM_START`] part: below every ID a hub issues.
const BEFORE_EVERYTHING: &str = "0-0";

/// Where one stream of a multiplexed connection starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// Resume after this ID (as given, even when malformed: the hub answers with a reset).
    After(String),
    /// From the start of its retained history.
    FromStart,
}

/// Splits a composite `Last-Event-ID` into one start per stream; `None` when absent.
pub(crate) fn parse_composite(raw: &str, streams: usize) -> Vec<Start> {
    let parts: Vec<&str> = raw.split(',').collect();
    if parts.len() != streams {
        // Keep the comma so the hub sees a malformed ID for every stream.
        let malformed = if raw.contains(',') {
            raw.to_owned()
        } else {
            format!("{raw},")
        };
        return vec![Start::After(malformed); streams];
    }
    parts
        .into_iter()
        .map(|part| {
            if part == FROM_START {
                Start::FromStart
            } else {
                Start::After(part.to_owned())
            }
        })
        .collect()
}

/// The part written for a start before any event of the stream arrived: the requested ID when
/// it is one (so a reconnect asks the same), `~` for [`Start::FromStart`], and `x` for anything
/// that cannot go on an `id:` line or inside a composite (the hub then answers `malformed`).
fn initial_part(start: &Start) -> String {
    match start {
        Start::FromStart => FROM_START.to_owned(),
        Start::After(id)
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'-') =>
        {
            id.clone()
        }
        Start::After(_) => "x".to_owned(),
    }
}

/// One stream of a multiplexed connection.
pub(crate) struct Member {
    /// `dongle:<id>` or `group:<id>`.
    pub(crate) key: String,
    /// Where it starts.
    pub(crate) start: Start,
}

/// Subscribes to every member and merges them into one item stream tagged with the member's
/// index. A `~` member resumes from `0-0`; the reset that always answers it is swallowed when
/// the stream still holds every event it ever had.
pub(crate) async fn subscribe_all(
    hub: &Hub,
    members: &[Member],
) -> Result<BoxStream<'static, (usize, Result<StreamItem, SseError>)>, SseError> {
    let mut streams = Vec::with_capacity(members.len());
    for (i, member) in members.iter().enumerate() {
        let sub = match &member.start {
            Start::After(id) => hub.subscribe(&member.key, Some(id)).await?.boxed(),
            Start::FromStart => {
                let sub = hub.subscribe(&member.key, Some(BEFORE_EVERYTHING)).await?;
                let complete = hub.position(&member.key).await?.complete;
                sub.enumerate()
                    .filter_map(move |(n, item)| {
                        let swallow =
                            n == 0 && complete && matches!(item, Ok(StreamItem::Reset(_)));
                        futures::future::ready((!swallow).then_some(item))
                    })
                    .boxed()
            }
        };
        streams.push(sub.map(move |item| (i, item)).boxed());
    }
    Ok(futures::stream::select_all(streams).boxed())
}

/// Where each stream of a fresh connection (no `Last-Event-ID`) starts: after its latest ID, or
/// from the start when it has none.
pub(crate) async fn fresh_starts(hub: &Hub, keys: &[String]) -> Result<Vec<Start>, SseError> {
    let mut starts = Vec::with_capacity(keys.len());
    for key in keys {
        let position = hub.position(key).await?;
        starts.push(match position.latest {
            Some(latest) => Start::After(latest.to_string()),
            None => Start::FromStart,
        });
    }
    Ok(starts)
}

/// Encodes merged items with composite IDs.
pub(crate) struct CompositeEncoder {
    names: Arc<[String]>,
    parts: Vec<String>,
}

impl CompositeEncoder {
    pub(crate) fn new(members: &[Member]) -> CompositeEncoder {
        CompositeEncoder {
            names: members.iter().map(|m| m.key.clone()).collect(),
            parts: members.iter().map(|m| initial_part(&m.start)).collect(),
        }
    }

    /// Appends one item from member `i`.
    pub(crate) fn encode(&mut self, out: &mut BytesMut, i: usize, item: &StreamItem) {
        let Some(name) = self.names.get(i) else {
            return;
        };
        match item {
            StreamItem::Event(ev) => {
                let id = ev.id.to_string();
                let data = tag_with_stream(&ev.data, name, Some(&id));
                if let Some(part) = self.parts.get_mut(i) {
                    *part = id;
                }
                let composite = self.parts.join(",");
                if encode_event(out, Some(&ev.event_type), Some(&composite), &data).is_err() {
                    out.put_slice(b": unencodable event\n\n");
                }
            }
            StreamItem::Reset(reset) => {
                let raw = serde_json::to_string(reset.as_ref()).unwrap_or_else(|_| "{}".to_owned());
                let data = tag_with_stream(&raw, name, None);
                if encode_event(out, Some("stream_reset"), None, &data).is_err() {
                    out.put_slice(b": unencodable reset\n\n");
                }
            }
        }
    }
}

/// The response body: an opening chunk (`retry:` and a comment), one chunk per item, keep-alive
/// comments after `keep_alive` of silence; an error ends it after a comment naming it.
pub(crate) fn body(
    items: BoxStream<'static, (usize, Result<StreamItem, SseError>)>,
    encoder: CompositeEncoder,
    keep_alive: Duration,
    retry_ms: u64,
) -> impl Stream<Item = Bytes> + Send {
    struct State {
        items: BoxStream<'static, (usize, Result<StreamItem, SseError>)>,
        encoder: CompositeEncoder,
        timer: Pin<Box<tokio::time::Sleep>>,
        opening: bool,
        done: bool,
    }
    let state = State {
        items,
        encoder,
        timer: Box::pin(tokio::time::sleep(keep_alive)),
        opening: true,
        done: false,
    };
    futures::stream::unfold(state, move |mut st| async move {
        let mut out = BytesMut::new();
        if st.opening {
            st.opening = false;
            out.put_slice(format!("retry: {retry_ms}\n: stream open\n\n").as_bytes());
            return Some((out.freeze(), st));
        }
        if st.done {
            return None;
        }
        tokio::select! {
            item = st.items.next() => match item {
                Some((i, Ok(item))) => st.encoder.encode(&mut out, i, &item),
                Some((_, Err(err))) => {
                    let text = err.to_string().replace(['\r', '\n'], " ");
                    let _ = encode_comment(&mut out, &format!("error: {text}"));
                    out.put_u8(b'\n');
                    st.done = true;
                }
                None => return None,
            },
            () = &mut st.timer => out.put_slice(b": keep-alive\n\n"),
        }
        let deadline = tokio::time::Instant::now() + keep_alive;
        st.timer.as_mut().reset(deadline);
        Some((out.freeze(), st))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_ids_split_per_stream() {
        assert_eq!(
            parse_composite("1-0,~", 2),
            vec![Start::After("1-0".to_owned()), Start::FromStart]
        );
        let wrong = parse_composite("1-0", 2);
        assert_eq!(wrong, vec![Start::After("1-0,".to_owned()); 2]);
        assert!(wrong.iter().all(|s| initial_part(s) == "x"));
        assert_eq!(initial_part(&Start::After("5-1".to_owned())), "5-1");
        assert_eq!(initial_part(&Start::After("a\nb".to_owned())), "x");
    }
}
