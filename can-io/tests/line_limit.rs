//! Every log reader bounds its lines while reading: an endless line is one bad line (the error
//! names the line number and the limit), the next line is read as usual, and on ordinary input
//! the readers yield exactly what they yield line by line.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Read};

use can_io::Error;
use can_io::formats::candump::{self, LineStyle};
use can_io::formats::{DEFAULT_MAX_LINE_LEN, Entry, LogFormat, LogLine, LogReader, asc, jsonl};
use common::arb_record;
use proptest::prelude::*;

/// 512 times the default limit (the 100 MB case is `formats::tests`, on the line source).
const ENDLESS: u64 = 32 * 1024 * 1024;

/// A good line of each format, and the header lines it needs before it.
fn good(format: LogFormat) -> (&'static str, &'static str) {
    match format {
        LogFormat::Candump => ("", "(1600000000.000001) can0 7E0#0210030000000000\n"),
        LogFormat::Asc => (
            "date Sat Sep 30 15:06:13.191 2017\nbase hex  timestamps absolute\n",
            "   0.000001 1  7E0             Rx   d 8 02 10 03 00 00 00 00 00\n",
        ),
        LogFormat::Jsonl => (
            "",
            r#"{"ts_ns": 1600000000000001000, "channel": "can0", "id": 2016, "extended": false, "remote": false, "error": false, "fd": false, "brs": false, "esi": false, "len": 8, "data": "0210030000000000", "dir": "rx"}
"#,
        ),
    }
}

fn records(lines: &[Result<LogLine, Error>]) -> usize {
    lines
        .iter()
        .filter(|l| {
            matches!(
                l,
                Ok(LogLine {
                    entry: Entry::Record(_),
                    ..
                })
            )
        })
        .count()
}

#[test]
fn an_endless_line_is_one_bad_line_in_every_format() {
    for format in [LogFormat::Candump, LogFormat::Asc, LogFormat::Jsonl] {
        let (header, line) = good(format);
        let header_lines = header.lines().count() as u64;
        // 32 MB of a plausible start of line, never a newline, then a good line.
        let endless = std::io::repeat(b'{').take(ENDLESS);
        let input = header
            .as_bytes()
            .chain(endless)
            .chain(&b"\n"[..])
            .chain(line.as_bytes());
        let out: Vec<_> = LogReader::new(format, BufReader::new(input)).collect();
        let bad: Vec<&Error> = out.iter().filter_map(|l| l.as_ref().err()).collect();
        assert_eq!(bad.len(), 1, "{format}: {out:?}");
        let want_line = header_lines + 1;
        assert_eq!(
            bad[0].to_string(),
            format!(
                "line {want_line}: {format} line longer than the {DEFAULT_MAX_LINE_LEN}-byte limit"
            ),
        );
        match bad[0] {
            Error::AtLine { line, source } => {
                assert_eq!(*line, want_line);
                assert!(matches!(
                    **source,
                    Error::LineTooLong {
                        limit: DEFAULT_MAX_LINE_LEN,
                        ..
                    }
                ));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(records(&out), 1, "{format}: the good line after it is read");
        let last = out.last().unwrap().as_ref().unwrap();
        assert_eq!(last.number, want_line + 1);
    }
}

#[test]
fn the_limit_is_set_where_a_reader_is_made() {
    let line = "(1600000000.000001) can0 7E0#0210030000000000";
    let text = format!("{line}\n{line}\r\n");
    // Exactly at the limit: read. One byte over (the `\r` counts): refused, and only that line.
    let at = line.len();
    let out: Vec<_> = candump::Reader::with_max_line_len(text.as_bytes(), at).collect();
    assert!(out[0].is_ok());
    assert_eq!(
        out[1].as_ref().unwrap_err().to_string(),
        format!("line 2: candump line longer than the {at}-byte limit")
    );
    assert_eq!(out.len(), 2);
    let out: Vec<_> =
        LogReader::with_max_line_len(LogFormat::Candump, text.as_bytes(), at + 1).collect();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let jsonl_line = good(LogFormat::Jsonl).1;
    let out: Vec<_> = jsonl::Reader::with_max_line_len(jsonl_line.as_bytes(), 10).collect();
    assert!(matches!(&out[..], [Err(Error::AtLine { line: 1, .. })]));
    let (header, asc_line) = good(LogFormat::Asc);
    let text = format!("{header}{asc_line}");
    let out: Vec<_> = asc::Reader::with_max_line_len(text.as_bytes(), 40).collect();
    // The two header lines fit; the event line does not.
    assert!(
        matches!(&out[..], [Err(Error::AtLine { line: 3, .. })]),
        "{out:?}"
    );
}

/// Lines of a candump log: records as can-utils writes them, blank lines, garbage, `\r\n`.
fn arb_candump_text() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        4 => arb_record().prop_map(|r| {
            let mut out = Vec::new();
            candump::write_record(&mut out, &r, &LineStyle::default());
            out.pop();
            out
        }),
        1 => "[ -~]{0,60}".prop_map(String::into_bytes),
        1 => Just(Vec::new()),
    ];
    (
        prop::collection::vec((line, any::<bool>()), 0..40),
        any::<bool>(),
    )
        .prop_map(|(lines, last_newline)| {
            let mut text = Vec::new();
            for (i, (line, crlf)) in lines.iter().enumerate() {
                text.extend_from_slice(line);
                if i + 1 < lines.len() || last_newline {
                    text.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                }
            }
            text
        })
}

/// The candump reader written plainly: split at `\n`, no empty last line, a line longer than
/// `limit` before its `\n` is refused, otherwise parse it without a trailing `\r`.
fn candump_line_by_line(text: &[u8], limit: usize) -> Vec<Result<(u64, Entry, LineStyle), String>> {
    let mut parser = candump::Parser::new();
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    (1u64..)
        .zip(lines)
        .filter_map(|(n, l)| {
            if l.len() > limit {
                return Some(Err(format!(
                    "line {n}: candump line longer than the {limit}-byte limit"
                )));
            }
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            match parser.parse(l) {
                Ok(Some((entry, style))) => Some(Ok((n, entry, style))),
                Ok(None) => None,
                Err(e) => Some(Err(format!("line {n}: {e}"))),
            }
        })
        .collect()
}

fn as_comparable(
    out: impl Iterator<Item = Result<LogLine, Error>>,
) -> Vec<Result<(u64, Entry, LineStyle), String>> {
    out.map(|l| {
        l.map(|l| (l.number, l.entry, l.style))
            .map_err(|e| e.to_string())
    })
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// On ordinary input the bounded candump reader yields what parsing each line does, however
    /// the input arrives in chunks.
    #[test]
    fn candump_reader_unchanged_on_ordinary_input(text in arb_candump_text(), chunk in 1usize..64) {
        let reader = candump::Reader::new(BufReader::with_capacity(chunk, &text[..]));
        prop_assert_eq!(as_comparable(reader), candump_line_by_line(&text, DEFAULT_MAX_LINE_LEN));
    }

    /// With a small limit, exactly the lines over it are refused, and only those.
    #[test]
    fn candump_reader_refuses_exactly_the_long_lines(text in arb_candump_text(), chunk in 1usize..64, limit in 0usize..80) {
        let reader = candump::Reader::with_max_line_len(BufReader::with_capacity(chunk, &text[..]), limit);
        prop_assert_eq!(as_comparable(reader), candump_line_by_line(&text, limit));
    }

    /// JSON lines and ASC read the same in small chunks as in one piece.
    #[test]
    fn jsonl_and_asc_readers_do_not_depend_on_chunks(records in prop::collection::vec(arb_record(), 0..20), chunk in 1usize..64) {
        let mut text = Vec::new();
        for r in &records {
            jsonl::write_record(&mut text, r);
        }
        let whole = as_comparable(jsonl::Reader::new(&text[..]));
        prop_assert_eq!(whole.len(), records.len());
        prop_assert_eq!(as_comparable(jsonl::Reader::new(BufReader::with_capacity(chunk, &text[..]))), whole);

        let mut writer = asc::Writer::new();
        let mut text = Vec::new();
        for r in &records {
            writer.write_record(&mut text, r);
        }
        writer.finish(&mut text);
        let whole = as_comparable(asc::Reader::new(&text[..]));
        prop_assert_eq!(whole.len(), records.len());
        prop_assert_eq!(as_comparable(asc::Reader::new(BufReader::with_capacity(chunk, &text[..]))), whole);
    }
}
