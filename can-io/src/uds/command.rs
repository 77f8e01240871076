//! The commands API's diagnostic commands, typed: `(command_name, command_params)` as a user
//! posts them to `POST /api/v1/commands`, parsed into a [`DiagCommand`] that knows its UDS
//! request bytes, its target ECU and its time to live.
//!
//! | `command_name`             | params (all optional unless noted)                  | request            |
//! |----------------------------|-----------------------------------------------------|--------------------|
//! | `ReadDTC`                  | `status_mask` (default `0xFF`)                      | `19 02 mask`       |
//! | `ClearDTC`                 | `group` (default `0xFFFFFF`)                        | `14 gg gg gg`      |
//! | `ReadDataByID`             | `did` (**required**: one DID or a list)             | `22 did…`          |
//! | `DiagnosticSessionControl` | `session` (**required**: 1–0x7F or `default`, `programming`, `extended`, `safety`) | `10 session` |
//! | `ECUReset`                 | `reset_type` (default 1; or `hard`, `keyOffOn`, `soft`) | `11 type`      |
//! | `TesterPresent`            | —                                                   | `3E 00`            |
//! | `UdsRequest`               | `hex` (**required**: the raw request, e.g. `22F190`) | as given          |
//!
//! Every command also takes `ecu` (a name from the vehicle's ECU list), `ecuAddress` (a
//! request CAN id; the response id is derived) and `ttl_s` (seconds the command may wait for
//! an offline vehicle, default 60). Numbers may be JSON numbers or strings (`"0x7E0"`).
//! Unknown parameters are refused, so a typo is not silently ignored.
//!
//! This module parses and maps; it does not send anything or decode answers (that is the
//! agent's job, with [`super::UdsTester`]).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::ecu::parse_int_text;
use super::service::{ALL_DTCS, UdsRequest};

/// The `command_name`s this module knows, in the order errors list them.
pub const SUPPORTED_COMMANDS: &[&str] = &[
    "ReadDTC",
    "ClearDTC",
    "ReadDataByID",
    "DiagnosticSessionControl",
    "ECUReset",
    "TesterPresent",
    "UdsRequest",
];

/// The default `params.ttl_s`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// The largest `params.ttl_s` accepted (one day).
pub const MAX_TTL_S: u64 = 86_400;
/// The most DIDs one `ReadDataByID` may ask for.
pub const MAX_DIDS: usize = 64;
/// The longest raw `UdsRequest`, in bytes (the ISO-TP limit for classic addressing).
pub const MAX_RAW_REQUEST: usize = 4095;
/// The functional request id of 11-bit OBD/UDS (`0x7DF`).
pub const FUNCTIONAL_REQUEST_ID: u32 = 0x7DF;

const COMMON_PARAMS: &[&str] = &["ecu", "ecuAddress", "ttl_s"];

/// Why `(command_name, command_params)` is not a command. The server answers `422` with the
/// text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandParamsError {
    /// `command_name` is not one of [`SUPPORTED_COMMANDS`].
    #[error("unknown command_name {name:?}; supported: {}", SUPPORTED_COMMANDS.join(", "))]
    UnknownCommand {
        /// The name given.
        name: String,
    },
    /// A parameter is missing, of the wrong type or out of range.
    #[error("{field}: {reason}")]
    Field {
        /// The parameter's path, e.g. `command_params.status_mask`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl CommandParamsError {
    /// The offending field's path, if the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            CommandParamsError::Field { field, .. } => Some(field),
            CommandParamsError::UnknownCommand { .. } => None,
        }
    }

    fn field_error(name: &str, reason: impl Into<String>) -> Self {
        CommandParamsError::Field {
            field: format!("command_params.{name}"),
            reason: reason.into(),
        }
    }
}

/// What a command does (its service and that service's parameters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// `ReadDTC`: ReadDTCInformation reportDTCByStatusMask.
    ReadDtc {
        /// Status mask (`0xFF`: every DTC).
        status_mask: u8,
    },
    /// `ClearDTC`: ClearDiagnosticInformation.
    ClearDtc {
        /// The 3-byte group (`0xFFFFFF`: all).
        group: u32,
    },
    /// `ReadDataByID`: ReadDataByIdentifier of one or several DIDs.
    ReadDataById {
        /// The DIDs, in request order.
        dids: Vec<u16>,
        /// Whether the user gave a list (the answer then has a `values` list).
        list: bool,
    },
    /// `DiagnosticSessionControl`.
    DiagnosticSessionControl {
        /// Session type.
        session: u8,
    },
    /// `ECUReset`.
    EcuReset {
        /// Reset type.
        reset_type: u8,
    },
    /// `TesterPresent` (always asks for the positive answer).
    TesterPresent,
    /// `UdsRequest`: raw bytes, service id first.
    Raw(Vec<u8>),
}

/// One ECU of a vehicle: its name and the CAN ids a tester uses with it. On the wire (the
/// vehicle's `ecus` list, the diagnostics channel) ids are numbers; when parsing, strings such
/// as `"0x7E0"` are accepted too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcuAddress {
    /// The name users pick it by (`params.ecu`).
    pub name: String,
    /// Tester → ECU id (29-bit when above `0x7FF`).
    #[serde(deserialize_with = "can_id")]
    pub request_id: u32,
    /// ECU → tester id.
    #[serde(deserialize_with = "can_id")]
    pub response_id: u32,
}

fn can_id<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    let n = json_uint(&v).map_err(serde::de::Error::custom)?;
    u32::try_from(n)
        .ok()
        .filter(|&n| n <= 0x1FFF_FFFF)
        .ok_or_else(|| serde::de::Error::custom(format!("{n:#X} is not a CAN id")))
}

impl EcuAddress {
    /// The ECU answering on the usual id for `request_id`: `+ 8` for an 11-bit id, the
    /// source/target swap for a 29-bit normal-fixed id (`0x18DA TA SA` → `0x18DA SA TA`), else
    /// `+ 8` as well. Named after its request id (`0x7E0`).
    pub fn from_request_id(request_id: u32) -> Result<Self, String> {
        if request_id > 0x1FFF_FFFF {
            return Err(format!("{request_id:#X} is not a CAN id"));
        }
        let response_id = if request_id <= 0x7FF {
            if request_id + 8 > 0x7FF {
                return Err(format!(
                    "{request_id:#X}: the response id {:#X} would not be 11-bit",
                    request_id + 8
                ));
            }
            request_id + 8
        } else if request_id & 0x1FFF_0000 == 0x18DA_0000 {
            let ta = (request_id >> 8) & 0xFF;
            let sa = request_id & 0xFF;
            0x18DA_0000 | (sa << 8) | ta
        } else {
            request_id + 8
        };
        Ok(EcuAddress {
            name: format!("0x{request_id:X}"),
            request_id,
            response_id,
        })
    }
}

/// Which ECU(s) a command goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CommandTarget {
    /// Neither `ecu` nor `ecuAddress`: a functional request to every ECU.
    Functional,
    /// `params.ecu`: one ECU of the vehicle's list, by name.
    Named(String),
    /// `params.ecuAddress`: one ECU by its request id.
    Address(EcuAddress),
}

impl CommandTarget {
    /// The ECUs the command addresses, given the vehicle's list: the named one, the addressed
    /// one, or for a functional request the whole list (empty: functional `0x7DF`). An
    /// unknown name is an error naming the field and listing the names.
    pub fn resolve(
        &self,
        vehicle_ecus: &[EcuAddress],
    ) -> Result<Vec<EcuAddress>, CommandParamsError> {
        match self {
            CommandTarget::Functional => Ok(vehicle_ecus.to_vec()),
            CommandTarget::Address(a) => Ok(vec![a.clone()]),
            CommandTarget::Named(name) => vehicle_ecus
                .iter()
                .find(|e| &e.name == name)
                .map(|e| vec![e.clone()])
                .ok_or_else(|| {
                    let names: Vec<&str> = vehicle_ecus.iter().map(|e| e.name.as_str()).collect();
                    CommandParamsError::field_error(
                        "ecu",
                        if names.is_empty() {
                            format!("unknown ECU {name:?}; the vehicle lists no ECUs")
                        } else {
                            format!(
                                "unknown ECU {name:?}; the vehicle has: {}",
                                names.join(", ")
                            )
                        },
                    )
                }),
        }
    }

    /// A key naming the ECU for one-command-at-a-time queueing: the ECU's name, `0xNNN` for an
    /// address, `*` for functional requests (which occupy every ECU).
    pub fn queue_key(&self) -> String {
        match self {
            CommandTarget::Functional => "*".to_owned(),
            CommandTarget::Named(n) => n.clone(),
            CommandTarget::Address(a) => a.name.clone(),
        }
    }
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiagCommand {
    /// What it does.
    pub kind: CommandKind,
    /// Where it goes.
    pub target: CommandTarget,
    /// How long it may wait for the vehicle (`params.ttl_s`).
    pub ttl: Duration,
}

impl DiagCommand {
    /// Parse a `command_name` and its `command_params` (an object, or `null` for none).
    pub fn parse(command_name: &str, params: &Value) -> Result<DiagCommand, CommandParamsError> {
        let empty = Map::new();
        let map = match params {
            Value::Object(m) => m,
            Value::Null => &empty,
            other => {
                return Err(CommandParamsError::Field {
                    field: "command_params".into(),
                    reason: format!("must be an object, not {}", json_type(other)),
                });
            }
        };
        let (kind, own): (CommandKind, &[&str]) = match command_name {
            "ReadDTC" => (
                CommandKind::ReadDtc {
                    status_mask: opt_u8(map, "status_mask")?.unwrap_or(0xFF),
                },
                &["status_mask"],
            ),
            "ClearDTC" => {
                let group = match map.get("group") {
                    None | Some(Value::Null) => ALL_DTCS,
                    Some(v) => uint_in(v, "group", ALL_DTCS.into())? as u32,
                };
                (CommandKind::ClearDtc { group }, &["group"])
            }
            "ReadDataByID" => {
                let (dids, list) = match map.get("did") {
                    None | Some(Value::Null) => {
                        return Err(CommandParamsError::field_error(
                            "did",
                            "required: a data identifier such as 0xF190 (or a list)",
                        ));
                    }
                    Some(Value::Array(items)) => {
                        if items.is_empty() || items.len() > MAX_DIDS {
                            return Err(CommandParamsError::field_error(
                                "did",
                                format!("a list of 1..={MAX_DIDS} data identifiers"),
                            ));
                        }
                        let mut dids = Vec::with_capacity(items.len());
                        for (i, v) in items.iter().enumerate() {
                            dids.push(uint_in(v, &format!("did[{i}]"), 0xFFFF)? as u16);
                        }
                        (dids, true)
                    }
                    Some(v) => (vec![uint_in(v, "did", 0xFFFF)? as u16], false),
                };
                (CommandKind::ReadDataById { dids, list }, &["did"])
            }
            "DiagnosticSessionControl" => {
                let session = match map.get("session") {
                    None | Some(Value::Null) => {
                        return Err(CommandParamsError::field_error(
                            "session",
                            "required: 1..=0x7F or default, programming, extended, safety",
                        ));
                    }
                    Some(Value::String(s)) if named_session(s).is_some() => {
                        named_session(s).unwrap_or(1)
                    }
                    Some(v) => uint_range(v, "session", 1, 0x7F)? as u8,
                };
                (
                    CommandKind::DiagnosticSessionControl { session },
                    &["session"],
                )
            }
            "ECUReset" => {
                let reset_type = match map.get("reset_type") {
                    None | Some(Value::Null) => 1,
                    Some(Value::String(s)) if named_reset(s).is_some() => {
                        named_reset(s).unwrap_or(1)
                    }
                    Some(v) => uint_range(v, "reset_type", 1, 0x7F)? as u8,
                };
                (CommandKind::EcuReset { reset_type }, &["reset_type"])
            }
            "TesterPresent" => (CommandKind::TesterPresent, &[]),
            "UdsRequest" => {
                let bytes = match map.get("hex") {
                    Some(Value::String(s)) => {
                        let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
                        let bytes = hex::decode(&clean).map_err(|e| {
                            CommandParamsError::field_error("hex", format!("not hex: {e}"))
                        })?;
                        if bytes.is_empty() || bytes.len() > MAX_RAW_REQUEST {
                            return Err(CommandParamsError::field_error(
                                "hex",
                                format!("a request of 1..={MAX_RAW_REQUEST} bytes"),
                            ));
                        }
                        bytes
                    }
                    None | Some(Value::Null) => {
                        return Err(CommandParamsError::field_error(
                            "hex",
                            "required: the request as hex, e.g. \"22F190\"",
                        ));
                    }
                    Some(other) => {
                        return Err(CommandParamsError::field_error(
                            "hex",
                            format!("must be a hex string, not {}", json_type(other)),
                        ));
                    }
                };
                (CommandKind::Raw(bytes), &["hex"])
            }
            other => {
                return Err(CommandParamsError::UnknownCommand {
                    name: other.to_owned(),
                });
            }
        };
        for key in map.keys() {
            if !own.contains(&key.as_str()) && !COMMON_PARAMS.contains(&key.as_str()) {
                let mut takes: Vec<&str> = own.to_vec();
                takes.extend_from_slice(COMMON_PARAMS);
                return Err(CommandParamsError::field_error(
                    key,
                    format!(
                        "unknown parameter; {command_name} takes {}",
                        takes.join(", ")
                    ),
                ));
            }
        }
        let target = match (map.get("ecu"), map.get("ecuAddress")) {
            (Some(e), Some(a)) if !e.is_null() && !a.is_null() => {
                return Err(CommandParamsError::field_error(
                    "ecuAddress",
                    "give either ecu or ecuAddress, not both",
                ));
            }
            (Some(Value::String(name)), _) => {
                if name.is_empty() || name.len() > 64 {
                    return Err(CommandParamsError::field_error(
                        "ecu",
                        "an ECU name of 1..=64 bytes",
                    ));
                }
                CommandTarget::Named(name.clone())
            }
            (Some(v), _) if !v.is_null() => {
                return Err(CommandParamsError::field_error(
                    "ecu",
                    format!("must be an ECU name (string), not {}", json_type(v)),
                ));
            }
            (_, Some(v)) if !v.is_null() => {
                let id = uint_in(v, "ecuAddress", 0x1FFF_FFFF)? as u32;
                CommandTarget::Address(
                    EcuAddress::from_request_id(id)
                        .map_err(|r| CommandParamsError::field_error("ecuAddress", r))?,
                )
            }
            _ => CommandTarget::Functional,
        };
        let ttl = match map.get("ttl_s") {
            None | Some(Value::Null) => DEFAULT_TTL,
            Some(v) => {
                let secs = v.as_f64().filter(|s| *s > 0.0 && *s <= MAX_TTL_S as f64);
                match secs {
                    Some(s) if v.is_number() => Duration::from_secs_f64(s),
                    _ => {
                        return Err(CommandParamsError::field_error(
                            "ttl_s",
                            format!("seconds, a number in (0, {MAX_TTL_S}]"),
                        ));
                    }
                }
            }
        };
        Ok(DiagCommand { kind, target, ttl })
    }

    /// The `command_name` this command parses from.
    pub fn name(&self) -> &'static str {
        match self.kind {
            CommandKind::ReadDtc { .. } => "ReadDTC",
            CommandKind::ClearDtc { .. } => "ClearDTC",
            CommandKind::ReadDataById { .. } => "ReadDataByID",
            CommandKind::DiagnosticSessionControl { .. } => "DiagnosticSessionControl",
            CommandKind::EcuReset { .. } => "ECUReset",
            CommandKind::TesterPresent => "TesterPresent",
            CommandKind::Raw(_) => "UdsRequest",
        }
    }

    /// The UDS request this command sends.
    pub fn request(&self) -> UdsRequest {
        match &self.kind {
            CommandKind::ReadDtc { status_mask } => UdsRequest::ReadDtcByStatusMask {
                status_mask: *status_mask,
            },
            CommandKind::ClearDtc { group } => {
                UdsRequest::ClearDiagnosticInformation { group: *group }
            }
            CommandKind::ReadDataById { dids, .. } => {
                UdsRequest::ReadDataByIdentifier { dids: dids.clone() }
            }
            CommandKind::DiagnosticSessionControl { session } => {
                UdsRequest::DiagnosticSessionControl { session: *session }
            }
            CommandKind::EcuReset { reset_type } => UdsRequest::EcuReset {
                reset_type: *reset_type,
            },
            CommandKind::TesterPresent => UdsRequest::TesterPresent {
                suppress_positive: false,
            },
            CommandKind::Raw(bytes) => UdsRequest::Raw(bytes.clone()),
        }
    }

    /// The request bytes (service id first). Parsing has checked everything encoding checks,
    /// so this does not fail for a parsed command.
    pub fn request_bytes(&self) -> Vec<u8> {
        self.request().encode().unwrap_or_default()
    }

    /// Whether sending the command twice is harmless: ReadDTC, ReadDataByID, TesterPresent,
    /// and raw `0x22` / `0x19` / `0x3E` requests. ClearDTC, session changes, resets and
    /// other raw requests are not.
    pub fn is_read_only(&self) -> bool {
        match &self.kind {
            CommandKind::ReadDtc { .. }
            | CommandKind::ReadDataById { .. }
            | CommandKind::TesterPresent => true,
            CommandKind::Raw(bytes) => matches!(bytes.first(), Some(0x22 | 0x19 | 0x3E)),
            _ => false,
        }
    }
}

impl fmt::Display for DiagCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            self.name(),
            hex::encode_upper(self.request_bytes())
        )
    }
}

/// The response JSON of commands, the same from the server's mock connector and from an
/// agent running the command on a bus (docs/protocols/data-plane.md, "Response shapes").
pub mod response {
    use serde_json::{Value, json};

    use crate::uds::dtc::DtcRecord;
    use crate::uds::service::DidValue;

    /// ReadDTC: `{"ecu", "dtcs": [{"dtcCode", "ftb", "status", "description"?}]}`
    /// (`description` for the generic codes `Dtc::description` knows).
    pub fn dtcs(ecu: &str, records: &[DtcRecord]) -> Value {
        let dtcs: Vec<Value> = records
            .iter()
            .map(|r| {
                let mut v = json!({
                    "dtcCode": r.dtc.sae_code(),
                    "ftb": r.dtc.ftb(),
                    "status": r.status.0,
                });
                if let Some(d) = r.dtc.description() {
                    v["description"] = json!(d);
                }
                v
            })
            .collect();
        json!({ "ecu": ecu, "dtcs": dtcs })
    }

    /// ClearDTC: `{"ecu", "cleared": true, "group"}`.
    pub fn cleared(ecu: &str, group: u32) -> Value {
        json!({ "ecu": ecu, "cleared": true, "group": group })
    }

    /// One DID's value: `{"did", "didHex", "hex", "ascii"?}` (`ascii` when every byte is
    /// printable ASCII).
    pub fn did_value(value: &DidValue) -> Value {
        let mut v = json!({
            "did": value.did,
            "didHex": format!("{:04X}", value.did),
            "hex": hex::encode_upper(&value.data),
        });
        if !value.data.is_empty() && value.data.iter().all(|b| (0x20..0x7F).contains(b)) {
            v["ascii"] = json!(String::from_utf8_lossy(&value.data));
        }
        v
    }

    /// ReadDataByID: one DID's fields with `ecu` (when one DID was asked for as a number), or
    /// `{"ecu", "values": [...]}` when a list was asked for.
    pub fn dids(ecu: &str, values: &[DidValue], list: bool) -> Value {
        match values {
            [one] if !list => {
                let mut v = did_value(one);
                v["ecu"] = json!(ecu);
                v
            }
            _ => json!({ "ecu": ecu, "values": values.iter().map(did_value).collect::<Vec<_>>() }),
        }
    }

    /// DiagnosticSessionControl, ECUReset, TesterPresent, UdsRequest: `{"ecu", "hex"}` of the
    /// positive response.
    pub fn raw(ecu: &str, positive_response: &[u8]) -> Value {
        json!({ "ecu": ecu, "hex": hex::encode_upper(positive_response) })
    }
}

fn named_session(s: &str) -> Option<u8> {
    match s {
        "default" => Some(1),
        "programming" => Some(2),
        "extended" => Some(3),
        "safety" => Some(4),
        _ => None,
    }
}

fn named_reset(s: &str) -> Option<u8> {
    match s {
        "hard" => Some(1),
        "keyOffOn" => Some(2),
        "soft" => Some(3),
        _ => None,
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A non-negative integer written as a JSON number or a string (`"0x7E0"`, `"2016"`).
fn json_uint(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a non-negative integer")),
        Value::String(s) => parse_int_text(s),
        other => Err(format!(
            "must be an integer or a string such as \"0xF190\", not {}",
            json_type(other)
        )),
    }
}

fn uint_range(v: &Value, field: &str, min: u64, max: u64) -> Result<u64, CommandParamsError> {
    let n = json_uint(v).map_err(|r| CommandParamsError::field_error(field, r))?;
    if n < min || n > max {
        return Err(CommandParamsError::field_error(
            field,
            format!("{n:#X} is out of range {min:#X}..={max:#X}"),
        ));
    }
    Ok(n)
}

fn uint_in(v: &Value, field: &str, max: u64) -> Result<u64, CommandParamsError> {
    uint_range(v, field, 0, max)
}

fn opt_u8(map: &Map<String, Value>, field: &str) -> Result<Option<u8>, CommandParamsError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => uint_in(v, field, 0xFF).map(|n| Some(n as u8)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn parse(name: &str, params: Value) -> Result<DiagCommand, CommandParamsError> {
        DiagCommand::parse(name, &params)
    }

    fn field(err: CommandParamsError) -> String {
        err.field().unwrap().to_owned()
    }

    #[test]
    fn each_command_maps_to_its_request_bytes() {
        let bytes = |name, params| parse(name, params).unwrap().request_bytes();
        assert_eq!(bytes("ReadDTC", json!({})), [0x19, 0x02, 0xFF]);
        assert_eq!(
            bytes("ReadDTC", json!({"status_mask": "0x08"})),
            [0x19, 0x02, 0x08]
        );
        assert_eq!(bytes("ClearDTC", Value::Null), [0x14, 0xFF, 0xFF, 0xFF]);
        assert_eq!(
            bytes("ClearDTC", json!({"group": 0x100000})),
            [0x14, 0x10, 0x00, 0x00]
        );
        assert_eq!(
            bytes("ReadDataByID", json!({"did": "0xF190"})),
            [0x22, 0xF1, 0x90]
        );
        assert_eq!(
            bytes("ReadDataByID", json!({"did": [61840, "0xF40D"]})),
            [0x22, 0xF1, 0x90, 0xF4, 0x0D]
        );
        assert_eq!(
            bytes("DiagnosticSessionControl", json!({"session": "extended"})),
            [0x10, 0x03]
        );
        assert_eq!(
            bytes("DiagnosticSessionControl", json!({"session": 2})),
            [0x10, 0x02]
        );
        assert_eq!(bytes("ECUReset", json!({})), [0x11, 0x01]);
        assert_eq!(
            bytes("ECUReset", json!({"reset_type": "soft"})),
            [0x11, 0x03]
        );
        assert_eq!(bytes("TesterPresent", json!({})), [0x3E, 0x00]);
        assert_eq!(
            bytes("UdsRequest", json!({"hex": "22 F1 90"})),
            [0x22, 0xF1, 0x90]
        );
    }

    #[test]
    fn names_round_trip_and_read_only_services() {
        for name in SUPPORTED_COMMANDS {
            let params = match *name {
                "ReadDataByID" => json!({"did": 1}),
                "DiagnosticSessionControl" => json!({"session": 1}),
                "UdsRequest" => json!({"hex": "3E00"}),
                _ => json!({}),
            };
            let cmd = parse(name, params).unwrap();
            assert_eq!(cmd.name(), *name);
            assert_eq!(cmd.ttl, DEFAULT_TTL);
            assert_eq!(cmd.target, CommandTarget::Functional);
        }
        let ro = |name, params| parse(name, params).unwrap().is_read_only();
        assert!(ro("ReadDTC", json!({})));
        assert!(ro("ReadDataByID", json!({"did": 1})));
        assert!(ro("TesterPresent", json!({})));
        assert!(ro("UdsRequest", json!({"hex": "22F190"})));
        assert!(ro("UdsRequest", json!({"hex": "190209"})));
        assert!(!ro("UdsRequest", json!({"hex": "1101"})));
        assert!(!ro("ClearDTC", json!({})));
        assert!(!ro("ECUReset", json!({})));
        assert!(!ro("DiagnosticSessionControl", json!({"session": 3})));
    }

    #[test]
    fn unknown_command_lists_the_supported_ones() {
        let err = parse("FlashEcu", json!({})).unwrap_err();
        assert_eq!(err.field(), None);
        let text = err.to_string();
        assert!(text.contains("\"FlashEcu\""), "{text}");
        for name in SUPPORTED_COMMANDS {
            assert!(text.contains(name), "{text}");
        }
    }

    #[test]
    fn bad_params_name_the_field() {
        let cases = [
            (
                "ReadDTC",
                vec![
                    (json!({"status_mask": 256}), "status_mask"),
                    (json!({"status_mask": "ff"}), "status_mask"),
                    (json!({"statusMask": 1}), "statusMask"),
                    (json!({"ttl_s": 0}), "ttl_s"),
                    (json!({"ttl_s": "60"}), "ttl_s"),
                    (json!({"ecu": 5}), "ecu"),
                    (json!({"ecu": "engine", "ecuAddress": 2016}), "ecuAddress"),
                    (json!({"ecuAddress": "0x7FA"}), "ecuAddress"),
                ],
            ),
            ("ClearDTC", vec![(json!({"group": 0x1000000}), "group")]),
            (
                "ReadDataByID",
                vec![
                    (json!({}), "did"),
                    (json!({"did": [1, "x"]}), "did[1]"),
                    (json!({"did": []}), "did"),
                    (json!({"did": 70000}), "did"),
                ],
            ),
            (
                "DiagnosticSessionControl",
                vec![
                    (json!({}), "session"),
                    (json!({"session": "fast"}), "session"),
                ],
            ),
            ("ECUReset", vec![(json!({"reset_type": 0}), "reset_type")]),
            (
                "UdsRequest",
                vec![
                    (json!({"hex": "2"}), "hex"),
                    (json!({"hex": ""}), "hex"),
                    (json!({"hex": 34}), "hex"),
                ],
            ),
        ];
        for (name, params) in cases {
            for (params, want) in params {
                let err = DiagCommand::parse(name, &params).unwrap_err();
                assert_eq!(
                    field(err),
                    format!("command_params.{want}"),
                    "{name} {params}"
                );
            }
        }
        let not_an_object = DiagCommand::parse("ReadDTC", &json!([1])).unwrap_err();
        assert_eq!(field(not_an_object), "command_params");
    }

    #[test]
    fn targets_ttl_and_addresses() {
        let cmd = parse("ReadDTC", json!({"ecu": "engine", "ttl_s": 2.5})).unwrap();
        assert_eq!(cmd.ttl, Duration::from_millis(2500));
        let ecus = crate::uds::ecu::engine_abs().addresses();
        let names: Vec<_> = ecus.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["engine", "abs"]);
        assert_eq!(cmd.target.resolve(&ecus).unwrap(), vec![ecus[0].clone()]);
        assert_eq!(cmd.target.queue_key(), "engine");
        let unknown = parse("ReadDTC", json!({"ecu": "gearbox"}))
            .unwrap()
            .target
            .resolve(&ecus)
            .unwrap_err();
        assert_eq!(field(unknown.clone()), "command_params.ecu");
        assert!(unknown.to_string().contains("engine, abs"), "{unknown}");
        let functional = parse("ReadDTC", json!({})).unwrap().target;
        assert_eq!(functional.resolve(&ecus).unwrap(), ecus);
        assert_eq!(functional.resolve(&[]).unwrap(), vec![]);
        assert_eq!(functional.queue_key(), "*");

        let addr = parse("ReadDTC", json!({"ecuAddress": "0x7E1"}))
            .unwrap()
            .target;
        let CommandTarget::Address(a) = &addr else {
            panic!("{addr:?}")
        };
        assert_eq!((a.request_id, a.response_id), (0x7E1, 0x7E9));
        assert_eq!(addr.queue_key(), "0x7E1");
        let fixed = EcuAddress::from_request_id(0x18DA_10F1).unwrap();
        assert_eq!(fixed.response_id, 0x18DA_F110);
        assert!(EcuAddress::from_request_id(0x2000_0000).is_err());
    }

    #[test]
    fn response_shapes() {
        use crate::uds::dtc::{Dtc, DtcRecord, DtcStatus};
        use crate::uds::service::DidValue;
        let record = DtcRecord {
            dtc: Dtc::from_sae("P0420", 0).unwrap(),
            status: DtcStatus(0x2F),
        };
        assert_eq!(
            response::dtcs("engine", &[record]),
            json!({"ecu": "engine", "dtcs": [{"dtcCode": "P0420", "ftb": 0, "status": 47,
                   "description": "Catalyst System Efficiency Below Threshold"}]})
        );
        let vin = DidValue {
            did: 0xF190,
            data: b"1HGCM82633A004352".to_vec(),
        };
        let speed = DidValue {
            did: 0xF40D,
            data: vec![0x3C],
        };
        assert_eq!(
            response::dids("engine", std::slice::from_ref(&vin), false),
            json!({"ecu": "engine", "did": 61840, "didHex": "F190",
                   "hex": "314847434D383236333341303034333532", "ascii": "1HGCM82633A004352"})
        );
        assert_eq!(
            response::dids("engine", &[speed], true),
            json!({"ecu": "engine", "values": [{"did": 62477, "didHex": "F40D", "hex": "3C", "ascii": "<"}]})
        );
        assert_eq!(
            response::cleared("abs", ALL_DTCS),
            json!({"ecu": "abs", "cleared": true, "group": 16777215})
        );
        assert_eq!(
            response::raw("engine", &[0x50, 0x03]),
            json!({"ecu": "engine", "hex": "5003"})
        );
    }

    #[test]
    fn ecu_address_reads_numbers_and_hex_strings() {
        let a: EcuAddress = serde_json::from_value(
            json!({"name": "engine", "request_id": "0x7E0", "response_id": 2024}),
        )
        .unwrap();
        assert_eq!((a.request_id, a.response_id), (0x7E0, 0x7E8));
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            json!({"name": "engine", "request_id": 2016, "response_id": 2024})
        );
        assert!(
            serde_json::from_value::<EcuAddress>(
                json!({"name": "x", "request_id": "0x7E0", "response_id": "0x20000000"})
            )
            .is_err()
        );
    }
}
