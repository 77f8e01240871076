//! Vector ASC (ASCII trace) files, as Vector tools and python-can (`can.ASCReader` /
//! `can.ASCWriter`) read and write them.
//!
//! ```text
//! date Wed Sep 30 15:06:13.191 2020
//! base hex  timestamps absolute
//! internal events logged
//! Begin Triggerblock Wed Sep 30 15:06:13.191 2020
//!  0.000000 Start of measurement
//!  0.000123 1  7E0             Rx   d 8 02 10 03 00 00 00 00 00
//!  0.000200 2  18DAF110x       Tx   r 8
//!  0.000300 1  ErrorFrame SocketCAN Class = 0x00000004 Dir = Rx Data = 00 04 00 00 00 00 00 00
//!  0.000400 CANFD   1 Rx      123                                   1 0 9 12 AA BB …
//! End TriggerBlock
//! ```
//!
//! Timestamps: event times are relative to the `Begin Triggerblock` date, which has millisecond
//! resolution and is read and written as UTC. The writer puts the first record's time, cut to
//! the millisecond, in the header and writes events with microsecond resolution, so records with
//! microsecond timestamps read back unchanged. A record older than the header time gets a
//! negative offset (which we read back; other tools may skip it).
//!
//! Channels: ASC numbers channels from 1. We write the trailing digits of the channel name
//! plus one (`can0` → 1, `vcan3` → 4, a name without digits → 1), as python-can does, and read
//! channel N as `can{N-1}`.
//!
//! Direction: ASC has Rx and Tx only; an unknown direction is written as Rx.
//!
//! Error frames: plain ASC `ErrorFrame` lines carry no SocketCAN error class; they read as an
//! error frame with class 0 and no data. To round-trip ours, the writer appends
//! `SocketCAN Class = 0x… [Dir = Rx|Tx] Data = …` after `ErrorFrame`, which python-can and
//! Vector tools ignore.
//!
//! Not carried: CAN FD frames with zero bytes read back in python-can as remote frames (it has no
//! other reading of a `CANFD` line with length 0); bus statistics, status and J1939 transport
//! events are skipped and counted ([`Reader::ignored_lines`]).

use std::borrow::Cow;
use std::io::BufRead;

use chrono::{DateTime, NaiveDate};

use super::{ChannelInterner, LineSource, LogLine, push_decimal, push_hex, push_hex_byte};
use crate::error::Error;
use crate::error_frame::ErrorFrame;
use crate::frame::{
    CLASSIC_MAX_LEN, CanFrame, CanId, CanRecord, Channel, DataFrame, Direction, FdFlags, FdFrame,
    RemoteFrame, fd_dlc_to_len, fd_len_to_dlc,
};

const NS_PER_SEC: u64 = 1_000_000_000;
const NS_PER_MS: u64 = 1_000_000;

fn bad(reason: impl Into<Cow<'static, str>>) -> Error {
    Error::BadLine {
        format: "asc",
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes records as an ASC file. Call [`write_record`](Self::write_record) for each record and
/// [`finish`](Self::finish) once at the end.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    start_ns: Option<u64>,
}

impl Writer {
    /// A writer that has written nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append one record; the first call also writes the header, dated at this record's time
    /// cut to the millisecond.
    pub fn write_record(&mut self, out: &mut Vec<u8>, record: &CanRecord) {
        let start = match self.start_ns {
            Some(s) => s,
            None => self.write_header(out, record.ts_ns),
        };
        write_event_time(out, record.ts_ns, start);
        write_frame(out, record);
        out.push(b'\n');
    }

    /// Append the closing line (and the header, if no record was written).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.start_ns.is_none() {
            self.write_header(out, 0);
        }
        out.extend_from_slice(b"End TriggerBlock\n");
    }

    fn write_header(&mut self, out: &mut Vec<u8>, first_ts_ns: u64) -> u64 {
        let start = first_ts_ns / NS_PER_MS * NS_PER_MS;
        self.start_ns = Some(start);
        let date = format_date(start);
        out.extend_from_slice(format!("date {date}\n").as_bytes());
        out.extend_from_slice(b"base hex  timestamps absolute\ninternal events logged\n");
        out.extend_from_slice(format!("Begin Triggerblock {date}\n").as_bytes());
        out.extend_from_slice(b" 0.000000 Start of measurement\n");
        start
    }
}

/// `Wed Sep 30 15:06:13.191 2020`, UTC.
fn format_date(ts_ns: u64) -> String {
    let secs = (ts_ns / NS_PER_SEC) as i64;
    let nanos = (ts_ns % NS_PER_SEC) as u32;
    match DateTime::from_timestamp(secs, nanos) {
        Some(dt) => dt.format("%a %b %d %H:%M:%S%.3f %Y").to_string(),
        None => String::from("Thu Jan 01 00:00:00.000 1970"),
    }
}

/// python-can's `{timestamp: 9.6f} `: sign or space, seconds, six fraction digits.
fn write_event_time(out: &mut Vec<u8>, ts_ns: u64, start_ns: u64) {
    let (sign, delta) = if ts_ns >= start_ns {
        (b' ', ts_ns - start_ns)
    } else {
        (b'-', start_ns - ts_ns)
    };
    let us = delta / 1000;
    out.push(sign);
    push_decimal(out, us / 1_000_000, 1);
    out.push(b'.');
    push_decimal(out, us % 1_000_000, 6);
    out.push(b' ');
}

/// ASC channel number for a channel name: trailing digits plus one, else 1.
pub fn channel_number(channel: &str) -> u32 {
    let digits = channel.len() - channel.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    channel[channel.len() - digits..]
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_add(1))
        .unwrap_or(1)
}

fn push_padded(out: &mut Vec<u8>, text: &[u8], width: usize, right: bool) {
    let pad = width.saturating_sub(text.len());
    if right {
        out.resize(out.len() + pad, b' ');
    }
    out.extend_from_slice(text);
    if !right {
        out.resize(out.len() + pad, b' ');
    }
}

fn id_text(id: CanId) -> Vec<u8> {
    let mut s = format!("{:X}", id.raw()).into_bytes();
    if id.is_extended() {
        s.push(b'x');
    }
    s
}

fn push_bytes_spaced(out: &mut Vec<u8>, data: &[u8]) {
    for (i, &b) in data.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        push_hex_byte(out, b);
    }
}

fn dir_text(direction: Direction) -> &'static [u8] {
    match direction {
        Direction::Tx => b"Tx",
        Direction::Rx | Direction::Unknown => b"Rx",
    }
}

fn write_frame(out: &mut Vec<u8>, record: &CanRecord) {
    let channel = channel_number(&record.channel);
    match &record.frame {
        CanFrame::Error(e) => {
            push_decimal(out, u64::from(channel), 1);
            out.extend_from_slice(b"  ErrorFrame SocketCAN Class = 0x");
            push_hex(out, e.class_bits(), 8);
            match record.direction {
                Direction::Rx => out.extend_from_slice(b" Dir = Rx"),
                Direction::Tx => out.extend_from_slice(b" Dir = Tx"),
                Direction::Unknown => {}
            }
            out.extend_from_slice(b" Data =");
            for &b in e.data() {
                out.push(b' ');
                push_hex_byte(out, b);
            }
        }
        CanFrame::Fd(f) => {
            // python-can's FORMAT_MESSAGE_FD, with duration, length, CRC and bit timings zero.
            out.extend_from_slice(b"CANFD ");
            push_padded(out, channel.to_string().as_bytes(), 3, true);
            out.push(b' ');
            push_padded(out, dir_text(record.direction), 4, false);
            out.push(b' ');
            push_padded(out, &id_text(f.id()), 8, true);
            out.extend_from_slice(b"  ");
            push_padded(out, b"", 32, true);
            let flags = f.flags();
            out.extend_from_slice(if flags.brs { b" 1" } else { b" 0" });
            out.extend_from_slice(if flags.esi { b" 1 " } else { b" 0 " });
            let dlc = fd_len_to_dlc(f.data().len()).unwrap_or(0);
            out.push(super::HEX_UPPER[dlc as usize].to_ascii_lowercase());
            out.push(b' ');
            push_padded(out, f.data().len().to_string().as_bytes(), 2, true);
            out.push(b' ');
            push_bytes_spaced(out, f.data());
            let vector_flags =
                (1u32 << 12) | (u32::from(flags.brs) << 13) | (u32::from(flags.esi) << 14);
            out.extend_from_slice(b"        0    0 ");
            push_padded(out, format!("{vector_flags:X}").as_bytes(), 8, true);
            out.extend_from_slice(b"        0        0        0        0        0");
        }
        CanFrame::Remote(r) => {
            write_classic_prefix(out, channel, r.id(), record.direction);
            out.extend_from_slice(b" r ");
            out.push(super::HEX_UPPER[r.len()].to_ascii_lowercase());
            out.push(b' ');
        }
        CanFrame::Data(d) => {
            write_classic_prefix(out, channel, d.id(), record.direction);
            out.extend_from_slice(b" d ");
            let dlc = d.raw_dlc().unwrap_or(d.data().len() as u8);
            out.push(super::HEX_UPPER[dlc as usize & 0xF].to_ascii_lowercase());
            out.push(b' ');
            push_bytes_spaced(out, d.data());
        }
    }
}

/// python-can's `{channel}  {id:<15} {dir:<4}`.
fn write_classic_prefix(out: &mut Vec<u8>, channel: u32, id: CanId, direction: Direction) {
    push_decimal(out, u64::from(channel), 1);
    out.extend_from_slice(b"  ");
    push_padded(out, &id_text(id), 15, false);
    out.push(b' ');
    push_padded(out, dir_text(direction), 4, false);
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Reads an ASC file; see the [module docs](self). Yields frames only; skipped events are
/// counted in [`ignored_lines`](Self::ignored_lines).
#[derive(Debug)]
pub struct Reader<R> {
    lines: LineSource<R>,
    state: ReadState,
}

/// What the header lines set, carried across lines.
#[derive(Debug)]
struct ReadState {
    channels: ChannelInterner,
    hex: bool,
    deltas: bool,
    start_ns: u64,
    last_ns: u64,
    ignored: u64,
}

impl<R: BufRead> Reader<R> {
    /// A reader over `input`, with lines up to [`DEFAULT_MAX_LINE_LEN`](super::DEFAULT_MAX_LINE_LEN).
    pub fn new(input: R) -> Self {
        Self::with_max_line_len(input, super::DEFAULT_MAX_LINE_LEN)
    }

    /// A reader over `input` that refuses lines longer than `max_line_len` bytes (a bad line:
    /// [`Error::LineTooLong`] inside [`Error::AtLine`]; reading goes on at the next line).
    pub fn with_max_line_len(input: R, max_line_len: usize) -> Self {
        Self {
            lines: LineSource::new(input, "asc", max_line_len),
            state: ReadState::new(),
        }
    }

    /// Well-formed lines that carry no frame and were skipped (statistics, status, J1939
    /// transport events, comments, `Start of measurement`).
    pub fn ignored_lines(&self) -> u64 {
        self.state.ignored
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<LogLine, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.lines.next_entry("reading an ASC file", |line| {
            Ok(self.state.line(line)?.map(super::record_entry))
        })
    }
}

/// Parse a single event line against a fresh header state (hex base, start time 0): the frame
/// it carries, or `Ok(None)` for header, metadata and blank lines.
pub fn parse_line(line: &str) -> Result<Option<CanRecord>, Error> {
    let mut state = ReadState::new();
    state.line(line.as_bytes())
}

fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
}

impl ReadState {
    /// The state before any header line: hex numbers, absolute times from 0.
    fn new() -> Self {
        ReadState {
            channels: ChannelInterner::new(),
            hex: true,
            deltas: false,
            start_ns: 0,
            last_ns: 0,
            ignored: 0,
        }
    }

    fn line(&mut self, line: &[u8]) -> Result<Option<CanRecord>, Error> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return Ok(None);
        }
        if starts_with_ci(line, b"date ") {
            let text = String::from_utf8_lossy(&line[5..]);
            self.start_ns = parse_date(&text)?;
            self.last_ns = self.start_ns;
            return Ok(None);
        }
        if starts_with_ci(line, b"begin triggerblock") {
            let text = String::from_utf8_lossy(&line[18..]);
            if !text.trim().is_empty() {
                self.start_ns = parse_date(text.trim())?;
                self.last_ns = self.start_ns;
            }
            return Ok(None);
        }
        if starts_with_ci(line, b"base ") {
            let mut t = tokens(line).skip(1);
            self.hex = match t.next() {
                Some(b) if b.eq_ignore_ascii_case(b"hex") => true,
                Some(b) if b.eq_ignore_ascii_case(b"dec") => false,
                _ => return Err(bad("base must be hex or dec")),
            };
            if let (Some(kw), Some(mode)) = (t.next(), t.next())
                && kw.eq_ignore_ascii_case(b"timestamps")
            {
                self.deltas = mode.eq_ignore_ascii_case(b"relative");
            }
            return Ok(None);
        }
        if starts_with_ci(line, b"end triggerblock")
            || starts_with_ci(line, b"internal events logged")
            || starts_with_ci(line, b"no internal events logged")
        {
            return Ok(None);
        }
        if line.starts_with(b"//") {
            self.ignored += 1;
            return Ok(None);
        }
        self.event(line)
    }

    fn event(&mut self, line: &[u8]) -> Result<Option<CanRecord>, Error> {
        let mut t = tokens(line);
        let (negative, offset_ns) = parse_event_time(t.next().unwrap_or_default())?;
        let ts_ns = if self.deltas {
            self.last_ns
        } else {
            self.start_ns
        };
        let ts_ns = if negative {
            ts_ns.checked_sub(offset_ns)
        } else {
            ts_ns.checked_add(offset_ns)
        }
        .ok_or_else(|| bad("timestamp out of range"))?;
        let rest: Vec<&[u8]> = t.collect();
        let record = match rest.first() {
            Some(&b"CANFD") => self.fd_event(ts_ns, &rest[1..])?,
            Some(ch) if ch.iter().all(u8::is_ascii_digit) => {
                self.classic_event(ts_ns, ch, &rest[1..])?
            }
            _ => None,
        };
        match record {
            Some(r) => {
                self.last_ns = r.ts_ns;
                Ok(Some(r))
            }
            None => {
                self.ignored += 1;
                Ok(None)
            }
        }
    }

    fn channel(&mut self, number: &[u8]) -> Result<Channel, Error> {
        let n = std::str::from_utf8(number)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&n| n >= 1)
            .ok_or_else(|| bad("channel must be a number from 1"))?;
        Ok(self.channels.intern(&format!("can{}", n - 1)))
    }

    fn number(&self, text: &[u8]) -> Result<u32, Error> {
        let s = std::str::from_utf8(text).map_err(|_| bad("number is not ASCII"))?;
        u32::from_str_radix(s, if self.hex { 16 } else { 10 })
            .map_err(|_| bad(format!("bad number {s:?}")))
    }

    fn byte(&self, text: &[u8]) -> Result<u8, Error> {
        u8::try_from(self.number(text)?).map_err(|_| bad("data byte above 255"))
    }

    fn id(&self, text: &[u8]) -> Result<CanId, Error> {
        match text {
            [digits @ .., b'x' | b'X'] => CanId::extended(self.number(digits)?),
            digits => CanId::standard(self.number(digits)?),
        }
    }

    fn classic_event(
        &mut self,
        ts_ns: u64,
        ch: &[u8],
        rest: &[&[u8]],
    ) -> Result<Option<CanRecord>, Error> {
        if rest
            .first()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"errorframe"))
        {
            let channel = self.channel(ch)?;
            let (frame, direction) = error_trailer(&rest[1..])?;
            return Ok(Some(CanRecord::new(
                ts_ns,
                channel,
                direction,
                CanFrame::Error(frame),
            )));
        }
        let direction = match rest.get(1) {
            Some(&b"Rx") => Direction::Rx,
            Some(&b"Tx") => Direction::Tx,
            _ => return Ok(None), // Statistic:, J1939TP and other events
        };
        let channel = self.channel(ch)?;
        let id = self.id(rest[0])?;
        let frame = match rest.get(2).copied() {
            Some(b"r" | b"R") => {
                let len = match rest.get(3) {
                    Some(t) if t.iter().all(u8::is_ascii_digit) => self.number(t)? as usize,
                    _ => 0,
                };
                CanFrame::Remote(RemoteFrame::new(id, len)?)
            }
            Some(b"d" | b"D") => {
                let dlc = self.number(rest.get(3).ok_or_else(|| bad("data frame without DLC"))?)?;
                let full_len = u8::try_from(dlc)
                    .ok()
                    .and_then(fd_dlc_to_len)
                    .ok_or_else(|| bad("DLC above 15"))?;
                let len = full_len.min(CLASSIC_MAX_LEN);
                let mut data = [0u8; CLASSIC_MAX_LEN];
                for (i, slot) in data[..len].iter_mut().enumerate() {
                    *slot = self.byte(
                        rest.get(4 + i)
                            .ok_or_else(|| bad("fewer data bytes than the DLC says"))?,
                    )?;
                }
                let frame = DataFrame::new(id, &data[..len])?;
                CanFrame::Data(if dlc > 8 {
                    frame.with_raw_dlc(dlc as u8)?
                } else {
                    frame
                })
            }
            _ => return Err(bad("expected d or r after the direction")),
        };
        Ok(Some(CanRecord::new(ts_ns, channel, direction, frame)))
    }

    fn fd_event(&mut self, ts_ns: u64, rest: &[&[u8]]) -> Result<Option<CanRecord>, Error> {
        let [ch, dir, rest @ ..] = rest else {
            return Err(bad("CANFD line without channel and direction"));
        };
        let channel = self.channel(ch)?;
        let direction = match *dir {
            b"Rx" => Direction::Rx,
            b"Tx" => Direction::Tx,
            _ => return Err(bad("CANFD direction must be Rx or Tx")),
        };
        if rest
            .first()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"errorframe"))
        {
            return Ok(Some(CanRecord::new(
                ts_ns,
                channel,
                direction,
                CanFrame::Error(ErrorFrame::new(0, &[])?),
            )));
        }
        let [id, rest @ ..] = rest else {
            return Err(bad("CANFD line without id"));
        };
        let id = self.id(id)?;
        // An optional symbolic name sits between the id and the BRS digit.
        let rest = match rest.first() {
            Some(t) if t.iter().all(u8::is_ascii_digit) => rest,
            Some(_) => &rest[1..],
            None => rest,
        };
        let [brs, esi, dlc, len, data @ ..] = rest else {
            return Err(bad("CANFD line too short"));
        };
        let flag = |t: &[u8]| match t {
            b"0" => Ok(false),
            b"1" => Ok(true),
            _ => Err(bad("BRS / ESI must be 0 or 1")),
        };
        let flags = FdFlags {
            brs: flag(brs)?,
            esi: flag(esi)?,
        };
        let dlc = self.number(dlc)?;
        let len: usize = std::str::from_utf8(len)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad CANFD data length"))?;
        if len == 0 && dlc != 0 {
            // How python-can and Vector log a remote frame on an FD channel.
            let frame = RemoteFrame::new(id, dlc as usize)?;
            return Ok(Some(CanRecord::new(
                ts_ns,
                channel,
                direction,
                CanFrame::Remote(frame),
            )));
        }
        if data.len() < len {
            return Err(bad("fewer data bytes than the length says"));
        }
        let mut bytes = [0u8; 64];
        if len > bytes.len() {
            return Err(Error::InvalidFdLength { len });
        }
        for (slot, t) in bytes[..len].iter_mut().zip(data) {
            *slot = self.byte(t)?;
        }
        let frame = FdFrame::new(id, &bytes[..len], flags)?;
        Ok(Some(CanRecord::new(
            ts_ns,
            channel,
            direction,
            CanFrame::Fd(frame),
        )))
    }
}

/// Our `SocketCAN Class = 0x… [Dir = Rx|Tx] Data = …` trailer; anything else (Vector's own
/// details) reads as class 0 with no data.
fn error_trailer(rest: &[&[u8]]) -> Result<(ErrorFrame, Direction), Error> {
    let [b"SocketCAN", b"Class", b"=", class, rest @ ..] = rest else {
        return Ok((ErrorFrame::new(0, &[])?, Direction::Unknown));
    };
    let class = std::str::from_utf8(class)
        .ok()
        .and_then(|s| s.strip_prefix("0x"))
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or_else(|| bad("bad SocketCAN error class"))?;
    let (direction, rest) = match rest {
        [b"Dir", b"=", b"Rx", rest @ ..] => (Direction::Rx, rest),
        [b"Dir", b"=", b"Tx", rest @ ..] => (Direction::Tx, rest),
        rest => (Direction::Unknown, rest),
    };
    let [b"Data", b"=", bytes @ ..] = rest else {
        return Err(bad("SocketCAN error frame without Data ="));
    };
    if bytes.len() > CLASSIC_MAX_LEN {
        return Err(Error::ClassicTooLong { len: bytes.len() });
    }
    let mut data = [0u8; CLASSIC_MAX_LEN];
    for (slot, t) in data.iter_mut().zip(bytes) {
        let s = std::str::from_utf8(t).map_err(|_| bad("error data is not hex"))?;
        *slot = u8::from_str_radix(s, 16).map_err(|_| bad("error data is not hex"))?;
    }
    Ok((ErrorFrame::new(class, &data[..bytes.len()])?, direction))
}

/// `[-]SEC.FRAC` with up to nine fraction digits, as (negative, nanoseconds).
fn parse_event_time(text: &[u8]) -> Result<(bool, u64), Error> {
    let (negative, text) = match text {
        [b'-', rest @ ..] => (true, rest),
        other => (false, other),
    };
    let err = || bad("expected a timestamp SEC.FRAC");
    let dot = text.iter().position(|&b| b == b'.').ok_or_else(err)?;
    let (secs, frac) = (&text[..dot], &text[dot + 1..]);
    if secs.is_empty() || frac.is_empty() || frac.len() > 9 {
        return Err(err());
    }
    if !secs.iter().chain(frac).all(u8::is_ascii_digit) {
        return Err(err());
    }
    let mut s: u64 = 0;
    for &b in secs {
        s = s
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(err)?;
    }
    let mut f: u64 = 0;
    for &b in frac {
        f = f * 10 + u64::from(b - b'0');
    }
    f *= 10u64.pow(9 - frac.len() as u32);
    let ns = s
        .checked_mul(NS_PER_SEC)
        .and_then(|v| v.checked_add(f))
        .ok_or_else(err)?;
    Ok((negative, ns))
}

/// `Wed Sep 30 15:06:13.191 2020` or `Sat Sep 30 10:06:13.191 PM 2017` (English or German
/// names), read as UTC; nanoseconds since the epoch.
fn parse_date(text: &str) -> Result<u64, Error> {
    let err = || bad(format!("unrecognised date {text:?}"));
    let t: Vec<&str> = text.split_whitespace().collect();
    let (month, day, time, ampm, year) = match t.as_slice() {
        [_, m, d, time, year] => (m, d, time, None, year),
        [_, m, d, time, ap, year] => (m, d, time, Some(*ap), year),
        _ => return Err(err()),
    };
    const MONTHS: [(&str, u32); 16] = [
        ("Jan", 1),
        ("Feb", 2),
        ("Mar", 3),
        ("Apr", 4),
        ("May", 5),
        ("Jun", 6),
        ("Jul", 7),
        ("Aug", 8),
        ("Sep", 9),
        ("Oct", 10),
        ("Nov", 11),
        ("Dec", 12),
        ("Mär", 3),
        ("Mai", 5),
        ("Okt", 10),
        ("Dez", 12),
    ];
    let month = MONTHS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(month))
        .map(|(_, m)| *m)
        .ok_or_else(err)?;
    let day: u32 = day.parse().map_err(|_| err())?;
    let year: i32 = year.parse().map_err(|_| err())?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':').map(|p| p.parse::<u32>());
    let (Some(Ok(mut h)), Some(Ok(m)), Some(Ok(s)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(err());
    };
    match ampm {
        Some(ap) if ap.eq_ignore_ascii_case("PM") && h < 12 => h += 12,
        Some(ap) if ap.eq_ignore_ascii_case("AM") && h == 12 => h = 0,
        Some(ap) if !ap.eq_ignore_ascii_case("AM") && !ap.eq_ignore_ascii_case("PM") => {
            return Err(err());
        }
        _ => {}
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u32>().map_err(|_| err())? * 10u32.pow(9 - frac.len() as u32)
    };
    let dt = NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|d| d.and_hms_nano_opt(h, m, s, nanos))
        .ok_or_else(err)?
        .and_utc();
    let secs = u64::try_from(dt.timestamp()).map_err(|_| err())?;
    secs.checked_mul(NS_PER_SEC)
        .and_then(|v| v.checked_add(u64::from(nanos)))
        .ok_or_else(err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_python_can_sample_lines() {
        let r = parse_line(
            "  17.876708 1  6F9             Rx   d 8 05 0C 00 00 00 00 00 00  Length = 240015",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.ts_ns, 17_876_708_000);
        assert_eq!(&*r.channel, "can0");
        assert_eq!(r.frame.data(), &[5, 0x0C, 0, 0, 0, 0, 0, 0]);
        let r = parse_line("   2.584921 4 300 Tx r 8 Length = 1704000")
            .unwrap()
            .unwrap();
        assert!(matches!(r.frame, CanFrame::Remote(f) if f.len() == 8));
        assert_eq!(r.direction, Direction::Tx);
        let r = parse_line("  30.005041 CANFD   2 Tx        1C4D80A7x                                   0 1 8  8 12 c2 03 04 05 06 07 08   102203  133   303000 e0006659 46500250 4b140250 20011736 2001040d").unwrap().unwrap();
        assert!(
            matches!(r.frame, CanFrame::Fd(f) if f.flags().esi && !f.flags().brs && f.data()[1] == 0xC2)
        );
        assert!(
            parse_line("   1.015991 1  Statistic: D 0 R 0 XD 0 XR 0 E 0 O 0 B 0.00%")
                .unwrap()
                .is_none()
        );
        assert!(
            parse_line("   0.000000 Start of measurement")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn dates_round_trip() {
        let ts = 1_506_784_773_191_000_000;
        assert_eq!(format_date(ts), "Sat Sep 30 15:19:33.191 2017");
        assert_eq!(parse_date(&format_date(ts)).unwrap(), ts);
        assert_eq!(
            parse_date("Sam Sep 30 15:06:13.191 2017").unwrap(),
            1_506_783_973_191_000_000
        );
        assert_eq!(
            parse_date("Sat Sep 30 10:06:13.191 PM 2017").unwrap(),
            1_506_809_173_191_000_000
        );
        assert!(parse_date("Sat Foo 30 10:06:13.191 2017").is_err());
    }

    #[test]
    fn writes_what_python_can_writes() {
        let frame =
            CanFrame::Data(DataFrame::new(CanId::standard(0x7E0).unwrap(), &[2, 0x10]).unwrap());
        let mut w = Writer::new();
        let mut out = Vec::new();
        w.write_record(
            &mut out,
            &CanRecord::new(2_500_000_000, "can1".into(), Direction::Tx, frame),
        );
        w.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "date Thu Jan 01 00:00:02.500 1970");
        assert_eq!(
            lines[5],
            " 0.000000 2  7E0             Tx   d 2 10 10".replace(" 10 10", " 02 10")
        );
        assert_eq!(lines[6], "End TriggerBlock");
    }
}
