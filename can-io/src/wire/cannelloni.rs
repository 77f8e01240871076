//! cannelloni: CAN frames over UDP (protocol v2 datagrams) and TCP (v1 stream).
//!
//! Frame encoding, shared by both (big-endian):
//!
//! ```text
//! u32 can_id   Linux can_id with CAN_EFF_FLAG / CAN_RTR_FLAG / CAN_ERR_FLAG kept
//! u8  len      data length; 0x80 set = CAN FD, then:
//! [u8 flags]   canfd_frame.flags (BRS=1, ESI=2, FDF=4), only for CAN FD
//! data[len]    absent for remote frames (len is then the requested length)
//! ```
//!
//! UDP datagram: `u8 version=2, u8 op=0 (DATA), u8 seq (wraps), u16 count`, then `count` frames.
//! TCP: each side sends the banner `CANNELLONIv1`, then frames back to back.
//!
//! cannelloni carries no timestamps, channel or direction, and not the raw DLC of an 8-byte frame
//! (`len8_dlc`): those are lost in transit. Every length is checked against the bytes present.

use bytes::{Buf, BytesMut};

use super::linux::{fd_flags_byte, frame_from_linux};
use crate::error::Error;
use crate::frame::{CanFrame, CanRecord, Channel, Direction};

const PROTOCOL: &str = "cannelloni";

/// UDP protocol version.
pub const UDP_VERSION: u8 = 2;
/// UDP op code of a data datagram (the only one cannelloni sends).
pub const OP_DATA: u8 = 0;
/// Bytes of the UDP datagram header.
pub const UDP_HEADER_LEN: usize = 5;
/// Largest datagram we build (fits a 1500-byte MTU without fragmentation).
pub const MAX_DATAGRAM: usize = 1472;
/// The TCP banner each side sends first.
pub const TCP_BANNER: &[u8; 12] = b"CANNELLONIv1";
/// Largest encoded frame: id, len, flags, 64 data bytes.
pub const MAX_FRAME_LEN: usize = 4 + 1 + 1 + 64;

const FD_MARK: u8 = 0x80;

/// Encoded size of `frame`.
pub fn frame_len(frame: &CanFrame) -> usize {
    4 + 1 + usize::from(frame.is_fd()) + frame.data().len()
}

/// Append one encoded frame to `out`.
pub fn encode_frame(frame: &CanFrame, out: &mut Vec<u8>) {
    out.extend_from_slice(&frame.linux_can_id().to_be_bytes());
    match frame {
        CanFrame::Fd(fd) => {
            out.push(fd.data().len() as u8 | FD_MARK);
            out.push(fd_flags_byte(fd.flags()));
        }
        other => out.push(other.len() as u8),
    }
    out.extend_from_slice(frame.data());
}

/// Decode one frame from the start of `buf`. `Ok(None)` when `buf` holds only part of a frame
/// (read more); otherwise the frame and the number of bytes it used.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(CanFrame, usize)>, Error> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let can_id = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let len_byte = buf[4];
    let fd = len_byte & FD_MARK != 0;
    let len = (len_byte & !FD_MARK) as usize;
    let mut pos = 5;
    let flags = if fd {
        let Some(&f) = buf.get(pos) else {
            return Ok(None);
        };
        pos += 1;
        Some(f)
    } else {
        None
    };
    let is_remote = can_id & super::linux::CAN_RTR_FLAG != 0;
    // Validate the length before trusting it as a byte count.
    let max = if fd { 64 } else { 8 };
    if len > max {
        return Err(Error::Malformed {
            protocol: PROTOCOL,
            reason: format!("length {len} exceeds {max}"),
        });
    }
    let data_len = if is_remote { 0 } else { len };
    let Some(data) = buf.get(pos..pos + data_len) else {
        return Ok(None);
    };
    let frame = frame_from_linux(PROTOCOL, can_id, len, data, flags)?;
    Ok(Some((frame, pos + data_len)))
}

/// Encode a UDP datagram holding `frames`; refuses one over [`MAX_DATAGRAM`] or with more than
/// 65535 frames.
pub fn encode_datagram(seq: u8, frames: &[CanFrame]) -> Result<Vec<u8>, Error> {
    let size = UDP_HEADER_LEN + frames.iter().map(frame_len).sum::<usize>();
    if size > MAX_DATAGRAM {
        return Err(Error::Unsupported {
            protocol: PROTOCOL,
            reason: format!("datagram of {size} bytes exceeds {MAX_DATAGRAM}"),
        });
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&[UDP_VERSION, OP_DATA, seq]);
    out.extend_from_slice(&(frames.len() as u16).to_be_bytes());
    for f in frames {
        encode_frame(f, &mut out);
    }
    Ok(out)
}

/// A decoded UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CannelloniDatagram {
    /// Sequence number (wraps at 255; cannelloni itself does not check it).
    pub seq: u8,
    /// The frames.
    pub frames: Vec<CanFrame>,
}

impl CannelloniDatagram {
    /// The frames as received records. The datagram carries no timestamp, channel or
    /// direction: each record gets `ts_ns` (the receive time), `channel` and [`Direction::Rx`].
    pub fn into_records(self, ts_ns: u64, channel: &Channel) -> impl Iterator<Item = CanRecord> {
        self.frames
            .into_iter()
            .map(move |f| CanRecord::new(ts_ns, channel.clone(), Direction::Rx, f))
    }
}

/// Decode a UDP datagram. The frame count must match the bytes exactly.
pub fn decode_datagram(bytes: &[u8]) -> Result<CannelloniDatagram, Error> {
    if bytes.len() < UDP_HEADER_LEN {
        return Err(Error::Truncated {
            protocol: PROTOCOL,
            needed: UDP_HEADER_LEN,
            available: bytes.len(),
        });
    }
    if bytes[0] != UDP_VERSION {
        return Err(Error::Malformed {
            protocol: PROTOCOL,
            reason: format!("unsupported version {}", bytes[0]),
        });
    }
    if bytes[1] != OP_DATA {
        return Err(Error::Malformed {
            protocol: PROTOCOL,
            reason: format!("unsupported op code {}", bytes[1]),
        });
    }
    let seq = bytes[2];
    let count = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
    // Every frame takes at least 5 bytes: bound the allocation by what is really there.
    let mut frames = Vec::with_capacity(count.min((bytes.len() - UDP_HEADER_LEN) / 5));
    let mut pos = UDP_HEADER_LEN;
    for _ in 0..count {
        match decode_frame(&bytes[pos..])? {
            Some((f, used)) => {
                frames.push(f);
                pos += used;
            }
            None => {
                return Err(Error::Truncated {
                    protocol: PROTOCOL,
                    needed: MAX_FRAME_LEN.min(5),
                    available: bytes.len() - pos,
                });
            }
        }
    }
    if pos != bytes.len() {
        return Err(Error::Malformed {
            protocol: PROTOCOL,
            reason: format!("{} trailing bytes", bytes.len() - pos),
        });
    }
    Ok(CannelloniDatagram { seq, frames })
}

/// Batches frames into UDP datagrams, numbering them.
#[derive(Debug, Default)]
pub struct CannelloniSender {
    seq: u8,
    pending: Vec<CanFrame>,
    pending_bytes: usize,
}

impl CannelloniSender {
    /// A sender starting at sequence number 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a frame; returns a full datagram when the frame did not fit into the pending one.
    pub fn push(&mut self, frame: CanFrame) -> Result<Option<Vec<u8>>, Error> {
        let size = frame_len(&frame);
        let full = if UDP_HEADER_LEN + self.pending_bytes + size > MAX_DATAGRAM {
            self.flush()?
        } else {
            None
        };
        self.pending.push(frame);
        self.pending_bytes += size;
        Ok(full)
    }

    /// The pending frames as a datagram, if any.
    pub fn flush(&mut self) -> Result<Option<Vec<u8>>, Error> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let d = encode_datagram(self.seq, &self.pending)?;
        self.seq = self.seq.wrapping_add(1);
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(Some(d))
    }
}

/// Streaming decoder / encoder for the TCP (v1) protocol, usable with
/// `tokio_util::codec::Framed`. It expects the peer's banner first, then frames; reads split
/// anywhere are handled. The encoder writes frames only: send [`TCP_BANNER`] yourself first.
#[derive(Debug, Default)]
pub struct CannelloniTcpCodec {
    banner_seen: bool,
}

impl CannelloniTcpCodec {
    /// A codec waiting for the peer's banner.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode from a plain byte buffer, consuming what was used. Same as the tokio-util decoder.
    pub fn decode_buf(&mut self, src: &mut BytesMut) -> Result<Option<CanFrame>, Error> {
        if !self.banner_seen {
            let n = src.len().min(TCP_BANNER.len());
            if src[..n] != TCP_BANNER[..n] {
                return Err(Error::Malformed {
                    protocol: PROTOCOL,
                    reason: "bad TCP banner".into(),
                });
            }
            if n < TCP_BANNER.len() {
                return Ok(None);
            }
            src.advance(TCP_BANNER.len());
            self.banner_seen = true;
        }
        match decode_frame(src)? {
            Some((frame, used)) => {
                src.advance(used);
                Ok(Some(frame))
            }
            None => {
                src.reserve(MAX_FRAME_LEN);
                Ok(None)
            }
        }
    }
}

/// Decode a whole captured TCP stream (banner, then frames). A stream that ends inside a frame
/// is an error.
pub fn decode_tcp_stream(bytes: &[u8]) -> Result<Vec<CanFrame>, Error> {
    let mut codec = CannelloniTcpCodec::new();
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(f) = codec.decode_buf(&mut buf)? {
        frames.push(f);
    }
    if !buf.is_empty() || !codec.banner_seen {
        return Err(Error::Truncated {
            protocol: PROTOCOL,
            needed: MAX_FRAME_LEN.min(buf.len() + 1),
            available: buf.len(),
        });
    }
    Ok(frames)
}

impl tokio_util::codec::Decoder for CannelloniTcpCodec {
    type Item = CanFrame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<CanFrame>, Error> {
        self.decode_buf(src)
    }
}

impl tokio_util::codec::Encoder<CanFrame> for CannelloniTcpCodec {
    type Error = Error;

    fn encode(&mut self, frame: CanFrame, dst: &mut BytesMut) -> Result<(), Error> {
        let mut v = Vec::with_capacity(frame_len(&frame));
        encode_frame(&frame, &mut v);
        dst.extend_from_slice(&v);
        Ok(())
    }
}
