//! candump log: property round trips, never-panic decoding, byte-exact round trips of real
//! captures, and agreement with can-utils (`log2long`) and python-can.

mod common;

use std::io::Write;
use std::process::Command;

use can_io::formats::candump::{self, LineStyle, Parser};
use can_io::formats::{Entry, LogLine};
use can_io::{CanFrame, CanRecord, Direction};
use common::data::{PY_DUMP, assert_same_lines, capture, py_dump_line, run_python};
use common::{arb_frame, arb_record, arb_record_with, arb_ts_ns};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

fn read_all(bytes: &[u8]) -> Vec<LogLine> {
    candump::Reader::new(bytes)
        .map(|l| l.expect("every line parses"))
        .collect()
}

fn write_all(lines: &[LogLine]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        candump::write_entry(&mut out, &l.entry, &l.style);
    }
    out
}

fn records(lines: &[LogLine]) -> Vec<CanRecord> {
    lines
        .iter()
        .filter_map(|l| match &l.entry {
            Entry::Record(r) => Some(r.clone()),
            Entry::Drop(_) => None,
        })
        .collect()
}

fn arb_style() -> impl Strategy<Value = LineStyle> {
    (
        1u8..=12,
        prop_oneof![Just(6u8), Just(9u8), 1u8..=9],
        0u8..4,
        any::<bool>(),
        prop_oneof![Just(0u8), Just(4u8)],
    )
        .prop_map(
            |(sec_digits, frac_digits, iface_pad, byte_sep, fd_extra_flags)| LineStyle {
                sec_digits,
                frac_digits,
                iface_pad,
                byte_sep,
                fd_extra_flags,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn record_survives_candump(record in arb_record()) {
        let mut out = Vec::new();
        candump::write_record(&mut out, &record, &LineStyle::default());
        let line = std::str::from_utf8(&out).expect("candump output is ASCII").trim_end_matches('\n');
        prop_assert_eq!(candump::parse_line(line).expect("own output parses"), Some(Entry::Record(record)));
    }

    #[test]
    fn record_survives_any_style(record in arb_record(), style in arb_style()) {
        let mut out = Vec::new();
        candump::write_record(&mut out, &record, &style);
        let (entry, read_style) = Parser::new().parse(&out[..out.len() - 1]).expect("parses").expect("not blank");
        prop_assert_eq!(&entry, &Entry::Record(record.clone()));
        // Writing again with the style read back gives the same bytes.
        let mut again = Vec::new();
        candump::write_entry(&mut again, &entry, &read_style);
        prop_assert_eq!(again, out);
    }

    #[test]
    fn arbitrary_text_never_panics(line in ".{0,120}") {
        let _ = candump::parse_line(&line);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Parser::new().parse(&bytes);
        for item in candump::Reader::new(bytes.as_slice()) {
            let _ = item;
        }
    }

    #[test]
    fn mutated_lines_never_panic(
        record in arb_record_with(arb_ts_ns(), arb_frame()),
        at in any::<prop::sample::Index>(),
        junk in prop::sample::select(vec!['#', '.', '_', 'R', ' ', '(', ')', '9', 'F', 'x', '\t', 'é']),
    ) {
        let mut out = Vec::new();
        candump::write_record(&mut out, &record, &LineStyle::default());
        let mut line = String::from_utf8(out).expect("ASCII");
        let pos = at.index(line.len());
        line.insert(pos, junk);
        let _ = candump::parse_line(&line);
    }
}

#[test]
fn real_captures_round_trip_byte_for_byte() {
    for name in [
        "savvycan-candump.log",
        "nissan-leaf-isotp.log",
        "candump-forms.log",
    ] {
        let bytes = std::fs::read(capture(name)).expect("capture present");
        let lines = read_all(&bytes);
        assert!(lines.len() > 10, "{name}");
        assert_eq!(write_all(&lines), bytes, "{name} did not round-trip");
    }
}

#[test]
fn forms_file_reads_as_documented() {
    let lines = read_all(&std::fs::read(capture("candump-forms.log")).expect("capture present"));
    assert_eq!(lines.len(), 13);
    let Entry::Drop(drop) = &lines[11].entry else {
        panic!("line 12 is the DROPCOUNT notice")
    };
    assert_eq!((drop.dropped, drop.total, &*drop.channel), (3, 3, "can0"));
    assert_eq!(lines[11].number, 12);
    let recs = records(&lines);
    // One allocation per distinct channel name.
    assert!(std::sync::Arc::ptr_eq(&recs[0].channel, &recs[2].channel));
    assert_eq!(recs[9].direction, Direction::Tx);
    assert_eq!(recs[10].direction, Direction::Rx);
    assert_eq!(lines[1].style.iface_pad, 1);
    assert!(lines[10].style.byte_sep);
    assert_eq!(lines[5].style.fd_extra_flags, 4);
}

#[test]
fn bad_lines_are_reported_with_numbers_and_the_read_goes_on() {
    let input =
        b"(1.000000) can0 123#00\n(1.000001) can0 800#00\ngarbage\n\n(1.000002) can0 124#01\n";
    let items: Vec<_> = candump::Reader::new(&input[..]).collect();
    assert_eq!(items.len(), 4);
    assert!(items[0].is_ok() && items[3].is_ok());
    let lines: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Err(can_io::Error::AtLine { line, .. }) => Some(*line),
            _ => None,
        })
        .collect();
    assert_eq!(lines, vec![2, 3]);
    assert_eq!(items[3].as_ref().map(|l| l.number).ok(), Some(5));
}

/// One `log2long` line: timestamp text, interface, id text, length, bytes, remote, error.
#[derive(Debug, PartialEq, Eq)]
struct LongLine {
    ts: String,
    iface: String,
    id: String,
    len: usize,
    data: Vec<u8>,
    remote: bool,
    error: bool,
}

fn parse_log2long(text: &str) -> Vec<LongLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let len = t[3]
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .expect("[len]");
            let remote = l.contains("remote request");
            let mut data = Vec::new();
            if !remote {
                for tok in &t[4..] {
                    if tok.starts_with('\'') || *tok == "ERRORFRAME" {
                        break;
                    }
                    data.push(u8::from_str_radix(tok, 16).expect("hex byte"));
                }
            }
            LongLine {
                ts: t[0].to_string(),
                iface: t[1].to_string(),
                id: t[2].to_string(),
                len,
                data,
                remote,
                error: l.contains("ERRORFRAME"),
            }
        })
        .collect()
}

fn as_long(r: &CanRecord) -> LongLine {
    let mut ts = Vec::new();
    candump::write_record(&mut ts, r, &LineStyle::default());
    let ts = String::from_utf8_lossy(&ts)
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let id = match &r.frame {
        CanFrame::Error(e) => format!("{:08X}", e.class_bits() | 0x2000_0000),
        f => f.id().map(|i| i.to_string()).unwrap_or_default(),
    };
    LongLine {
        ts,
        iface: r.channel.to_string(),
        id,
        len: r.frame.len(),
        data: r.frame.data().to_vec(),
        remote: matches!(r.frame, CanFrame::Remote(_)),
        error: matches!(r.frame, CanFrame::Error(_)),
    }
}

#[test]
fn forms_match_can_utils_log2long_reference() {
    let lines = read_all(&std::fs::read(capture("candump-forms.log")).expect("capture present"));
    let ours: Vec<LongLine> = records(&lines).iter().map(as_long).collect();
    let reference =
        std::fs::read_to_string(capture("candump-forms.log2long.txt")).expect("reference present");
    assert_eq!(ours, parse_log2long(&reference));
}

#[test]
fn live_log2long_agrees_on_generated_records() {
    // Records of every kind log2long shows unambiguously (it drops raw DLCs and FD flags from
    // its view, which we do not compare).
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = prop::collection::vec(arb_record_with(common::arb_ts_us(), arb_frame()), 300);
    let recs = strategy.new_tree(&mut runner).expect("generate").current();
    let mut log = Vec::new();
    for r in &recs {
        candump::write_record(&mut log, r, &LineStyle::default());
    }
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(&log).expect("write log");
    let out = Command::new("log2long")
        .stdin(std::fs::File::open(file.path()).expect("open"))
        .output();
    let out = out.expect("can-utils log2long is installed");
    assert!(out.status.success());
    let theirs = parse_log2long(&String::from_utf8_lossy(&out.stdout));
    let ours: Vec<LongLine> = recs.iter().map(as_long).collect();
    assert_eq!(theirs.len(), ours.len());
    for (t, o) in theirs.iter().zip(&ours) {
        assert_eq!(t, o);
    }
}

#[test]
fn real_captures_match_python_can() {
    for name in ["savvycan-candump.log", "nissan-leaf-isotp.log"] {
        let path = capture(name);
        let bytes = std::fs::read(&path).expect("capture present");
        let ours: Vec<String> = records(&read_all(&bytes))
            .iter()
            .map(|r| py_dump_line(r, &r.channel))
            .collect();
        let theirs: Vec<String> = run_python(PY_DUMP, &[path.to_str().expect("UTF-8 path"), "log"])
            .lines()
            .map(String::from)
            .collect();
        assert_same_lines(&ours, &theirs, name);
    }
}
