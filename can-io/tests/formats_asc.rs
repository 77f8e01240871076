//! Vector ASC: property round trips, never-panic decoding, and agreement with python-can on
//! the python-can sample files.

mod common;

use std::sync::Arc;

use can_io::formats::Entry;
use can_io::formats::asc::{self, channel_number};
use can_io::{CanFrame, CanRecord, Direction};
use common::data::{PY_DUMP, assert_same_lines, capture, py_dump_line, run_python};
use common::{arb_frame, arb_record_with, arb_ts_us};
use proptest::prelude::*;

fn write_all(records: &[CanRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = asc::Writer::new();
    for r in records {
        w.write_record(&mut out, r);
    }
    w.finish(&mut out);
    out
}

fn read_all(bytes: &[u8]) -> Vec<CanRecord> {
    asc::Reader::new(bytes)
        .map(|l| match l.expect("every line parses").entry {
            Entry::Record(r) => r,
            Entry::Drop(d) => panic!("ASC has no drop notices: {d:?}"),
        })
        .collect()
}

/// What ASC keeps of a record: channels become `can{N-1}`, an unknown direction of a frame
/// that has Rx/Tx columns becomes Rx.
fn as_asc_keeps(r: &CanRecord) -> CanRecord {
    let channel: Arc<str> = Arc::from(format!("can{}", channel_number(&r.channel) - 1).as_str());
    let direction = match (&r.frame, r.direction) {
        (CanFrame::Error(_), d) => d,
        (_, Direction::Unknown) => Direction::Rx,
        (_, d) => d,
    };
    CanRecord::new(r.ts_ns, channel, direction, r.frame)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn records_survive_asc(records in prop::collection::vec(arb_record_with(arb_ts_us(), arb_frame()), 1..20)) {
        let out = write_all(&records);
        let expected: Vec<CanRecord> = records.iter().map(as_asc_keeps).collect();
        prop_assert_eq!(read_all(&out), expected);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "(.{0,80}\n){0,6}") {
        for item in asc::Reader::new(text.as_bytes()) {
            let _ = item;
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        for item in asc::Reader::new(bytes.as_slice()) {
            let _ = item;
        }
    }

    #[test]
    fn mutated_event_lines_never_panic(
        records in prop::collection::vec(arb_record_with(arb_ts_us(), arb_frame()), 1..3),
        at in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let text = String::from_utf8(write_all(&records)).expect("ASCII");
        let mut chars: Vec<char> = text.chars().collect();
        chars.remove(at.index(chars.len()));
        chars.truncate(cut.index(chars.len() + 1));
        let s: String = chars.into_iter().collect();
        for item in asc::Reader::new(s.as_bytes()) {
            let _ = item;
        }
    }
}

/// [`py_dump_line`] as ASC keeps a record: the channel number without `can`, and error frames
/// without length, data or direction (as [`normalise_python`] makes python-can's).
fn summary(r: &CanRecord) -> String {
    let line = py_dump_line(r, r.channel.trim_start_matches("can"));
    if !matches!(r.frame, CanFrame::Error(_)) {
        return line;
    }
    let mut f: Vec<&str> = line.split('|').collect();
    f[9] = "0";
    f[10] = "";
    f[11] = "-";
    f.join("|")
}

/// python-can's view, normalised where it differs on purpose: error frames have no id/data and
/// plain ASC has no direction for them (we carry it in our trailer), a remote frame on a `CANFD`
/// line is a classic remote frame (CAN FD has none), a classic frame's DLC above 8 is a raw
/// DLC (python-can reports the FD length for it).
fn normalise_python(line: &str) -> String {
    let mut f: Vec<String> = line.split('|').map(String::from).collect();
    if f[5] == "1" {
        for i in [2, 3, 6, 7, 8, 9] {
            f[i] = "0".into();
        }
        f[10] = String::new();
        f[11] = "-".into();
    }
    if f[4] == "1" {
        f[6] = "0".into();
    }
    if f[6] == "0" && f[4] == "0" {
        f[9] = (f[10].len() / 2).to_string();
    }
    f.join("|")
}

#[test]
fn python_can_samples_match_python_can() {
    let dir = capture("python-can-asc");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("sample dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 7);
    let mut total = 0;
    for path in files {
        let ours: Vec<String> = read_all(&std::fs::read(&path).expect("read"))
            .iter()
            .map(summary)
            .collect();
        let theirs: Vec<String> = run_python(PY_DUMP, &[path.to_str().expect("UTF-8"), "asc"])
            .lines()
            .map(normalise_python)
            .collect();
        assert_same_lines(&ours, &theirs, &format!("{path:?}"));
        total += ours.len();
    }
    assert!(total > 30);
}

#[test]
fn python_can_reads_what_we_write() {
    let recs = read_all(&std::fs::read(capture("python-can-asc/logfile.asc")).expect("read"));
    let mut out = write_all(&recs);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &mut out).expect("write");
    let theirs: Vec<String> = run_python(PY_DUMP, &[file.path().to_str().expect("UTF-8"), "asc"])
        .lines()
        .map(normalise_python)
        .collect();
    let ours: Vec<String> = read_all(&out).iter().map(summary).collect();
    assert_eq!(ours, theirs);
    assert_eq!(read_all(&out), recs);
}
