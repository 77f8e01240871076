//! `tether can dongle` and `tether can replay`, the real binary, against a UDP socket standing
//! in for the agent: hello first, keep-alives every second, the capture complete and in order,
//! and every frame sent to the dongle written to its `--record` candump log as it arrives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use can_io::CanRecord;
use can_io::formats::{Entry, LogFormat, LogReader};
use can_io::frame::{CanFrame, CanId, Channel, DataFrame, Direction};
use can_io::wire::remp::{self, RempBody, RempSender};

const GUARD: Duration = Duration::from_secs(60);

fn capture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/captures/nissan-leaf-isotp.log")
}

fn read_log(path: &Path) -> Vec<CanRecord> {
    let f = std::fs::File::open(path).unwrap();
    LogReader::new(LogFormat::Candump, std::io::BufReader::new(f))
        .filter_map(|l| match l.unwrap().entry {
            Entry::Record(r) => Some(r),
            Entry::Drop(_) => None,
        })
        .collect()
}

/// Receive one datagram or panic after the guard.
fn recv(sock: &UdpSocket) -> (remp::RempDatagram, std::net::SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("a datagram before the timeout");
    (remp::decode(&buf[..n]).expect("valid REMP"), from)
}

/// Runs `tether`, with the arguments `args` gives for the agent's address, against a UDP socket
/// standing in for the agent, and checks what a replay of the capture at 20× must show there:
/// a hello from `serial` first, then datagrams numbered without a hole carrying every frame in
/// order with its timestamp and direction, keep-alives while it waits (the capture spans about
/// 50 s, so the replay takes seconds), and a clean exit. Returns its stderr.
fn check_replay_to_agent(serial: &str, args: impl FnOnce(&mut Command, SocketAddr)) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(GUARD)).unwrap();
    let expected = read_log(&capture_path());
    assert_eq!(expected.len(), 5588);
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    args(&mut command, sock.local_addr().unwrap());
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (first, _) = recv(&sock);
    assert_eq!(first.serial, serial);
    assert!(matches!(first.body, RempBody::Hello(_)), "{first:?}");
    let mut got = Vec::new();
    let mut keepalives = 0;
    let mut last_seq = first.seq;
    while got.len() < expected.len() {
        let (d, _) = recv(&sock);
        assert_eq!(
            d.seq,
            last_seq.wrapping_add(1),
            "no datagram lost or reordered"
        );
        last_seq = d.seq;
        match d.body {
            RempBody::Frames(f) => got.extend(f),
            RempBody::Keepalive(_) => keepalives += 1,
            RempBody::Hello(_) => {}
        }
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.frame, e.frame, "frame {i}");
        assert_eq!(g.ts_ns, e.ts_ns, "frame {i}");
        assert_eq!(g.direction, e.direction, "frame {i}");
    }
    assert!(keepalives >= 1, "keep-alives while replaying");
    stderr
}

#[test]
fn replay_sends_the_capture_in_order_after_a_hello() {
    let stderr = check_replay_to_agent("TD-REPLAY", |command, agent| {
        command
            .args(["can", "dongle", "--serial", "TD-REPLAY", "--agent"])
            .arg(agent.to_string())
            .arg("--replay")
            .arg(capture_path())
            .args(["--speed", "20"]);
    });
    assert!(stderr.contains("sent 5588 frames"), "{stderr}");
}

/// `tether can replay --bus udp://…` (REMP): the same checks, and it ends on its own with a
/// summary.
#[test]
fn can_replay_sends_the_capture_in_order_with_keepalives() {
    let stderr = check_replay_to_agent("TD-CAN-REPLAY", |command, agent| {
        command
            .args(["can", "replay"])
            .arg(capture_path())
            .arg("--bus")
            .arg(format!("udp://{agent}"))
            .args(["--serial", "TD-CAN-REPLAY", "--speed", "20"]);
    });
    assert!(
        stderr.contains("sent 5588 frames to udp://") && stderr.contains("(0 bad lines skipped"),
        "{stderr}"
    );
}

#[test]
fn record_writes_every_received_frame_and_keeps_alive() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(GUARD)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("rx.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["can", "dongle", "--serial", "TD-REC", "--agent"])
        .arg(sock.local_addr().unwrap().to_string())
        .arg("--record")
        .arg(&out_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (hello, dongle) = recv(&sock);
    assert!(matches!(hello.body, RempBody::Hello(_)));
    // Frames "from the agent", the way the agent sends them: REMP with the dongle's serial.
    let mut tx = RempSender::new("TD-REC", 7, 1000).unwrap();
    let sent: Vec<CanRecord> = (0..150u32)
        .map(|i| {
            CanRecord::new(
                1_700_000_000_000_000_000 + u64::from(i) * 1_000_000,
                Channel::from("can0"),
                Direction::Rx,
                CanFrame::Data(
                    DataFrame::new(CanId::new(0x200 + i, false).unwrap(), &i.to_be_bytes())
                        .unwrap(),
                ),
            )
        })
        .collect();
    for r in &sent {
        for d in tx.push(r).unwrap() {
            sock.send_to(&d, dongle).unwrap();
        }
    }
    if let Some(d) = tx.flush().unwrap() {
        sock.send_to(&d, dongle).unwrap();
    }
    // The log grows while the dongle runs (flushed per frame).
    let deadline = Instant::now() + GUARD;
    loop {
        let n = std::fs::read_to_string(&out_path)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if n >= sent.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} lines recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_log(&out_path), sent);
    // Keep-alives keep coming while it waits.
    let mut keepalives = 0;
    while keepalives < 2 {
        let (d, _) = recv(&sock);
        if matches!(d.body, RempBody::Keepalive(_)) {
            keepalives += 1;
        }
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("received 150 frames"), "{stderr}");
    assert!(stderr.contains("0 datagrams lost"), "{stderr}");
}

#[test]
fn refuses_bad_arguments() {
    for args in [
        vec!["--serial", "X", "--agent", "127.0.0.1:9"],
        vec![
            "--serial",
            "has space",
            "--agent",
            "127.0.0.1:9",
            "--record",
            "/dev/null",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["can", "dongle"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("nothing to do") || stderr.contains("--serial"),
            "{args:?}: {stderr}"
        );
    }
}
