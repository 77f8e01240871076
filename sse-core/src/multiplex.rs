//! Several streams on one response, with composite IDs.
//!
//! ## IDs and resume
//! Every event carries a composite ID: one part per stream, in the order the streams were
//! named, joined by `,`. A part is the ID of the last event delivered from that stream, or `~`
//! ([`FROM_START`]) when none was delivered yet and the stream's history was complete (nothing
//! ever trimmed) when the connection started. A browser's `EventSource` sends the last composite
//! back as `Last-Event-ID` on reconnect, and each stream resumes from its own part exactly as a
//! single stream would (one `stream_reset` for that stream when it cannot). A `~` part resumes
//! from the start of the stream's history; if the stream lost events to trimming meanwhile, it
//! gets a `stream_reset` instead of silently missing them. A composite with the wrong number of
//! parts resets every stream (`malformed`); a part that cannot be an ID is written back as `x`
//! until its stream delivers an event.
//!
//! ## Data
//! Each event's data is the stream's own JSON object with `stream` (the stream key) and
//! `stream_id` (the event's ID in that stream) inserted first; a `stream_reset` gets `stream`
//! only ([`tag_with_stream`]).
//!
//! ## Use
//! [`starts`] turns a `Last-Event-ID` (or its absence) into a [`Start`] per stream;
//! [`subscribe`] merges the streams; [`body`] encodes the merged items with a
//! [`CompositeEncoder`]. [`open_body`] does all three and never fails: an error ends the body
//! after a comment naming it, so the client reconnects.

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::backend::EventBackend;
use crate::buffer::StreamItem;
use crate::encoder::{BodyOptions, encode_body, encode_event};
use crate::error::SseError;

/// The part that stands for "from the start of a stream that had lost nothing".
pub const FROM_START: &str = "~";
/// The part written for a requested part that cannot be an ID.
pub const INVALID_PART: &str = "x";
/// The ID resumed from for a [`FROM_START`] part: below every ID a hub issues.
const BEFORE_EVERYTHING: &str = "0-0";

/// Where one stream of a multiplexed connection starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Resume after this ID, as given (even when malformed: the hub answers with a reset).
    After(String),
    /// From the start of its retained history.
    FromStart,
}

/// Splits a composite `Last-Event-ID` into one [`Start`] per stream. Total: a composite with
/// the wrong number of parts gives every stream an `After` that the hub answers with a
/// `malformed` reset (the raw text, with a `,` appended if it had none, so it can never parse
/// as one ID).
pub fn parse_composite(raw: &str, streams: usize) -> Vec<Start> {
    let parts = raw.split(',');
    if parts.clone().count() != streams {
        let malformed = if raw.contains(',') {
            raw.to_owned()
        } else {
            format!("{raw},")
        };
        return vec![Start::After(malformed); streams];
    }
    parts
        .map(|part| {
            if part == FROM_START {
                Start::FromStart
            } else {
                Start::After(part.to_owned())
            }
        })
        .collect()
}

/// The part written for a start before any event of its stream arrived: the requested ID when
/// it looks like one (so a reconnect asks the same), `~` for [`Start::FromStart`], and
/// [`INVALID_PART`] for anything that cannot go on an `id:` line or inside a composite.
fn initial_part(start: &Start) -> String {
    match start {
        Start::FromStart => FROM_START.to_owned(),
        Start::After(id)
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'-') =>
        {
            id.clone()
        }
        Start::After(_) => INVALID_PART.to_owned(),
    }
}

/// One stream of a multiplexed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its stream key (`dongle:<id>`, `group:<id>`): subscribed to, and written as `stream`.
    pub key: String,
    /// Where it starts.
    pub start: Start,
}

/// Where each of `keys` starts: from the parts of `last_event_id` when given, otherwise after
/// each stream's latest ID, or [`Start::FromStart`] for a stream that has none.
pub async fn starts<B: EventBackend + ?Sized>(
    backend: &B,
    keys: &[String],
    last_event_id: Option<&str>,
) -> Result<Vec<Start>, SseError> {
    if let Some(raw) = last_event_id {
        return Ok(parse_composite(raw, keys.len()));
    }
    let mut starts = Vec::with_capacity(keys.len());
    for key in keys {
        starts.push(match backend.position(key).await?.latest {
            Some(latest) => Start::After(latest.to_string()),
            None => Start::FromStart,
        });
    }
    Ok(starts)
}

/// Merged items of a multiplexed connection, each with the index of its member.
pub type MultiplexItems = BoxStream<'static, Result<(usize, StreamItem), SseError>>;

/// Subscribes to every member and merges them. A `~` member resumes from `0-0`; the reset that
/// always answers that is dropped when the stream still holds every event it ever had.
pub async fn subscribe<B: EventBackend + ?Sized>(
    backend: &B,
    members: &[Member],
) -> Result<MultiplexItems, SseError> {
    let mut streams = Vec::with_capacity(members.len());
    for (i, member) in members.iter().enumerate() {
        let sub = match &member.start {
            Start::After(id) => backend.subscribe(&member.key, Some(id)).await?.boxed(),
            Start::FromStart => {
                let sub = backend
                    .subscribe(&member.key, Some(BEFORE_EVERYTHING))
                    .await?;
                let complete = backend.position(&member.key).await?.complete();
                sub.enumerate()
                    .filter_map(move |(n, item)| {
                        let drop = n == 0 && complete && matches!(item, Ok(StreamItem::Reset(_)));
                        futures::future::ready((!drop).then_some(item))
                    })
                    .boxed()
            }
        };
        streams.push(sub.map(move |item| item.map(|item| (i, item))).boxed());
    }
    Ok(futures::stream::select_all(streams).boxed())
}

/// Encodes merged items with composite IDs and stream-tagged data.
#[derive(Debug, Clone)]
pub struct CompositeEncoder {
    names: Vec<String>,
    parts: Vec<String>,
}

impl CompositeEncoder {
    /// An encoder for `members`, its parts set from their starts.
    pub fn new(members: &[Member]) -> CompositeEncoder {
        CompositeEncoder {
            names: members.iter().map(|m| m.key.clone()).collect(),
            parts: members.iter().map(|m| initial_part(&m.start)).collect(),
        }
    }

    /// The composite ID as it stands: what the last event's `id:` line said, or would say.
    pub fn composite_id(&self) -> String {
        self.parts.join(",")
    }

    /// Appends item `item` of member `i` (an index out of range writes nothing). Events get
    /// the composite ID with part `i` set to their own ID; a `stream_reset` gets no `id:` line.
    pub fn encode(&mut self, out: &mut BytesMut, i: usize, item: &StreamItem) {
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

/// The data of an event on a multiplexed stream: the stream's own object with `stream` (and
/// `stream_id` when given) inserted first. Data that is not a JSON object is wrapped as
/// `{"stream", "stream_id", "data": "<text>"}` so every multiplexed event is an object.
pub fn tag_with_stream(data: &str, stream: &str, stream_id: Option<&str>) -> String {
    let mut out = String::with_capacity(data.len() + 96);
    out.push_str("{\"stream\":");
    push_json_string(&mut out, stream);
    if let Some(id) = stream_id {
        out.push_str(",\"stream_id\":");
        push_json_string(&mut out, id);
    }
    let body = data.trim_start();
    match body.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => out.push_str(rest.trim_start()),
        Some(rest) => {
            out.push(',');
            out.push_str(rest);
        }
        None => {
            out.push_str(",\"data\":");
            push_json_string(&mut out, data);
            out.push('}');
        }
    }
    out
}

fn push_json_string(out: &mut String, text: &str) {
    // Stream keys and IDs need no escaping (validated ASCII); escape anyway for any caller.
    if text
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned()));
    }
}

/// The response body of a multiplexed connection: [`encode_body`] with `encoder`.
pub fn body<S>(
    items: S,
    mut encoder: CompositeEncoder,
    options: BodyOptions,
) -> impl Stream<Item = Bytes> + Send
where
    S: Stream<Item = Result<(usize, StreamItem), SseError>> + Send + 'static,
{
    encode_body(items, options, move |out, (i, item)| {
        encoder.encode(out, i, &item);
    })
}

/// The whole multiplexed response body for `keys` and the client's `Last-Event-ID`: starts,
/// subscriptions and encoding. Never fails: when the hub cannot be reached the body is the
/// opening chunk and a comment naming the error, so the client reconnects later.
pub async fn open_body(
    backend: &dyn EventBackend,
    keys: Vec<String>,
    last_event_id: Option<&str>,
    options: BodyOptions,
) -> impl Stream<Item = Bytes> + Send + use<> {
    let subscribed = match starts(backend, &keys, last_event_id).await {
        Ok(starts) => {
            let members: Vec<Member> = keys
                .into_iter()
                .zip(starts)
                .map(|(key, start)| Member { key, start })
                .collect();
            subscribe(backend, &members)
                .await
                .map(|items| (items, CompositeEncoder::new(&members)))
        }
        Err(err) => Err(err),
    };
    let (items, encoder) = subscribed.unwrap_or_else(|err| {
        tracing::warn!(error = %err, "multiplexed subscription failed");
        let failed: MultiplexItems =
            futures::stream::once(futures::future::ready(Err(err))).boxed();
        (failed, CompositeEncoder::new(&[]))
    });
    body(items, encoder, options)
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
        assert_eq!(parse_composite("~", 1), vec![Start::FromStart]);
        assert_eq!(parse_composite("", 1), vec![Start::After(String::new())]);
        let wrong = parse_composite("1-0", 2);
        assert_eq!(wrong, vec![Start::After("1-0,".to_owned()); 2]);
        assert_eq!(
            parse_composite("1-0,2-0,3-0", 2),
            vec![Start::After("1-0,2-0,3-0".to_owned()); 2]
        );
        assert!(parse_composite("anything", 0).is_empty());
        assert!(wrong.iter().all(|s| initial_part(s) == INVALID_PART));
        assert_eq!(initial_part(&Start::After("5-1".to_owned())), "5-1");
        assert_eq!(initial_part(&Start::After("a\nb".to_owned())), "x");
        assert_eq!(initial_part(&Start::After(String::new())), "x");
    }

    #[test]
    fn tagging_keeps_an_object() {
        assert_eq!(
            tag_with_stream(r#"{"a":1}"#, "dongle:x", Some("1-0")),
            r#"{"stream":"dongle:x","stream_id":"1-0","a":1}"#
        );
        assert_eq!(
            tag_with_stream("{ }", "group:y", None),
            r#"{"stream":"group:y"}"#
        );
        let wrapped = tag_with_stream("plain \"text\"", "group:y", None);
        let v: serde_json::Value = serde_json::from_str(&wrapped).expect("json");
        assert_eq!(v["data"], "plain \"text\"");
        let odd = tag_with_stream("{}", "we\"ird", None);
        let v: serde_json::Value = serde_json::from_str(&odd).expect("json");
        assert_eq!(v["stream"], "we\"ird");
    }
}
