//! JSON lines: one object per frame, exactly these keys, in this order:
//!
//! ```json
//! {"ts_ns": 1600000000000001000, "channel": "can0", "id": 2016, "extended": false, "remote": false, "error": false, "fd": false, "brs": false, "esi": false, "len": 8, "data": "0210030000000000", "dir": "rx"}
//! ```
//!
//! `ts_ns` is an integer; `id` is the identifier without flag bits (the error class bits for
//! error frames); `len` is the data length (the requested length for remote frames); `data`
//! is upper-case hex without separators; `dir` is `"rx"`, `"tx"` or `null`.
//!
//! The shape has no key for a classic frame's raw DLC (`len8_dlc`): it is not written, and a
//! frame read back has none. Everything else round-trips.
//!
//! The decoder accepts the keys in any order and any JSON spacing, refuses unknown or missing
//! keys, and refuses combinations the frame model does not allow (an FD remote frame, BRS
//! without FD, `len` that disagrees with `data`).

use std::borrow::Cow;
use std::io::BufRead;

use serde::Deserialize;

use super::{ChannelInterner, LineSource, LogLine, push_decimal, push_hex_byte};
use crate::error::Error;
use crate::error_frame::ErrorFrame;
use crate::frame::{
    CanFrame, CanId, CanRecord, DataFrame, Direction, FdFlags, FdFrame, RemoteFrame,
};

fn bad(reason: impl Into<Cow<'static, str>>) -> Error {
    Error::BadLine {
        format: "jsonl",
        reason: reason.into(),
    }
}

/// Append `record` as one JSON object and a `\n`.
pub fn write_record(out: &mut Vec<u8>, record: &CanRecord) {
    let frame = &record.frame;
    let flag = |out: &mut Vec<u8>, key: &[u8], value: bool| {
        out.extend_from_slice(key);
        out.extend_from_slice(if value { b"true" } else { b"false" });
    };
    out.extend_from_slice(b"{\"ts_ns\": ");
    push_decimal(out, record.ts_ns, 1);
    out.extend_from_slice(b", \"channel\": ");
    write_json_string(out, &record.channel);
    out.extend_from_slice(b", \"id\": ");
    let (id, extended) = match frame {
        CanFrame::Error(e) => (e.class_bits(), false),
        other => other
            .id()
            .map(|id| (id.raw(), id.is_extended()))
            .unwrap_or((0, false)),
    };
    push_decimal(out, u64::from(id), 1);
    flag(out, b", \"extended\": ", extended);
    flag(out, b", \"remote\": ", matches!(frame, CanFrame::Remote(_)));
    flag(out, b", \"error\": ", matches!(frame, CanFrame::Error(_)));
    let fd = match frame {
        CanFrame::Fd(f) => Some(f.flags()),
        _ => None,
    };
    flag(out, b", \"fd\": ", fd.is_some());
    flag(out, b", \"brs\": ", fd.is_some_and(|f| f.brs));
    flag(out, b", \"esi\": ", fd.is_some_and(|f| f.esi));
    out.extend_from_slice(b", \"len\": ");
    push_decimal(out, frame.len() as u64, 1);
    out.extend_from_slice(b", \"data\": \"");
    for &b in frame.data() {
        push_hex_byte(out, b);
    }
    out.extend_from_slice(match record.direction {
        Direction::Rx => b"\", \"dir\": \"rx\"}\n",
        Direction::Tx => b"\", \"dir\": \"tx\"}\n",
        Direction::Unknown => b"\", \"dir\": null}\n",
    });
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7F)
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Rare: let serde_json do the escaping. Writing into a Vec cannot fail.
        let escaped = serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""));
        out.extend_from_slice(escaped.as_bytes());
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFrame<'a> {
    ts_ns: u64,
    #[serde(borrow)]
    channel: Cow<'a, str>,
    id: u32,
    extended: bool,
    remote: bool,
    error: bool,
    fd: bool,
    brs: bool,
    esi: bool,
    len: usize,
    #[serde(borrow)]
    data: Cow<'a, str>,
    dir: Option<Cow<'a, str>>,
}

/// Decode one line. `Ok(None)` for a blank line.
pub fn parse_line(line: &str) -> Result<Option<CanRecord>, Error> {
    parse_with(line.as_bytes(), &mut ChannelInterner::new())
}

fn parse_with(line: &[u8], channels: &mut ChannelInterner) -> Result<Option<CanRecord>, Error> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let j: JsonFrame<'_> = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
    if j.channel.is_empty() {
        return Err(bad("empty channel"));
    }
    let direction = match j.dir.as_deref() {
        Some("rx") => Direction::Rx,
        Some("tx") => Direction::Tx,
        None => Direction::Unknown,
        Some(_) => return Err(bad("dir must be \"rx\", \"tx\" or null")),
    };
    let data = hex::decode(j.data.as_bytes()).map_err(|e| bad(format!("data: {e}")))?;
    if j.remote {
        if !data.is_empty() {
            return Err(bad("a remote frame carries no data"));
        }
    } else if j.len != data.len() {
        return Err(bad(format!(
            "len {} but data has {} bytes",
            j.len,
            data.len()
        )));
    }
    if !j.fd && (j.brs || j.esi) {
        return Err(bad("brs / esi are only valid on CAN FD frames"));
    }
    let frame = match (j.error, j.remote, j.fd) {
        (true, false, false) => {
            if j.extended {
                return Err(bad("an error frame has no extended id"));
            }
            CanFrame::Error(ErrorFrame::new(j.id, &data)?)
        }
        (true, _, _) => return Err(bad("an error frame is neither remote nor CAN FD")),
        (false, true, true) => return Err(bad("CAN FD has no remote frames")),
        (false, true, false) => {
            CanFrame::Remote(RemoteFrame::new(CanId::new(j.id, j.extended)?, j.len)?)
        }
        (false, false, true) => CanFrame::Fd(FdFrame::new(
            CanId::new(j.id, j.extended)?,
            &data,
            FdFlags {
                brs: j.brs,
                esi: j.esi,
            },
        )?),
        (false, false, false) => {
            CanFrame::Data(DataFrame::new(CanId::new(j.id, j.extended)?, &data)?)
        }
    };
    Ok(Some(CanRecord::new(
        j.ts_ns,
        channels.intern(&j.channel),
        direction,
        frame,
    )))
}

/// Reads JSON lines; see the [module docs](self).
#[derive(Debug)]
pub struct Reader<R> {
    lines: LineSource<R>,
    channels: ChannelInterner,
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
            lines: LineSource::new(input, "jsonl", max_line_len),
            channels: ChannelInterner::new(),
        }
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<LogLine, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.lines.next_entry("reading a JSON lines log", |line| {
            Ok(parse_with(line, &mut self.channels)?.map(super::record_entry))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_documented_shape() {
        let frame = CanFrame::Data(
            DataFrame::new(CanId::standard(2016).unwrap(), &[2, 0x10, 3, 0, 0, 0, 0, 0]).unwrap(),
        );
        let record = CanRecord::new(
            1_600_000_000_000_001_000,
            "can0".into(),
            Direction::Rx,
            frame,
        );
        let mut out = Vec::new();
        write_record(&mut out, &record);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"ts_ns\": 1600000000000001000, \"channel\": \"can0\", \"id\": 2016, \"extended\": false, \
             \"remote\": false, \"error\": false, \"fd\": false, \"brs\": false, \"esi\": false, \"len\": 8, \
             \"data\": \"0210030000000000\", \"dir\": \"rx\"}\n"
        );
    }

    #[test]
    fn refuses_impossible_combinations() {
        let base = |fields: &str| {
            format!(
                "{{\"ts_ns\": 1, \"channel\": \"can0\", \"id\": 1, \"extended\": false, {fields}, \"dir\": null}}"
            )
        };
        for fields in [
            "\"remote\": true, \"error\": false, \"fd\": true, \"brs\": false, \"esi\": false, \"len\": 0, \"data\": \"\"",
            "\"remote\": false, \"error\": false, \"fd\": false, \"brs\": true, \"esi\": false, \"len\": 0, \"data\": \"\"",
            "\"remote\": false, \"error\": false, \"fd\": false, \"brs\": false, \"esi\": false, \"len\": 2, \"data\": \"00\"",
            "\"remote\": false, \"error\": false, \"fd\": true, \"brs\": false, \"esi\": false, \"len\": 9, \"data\": \"000000000000000000\"",
        ] {
            assert!(parse_line(&base(fields)).is_err(), "{fields}");
        }
        assert!(parse_line("{\"ts_ns\": 1}").is_err());
    }
}
