//! `tether can ecu`, the real binary, as a REMP dongle towards a socket standing in for the
//! agent: Tether's UDS tester reads its DTCs and DIDs (single- and multi-frame answers), gets
//! requestOutOfRange for an unknown DID, clears the DTCs, and the ECU reports its counters at
//! SIGTERM. A bad profile is refused before any bus is opened.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use can_io::CanId;
use can_io::transport::udp::RempUdp;
use can_io::uds::{
    Dtc, Nrc, UdsError, UdsRequest, UdsResponse, UdsTester, UdsTesterCore, UdsTiming,
};
use can_io::wire::remp::RempEvent;

const GUARD: Duration = Duration::from_secs(30);

fn demo_profile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ecu/demo.yaml")
}

/// Spawn `tether can ecu` and wait for its ready line; returns the child and its stderr reader.
fn spawn_ecu(bus: &str, serial: &str) -> (Child, BufReader<std::process::ChildStderr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["can", "ecu", "--profile"])
        .arg(demo_profile())
        .args(["--bus", bus, "--serial", serial])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("ecu simulator ready on"), "{line}");
    assert!(line.contains("engine 0x7E0→0x7E8"), "{line}");
    (child, err)
}

fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn agent_side() -> (RempUdp, String) {
    let bus = RempUdp::bind("127.0.0.1:0".parse().unwrap(), None, "AGENT")
        .await
        .unwrap();
    let addr = bus.local_addr().unwrap();
    (bus, format!("udp://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tether_tester_reads_and_clears_the_simulated_ecus_over_remp() {
    let (mut agent, address) = agent_side().await;
    let (mut child, mut stderr) = spawn_ecu(&address, "ECU-TEST-1");
    // The dongle says hello first: the agent side learns where to answer.
    let hello = tokio::time::timeout(GUARD, agent.recv_event())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&hello, RempEvent::Hello { serial, .. } if serial == "ECU-TEST-1"),
        "{hello:?}"
    );
    let mut tester = UdsTester::new(agent, UdsTesterCore::obd(UdsTiming::default()).unwrap());
    let engine = CanId::standard(0x7E0).unwrap();
    let none = BTreeMap::new();

    let dtcs = tester
        .request_decoded(
            engine,
            &UdsRequest::ReadDtcByStatusMask { status_mask: 0xFF },
            &none,
        )
        .await
        .unwrap();
    let UdsResponse::Dtcs { dtcs, .. } = dtcs else {
        panic!("{dtcs:?}")
    };
    let got: Vec<(String, u8)> = dtcs
        .iter()
        .map(|d| (d.dtc.sae_code(), d.status.0))
        .collect();
    assert_eq!(
        got,
        [
            ("P0420".to_owned(), 0x2F),
            ("P0171".to_owned(), 0x24),
            ("U0100".to_owned(), 0x09)
        ]
    );
    assert_eq!(dtcs[2].dtc, Dtc::new(0xC1_0000).unwrap());

    // The VIN needs a first frame, flow control and consecutive frames.
    let vin = tester.request(engine, &[0x22, 0xF1, 0x90]).await.unwrap();
    assert_eq!(&vin[..3], &[0x62, 0xF1, 0x90]);
    assert_eq!(&vin[3..], b"1HGCM82633A004352");

    let err = tester
        .request(engine, &[0x22, 0x12, 0x34])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            can_io::Error::Uds(UdsError::Negative {
                sid: 0x22,
                nrc: Nrc::REQUEST_OUT_OF_RANGE
            })
        ),
        "{err:?}"
    );

    // A functional ReadDTC collects both ECUs' answers.
    let answers = tester
        .request_functional(&[0x19, 0x02, 0xFF], |_| {})
        .await
        .unwrap();
    let mut responders: Vec<u32> = answers.iter().map(|a| a.responder.raw()).collect();
    responders.sort_unstable();
    assert_eq!(responders, [0x7E8, 0x7E9]);

    let cleared = tester
        .request(engine, &[0x14, 0xFF, 0xFF, 0xFF])
        .await
        .unwrap();
    assert_eq!(cleared, [0x54]);
    let after = tester.request(engine, &[0x19, 0x02, 0xFF]).await.unwrap();
    assert_eq!(after, [0x59, 0x02, 0xFF], "no DTC left");
    assert_eq!(tester.core().stats().unmatched, 0);

    terminate(&mut child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(stderr.get_mut(), &mut rest).unwrap();
    assert!(
        rest.contains("ecu engine: 6 requests, 5 positive, 1 negative"),
        "{rest}"
    );
    assert!(rest.contains("0 DTCs stored"), "{rest}");
    assert!(rest.contains("ecu transmission: 1 requests"), "{rest}");
}

#[test]
fn a_bad_profile_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("ecus: []\n", "lists no ECUs"),
        (
            "ecus:\n  - {name: e, request_id: 0x7E0, response_id: 0x7E8, dtcs: [{code: X0420, status: 1}]}\n",
            "X0420",
        ),
        (
            "ecus:\n  - {name: e, request_id: 0x7E0, response_id: 0x7E8, colour: red}\n",
            "colour",
        ),
    ];
    for (i, (yaml, reason)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["can", "ecu", "--profile"])
            .arg(&path)
            // An address nobody could open: the profile must be refused first.
            .args(["--bus", "socketcand://127.0.0.1:1/none"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{yaml}: {err}");
    }
    let ok = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "can",
            "ecu",
            "--check",
            "--bus",
            "multicast://239.74.163.2:43113",
        ])
        .arg("--profile")
        .arg(demo_profile())
        .output()
        .unwrap();
    assert!(ok.status.success());
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        text.contains("engine 0x7E0→0x7E8 (3 DTCs, 4 DIDs), transmission 0x7E1→0x7E9"),
        "{text}"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["can", "ecu", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("tether can ecu --profile ecu.yaml --bus multicast://"));
}
