//! Typed console events: the one definition of what the live console sends.
//!
//! Each event is one JSON object sent on one `data:` line; the SSE event type (`event:` line)
//! names the schema. The shapes here are exactly what `tether server` publishes (field order
//! included, since the server's serializer writes fields in declaration order); they are
//! documented with examples in `docs/protocols/console-events.md`. Publishers build an event,
//! then send [`ConsoleEvent::event_type`] and [`ConsoleEvent::to_data`]; clients read one back
//! with [`ConsoleEvent::from_parts`].
//!
//! Streams are named by [`ConsoleStream`]: `dongle:<uuid>` and `group:<uuid>`.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use sse_core::events::{ConsoleEvent, ConsoleStream, Presence, PresenceStatus};
//! use uuid::Uuid;
//!
//! let dongle = Uuid::nil();
//! let at = Utc.timestamp_millis_opt(1_795_960_800_123).unwrap();
//! let event = ConsoleEvent::from(Presence::dongle(at, dongle, PresenceStatus::Online));
//! assert_eq!(ConsoleStream::Dongle(dongle).key(), "dongle:00000000-0000-0000-0000-000000000000");
//! assert_eq!(event.event_type(), "presence");
//! assert_eq!(
//!     event.to_data(),
//!     r#"{"ts":"2026-11-29T14:00:00.123Z","dongle_id":"00000000-0000-0000-0000-000000000000","status":"online"}"#
//! );
//! ```

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::buffer::StreamReset;
use crate::error::SseError;

pub use relay_core::engine::{GroupBacklog, GroupMode};

/// The `source` of sampling notices (`log` events announcing a sampling switch).
pub const SAMPLER_SOURCE: &str = "sse.sampler";

/// One console stream: a dongle's or a group's. Its key in the hub (and in Redis keys and the
/// `stream` field of multiplexed events) is `dongle:<uuid>` or `group:<uuid>`, UUIDs written
/// hyphenated and lower-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConsoleStream {
    /// A dongle's console (`dongle:<uuid>`): its presence, frames and log lines.
    Dongle(Uuid),
    /// A group's console (`group:<uuid>`): its state, both sides' presence and frames.
    Group(Uuid),
}

impl ConsoleStream {
    /// The hub's stream key: `dongle:<uuid>` or `group:<uuid>`.
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// The UUID of the dongle or group.
    pub fn id(&self) -> Uuid {
        match self {
            ConsoleStream::Dongle(id) | ConsoleStream::Group(id) => *id,
        }
    }
}

impl fmt::Display for ConsoleStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsoleStream::Dongle(id) => write!(f, "dongle:{id}"),
            ConsoleStream::Group(id) => write!(f, "group:{id}"),
        }
    }
}

/// Defines [`ConsoleEvent`] from one table of `Variant(Payload) => "event_type"` rows: the enum,
/// a `From` for each payload, and both directions between a variant and its event type.
macro_rules! console_events {
    ($($(#[$doc:meta])* $variant:ident($ty:ty) => $event_type:literal,)*) => {
        /// Every console event type. Serializes as its payload alone (what goes on the `data:`
        /// line); the type goes on the `event:` line ([`ConsoleEvent::event_type`]).
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        #[non_exhaustive]
        pub enum ConsoleEvent {
            $($(#[$doc])* $variant($ty),)*
        }

        $(impl From<$ty> for ConsoleEvent {
            fn from(value: $ty) -> Self {
                ConsoleEvent::$variant(value)
            }
        })*

        impl ConsoleEvent {
            /// The SSE event type (`event:` field).
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(ConsoleEvent::$variant(_) => $event_type,)*
                }
            }

            /// Reads an event back from its type and data (clients, tests). Unknown fields are
            /// ignored, as the protocol asks of clients; an unknown type or a payload that does
            /// not fit the type's schema is an [`SseError::InvalidConsoleEvent`].
            pub fn from_parts(event_type: &str, data: &str) -> Result<ConsoleEvent, SseError> {
                fn parse<'a, T: Deserialize<'a>>(
                    event_type: &str,
                    data: &'a str,
                ) -> Result<T, SseError> {
                    serde_json::from_str(data).map_err(|err| SseError::InvalidConsoleEvent {
                        event_type: event_type.to_owned(),
                        detail: err.to_string(),
                    })
                }
                Ok(match event_type {
                    $($event_type => ConsoleEvent::$variant(parse(event_type, data)?),)*
                    _ => {
                        return Err(SseError::InvalidConsoleEvent {
                            event_type: event_type.to_owned(),
                            detail: "not a console event type".to_owned(),
                        });
                    }
                })
            }
        }
    };
}

console_events! {
    /// A dongle or an agent came online, went offline, or (dongles) was seen.
    Presence(Presence) => "presence",
    /// One CAN frame a dongle reported.
    CanFrame(CanFrameEvent) => "can_frame",
    /// A log line (including sampling notices and drop notices).
    Log(LogEvent) => "log",
    /// Progress of a command sent to a vehicle's dongle.
    CommandStatus(CommandStatus) => "command_status",
    /// A relay group's state.
    GroupState(GroupState) => "group_state",
    /// The stream could not be resumed exactly.
    StreamReset(StreamReset) => "stream_reset",
}

impl ConsoleEvent {
    /// The `data:` payload: one JSON object, no line breaks (serde_json escapes them).
    pub fn to_data(&self) -> String {
        // Strings, numbers, bools, UUIDs and JSON values only (a non-finite float becomes
        // `null`): serializing cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// RFC 3339 UTC with milliseconds and `Z`: the `ts` of every event but `can_frame`.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// [`timestamp`] of `ms` milliseconds since the Unix epoch.
pub fn timestamp_from_unix_ms(ms: u64) -> String {
    let at = i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    timestamp(at)
}

/// RFC 3339 UTC with microseconds and `Z` of `ns` nanoseconds since the Unix epoch: the `ts` of
/// `can_frame` events (frame timestamps are finer than a millisecond).
pub fn frame_timestamp(unix_ns: u64) -> String {
    let secs = i64::try_from(unix_ns / 1_000_000_000).unwrap_or(i64::MAX);
    let nanos = u32::try_from(unix_ns % 1_000_000_000).unwrap_or(0);
    DateTime::from_timestamp(secs, nanos)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// `presence`: `{ts, dongle_id, status}` or `{ts, agent_id, status}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// When the state changed (milliseconds).
    pub ts: String,
    /// Whose presence: written as a `dongle_id` or an `agent_id` field.
    #[serde(flatten)]
    pub subject: PresenceSubject,
    /// The new state.
    pub status: PresenceStatus,
}

impl Presence {
    /// A dongle's presence.
    pub fn dongle(at: DateTime<Utc>, dongle_id: Uuid, status: PresenceStatus) -> Self {
        Self {
            ts: timestamp(at),
            subject: PresenceSubject::Dongle(dongle_id),
            status,
        }
    }

    /// An agent's presence (`online` / `offline` of its data-plane connections).
    pub fn agent(at: DateTime<Utc>, agent_id: Uuid, status: PresenceStatus) -> Self {
        Self {
            ts: timestamp(at),
            subject: PresenceSubject::Agent(agent_id),
            status,
        }
    }
}

/// Whose presence a `presence` event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceSubject {
    /// A dongle (`dongle_id`).
    #[serde(rename = "dongle_id")]
    Dongle(Uuid),
    /// An agent (`agent_id`).
    #[serde(rename = "agent_id")]
    Agent(Uuid),
}

/// A presence state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// Connected to the data plane.
    Online,
    /// The data plane lost it.
    Offline,
    /// Traffic or a keep-alive arrived from the dongle (rate-limited by the publisher).
    Seen,
}

/// Direction of a CAN frame as seen by the dongle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Received from the bus.
    Rx,
    /// Sent onto the bus.
    Tx,
    /// The dongle did not say.
    Unknown,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `can_frame`: one frame, e.g.
/// `{"ts":"…","dongle_id":"…","direction":"rx","bus":"can1","id":"0x7E8","is_extended":false,"dlc":8,"data_hex":"02 10 03 00 00 00 00 00"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanFrameEvent {
    /// Frame timestamp, RFC 3339 UTC with microseconds ([`frame_timestamp`]).
    pub ts: String,
    /// The dongle that reported the frame.
    pub dongle_id: Uuid,
    /// `rx`, `tx` or `unknown`.
    pub direction: Direction,
    /// Bus (channel) name; `""` when the dongle did not name it.
    pub bus: String,
    /// Arbitration ID as `0x` + upper-case hex (3 digits standard, 8 digits extended).
    pub id: String,
    /// Whether the ID is a 29-bit extended ID.
    pub is_extended: bool,
    /// Length in bytes (the requested length for a remote frame).
    pub dlc: u8,
    /// Payload bytes as upper-case hex pairs separated by single spaces (`""` for no data).
    pub data_hex: String,
    /// A CAN FD frame (written only when `true`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_fd: bool,
    /// A remote (RTR) frame (written only when `true`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_remote: bool,
    /// An error frame (written only when `true`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_error: bool,
}

impl CanFrameEvent {
    /// A data frame from its parts, with `id` and `data_hex` in the canonical spelling and
    /// `dlc` = the payload length. Set `dlc` (remote frames) and the flags afterwards as needed.
    pub fn new(
        ts_unix_ns: u64,
        dongle_id: Uuid,
        direction: Direction,
        bus: &str,
        can_id: u32,
        is_extended: bool,
        data: &[u8],
    ) -> Self {
        Self {
            ts: frame_timestamp(ts_unix_ns),
            dongle_id,
            direction,
            bus: bus.to_owned(),
            id: can_id_text(can_id, is_extended),
            is_extended,
            dlc: u8::try_from(data.len()).unwrap_or(u8::MAX),
            data_hex: spaced_hex(data),
            is_fd: false,
            is_remote: false,
            is_error: false,
        }
    }
}

/// `0x7E8` (11-bit) or `0x18DAF110` (29-bit).
fn can_id_text(can_id: u32, is_extended: bool) -> String {
    if is_extended {
        format!("0x{can_id:08X}")
    } else {
        format!("0x{can_id:03X}")
    }
}

/// `[0x02, 0x10, 0xab]` → `"02 10 AB"`.
fn spaced_hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(data.len() * 3);
    for (i, b) in data.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
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

/// `log`: `{ts, level, source, message, sampling?, fields?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    /// When (milliseconds).
    pub ts: String,
    /// Severity.
    pub level: LogLevel,
    /// Which component wrote it: `server` for the server's lines, [`SAMPLER_SOURCE`] for
    /// sampling notices.
    pub source: String,
    /// Human-readable text.
    pub message: String,
    /// Sampling notice details, on sampling notices only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingNotice>,
    /// Structured details (any JSON), e.g. a drop notice's `{"dropped", "reason"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Value>,
}

impl LogEvent {
    /// A line without `sampling` or `fields`.
    pub fn new(at: DateTime<Utc>, level: LogLevel, source: &str, message: &str) -> Self {
        Self {
            ts: timestamp(at),
            level,
            source: source.to_owned(),
            message: message.to_owned(),
            sampling: None,
            fields: None,
        }
    }

    /// With structured details; JSON `null` means none (the field is left out).
    pub fn with_fields(mut self, fields: serde_json::Value) -> Self {
        self.fields = (!fields.is_null()).then_some(fields);
        self
    }
}

/// Details of a sampling switch (the `sampling` object of a sampling notice).
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

/// State of a command, as its lifecycle moves `pending → in_progress → completed | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Accepted, not started.
    Pending,
    /// Running on the vehicle.
    InProgress,
    /// Finished with a final response.
    Completed,
    /// Finished without one (`error_message` says why).
    Failed,
}

/// `command_status`: `{ts, command_id, dongle_id, status, error_message?}`, on the console of
/// the vehicle's dongle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandStatus {
    /// When the state changed (milliseconds).
    pub ts: String,
    /// The command.
    pub command_id: Uuid,
    /// The dongle it runs through.
    pub dongle_id: Uuid,
    /// The new state.
    pub status: CommandState,
    /// Why it failed (`failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// Which dongle(s) of a group are offline, in the console's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineSide {
    /// `a`: the dongle of side A.
    A,
    /// `b`: the dongle of side B.
    B,
    /// `both`.
    Both,
}

/// A relay group as `GET /api/v1/groups/{id}` shows it:
/// `{id, name, dongle_a, dongle_b, mode, backlog, offline_side}`. Mode and backlog are the relay
/// engine's types ([`GroupMode`], [`GroupBacklog`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// The group.
    pub id: Uuid,
    /// Its display name.
    pub name: String,
    /// The dongle of side A.
    pub dongle_a: Uuid,
    /// The dongle of side B.
    pub dongle_b: Uuid,
    /// Its mode.
    pub mode: GroupMode,
    /// Undelivered frames per direction.
    pub backlog: GroupBacklog,
    /// The side(s) offline; written as `null` when both are online.
    pub offline_side: Option<OfflineSide>,
}

/// `group_state`: the group as `GET /api/v1/groups/{id}` shows it ([`GroupView`]), plus `ts`
/// first: `{ts, id, name, dongle_a, dongle_b, mode, backlog, offline_side}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// When (milliseconds).
    pub ts: String,
    /// The group.
    #[serde(flatten)]
    pub group: GroupView,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("valid time")
    }

    const DONGLE: Uuid = Uuid::from_u128(0x5f0c_1e2d_3c4b_4a59_8877_6655_4433_2211);

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(at(1_500)), "1970-01-01T00:00:01.500Z");
        assert_eq!(timestamp_from_unix_ms(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(
            frame_timestamp(1_600_000_000_123_456_789),
            "2020-09-13T12:26:40.123456Z"
        );
        assert_eq!(frame_timestamp(u64::MAX), "2554-07-21T23:34:33.709551Z");
    }

    #[test]
    fn stream_keys() {
        assert_eq!(
            ConsoleStream::Dongle(DONGLE).key(),
            "dongle:5f0c1e2d-3c4b-4a59-8877-665544332211"
        );
        assert_eq!(
            ConsoleStream::Group(Uuid::nil()).to_string(),
            "group:00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(ConsoleStream::Group(DONGLE).id(), DONGLE);
    }

    #[test]
    fn can_frame_shape_and_round_trip() {
        let ev = CanFrameEvent::new(
            1_600_000_000_123_456_789,
            DONGLE,
            Direction::Rx,
            "can1",
            0x7E8,
            false,
            &[0x0a, 0x10, 0xff],
        );
        let event = ConsoleEvent::from(ev.clone());
        let json = event.to_data();
        assert_eq!(
            json,
            r#"{"ts":"2020-09-13T12:26:40.123456Z","dongle_id":"5f0c1e2d-3c4b-4a59-8877-665544332211","direction":"rx","bus":"can1","id":"0x7E8","is_extended":false,"dlc":3,"data_hex":"0A 10 FF"}"#
        );
        assert_eq!(
            ConsoleEvent::from_parts("can_frame", &json).expect("parses"),
            event
        );
        let mut remote =
            CanFrameEvent::new(0, DONGLE, Direction::Unknown, "", 0x18DA_F110, true, &[]);
        remote.dlc = 8;
        remote.is_remote = true;
        let json = ConsoleEvent::CanFrame(remote).to_data();
        assert!(
            json.ends_with(
                r#""direction":"unknown","bus":"","id":"0x18DAF110","is_extended":true,"dlc":8,"data_hex":"","is_remote":true}"#
            ),
            "{json}"
        );
    }

    #[test]
    fn presence_names_dongle_or_agent() {
        let dongle = Presence::dongle(at(0), DONGLE, PresenceStatus::Seen);
        assert_eq!(
            ConsoleEvent::from(dongle.clone()).to_data(),
            r#"{"ts":"1970-01-01T00:00:00.000Z","dongle_id":"5f0c1e2d-3c4b-4a59-8877-665544332211","status":"seen"}"#
        );
        let agent = Presence::agent(at(0), Uuid::nil(), PresenceStatus::Offline);
        let json = ConsoleEvent::from(agent.clone()).to_data();
        assert_eq!(
            json,
            r#"{"ts":"1970-01-01T00:00:00.000Z","agent_id":"00000000-0000-0000-0000-000000000000","status":"offline"}"#
        );
        assert_eq!(
            ConsoleEvent::from_parts("presence", &json).expect("parses"),
            ConsoleEvent::Presence(agent)
        );
        let with_extra = r#"{"ts":"x","dongle_id":"5f0c1e2d-3c4b-4a59-8877-665544332211","status":"online","new":1}"#;
        assert!(matches!(
            ConsoleEvent::from_parts("presence", with_extra),
            Ok(ConsoleEvent::Presence(Presence {
                subject: PresenceSubject::Dongle(DONGLE),
                status: PresenceStatus::Online,
                ..
            }))
        ));
    }

    #[test]
    fn log_leaves_out_what_is_absent() {
        let plain = LogEvent::new(at(0), LogLevel::Warn, "server", "buffer pressure")
            .with_fields(serde_json::Value::Null);
        assert_eq!(
            ConsoleEvent::from(plain).to_data(),
            r#"{"ts":"1970-01-01T00:00:00.000Z","level":"warn","source":"server","message":"buffer pressure"}"#
        );
        let fields = LogEvent::new(at(0), LogLevel::Warn, "server", "2 dropped")
            .with_fields(serde_json::json!({"dropped": 2, "reason": "queue_full"}));
        let json = ConsoleEvent::from(fields.clone()).to_data();
        assert_eq!(
            json,
            r#"{"ts":"1970-01-01T00:00:00.000Z","level":"warn","source":"server","message":"2 dropped","fields":{"dropped":2,"reason":"queue_full"}}"#
        );
        assert_eq!(
            ConsoleEvent::from_parts("log", &json).expect("parses"),
            ConsoleEvent::Log(fields)
        );
    }

    #[test]
    fn group_state_is_the_rest_body_plus_ts() {
        let state = GroupState {
            ts: timestamp(at(0)),
            group: GroupView {
                id: Uuid::nil(),
                name: "pair".to_owned(),
                dongle_a: DONGLE,
                dongle_b: Uuid::nil(),
                mode: GroupMode::Degraded,
                backlog: GroupBacklog {
                    a_to_b: 3,
                    b_to_a: 0,
                },
                offline_side: None,
            },
        };
        let json = ConsoleEvent::from(state.clone()).to_data();
        assert_eq!(
            json,
            r#"{"ts":"1970-01-01T00:00:00.000Z","id":"00000000-0000-0000-0000-000000000000","name":"pair","dongle_a":"5f0c1e2d-3c4b-4a59-8877-665544332211","dongle_b":"00000000-0000-0000-0000-000000000000","mode":"degraded","backlog":{"a_to_b":3,"b_to_a":0},"offline_side":null}"#
        );
        assert_eq!(
            ConsoleEvent::from_parts("group_state", &json).expect("parses"),
            ConsoleEvent::GroupState(state)
        );
        let both = json.replace("null", "\"both\"");
        assert!(matches!(
            ConsoleEvent::from_parts("group_state", &both),
            Ok(ConsoleEvent::GroupState(GroupState {
                group: GroupView {
                    offline_side: Some(OfflineSide::Both),
                    ..
                },
                ..
            }))
        ));
    }

    #[test]
    fn command_status_shape() {
        let status = CommandStatus {
            ts: timestamp(at(0)),
            command_id: Uuid::nil(),
            dongle_id: DONGLE,
            status: CommandState::InProgress,
            error_message: None,
        };
        let json = ConsoleEvent::from(status.clone()).to_data();
        assert_eq!(
            json,
            r#"{"ts":"1970-01-01T00:00:00.000Z","command_id":"00000000-0000-0000-0000-000000000000","dongle_id":"5f0c1e2d-3c4b-4a59-8877-665544332211","status":"in_progress"}"#
        );
        assert_eq!(
            ConsoleEvent::from_parts("command_status", &json).expect("parses"),
            ConsoleEvent::CommandStatus(status)
        );
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        for (t, data) in [
            ("nope", "{}"),
            ("presence", "{}"),
            ("presence", r#"{"ts":"x","status":"online"}"#),
            ("can_frame", "not json"),
            (
                "log",
                r#"{"ts":"x","level":"loud","source":"s","message":"m"}"#,
            ),
            ("group_state", r#"{"ts":"x","id":"not-a-uuid"}"#),
        ] {
            match ConsoleEvent::from_parts(t, data) {
                Err(SseError::InvalidConsoleEvent { event_type, .. }) => assert_eq!(event_type, t),
                other => panic!("{t} {data}: {other:?}"),
            }
        }
    }
}
