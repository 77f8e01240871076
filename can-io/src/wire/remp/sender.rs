//! The dongle side of REMP, sans-IO: records in, datagrams out.

use super::{
    FRAME_ENTRY_HEADER, Hello, Keepalive, MAX_CHANNELS, MAX_DATAGRAM, RempBody, RempDatagram,
    RempFrame, RempKey, TAG_LEN, header_len, validate_channel_name, validate_serial,
};
use crate::error::Error;
use crate::frame::CanRecord;

/// Batches records into REMP datagrams for one dongle.
///
/// Call order: [`hello`](Self::hello) once at start; [`push`](Self::push) each record and send
/// whatever datagrams it returns; [`flush`](Self::flush) when no more records are due right now;
/// [`keepalive`](Self::keepalive) when nothing was sent for a keep-alive interval. Every returned
/// datagram consumes one sequence number, so they must be sent in the order returned.
#[derive(Debug)]
pub struct RempSender {
    serial: String,
    boot_id: u64,
    keepalive_ms: u16,
    next_seq: u32,
    channels: Vec<String>,
    pending: Vec<RempFrame>,
    pending_bytes: usize,
    dropped: u32,
    key: Option<RempKey>,
}

impl RempSender {
    /// A sender for dongle `serial`; `boot_id` should be random per start.
    pub fn new(serial: &str, boot_id: u64, keepalive_ms: u16) -> Result<Self, Error> {
        validate_serial(serial)?;
        Ok(Self {
            serial: serial.to_owned(),
            boot_id,
            keepalive_ms,
            next_seq: 0,
            channels: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            dropped: 0,
            key: None,
        })
    }

    /// Signs every datagram with `key` from now on (`docs/protocols/remp.md`, authentication).
    /// A signing dongle's `boot_id` must grow from boot to boot (e.g. its boot time in
    /// milliseconds), or receivers drop its datagrams after a restart as replays.
    pub fn with_key(mut self, key: RempKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Record that the dongle dropped `n` frames before they reached this sender; reported in
    /// the next hello and keep-alive.
    pub fn note_dropped(&mut self, n: u32) {
        self.dropped = self.dropped.wrapping_add(n);
    }

    fn datagram(&mut self, body: RempBody) -> Result<Vec<u8>, Error> {
        let d = RempDatagram {
            serial: self.serial.clone(),
            seq: self.next_seq,
            body,
        };
        let mut bytes = d.to_bytes()?;
        if let Some(key) = &self.key {
            key.sign(self.boot_id, &mut bytes)?;
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(bytes)
    }

    /// A hello datagram with the current channel list.
    pub fn hello(&mut self) -> Result<Vec<u8>, Error> {
        let hello = Hello {
            boot_id: self.boot_id,
            keepalive_ms: self.keepalive_ms,
            dropped: self.dropped,
            channels: self.channels.clone(),
        };
        self.datagram(RempBody::Hello(hello))
    }

    /// A keep-alive datagram.
    pub fn keepalive(&mut self) -> Result<Vec<u8>, Error> {
        let k = Keepalive {
            boot_id: self.boot_id,
            dropped: self.dropped,
        };
        self.datagram(RempBody::Keepalive(k))
    }

    /// Add a record to the batch. Returns the datagrams to send now: a full batch that the
    /// record did not fit into, and a hello when the record introduces a new channel name.
    pub fn push(&mut self, record: &CanRecord) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::new();
        let channel = match self.channels.iter().position(|c| **c == *record.channel) {
            Some(i) => i,
            None => {
                validate_channel_name(&record.channel)?;
                if self.channels.len() >= MAX_CHANNELS {
                    return Err(Error::Unsupported {
                        protocol: "REMP",
                        reason: format!("more than {MAX_CHANNELS} channels"),
                    });
                }
                self.channels.push(record.channel.to_string());
                // Frames of the new channel must not arrive before the hello that names it.
                out.push(self.hello()?);
                self.channels.len() - 1
            }
        };
        let entry = RempFrame {
            ts_ns: record.ts_ns,
            channel: channel as u8,
            direction: record.direction,
            frame: record.frame,
        };
        let size = FRAME_ENTRY_HEADER + record.frame.data().len();
        if self.batch_size() + size > MAX_DATAGRAM
            && let Some(d) = self.flush()?
        {
            out.push(d);
        }
        self.pending.push(entry);
        self.pending_bytes += size;
        Ok(out)
    }

    /// Size the pending batch would have as a datagram.
    fn batch_size(&self) -> usize {
        let tag = if self.key.is_some() { TAG_LEN } else { 0 };
        header_len(self.serial.len()) + 2 + self.pending_bytes + tag
    }

    /// The pending batch as a datagram, if any frames are pending.
    pub fn flush(&mut self) -> Result<Option<Vec<u8>>, Error> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let frames = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.datagram(RempBody::Frames(frames)).map(Some)
    }

    /// Number of frames waiting for [`flush`](Self::flush).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}
