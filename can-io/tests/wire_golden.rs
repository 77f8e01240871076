//! Golden byte vectors for every wire codec: the exact bytes of documented examples, so a change
//! to any encoding shows up as a failing test rather than as a silent incompatibility.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use can_io::wire::cannelloni::{self, CannelloniTcpCodec, TCP_BANNER};
use can_io::wire::multicast::MulticastMessage;
use can_io::wire::relay_json::CanRelayFrame;
use can_io::wire::remp::{self, Hello, Keepalive, RempBody, RempDatagram, RempFrame};
use can_io::wire::socketcand::{self, ClientMessage, ServerMessage};
use can_io::{CanFrame, CanId, CanRecord, DataFrame, Direction, FdFlags, FdFrame, RemoteFrame};

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn obd_request() -> CanFrame {
    CanFrame::Data(
        DataFrame::new(CanId::standard(0x7E0).unwrap(), &hex("0210030000000000")).unwrap(),
    )
}

fn fd_frame() -> CanFrame {
    let data: Vec<u8> = (0..12).collect();
    CanFrame::Fd(
        FdFrame::new(
            CanId::extended(0x18DA_F110).unwrap(),
            &data,
            FdFlags {
                brs: true,
                esi: false,
            },
        )
        .unwrap(),
    )
}

// The vectors below are spelled out in docs/protocols/remp.md; they were produced by an
// independent Python `struct.pack` encoder of the spec, not by this crate.
const REMP_HELLO: &str =
    "52454d500101000754442d3030303100000000010203040506070803e800000000010463616e30";
const REMP_FRAMES: &str = "52454d500103000754442d3030303100000001000216345785d8a003e80020000007e008000210030000000000\
16345785d8a007d0004f18daf1100c00000102030405060708090a0b";
const REMP_KEEPALIVE: &str = "52454d500102000754442d3030303100000002010203040506070800000003";

/// Datagram `seq` of dongle `TD-0001` carrying `body` encodes to the hex `golden`, and
/// `golden` decodes to it.
fn assert_remp_golden(seq: u32, body: RempBody, golden: &str) {
    let d = RempDatagram {
        serial: "TD-0001".into(),
        seq,
        body,
    };
    assert_eq!(d.to_bytes().unwrap(), hex(golden));
    assert_eq!(remp::decode(&hex(golden)).unwrap(), d);
}

#[test]
fn remp_hello_golden() {
    let body = RempBody::Hello(Hello {
        boot_id: 0x0102_0304_0506_0708,
        keepalive_ms: 1000,
        dropped: 0,
        channels: vec!["can0".into()],
    });
    assert_remp_golden(0, body, REMP_HELLO);
}

#[test]
fn remp_frames_golden() {
    let body = RempBody::Frames(vec![
        RempFrame {
            ts_ns: 1_600_000_000_000_001_000,
            channel: 0,
            direction: Direction::Rx,
            frame: obd_request(),
        },
        RempFrame {
            ts_ns: 1_600_000_000_000_002_000,
            channel: 0,
            direction: Direction::Tx,
            frame: fd_frame(),
        },
    ]);
    assert_remp_golden(1, body, REMP_FRAMES);
}

#[test]
fn remp_keepalive_golden() {
    let body = RempBody::Keepalive(Keepalive {
        boot_id: 0x0102_0304_0506_0708,
        dropped: 3,
    });
    assert_remp_golden(2, body, REMP_KEEPALIVE);
}

#[test]
fn remp_refuses_bad_headers() {
    let good = hex(REMP_KEEPALIVE);
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(remp::decode(&bad_magic).is_err());
    let mut bad_version = good.clone();
    bad_version[4] = 2;
    assert!(remp::decode(&bad_version).is_err());
    let mut flags = good.clone();
    flags[6] = 1;
    assert!(remp::decode(&flags).is_err());
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(remp::decode(&trailing).is_err());
    assert!(matches!(
        remp::decode(&good[..good.len() - 1]),
        Err(can_io::Error::Truncated { .. })
    ));
    // A batch that claims more frames than the datagram can hold is refused before allocating.
    let mut count = hex(REMP_FRAMES);
    count[19] = 0xFF;
    count[20] = 0xFF;
    assert!(remp::decode(&count).is_err());
    assert!(remp::decode(&vec![0u8; remp::MAX_DATAGRAM + 1]).is_err());
}

#[test]
fn remp_sender_batches_under_the_datagram_limit() {
    let mut s = remp::RempSender::new("TD-0001", 7, 1000).unwrap();
    let first = s.hello().unwrap();
    assert!(matches!(
        remp::decode(&first).unwrap().body,
        RempBody::Hello(_)
    ));
    let mut datagrams = Vec::new();
    let frame = CanFrame::Fd(
        FdFrame::new(CanId::standard(1).unwrap(), &[0x55; 64], FdFlags::default()).unwrap(),
    );
    for i in 0..100 {
        let r = CanRecord::new(i, Arc::from("can0"), Direction::Rx, frame);
        datagrams.extend(s.push(&r).unwrap());
    }
    datagrams.extend(s.flush().unwrap());
    // A hello for the new channel name, then 100 frames of 80 bytes in 1472-byte datagrams.
    let mut frames = 0;
    let mut seqs = Vec::new();
    for d in &datagrams {
        assert!(d.len() <= remp::MAX_DATAGRAM);
        let dec = remp::decode(d).unwrap();
        seqs.push(dec.seq);
        if let RempBody::Frames(f) = dec.body {
            frames += f.len();
        }
    }
    assert_eq!(frames, 100);
    assert_eq!(seqs, (1..=seqs.len() as u32).collect::<Vec<_>>());
    // 18 entries of 80 bytes fit in 1472 bytes: 6 frame datagrams after the hello.
    assert_eq!(datagrams.len(), 7);
}

const CANNELLONI_UDP: &str = "0200070003\
00000123 04 deadbeef\
c01abcde 04\
00000456 8c 05 000102030405060708090a0b";

fn cannelloni_frames() -> Vec<CanFrame> {
    vec![
        CanFrame::Data(DataFrame::new(CanId::standard(0x123).unwrap(), &hex("deadbeef")).unwrap()),
        CanFrame::Remote(RemoteFrame::new(CanId::extended(0x1A_BCDE).unwrap(), 4).unwrap()),
        CanFrame::Fd(
            FdFrame::new(
                CanId::standard(0x456).unwrap(),
                &(0..12).collect::<Vec<u8>>(),
                FdFlags {
                    brs: true,
                    esi: false,
                },
            )
            .unwrap(),
        ),
    ]
}

#[test]
fn cannelloni_udp_golden() {
    let bytes = hex(&CANNELLONI_UDP.replace(' ', ""));
    assert_eq!(
        cannelloni::encode_datagram(7, &cannelloni_frames()).unwrap(),
        bytes
    );
    let d = cannelloni::decode_datagram(&bytes).unwrap();
    assert_eq!(d.seq, 7);
    assert_eq!(d.frames, cannelloni_frames());
}

#[test]
fn cannelloni_udp_refuses_lies() {
    let bytes = hex(&CANNELLONI_UDP.replace(' ', ""));
    let mut more = bytes.clone();
    more[4] = 4; // claims a fourth frame
    assert!(cannelloni::decode_datagram(&more).is_err());
    let mut fewer = bytes.clone();
    fewer[4] = 2; // leaves trailing bytes
    assert!(cannelloni::decode_datagram(&fewer).is_err());
    let mut long = bytes.clone();
    long[9] = 9; // classic frame of 9 bytes
    assert!(cannelloni::decode_datagram(&long).is_err());
    let mut version = bytes;
    version[0] = 1;
    assert!(cannelloni::decode_datagram(&version).is_err());
    // count 65535 with nothing behind it: an error, not an allocation of 65535 frames.
    assert!(cannelloni::decode_datagram(&[2, 0, 0, 0xFF, 0xFF]).is_err());
}

#[test]
fn cannelloni_tcp_stream_split_anywhere() {
    use tokio_util::codec::Decoder;
    let mut stream = TCP_BANNER.to_vec();
    for f in cannelloni_frames() {
        cannelloni::encode_frame(&f, &mut stream);
    }
    // Feed the stream one byte at a time, and in every two-piece split.
    for split in 0..=stream.len() {
        let mut codec = CannelloniTcpCodec::new();
        let mut buf = bytes::BytesMut::new();
        let mut out = Vec::new();
        for chunk in [&stream[..split], &stream[split..]] {
            buf.extend_from_slice(chunk);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, cannelloni_frames(), "split at {split}");
    }
    let mut codec = CannelloniTcpCodec::new();
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    for b in &stream {
        buf.extend_from_slice(&[*b]);
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
    }
    assert_eq!(out, cannelloni_frames());
    let mut bad = CannelloniTcpCodec::new();
    assert!(
        bad.decode(&mut bytes::BytesMut::from(&b"CANNELLONIv2"[..]))
            .is_err()
    );
}

#[test]
fn socketcand_golden() {
    let ts = 1_600_000_000_000_001_000;
    assert_eq!(
        socketcand::encode_frame(ts, &obd_request()).unwrap(),
        "< frame 7E0 1600000000.000001 0210030000000000 >"
    );
    let empty = CanFrame::Data(DataFrame::new(CanId::extended(0x1234).unwrap(), &[]).unwrap());
    assert_eq!(
        socketcand::encode_frame(2_500_000, &empty).unwrap(),
        "< frame 00001234 0.002500  >"
    );
    // What python-can sends.
    assert_eq!(
        socketcand::parse_client("send 7E0 8 2 10 3 0 0 0 0 0").unwrap(),
        ClientMessage::Send(obd_request())
    );
    assert_eq!(
        socketcand::encode_send(&obd_request()).unwrap(),
        "< send 7E0 8 2 10 3 0 0 0 0 0 >"
    );
    assert_eq!(
        socketcand::parse_server("frame 7E0 1600000000.000001 0210030000000000").unwrap(),
        ServerMessage::Frame {
            ts_ns: ts,
            frame: obd_request()
        }
    );
    assert!(socketcand::encode_frame(0, &fd_frame()).is_err());
    assert!(socketcand::parse_client("send 7E0 3 1 2").is_err());
    assert!(socketcand::parse_client("send 800 0").is_err());
}

#[test]
fn socketcand_session_handshake() {
    let mut s = socketcand::ServerSession::new("vcan0");
    assert_eq!(
        s.handle_element("rawmode").reply.unwrap(),
        "< error command not valid in this state >"
    );
    assert_eq!(
        s.handle_element("open can9").reply.unwrap(),
        "< error could not open bus >"
    );
    assert_eq!(s.handle_element("open vcan0").reply.unwrap(), "< ok >");
    assert_eq!(s.handle_element("rawmode").reply.unwrap(), "< ok >");
    assert!(s.is_raw());
    let a = s.handle_element("send 123 2 a b");
    assert_eq!(a.reply, None);
    assert_eq!(a.frame.unwrap().data(), &[0x0a, 0x0b]);
}

#[test]
fn socketcand_tokenizer_splits_and_resyncs() {
    let mut t = socketcand::Tokenizer::new();
    t.push(b"junk< hi >< o");
    assert_eq!(t.next_element().unwrap().unwrap(), "hi");
    assert!(t.next_element().is_none());
    t.push(b"k >< unfinished < ok >");
    assert_eq!(t.next_element().unwrap().unwrap(), "ok");
    assert!(t.next_element().unwrap().is_err());
    assert_eq!(t.next_element().unwrap().unwrap(), "ok");
    assert!(t.next_element().is_none());
    assert_eq!(t.skipped(), 4 + "< unfinished ".len() as u64);
    t.push(&[b'<'; 1]);
    t.push(&[b'a'; 300]);
    assert!(t.next_element().unwrap().is_err());
}

#[test]
fn multicast_matches_python_can_bytes() {
    // Produced by python-can 4.6.1 `pack_message` (see tests/python/test_can_peers.py).
    let py1 = "8ba974696d657374616d70cb41d7d78400000004ae6172626974726174696f6e5f6964cd07e0ae69735f657874656e6465645f6964c2af69735f72656d6f74655f6672616d65c2ae69735f6572726f725f6672616d65c2a76368616e6e656cc0a3646c6308a464617461c4080210030000000000a569735f6664c2ae626974726174655f737769746368c2b56572726f725f73746174655f696e64696361746f72c2";
    let py2 = "8ba974696d657374616d70cb3ff8000000000000ae6172626974726174696f6e5f6964ce18daf110ae69735f657874656e6465645f6964c3af69735f72656d6f74655f6672616d65c2ae69735f6572726f725f6672616d65c2a76368616e6e656ca463616e31a3646c630ca464617461c40c000102030405060708090a0ba569735f6664c3ae626974726174655f737769746368c3b56572726f725f73746174655f696e64696361746f72c2";
    let m1 = MulticastMessage::decode(&hex(py1)).unwrap();
    assert_eq!(m1.frame().unwrap(), obd_request());
    assert_eq!(m1.ts_ns(), 1_600_000_000_000_001_000);
    let mut ours = MulticastMessage::from_frame(1_600_000_000_000_001_000, None, &obd_request());
    ours.timestamp = m1.timestamp;
    assert_eq!(ours.encode().unwrap(), hex(py1));
    let m2 = MulticastMessage::decode(&hex(py2)).unwrap();
    assert_eq!(m2.frame().unwrap(), fd_frame());
    assert_eq!(m2.channel_name().as_deref(), Some("can1"));
    assert_eq!(
        MulticastMessage::from_frame(1_500_000_000, Some("can1"), &fd_frame())
            .encode()
            .unwrap(),
        hex(py2)
    );
}

/// The OBD request as a record read on `can0`.
fn obd_record() -> CanRecord {
    CanRecord::new(
        1_600_000_000_000_001_000,
        Arc::from("can0"),
        Direction::Rx,
        obd_request(),
    )
}

#[test]
fn relay_json_golden() {
    let r = obd_record();
    let j = CanRelayFrame::from_record("g-42", &r);
    let text = j.encode();
    assert_eq!(
        text,
        r#"{"groupId":"g-42","direction":"rx","ts":1600000000000001000,"canId":2016,"isExtended":false,"dlc":8,"dataHex":"0210030000000000","channel":"can0"}"#
    );
    let back = CanRelayFrame::decode(text.as_bytes()).unwrap();
    assert_eq!(back.to_record(&Arc::from("x")).unwrap(), r);
    let fd = CanRelayFrame::from_record(
        "g",
        &CanRecord::new(5, Arc::from("can1"), Direction::Tx, fd_frame()),
    );
    assert!(fd.encode().contains(r#""isFd":true,"brs":true"#));
    for bad in [
        r#"{"groupId":"g","direction":"rx","ts":1,"canId":2016,"isExtended":false,"dlc":8,"dataHex":"02"}"#,
        r#"{"groupId":"g","direction":"rx","ts":1.5,"canId":1,"isExtended":false,"dlc":0,"dataHex":""}"#,
        r#"{"groupId":"g","direction":"rx","ts":"1","canId":1,"isExtended":false,"dlc":0,"dataHex":""}"#,
        r#"{"groupId":"g","direction":"up","ts":1,"canId":1,"isExtended":false,"dlc":0,"dataHex":""}"#,
        r#"{"groupId":"g","direction":"rx","ts":1,"canId":2048,"isExtended":false,"dlc":0,"dataHex":""}"#,
        r#"{"groupId":"g","direction":"rx","ts":1,"canId":1,"isExtended":false,"dlc":0,"dataHex":"","extra":1}"#,
        r#"{"groupId":"g","direction":"rx","ts":1,"canId":1,"isExtended":false,"dlc":1,"dataHex":"zz"}"#,
        r#"{"groupId":"g","direction":"rx","ts":1,"canId":1,"isExtended":false,"dlc":0,"dataHex":"","brs":true}"#,
        r#"{"groupId":"","direction":"rx","ts":1,"canId":1,"isExtended":false,"dlc":0,"dataHex":""}"#,
        r#"{"groupId":"g","direction":"rx","ts":1,"canId":1,"isExtended":false,"dlc":2,"dataHex":"0102","isRemote":true}"#,
        r#"{"groupId":"g","direction":"rx","ts":1,"canId":1,"isExtended":false,"dlc":1,"dataHex":[1]}"#,
    ] {
        assert!(CanRelayFrame::decode(bad.as_bytes()).is_err(), "{bad}");
    }
}

/// In MessagePack the payload is the bytes themselves (`data`, a `bin`), never hex.
#[test]
fn relay_frame_payload_is_bin_in_msgpack() {
    let r = obd_record();
    let frame = CanRelayFrame::from_record("g-42", &r);
    assert_eq!(frame.data, [0x02, 0x10, 0x03, 0, 0, 0, 0, 0]);
    let packed = rmp_serde::to_vec_named(&frame).unwrap();
    // `data`, then bin8 of 8 bytes: the payload, not 16 hex digits.
    let key = [0xA4, b'd', b'a', b't', b'a', 0xC4, 8];
    let at = packed
        .windows(key.len())
        .position(|w| w == key)
        .expect("a bin `data` field");
    assert_eq!(&packed[at + key.len()..at + key.len() + 8], &frame.data[..]);
    assert!(!packed.windows(7).any(|w| w == b"dataHex"));
    let back: CanRelayFrame = rmp_serde::from_slice(&packed).unwrap();
    assert_eq!(back, frame);
    assert_eq!(back.to_record(&Arc::from("x")).unwrap(), r);
    // A hex string where MessagePack wants bytes is refused, under either key.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct HexForm<'a> {
        group_id: &'a str,
        direction: &'a str,
        ts: u64,
        can_id: u32,
        is_extended: bool,
        dlc: u8,
        data_hex: &'a str,
    }
    let hex_form = HexForm {
        group_id: "g",
        direction: "rx",
        ts: 1,
        can_id: 0x7E0,
        is_extended: false,
        dlc: 1,
        data_hex: "02",
    };
    let packed = rmp_serde::to_vec_named(&hex_form).unwrap();
    assert!(rmp_serde::from_slice::<CanRelayFrame>(&packed).is_err());
    // Bytes that disagree with `dlc` decode but do not validate.
    let mut short = frame.clone();
    short.data.pop();
    let packed = rmp_serde::to_vec_named(&short).unwrap();
    let decoded: CanRelayFrame = rmp_serde::from_slice(&packed).unwrap();
    assert!(decoded.validate().is_err());
}
