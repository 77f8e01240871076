//! Property: any sequence of events (and retry fields) encoded and then parsed at random chunk
//! splits gives back the same events.

use bytes::BytesMut;
use proptest::prelude::*;
use sse_core::encoder::{encode_event, encode_retry};
use sse_core::parser::{EventStreamParser, ParsedEvent, ParsedItem};

#[derive(Debug, Clone)]
enum Out {
    Event {
        event_type: Option<String>,
        id: Option<String>,
        data: String,
    },
    Retry(u64),
}

fn out_strategy() -> impl Strategy<Value = Out> {
    let line_free = "[^\r\n\u{0}]{0,12}";
    prop_oneof![
        4 => (
            proptest::option::of("[^\r\n\u{0}]{1,12}"),
            proptest::option::of(line_free),
            // Data: anything, with extra weight on line ends and spaces.
            proptest::collection::vec(prop_oneof![Just("\r".to_owned()), Just("\n".to_owned()), Just("\r\n".to_owned()), Just(" ".to_owned()), "\\PC{0,6}".prop_map(|s| s), any::<char>().prop_map(|c| c.to_string())], 0..8).prop_map(|v| v.concat()),
        )
            .prop_map(|(event_type, id, data)| Out::Event { event_type, id, data }),
        1 => any::<u64>().prop_map(Out::Retry),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_parse_at_random_splits(outs in proptest::collection::vec(out_strategy(), 0..12), splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        let mut last_id = String::new();
        for o in &outs {
            match o {
                Out::Event { event_type, id, data } => {
                    encode_event(&mut wire, event_type.as_deref(), id.as_deref(), data).expect("valid by construction");
                    if let Some(id) = id {
                        last_id = id.clone();
                    }
                    expected.push(ParsedItem::Event(ParsedEvent {
                        event_type: event_type.clone().unwrap_or_else(|| "message".to_owned()),
                        data: data.replace("\r\n", "\n").replace('\r', "\n"),
                        last_event_id: last_id.clone(),
                    }));
                }
                Out::Retry(ms) => {
                    encode_retry(&mut wire, *ms);
                    expected.push(ParsedItem::Retry(*ms));
                }
            }
        }
        let mut points: Vec<usize> = splits.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.sort_unstable();
        let mut parser = EventStreamParser::new();
        let mut got = Vec::new();
        let mut start = 0;
        for p in points {
            parser.feed(&wire[start..p], &mut got);
            start = p;
        }
        parser.feed(&wire[start..], &mut got);
        parser.finish();
        prop_assert_eq!(got, expected);
    }
}
