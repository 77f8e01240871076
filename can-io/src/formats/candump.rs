//! The can-utils `candump -L` log format.
//!
//! ```text
//! (1600000000.000001) can0 7E0#0210030000000000
//! (1600000000.000002)  can1 18DAF110#0322F19000000000 T
//! (1600000000.000004) can0 7E8#R8
//! (1600000000.000005) can0 123##1AABBCCDDEEFF001122334455
//! (1600000000.000007) can0 20000004#0004000000000000
//! (1600000000.000008) can0 456#0102030405060708_F
//! DROPCOUNT: dropped 3 CAN frames on 'can0' socket (total drops 3)
//! ```
//!
//! Read: 1–9 fractional digits, space-padded interface names, `ID#DATA`, `ID#R`, `ID#R<len>`,
//! `ID#DATA_<rawdlc>`, `ID##<flags><DATA>` (CAN FD), error frames (8-digit id with
//! `CAN_ERR_FLAG` 0x20000000), `.` between data bytes, lower- or upper-case hex, a trailing `T`
//! / `R` direction mark, `DROPCOUNT:` notices, blank lines (skipped) and `\r\n` endings.
//! Refused: 3-digit ids above `7FF` (can-utils masks them; we do not guess), ids of other
//! lengths, odd hex digits, lengths the frame kind cannot have, and a raw DLC on a remote frame
//! (the frame model has no place for it).
//!
//! Written: exactly what can-utils writes, upper-case hex. The [`LineStyle`] of a read line
//! (interface padding, timestamp digits, `.` separators, extra FD flag bits) is kept outside
//! the record, so a log read and written back gives the same bytes.

use std::borrow::Cow;
use std::io::BufRead;

use super::{ChannelInterner, DropNotice, Entry, HEX_VALUE, LineSource, LogLine};
use super::{push_decimal, push_hex, push_hex_byte};
use crate::error::Error;
use crate::error_frame::ErrorFrame;
use crate::frame::{
    CLASSIC_MAX_LEN, CanFrame, CanId, CanRecord, DataFrame, Direction, FD_MAX_LEN, FdFlags,
    FdFrame, MAX_STANDARD_ID, RemoteFrame,
};

const CAN_ERR_FLAG: u32 = 0x2000_0000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// How a candump line was laid out, beyond what the record says. Writing a record with the
/// style its line was read with reproduces the line byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LineStyle {
    /// Digits of the seconds part, zero-padded (can-utils writes 10).
    pub sec_digits: u8,
    /// Digits of the fraction: 6 (`SEC.USEC`) or 9 (nanoseconds). A writer falls back to 9
    /// when the timestamp has more precision than this.
    pub frac_digits: u8,
    /// Extra spaces before the interface name (candump pads names to the longest one logged).
    pub iface_pad: u8,
    /// Whether data bytes are separated by `.`.
    pub byte_sep: bool,
    /// CAN FD flag bits other than BRS / ESI that were set in the flags digit (FDF = 4 on
    /// newer kernels).
    pub fd_extra_flags: u8,
}

impl Default for LineStyle {
    /// What `candump -L` writes for a single interface.
    fn default() -> Self {
        Self {
            sec_digits: 10,
            frac_digits: 6,
            iface_pad: 0,
            byte_sep: false,
            fd_extra_flags: 0,
        }
    }
}

fn bad(reason: &'static str) -> Error {
    Error::BadLine {
        format: "candump",
        reason: Cow::Borrowed(reason),
    }
}

/// Parse one line (without its line ending). `Ok(None)` for a blank line.
///
/// This allocates the channel name; readers use [`Parser`] to share it between lines.
pub fn parse_line(line: &str) -> Result<Option<Entry>, Error> {
    Ok(Parser::new()
        .parse(line.as_bytes())?
        .map(|(entry, _)| entry))
}

/// A line parser that interns channel names across lines.
#[derive(Debug, Default, Clone)]
pub struct Parser {
    channels: ChannelInterner,
}

impl Parser {
    /// A parser with an empty channel table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse one line (without its line ending): the entry and its layout, `Ok(None)` for a
    /// blank line.
    pub fn parse(&mut self, line: &[u8]) -> Result<Option<(Entry, LineStyle)>, Error> {
        let line = line.trim_ascii_end();
        if line.is_empty() {
            return Ok(None);
        }
        if line.starts_with(b"DROPCOUNT:") {
            return self
                .parse_drop(line)
                .map(|d| Some((Entry::Drop(d), LineStyle::default())));
        }
        let mut style = LineStyle::default();
        let mut cur = Cursor { s: line, i: 0 };

        // (SEC.FRAC)
        if !cur.eat(b'(') {
            return Err(bad("expected '(' and a timestamp"));
        }
        let (secs, sec_digits) = cur
            .decimal(20)
            .ok_or_else(|| bad("bad timestamp seconds"))?;
        if !cur.eat(b'.') {
            return Err(bad("timestamp needs a '.' and a fraction"));
        }
        let (frac, frac_digits) = cur
            .decimal(9)
            .ok_or_else(|| bad("bad timestamp fraction"))?;
        if !cur.eat(b')') {
            return Err(bad("expected ')' after the timestamp"));
        }
        let frac_ns = frac * 10u64.pow(9 - frac_digits as u32);
        let ts_ns = secs
            .checked_mul(NS_PER_SEC)
            .and_then(|s| s.checked_add(frac_ns))
            .ok_or_else(|| bad("timestamp beyond the u64 nanosecond range"))?;
        style.sec_digits = sec_digits;
        style.frac_digits = frac_digits;

        // Interface, right-aligned after one space.
        let spaces = cur.spaces();
        if spaces == 0 {
            return Err(bad("expected a space after the timestamp"));
        }
        style.iface_pad =
            u8::try_from(spaces - 1).map_err(|_| bad("interface padding too wide"))?;
        let name = cur.token();
        if name.is_empty() {
            return Err(bad("missing interface name"));
        }
        let name = std::str::from_utf8(name).map_err(|_| bad("interface name is not UTF-8"))?;
        if cur.spaces() == 0 {
            return Err(bad("expected a space after the interface name"));
        }
        let frame_text = cur.token();
        if frame_text.is_empty() {
            return Err(bad("missing frame"));
        }
        let direction = if cur.spaces() == 0 {
            Direction::Unknown
        } else {
            match cur.token() {
                b"R" | b"r" => Direction::Rx,
                b"T" | b"t" => Direction::Tx,
                b"" => Direction::Unknown,
                _ => {
                    return Err(bad(
                        "unexpected text after the frame (only T or R may follow)",
                    ));
                }
            }
        };
        if !cur.rest().trim_ascii().is_empty() {
            return Err(bad("unexpected text after the direction mark"));
        }
        let frame = parse_frame(frame_text, &mut style)?;
        let channel = self.channels.intern(name);
        Ok(Some((
            Entry::Record(CanRecord::new(ts_ns, channel, direction, frame)),
            style,
        )))
    }

    fn parse_drop(&mut self, line: &[u8]) -> Result<DropNotice, Error> {
        // DROPCOUNT: dropped 3 CAN frames on 'can0' socket (total drops 3)
        let text = std::str::from_utf8(line).map_err(|_| bad("DROPCOUNT line is not UTF-8"))?;
        let malformed = || bad("malformed DROPCOUNT line");
        let rest = text
            .strip_prefix("DROPCOUNT: dropped ")
            .ok_or_else(malformed)?;
        let (dropped, rest) = rest.split_once(' ').ok_or_else(malformed)?;
        let rest = rest
            .strip_prefix("CAN frames on '")
            .or_else(|| rest.strip_prefix("CAN frame on '"))
            .ok_or_else(malformed)?;
        let (name, rest) = rest
            .split_once("' socket (total drops ")
            .ok_or_else(malformed)?;
        let total = rest.strip_suffix(')').ok_or_else(malformed)?;
        let number = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<u64>().ok()
        };
        Ok(DropNotice {
            channel: self.channels.intern(name),
            dropped: number(dropped).ok_or_else(malformed)?,
            total: number(total).ok_or_else(malformed)?,
        })
    }
}

/// Byte cursor over one line.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn eat(&mut self, b: u8) -> bool {
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// 1..=max decimal digits: the value and the digit count.
    #[inline]
    fn decimal(&mut self, max: u8) -> Option<(u64, u8)> {
        let start = self.i;
        let mut value: u64 = 0;
        while let Some(&b) = self.s.get(self.i) {
            if !b.is_ascii_digit() {
                break;
            }
            value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || digits > max as usize {
            return None;
        }
        Some((value, digits as u8))
    }

    #[inline]
    fn spaces(&mut self) -> usize {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|&b| b == b' ' || b == b'\t') {
            self.i += 1;
        }
        self.i - start
    }

    #[inline]
    fn token(&mut self) -> &'a [u8] {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|&b| b != b' ' && b != b'\t') {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    fn rest(&self) -> &'a [u8] {
        &self.s[self.i..]
    }
}

/// Parse `ID#…` into a frame, noting separators and FD flag bits in `style`.
fn parse_frame(text: &[u8], style: &mut LineStyle) -> Result<CanFrame, Error> {
    let hash = text
        .iter()
        .position(|&b| b == b'#')
        .ok_or_else(|| bad("missing '#' after the id"))?;
    let (id_text, body) = (&text[..hash], &text[hash + 1..]);
    let mut id_value: u32 = 0;
    for &b in id_text {
        let v = HEX_VALUE[b as usize];
        if v == 0xFF {
            return Err(bad("identifier is not hex"));
        }
        id_value = (id_value << 4) | u32::from(v);
    }
    enum Kind {
        Id(CanId),
        Error(u32),
    }
    let kind = match id_text.len() {
        3 if id_value <= MAX_STANDARD_ID => Kind::Id(CanId::standard(id_value)?),
        3 => {
            return Err(Error::IdOutOfRange {
                id: id_value,
                extended: false,
            });
        }
        8 if id_value & !(CAN_ERR_FLAG | crate::frame::MAX_EXTENDED_ID) != 0 => {
            return Err(bad("8-digit id has RTR/EFF flag bits set"));
        }
        8 if id_value & CAN_ERR_FLAG != 0 => Kind::Error(id_value & !CAN_ERR_FLAG),
        8 => Kind::Id(CanId::extended(id_value)?),
        _ => return Err(bad("identifier must have 3 or 8 hex digits")),
    };

    match body {
        [b'#', flags, data @ ..] => {
            let Kind::Id(id) = kind else {
                return Err(bad("an error frame cannot be CAN FD"));
            };
            let bits = HEX_VALUE[*flags as usize];
            if bits == 0xFF {
                return Err(bad("CAN FD flags digit is not hex"));
            }
            style.fd_extra_flags = bits & !3;
            let mut buf = [0u8; FD_MAX_LEN];
            let (len, raw_dlc) = parse_data(data, &mut buf, style)?;
            if raw_dlc.is_some() {
                return Err(bad("a raw DLC is only valid on classic frames"));
            }
            Ok(CanFrame::Fd(FdFrame::new(
                id,
                &buf[..len],
                FdFlags::from_bits(bits),
            )?))
        }
        [b'R' | b'r', rest @ ..] => {
            let Kind::Id(id) = kind else {
                return Err(bad("an error frame cannot be a remote frame"));
            };
            let len = match rest {
                [] => 0,
                [d] if d.is_ascii_digit() => (d - b'0') as usize,
                [d, b'_', ..] if d.is_ascii_digit() => {
                    return Err(bad("raw DLC on a remote frame is not supported"));
                }
                _ => return Err(bad("remote frame length must be one digit 0-8")),
            };
            Ok(CanFrame::Remote(RemoteFrame::new(id, len)?))
        }
        data => {
            let mut buf = [0u8; FD_MAX_LEN];
            let (len, raw_dlc) = parse_data(data, &mut buf, style)?;
            if len > CLASSIC_MAX_LEN {
                return Err(Error::ClassicTooLong { len });
            }
            match kind {
                Kind::Error(class) => {
                    if raw_dlc.is_some() {
                        return Err(bad("a raw DLC is not valid on an error frame"));
                    }
                    Ok(CanFrame::Error(ErrorFrame::new(class, &buf[..len])?))
                }
                Kind::Id(id) => {
                    let frame = DataFrame::new(id, &buf[..len])?;
                    Ok(CanFrame::Data(match raw_dlc {
                        Some(dlc) => frame.with_raw_dlc(dlc)?,
                        None => frame,
                    }))
                }
            }
        }
    }
}

/// Hex byte pairs, optionally `.`-separated, optionally followed by `_<rawdlc>`.
#[inline]
fn parse_data(
    text: &[u8],
    buf: &mut [u8; FD_MAX_LEN],
    style: &mut LineStyle,
) -> Result<(usize, Option<u8>), Error> {
    let mut len = 0;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'.' if len > 0 => {
                style.byte_sep = true;
                i += 1;
                continue;
            }
            b'_' => {
                return match &text[i + 1..] {
                    [d] if HEX_VALUE[*d as usize] != 0xFF => {
                        Ok((len, Some(HEX_VALUE[*d as usize])))
                    }
                    _ => Err(bad("raw DLC after '_' must be one hex digit")),
                };
            }
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (text.get(i), text.get(i + 1)) else {
            return Err(bad("odd number of hex digits in the data"));
        };
        let (hi, lo) = (HEX_VALUE[hi as usize], HEX_VALUE[lo as usize]);
        if hi == 0xFF || lo == 0xFF {
            return Err(bad("data is not hex"));
        }
        if len == FD_MAX_LEN {
            return Err(bad("more than 64 data bytes"));
        }
        buf[len] = (hi << 4) | lo;
        len += 1;
        i += 2;
    }
    Ok((len, None))
}

/// Append `record` as one candump line (with `\n`), laid out as `style` says.
///
/// Use `&LineStyle::default()` for what `candump -L` writes for one interface. When the
/// timestamp has finer resolution than `style.frac_digits`, nine digits are written so that
/// nothing is lost.
pub fn write_record(out: &mut Vec<u8>, record: &CanRecord, style: &LineStyle) {
    let secs = record.ts_ns / NS_PER_SEC;
    let frac = record.ts_ns % NS_PER_SEC;
    let frac_digits = match style.frac_digits {
        d @ 1..=9 if frac.is_multiple_of(10u64.pow(9 - u32::from(d))) => d,
        _ => 9,
    };
    out.push(b'(');
    push_decimal(out, secs, style.sec_digits as usize);
    out.push(b'.');
    push_decimal(
        out,
        frac / 10u64.pow(9 - u32::from(frac_digits)),
        frac_digits as usize,
    );
    out.push(b')');
    for _ in 0..=style.iface_pad {
        out.push(b' ');
    }
    out.extend_from_slice(record.channel.as_bytes());
    out.push(b' ');
    write_frame(out, &record.frame, style);
    match record.direction {
        Direction::Rx => out.extend_from_slice(b" R"),
        Direction::Tx => out.extend_from_slice(b" T"),
        Direction::Unknown => {}
    }
    out.push(b'\n');
}

/// Append a `DROPCOUNT:` line as candump writes it.
pub fn write_drop(out: &mut Vec<u8>, drop: &DropNotice) {
    out.extend_from_slice(b"DROPCOUNT: dropped ");
    push_decimal(out, drop.dropped, 1);
    out.extend_from_slice(if drop.dropped > 1 {
        b" CAN frames on '"
    } else {
        b" CAN frame on '"
    });
    out.extend_from_slice(drop.channel.as_bytes());
    out.extend_from_slice(b"' socket (total drops ");
    push_decimal(out, drop.total, 1);
    out.extend_from_slice(b")\n");
}

/// Append any entry.
pub fn write_entry(out: &mut Vec<u8>, entry: &Entry, style: &LineStyle) {
    match entry {
        Entry::Record(r) => write_record(out, r, style),
        Entry::Drop(d) => write_drop(out, d),
    }
}

/// Append the `ID#DATA` part of a line.
pub fn write_frame(out: &mut Vec<u8>, frame: &CanFrame, style: &LineStyle) {
    let write_id = |out: &mut Vec<u8>, id: CanId| {
        if id.is_extended() {
            push_hex(out, id.raw(), 8)
        } else {
            push_hex(out, id.raw(), 3)
        }
    };
    let write_data = |out: &mut Vec<u8>, data: &[u8]| {
        for (i, &b) in data.iter().enumerate() {
            if style.byte_sep && i > 0 {
                out.push(b'.');
            }
            push_hex_byte(out, b);
        }
    };
    match frame {
        CanFrame::Data(f) => {
            write_id(out, f.id());
            out.push(b'#');
            write_data(out, f.data());
            if let Some(dlc) = f.raw_dlc() {
                out.push(b'_');
                out.push(super::HEX_UPPER[(dlc & 0xF) as usize]);
            }
        }
        CanFrame::Remote(f) => {
            write_id(out, f.id());
            out.extend_from_slice(b"#R");
            if !f.is_empty() {
                out.push(b'0' + f.len() as u8);
            }
        }
        CanFrame::Fd(f) => {
            write_id(out, f.id());
            out.extend_from_slice(b"##");
            out.push(super::HEX_UPPER[((f.flags().bits() | style.fd_extra_flags) & 0xF) as usize]);
            write_data(out, f.data());
        }
        CanFrame::Error(e) => {
            push_hex(out, e.class_bits() | CAN_ERR_FLAG, 8);
            out.push(b'#');
            write_data(out, e.data());
        }
    }
}

/// Reads a candump log line by line; see the [module docs](self).
#[derive(Debug)]
pub struct Reader<R> {
    lines: LineSource<R>,
    parser: Parser,
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
            lines: LineSource::new(input, "candump", max_line_len),
            parser: Parser::new(),
        }
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<LogLine, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.lines
            .next_entry("reading a candump log", |line| self.parser.parse(line))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(line: &str) -> CanRecord {
        match parse_line(line) {
            Ok(Some(Entry::Record(r))) => r,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn reads_every_form() {
        let r = record("(1600000000.000001) can0 7E0#0210030000000000");
        assert_eq!(r.ts_ns, 1_600_000_000_000_001_000);
        assert_eq!(r.frame.id(), Some(CanId::standard(0x7E0).unwrap()));
        assert_eq!(r.frame.data(), &[2, 0x10, 3, 0, 0, 0, 0, 0]);
        assert_eq!(r.direction, Direction::Unknown);

        let r = record("(1600000000.000004) can0 7E8#R8");
        assert!(matches!(r.frame, CanFrame::Remote(f) if f.len() == 8));
        let r = record("(1600000000.000005) can0 123##1AABB");
        assert!(matches!(r.frame, CanFrame::Fd(f) if f.flags().brs && f.data() == [0xAA, 0xBB]));
        let r = record("(1600000000.000007) can0 20000004#0004000000000000");
        assert!(matches!(r.frame, CanFrame::Error(e) if e.class_bits() == 4));
        let r = record("(1600000000.000008) can0 456#0102030405060708_F");
        assert!(matches!(r.frame, CanFrame::Data(f) if f.raw_dlc() == Some(15)));
        let r = record("(1600000000.123456789) can0 7df#01.0d R");
        assert_eq!(r.ts_ns, 1_600_000_000_123_456_789);
        assert_eq!(r.frame.data(), &[1, 0x0D]);
        assert_eq!(r.direction, Direction::Rx);
    }

    #[test]
    fn refuses_bad_lines_with_reasons() {
        for line in [
            "(1.0) can0 800#00",
            "(1.0) can0 12#00",
            "(1.0) can0 123#0",
            "(1.0) can0 123#000102030405060708",
            "(1.0) can0 123#R9",
            "(1.0) can0 20000001#R",
            "(1.0) can0 123##0000102030405060708",
            "(1.0) can0 123#00 X",
            "1.0 can0 123#00",
            "(1.0)can0 123#00",
            "(99999999999999999999.0) can0 123#00",
            "(1.0) can0 0102#00_9",
            "(1.0) can0 123#0011_9",
            "(1.0) can0 C0000000#00",
        ] {
            assert!(parse_line(line).is_err(), "{line} should be refused");
        }
    }

    #[test]
    fn drop_notice_round_trips() {
        let line = "DROPCOUNT: dropped 3 CAN frames on 'can0' socket (total drops 7)";
        let Ok(Some(Entry::Drop(d))) = parse_line(line) else {
            panic!("not a drop notice")
        };
        assert_eq!((d.dropped, d.total, &*d.channel), (3, 7, "can0"));
        let mut out = Vec::new();
        write_drop(&mut out, &d);
        assert_eq!(out, format!("{line}\n").as_bytes());
    }

    #[test]
    fn writer_keeps_sub_microsecond_timestamps() {
        let r = record("(0000000001.000000001) can0 123#");
        let mut out = Vec::new();
        write_record(&mut out, &r, &LineStyle::default());
        assert_eq!(out, b"(0000000001.000000001) can0 123#\n");
    }
}
