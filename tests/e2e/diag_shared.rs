//! One REMP dongle per vehicle, relayed and diagnosed at once (`docs/agent.md`, "One dongle,
//! relayed and diagnosed"), with real processes: `tether server` (agent connector), agent A
//! running the dongle role and the diagnostics role with `dongle: alice-A`, `tether can ecu`
//! with the shipped demo profile as that dongle (sending to the dongle role's UDP port), and
//! agent B with a `tether can dongle` recording the group's other side.
//!
//! Commands posted through the REST API complete with the profile's answers while every frame
//! the vehicle's ECUs send reaches side B, in order (the ISO-TP messages reassembled there are
//! exactly the answers, command after command), and none of the tester's own requests does.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    Api, DongleProc, PATIENCE, Pair, TETHER, TestResult, Workspace, candump_frames, default_server,
    eventually, metric_sum, text,
};

/// Commands posted one after the other (alternating ReadDTC and the VIN).
const COMMANDS: usize = 8;
const VIN: &[u8] = b"1HGCM82633A004352";

fn demo_profile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ecu/demo.yaml")
}

/// The ECU simulator as the vehicle's REMP dongle `serial`, sending to `agent_udp`.
struct EcuProc(Child);

impl EcuProc {
    fn start(ws: &Workspace, serial: &str, agent_udp: &str) -> TestResult<EcuProc> {
        let stderr = std::fs::File::create(ws.path("ecu.stderr"))?;
        let child = Command::new(TETHER)
            .args(["can", "ecu", "--profile"])
            .arg(demo_profile())
            .args(["--bus", &format!("udp://{agent_udp}"), "--serial", serial])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        Ok(EcuProc(child))
    }
}

impl Drop for EcuProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ID#HEX` → (id, bytes).
fn parse_frame(f: &str) -> Option<(u32, Vec<u8>)> {
    let (id, data) = f.split_once('#')?;
    let id = u32::from_str_radix(id, 16).ok()?;
    let bytes = (0..data.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(data.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((id, bytes))
}

/// Reassembles the ISO-TP messages of `frames` (classic CAN, normal addressing, one sender),
/// in order; a consecutive frame out of sequence or a message cut short is an error.
fn reassemble(frames: &[Vec<u8>]) -> TestResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut open: Option<(usize, Vec<u8>, u8)> = None;
    for (i, f) in frames.iter().enumerate() {
        let pci = f.first().ok_or("empty frame")?;
        match pci >> 4 {
            0 => {
                if open.is_some() {
                    return Err(format!("frame {i}: single frame inside a message").into());
                }
                let len = usize::from(pci & 0x0F);
                out.push(f.get(1..1 + len).ok_or("short single frame")?.to_vec());
            }
            1 => {
                if open.is_some() {
                    return Err(format!("frame {i}: first frame inside a message").into());
                }
                let len = (usize::from(pci & 0x0F) << 8) | usize::from(f[1]);
                open = Some((len, f[2..].to_vec(), 1));
            }
            2 => {
                let (len, mut data, sn) = open.take().ok_or("consecutive frame without a first")?;
                if pci & 0x0F != sn {
                    return Err(format!("frame {i}: sequence number {pci:#x}, want {sn}").into());
                }
                data.extend_from_slice(&f[1..]);
                if data.len() >= len {
                    data.truncate(len);
                    out.push(data);
                } else {
                    open = Some((len, data, (sn + 1) & 0x0F));
                }
            }
            kind => return Err(format!("frame {i}: unexpected PCI type {kind}").into()),
        }
    }
    if open.is_some() {
        return Err("the last message is incomplete".into());
    }
    Ok(out)
}

/// The command, posted and completed → its responses' payloads.
async fn run_command(
    api: &Api,
    user: &str,
    vehicle: &str,
    name: &str,
    params: Value,
) -> TestResult<Vec<Value>> {
    let accepted = api.submit_command(user, vehicle, name, params).await?;
    let id = text(&accepted, "command_id")?;
    let done = api.command_ended(user, &id, PATIENCE).await?;
    if done["status"] != "completed" {
        return Err(format!("{name} did not complete: {done}").into());
    }
    let (_, body) = api
        .get(&format!("/api/v1/commands/{id}/responses"), user)
        .await?;
    let responses = body["responses"].as_array().ok_or("no responses")?;
    Ok(responses
        .iter()
        .map(|r| r["response_payload"].clone())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vehicle_dongle_is_diagnosed_while_its_frames_are_relayed_in_order() -> TestResult {
    let (ws, server) = default_server().await?;
    let api = server.api();
    let mut pair = Pair::start(&ws, &server, "alice").await?;
    let outcome = async {
        // Agent A also diagnoses its dongle: the same file plus a `dongle:` bus.
        let serial = pair.a.serial.clone();
        pair.a.agent.stop().await?;
        let mut yaml = std::fs::read_to_string(&pair.a.agent.config)?;
        yaml.push_str(&format!(
            "diagnostics:\n  buses:\n    - dongle: {serial}\n  reconnect_max: 1\n"
        ));
        std::fs::write(&pair.a.agent.config, yaml)?;
        pair.a.agent.spawn()?;
        pair.a.agent.ready().await?;

        let (status, vehicle) = api
            .post(
                "/api/v1/vehicles",
                &pair.user_token,
                json!({
                    "name": "car", "vin": "1HGCM82633A004352", "dongle_id": pair.a.dongle_id,
                    "ecus": [
                        {"name": "engine", "request_id": "0x7E0", "response_id": "0x7E8"},
                        {"name": "transmission", "request_id": "0x7E1", "response_id": "0x7E9"}
                    ]
                }),
            )
            .await?;
        assert_eq!(status, StatusCode::CREATED, "{vehicle}");
        let vehicle = text(&vehicle, "id")?;
        let b_rx = ws.path("b-received.log");
        let _dongle_b = DongleProc::start(
            &ws,
            &pair.b.serial,
            &pair.b.agent.udp_addr(),
            None,
            Some(&b_rx),
        )?;
        let _car = EcuProc::start(&ws, &serial, &pair.a.agent.udp_addr())?;
        pair.wait_mode(&api, "active").await?;
        // The dongle role relays the car's frames to the group, and the diagnostics role is
        // on the server's channel (the vehicle is online).
        let relaying = format!("tether_agent_dongle_relaying{{serial=\"{serial}\"}} 1");
        eventually(PATIENCE, "agent A relays the car's dongle", || async {
            pair.a
                .agent
                .metrics()
                .await
                .filter(|m| m.contains(&relaying))
        })
        .await?;
        eventually(PATIENCE, "the vehicle is online", || async {
            let (_, v) = api
                .get(&format!("/api/v1/vehicles/{vehicle}"), &pair.user_token)
                .await
                .ok()?;
            (v["online"] == true).then_some(())
        })
        .await?;

        let mut want_messages = Vec::new();
        for i in 0..COMMANDS {
            if i % 2 == 0 {
                let responses = run_command(
                    &api,
                    &pair.user_token,
                    &vehicle,
                    "ReadDTC",
                    json!({"ecu": "engine"}),
                )
                .await?;
                assert_eq!(responses.len(), 1, "{responses:?}");
                let codes: Vec<(&str, u64)> = responses[0]["dtcs"]
                    .as_array()
                    .ok_or("no dtcs")?
                    .iter()
                    .map(|d| {
                        (
                            d["dtcCode"].as_str().unwrap_or(""),
                            d["status"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect();
                assert_eq!(
                    codes,
                    [("P0420", 0x2F), ("P0171", 0x24), ("U0100", 0x09)],
                    "{responses:?}"
                );
                want_messages.push(None);
            } else {
                let responses = run_command(
                    &api,
                    &pair.user_token,
                    &vehicle,
                    "ReadDataByID",
                    json!({"ecu": "engine", "did": "0xF190"}),
                )
                .await?;
                assert_eq!(responses.len(), 1, "{responses:?}");
                assert!(
                    responses[0].to_string().contains("1HGCM82633A004352"),
                    "{responses:?}"
                );
                let mut vin = vec![0x62, 0xF1, 0x90];
                vin.extend_from_slice(VIN);
                want_messages.push(Some(vin));
            }
        }

        // Side B got every frame the car's engine ECU sent, in order: each answer reassembles.
        let engine_frames = || -> Vec<Vec<u8>> {
            candump_frames(&b_rx)
                .iter()
                .filter_map(|f| parse_frame(f))
                .filter(|(id, _)| *id == 0x7E8)
                .map(|(_, d)| d)
                .collect()
        };
        // ReadDTC: first frame and two consecutive; the VIN: first frame and two consecutive.
        let want_frames = COMMANDS * 3;
        eventually(PATIENCE, "side B records the ECU's frames", || async {
            (engine_frames().len() >= want_frames).then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let frames = engine_frames();
        assert_eq!(frames.len(), want_frames, "nothing doubled");
        let messages = reassemble(&frames)?;
        assert_eq!(messages.len(), COMMANDS);
        let dtcs = [
            0x04, 0x20, 0x00, 0x2F, 0x01, 0x71, 0x00, 0x24, 0xC1, 0x00, 0x00, 0x09,
        ];
        for (i, (got, want)) in messages.iter().zip(&want_messages).enumerate() {
            match want {
                Some(vin) => assert_eq!(got, vin, "message {i}"),
                None => {
                    assert_eq!(&got[..2], [0x59, 0x02], "message {i}");
                    assert_eq!(&got[3..], dtcs, "message {i}");
                }
            }
        }
        // The tester's requests and flow controls went to the car only, not to side B.
        let all = candump_frames(&b_rx);
        assert!(
            !all.iter().any(|f| f.starts_with("7E0#")),
            "tester frames relayed: {all:?}"
        );
        // Nothing dropped on A: no frame of the car's was lost between dongle and server.
        let m = pair.a.agent.metrics().await.ok_or("agent A metrics")?;
        assert_eq!(
            metric_sum(&m, "tether_agent_dongle_frames_dropped_total", &[]),
            0.0,
            "{m}"
        );
        // At stop the diagnostics role reports its bus: no frame dropped on the shared path,
        // none that could not be sent to the car.
        pair.a.agent.stop().await?;
        let logs = pair.a.agent.logs();
        let totals = logs
            .lines()
            .rfind(|l| l.contains("diagnostics bus totals"))
            .ok_or("no diagnostics bus totals")?;
        for zero in ["send_failed", "tester_dropped", "tap_dropped"] {
            assert!(
                totals.contains(&format!("\"{zero}\":0")) || totals.contains(&format!("{zero}=0")),
                "{zero}: {totals}"
            );
        }
        TestResult::Ok(())
    }
    .await;
    pair.explain(&ws, outcome).await
}
