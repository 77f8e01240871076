//! The data-plane message types (version 1). The spec with examples is
//! `docs/protocols/data-plane.md`.

use serde::{Deserialize, Serialize};

use crate::engine::{GroupBacklog, GroupMode, Side};
use crate::log::{Gap, GapReason, TrimReason};

/// A CAN frame as it travels on the data plane: the `CanRelayFrame` JSON object from can-io.
pub type WireFrame = can_io::wire::relay_json::CanRelayFrame;

/// One data-plane message. On the wire it is an object with a `type` tag
/// (`hello`, `welcome`, `frames`, `ack`, `gap`, `group_state`, `error`).
///
/// Unknown fields are ignored so that later minor additions stay readable by version-1 peers;
/// unknown `type`s are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Agent → server, first message: version, identity and resume cursor.
    Hello(Hello),
    /// Server → agent answer to `hello`: chosen version and encoding, and where both
    /// directions resume.
    Welcome(Welcome),
    /// A batch of frames with consecutive sequence numbers starting at `first_seq`.
    Frames(FrameBatch),
    /// Cumulative acknowledgement: every seq up to and including `up_to` is done.
    Ack(Ack),
    /// Server → agent: items the agent will never get because retention removed them.
    Gap(GapNotice),
    /// Server → agent: the group's mode and backlog changed.
    GroupState(GroupState),
    /// Either way: something was refused. Fatal codes are followed by a close.
    Error(ErrorMessage),
}

impl Message {
    /// The wire name of the message's `type` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Frames(_) => "frames",
            Message::Ack(_) => "ack",
            Message::Gap(_) => "gap",
            Message::GroupState(_) => "group_state",
            Message::Error(_) => "error",
        }
    }
}

/// Payload encodings a connection may use after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// JSON in WebSocket text messages (always supported; the handshake always uses it).
    Json,
    /// MessagePack with named fields (the same structure as JSON) in WebSocket binary messages.
    Msgpack,
}

impl Encoding {
    /// The wire name (`json`, `msgpack`).
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        }
    }
}

fn default_encodings() -> Vec<Encoding> {
    vec![Encoding::Json]
}

/// Agent → server handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the agent speaks. The server refuses versions it does not support with
    /// an `unsupported_version` error.
    pub version: u16,
    /// The group this connection belongs to.
    pub group_id: String,
    /// Which side of the group the agent is.
    pub side: Side,
    /// Where delivery to this agent resumes.
    pub resume: ResumeCursor,
    /// Encodings the agent accepts, in order of preference. Defaults to `["json"]`.
    #[serde(default = "default_encodings")]
    pub encodings: Vec<Encoding>,
}

/// The agent's resume cursor for the stream it consumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeCursor {
    /// The last seq of the inbound stream the agent has fully processed (0 = none). The
    /// server resumes delivery at `rx_seq + 1`.
    pub rx_seq: u64,
}

/// Server → agent handshake answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version both sides now speak.
    pub version: u16,
    /// The encoding used for every later message in both directions.
    pub encoding: Encoding,
    /// The last seq of the agent's outbound stream the server holds durably (0 = none): the
    /// agent resends from `tx_acked + 1`.
    pub tx_acked: u64,
    /// The seq after which delivery to the agent starts (normally the agent's `rx_seq`).
    pub rx_from: u64,
    /// The group's current mode.
    pub mode: GroupMode,
}

/// A batch of frames with dense sequence numbers `first_seq ..= first_seq + frames.len() - 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameBatch {
    /// Sequence number of the first frame; the rest follow without holes.
    pub first_seq: u64,
    /// The frames, at least one and at most [`super::MAX_BATCH_FRAMES`].
    pub frames: Vec<WireFrame>,
}

impl FrameBatch {
    /// Sequence number of the last frame in the batch (`None` for an empty or overflowing
    /// batch, which [`super::decode`] never returns).
    pub fn last_seq(&self) -> Option<u64> {
        let len = u64::try_from(self.frames.len()).ok()?;
        self.first_seq.checked_add(len.checked_sub(1)?)
    }
}

/// Cumulative acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Every seq `<= up_to` is acknowledged. Server → agent: stored durably. Agent → server:
    /// delivered and processed.
    pub up_to: u64,
}

/// Why items are missing, as carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireGapReason {
    /// Removed by length retention.
    RetentionLength,
    /// Removed by age retention.
    RetentionAge,
    /// Never stored: the producer skipped these seqs, or a memory log lost them in a restart.
    Missing,
    /// Stored, but not a valid frame (storage corruption, or another writer): skipped so the
    /// stream goes on. Sent by the server's delivery path, never by the log.
    Corrupt,
    /// Removed for a reason this version does not name.
    #[serde(other)]
    Other,
}

impl From<Gap> for GapNotice {
    fn from(gap: Gap) -> Self {
        GapNotice {
            from: gap.from,
            to: gap.to,
            count: gap.count,
            reason: gap.reason.into(),
        }
    }
}

impl From<GapReason> for WireGapReason {
    fn from(reason: GapReason) -> Self {
        match reason {
            GapReason::Retention(TrimReason::Length) => WireGapReason::RetentionLength,
            GapReason::Retention(TrimReason::Age) => WireGapReason::RetentionAge,
            GapReason::Missing => WireGapReason::Missing,
        }
    }
}

/// Items `from ..= to` (exactly `count = to - from + 1` of them) were removed before the
/// agent saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapNotice {
    /// First missing seq.
    pub from: u64,
    /// Last missing seq.
    pub to: u64,
    /// Number of missing items.
    pub count: u64,
    /// Why they are missing.
    pub reason: WireGapReason,
}

/// The group's mode and per-direction backlog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// The group.
    pub group_id: String,
    /// Current mode.
    pub mode: GroupMode,
    /// Items stored and not yet acknowledged by the receiving side, per direction.
    pub backlog: GroupBacklog,
    /// The sides that are offline (empty when both are connected).
    #[serde(default)]
    pub offline: Vec<Side>,
}

/// Error codes. Unknown codes from a newer peer decode as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The hello's version is not supported (fatal; the message lists supported versions).
    UnsupportedVersion,
    /// A message could not be decoded or failed validation (fatal).
    BadMessage,
    /// The first message was not `hello`, or `hello` came twice (fatal).
    HandshakeRequired,
    /// Frames were sent to a group that is not activated; they were not stored.
    GroupInactive,
    /// A frame batch did not continue the stream (its `first_seq` left a hole); not stored.
    SeqOutOfOrder,
    /// The agent's resume cursor is beyond what the server ever stored (fatal).
    CursorAhead,
    /// The group or side is unknown or not allowed for this credential (fatal).
    Unauthorized,
    /// The server failed internally (storage); the agent should reconnect later.
    Internal,
    /// A message was larger than the peer accepts (fatal; the close code is 1009).
    MessageTooBig,
    /// A frame names a group other than the connection's; the batch was not stored.
    GroupMismatch,
    /// A code this version does not know.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The wire spelling (`seq_out_of_order`, …), also the servers' metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::HandshakeRequired => "handshake_required",
            ErrorCode::GroupInactive => "group_inactive",
            ErrorCode::SeqOutOfOrder => "seq_out_of_order",
            ErrorCode::CursorAhead => "cursor_ahead",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
            ErrorCode::MessageTooBig => "message_too_big",
            ErrorCode::GroupMismatch => "group_mismatch",
            ErrorCode::Other => "other",
        }
    }

    /// Whether the server closes the connection after sending this code
    /// (`docs/protocols/data-plane.md`, "Error codes"): all but `group_inactive`,
    /// `seq_out_of_order` and `group_mismatch`, which refuse one batch.
    pub fn is_fatal(self) -> bool {
        !matches!(
            self,
            ErrorCode::GroupInactive | ErrorCode::SeqOutOfOrder | ErrorCode::GroupMismatch
        )
    }

    /// The code a relay server sends for an engine refusal or failure: the one mapping every
    /// data-plane server uses (`docs/protocols/data-plane.md`, "Errors").
    pub fn for_error(err: &crate::Error) -> Self {
        use crate::Error;
        match err {
            Error::GroupInactive { .. } => ErrorCode::GroupInactive,
            Error::SeqOutOfOrder { .. } => ErrorCode::SeqOutOfOrder,
            Error::CursorAhead { .. } => ErrorCode::CursorAhead,
            Error::InvalidSeq { .. } | Error::InvalidTimestamp { .. } => ErrorCode::BadMessage,
            _ => ErrorCode::Internal,
        }
    }
}

/// An error report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}
