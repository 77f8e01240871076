//! The socketcand ASCII protocol: `< … >` elements over TCP, as socketcand and python-can's
//! `socketcand` interface speak it (raw mode, classic CAN).
//!
//! Server → client: `< hi >` on connect; `< ok >` after `< open BUS >` and after `< rawmode >`;
//! then `< frame ID SEC.USEC HEXDATA >` per frame (`ID` is 3 hex digits for a standard and 8 for
//! an extended identifier, `HEXDATA` upper-case without separators, possibly empty).
//! Client → server: `< send ID DLC b0 b1 … >` with the DLC and bytes in hex.
//!
//! socketcand's raw mode has no remote, error or CAN FD frames: encoding one is refused with
//! [`Error::Unsupported`], and the transports count such frames as dropped.

use crate::error::Error;
use crate::frame::{CanFrame, CanId, DataFrame};

const PROTOCOL: &str = "socketcand";

/// Longest element accepted (python-can gives up at 200 characters; extended frames with 8
/// bytes written with separators need under 60).
pub const MAX_ELEMENT_LEN: usize = 256;
/// The greeting the server sends on connect, as one write.
pub const HI: &str = "< hi >";
/// The positive answer to `open` and `rawmode`.
pub const OK: &str = "< ok >";
/// The default TCP port.
pub const DEFAULT_PORT: u16 = 29536;

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        protocol: PROTOCOL,
        reason: reason.into(),
    }
}

/// Splits a byte stream into `< … >` elements, across reads split anywhere.
#[derive(Debug, Default)]
pub struct Tokenizer {
    buf: Vec<u8>,
    skipped: u64,
}

impl Tokenizer {
    /// An empty tokenizer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes thrown away so far (junk between elements, oversized or non-ASCII elements).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next complete element's inner text (without `<`, `>` and surrounding spaces), or
    /// `None` when more bytes are needed. Junk before a `<` is skipped and counted; an element
    /// longer than [`MAX_ELEMENT_LEN`] or not ASCII is reported as an error and skipped, so the
    /// stream resynchronises at the next `<`.
    pub fn next_element(&mut self) -> Option<Result<String, Error>> {
        let Some(start) = self.buf.iter().position(|&b| b == b'<') else {
            self.skipped += self.buf.len() as u64;
            self.buf.clear();
            return None;
        };
        if start > 0 {
            self.skipped += start as u64;
            self.buf.drain(..start);
        }
        let end = self
            .buf
            .iter()
            .skip(1)
            .position(|&b| b == b'>' || b == b'<')
            .map(|p| p + 1);
        match end {
            Some(e) if self.buf[e] == b'<' => {
                // A new element starts before this one ended: drop the unfinished one.
                self.skipped += e as u64;
                self.buf.drain(..e);
                Some(Err(malformed("element not closed before the next '<'")))
            }
            Some(e) => {
                let inner: Vec<u8> = self.buf[1..e].to_vec();
                self.buf.drain(..=e);
                if inner.len() > MAX_ELEMENT_LEN {
                    self.skipped += inner.len() as u64 + 2;
                    return Some(Err(malformed("element too long")));
                }
                Some(match String::from_utf8(inner) {
                    Ok(s) if s.is_ascii() => Ok(s.trim().to_owned()),
                    _ => Err(malformed("element is not ASCII")),
                })
            }
            None if self.buf.len() > MAX_ELEMENT_LEN + 2 => {
                self.skipped += self.buf.len() as u64;
                self.buf.clear();
                Some(Err(malformed("element too long")))
            }
            None => None,
        }
    }
}

/// Split a captured client → server byte stream into messages (one result per element).
pub fn parse_client_stream(bytes: &[u8]) -> Vec<Result<ClientMessage, Error>> {
    parse_stream(bytes, parse_client)
}

/// Split a captured server → client byte stream into messages (one result per element).
pub fn parse_server_stream(bytes: &[u8]) -> Vec<Result<ServerMessage, Error>> {
    parse_stream(bytes, parse_server)
}

/// Split a captured byte stream into elements and parse each with `parse`.
fn parse_stream<T>(bytes: &[u8], parse: fn(&str) -> Result<T, Error>) -> Vec<Result<T, Error>> {
    let mut t = Tokenizer::new();
    t.push(bytes);
    std::iter::from_fn(|| t.next_element())
        .map(|el| el.and_then(|e| parse(&e)))
        .collect()
}

/// What a client asks of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `< open BUS >`.
    Open(String),
    /// `< rawmode >`.
    RawMode,
    /// `< send ID DLC b… >`.
    Send(CanFrame),
    /// `< echo >`: the server answers `< echo >`.
    Echo,
    /// Any other command (BCM mode, filters, …), which this server does not implement.
    Other(String),
}

/// What a server tells a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// `< hi >`.
    Hi,
    /// `< ok >`.
    Ok,
    /// `< frame ID SEC.USEC DATA >`.
    Frame {
        /// Timestamp in nanoseconds (microsecond resolution on the wire).
        ts_ns: u64,
        /// The frame.
        frame: CanFrame,
    },
    /// `< error … >`.
    Error(String),
    /// `< echo >`.
    Echo,
    /// Anything else.
    Other(String),
}

fn parse_id(tok: &str) -> Result<CanId, Error> {
    if tok.is_empty() || tok.len() > 8 || !tok.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed(format!("bad identifier {tok:?}")));
    }
    let raw = u32::from_str_radix(tok, 16).map_err(|e| malformed(e.to_string()))?;
    // socketcand and python-can decide the format by the number of digits.
    if tok.len() > 3 {
        CanId::extended(raw)
    } else {
        CanId::standard(raw)
    }
}

fn parse_hex_byte(tok: &str) -> Result<u8, Error> {
    if tok.is_empty() || tok.len() > 2 || !tok.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed(format!("bad data byte {tok:?}")));
    }
    u8::from_str_radix(tok, 16).map_err(|e| malformed(e.to_string()))
}

/// Parse an element's inner text sent by a client.
pub fn parse_client(element: &str) -> Result<ClientMessage, Error> {
    let mut toks = element.split_ascii_whitespace();
    let Some(cmd) = toks.next() else {
        return Err(malformed("empty element"));
    };
    match cmd {
        "open" => {
            let bus = toks
                .next()
                .ok_or_else(|| malformed("open without a bus name"))?;
            if toks.next().is_some() {
                return Err(malformed("open takes one bus name"));
            }
            Ok(ClientMessage::Open(bus.to_owned()))
        }
        "rawmode" => Ok(ClientMessage::RawMode),
        "echo" => Ok(ClientMessage::Echo),
        "send" => {
            let id = parse_id(
                toks.next()
                    .ok_or_else(|| malformed("send without an identifier"))?,
            )?;
            let dlc_tok = toks.next().ok_or_else(|| malformed("send without a DLC"))?;
            let dlc = parse_hex_byte(dlc_tok)? as usize;
            if dlc > 8 {
                return Err(malformed(format!("DLC {dlc} exceeds 8")));
            }
            let mut data = [0u8; 8];
            let mut n = 0;
            for tok in toks {
                if n == 8 {
                    return Err(malformed("more than 8 data bytes"));
                }
                data[n] = parse_hex_byte(tok)?;
                n += 1;
            }
            if n != dlc {
                return Err(malformed(format!("DLC {dlc} but {n} data bytes")));
            }
            Ok(ClientMessage::Send(CanFrame::Data(DataFrame::new(
                id,
                &data[..n],
            )?)))
        }
        _ => Ok(ClientMessage::Other(element.to_owned())),
    }
}

fn parse_timestamp(tok: &str) -> Result<u64, Error> {
    let (sec, frac) = tok.split_once('.').unwrap_or((tok, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if sec.is_empty() || sec.len() > 11 || frac.len() > 9 || !digits(sec) || !digits(frac) {
        return Err(malformed(format!("bad timestamp {tok:?}")));
    }
    let sec: u64 = sec
        .parse()
        .map_err(|_| malformed("bad timestamp seconds"))?;
    let mut ns: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| malformed("bad timestamp"))?
    };
    for _ in frac.len()..9 {
        ns *= 10;
    }
    sec.checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(ns))
        .ok_or_else(|| malformed("timestamp overflows"))
}

/// Parse an element's inner text sent by a server.
pub fn parse_server(element: &str) -> Result<ServerMessage, Error> {
    let mut toks = element.split_ascii_whitespace();
    let Some(cmd) = toks.next() else {
        return Err(malformed("empty element"));
    };
    match cmd {
        "hi" => Ok(ServerMessage::Hi),
        "ok" => Ok(ServerMessage::Ok),
        "echo" => Ok(ServerMessage::Echo),
        "error" => {
            let rest = element.trim().strip_prefix("error").unwrap_or_default();
            Ok(ServerMessage::Error(rest.trim().to_owned()))
        }
        "frame" => {
            let id = parse_id(
                toks.next()
                    .ok_or_else(|| malformed("frame without an identifier"))?,
            )?;
            let ts_ns = parse_timestamp(
                toks.next()
                    .ok_or_else(|| malformed("frame without a timestamp"))?,
            )?;
            let hex_data = toks.next().unwrap_or("");
            if toks.next().is_some() {
                return Err(malformed("unexpected tokens after frame data"));
            }
            if hex_data.len() > 16 || !hex_data.len().is_multiple_of(2) {
                return Err(malformed(format!("bad frame data {hex_data:?}")));
            }
            let data = hex::decode(hex_data).map_err(|e| malformed(format!("frame data: {e}")))?;
            Ok(ServerMessage::Frame {
                ts_ns,
                frame: CanFrame::Data(DataFrame::new(id, &data)?),
            })
        }
        _ => Ok(ServerMessage::Other(element.to_owned())),
    }
}

fn classic(frame: &CanFrame) -> Result<&DataFrame, Error> {
    match frame {
        CanFrame::Data(d) => Ok(d),
        _ => Err(Error::Unsupported {
            protocol: PROTOCOL,
            reason: "raw mode carries classic data frames only".into(),
        }),
    }
}

fn id_text(id: CanId) -> String {
    if id.is_extended() {
        format!("{:08X}", id.raw())
    } else {
        format!("{:03X}", id.raw())
    }
}

/// The server's `< frame … >` element for a frame received at `ts_ns`.
pub fn encode_frame(ts_ns: u64, frame: &CanFrame) -> Result<String, Error> {
    let d = classic(frame)?;
    let sec = ts_ns / 1_000_000_000;
    let usec = (ts_ns % 1_000_000_000) / 1000;
    // socketcand writes "< frame ID TS " then the data then " >", so an empty frame has two
    // spaces; python-can relies on the third field being present.
    Ok(format!(
        "< frame {} {sec}.{usec:06} {} >",
        id_text(d.id()),
        hex::encode_upper(d.data())
    ))
}

/// The client's `< send … >` element for a frame (as python-can writes it).
pub fn encode_send(frame: &CanFrame) -> Result<String, Error> {
    let d = classic(frame)?;
    let bytes: Vec<String> = d.data().iter().map(|b| format!("{b:x}")).collect();
    Ok(format!(
        "< send {} {:X} {} >",
        id_text(d.id()),
        d.data().len(),
        bytes.join(" ")
    ))
}

/// The client's `< open BUS >` element.
pub fn encode_open(bus: &str) -> String {
    format!("< open {bus} >")
}

/// Where a server-side session is in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionState {
    /// `< hi >` sent, waiting for `< open BUS >`.
    #[default]
    AwaitOpen,
    /// Bus opened, waiting for `< rawmode >`.
    AwaitMode,
    /// Raw mode: frames flow both ways.
    Raw,
}

/// What the server should do after a client element.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionAction {
    /// Text to write back (one write per reply).
    pub reply: Option<String>,
    /// A frame the client sent, to put on the bus.
    pub frame: Option<CanFrame>,
}

/// The server side of one client connection, sans-IO.
#[derive(Debug)]
pub struct ServerSession {
    bus: String,
    state: SessionState,
}

impl ServerSession {
    /// A session for a server exporting bus `bus` (send [`HI`] first).
    pub fn new(bus: &str) -> Self {
        Self {
            bus: bus.to_owned(),
            state: SessionState::AwaitOpen,
        }
    }

    /// Current state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Whether frames should be sent to this client.
    pub fn is_raw(&self) -> bool {
        self.state == SessionState::Raw
    }

    /// Handle one element's inner text.
    pub fn handle_element(&mut self, element: &str) -> SessionAction {
        let msg = match parse_client(element) {
            Ok(m) => m,
            Err(e) => {
                return SessionAction {
                    reply: Some(format!("< error {e} >")),
                    frame: None,
                };
            }
        };
        let reply = |s: &str| SessionAction {
            reply: Some(s.to_owned()),
            frame: None,
        };
        match (self.state, msg) {
            (_, ClientMessage::Echo) => reply("< echo >"),
            (SessionState::AwaitOpen, ClientMessage::Open(bus)) => {
                if bus == self.bus {
                    self.state = SessionState::AwaitMode;
                    reply(OK)
                } else {
                    reply("< error could not open bus >")
                }
            }
            (SessionState::AwaitMode, ClientMessage::RawMode) => {
                self.state = SessionState::Raw;
                reply(OK)
            }
            (SessionState::Raw, ClientMessage::Send(frame)) => SessionAction {
                reply: None,
                frame: Some(frame),
            },
            (_, ClientMessage::Other(_)) => reply("< error unsupported command >"),
            _ => reply("< error command not valid in this state >"),
        }
    }
}
