//! Transports over loopback: REMP replay → record round trip, cannelloni UDP, socketcand server
//! and client, the virtual bus's drop counting and full-queue error, replay timing on a paused
//! clock, and DROPCOUNT lines from the recorder.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use can_io::formats::LogFormat;
use can_io::transport::CanBus;
use can_io::transport::record::{RecordLimit, record};
use can_io::transport::replay::{LogReplay, ReplaySpeed, pump};
use can_io::transport::socketcand::{SocketcandClient, SocketcandServer};
use can_io::transport::udp::{CannelloniUdp, RempUdp};
use can_io::transport::virtual_bus::{OverflowPolicy, VirtualBus};
use can_io::{CanFrame, CanId, CanRecord, DataFrame, Direction, Error};

const LOG: &str = "\
(1600000000.000001) can0 7E0#0210030000000000 R
(1600000000.000500) can0 7E8#0641004A00000000 R
(1600000000.001000) can1 18DAF110##1000102030405060708090A0B T
(1600000000.002000) can0 123#R4
(1600000000.003000) can0 20000040#0000000000000000
(1600000000.004000) can1 1FFFFFFF#
(1600000000.005000) can0 7DF#0102
";

fn frames_of(log: &str) -> usize {
    log.lines().count()
}

fn data(id: u32, bytes: &[u8]) -> CanRecord {
    let f = CanFrame::Data(DataFrame::new(CanId::standard(id).unwrap(), bytes).unwrap());
    CanRecord::new(u64::from(id) * 1000, Arc::from("vcan0"), Direction::Rx, f)
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn remp_replay_then_record_gives_the_same_log() {
    let mut agent = RempUdp::bind(localhost(), None, "agent").await.unwrap();
    let addr = agent.local_addr().unwrap();
    let mut dongle = RempUdp::dongle(addr, "SIM-0001").await.unwrap();
    let mut replay = LogReplay::new(
        LogFormat::Candump,
        Cursor::new(LOG.as_bytes()),
        ReplaySpeed::Max,
    );
    let sent = pump(&mut replay, &mut dongle).await.unwrap();
    assert_eq!(sent, frames_of(LOG) as u64);
    let mut out = Vec::new();
    let summary = record(
        &mut agent,
        &mut out,
        RecordLimit { count: Some(sent) },
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(summary.frames, sent);
    assert_eq!(summary.dropped, 0);
    assert_eq!(String::from_utf8(out).unwrap(), LOG);
    let stats = agent.receiver().stats("SIM-0001").unwrap();
    assert_eq!((stats.lost, stats.duplicate), (0, 0));
    assert_eq!(stats.frames, sent);
}

#[tokio::test]
async fn cannelloni_udp_both_ways() {
    let mut a = CannelloniUdp::bind(localhost(), None, "can0")
        .await
        .unwrap();
    let mut b = CannelloniUdp::bind(localhost(), Some(a.local_addr().unwrap()), "can0")
        .await
        .unwrap();
    for i in 0..50u32 {
        b.send(&data(i, &[i as u8; 3])).await.unwrap();
    }
    b.flush().await.unwrap();
    for i in 0..50u32 {
        let r = a.recv().await.unwrap().unwrap();
        assert_eq!(r.frame, data(i, &[i as u8; 3]).frame);
        assert_eq!(&*r.channel, "can0");
    }
    // a learned b's address from the datagram and can answer.
    a.send(&data(0x55, &[1])).await.unwrap();
    a.flush().await.unwrap();
    assert_eq!(
        b.recv().await.unwrap().unwrap().frame,
        data(0x55, &[1]).frame
    );
}

#[tokio::test]
async fn remp_counts_malformed_datagrams_and_keeps_going() {
    let mut agent = RempUdp::bind(localhost(), None, "agent").await.unwrap();
    let addr = agent.local_addr().unwrap();
    let junk = tokio::net::UdpSocket::bind(localhost()).await.unwrap();
    junk.send_to(b"REMP\x01garbage", addr).await.unwrap();
    let mut dongle = RempUdp::dongle(addr, "SIM-2").await.unwrap();
    dongle.send(&data(1, &[1])).await.unwrap();
    dongle.flush().await.unwrap();
    assert_eq!(
        agent.recv().await.unwrap().unwrap().frame,
        data(1, &[1]).frame
    );
    assert_eq!(agent.stats().malformed, 1);
}

#[tokio::test]
async fn socketcand_server_and_client_exchange_frames() {
    let mut server = SocketcandServer::bind(localhost(), "vcan0", true)
        .await
        .unwrap();
    let mut c1 = SocketcandClient::connect(server.local_addr(), "vcan0")
        .await
        .unwrap();
    let mut c2 = SocketcandClient::connect(server.local_addr(), "vcan0")
        .await
        .unwrap();
    while server.raw_clients() < 2 {
        tokio::task::yield_now().await;
    }
    server.send(&data(0x100, &[1, 2, 3])).await.unwrap();
    assert_eq!(
        c1.recv().await.unwrap().unwrap().frame,
        data(0x100, &[1, 2, 3]).frame
    );
    assert_eq!(
        c2.recv().await.unwrap().unwrap().frame,
        data(0x100, &[1, 2, 3]).frame
    );
    c1.send(&data(0x200, &[9])).await.unwrap();
    assert_eq!(
        server.recv().await.unwrap().unwrap().frame,
        data(0x200, &[9]).frame
    );
    // Hub mode: the other client sees it too, the sender does not.
    assert_eq!(
        c2.recv().await.unwrap().unwrap().frame,
        data(0x200, &[9]).frame
    );
    // A frame raw mode cannot carry is counted, not sent.
    let fd = CanFrame::Fd(
        can_io::FdFrame::new(CanId::standard(1).unwrap(), &[0; 12], Default::default()).unwrap(),
    );
    server
        .send(&CanRecord::new(0, Arc::from("vcan0"), Direction::Tx, fd))
        .await
        .unwrap();
    assert_eq!(server.stats().dropped, 1);
    assert!(
        c1.send(&CanRecord::new(0, Arc::from("vcan0"), Direction::Tx, fd))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn socketcand_server_refuses_wrong_bus() {
    let server = SocketcandServer::bind(localhost(), "vcan0", false)
        .await
        .unwrap();
    let err = SocketcandClient::connect(server.local_addr(), "can7")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
}

#[tokio::test]
async fn virtual_bus_counts_drops_per_port() {
    let bus = VirtualBus::new();
    let mut tx = bus.port("tx", 16, OverflowPolicy::DropNewest);
    let mut slow = bus.port("slow", 4, OverflowPolicy::DropNewest);
    let mut fast = bus.port("fast", 64, OverflowPolicy::DropNewest);
    for i in 0..10 {
        tx.send(&data(i, &[i as u8])).await.unwrap();
    }
    assert_eq!(slow.dropped(), 6);
    assert_eq!(fast.dropped(), 0);
    assert_eq!(tx.queued(), 0, "a port does not hear itself");
    let mut report = bus.drop_report();
    report.sort();
    assert_eq!(
        report,
        vec![("fast".into(), 0), ("slow".into(), 6), ("tx".into(), 0)]
    );
    for i in 0..4 {
        assert_eq!(
            slow.recv().await.unwrap().unwrap().frame,
            data(i, &[i as u8]).frame
        );
    }
    for i in 0..10 {
        assert_eq!(
            fast.recv().await.unwrap().unwrap().frame,
            data(i, &[i as u8]).frame
        );
    }
    assert_eq!(slow.stats().dropped, 6);
    assert_eq!(tx.stats().sent, 10);
    bus.close();
    assert!(slow.recv().await.unwrap().is_none());
}

#[tokio::test]
async fn virtual_bus_full_queue_is_a_retryable_error() {
    let bus = VirtualBus::new();
    let mut tx = bus.port("tx", 16, OverflowPolicy::DropNewest);
    let mut rec = bus.port("recorder", 2, OverflowPolicy::Backpressure);
    let mut other = bus.port("other", 16, OverflowPolicy::DropNewest);
    tx.try_send(&data(1, &[])).unwrap();
    tx.try_send(&data(2, &[])).unwrap();
    let err = tx.try_send(&data(3, &[])).unwrap_err();
    assert!(matches!(err, Error::QueueFull { capacity: 2, .. }));
    assert!(err.is_retryable());
    // Nothing was delivered to anyone for the refused frame.
    assert_eq!(other.queued(), 2);
    // The async send waits for room instead of failing or spinning.
    let sender = tokio::spawn(async move {
        tx.send(&data(3, &[])).await.unwrap();
        tx
    });
    assert_eq!(rec.recv().await.unwrap().unwrap().frame, data(1, &[]).frame);
    let _tx = sender.await.unwrap();
    assert_eq!(rec.recv().await.unwrap().unwrap().frame, data(2, &[]).frame);
    assert_eq!(rec.recv().await.unwrap().unwrap().frame, data(3, &[]).frame);
    assert_eq!(other.try_recv().unwrap().frame, data(1, &[]).frame);
    assert_eq!(rec.dropped(), 0);
}

#[tokio::test(start_paused = true)]
async fn replay_keeps_scaled_timing_on_a_paused_clock() {
    let log = "(100.000000) can0 001#\n(101.000000) can0 002#\n(103.000000) can0 003#\n(102.000000) can0 004#\nnot a line\n";
    let mut replay = LogReplay::new(
        LogFormat::Candump,
        Cursor::new(log.as_bytes()),
        ReplaySpeed::Factor(2.0),
    );
    let start = tokio::time::Instant::now();
    let mut offsets = Vec::new();
    while let Some(r) = replay.recv().await.unwrap() {
        offsets.push((r.frame.id().unwrap().raw(), start.elapsed()));
    }
    // Twice as fast; the record stamped earlier than its predecessor goes right after it.
    assert_eq!(
        offsets,
        vec![
            (1, Duration::ZERO),
            (2, Duration::from_millis(500)),
            (3, Duration::from_millis(1500)),
            (4, Duration::from_millis(1500)),
        ]
    );
    assert_eq!(replay.stats().malformed, 1);
    assert_eq!(replay.bad_lines()[0].0, 5);
}

#[tokio::test]
async fn recorder_writes_dropcount_lines() {
    let bus = VirtualBus::new();
    let mut tx = bus.port("tx", 16, OverflowPolicy::DropNewest);
    let mut rec = bus.port("rec", 2, OverflowPolicy::DropNewest);
    let mut out = Vec::new();
    let recording = record(
        &mut rec,
        &mut out,
        RecordLimit { count: Some(2) },
        std::future::pending(),
    );
    let sending = async {
        for i in 0..5 {
            tx.try_send(&data(i, &[])).unwrap();
        }
    };
    let (summary, ()) = tokio::join!(recording, sending);
    let summary = summary.unwrap();
    assert_eq!(
        summary,
        can_io::transport::record::RecordSummary {
            frames: 2,
            dropped: 3
        }
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "DROPCOUNT: dropped 3 CAN frames on 'vcan0' socket (total drops 3)\n\
         (0000000000.000000) vcan0 000# R\n\
         (0000000000.000001) vcan0 001# R\n"
    );
}

#[tokio::test]
async fn a_stopped_recorder_still_writes_what_the_bus_already_holds() {
    let bus = VirtualBus::new();
    let mut tx = bus.port("tx", 16, OverflowPolicy::DropNewest);
    let mut rec = bus.port("rec", 16, OverflowPolicy::DropNewest);
    // Three frames reached the recorder's port (and every other node) before the stop.
    for i in 0..3 {
        tx.try_send(&data(i, &[])).unwrap();
    }
    let mut out = Vec::new();
    let summary = record(
        &mut rec,
        &mut out,
        RecordLimit::default(),
        std::future::ready(()),
    )
    .await
    .unwrap();
    assert_eq!(summary.frames, 3);
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
}
