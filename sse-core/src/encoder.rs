//! The WHATWG event-stream encoder and the response body stream.
//!
//! Framing follows the HTML standard's "Server-sent events" section exactly:
//! - data is split on CR, LF and CRLF into one `data:` line per line, so a client rebuilds it
//!   with LF line ends (`"a\r\nb"` arrives as `"a\nb"`);
//! - `event` and `id` values must fit on one line: CR, LF and NUL are refused with an error;
//! - `retry` is written as ASCII digits only;
//! - comments (`:` lines) serve as keep-alives and are reset by real traffic.

use std::pin::Pin;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};

use crate::buffer::{StreamItem, validate_event_type};
use crate::error::SseError;

/// The response headers to send with an event stream (plus status 200).
///
/// `no-transform` and `X-Accel-Buffering: no` stop compression middleware and nginx from
/// buffering the stream.
pub const RESPONSE_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache, no-transform"),
    ("X-Accel-Buffering", "no"),
];

/// Default interval between keep-alive comments when no event is sent.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Append one event to `out`. `event_type` `None` means the default (`message`); `id` `None`
/// writes no `id:` line (the client keeps its last event ID).
pub fn encode_event(
    out: &mut BytesMut,
    event_type: Option<&str>,
    id: Option<&str>,
    data: &str,
) -> Result<(), SseError> {
    if let Some(t) = event_type {
        validate_event_type(t)?;
    }
    if let Some(id) = id
        && id.contains(['\r', '\n', '\0'])
    {
        return Err(SseError::InvalidEventId {
            value: id.to_owned(),
        });
    }
    out.reserve(data.len() + 32);
    if let Some(t) = event_type {
        put_field(out, "event", t);
    }
    for line in split_lines(data) {
        put_field(out, "data", line);
    }
    if let Some(id) = id {
        put_field(out, "id", id);
    }
    out.put_u8(b'\n');
    Ok(())
}

/// Append a `retry:` field (reconnection time in ms) in its own block.
pub fn encode_retry(out: &mut BytesMut, ms: u64) {
    out.put_slice(b"retry: ");
    out.put_slice(ms.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

/// Append a comment line. CR or LF in `text` is refused.
pub fn encode_comment(out: &mut BytesMut, text: &str) -> Result<(), SseError> {
    if text.contains(['\r', '\n']) {
        return Err(SseError::InvalidComment {
            value: text.to_owned(),
        });
    }
    out.put_u8(b':');
    if !text.is_empty() {
        out.put_u8(b' ');
        out.put_slice(text.as_bytes());
    }
    out.put_u8(b'\n');
    Ok(())
}

/// Encode one hub item: events with their type and ID, resets as a `stream_reset` event without
/// an `id:` line (the client's next resume then uses the first event after it).
pub fn encode_item(out: &mut BytesMut, item: &StreamItem) {
    match item {
        StreamItem::Event(ev) => {
            // Event types were validated on publish and IDs are digits and '-', so this cannot fail;
            // fall back to a comment rather than panic if it ever did.
            let id = ev.id.to_string();
            if encode_event(out, Some(&ev.event_type), Some(&id), &ev.data).is_err() {
                out.put_slice(b": unencodable event\n");
            }
        }
        StreamItem::Reset(reset) => {
            let data = serde_json::to_string(reset.as_ref()).unwrap_or_else(|_| "{}".to_owned());
            put_field(out, "event", "stream_reset");
            put_field(out, "data", &data);
            out.put_u8(b'\n');
        }
    }
}

fn put_field(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_u8(b':');
    // Always one space: the parser strips exactly one, so values that start with a space survive.
    out.put_u8(b' ');
    out.put_slice(value.as_bytes());
    out.put_u8(b'\n');
}

/// Split on CR, LF and CRLF (a CRLF is one line end). The empty string is one empty line.
fn split_lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(pos) => {
                let skip = if s[pos..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[pos + skip..]);
                Some(&s[..pos])
            }
        }
    })
}

/// Options of [`event_stream_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyOptions {
    /// Send a keep-alive comment after this long without traffic.
    pub keep_alive: Duration,
    /// A `retry:` value to send first, if any.
    pub retry_ms: Option<u64>,
}

impl Default for BodyOptions {
    fn default() -> Self {
        Self {
            keep_alive: DEFAULT_KEEP_ALIVE,
            retry_ms: None,
        }
    }
}

struct BodyState<S, F> {
    items: Pin<Box<S>>,
    encode: F,
    keep_alive: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    opening: Option<Bytes>,
    done: bool,
}

/// Turn hub items into the response body: the first chunk (a comment, and `retry:` if set) is
/// ready at once so proxies and browsers see the stream open; then one chunk per item; a
/// keep-alive comment after each `keep_alive` of silence (the timer restarts on every item). An
/// error from `items` ends the body after a comment naming it, so the client reconnects with its
/// last event ID. Needs a tokio runtime (for the timer).
pub fn event_stream_body<S>(items: S, options: BodyOptions) -> impl Stream<Item = Bytes> + Send
where
    S: Stream<Item = Result<StreamItem, SseError>> + Send + 'static,
{
    encode_body(items, options, |out, item| encode_item(out, &item))
}

/// [`event_stream_body`] for items of any kind: `encode` appends each item's event(s) to the
/// chunk it is given (with [`encode_event`]); opening, keep-alives and the error comment are
/// the same. The multiplexed console stream uses it with a composite-ID encoder.
pub fn encode_body<S, T, F>(
    items: S,
    options: BodyOptions,
    encode: F,
) -> impl Stream<Item = Bytes> + Send
where
    S: Stream<Item = Result<T, SseError>> + Send + 'static,
    T: Send + 'static,
    F: FnMut(&mut BytesMut, T) + Send + 'static,
{
    let mut opening = BytesMut::new();
    if let Some(ms) = options.retry_ms {
        opening.put_slice(b"retry: ");
        opening.put_slice(ms.to_string().as_bytes());
        opening.put_u8(b'\n');
    }
    opening.put_slice(b": stream open\n\n");
    let state = BodyState {
        items: Box::pin(items),
        encode,
        keep_alive: options.keep_alive,
        timer: Box::pin(tokio::time::sleep(options.keep_alive)),
        opening: Some(opening.freeze()),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if let Some(first) = st.opening.take() {
            return Some((first, st));
        }
        if st.done {
            return None;
        }
        let mut out = BytesMut::new();
        tokio::select! {
            item = st.items.next() => match item {
                Some(Ok(item)) => (st.encode)(&mut out, item),
                Some(Err(err)) => {
                    let text = err.to_string().replace(['\r', '\n'], " ");
                    let _ = encode_comment(&mut out, &format!("error: {text}"));
                    st.done = true;
                }
                None => return None,
            },
            () = &mut st.timer => {
                out.put_slice(b": keep-alive\n\n");
            }
        }
        let deadline = tokio::time::Instant::now() + st.keep_alive;
        st.timer.as_mut().reset(deadline);
        Some((out.freeze(), st))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(t: Option<&str>, id: Option<&str>, data: &str) -> String {
        let mut b = BytesMut::new();
        encode_event(&mut b, t, id, data).expect("encodable");
        String::from_utf8(b.to_vec()).expect("utf8")
    }

    #[test]
    fn splits_data_on_every_line_end() {
        assert_eq!(
            enc(None, None, "a\r\nb\rc\nd"),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(enc(None, None, ""), "data: \n\n");
        assert_eq!(enc(None, None, "x\n"), "data: x\ndata: \n\n");
        assert_eq!(
            enc(Some("log"), Some("1-0"), " sp"),
            "event: log\ndata:  sp\nid: 1-0\n\n"
        );
    }

    #[test]
    fn refuses_line_breaks_in_event_and_id() {
        let mut b = BytesMut::new();
        assert!(encode_event(&mut b, Some("a\nb"), None, "x").is_err());
        assert!(encode_event(&mut b, None, Some("1\r"), "x").is_err());
        assert!(encode_event(&mut b, None, Some("1\0"), "x").is_err());
        assert!(encode_comment(&mut b, "x\ny").is_err());
        assert!(b.is_empty(), "nothing written on error");
    }

    #[test]
    fn retry_is_digits() {
        let mut b = BytesMut::new();
        encode_retry(&mut b, 2500);
        assert_eq!(&b[..], b"retry: 2500\n\n");
    }
}
