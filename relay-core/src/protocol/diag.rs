//! The diagnostics channel of the data plane (protocol version 1): how the server hands a
//! vehicle command to the agent whose dongle reaches the vehicle's bus, and how the agent
//! streams the ECUs' answers back. The spec with examples is `docs/protocols/data-plane.md`
//! ("Diagnostics channel").
//!
//! An agent's diagnostics role opens its own `GET /ws/data` connection whose first message is
//! [`DiagHello`] (not the relay's `hello`); the server answers [`DiagWelcome`]. Then the server
//! sends [`CommandRequest`]s and the agent answers each with an optional
//! [`CommandStatusUpdate`], then either [`CommandResponse`]s (sequence numbers from 1, dense,
//! the last `is_final`) or one [`CommandFailed`]. All messages are JSON text.
//!
//! Like the relay messages: [`decode_diag`] validates and never panics (fuzz target
//! `diag_message`), [`encode_diag`] does the reverse; no I/O, no connection state.

use std::borrow::Cow;

use can_io::uds::EcuAddress;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::messages::ErrorMessage;
use super::{MAX_ERROR_MESSAGE_LEN, SUPPORTED_VERSIONS};
use crate::error::Error;

/// Largest diagnostics message accepted by [`decode_diag`], in bytes.
pub const MAX_DIAG_MESSAGE_BYTES: usize = 1024 * 1024;
/// Most dongles one `diag_hello` may announce.
pub const MAX_DIAG_DONGLES: usize = 1024;
/// Most ECUs one `command` may list.
pub const MAX_COMMAND_ECUS: usize = 256;
/// Longest `command_name` / ECU name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// One diagnostics-channel message; on the wire an object with a `type` tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DiagMessage {
    /// Agent → server, first message: the dongles whose bus this agent runs commands on.
    DiagHello(DiagHello),
    /// Server → agent answer to `diag_hello`.
    DiagWelcome(DiagWelcome),
    /// Server → agent: run a command.
    Command(CommandRequest),
    /// Agent → server: the command started on the bus.
    CommandStatus(CommandStatusUpdate),
    /// Agent → server: one answer.
    CommandResponse(CommandResponse),
    /// Agent → server: the command failed (a negative response, a timeout, a bus error).
    CommandFailed(CommandFailed),
    /// Either way: something was refused (the relay protocol's `error`).
    Error(ErrorMessage),
}

impl DiagMessage {
    /// The wire name of the message's `type` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            DiagMessage::DiagHello(_) => "diag_hello",
            DiagMessage::DiagWelcome(_) => "diag_welcome",
            DiagMessage::Command(_) => "command",
            DiagMessage::CommandStatus(_) => "command_status",
            DiagMessage::CommandResponse(_) => "command_response",
            DiagMessage::CommandFailed(_) => "command_failed",
            DiagMessage::Error(_) => "error",
        }
    }
}

/// `diag_hello`: version and the dongles (server-side ids) the agent serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagHello {
    /// Protocol version (1).
    pub version: u16,
    /// Dongle ids, as `GET /api/v1/agent/dongles/{id}` shows them.
    pub dongles: Vec<Uuid>,
}

/// `diag_welcome`: which announced dongles the server accepted and which it refused (not
/// announced by this agent's token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagWelcome {
    /// Protocol version (1).
    pub version: u16,
    /// Accepted dongles.
    pub dongles: Vec<Uuid>,
    /// Refused dongles.
    #[serde(default)]
    pub refused: Vec<Uuid>,
}

/// `command`: one command for one dongle's bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRequest {
    /// The command's id.
    pub command_id: Uuid,
    /// The dongle whose bus runs it.
    pub dongle_id: Uuid,
    /// One of [`can_io::uds::SUPPORTED_COMMANDS`].
    pub command_name: String,
    /// The user's params, as posted (parse with [`can_io::uds::DiagCommand::parse`]).
    #[serde(default)]
    pub command_params: Value,
    /// The vehicle's ECU list; empty: functional `0x7DF`, every answer on `0x7E8..=0x7EF`.
    #[serde(default)]
    pub ecus: Vec<EcuAddress>,
    /// 1 for the first try, 2 for the one re-send of a read-only command after a reconnect.
    pub attempt: u32,
    /// Unix milliseconds after which the server no longer waits for an answer.
    pub deadline_ms: u64,
}

/// The status an agent reports for a command it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentCommandStatus {
    /// The request is on the bus.
    InProgress,
}

/// `command_status`: the agent started the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandStatusUpdate {
    /// The command.
    pub command_id: Uuid,
    /// Its new status.
    pub status: AgentCommandStatus,
}

/// `command_response`: one answer (one ECU's, for a functional request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The command.
    pub command_id: Uuid,
    /// 1, 2, … without holes.
    pub sequence_number: u32,
    /// Whether this is the command's last response.
    pub is_final: bool,
    /// The response JSON object (`{"ecu", "dtcs": […]}` etc.).
    pub response: Value,
}

/// `command_failed`: the command ended without (further) responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFailed {
    /// The command.
    pub command_id: Uuid,
    /// An NRC name (`requestOutOfRange`), `timeout`, `bus_error: …`, `unknown_ecu: …`.
    pub error: String,
}

/// Decode and validate one diagnostics message (JSON). Never panics.
pub fn decode_diag(bytes: &[u8]) -> Result<DiagMessage, Error> {
    if bytes.len() > MAX_DIAG_MESSAGE_BYTES {
        return Err(Error::MessageTooLarge {
            size: bytes.len(),
            max: MAX_DIAG_MESSAGE_BYTES,
        });
    }
    let message: DiagMessage =
        serde_json::from_slice(bytes).map_err(|e| Error::ProtocolDecode {
            encoding: "json",
            reason: e.to_string(),
        })?;
    validate(&message)?;
    Ok(message)
}

/// Encode a diagnostics message as JSON text.
pub fn encode_diag(message: &DiagMessage) -> Result<String, Error> {
    serde_json::to_string(message).map_err(|e| Error::ProtocolEncode {
        encoding: "json",
        reason: e.to_string(),
    })
}

/// Whether the first message of a `/ws/data` connection opens the diagnostics channel (its
/// `type` is `diag_hello`) rather than the relay (`hello`). Looks at the tag only.
pub fn is_diag_hello(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct TypeProbe<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
    }
    bytes.len() <= MAX_DIAG_MESSAGE_BYTES
        && serde_json::from_slice::<TypeProbe<'_>>(bytes).is_ok_and(|p| p.kind == "diag_hello")
}

fn invalid(message_type: &'static str, reason: impl Into<String>) -> Error {
    Error::ProtocolInvalid {
        message_type,
        reason: reason.into(),
    }
}

fn check_version(version: u16) -> Result<(), Error> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(Error::UnsupportedProtocolVersion {
            got: u64::from(version),
            supported: SUPPORTED_VERSIONS,
        })
    }
}

fn check_text(
    message_type: &'static str,
    field: &str,
    text: &str,
    max: usize,
) -> Result<(), Error> {
    if text.is_empty() || text.len() > max {
        return Err(invalid(
            message_type,
            format!("{field} must be 1..={max} bytes"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(
            message_type,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(())
}

fn validate(message: &DiagMessage) -> Result<(), Error> {
    let t = message.type_name();
    match message {
        DiagMessage::DiagHello(h) => {
            check_version(h.version)?;
            if h.dongles.len() > MAX_DIAG_DONGLES {
                return Err(invalid(
                    t,
                    format!("at most {MAX_DIAG_DONGLES} dongles per connection"),
                ));
            }
            Ok(())
        }
        DiagMessage::DiagWelcome(w) => {
            check_version(w.version)?;
            if w.dongles.len() + w.refused.len() > MAX_DIAG_DONGLES {
                return Err(invalid(t, format!("at most {MAX_DIAG_DONGLES} dongles")));
            }
            Ok(())
        }
        DiagMessage::Command(c) => {
            check_text(t, "command_name", &c.command_name, MAX_NAME_LEN)?;
            if !(c.command_params.is_object() || c.command_params.is_null()) {
                return Err(invalid(t, "command_params must be an object"));
            }
            if c.ecus.len() > MAX_COMMAND_ECUS {
                return Err(invalid(t, format!("at most {MAX_COMMAND_ECUS} ecus")));
            }
            for ecu in &c.ecus {
                check_text(t, "ecus[].name", &ecu.name, MAX_NAME_LEN)?;
            }
            if c.attempt == 0 {
                return Err(invalid(t, "attempt starts at 1"));
            }
            Ok(())
        }
        DiagMessage::CommandStatus(_) => Ok(()),
        DiagMessage::CommandResponse(r) => {
            if r.sequence_number == 0 {
                return Err(invalid(t, "sequence numbers start at 1"));
            }
            if !r.response.is_object() {
                return Err(invalid(t, "response must be a JSON object"));
            }
            Ok(())
        }
        DiagMessage::CommandFailed(f) => check_text(t, "error", &f.error, MAX_ERROR_MESSAGE_LEN),
        DiagMessage::Error(e) => {
            if e.message.len() > MAX_ERROR_MESSAGE_LEN {
                Err(invalid(
                    t,
                    format!("message longer than {MAX_ERROR_MESSAGE_LEN} bytes"),
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Fuzz entry point (`fuzz/fuzz_targets/diag_message.rs`): decode; whatever decodes
/// re-encodes and decodes to the same message.
#[cfg(any(test, fuzzing))]
pub fn fuzz_decode_diag(data: &[u8]) {
    let _ = is_diag_hello(data);
    if let Ok(message) = decode_diag(data) {
        let Ok(text) = encode_diag(&message) else {
            panic!("a decoded message must encode: {message:?}");
        };
        match decode_diag(text.as_bytes()) {
            Ok(again) => assert_eq!(again, message, "round trip changed {text}"),
            Err(e) => panic!("re-decoding {text} failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::protocol::ErrorCode;

    const DONGLE: &str = "5b0c3f0e-4d1a-4c2b-9a8e-0f1e2d3c4b5a";
    const CMD: &str = "0d6c5a1e-9b8f-4e7d-8c6b-5a4f3e2d1c0b";

    /// The spec's examples (docs/protocols/data-plane.md), which are also the fuzz seeds.
    pub(crate) fn examples() -> Vec<String> {
        vec![
            json!({"type": "diag_hello", "version": 1, "dongles": [DONGLE]}),
            json!({"type": "diag_welcome", "version": 1, "dongles": [DONGLE], "refused": []}),
            json!({"type": "command", "command_id": CMD, "dongle_id": DONGLE,
                   "command_name": "ReadDTC", "command_params": {"ecu": "engine"},
                   "ecus": [{"name": "engine", "request_id": 2016, "response_id": 2024}],
                   "attempt": 1, "deadline_ms": 1_765_000_000_000_u64}),
            json!({"type": "command_status", "command_id": CMD, "status": "in_progress"}),
            json!({"type": "command_response", "command_id": CMD, "sequence_number": 1,
                   "is_final": true, "response": {"ecu": "engine", "dtcs": [
                       {"dtcCode": "P0420", "ftb": 0, "status": 47,
                        "description": "Catalyst System Efficiency Below Threshold"}]}}),
            json!({"type": "command_failed", "command_id": CMD, "error": "requestOutOfRange"}),
            json!({"type": "error", "code": "unauthorized", "message": "not your dongle"}),
        ]
        .into_iter()
        .map(|v| v.to_string())
        .collect()
    }

    #[test]
    fn examples_decode_and_round_trip() {
        let names: Vec<&str> = examples()
            .iter()
            .map(|e| {
                fuzz_decode_diag(e.as_bytes());
                decode_diag(e.as_bytes()).unwrap().type_name()
            })
            .collect();
        assert_eq!(
            names,
            [
                "diag_hello",
                "diag_welcome",
                "command",
                "command_status",
                "command_response",
                "command_failed",
                "error"
            ]
        );
        let DiagMessage::Command(c) = decode_diag(examples()[2].as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(c.ecus[0].request_id, 0x7E0);
        assert_eq!(c.attempt, 1);
        let DiagMessage::Error(e) = decode_diag(examples()[6].as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::Unauthorized);
    }

    #[test]
    fn fuzz_seed_corpus_holds_every_message_type() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/diag_message");
        let mut types: Vec<&str> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                fuzz_decode_diag(&bytes);
                decode_diag(&bytes).unwrap().type_name()
            })
            .collect();
        types.sort_unstable();
        assert_eq!(types.len(), 7, "{types:?}");
        types.dedup();
        assert_eq!(types.len(), 7, "{types:?}");
    }

    #[test]
    fn the_first_message_tells_diag_from_relay() {
        assert!(is_diag_hello(examples()[0].as_bytes()));
        assert!(!is_diag_hello(
            br#"{"type":"hello","version":1,"group_id":"g","side":"vehicle"}"#
        ));
        assert!(!is_diag_hello(b"not json"));
    }

    #[test]
    fn invalid_messages_are_refused_with_the_reason() {
        let bad = |v: Value| {
            decode_diag(v.to_string().as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad(json!({"type": "diag_hello", "version": 2, "dongles": []})).contains("version 2")
        );
        assert!(
            bad(json!({"type": "diag_hello", "version": 1, "dongles": ["nope"]})).contains("UUID")
        );
        assert!(
            bad(
                json!({"type": "command_response", "command_id": CMD, "sequence_number": 0,
                       "is_final": true, "response": {}})
            )
            .contains("start at 1")
        );
        assert!(
            bad(
                json!({"type": "command_response", "command_id": CMD, "sequence_number": 1,
                       "is_final": true, "response": [1]})
            )
            .contains("object")
        );
        assert!(
            bad(json!({"type": "command_failed", "command_id": CMD, "error": ""}))
                .contains("error")
        );
        assert!(
            bad(json!({"type": "command_status", "command_id": CMD, "status": "completed"}))
                .contains("unknown variant")
        );
        assert!(bad(json!({"type": "frames"})).contains("unknown variant"));
        let too_big = vec![b' '; MAX_DIAG_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode_diag(&too_big),
            Err(Error::MessageTooLarge { .. })
        ));
        let mut cmd: Value = serde_json::from_str(&examples()[2]).unwrap();
        cmd["attempt"] = json!(0);
        assert!(bad(cmd.clone()).contains("attempt"));
        cmd["attempt"] = json!(1);
        cmd["command_name"] = json!("a\nb");
        assert!(bad(cmd).contains("control"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            fuzz_decode_diag(&bytes);
        }

        #[test]
        fn damaged_examples_never_panic(which in 0usize..7, at in 0usize..400, byte in any::<u8>()) {
            let mut bytes = examples()[which].clone().into_bytes();
            let at = at % bytes.len();
            bytes[at] = byte;
            fuzz_decode_diag(&bytes);
        }
    }
}
