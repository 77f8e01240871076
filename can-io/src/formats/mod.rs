//! Log file formats: candump (`candump -L`), Vector ASC and JSON lines.
//!
//! Each format has a pure line codec (`parse_*` / `write_*`, no I/O) and a reader over any
//! [`BufRead`] that yields [`LogLine`]s. A bad line never ends a read: the reader yields an
//! [`Error::AtLine`] carrying the 1-based line number and the reason, then carries on with the
//! next line. Only an I/O error ends the iteration.
//!
//! Lines are bounded: a line longer than [`DEFAULT_MAX_LINE_LEN`] (or the limit given to
//! `with_max_line_len`) is a bad line like any other ([`Error::LineTooLong`] inside
//! [`Error::AtLine`]), found while reading — a reader never holds more than the limit plus the
//! input's read chunk, whatever the input.
//!
//! Readers intern channel names, so every record read from one file shares one allocation per
//! distinct interface name; apart from that, reading allocates nothing per frame.
//!
//! What is tolerated and what each format can and cannot carry is written down in
//! `docs/formats.md`.

use std::collections::HashSet;
use std::io::BufRead;

use crate::error::Error;
use crate::frame::{CanRecord, Channel};

pub mod asc;
pub mod candump;
pub mod jsonl;

/// One meaningful line of a log: a frame record or a notice that frames were dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A timestamped frame.
    Record(CanRecord),
    /// The capture lost frames here (candump's `DROPCOUNT:` line).
    Drop(DropNotice),
}

/// A frame read from a format without line styles, as [`LineSource::next_entry`] takes it.
pub(crate) fn record_entry(record: CanRecord) -> (Entry, candump::LineStyle) {
    (Entry::Record(record), candump::LineStyle::default())
}

/// The capturing socket dropped frames (candump's `DROPCOUNT:` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropNotice {
    /// The interface whose socket dropped frames.
    pub channel: Channel,
    /// Frames dropped since the previous notice.
    pub dropped: u64,
    /// Frames dropped since the capture started.
    pub total: u64,
}

/// An entry read from a log, with where it came from and how its line was laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// 1-based line number in the input.
    pub number: u64,
    /// What the line says.
    pub entry: Entry,
    /// How a candump line was formatted (padding, timestamp digits, separators), so writing it
    /// back gives the same bytes. Readers of other formats leave the default.
    pub style: candump::LineStyle,
}

/// The log formats this module reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// can-utils `candump -L` log.
    Candump,
    /// Vector ASC.
    Asc,
    /// One JSON object per frame (the `tether can convert --to jsonl` shape).
    Jsonl,
}

impl LogFormat {
    /// The short name used on the command line and in errors.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Candump => "candump",
            LogFormat::Asc => "asc",
            LogFormat::Jsonl => "jsonl",
        }
    }

    /// Guess the format from the first bytes of a file: the first non-blank line decides.
    /// `None` when nothing recognisable is found.
    pub fn detect(head: &[u8]) -> Option<LogFormat> {
        let line = head
            .split(|&b| b == b'\n')
            .map(|l| l.trim_ascii())
            .find(|l| !l.is_empty())?;
        let lower = |p: &[u8]| line.len() >= p.len() && line[..p.len()].eq_ignore_ascii_case(p);
        if line.starts_with(b"(") || line.starts_with(b"DROPCOUNT:") {
            Some(LogFormat::Candump)
        } else if line.starts_with(b"{") {
            Some(LogFormat::Jsonl)
        } else if lower(b"date ")
            || lower(b"base ")
            || lower(b"begin triggerblock")
            || line.starts_with(b"//")
            || lower(b"internal events")
            || lower(b"no internal events")
        {
            Some(LogFormat::Asc)
        } else {
            None
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A reader of any supported format, chosen at run time.
#[derive(Debug)]
pub enum LogReader<R> {
    /// candump log.
    Candump(candump::Reader<R>),
    /// Vector ASC.
    Asc(asc::Reader<R>),
    /// JSON lines.
    Jsonl(jsonl::Reader<R>),
}

impl<R: BufRead> LogReader<R> {
    /// A reader of `format` over `input`, with lines up to [`DEFAULT_MAX_LINE_LEN`].
    pub fn new(format: LogFormat, input: R) -> Self {
        Self::with_max_line_len(format, input, DEFAULT_MAX_LINE_LEN)
    }

    /// A reader of `format` over `input` that refuses lines longer than `max_line_len` bytes.
    pub fn with_max_line_len(format: LogFormat, input: R, max_line_len: usize) -> Self {
        match format {
            LogFormat::Candump => {
                LogReader::Candump(candump::Reader::with_max_line_len(input, max_line_len))
            }
            LogFormat::Asc => LogReader::Asc(asc::Reader::with_max_line_len(input, max_line_len)),
            LogFormat::Jsonl => {
                LogReader::Jsonl(jsonl::Reader::with_max_line_len(input, max_line_len))
            }
        }
    }

    /// Lines that were well-formed but carry no frame and were skipped on purpose (ASC
    /// statistics, status and J1939 transport events, comments). Bad lines are not counted
    /// here; they are yielded as errors.
    pub fn ignored_lines(&self) -> u64 {
        match self {
            LogReader::Asc(r) => r.ignored_lines(),
            _ => 0,
        }
    }
}

impl<R: BufRead> Iterator for LogReader<R> {
    type Item = Result<LogLine, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            LogReader::Candump(r) => r.next(),
            LogReader::Asc(r) => r.next(),
            LogReader::Jsonl(r) => r.next(),
        }
    }
}

/// Shares one [`Channel`] allocation per distinct interface name.
#[derive(Debug, Default, Clone)]
pub struct ChannelInterner {
    last: Option<Channel>,
    known: HashSet<Channel>,
}

impl ChannelInterner {
    /// An empty interner.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared channel for `name`.
    pub fn intern(&mut self, name: &str) -> Channel {
        if let Some(last) = &self.last
            && **last == *name
        {
            return last.clone();
        }
        let channel = match self.known.get(name) {
            Some(c) => c.clone(),
            None => {
                let c: Channel = Channel::from(name);
                self.known.insert(c.clone());
                c
            }
        };
        self.last = Some(channel.clone());
        channel
    }
}

/// The longest line a log reader takes unless told otherwise: 64 KiB, counted without the `\n`
/// (a `\r` before it counts). Real lines are under 200 bytes; this only stops a file without
/// newlines from being read into memory whole.
pub const DEFAULT_MAX_LINE_LEN: usize = 64 * 1024;

/// Reads lines into one reused buffer, counting them and trimming the line ending.
///
/// Lines are bounded while they are read: the buffer never holds more than `max_len` bytes, and
/// the rest of an over-long line is consumed from the input's own buffer and dropped, so memory
/// stays at `max_len` plus the input's read chunk whatever the input holds.
#[derive(Debug)]
pub(crate) struct LineSource<R> {
    input: R,
    buf: Vec<u8>,
    number: u64,
    format: &'static str,
    max_len: usize,
    failed: bool,
}

impl<R: BufRead> LineSource<R> {
    pub(crate) fn new(input: R, format: &'static str, max_len: usize) -> Self {
        Self {
            input,
            buf: Vec::with_capacity(256.min(max_len)),
            number: 0,
            format,
            max_len,
            failed: false,
        }
    }

    /// The next line that `parse` finds an entry in, as a [`LogLine`]; lines without one
    /// (`Ok(None)`) are skipped. A line that does not parse is `Error::AtLine`, and reading goes
    /// on at the next line; `None` at the end of input or after an I/O error, as
    /// [`next_line`](Self::next_line).
    pub(crate) fn next_entry(
        &mut self,
        action: &'static str,
        mut parse: impl FnMut(&[u8]) -> Result<Option<(Entry, candump::LineStyle)>, Error>,
    ) -> Option<Result<LogLine, Error>> {
        loop {
            let (number, line) = match self.next_line(action)? {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            match parse(line) {
                Ok(Some((entry, style))) => {
                    return Some(Ok(LogLine {
                        number,
                        entry,
                        style,
                    }));
                }
                Ok(None) => continue,
                Err(e) => {
                    return Some(Err(Error::AtLine {
                        line: number,
                        source: Box::new(e),
                    }));
                }
            }
        }
    }

    /// The next line without its `\n` / `\r\n`, with its number; `None` at the end of input or
    /// after an I/O error (which is returned once). A line longer than the limit is
    /// `Error::AtLine` with [`Error::LineTooLong`]; reading goes on at the next line.
    pub(crate) fn next_line(
        &mut self,
        action: &'static str,
    ) -> Option<Result<(u64, &[u8]), Error>> {
        if self.failed {
            return None;
        }
        self.buf.clear();
        let mut read_any = false;
        let mut too_long = false;
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    self.failed = true;
                    return Some(Err(Error::Io { action, source }));
                }
            };
            if chunk.is_empty() {
                break;
            }
            read_any = true;
            let (take, ended) = match memchr::memchr(b'\n', chunk) {
                Some(at) => (at, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                let len = self.buf.len() + take;
                if len > self.max_len {
                    too_long = true;
                } else {
                    if len > self.buf.capacity() {
                        // Grow as Vec would, but never past the limit.
                        let target = len.max(self.buf.capacity() * 2).min(self.max_len);
                        self.buf.reserve_exact(target - self.buf.len());
                    }
                    self.buf.extend_from_slice(&chunk[..take]);
                }
            }
            self.input.consume(take + usize::from(ended));
            if ended {
                break;
            }
        }
        if !read_any {
            return None;
        }
        self.number += 1;
        if too_long {
            return Some(Err(Error::AtLine {
                line: self.number,
                source: Box::new(Error::LineTooLong {
                    format: self.format,
                    limit: self.max_len,
                }),
            }));
        }
        let mut line = self.buf.as_slice();
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        Some(Ok((self.number, line)))
    }
}

/// Hex digit values; `0xFF` marks a non-hex byte.
pub(crate) const HEX_VALUE: [u8; 256] = {
    let mut table = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'A' as usize + i] = 10 + i as u8;
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Upper-case hex digits.
pub(crate) const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Append `value` in decimal, zero-padded to at least `width` digits.
pub(crate) fn push_decimal(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut n = value;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    for _ in len..width {
        out.push(b'0');
    }
    out.extend_from_slice(&digits[i..]);
}

/// Append `value` in upper-case hex, zero-padded to `width` digits.
pub(crate) fn push_hex(out: &mut Vec<u8>, value: u32, width: usize) {
    for shift in (0..width).rev() {
        out.push(HEX_UPPER[((value >> (shift * 4)) & 0xF) as usize]);
    }
}

/// Append one byte as two upper-case hex digits.
#[inline]
pub(crate) fn push_hex_byte(out: &mut Vec<u8>, b: u8) {
    out.push(HEX_UPPER[(b >> 4) as usize]);
    out.push(HEX_UPPER[(b & 0xF) as usize]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{BufReader, Read};

    use super::*;

    /// A 100 MB line without a newline: refused at the limit without being held, and the next
    /// line is read.
    #[test]
    fn an_endless_line_is_refused_while_reading() {
        let endless = std::io::repeat(b'(').take(100 * 1024 * 1024);
        let input = BufReader::new(endless.chain(&b"\n(1.000000) can0 123#00\r\n"[..]));
        let mut source = LineSource::new(input, "candump", DEFAULT_MAX_LINE_LEN);
        let err = source.next_line("test").unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 1: candump line longer than the 65536-byte limit"
        );
        assert!(matches!(
            &err,
            Error::AtLine { line: 1, source } if matches!(**source, Error::LineTooLong { limit: DEFAULT_MAX_LINE_LEN, format: "candump" })
        ));
        assert!(source.buf.capacity() <= DEFAULT_MAX_LINE_LEN);
        let (n, line) = source.next_line("test").unwrap().unwrap();
        assert_eq!((n, line), (2, &b"(1.000000) can0 123#00"[..]));
        assert!(source.next_line("test").is_none());
    }

    /// An I/O error ends the lines: returned once, then nothing.
    #[test]
    fn an_io_error_is_returned_once() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let mut source = LineSource::new(BufReader::new(Broken), "asc", 10);
        assert!(matches!(
            source.next_line("reading"),
            Some(Err(Error::Io { .. }))
        ));
        assert!(source.next_line("reading").is_none());
    }

    #[test]
    fn detects_formats_from_the_first_line() {
        let cases: [(&[u8], Option<LogFormat>); 7] = [
            (b"\n(1.000000) can0 123#00\n", Some(LogFormat::Candump)),
            (b"DROPCOUNT: dropped 1 CAN frame", Some(LogFormat::Candump)),
            (b"date Sam Sep 30 15:06:13.191 2017\n", Some(LogFormat::Asc)),
            (b"  Begin TriggerBlock\n", Some(LogFormat::Asc)),
            (b"{\"ts_ns\": 1}\n", Some(LogFormat::Jsonl)),
            (b"timestamp,id,data\n", None),
            (b"", None),
        ];
        for (first, format) in cases {
            assert_eq!(
                LogFormat::detect(first),
                format,
                "{:?}",
                String::from_utf8_lossy(first)
            );
        }
    }

    #[test]
    fn interner_shares_one_allocation_per_name() {
        let mut names = ChannelInterner::new();
        let a = names.intern("can0");
        let b = names.intern("can1");
        let a2 = names.intern("can0");
        assert!(std::sync::Arc::ptr_eq(&a, &a2));
        assert!(!std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!(&*b, "can1");
    }

    #[test]
    fn decimal_and_hex_helpers_pad() {
        let mut out = Vec::new();
        push_decimal(&mut out, 42, 5);
        push_decimal(&mut out, 0, 0);
        push_decimal(&mut out, u64::MAX, 1);
        push_hex(&mut out, 0x7E, 3);
        assert_eq!(out, b"0004201844674407370955161507E");
    }
}
