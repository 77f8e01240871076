//! The JSON payloads of console events, built from server records.
//!
//! Shapes are documented in `docs/sse.md` ("Console streams of `tether server`"). Every payload
//! is one JSON object; `ts` is an RFC 3339 UTC timestamp.

use std::fmt::Write as _;

use can_io::wire::relay_json::{CanRelayFrame, RelayDirection};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sse_core::events::LogLevel;
use uuid::Uuid;

use crate::store::GroupState;

/// A dongle's presence as the console reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// The data plane has the dongle connected.
    Online,
    /// The data plane lost the dongle.
    Offline,
    /// Traffic or a keep-alive arrived from the dongle (rate-limited per dongle).
    Seen,
}

/// RFC 3339 with milliseconds and `Z`.
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Serialize)]
struct PresenceData<'a> {
    ts: &'a str,
    dongle_id: Uuid,
    status: PresenceStatus,
}

#[derive(Serialize)]
struct AgentPresenceData<'a> {
    ts: &'a str,
    agent_id: Uuid,
    status: PresenceStatus,
}

/// `presence` of an agent: `{ts, agent_id, status}` (`online` / `offline`).
pub(crate) fn agent_presence(at: DateTime<Utc>, agent: Uuid, status: PresenceStatus) -> String {
    to_json(&AgentPresenceData {
        ts: &timestamp(at),
        agent_id: agent,
        status,
    })
}

/// `presence`: `{ts, dongle_id, status}`.
pub(crate) fn presence(at: DateTime<Utc>, dongle: Uuid, status: PresenceStatus) -> String {
    to_json(&PresenceData {
        ts: &timestamp(at),
        dongle_id: dongle,
        status,
    })
}

/// `command_status`: `{ts, command_id, dongle_id, status, error_message?}` (sse-core's
/// [`sse_core::events::CommandStatus`]).
pub(crate) fn command_status(
    at: DateTime<Utc>,
    dongle: Uuid,
    command: Uuid,
    status: sse_core::events::CommandState,
    error_message: Option<&str>,
) -> String {
    to_json(&sse_core::events::CommandStatus {
        ts: timestamp(at),
        command_id: command,
        dongle_id: dongle,
        status,
        error_message: error_message.map(str::to_owned),
    })
}

#[derive(Serialize)]
struct GroupStateData<'a> {
    ts: &'a str,
    #[serde(flatten)]
    state: &'a GroupState,
}

/// `group_state`: the REST group body plus `ts`.
pub(crate) fn group_state(at: DateTime<Utc>, state: &GroupState) -> String {
    to_json(&GroupStateData {
        ts: &timestamp(at),
        state,
    })
}

#[derive(Serialize)]
struct LogData<'a> {
    ts: &'a str,
    level: LogLevel,
    source: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    fields: &'a serde_json::Value,
}

/// `log`: `{ts, level, source, message, fields?}` (`fields` left out when null).
pub(crate) fn log(
    at: DateTime<Utc>,
    level: LogLevel,
    source: &str,
    message: &str,
    fields: &serde_json::Value,
) -> String {
    to_json(&LogData {
        ts: &timestamp(at),
        level,
        source,
        message,
        fields,
    })
}

/// `can_frame` from a relayed frame, in the console's canonical spelling (`0x7E8`,
/// `"02 10 03"`), with the dongle that sent it.
pub(crate) fn can_frame(dongle: Uuid, frame: &CanRelayFrame) -> String {
    #[derive(Serialize)]
    struct CanFrameData<'a> {
        ts: String,
        dongle_id: Uuid,
        direction: &'static str,
        bus: &'a str,
        id: String,
        is_extended: bool,
        dlc: u8,
        data_hex: String,
        #[serde(skip_serializing_if = "is_false")]
        is_fd: bool,
        #[serde(skip_serializing_if = "is_false")]
        is_remote: bool,
        #[serde(skip_serializing_if = "is_false")]
        is_error: bool,
    }
    let ts = i64::try_from(frame.ts / 1_000_000_000)
        .ok()
        .and_then(|secs| {
            let nanos = u32::try_from(frame.ts % 1_000_000_000).ok()?;
            DateTime::from_timestamp(secs, nanos)
        })
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_default();
    let id = if frame.is_extended {
        format!("0x{:08X}", frame.can_id)
    } else {
        format!("0x{:03X}", frame.can_id)
    };
    to_json(&CanFrameData {
        ts,
        dongle_id: dongle,
        direction: match frame.direction {
            RelayDirection::Rx => "rx",
            RelayDirection::Tx => "tx",
            RelayDirection::Unknown => "unknown",
        },
        bus: frame.channel.as_deref().unwrap_or(""),
        id,
        is_extended: frame.is_extended,
        dlc: frame.dlc,
        data_hex: spaced_hex(&frame.data_hex),
        is_fd: frame.is_fd,
        is_remote: frame.is_remote,
        is_error: frame.is_error,
    })
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `"0210aB"` → `"02 10 AB"`. Relay frames are validated hex; anything else is passed on
/// upper-cased rather than dropped.
fn spaced_hex(hex: &str) -> String {
    let mut out = String::with_capacity(hex.len() + hex.len() / 2);
    for (i, c) in hex.chars().enumerate() {
        if i > 0 && i % 2 == 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Only strings, numbers, bools, UUIDs and JSON values: serializing cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

/// The data of an event on the multiplexed stream: the stream's own object with `stream` (and
/// `stream_id` when given) inserted first. Data that is not a JSON object is wrapped as
/// `{"stream", "stream_id", "data": "<text>"}` so every multiplexed event is an object.
pub(crate) fn tag_with_stream(data: &str, stream: &str, stream_id: Option<&str>) -> String {
    let mut out = String::with_capacity(data.len() + 96);
    out.push_str("{\"stream\":\"");
    out.push_str(stream);
    out.push('"');
    if let Some(id) = stream_id {
        let _ = write!(out, ",\"stream_id\":\"{id}\"");
    }
    let body = data.trim_start();
    match body.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => out.push_str(rest.trim_start()),
        Some(rest) => {
            out.push(',');
            out.push_str(rest);
        }
        None => {
            out.push_str(",\"data\":");
            out.push_str(&to_json(&data));
            out.push('}');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn can_frame_is_canonical() {
        let frame: CanRelayFrame = serde_json::from_str(
            r#"{"groupId":"g","direction":"rx","ts":1600000000123456789,"canId":2024,
                "isExtended":false,"dlc":3,"dataHex":"0a10ff","channel":"can1"}"#,
        )
        .expect("valid frame");
        let dongle = Uuid::nil();
        let json: serde_json::Value =
            serde_json::from_str(&can_frame(dongle, &frame)).expect("json");
        assert_eq!(json["id"], "0x7E8");
        assert_eq!(json["data_hex"], "0A 10 FF");
        assert_eq!(json["bus"], "can1");
        assert_eq!(json["ts"], "2020-09-13T12:26:40.123456Z");
        assert_eq!(json["direction"], "rx");
        assert!(json.get("is_fd").is_none());
    }

    #[test]
    fn tagging_keeps_an_object() {
        assert_eq!(
            tag_with_stream(r#"{"a":1}"#, "dongle:x", Some("1-0")),
            r#"{"stream":"dongle:x","stream_id":"1-0","a":1}"#
        );
        assert_eq!(
            tag_with_stream("{ }", "group:y", None),
            r#"{"stream":"group:y"}"#
        );
        let wrapped = tag_with_stream("plain \"text\"", "group:y", None);
        let v: serde_json::Value = serde_json::from_str(&wrapped).expect("json");
        assert_eq!(v["data"], "plain \"text\"");
    }
}
