//! The fuzz seed corpora and the protocol doc's examples hold what the server sends: every
//! console event seed and every example in `docs/protocols/console-events.md` reads and writes
//! back unchanged, every composite seed splits per stream.

use std::path::{Path, PathBuf};

use sse_core::events::ConsoleEvent;
use sse_core::multiplex::{Start, parse_composite};
use sse_core::parser::{ParsedItem, parse_all};

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("dir entry").path();
            let bytes = std::fs::read(&path).expect("seed");
            (path, bytes)
        })
        .collect();
    seeds.sort();
    seeds
}

fn assert_every_type(mut types: Vec<&'static str>) {
    types.sort_unstable();
    types.dedup();
    let all = [
        "can_frame",
        "command_status",
        "group_state",
        "log",
        "presence",
        "stream_reset",
    ];
    assert_eq!(types, all, "one of every type");
}

#[test]
fn every_console_event_seed_round_trips() {
    let seeds = seeds("console_event");
    let mut types: Vec<&'static str> = Vec::new();
    for (path, bytes) in &seeds {
        let text = std::str::from_utf8(bytes).expect("utf8 seed");
        let (event_type, data) = text.split_once('\n').expect("type, LF, data");
        let event = ConsoleEvent::from_parts(event_type, data)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            event.to_data(),
            data,
            "{} writes back unchanged",
            path.display()
        );
        types.push(event.event_type());
    }
    assert_every_type(types);
}

#[test]
fn composite_id_seeds_split_per_stream() {
    for (path, bytes) in seeds("sse_composite_id") {
        let (&n, rest) = bytes.split_first().expect("count byte");
        let text = std::str::from_utf8(rest).expect("utf8 seed");
        let starts = parse_composite(text, usize::from(n));
        assert_eq!(starts.len(), usize::from(n), "{}", path.display());
        if text == "~,1795960800123-0" {
            assert_eq!(
                starts,
                [Start::FromStart, Start::After("1795960800123-0".to_owned())]
            );
        }
    }
}

#[test]
fn every_example_in_the_protocol_doc_round_trips() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocols/console-events.md");
    let doc = std::fs::read_to_string(&path).expect("the protocol doc");
    let mut checked = Vec::new();
    for block in doc.split("```").skip(1).step_by(2) {
        if !block.starts_with("\nevent: ") {
            continue;
        }
        for item in parse_all(block.trim_start().as_bytes()) {
            let ParsedItem::Event(event) = item else {
                continue;
            };
            if event.data.starts_with(r#"{"stream":"#) {
                // Multiplexed: the stream's own object with `stream` (and `stream_id`) first.
                let value: serde_json::Value = serde_json::from_str(&event.data).expect("json");
                assert!(value["stream"].is_string(), "{}", event.data);
                continue;
            }
            let parsed = ConsoleEvent::from_parts(&event.event_type, &event.data)
                .unwrap_or_else(|e| panic!("{}: {e}", event.data));
            assert_eq!(parsed.to_data(), event.data, "written back unchanged");
            checked.push(parsed.event_type());
        }
    }
    assert_every_type(checked);
}
