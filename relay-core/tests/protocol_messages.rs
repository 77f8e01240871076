//! Data-plane protocol: the spec's examples decode, every message round-trips through both
//! encodings, versions and rules are enforced with typed errors. That garbage and damaged
//! frames never panic is checked with the fuzz entry points, in `src/protocol/fuzz_tests.rs`.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use relay_core::Error;
use relay_core::engine::{DeliverySource, GroupBacklog, GroupMode, Side};
use relay_core::log::Item;
use relay_core::protocol::{
    self, Ack, Encoding, ErrorCode, ErrorMessage, FrameBatch, GapNotice, GroupState, Hello,
    Message, ResumeCursor, Welcome, WireGapReason, decode, decode_hello, encode,
    negotiate_encoding,
};

const FRAME: &str = r#"{"groupId":"g-42","direction":"rx","ts":1600000000000001000,"canId":2016,"isExtended":false,"dlc":8,"dataHex":"0210030000000000"}"#;

/// The examples of `docs/protocols/data-plane.md`, verbatim.
const SPEC_EXAMPLES: &[&str] = &[
    r#"{"type":"hello","version":1,"group_id":"g-42","side":"a","resume":{"rx_seq":1200},"encodings":["msgpack","json"]}"#,
    r#"{"type":"welcome","version":1,"encoding":"msgpack","tx_acked":5310,"rx_from":1200,"mode":"degraded"}"#,
    r#"{"type":"frames","first_seq":5311,"frames":[{"groupId":"g-42","direction":"rx","ts":1600000000000001000,"canId":2016,"isExtended":false,"dlc":8,"dataHex":"0210030000000000"},{"groupId":"g-42","direction":"rx","ts":1600000000000002000,"canId":2024,"isExtended":false,"dlc":3,"dataHex":"025001"}]}"#,
    r#"{"type":"ack","up_to":5312}"#,
    r#"{"type":"ack","up_to":1514}"#,
    r#"{"type":"gap","from":1201,"to":1450,"count":250,"reason":"retention_length"}"#,
    r#"{"type":"group_state","group_id":"g-42","mode":"degraded","backlog":{"a_to_b":0,"b_to_a":1840},"offline":["b"]}"#,
    r#"{"type":"error","code":"unsupported_version","message":"protocol version 7 is not supported; this server speaks [1]"}"#,
];

fn frame() -> protocol::WireFrame {
    serde_json::from_str(FRAME).unwrap()
}

fn all_messages() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            version: 1,
            group_id: "g-42".into(),
            side: Side::B,
            resume: ResumeCursor { rx_seq: 7 },
            encodings: vec![Encoding::Json],
        }),
        Message::Welcome(Welcome {
            version: 1,
            encoding: Encoding::Msgpack,
            tx_acked: 3,
            rx_from: 7,
            mode: GroupMode::Active,
        }),
        Message::Frames(FrameBatch {
            first_seq: 9,
            frames: vec![frame(), frame()],
        }),
        Message::Ack(Ack { up_to: 10 }),
        Message::Gap(GapNotice {
            from: 3,
            to: 4,
            count: 2,
            reason: WireGapReason::RetentionAge,
        }),
        Message::GroupState(GroupState {
            group_id: "g-42".into(),
            mode: GroupMode::Inactive,
            backlog: GroupBacklog {
                a_to_b: 1,
                b_to_a: 2,
            },
            offline: vec![Side::A, Side::B],
        }),
        Message::Error(ErrorMessage {
            code: ErrorCode::SeqOutOfOrder,
            message: "x".into(),
        }),
    ]
}

#[test]
fn spec_examples_decode() {
    for example in SPEC_EXAMPLES {
        let message =
            decode(example.as_bytes(), Encoding::Json).unwrap_or_else(|e| panic!("{example}: {e}"));
        // And re-encode to the same JSON value.
        let back: serde_json::Value =
            serde_json::from_slice(&encode(&message, Encoding::Json).unwrap()).unwrap();
        let orig: serde_json::Value = serde_json::from_str(example).unwrap();
        assert_eq!(back, orig, "{example}");
    }
    let Message::Frames(batch) = decode(SPEC_EXAMPLES[2].as_bytes(), Encoding::Json).unwrap()
    else {
        panic!("frames");
    };
    assert_eq!(batch.last_seq(), Some(5312));
}

#[test]
fn every_message_round_trips_in_both_encodings() {
    for message in all_messages() {
        for encoding in [Encoding::Json, Encoding::Msgpack] {
            let bytes = encode(&message, encoding).unwrap();
            assert_eq!(decode(&bytes, encoding).unwrap(), message, "{encoding:?}");
            // Items stored from the received bytes hold exactly the frames decoded.
            if let Message::Frames(batch) = &message {
                let received = bytes::Bytes::from(bytes);
                let stored: Vec<protocol::WireFrame> = batch
                    .to_items_from(&received, encoding)
                    .unwrap()
                    .iter()
                    .map(|i| protocol::decode_stored_frame(&i.payload).unwrap())
                    .collect();
                assert_eq!(stored, batch.frames, "{encoding:?}");
            }
        }
    }
}

#[test]
fn msgpack_is_smaller_for_frame_batches() {
    let batch = Message::Frames(FrameBatch {
        first_seq: 1,
        frames: vec![frame(); 64],
    });
    let json = encode(&batch, Encoding::Json).unwrap();
    let msgpack = encode(&batch, Encoding::Msgpack).unwrap();
    assert!(
        msgpack.len() < json.len(),
        "{} vs {}",
        msgpack.len(),
        json.len()
    );
}

#[test]
fn unknown_versions_get_a_clear_error() {
    let v2 = r#"{"type":"hello","version":2,"group_id":"g","side":"a","resume":{"rx_seq":0}}"#;
    let err = decode_hello(v2.as_bytes()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedProtocolVersion { got: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("version 2"), "{err}");
    // A future hello whose shape we do not know still yields the version error.
    let v9 = r#"{"type":"hello","version":9,"identity":{"vin":"X"}}"#;
    assert!(matches!(
        decode_hello(v9.as_bytes()),
        Err(Error::UnsupportedProtocolVersion { got: 9, .. })
    ));
    let huge =
        r#"{"type":"hello","version":70000,"group_id":"g","side":"a","resume":{"rx_seq":0}}"#;
    assert!(matches!(
        decode_hello(huge.as_bytes()),
        Err(Error::UnsupportedProtocolVersion { got: 70000, .. })
    ));
}

#[test]
fn hello_defaults_and_first_message_rule() {
    let hello = r#"{"type":"hello","version":1,"group_id":"g","side":"b","resume":{"rx_seq":0}}"#;
    let h = decode_hello(hello.as_bytes()).unwrap();
    assert_eq!(h.encodings, vec![Encoding::Json]);
    assert!(matches!(
        decode_hello(br#"{"type":"ack","up_to":1}"#),
        Err(Error::ProtocolInvalid {
            message_type: "ack",
            ..
        })
    ));
    assert_eq!(
        negotiate_encoding(&[Encoding::Msgpack, Encoding::Json], &[Encoding::Json]),
        Encoding::Json
    );
    assert_eq!(
        negotiate_encoding(&[Encoding::Msgpack], &[Encoding::Json, Encoding::Msgpack]),
        Encoding::Msgpack
    );
}

#[test]
fn rule_violations_are_typed_errors() {
    let cases: &[(&str, &str)] = &[
        (r#"{"type":"frames","first_seq":1,"frames":[]}"#, "frames"),
        (
            &format!(r#"{{"type":"frames","first_seq":0,"frames":[{FRAME}]}}"#),
            "frames",
        ),
        (
            &format!(
                r#"{{"type":"frames","first_seq":18446744073709551615,"frames":[{FRAME},{FRAME}]}}"#
            ),
            "frames",
        ),
        (
            r#"{"type":"frames","first_seq":1,"frames":[{"groupId":"g","direction":"rx","ts":1,"canId":2016,"isExtended":false,"dlc":8,"dataHex":"02"}]}"#,
            "frames",
        ),
        (
            r#"{"type":"gap","from":5,"to":4,"count":0,"reason":"missing"}"#,
            "gap",
        ),
        (
            r#"{"type":"gap","from":1,"to":4,"count":3,"reason":"missing"}"#,
            "gap",
        ),
        (
            r#"{"type":"hello","version":1,"group_id":"","side":"a","resume":{"rx_seq":0}}"#,
            "hello",
        ),
        (
            r#"{"type":"hello","version":1,"group_id":"a:b","side":"a","resume":{"rx_seq":0}}"#,
            "hello",
        ),
        (
            r#"{"type":"hello","version":1,"group_id":"g","side":"a","resume":{"rx_seq":0},"encodings":[]}"#,
            "hello",
        ),
    ];
    for (input, kind) in cases {
        match decode(input.as_bytes(), Encoding::Json) {
            Err(Error::ProtocolInvalid { message_type, .. }) => {
                assert_eq!(message_type, *kind, "{input}")
            }
            other => panic!("{input}: {other:?}"),
        }
    }
    for bad in [
        &b"not json"[..],
        br#"{"type":"nope"}"#,
        br#"{"type":"ack"}"#,
        br#"{"type":"ack","up_to":-1}"#,
    ] {
        assert!(matches!(
            decode(bad, Encoding::Json),
            Err(Error::ProtocolDecode { .. })
        ));
    }
    let big = vec![b' '; protocol::MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        decode(&big, Encoding::Json),
        Err(Error::MessageTooLarge { .. })
    ));
    let too_many = Message::Frames(FrameBatch {
        first_seq: 1,
        frames: vec![frame(); protocol::MAX_BATCH_FRAMES + 1],
    });
    let bytes = encode(&too_many, Encoding::Msgpack).unwrap();
    assert!(matches!(
        decode(&bytes, Encoding::Msgpack),
        Err(Error::ProtocolInvalid { .. })
    ));
}

#[test]
fn unknown_codes_and_reasons_from_newer_peers_decode() {
    let m = decode(
        br#"{"type":"error","code":"quota_exceeded","message":"m"}"#,
        Encoding::Json,
    )
    .unwrap();
    assert!(matches!(
        m,
        Message::Error(ErrorMessage {
            code: ErrorCode::Other,
            ..
        })
    ));
    let g = decode(
        br#"{"type":"gap","from":1,"to":1,"count":1,"reason":"compaction"}"#,
        Encoding::Json,
    )
    .unwrap();
    assert!(matches!(
        g,
        Message::Gap(GapNotice {
            reason: WireGapReason::Other,
            ..
        })
    ));
}

#[test]
fn batches_convert_to_stream_items_and_back() {
    let batch = FrameBatch {
        first_seq: 41,
        frames: vec![frame(), frame()],
    };
    let items = batch.to_items().unwrap();
    assert_eq!(
        items.iter().map(|i| i.seq).collect::<Vec<_>>(),
        vec![41, 42]
    );
    // Stored as the frame's MessagePack with named fields.
    assert_eq!(
        items[0].payload,
        rmp_serde::to_vec_named(&batch.frames[0]).unwrap()
    );
    assert_eq!(items[0].ts_ms, 1_600_000_000_000, "frame ns -> item ms");
    assert_eq!(FrameBatch::from_items("s", &items).unwrap(), batch);
    let mut holey = items.clone();
    holey[1].seq = 44;
    assert!(matches!(
        FrameBatch::from_items("s", &holey),
        Err(Error::Corrupt { .. })
    ));
    let mut garbage = items;
    garbage[0].payload = bytes::Bytes::from_static(b"{}");
    assert!(matches!(
        FrameBatch::from_items("s", &garbage),
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        FrameBatch::from_items("s", &[]),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn deliveries_are_spliced_from_stored_frames_byte_for_byte() {
    use relay_core::protocol::{DeliveryMessage, encode_delivery, encode_stored_frame};
    let mut second = frame();
    second.data = vec![0x01, 0x02];
    second.dlc = 2;
    let batch = FrameBatch {
        first_seq: 300,
        frames: vec![frame(), second],
    };
    let stored = batch.to_items().unwrap();
    let message = Message::Frames(batch.clone());
    for encoding in [Encoding::Msgpack, Encoding::Json] {
        let expected = encode(&message, encoding).unwrap();
        for source in [DeliverySource::Log, DeliverySource::Live] {
            let messages = encode_delivery("s", &stored, encoding, source).unwrap();
            // Spliced or re-encoded, the bytes are what the encoder writes.
            assert_eq!(
                messages,
                vec![DeliveryMessage::Frames(expected.clone())],
                "{encoding:?} {source:?}"
            );
        }
        assert_eq!(decode(&expected, encoding).unwrap(), message);
    }
    // A frame stored as JSON is not the stored form: a `corrupt` gap, from the log or not.
    let json = Item {
        payload: bytes::Bytes::from(batch.frames[1].encode()),
        ..stored[1].clone()
    };
    for encoding in [Encoding::Msgpack, Encoding::Json] {
        for source in [DeliverySource::Log, DeliverySource::Live] {
            let messages =
                encode_delivery("s", &[stored[0].clone(), json.clone()], encoding, source).unwrap();
            assert!(
                matches!(
                    &messages[..],
                    [DeliveryMessage::Frames(_), DeliveryMessage::Corrupt { gap, .. }]
                        if (gap.from, gap.to) == (301, 301)
                ),
                "{encoding:?} {source:?}: {messages:?}"
            );
        }
    }
    assert_eq!(
        stored[1].payload,
        encode_stored_frame(&batch.frames[1]).unwrap()
    );
    let mut holey = stored.clone();
    holey[1].seq = 302;
    assert!(matches!(
        encode_delivery("s", &holey, Encoding::Msgpack, DeliverySource::Log),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn received_msgpack_frames_are_stored_as_their_own_bytes() {
    let batch = FrameBatch {
        first_seq: 41,
        frames: vec![frame(), frame()],
    };
    let message = Message::Frames(batch.clone());
    let received = bytes::Bytes::from(encode(&message, Encoding::Msgpack).unwrap());
    let items = batch.to_items_from(&received, Encoding::Msgpack).unwrap();
    assert_eq!(
        items,
        batch.to_items().unwrap(),
        "the same items as encoding them again"
    );
    let range = received.as_ptr_range();
    for item in &items {
        assert!(
            range.contains(&item.payload.as_ptr()),
            "a slice of the received message, not a copy"
        );
    }
    // JSON is encoded into the stored form.
    let json = bytes::Bytes::from(encode(&message, Encoding::Json).unwrap());
    assert_eq!(
        batch.to_items_from(&json, Encoding::Json).unwrap(),
        batch.to_items().unwrap()
    );
}

#[test]
fn stored_items_that_are_not_frames_become_a_corrupt_gap() {
    use relay_core::protocol::{DeliveryMessage, encode_delivery};
    let frames: Vec<protocol::WireFrame> = (0..5).map(|_| frame()).collect();
    let batch = FrameBatch {
        first_seq: 10,
        frames,
    };
    let mut items = batch.to_items().unwrap();
    // 11: the never-used marker; 12: a map cut short (it would swallow the next item's bytes
    // if spliced); 14: JSON that is not a frame.
    items[1].payload = bytes::Bytes::from_static(b"\xc1");
    let cut = items[2].payload.slice(..items[2].payload.len() - 3);
    items[2].payload = cut;
    items[4].payload = bytes::Bytes::from_static(b"{\"canId\":1}");
    for encoding in [Encoding::Msgpack, Encoding::Json] {
        let messages = encode_delivery("s", &items, encoding, DeliverySource::Log).unwrap();
        let decoded: Vec<Message> = messages
            .iter()
            .map(|m| decode(&m.clone().into_bytes(), encoding).unwrap())
            .collect();
        let one = |first_seq| {
            Message::Frames(FrameBatch {
                first_seq,
                frames: vec![frame()],
            })
        };
        let gap = |from, to| {
            Message::Gap(GapNotice {
                from,
                to,
                count: to - from + 1,
                reason: WireGapReason::Corrupt,
            })
        };
        assert_eq!(
            decoded,
            vec![one(10), gap(11, 12), one(13), gap(14, 14)],
            "{encoding:?}"
        );
        let DeliveryMessage::Corrupt { gap, detail, .. } = &messages[1] else {
            panic!("{:?}", messages[1]);
        };
        assert_eq!((gap.from, gap.count), (11, 2));
        assert!(!detail.is_empty());
    }
    // One bit flipped in a key keeps the MessagePack well formed: read back from the log it is
    // still found; from memory (bytes this process built) it is spliced unchecked.
    let mut flipped = batch.to_items().unwrap()[0].clone();
    let mut bytes = flipped.payload.to_vec();
    let at = bytes.windows(7).position(|w| w == b"groupId").unwrap();
    bytes[at] ^= 1;
    flipped.payload = bytes::Bytes::from(bytes);
    let one = std::slice::from_ref(&flipped);
    assert!(matches!(
        encode_delivery("s", one, Encoding::Msgpack, DeliverySource::Log).unwrap()[..],
        [DeliveryMessage::Corrupt { .. }]
    ));
    assert!(matches!(
        encode_delivery("s", one, Encoding::Msgpack, DeliverySource::Live).unwrap()[..],
        [DeliveryMessage::Frames(_)]
    ));
}

#[test]
fn error_codes_spell_as_on_the_wire() {
    let codes = [
        ErrorCode::UnsupportedVersion,
        ErrorCode::BadMessage,
        ErrorCode::HandshakeRequired,
        ErrorCode::GroupInactive,
        ErrorCode::SeqOutOfOrder,
        ErrorCode::CursorAhead,
        ErrorCode::Unauthorized,
        ErrorCode::Internal,
        ErrorCode::MessageTooBig,
        ErrorCode::GroupMismatch,
        ErrorCode::Other,
    ];
    for code in codes {
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(json, format!("\"{}\"", code.as_str()));
    }
    // Only the codes that refuse one batch leave the connection open.
    let open: Vec<_> = codes.iter().filter(|c| !c.is_fatal()).collect();
    assert_eq!(
        open,
        [
            &ErrorCode::GroupInactive,
            &ErrorCode::SeqOutOfOrder,
            &ErrorCode::GroupMismatch
        ]
    );
    // What the engine's refusals become on the wire.
    let inactive = Error::GroupInactive {
        group: "g".to_owned(),
    };
    assert_eq!(ErrorCode::for_error(&inactive), ErrorCode::GroupInactive);
}
