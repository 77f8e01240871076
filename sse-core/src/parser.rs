//! An incremental WHATWG event-stream parser for clients (`tether sse tail`, tests, fuzzing).
//!
//! Feed it byte chunks split anywhere; it follows the HTML standard's "Interpreting an event
//! stream": one leading UTF-8 BOM stripped, CR / LF / CRLF line ends (also split across chunks),
//! comment lines ignored, a line without colon is a field with an empty value, one space after the
//! colon removed, data lines joined with LF, an empty `event` means `message`, an `id` containing
//! NUL ignored, an empty `id` resets the last event ID, `retry` accepted only when all ASCII
//! digits, and an unfinished final event discarded at end of input. Invalid UTF-8 is replaced
//! with U+FFFD, never an error. Decoding line by line gives the same text as decoding the whole
//! stream, because CR and LF never occur inside a UTF-8 sequence.

use serde::Serialize;

/// A dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedEvent {
    /// The event type (`message` when no or an empty `event` field was given).
    #[serde(rename = "event")]
    pub event_type: String,
    /// The data, lines joined with LF.
    pub data: String,
    /// The last event ID at dispatch time (empty when none).
    #[serde(rename = "id")]
    pub last_event_id: String,
}

/// What the parser produces, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedItem {
    /// An event was dispatched.
    Event(ParsedEvent),
    /// A valid `retry` field set the reconnection time (ms; saturates at `u64::MAX`).
    Retry(u64),
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Incremental parser state.
#[derive(Debug, Default, Clone)]
pub struct EventStreamParser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// Bytes seen so far while deciding whether the stream starts with a BOM.
    bom_prefix: Vec<u8>,
    bom_decided: bool,
    /// The previous chunk ended in CR: an LF at the start of the next one belongs to it.
    after_cr: bool,
    data: String,
    event_type: String,
    last_event_id: String,
}

impl EventStreamParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last event ID buffer (what a reconnecting client sends as `Last-Event-ID`).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Set the last event ID (a client resuming with a known ID).
    pub fn set_last_event_id(&mut self, id: &str) {
        self.last_event_id = id.to_owned();
    }

    /// Start a new connection: drop any unfinished line and event, keep the last event ID, and
    /// expect a BOM again.
    pub fn reconnect(&mut self) {
        let last = std::mem::take(&mut self.last_event_id);
        *self = Self {
            last_event_id: last,
            ..Self::default()
        };
    }

    /// Parse one chunk, appending dispatched items to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<ParsedItem>) {
        if !self.bom_decided {
            while !chunk.is_empty() && self.bom_prefix.len() < BOM.len() {
                let b = chunk[0];
                if b != BOM[self.bom_prefix.len()] {
                    break;
                }
                self.bom_prefix.push(b);
                chunk = &chunk[1..];
            }
            if self.bom_prefix.len() == BOM.len() {
                self.bom_prefix.clear();
                self.bom_decided = true;
            } else if chunk.is_empty() {
                return; // still undecided
            } else {
                // Not a BOM: the bytes held back are ordinary input.
                self.bom_decided = true;
                let held = std::mem::take(&mut self.bom_prefix);
                self.feed_bytes(&held, out);
            }
        }
        self.feed_bytes(chunk, out);
    }

    fn feed_bytes(&mut self, mut chunk: &[u8], out: &mut Vec<ParsedItem>) {
        if chunk.is_empty() {
            return;
        }
        if self.after_cr {
            self.after_cr = false;
            if chunk.first() == Some(&b'\n') {
                chunk = &chunk[1..];
            }
        }
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&chunk[..pos]);
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out);
            self.line = line;
            self.line.clear();
            if chunk[pos] == b'\r' {
                match chunk.get(pos + 1) {
                    Some(b'\n') => chunk = &chunk[pos + 2..],
                    Some(_) => chunk = &chunk[pos + 1..],
                    None => {
                        self.after_cr = true;
                        chunk = &[];
                    }
                }
            } else {
                chunk = &chunk[pos + 1..];
            }
        }
        self.line.extend_from_slice(chunk);
    }

    /// End of input: an unfinished line or event is discarded (per the standard).
    pub fn finish(&mut self) {
        self.line.clear();
        self.data.clear();
        self.event_type.clear();
        self.after_cr = false;
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<ParsedItem>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"event" => self.event_type = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            // An id containing NUL is ignored.
            b"id" if !value.contains(&0) => {
                self.last_event_id = String::from_utf8_lossy(value).into_owned();
            }
            // Only all-ASCII-digit values count ("+1000", "1000x" and "" are ignored).
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let ms = value.iter().fold(0u64, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                out.push(ParsedItem::Retry(ms));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<ParsedItem>) {
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event_type = match std::mem::take(&mut self.event_type) {
            t if t.is_empty() => "message".to_owned(),
            t => t,
        };
        out.push(ParsedItem::Event(ParsedEvent {
            event_type,
            data,
            last_event_id: self.last_event_id.clone(),
        }));
    }
}

/// Parse a complete input at once (end of input included).
pub fn parse_all(input: &[u8]) -> Vec<ParsedItem> {
    let mut parser = EventStreamParser::new();
    let mut out = Vec::new();
    parser.feed(input, &mut out);
    parser.finish();
    out
}

/// Fuzzing entry point: parses `input` whole and again split at a point chosen by its first byte,
/// and checks both give the same items.
///
/// Built only for tests and `cargo fuzz` (`--cfg fuzzing`).
///
/// # Panics
/// Only if the parser is wrong: chunk boundaries changed the result.
#[cfg(any(test, fuzzing))]
pub fn fuzz_check(input: &[u8]) {
    let whole = parse_all(input);
    let split = usize::from(input.first().copied().unwrap_or(0)) % (input.len() + 1);
    let mut parser = EventStreamParser::new();
    let mut out = Vec::new();
    parser.feed(&input[..split], &mut out);
    parser.feed(&input[split..], &mut out);
    parser.finish();
    assert_eq!(whole, out, "chunk boundary at {split} changed the parse");
}
