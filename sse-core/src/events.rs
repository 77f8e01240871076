//! Typed console events. Each is one JSON object sent on one `data:` line; the SSE event type
//! names the schema. Schemas are documented in `docs/protocols/console-events.md`.

use serde::{Deserialize, Serialize};

use crate::buffer::StreamReset;

/// Every console event type the live console understands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ConsoleEvent {
    /// A dongle came online or went offline.
    Presence(Presence),
    /// One CAN frame seen or sent on a bus.
    CanFrame(CanFrameEvent),
    /// A log line (including sampling on/off notices).
    Log(LogEvent),
    /// Progress of a command sent to a dongle.
    CommandStatus(CommandStatus),
    /// The state of a relay group changed.
    GroupState(GroupState),
    /// The stream could not be resumed exactly.
    StreamReset(StreamReset),
}

impl ConsoleEvent {
    /// The SSE event type (`event:` field).
    pub fn event_type(&self) -> &'static str {
        match self {
            ConsoleEvent::Presence(_) => "presence",
            ConsoleEvent::CanFrame(_) => "can_frame",
            ConsoleEvent::Log(_) => "log",
            ConsoleEvent::CommandStatus(_) => "command_status",
            ConsoleEvent::GroupState(_) => "group_state",
            ConsoleEvent::StreamReset(_) => "stream_reset",
        }
    }

    /// The `data:` payload: one JSON object, no line breaks (serde_json escapes them).
    pub fn to_data(&self) -> String {
        let result = match self {
            ConsoleEvent::Presence(v) => serde_json::to_string(v),
            ConsoleEvent::CanFrame(v) => serde_json::to_string(v),
            ConsoleEvent::Log(v) => serde_json::to_string(v),
            ConsoleEvent::CommandStatus(v) => serde_json::to_string(v),
            ConsoleEvent::GroupState(v) => serde_json::to_string(v),
            ConsoleEvent::StreamReset(v) => serde_json::to_string(v),
        };
        // These types hold only strings, numbers, bools and JSON values: serializing cannot fail.
        result.unwrap_or_else(|_| "{}".to_owned())
    }

    /// Read an event back from its type and data, e.g. on the client side.
    pub fn from_parts(event_type: &str, data: &str) -> Option<ConsoleEvent> {
        Some(match event_type {
            "presence" => ConsoleEvent::Presence(serde_json::from_str(data).ok()?),
            "can_frame" => ConsoleEvent::CanFrame(serde_json::from_str(data).ok()?),
            "log" => ConsoleEvent::Log(serde_json::from_str(data).ok()?),
            "command_status" => ConsoleEvent::CommandStatus(serde_json::from_str(data).ok()?),
            "group_state" => ConsoleEvent::GroupState(serde_json::from_str(data).ok()?),
            "stream_reset" => ConsoleEvent::StreamReset(serde_json::from_str(data).ok()?),
            _ => return None,
        })
    }
}

/// `presence`: a dongle's connection state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// RFC 3339 UTC timestamp.
    pub ts: String,
    /// The dongle.
    pub dongle_id: String,
    /// `online` or `offline`.
    pub status: PresenceStatus,
}

/// A dongle's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// Connected.
    Online,
    /// Disconnected.
    Offline,
}

/// Direction of a CAN frame as seen by the dongle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Received from the bus.
    Rx,
    /// Sent onto the bus.
    Tx,
}

/// `can_frame`: one frame, e.g.
/// `{"ts":"…","direction":"rx","bus":"can1","id":"0x7E8","is_extended":false,"dlc":8,"data_hex":"02 10 03 00 00 00 00 00"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanFrameEvent {
    /// RFC 3339 UTC timestamp with sub-second digits.
    pub ts: String,
    /// `rx` or `tx`.
    pub direction: Direction,
    /// Bus (channel) name.
    pub bus: String,
    /// Arbitration ID as `0x` + upper-case hex (3 digits standard, 8 digits extended).
    pub id: String,
    /// Whether the ID is a 29-bit extended ID.
    pub is_extended: bool,
    /// Payload length in bytes.
    pub dlc: u8,
    /// Payload bytes as upper-case hex pairs separated by single spaces (empty for no data).
    pub data_hex: String,
}

impl CanFrameEvent {
    /// Build the event from raw frame parts, formatting `id` and `data_hex` canonically.
    pub fn new(
        ts: String,
        direction: Direction,
        bus: &str,
        can_id: u32,
        is_extended: bool,
        data: &[u8],
    ) -> Self {
        let id = if is_extended {
            format!("0x{can_id:08X}")
        } else {
            format!("0x{can_id:03X}")
        };
        let data_hex = data
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            ts,
            direction,
            bus: bus.to_owned(),
            id,
            is_extended,
            dlc: u8::try_from(data.len()).unwrap_or(u8::MAX),
            data_hex,
        }
    }
}

/// Severity of a `log` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Debug detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something to look at.
    Warn,
    /// Something failed.
    Error,
}

/// `log`: a line for the console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    /// RFC 3339 UTC timestamp.
    pub ts: String,
    /// Severity.
    pub level: LogLevel,
    /// Which component wrote it (`sse.sampler` for sampling notices).
    pub source: String,
    /// Human-readable text.
    pub message: String,
    /// Sampling notice details, on `sse.sampler` events only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingNotice>,
}

/// Details of a sampling switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingNotice {
    /// Whether sampling is now on.
    pub active: bool,
    /// `can_frame` input rate (frames per second) that caused the switch.
    pub input_rate_per_s: u64,
    /// Fraction of `can_frame` events sent from now on (1.0 when off).
    pub fraction: f64,
    /// The threshold (frames per second).
    pub threshold_per_s: u32,
}

/// State of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Accepted and waiting.
    Queued,
    /// Sent to the dongle.
    Sent,
    /// Completed successfully.
    Succeeded,
    /// Completed with an error.
    Failed,
    /// No answer in time.
    TimedOut,
}

/// `command_status`: progress of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandStatus {
    /// RFC 3339 UTC timestamp.
    pub ts: String,
    /// The command's idempotency key.
    pub command_id: String,
    /// Target dongle.
    pub dongle_id: String,
    /// New state.
    pub status: CommandState,
    /// Error text or result summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `group_state`: a relay group's mode and members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// RFC 3339 UTC timestamp.
    pub ts: String,
    /// The group.
    pub group_id: String,
    /// The group mode, as named by the relay (`bridge`, `mirror`, …).
    pub mode: String,
    /// Dongles in the group.
    pub members: Vec<String>,
    /// Members currently online.
    pub online: Vec<String>,
}

/// RFC 3339 UTC timestamp with milliseconds for `ms` since the Unix epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let nanos = u32::try_from((ms % 1000) * 1_000_000).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn can_frame_shape_matches_the_protocol_doc() {
        let ev = CanFrameEvent::new(
            "2026-01-01T00:00:00.000Z".into(),
            Direction::Rx,
            "can1",
            0x7E8,
            false,
            &[2, 0x10, 3, 0, 0, 0, 0, 0],
        );
        let json = ConsoleEvent::CanFrame(ev.clone()).to_data();
        assert_eq!(
            json,
            r#"{"ts":"2026-01-01T00:00:00.000Z","direction":"rx","bus":"can1","id":"0x7E8","is_extended":false,"dlc":8,"data_hex":"02 10 03 00 00 00 00 00"}"#
        );
        assert_eq!(
            ConsoleEvent::from_parts("can_frame", &json),
            Some(ConsoleEvent::CanFrame(ev))
        );
        assert_eq!(rfc3339_ms(1_500), "1970-01-01T00:00:01.500Z");
    }
}
