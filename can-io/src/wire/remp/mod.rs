//! REMP, the dongle UDP protocol: datagram codec. The full specification is
//! `docs/protocols/remp.md`; this module is its reference implementation.
//!
//! Every datagram starts with the same header (big-endian):
//!
//! ```text
//! "REMP" | version=1 | type | flags=0 | serial_len | serial… | seq:u32 | body…
//! ```
//!
//! followed by a hello, keep-alive or frame-batch body. A datagram is at most
//! [`MAX_DATAGRAM`] bytes, so it fits one Ethernet frame without IP fragmentation.
//!
//! * [`decode`] / [`RempDatagram::encode`] — one datagram ↔ bytes.
//! * [`RempSender`] — sans-IO dongle side: batches records into datagrams, numbers them, makes
//!   hellos and keep-alives.
//! * [`RempReceiver`] — sans-IO receiving side: decodes, counts lost / duplicate / reordered
//!   datagrams per dongle and names channels from the hello.

mod auth;
mod receiver;
mod sender;

pub use auth::{FLAG_AUTH, MIN_KEY_LEN, RempKey, TAG_LEN};
pub use receiver::{
    AuthRefused, DongleStats, RempEvent, RempReceiver, SEQ_WINDOW, SeqVerdict, SeqWindow,
};
pub use sender::RempSender;

use crate::error::Error;
use crate::error_frame::ErrorFrame;
use crate::frame::{CanFrame, CanId, DataFrame, Direction, FdFlags, FdFrame, RemoteFrame};

const PROTOCOL: &str = "REMP";

/// The four magic bytes that open every datagram.
pub const MAGIC: [u8; 4] = *b"REMP";
/// The protocol version this module speaks.
pub const VERSION: u8 = 1;
/// Largest datagram: a 1500-byte Ethernet MTU minus IPv4 (20) and UDP (8) headers.
pub const MAX_DATAGRAM: usize = 1472;
/// Longest dongle serial, in bytes.
pub const MAX_SERIAL_LEN: usize = 32;
/// Most channels a dongle may declare in its hello.
pub const MAX_CHANNELS: usize = 16;
/// Longest channel name in a hello, in bytes (Linux `IFNAMSIZ - 1`).
pub const MAX_CHANNEL_NAME: usize = 15;
/// Bytes of one frame entry before its data.
pub const FRAME_ENTRY_HEADER: usize = 16;

/// Message type codes.
mod msg_type {
    pub(super) const HELLO: u8 = 1;
    pub(super) const KEEPALIVE: u8 = 2;
    pub(super) const FRAMES: u8 = 3;
}

/// One decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RempDatagram {
    /// The dongle's serial (printable ASCII, 1–32 bytes).
    pub serial: String,
    /// Per-datagram sequence number, +1 for every datagram the dongle sends (any type), wrapping.
    pub seq: u32,
    /// What the datagram carries.
    pub body: RempBody,
}

/// The body of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RempBody {
    /// Sent at start (and whenever the channel list changes).
    Hello(Hello),
    /// Sent periodically so receivers know the dongle is alive.
    Keepalive(Keepalive),
    /// A batch of 1 or more frames.
    Frames(Vec<RempFrame>),
}

/// The hello body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Random per dongle boot: a new value tells receivers to restart sequence tracking.
    pub boot_id: u64,
    /// Interval between keep-alives the dongle promises, in milliseconds.
    pub keepalive_ms: u16,
    /// Frames the dongle dropped since boot (its own queue overflows).
    pub dropped: u32,
    /// Channel names by index (`channel` in a frame entry indexes this list).
    pub channels: Vec<String>,
}

/// The keep-alive body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Same as in the hello.
    pub boot_id: u64,
    /// Frames the dongle dropped since boot.
    pub dropped: u32,
}

/// One frame entry of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RempFrame {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Channel index (names come from the hello).
    pub channel: u8,
    /// Direction as seen by the dongle.
    pub direction: Direction,
    /// The frame.
    pub frame: CanFrame,
}

impl RempFrame {
    /// Encoded size of this entry.
    pub fn encoded_len(&self) -> usize {
        FRAME_ENTRY_HEADER + self.frame.data().len()
    }
}

/// Bytes of the header for a serial of `serial_len` bytes.
pub fn header_len(serial_len: usize) -> usize {
    8 + serial_len + 4
}

/// Check a serial: 1–32 bytes of printable ASCII without spaces.
pub fn validate_serial(serial: &str) -> Result<(), Error> {
    if serial.is_empty() || serial.len() > MAX_SERIAL_LEN {
        return Err(malformed(format!(
            "serial must be 1–{MAX_SERIAL_LEN} bytes"
        )));
    }
    if !serial.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        return Err(malformed("serial must be printable ASCII without spaces"));
    }
    Ok(())
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        protocol: PROTOCOL,
        reason: reason.into(),
    }
}

// kind byte layout
const KIND_MASK: u8 = 0x03;
const KIND_DATA: u8 = 0;
const KIND_REMOTE: u8 = 1;
const KIND_ERROR: u8 = 2;
const KIND_FD: u8 = 3;
const FLAG_EXTENDED: u8 = 0x04;
const FLAG_BRS: u8 = 0x08;
const FLAG_ESI: u8 = 0x10;
const DIR_SHIFT: u8 = 5;
const DIR_MASK: u8 = 0x60;
const RESERVED: u8 = 0x80;

impl RempDatagram {
    /// Append the encoded datagram to `out`. Refuses an invalid serial, an empty batch, too many
    /// channels or a result over [`MAX_DATAGRAM`] (then `out` is left as it was).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        validate_serial(&self.serial)?;
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        let ty = match &self.body {
            RempBody::Hello(_) => msg_type::HELLO,
            RempBody::Keepalive(_) => msg_type::KEEPALIVE,
            RempBody::Frames(_) => msg_type::FRAMES,
        };
        out.extend_from_slice(&[VERSION, ty, 0, self.serial.len() as u8]);
        out.extend_from_slice(self.serial.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        let res = match &self.body {
            RempBody::Hello(h) => encode_hello(h, out),
            RempBody::Keepalive(k) => {
                out.extend_from_slice(&k.boot_id.to_be_bytes());
                out.extend_from_slice(&k.dropped.to_be_bytes());
                Ok(())
            }
            RempBody::Frames(frames) => encode_frames(frames, out),
        };
        let res = res.and_then(|()| {
            let size = out.len() - start;
            if size > MAX_DATAGRAM {
                Err(Error::Unsupported {
                    protocol: PROTOCOL,
                    reason: format!("datagram of {size} bytes exceeds {MAX_DATAGRAM}"),
                })
            } else {
                Ok(())
            }
        });
        if res.is_err() {
            out.truncate(start);
        }
        res
    }

    /// The encoded datagram as a new buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(MAX_DATAGRAM);
        self.encode(&mut out)?;
        Ok(out)
    }
}

fn encode_hello(h: &Hello, out: &mut Vec<u8>) -> Result<(), Error> {
    if h.channels.len() > MAX_CHANNELS {
        return Err(malformed(format!("at most {MAX_CHANNELS} channels")));
    }
    out.extend_from_slice(&h.boot_id.to_be_bytes());
    out.extend_from_slice(&h.keepalive_ms.to_be_bytes());
    out.extend_from_slice(&h.dropped.to_be_bytes());
    out.push(h.channels.len() as u8);
    for name in &h.channels {
        validate_channel_name(name)?;
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    Ok(())
}

/// Check a channel name: 1–[`MAX_CHANNEL_NAME`] bytes of printable ASCII without spaces (a
/// Linux interface name, and nothing that could break a candump line).
pub fn validate_channel_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > MAX_CHANNEL_NAME
        || !name.bytes().all(|b| (0x21..=0x7E).contains(&b))
    {
        return Err(malformed(format!(
            "channel name {name:?} must be 1–{MAX_CHANNEL_NAME} printable ASCII bytes"
        )));
    }
    Ok(())
}

/// Append one frame entry.
pub fn encode_frame(f: &RempFrame, out: &mut Vec<u8>) {
    let (kind, id, extended) = match &f.frame {
        CanFrame::Data(d) => (KIND_DATA, d.id().raw(), d.id().is_extended()),
        CanFrame::Remote(r) => (KIND_REMOTE, r.id().raw(), r.id().is_extended()),
        CanFrame::Error(e) => (KIND_ERROR, e.class_bits(), false),
        CanFrame::Fd(fd) => (KIND_FD, fd.id().raw(), fd.id().is_extended()),
    };
    let mut flags = kind;
    if extended {
        flags |= FLAG_EXTENDED;
    }
    if let CanFrame::Fd(fd) = &f.frame {
        if fd.flags().brs {
            flags |= FLAG_BRS;
        }
        if fd.flags().esi {
            flags |= FLAG_ESI;
        }
    }
    let dir: u8 = match f.direction {
        Direction::Unknown => 0,
        Direction::Rx => 1,
        Direction::Tx => 2,
    };
    flags |= dir << DIR_SHIFT;
    let raw_dlc = match &f.frame {
        CanFrame::Data(d) => d.raw_dlc().unwrap_or(0),
        _ => 0,
    };
    out.extend_from_slice(&f.ts_ns.to_be_bytes());
    out.push(f.channel);
    out.push(flags);
    out.extend_from_slice(&id.to_be_bytes());
    out.push(f.frame.len() as u8);
    out.push(raw_dlc);
    out.extend_from_slice(f.frame.data());
}

fn encode_frames(frames: &[RempFrame], out: &mut Vec<u8>) -> Result<(), Error> {
    if frames.is_empty() {
        return Err(malformed("a frame batch needs at least one frame"));
    }
    if frames.len() > u16::MAX as usize {
        return Err(malformed("too many frames in one batch"));
    }
    out.extend_from_slice(&(frames.len() as u16).to_be_bytes());
    for f in frames {
        encode_frame(f, out);
    }
    Ok(())
}

/// A bounds-checked reader over a datagram.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let available = self.buf.len() - self.pos;
        if n > available {
            return Err(Error::Truncated {
                protocol: PROTOCOL,
                needed: n,
                available,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn ascii(&mut self, n: usize, what: &str) -> Result<String, Error> {
        let b = self.take(n)?;
        if !b.iter().all(|c| (0x21..=0x7E).contains(c)) {
            return Err(malformed(format!("{what} is not printable ASCII")));
        }
        Ok(b.iter().map(|&c| c as char).collect())
    }
}

/// Decode one datagram. Refuses anything the spec does not allow, including trailing bytes and
/// datagrams over [`MAX_DATAGRAM`].
pub fn decode(bytes: &[u8]) -> Result<RempDatagram, Error> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(malformed(format!(
            "datagram of {} bytes exceeds {MAX_DATAGRAM}",
            bytes.len()
        )));
    }
    let mut r = Reader { buf: bytes, pos: 0 };
    if r.take(4)? != MAGIC {
        return Err(malformed("bad magic"));
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(malformed(format!("unsupported version {version}")));
    }
    let ty = r.u8()?;
    let flags = r.u8()?;
    if flags & !FLAG_AUTH != 0 {
        return Err(malformed(format!(
            "reserved header flags 0x{flags:02X} set"
        )));
    }
    if flags & FLAG_AUTH != 0 {
        // The tag closes the datagram; the body ends before it.
        let Some(end) = bytes.len().checked_sub(TAG_LEN) else {
            return Err(malformed("authenticated datagram shorter than its tag"));
        };
        r.buf = &bytes[..end.max(r.pos)];
    }
    let serial_len = r.u8()? as usize;
    if serial_len == 0 || serial_len > MAX_SERIAL_LEN {
        return Err(malformed(format!(
            "serial length {serial_len} not in 1–{MAX_SERIAL_LEN}"
        )));
    }
    let serial = r.ascii(serial_len, "serial")?;
    let seq = r.u32()?;
    let body = match ty {
        msg_type::HELLO => RempBody::Hello(decode_hello(&mut r)?),
        msg_type::KEEPALIVE => RempBody::Keepalive(Keepalive {
            boot_id: r.u64()?,
            dropped: r.u32()?,
        }),
        msg_type::FRAMES => RempBody::Frames(decode_frames(&mut r)?),
        other => return Err(malformed(format!("unknown message type {other}"))),
    };
    if r.pos != r.buf.len() {
        return Err(malformed(format!("{} trailing bytes", r.buf.len() - r.pos)));
    }
    Ok(RempDatagram { serial, seq, body })
}

/// Whether a datagram (already decoded) carries an authentication tag.
pub fn is_authenticated(bytes: &[u8]) -> bool {
    bytes.get(6).is_some_and(|flags| flags & FLAG_AUTH != 0)
}

fn decode_hello(r: &mut Reader<'_>) -> Result<Hello, Error> {
    let boot_id = r.u64()?;
    let keepalive_ms = r.u16()?;
    let dropped = r.u32()?;
    let count = r.u8()? as usize;
    if count > MAX_CHANNELS {
        return Err(malformed(format!(
            "{count} channels, at most {MAX_CHANNELS}"
        )));
    }
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u8()? as usize;
        if len == 0 || len > MAX_CHANNEL_NAME {
            return Err(malformed(format!(
                "channel name length {len} not in 1–{MAX_CHANNEL_NAME}"
            )));
        }
        channels.push(r.ascii(len, "channel name")?);
    }
    Ok(Hello {
        boot_id,
        keepalive_ms,
        dropped,
        channels,
    })
}

fn decode_frames(r: &mut Reader<'_>) -> Result<Vec<RempFrame>, Error> {
    let count = r.u16()? as usize;
    if count == 0 {
        return Err(malformed("empty frame batch"));
    }
    // Each entry needs at least 16 bytes: refuse counts the datagram cannot hold before
    // allocating for them.
    let remaining = r.buf.len() - r.pos;
    if count * FRAME_ENTRY_HEADER > remaining {
        return Err(Error::Truncated {
            protocol: PROTOCOL,
            needed: count * FRAME_ENTRY_HEADER,
            available: remaining,
        });
    }
    let mut frames = Vec::with_capacity(count);
    for _ in 0..count {
        frames.push(decode_frame(r)?);
    }
    Ok(frames)
}

fn decode_frame(r: &mut Reader<'_>) -> Result<RempFrame, Error> {
    let ts_ns = r.u64()?;
    let channel = r.u8()?;
    if channel as usize >= MAX_CHANNELS {
        return Err(malformed(format!(
            "channel index {channel} ≥ {MAX_CHANNELS}"
        )));
    }
    let flags = r.u8()?;
    let id = r.u32()?;
    let len = r.u8()? as usize;
    let raw_dlc = r.u8()?;
    if flags & RESERVED != 0 {
        return Err(malformed("reserved frame flag set"));
    }
    let direction = match (flags & DIR_MASK) >> DIR_SHIFT {
        0 => Direction::Unknown,
        1 => Direction::Rx,
        2 => Direction::Tx,
        _ => return Err(malformed("direction code 3 is reserved")),
    };
    let kind = flags & KIND_MASK;
    let extended = flags & FLAG_EXTENDED != 0;
    if kind != KIND_FD && flags & (FLAG_BRS | FLAG_ESI) != 0 {
        return Err(malformed("BRS/ESI set on a non-FD frame"));
    }
    if kind != KIND_DATA && raw_dlc != 0 {
        return Err(malformed(
            "raw DLC on a frame that is not a classic data frame",
        ));
    }
    let frame = match kind {
        KIND_DATA => {
            let f = DataFrame::new(CanId::new(id, extended)?, r.take(len)?)?;
            CanFrame::Data(if raw_dlc != 0 {
                f.with_raw_dlc(raw_dlc)?
            } else {
                f
            })
        }
        KIND_REMOTE => CanFrame::Remote(RemoteFrame::new(CanId::new(id, extended)?, len)?),
        KIND_ERROR => {
            if extended {
                return Err(malformed("extended flag on an error frame"));
            }
            CanFrame::Error(ErrorFrame::new(id, r.take(len)?)?)
        }
        _ => {
            let fd_flags = FdFlags {
                brs: flags & FLAG_BRS != 0,
                esi: flags & FLAG_ESI != 0,
            };
            CanFrame::Fd(FdFrame::new(
                CanId::new(id, extended)?,
                r.take(len)?,
                fd_flags,
            )?)
        }
    };
    Ok(RempFrame {
        ts_ns,
        channel,
        direction,
        frame,
    })
}
