//! Running a [`DiagCommand`] on a bus: the UDS request(s) it maps to, sent by a [`UdsTester`],
//! and the ECUs' answers turned into the commands API's response JSON.
//!
//! | command | request(s) | response JSON (one per answering ECU) |
//! |---|---|---|
//! | `ReadDTC` | `19 02 mask` | `{"ecu","dtcs":[{"dtcCode":"P0420","ftb":0,"status":47,"description":"…"}]}` |
//! | `ClearDTC` | `14 gg gg gg` | `{"ecu","cleared":true,"group":16777215}` |
//! | `ReadDataByID` (one DID) | `22 did` | `{"ecu","did":61840,"didHex":"F190","hex":"31…","ascii":"1HG…"}` |
//! | `ReadDataByID` (a list) | `22 did` per DID | `{"ecu","values":[{did,didHex,hex,ascii?}…]}` |
//! | `DiagnosticSessionControl`, `ECUReset`, `TesterPresent`, `UdsRequest` | as given | `{"ecu","hex":"<positive response>"}` |
//!
//! * `ascii` is present when every byte of the value is printable ASCII; `description` is the
//!   SAE title from [`Dtc::description`](super::Dtc::description), `null` for codes it does
//!   not know.
//! * A list of DIDs is read one DID per request: a multi-DID answer cannot be split without
//!   knowing every value's length, which a vehicle's ECU list does not carry. A DID the ECU
//!   refuses appears as `{"did","didHex","error":"requestOutOfRange"}`; the command fails
//!   only when every DID is refused.
//! * Physical (one ECU, `params.ecu` / `params.ecuAddress`): the first final answer decides.
//!   A negative answer fails the command with the NRC's name ([`super::Nrc::name`]); no answer
//!   within P2 (P2* after response-pending) fails it with `timeout`.
//! * Functional (neither): one single frame on `0x7DF` (`0x18DB33F1` when every listed ECU is
//!   29-bit), every answer collected until all listed ECUs have answered or the wait runs out
//!   (with no list, the OBD range `0x7E8..=0x7EF` and always the whole P2). A request longer
//!   than a single frame goes to each listed ECU in turn instead. Each ECU's answer is a
//!   response, the last one `is_final`; an ECU's negative answer is a response
//!   `{"ecu","error":"<NRC name>"}` while another answered positively, else the command fails
//!   with the first NRC; no answer at all is `timeout`.
//!
//! What it does not do: queue commands, open buses, or talk to the server (the agent's
//! diagnostics role does); decode DID values into physical quantities.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::command::{CommandKind, CommandTarget, DiagCommand, EcuAddress};
use super::service::{decode_did_values, decode_dtc_report};
use super::tester::{UdsTester, UdsTesterCore};
use super::{Answer, EcuAnswer, Nrc, UdsError, UdsTiming};
use crate::error::Error;
use crate::frame::CanId;
use crate::isotp::{Addressing, IsoTpConfig};
use crate::transport::CanBus;

/// The 11-bit functional request id.
pub const FUNCTIONAL_11BIT: u32 = 0x7DF;
/// The 29-bit (normal-fixed) functional request id, tester `0xF1` to all (`0x33`).
pub const FUNCTIONAL_29BIT: u32 = 0x18DB_33F1;
/// The longest request a classic-CAN single frame carries (normal addressing).
const SINGLE_FRAME_MAX: usize = 7;

/// Why a command failed; [`reason`](Self::reason) is the `error` the agent reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The ECU (every answering ECU) refused the request.
    #[error("{}", .0.name())]
    Negative(Nrc),
    /// No (final) answer in time.
    #[error("timeout")]
    Timeout,
    /// The bus or an ISO-TP transfer failed.
    #[error("bus_error: {0}")]
    Bus(String),
    /// `params.ecu` names no ECU of the vehicle.
    #[error("unknown_ecu: {0}")]
    UnknownEcu(String),
    /// An answer that does not decode as the request's positive response.
    #[error("malformed_response: {0}")]
    Malformed(String),
    /// The command cannot be sent as asked (a request too long for a functional frame and no
    /// ECU list to send it to one by one).
    #[error("invalid_command: {0}")]
    Invalid(String),
}

impl ExecError {
    /// The `error` string of `command_failed`: an NRC name (`requestOutOfRange`), `timeout`,
    /// `bus_error: …`, `unknown_ecu: …`, `malformed_response: …`, `invalid_command: …`.
    pub fn reason(&self) -> String {
        self.to_string()
    }

    fn from_error(e: Error) -> Self {
        match e {
            Error::Uds(UdsError::Negative { nrc, .. }) => ExecError::Negative(nrc),
            Error::Uds(UdsError::Timeout { .. }) => ExecError::Timeout,
            Error::Uds(UdsError::Malformed { reason, .. }) => ExecError::Malformed(reason),
            Error::Uds(UdsError::Transfer(t)) => ExecError::Bus(t.to_string()),
            Error::Uds(UdsError::InvalidRequest { reason }) => ExecError::Invalid(reason),
            other => ExecError::Bus(other.to_string()),
        }
    }
}

/// Where a command goes, resolved against the vehicle's ECU list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPlan {
    /// The addressed ECU (physical), or the vehicle's ECUs (functional; may be empty).
    pub ecus: Vec<EcuAddress>,
    /// Whether the request is functional.
    pub functional: bool,
}

impl ExecPlan {
    /// Resolve `command`'s target against `vehicle_ecus`; an unknown `params.ecu` is
    /// [`ExecError::UnknownEcu`].
    pub fn new(command: &DiagCommand, vehicle_ecus: &[EcuAddress]) -> Result<Self, ExecError> {
        let ecus = command.target.resolve(vehicle_ecus).map_err(|_| {
            let name = match &command.target {
                CommandTarget::Named(n) => n.clone(),
                other => other.queue_key(),
            };
            let known: Vec<&str> = vehicle_ecus.iter().map(|e| e.name.as_str()).collect();
            ExecError::UnknownEcu(format!("{name} (the vehicle has: {})", known.join(", ")))
        })?;
        Ok(ExecPlan {
            ecus,
            functional: command.target == CommandTarget::Functional,
        })
    }

    /// The key of the queue a command of this plan waits in: the ECU's request id (`0x7E0`),
    /// or `*` for a functional request (which occupies every ECU of the bus).
    pub fn queue_key(&self) -> String {
        match (self.functional, self.ecus.first()) {
            (false, Some(e)) => format!("0x{:X}", e.request_id),
            _ => "*".to_owned(),
        }
    }

    /// A tester core with a link per ECU of the plan (the OBD layout `0x7E0..=0x7E7` for a
    /// functional plan without ECUs) and the functional id.
    pub fn tester_core(&self, timing: UdsTiming) -> Result<UdsTesterCore, ExecError> {
        let invalid = |e: crate::isotp::IsoTpError| ExecError::Invalid(e.to_string());
        if self.functional && self.ecus.is_empty() {
            return UdsTesterCore::obd(timing).map_err(|e| ExecError::Invalid(e.to_string()));
        }
        let links = self
            .ecus
            .iter()
            .map(|e| {
                Addressing::normal(e.request_id, e.response_id)
                    .map(IsoTpConfig::new)
                    .map_err(invalid)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let functional_id = if self.ecus.iter().all(|e| e.request_id > 0x7FF) {
            FUNCTIONAL_29BIT
        } else {
            FUNCTIONAL_11BIT
        };
        let functional = Addressing::normal(functional_id, functional_id)
            .map(IsoTpConfig::new)
            .map_err(invalid)?;
        UdsTesterCore::new(links, Some(functional), timing)
            .map_err(|e| ExecError::Invalid(e.to_string()))
    }

    fn name_of(&self, responder: CanId) -> String {
        self.ecus
            .iter()
            .find(|e| e.response_id == responder.raw())
            .map(|e| e.name.clone())
            .unwrap_or_else(|| format!("0x{:X}", responder.raw()))
    }
}

/// Hands responses on one behind, so the last one can be marked final.
struct Streamer<'a> {
    held: Option<Value>,
    sent: u32,
    emit: &'a mut (dyn FnMut(Value, bool) + Send),
}

impl Streamer<'_> {
    fn push(&mut self, response: Value) {
        if let Some(prev) = self.held.replace(response) {
            (self.emit)(prev, false);
            self.sent += 1;
        }
    }

    fn finish(mut self) -> u32 {
        if let Some(last) = self.held.take() {
            (self.emit)(last, true);
            self.sent += 1;
        }
        self.sent
    }
}

/// Run `command` as `plan` says on `tester` (a tester built from
/// [`ExecPlan::tester_core`]), calling `emit(response, is_final)` for each response as it is
/// ready; returns how many were emitted (at least one) or why the command failed. After a
/// failure nothing has been emitted as final.
pub async fn execute<B: CanBus>(
    tester: &mut UdsTester<B>,
    plan: &ExecPlan,
    command: &DiagCommand,
    emit: &mut (dyn FnMut(Value, bool) + Send),
) -> Result<u32, ExecError> {
    let mut out = Streamer {
        held: None,
        sent: 0,
        emit,
    };
    match &command.kind {
        CommandKind::ReadDataById { dids, list: true } => {
            read_did_list(tester, plan, dids, &mut out).await?
        }
        kind => {
            let request = command.request_bytes();
            let mut negatives = Vec::new();
            let mut positives = 0usize;
            let mut on_answer = |a: &EcuAnswer| {
                let ecu = plan.name_of(a.responder);
                match &a.answer {
                    Answer::Positive(m) => match render(kind, &ecu, m) {
                        Ok(v) => {
                            positives += 1;
                            out.push(v);
                        }
                        Err(e) => negatives.push((ecu, e)),
                    },
                    Answer::Negative(nrc) => negatives.push((ecu, ExecError::Negative(*nrc))),
                }
            };
            ask(tester, plan, &request, &mut on_answer).await?;
            if positives == 0 {
                return Err(negatives
                    .into_iter()
                    .next()
                    .map(|(_, e)| e)
                    .unwrap_or(ExecError::Timeout));
            }
            for (ecu, e) in negatives {
                out.push(json!({"ecu": ecu, "error": e.reason()}));
            }
        }
    }
    Ok(out.finish())
}

/// Send `request` as the plan says and call `on_answer` with every final answer.
async fn ask<B: CanBus>(
    tester: &mut UdsTester<B>,
    plan: &ExecPlan,
    request: &[u8],
    on_answer: &mut (dyn FnMut(&EcuAnswer) + Send),
) -> Result<(), ExecError> {
    let physical = |e: &EcuAddress| {
        crate::isotp::config_auto_id(e.request_id).map_err(|e| ExecError::Invalid(e.to_string()))
    };
    if !plan.functional {
        let ecu = plan
            .ecus
            .first()
            .ok_or_else(|| ExecError::Invalid("no ECU to send to".into()))?;
        let id = physical(ecu)?;
        let responder = crate::isotp::config_auto_id(ecu.response_id)
            .map_err(|e| ExecError::Invalid(e.to_string()))?;
        let answer = match tester.request(id, request).await {
            Ok(m) => Answer::Positive(m),
            Err(Error::Uds(UdsError::Negative { nrc, .. })) => Answer::Negative(nrc),
            Err(e) => return Err(ExecError::from_error(e)),
        };
        on_answer(&EcuAnswer { responder, answer });
        return Ok(());
    }
    if request.len() <= SINGLE_FRAME_MAX {
        return tester
            .request_functional(request, |a| on_answer(a))
            .await
            .map(|_| ())
            .map_err(ExecError::from_error);
    }
    if plan.ecus.is_empty() {
        return Err(ExecError::Invalid(format!(
            "a {}-byte request does not fit a functional single frame; name an ECU \
             (params.ecu or params.ecuAddress)",
            request.len()
        )));
    }
    // Too long for one functional frame: each ECU in turn; an ECU that does not answer is
    // left out, and only no answer at all is a timeout.
    let mut answered = false;
    for ecu in &plan.ecus {
        let responder = crate::isotp::config_auto_id(ecu.response_id)
            .map_err(|e| ExecError::Invalid(e.to_string()))?;
        let answer = match tester.request(physical(ecu)?, request).await {
            Ok(m) => Answer::Positive(m),
            Err(Error::Uds(UdsError::Negative { nrc, .. })) => Answer::Negative(nrc),
            Err(Error::Uds(UdsError::Timeout { .. })) => continue,
            Err(e) => return Err(ExecError::from_error(e)),
        };
        answered = true;
        on_answer(&EcuAnswer { responder, answer });
    }
    if answered {
        Ok(())
    } else {
        Err(ExecError::Timeout)
    }
}

/// `ReadDataByID` with a list: one request per DID, one response per ECU with every value.
async fn read_did_list<B: CanBus>(
    tester: &mut UdsTester<B>,
    plan: &ExecPlan,
    dids: &[u16],
    out: &mut Streamer<'_>,
) -> Result<(), ExecError> {
    // Per ECU, in first-answer order: its values (or refusals) by DID.
    let mut per_ecu: Vec<(String, Vec<Value>, bool)> = Vec::new();
    let mut first_error: Option<ExecError> = None;
    for &did in dids {
        let request = [0x22, (did >> 8) as u8, did as u8];
        let mut on_answer = |a: &EcuAnswer| {
            let ecu = plan.name_of(a.responder);
            let (entry, ok) = match &a.answer {
                Answer::Positive(m) => match did_value(m, did) {
                    Ok(v) => (v, true),
                    Err(e) => (did_error(did, &e), false),
                },
                Answer::Negative(nrc) => (did_error(did, &ExecError::Negative(*nrc)), false),
            };
            if !ok && first_error.is_none() {
                first_error = Some(match &a.answer {
                    Answer::Negative(nrc) => ExecError::Negative(*nrc),
                    Answer::Positive(_) => ExecError::Malformed(format!("DID 0x{did:04X}")),
                });
            }
            match per_ecu.iter_mut().find(|(n, _, _)| *n == ecu) {
                Some((_, values, any_ok)) => {
                    values.push(entry);
                    *any_ok |= ok;
                }
                None => per_ecu.push((ecu, vec![entry], ok)),
            }
        };
        match ask(tester, plan, &request, &mut on_answer).await {
            Ok(()) => {}
            // A functional DID nobody has is not answered at all (suppressed NRC).
            Err(ExecError::Timeout) if plan.functional || dids.len() > 1 => {
                first_error.get_or_insert(ExecError::Timeout);
            }
            Err(e) => return Err(e),
        }
    }
    if !per_ecu.iter().any(|(_, _, ok)| *ok) {
        return Err(first_error.unwrap_or(ExecError::Timeout));
    }
    for (ecu, values, _) in per_ecu {
        out.push(json!({"ecu": ecu, "values": values}));
    }
    Ok(())
}

fn did_error(did: u16, e: &ExecError) -> Value {
    json!({"did": did, "didHex": format!("{did:04X}"), "error": e.reason()})
}

/// One DID's value object from a `0x62` answer to a single-DID request.
fn did_value(message: &[u8], did: u16) -> Result<Value, ExecError> {
    let values = decode_did_values(
        message.get(1..).unwrap_or_default(),
        &[did],
        &BTreeMap::new(),
    )
    .map_err(ExecError::Malformed)?;
    let [v] = values.as_slice() else {
        return Err(ExecError::Malformed(format!(
            "{} values for one DID",
            values.len()
        )));
    };
    let mut obj = Map::new();
    obj.insert("did".into(), json!(v.did));
    obj.insert("didHex".into(), json!(format!("{:04X}", v.did)));
    obj.insert("hex".into(), json!(hex::encode_upper(&v.data)));
    if let Some(text) = printable(&v.data) {
        obj.insert("ascii".into(), json!(text));
    }
    Ok(Value::Object(obj))
}

/// The value as text when every byte is printable ASCII (and there is at least one).
fn printable(data: &[u8]) -> Option<String> {
    (!data.is_empty() && data.iter().all(|b| (0x20..=0x7E).contains(b)))
        .then(|| String::from_utf8_lossy(data).into_owned())
}

/// The response JSON for one ECU's positive answer `message` to a command of `kind`.
fn render(kind: &CommandKind, ecu: &str, message: &[u8]) -> Result<Value, ExecError> {
    let body = message.get(1..).unwrap_or_default();
    Ok(match kind {
        CommandKind::ReadDtc { .. } => {
            let (_, dtcs) = decode_dtc_report(body).map_err(ExecError::Malformed)?;
            let dtcs: Vec<Value> = dtcs
                .iter()
                .map(|d| {
                    json!({
                        "dtcCode": d.dtc.sae_code(),
                        "ftb": d.dtc.ftb(),
                        "status": d.status.0,
                        "description": d.dtc.description(),
                    })
                })
                .collect();
            json!({"ecu": ecu, "dtcs": dtcs})
        }
        CommandKind::ClearDtc { group } => json!({"ecu": ecu, "cleared": true, "group": group}),
        CommandKind::ReadDataById { dids, .. } => {
            let did = dids.first().copied().unwrap_or_default();
            let mut v = did_value(message, did)?;
            if let Value::Object(m) = &mut v {
                let mut with_ecu = Map::new();
                with_ecu.insert("ecu".into(), json!(ecu));
                with_ecu.append(m);
                v = Value::Object(with_ecu);
            }
            v
        }
        CommandKind::DiagnosticSessionControl { .. }
        | CommandKind::EcuReset { .. }
        | CommandKind::TesterPresent
        | CommandKind::Raw(_) => json!({"ecu": ecu, "hex": hex::encode_upper(message)}),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::transport::virtual_bus::{OverflowPolicy, VirtualBus, VirtualPort};
    /// The test vehicle shared with the integration tests (engine and abs).
    use crate::uds::ecu::ENGINE_ABS as PROFILE;
    use crate::uds::ecu::{EcuProfile, engine_abs, run_ecus};

    /// The ECUs of [`PROFILE`], as a vehicle's `ecus` list names them.
    fn vehicle() -> Vec<EcuAddress> {
        engine_abs().addresses()
    }

    fn timing() -> UdsTiming {
        UdsTiming {
            p2: Duration::from_millis(200),
            p2_star: Duration::from_secs(3),
        }
    }

    /// The profile's ECUs on a virtual bus, and a port for testers.
    struct Rig {
        bus: VirtualBus,
        stop: Option<oneshot::Sender<()>>,
    }

    impl Rig {
        fn start(profile: &str) -> Rig {
            let bus = VirtualBus::new();
            let port = bus.port("ecus", 256, OverflowPolicy::Backpressure);
            let profile: EcuProfile = serde_norway::from_str(profile).unwrap();
            let (tx, rx) = oneshot::channel::<()>();
            tokio::spawn(async move {
                run_ecus(port, &profile, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
            Rig {
                bus,
                stop: Some(tx),
            }
        }

        /// `run` for the ECUs of `vehicle()`, which must succeed.
        async fn ok(&self, name: &str, params: Value) -> Vec<(Value, bool)> {
            self.run(name, params, &vehicle()).await.unwrap()
        }

        /// `run` for the ECUs of `vehicle()`, which must fail.
        async fn err(&self, name: &str, params: Value) -> ExecError {
            self.run(name, params, &vehicle()).await.unwrap_err()
        }

        async fn run(
            &self,
            name: &str,
            params: Value,
            ecus: &[EcuAddress],
        ) -> Result<Vec<(Value, bool)>, ExecError> {
            let command = DiagCommand::parse(name, &params).unwrap();
            let plan = ExecPlan::new(&command, ecus)?;
            let port: VirtualPort = self.bus.port("tester", 256, OverflowPolicy::Backpressure);
            let mut tester = UdsTester::new(port, plan.tester_core(timing())?);
            let mut got = Vec::new();
            let n = execute(&mut tester, &plan, &command, &mut |v, last| {
                got.push((v, last))
            })
            .await?;
            assert_eq!(n as usize, got.len());
            assert!(got.last().unwrap().1, "the last response is final");
            assert_eq!(got.iter().filter(|(_, f)| *f).count(), 1);
            Ok(got)
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn read_dtc_physical_has_the_contract_shape() {
        let rig = Rig::start(PROFILE);
        let got = rig.ok("ReadDTC", json!({"ecu": "engine"})).await;
        assert_eq!(
            got,
            [(
                json!({"ecu": "engine", "dtcs": [
                    {"dtcCode": "P0420", "ftb": 0, "status": 47,
                     "description": "Catalyst System Efficiency Below Threshold"},
                    {"dtcCode": "U0100", "ftb": 0, "status": 9,
                     "description": "Lost Communication With ECM/PCM \"A\""},
                    {"dtcCode": "P0300", "ftb": 0, "status": 8,
                     "description": "Random/Multiple Cylinder Misfire Detected"},
                    {"dtcCode": "P0171", "ftb": 0, "status": 36,
                     "description": "System Too Lean (Bank 1)"},
                    {"dtcCode": "P1234", "ftb": 22, "status": 1, "description": null},
                ]}),
                true
            )]
        );
        // The status mask goes to the ECU: only confirmed (bit 3) DTCs.
        let got = rig
            .run(
                "ReadDTC",
                json!({"ecuAddress": "0x7E0", "status_mask": 8}),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(got[0].0["ecu"], "0x7E0");
        let codes: Vec<&str> = got[0].0["dtcs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["dtcCode"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["P0420", "U0100", "P0300"]);
    }

    #[tokio::test(start_paused = true)]
    async fn functional_read_dtc_streams_each_ecu_last_final() {
        let rig = Rig::start(PROFILE);
        // The abs ECU answers response-pending for 300 ms: longer than P2, inside P2*.
        let got = rig.ok("ReadDTC", json!({})).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0["ecu"], "engine");
        assert!(!got[0].1);
        assert_eq!(got[1].0["ecu"], "abs");
        assert_eq!(got[1].0["dtcs"][0]["dtcCode"], "C0035");
        // Without an ECU list: 0x7DF and whoever answers in the OBD range, named by id.
        let got = rig.run("TesterPresent", json!({}), &[]).await.unwrap();
        let mut names: Vec<&str> = got
            .iter()
            .map(|(v, _)| v["ecu"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["0x7E8", "0x7E9"]);
        assert_eq!(got[0].0["hex"], "7E00");
    }

    #[tokio::test(start_paused = true)]
    async fn clear_dtc_and_read_again() {
        let rig = Rig::start(PROFILE);
        let got = rig.ok("ClearDTC", json!({"ecu": "engine"})).await;
        assert_eq!(
            got[0].0,
            json!({"ecu": "engine", "cleared": true, "group": 16777215})
        );
        let got = rig.ok("ReadDTC", json!({"ecu": "engine"})).await;
        assert_eq!(got[0].0, json!({"ecu": "engine", "dtcs": []}));
    }

    #[tokio::test(start_paused = true)]
    async fn read_data_by_id_single_and_list() {
        let rig = Rig::start(PROFILE);
        let got = rig
            .ok("ReadDataByID", json!({"ecu": "engine", "did": "0xF190"}))
            .await;
        assert_eq!(
            got[0].0,
            json!({"ecu": "engine", "did": 61840, "didHex": "F190",
                   "hex": hex::encode_upper("1HGCM82633A004352"), "ascii": "1HGCM82633A004352"})
        );
        let got = rig
            .ok(
                "ReadDataByID",
                json!({"ecu": "engine", "did": [0xF40D, 0xF190, 0x1234]}),
            )
            .await;
        assert_eq!(
            got[0].0,
            json!({"ecu": "engine", "values": [
                {"did": 0xF40D, "didHex": "F40D", "hex": "3C", "ascii": "<"},
                {"did": 0xF190, "didHex": "F190", "hex": hex::encode_upper("1HGCM82633A004352"),
                 "ascii": "1HGCM82633A004352"},
                {"did": 0x1234, "didHex": "1234", "error": "requestOutOfRange"},
            ]})
        );
        // Every DID refused: the command fails with the NRC.
        let err = rig
            .err(
                "ReadDataByID",
                json!({"ecu": "engine", "did": [0x1234, 0x5678]}),
            )
            .await;
        assert_eq!(err.reason(), "requestOutOfRange");
        // Functionally, a list: one response per ECU with its values.
        let got = rig.ok("ReadDataByID", json!({"did": [0xF190]})).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0["values"][0]["ascii"], "ABS-UNIT-0001");
    }

    #[tokio::test(start_paused = true)]
    async fn session_reset_tester_present_and_raw() {
        let rig = Rig::start(PROFILE);
        let one = |got: Vec<(Value, bool)>| got[0].0["hex"].as_str().unwrap().to_owned();
        let session = rig
            .ok(
                "DiagnosticSessionControl",
                json!({"ecu": "engine", "session": "extended"}),
            )
            .await;
        assert!(one(session).starts_with("5003"));
        let reset = rig.ok("ECUReset", json!({"ecu": "engine"})).await;
        assert!(one(reset).starts_with("5101"));
        let tp = rig.ok("TesterPresent", json!({"ecu": "engine"})).await;
        assert_eq!(one(tp), "7E00");
        let raw = rig
            .ok("UdsRequest", json!({"ecu": "engine", "hex": "22F40D"}))
            .await;
        assert_eq!(one(raw), "62F40D3C");
        // A raw request the ECU does not support: the NRC's name.
        let err = rig
            .err("UdsRequest", json!({"ecu": "engine", "hex": "2701"}))
            .await;
        assert_eq!(err.reason(), "serviceNotSupported");
    }

    #[tokio::test(start_paused = true)]
    async fn nrc_timeout_and_unknown_ecu() {
        let rig = Rig::start(PROFILE);
        let err = rig
            .err("ReadDataByID", json!({"ecu": "engine", "did": 0x1234}))
            .await;
        assert_eq!(err, ExecError::Negative(Nrc::REQUEST_OUT_OF_RANGE));
        assert_eq!(err.reason(), "requestOutOfRange");
        // Nobody on 0x7E5.
        let err = rig.err("ReadDTC", json!({"ecuAddress": 0x7E5})).await;
        assert_eq!(err.reason(), "timeout");
        let err = rig.err("ReadDTC", json!({"ecu": "gearbox"})).await;
        assert_eq!(
            err.reason(),
            "unknown_ecu: gearbox (the vehicle has: engine, abs)"
        );
        // Functionally, an unknown DID is suppressed by every ECU: no answer at all.
        let err = rig.err("ReadDataByID", json!({"did": 0x1234})).await;
        assert_eq!(err, ExecError::Timeout);
        // A functional request too long for one frame goes to each listed ECU in turn…
        let got = rig
            .ok("UdsRequest", json!({"hex": "22F190F40DF190F40D"}))
            .await;
        let names: Vec<&str> = got
            .iter()
            .map(|(r, _)| r["ecu"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["engine", "abs"]);
        assert!(got[0].0["hex"].as_str().unwrap().starts_with("62F190"));
        // …and without a list it cannot be sent.
        let err = rig
            .run("UdsRequest", json!({"hex": "22F190F40DF190F40D"}), &[])
            .await
            .unwrap_err();
        assert!(err.reason().starts_with("invalid_command: "), "{err}");
    }

    #[test]
    fn queue_keys() {
        let v = vehicle();
        let plan = |name: &str, p: Value| {
            ExecPlan::new(&DiagCommand::parse(name, &p).unwrap(), &v).unwrap()
        };
        assert_eq!(plan("ReadDTC", json!({"ecu": "abs"})).queue_key(), "0x7E1");
        assert_eq!(
            plan("ReadDTC", json!({"ecuAddress": 0x7E0})).queue_key(),
            "0x7E0"
        );
        assert_eq!(plan("ReadDTC", json!({})).queue_key(), "*");
    }
}
