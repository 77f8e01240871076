//! The async drivers end to end: an ISO-TP channel pair, and the UDS tester against the ECU
//! simulator (`run_ecus`), over the in-process virtual bus (on tokio's paused clock) and over
//! UDP loopback (REMP, as a dongle and an agent talk). Multi-frame DTC reads, DIDs,
//! response-pending, negative answers, timeouts, ClearDTC, and two ECUs answering one
//! functional request.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use can_io::isotp::{Addressing, FrameFormat, IsoTpChannel, IsoTpConfig};
use can_io::transport::CanBus;
use can_io::transport::udp::{CannelloniUdp, RempUdp};
use can_io::transport::virtual_bus::{OverflowPolicy, VirtualBus};
use can_io::uds::ecu::{EcuProfile, EcuSimulator, run_ecus};
use can_io::uds::{
    Answer, Nrc, UdsError, UdsRequest, UdsResponse, UdsTester, UdsTesterCore, UdsTiming,
};
use can_io::{CanId, Error};
use tokio::sync::oneshot;

/// The test vehicle shared with `uds::exec`'s unit tests and tether-agent's.
const PROFILE: &str = include_str!("fixtures/engine_abs.yaml");

fn profile() -> EcuProfile {
    serde_norway::from_str(PROFILE).unwrap()
}

fn timing() -> UdsTiming {
    UdsTiming {
        p2: Duration::from_millis(200),
        p2_star: Duration::from_secs(2),
    }
}

fn id(raw: u32) -> CanId {
    CanId::standard(raw).unwrap()
}

fn no_lengths() -> BTreeMap<u16, usize> {
    BTreeMap::new()
}

/// Everything a tester does against the profile's two ECUs.
async fn diagnose<B: CanBus>(tester: &mut UdsTester<B>) {
    let engine = id(0x7E0);
    let abs = id(0x7E1);

    // Multi-frame DTC read: 3 + 5 × 4 = 23 bytes.
    let read_all = UdsRequest::ReadDtcByStatusMask { status_mask: 0xFF };
    let UdsResponse::Dtcs { dtcs, .. } = tester
        .request_decoded(engine, &read_all, &no_lengths())
        .await
        .unwrap()
    else {
        panic!("not a DTC answer")
    };
    let codes: Vec<String> = dtcs.iter().map(|d| d.dtc.to_string()).collect();
    assert_eq!(
        codes,
        ["P0420-00", "U0100-00", "P0300-00", "P0171-00", "P1234-16"]
    );
    assert_eq!(dtcs[0].status.0, 0x2F);
    assert_eq!(
        dtcs[0].dtc.description(),
        Some("Catalyst System Efficiency Below Threshold")
    );
    // The status mask filters.
    let confirmed = UdsRequest::ReadDtcByStatusMask { status_mask: 0x08 };
    match tester
        .request_decoded(engine, &confirmed, &no_lengths())
        .await
        .unwrap()
    {
        UdsResponse::Dtcs { dtcs, .. } => assert_eq!(dtcs.len(), 3),
        other => panic!("{other:?}"),
    }

    // Two DIDs in one request, the first of known length.
    let dids = UdsRequest::ReadDataByIdentifier {
        dids: vec![0xF40D, 0xF190],
    };
    let lengths = BTreeMap::from([(0xF40D, 1)]);
    match tester
        .request_decoded(engine, &dids, &lengths)
        .await
        .unwrap()
    {
        UdsResponse::Data(v) => {
            assert_eq!(v[0].data, [0x3C]);
            assert_eq!(v[1].data, b"1HGCM82633A004352");
        }
        other => panic!("{other:?}"),
    }

    // Negative answers carry the NRC's name.
    let err = tester
        .request(engine, &[0x22, 0x12, 0x34])
        .await
        .unwrap_err();
    let Error::Uds(e) = err else { panic!("{err}") };
    assert_eq!(
        e,
        UdsError::Negative {
            sid: 0x22,
            nrc: Nrc::REQUEST_OUT_OF_RANGE
        }
    );
    assert_eq!(e.reason(), "requestOutOfRange");
    let err = tester.request(engine, &[0x27, 0x01]).await.unwrap_err();
    assert!(
        matches!(err, Error::Uds(UdsError::Negative { nrc, .. }) if nrc.name() == "serviceNotSupported")
    );

    // Response pending: the ABS answers 0x78 first, then after 300 ms (longer than P2).
    let pending_before = tester.core().stats().pending;
    let vin = tester.request(abs, &[0x22, 0xF1, 0x90]).await.unwrap();
    assert_eq!(&vin[3..], b"ABS-UNIT-0001");
    assert_eq!(tester.core().stats().pending, pending_before + 1);

    // Session control and a suppressed TesterPresent.
    match tester
        .request_decoded(
            engine,
            &UdsRequest::DiagnosticSessionControl { session: 3 },
            &no_lengths(),
        )
        .await
        .unwrap()
    {
        UdsResponse::Session { session, timing } => {
            assert_eq!(session, 3);
            assert_eq!(timing.unwrap().1, Duration::from_secs(5));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        tester.request(engine, &[0x3E, 0x80]).await.unwrap(),
        Vec::<u8>::new()
    );

    // No ECU on 0x7E2: timeout after P2.
    let err = tester
        .request(id(0x7E2), &[0x19, 0x02, 0xFF])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Uds(UdsError::Timeout { sid: 0x19, .. })),
        "{err}"
    );

    // Functional ReadDTC: both ECUs answer (the ABS after its pending), streamed as they come.
    let mut streamed = Vec::new();
    let answers = tester
        .request_functional(&[0x19, 0x02, 0xFF], |a| streamed.push(a.responder))
        .await
        .unwrap();
    assert_eq!(streamed, [id(0x7E8), id(0x7E9)]);
    assert_eq!(answers.len(), 2);
    let Answer::Positive(abs_dtcs) = &answers[1].answer else {
        panic!("{answers:?}")
    };
    assert_eq!(abs_dtcs, &[0x59, 0x02, 0xFF, 0x40, 0x35, 0x00, 0x2F]);

    // ClearDTC on the engine empties its list; the ABS keeps its own.
    let clear = UdsRequest::ClearDiagnosticInformation { group: 0xFF_FFFF };
    assert_eq!(
        tester
            .request_decoded(engine, &clear, &no_lengths())
            .await
            .unwrap(),
        UdsResponse::Cleared
    );
    match tester
        .request_decoded(engine, &read_all, &no_lengths())
        .await
        .unwrap()
    {
        UdsResponse::Dtcs { dtcs, .. } => assert!(dtcs.is_empty()),
        other => panic!("{other:?}"),
    }
    // Functionally, requestOutOfRange is suppressed (ISO 14229-1): a DID nobody has gets no
    // answer at all, which is a timeout.
    let err = tester
        .request_functional(&[0x22, 0x12, 0x34], |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Uds(UdsError::Timeout { .. })), "{err}");
    let stats = tester.core().link_stats(engine).unwrap();
    assert_eq!(stats.errors(), 0);
}

/// Run the profile's ECUs on `ecu_bus` while `tester` diagnoses them; the simulator after.
async fn diagnose_against_ecus<T: CanBus, E: CanBus + 'static>(
    mut tester: UdsTester<T>,
    ecu_bus: E,
) -> EcuSimulator {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let sim = tokio::spawn(async move {
        run_ecus(ecu_bus, &profile(), async {
            let _ = stop_rx.await;
        })
        .await
    });
    diagnose(&mut tester).await;
    stop_tx.send(()).unwrap();
    sim.await.unwrap().unwrap()
}

#[tokio::test(start_paused = true)]
async fn tester_and_ecus_on_the_virtual_bus() {
    let bus = VirtualBus::new();
    let ecu_port = bus.port("ecus", 256, OverflowPolicy::Backpressure);
    let tester_port = bus.port("tester", 256, OverflowPolicy::Backpressure);
    let tester = UdsTester::new(tester_port, UdsTesterCore::obd(timing()).unwrap());
    let sim = diagnose_against_ecus(tester, ecu_port).await;
    let stats = sim.stats();
    assert_eq!(stats[0].0, "engine");
    assert!(sim.responders().next().unwrap().dtcs().is_empty());
    assert_eq!(stats[1].1.pending, 2);
    assert_eq!(bus.drop_report().iter().map(|(_, n)| n).sum::<u64>(), 0);
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn tester_and_ecus_over_remp_on_udp_loopback() {
    // The agent side (tester) and a dongle (hosting the ECUs), as REMP peers.
    let mut agent = RempUdp::bind(localhost(), None, "agent").await.unwrap();
    let dongle = RempUdp::dongle(agent.local_addr().unwrap(), "SIM-ECU-1")
        .await
        .unwrap();
    // The agent answers to the address it last heard from: wait for the dongle's hello.
    agent.recv_event().await.unwrap();
    let tester = UdsTester::new(agent, UdsTesterCore::obd(timing()).unwrap());
    let sim = diagnose_against_ecus(tester, dongle).await;
    assert_eq!(sim.stats()[1].1.pending, 2);
}

fn channel_configs(format: FrameFormat) -> (IsoTpConfig, IsoTpConfig) {
    let mut a = IsoTpConfig::new(Addressing::normal(0x700, 0x708).unwrap());
    let mut b = IsoTpConfig::new(Addressing::normal(0x708, 0x700).unwrap());
    a.format = format;
    b.format = format;
    b.block_size = 8;
    b.st_min = can_io::isotp::StMin::from_raw(1);
    (a, b)
}

async fn exchange<A: CanBus, B: CanBus + 'static>(mut a: IsoTpChannel<A>, mut b: IsoTpChannel<B>) {
    let msg: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let echo = tokio::spawn(async move {
        let m = b.recv().await.unwrap();
        b.send(&m.iter().rev().copied().collect::<Vec<_>>())
            .await
            .unwrap();
        b.stats()
    });
    a.send(&msg).await.unwrap();
    let back = a.recv().await.unwrap();
    assert_eq!(back, msg.iter().rev().copied().collect::<Vec<_>>());
    let b_stats = echo.await.unwrap();
    assert_eq!((b_stats.messages_received, b_stats.messages_sent), (1, 1));
    assert_eq!(a.stats().errors() + b_stats.errors(), 0);
}

#[tokio::test(start_paused = true)]
async fn isotp_channels_on_the_virtual_bus() {
    for format in [FrameFormat::Classic, FrameFormat::FD64] {
        let bus = VirtualBus::new();
        let (ca, cb) = channel_configs(format);
        let a = IsoTpChannel::new(bus.port("a", 64, OverflowPolicy::Backpressure), ca).unwrap();
        let b = IsoTpChannel::new(bus.port("b", 64, OverflowPolicy::Backpressure), cb).unwrap();
        exchange(a, b).await;
    }
}

#[tokio::test]
async fn isotp_channels_over_cannelloni_on_udp_loopback() {
    // b answers whoever sent last; a sends to b.
    let sb = CannelloniUdp::bind(localhost(), None, "can0")
        .await
        .unwrap();
    let sa = CannelloniUdp::bind(localhost(), Some(sb.local_addr().unwrap()), "can0")
        .await
        .unwrap();
    let (ca, cb) = channel_configs(FrameFormat::Classic);
    exchange(
        IsoTpChannel::new(sa, ca).unwrap(),
        IsoTpChannel::new(sb, cb).unwrap(),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out_and_a_bad_target_is_refused() {
    let bus = VirtualBus::new();
    let (ca, _) = channel_configs(FrameFormat::Classic);
    let _listener = bus.port("nobody", 64, OverflowPolicy::DropNewest);
    let mut a = IsoTpChannel::new(bus.port("a", 64, OverflowPolicy::DropNewest), ca).unwrap();
    let err = a.send(&[0u8; 100]).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::IsoTp(can_io::isotp::IsoTpError::Timeout {
                timer: can_io::isotp::Timer::NBs
            })
        ),
        "{err}"
    );
    let mut tester = UdsTester::new(
        bus.port("tester", 64, OverflowPolicy::DropNewest),
        UdsTesterCore::obd(timing()).unwrap(),
    );
    let err = tester.request(id(0x123), &[0x3E, 0x00]).await.unwrap_err();
    assert!(
        matches!(err, Error::Uds(UdsError::InvalidRequest { .. })),
        "{err}"
    );
    let err = tester
        .request_functional(&[0x22; 9], |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Uds(UdsError::Transfer(_))), "{err}");
}
