//! JSON lines: property round trips, the exact key set, and never-panic decoding.

mod common;

use can_io::formats::jsonl;
use can_io::{CanFrame, CanRecord, DataFrame};
use common::arb_record;
use proptest::prelude::*;

/// The shape has no raw DLC key: a frame comes back without it.
fn without_raw_dlc(r: &CanRecord) -> CanRecord {
    let frame = match r.frame {
        CanFrame::Data(d) if d.raw_dlc().is_some() => {
            CanFrame::Data(DataFrame::new(d.id(), d.data()).expect("same payload"))
        }
        other => other,
    };
    CanRecord::new(r.ts_ns, r.channel.clone(), r.direction, frame)
}

const KEYS: [&str; 12] = [
    "ts_ns", "channel", "id", "extended", "remote", "error", "fd", "brs", "esi", "len", "data",
    "dir",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn record_survives_jsonl(record in arb_record()) {
        let mut out = Vec::new();
        jsonl::write_record(&mut out, &record);
        prop_assert_eq!(out.last(), Some(&b'\n'));
        let text = std::str::from_utf8(&out).expect("JSON is UTF-8");
        prop_assert_eq!(jsonl::parse_line(text).expect("own output parses"), Some(without_raw_dlc(&record)));

        // Exactly the documented keys, in order, with the documented types.
        let value: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        let object = value.as_object().expect("an object");
        prop_assert_eq!(object.len(), KEYS.len());
        let positions: Vec<Option<usize>> =
            KEYS.iter().map(|k| text.find(&format!("\"{k}\": "))).collect();
        prop_assert!(positions.iter().all(Option::is_some), "{text}");
        prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "keys out of order: {text}");
        prop_assert_eq!(object["ts_ns"].as_u64(), Some(record.ts_ns));
        let data = object["data"].as_str().expect("data is a string");
        prop_assert_eq!(data, hex::encode_upper(record.frame.data()));
        prop_assert_eq!(object["len"].as_u64(), Some(record.frame.len() as u64));
    }

    #[test]
    fn arbitrary_text_never_panics(line in ".{0,200}") {
        let _ = jsonl::parse_line(&line);
    }

    #[test]
    fn near_valid_objects_never_panic(
        record in arb_record(),
        key in prop::sample::select(KEYS.to_vec()),
        value in prop_oneof![
            Just("null".to_string()), Just("-1".to_string()), Just("1e3".to_string()),
            Just("\"zz\"".to_string()), Just("true".to_string()), Just("4294967296".to_string()),
            Just("\"\"".to_string()), Just("18446744073709551616".to_string()),
        ],
    ) {
        let mut out = Vec::new();
        jsonl::write_record(&mut out, &record);
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&out).expect("valid JSON");
        object.insert(key.to_string(), serde_json::from_str(&value).unwrap_or(serde_json::Value::Null));
        let line = serde_json::to_string(&object).expect("serialises");
        let _ = jsonl::parse_line(&line);
    }
}

#[test]
fn reader_reports_bad_lines_and_goes_on() {
    let input = "{\"ts_ns\": 1}\n\n{\"ts_ns\": 1, \"channel\": \"can0\", \"id\": 1, \"extended\": false, \"remote\": false, \"error\": false, \"fd\": false, \"brs\": false, \"esi\": false, \"len\": 1, \"data\": \"AB\", \"dir\": \"tx\"}\n";
    let items: Vec<_> = jsonl::Reader::new(input.as_bytes()).collect();
    assert_eq!(items.len(), 2);
    assert!(matches!(
        &items[0],
        Err(can_io::Error::AtLine { line: 1, .. })
    ));
    assert_eq!(items[1].as_ref().map(|l| l.number).ok(), Some(3));
}
