//! `dongle.protocol: cannelloni` end to end, with real processes on loopback: `tether server`
//! and two `tether agent` dongle roles, side A on cannelloni (its dongle named by
//! `dongle.serial`), side B on REMP. The test is both dongles: side A's cannelloni peer (a UDP
//! socket speaking cannelloni v2) and side B's REMP dongle (`can_io`'s `RempUdp`). Frames the
//! peer sends as cannelloni datagrams must reach B complete and in order, B's frames must come
//! back to the peer as cannelloni datagrams, complete, in order and numbered, and a datagram
//! that is not cannelloni must be counted.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use can_io::frame::{CanFrame, CanId, CanRecord, Channel, DataFrame, Direction};
use can_io::transport::CanBus;
use can_io::transport::udp::RempUdp;
use can_io::wire::cannelloni;
use support::{AgentProc, PATIENCE, Pair, TestResult, default_server, eventually, metric_sum};
use tokio::net::UdpSocket;

/// Frames each way.
const FRAMES: u16 = 3000;
/// Frames per cannelloni datagram the peer sends.
const PER_DATAGRAM: usize = 40;

/// Frame `i` of a direction: the number in the first two data bytes, the id says who sent it.
fn frame(id: u32, i: u16) -> CanFrame {
    let data = [(i >> 8) as u8, i as u8, 0xCA, 0xFE];
    CanFrame::Data(DataFrame::new(CanId::standard(id).expect("11-bit"), &data).expect("data"))
}

fn number(f: &CanFrame) -> u16 {
    u16::from_be_bytes([f.data()[0], f.data()[1]])
}

/// Waits until `agent` relays its dongle's frames (it knows an active group and its stream
/// is open), so the frames sent next are not dropped as `no_group`.
async fn relaying(agent: &AgentProc) -> TestResult {
    eventually(
        PATIENCE,
        &format!("agent {} relaying", agent.name),
        || async {
            let text = agent.metrics().await?;
            (metric_sum(&text, "tether_agent_dongle_relaying", &[]) == 1.0).then_some(())
        },
    )
    .await
}

/// Receives cannelloni datagrams on `peer` until `n` frames arrived; checks that the
/// datagrams are numbered one after the other.
async fn peer_receives(peer: &UdpSocket, n: usize) -> TestResult<Vec<CanFrame>> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut next_seq: Option<u8> = None;
    while frames.len() < n {
        let got = tokio::time::timeout(PATIENCE, peer.recv(&mut buf)).await;
        let Ok(read) = got else {
            return Err(format!("the peer received {} of {n} frames", frames.len()).into());
        };
        let d = cannelloni::decode_datagram(&buf[..read?])?;
        if let Some(want) = next_seq {
            assert_eq!(d.seq, want, "cannelloni sequence numbers follow each other");
        }
        next_seq = Some(d.seq.wrapping_add(1));
        frames.extend(d.frames);
    }
    Ok(frames)
}

/// Receives from the REMP dongle until `n` frames arrived.
async fn dongle_receives(dongle: &mut RempUdp, n: usize) -> TestResult<Vec<CanFrame>> {
    let mut frames = Vec::new();
    while frames.len() < n {
        match tokio::time::timeout(PATIENCE, dongle.recv()).await {
            Ok(r) => frames.push(r?.ok_or("the REMP bus ended")?.frame),
            Err(_) => {
                return Err(format!("dongle B received {} of {n} frames", frames.len()).into());
            }
        }
    }
    Ok(frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cannelloni_frames_cross_to_a_remp_dongle_and_back_in_order() -> TestResult {
    let (ws, server) = default_server().await?;
    let api = server.api();
    let user_token = server.user_token("carol")?;
    let base = [server.base.as_str()];
    let pair = Pair::start_with_protocols(
        &ws,
        &server,
        "carol",
        user_token,
        [&base, &base],
        [true, false],
    )
    .await?;
    let agent_a: SocketAddr = pair.a.agent.udp_addr().parse()?;
    let peer = UdpSocket::bind("127.0.0.1:0").await?;
    let mut dongle_b = RempUdp::dongle(pair.b.agent.udp_addr().parse()?, &pair.b.serial).await?;
    let outcome = async {
        pair.wait_mode(&api, "active").await?;
        // A's dongle is known from its serial at start; B's from its hello.
        relaying(&pair.a.agent).await?;
        relaying(&pair.b.agent).await?;

        // A → B: cannelloni datagrams from the peer, the REMP dongle gets every frame in order.
        let from_a: Vec<CanFrame> = (0..FRAMES).map(|i| frame(0x1A0, i)).collect();
        for (seq, chunk) in from_a.chunks(PER_DATAGRAM).enumerate() {
            let d = cannelloni::encode_datagram(seq as u8, chunk)?;
            peer.send_to(&d, agent_a).await?;
            if seq % 10 == 9 {
                // Loopback UDP has no flow control: leave the agent time to read.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let at_b = dongle_receives(&mut dongle_b, from_a.len()).await?;
        assert_eq!(at_b, from_a, "B receives A's frames, all and in order");

        // B → A: the REMP dongle's frames come back to the peer as cannelloni datagrams.
        let from_b: Vec<CanFrame> = (0..FRAMES).map(|i| frame(0x2B0, i)).collect();
        for (i, f) in from_b.iter().enumerate() {
            let r = CanRecord::new(0, Channel::from("can0"), Direction::Rx, *f);
            dongle_b.send(&r).await?;
            if i % 50 == 49 {
                dongle_b.flush().await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        dongle_b.flush().await?;
        let at_a = peer_receives(&peer, from_b.len()).await?;
        let numbers: Vec<u16> = at_a.iter().map(number).collect();
        assert_eq!(numbers, (0..FRAMES).collect::<Vec<_>>(), "in order");
        assert_eq!(
            at_a, from_b,
            "A's peer receives B's frames as they were sent"
        );

        // A datagram that is not cannelloni is counted and changes nothing.
        peer.send_to(b"not cannelloni at all", agent_a).await?;
        eventually(PATIENCE, "the bad datagram counted", || async {
            let text = pair.a.agent.metrics().await?;
            (metric_sum(&text, "tether_agent_dongle_malformed_datagrams_total", &[]) == 1.0)
                .then_some(())
        })
        .await?;
        for agent in [&pair.a.agent, &pair.b.agent] {
            let text = agent.metrics().await.ok_or("agent metrics")?;
            let dropped = metric_sum(&text, "tether_agent_dongle_frames_dropped_total", &[]);
            assert_eq!(dropped, 0.0, "{}: nothing dropped\n{text}", agent.name);
        }
        let text = pair.a.agent.metrics().await.ok_or("agent metrics")?;
        let serial = format!("serial=\"{}\"", pair.a.serial);
        let count = |family: &str| metric_sum(&text, family, &[serial.as_str()]);
        assert_eq!(
            count("tether_agent_dongle_frames_in_total"),
            f64::from(FRAMES)
        );
        assert_eq!(
            count("tether_agent_dongle_frames_delivered_total"),
            f64::from(FRAMES)
        );
        TestResult::Ok(())
    }
    .await;
    pair.explain(&ws, outcome).await
}
