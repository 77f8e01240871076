//! The records the store keeps, as the API shows them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

pub use sse_core::events::GroupView;

use crate::group_mode::{GroupBacklog, GroupMode, GroupStatus, OfflineSide};

/// Timestamps as the API shows them: RFC 3339 UTC with exactly three fraction digits, the
/// precision they are stored at, so an answer to a `POST` and a later `GET` of the same record
/// show the same text.
mod millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    pub(super) fn one<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub(super) fn option<S: Serializer>(
        at: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => one(at, s),
            None => s.serialize_none(),
        }
    }
}

/// A user: owns agents, dongles and groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Stable id.
    pub id: Uuid,
    /// Unique name, as given to `token create --user`.
    pub name: String,
    /// When the user was created.
    #[serde(serialize_with = "millis::one")]
    pub created_at: DateTime<Utc>,
}

/// A user API token's metadata (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserTokenInfo {
    /// Token id, used to revoke it.
    pub id: Uuid,
    /// Name of the owning user.
    pub user: String,
    /// The token's public lookup key (the 16 hex digits after `tu_`).
    pub lookup: String,
    /// When it was issued.
    #[serde(serialize_with = "millis::one")]
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    #[serde(serialize_with = "millis::option")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An agent: a `tether agent` process acting for a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agent {
    /// Stable id.
    pub id: Uuid,
    /// The owning user (not shown by the API: it is always the caller).
    #[serde(skip)]
    pub user_id: Uuid,
    /// Display name chosen by the user.
    pub name: String,
    /// When it was created.
    #[serde(serialize_with = "millis::one")]
    pub created_at: DateTime<Utc>,
}

/// A newly created agent together with its token, returned exactly once.
#[derive(Debug, Clone, Serialize)]
pub struct AgentWithToken {
    /// The agent.
    #[serde(flatten)]
    pub agent: Agent,
    /// The agent's token (`ta_…`). Not stored; cannot be shown again.
    pub token: String,
}

/// A dongle announced by an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dongle {
    /// Stable id.
    pub id: Uuid,
    /// The owning user (the announcing agent's user).
    #[serde(skip)]
    pub user_id: Uuid,
    /// The dongle's serial as it announces itself (REMP hello).
    pub serial: String,
    /// The agent that last announced it.
    pub agent_id: Uuid,
    /// Whether the data plane currently has the dongle connected.
    pub online: bool,
    /// Last time the data plane saw traffic or a keep-alive from it.
    #[serde(serialize_with = "millis::option")]
    pub last_seen: Option<DateTime<Utc>>,
    /// When it was first announced.
    #[serde(serialize_with = "millis::one")]
    pub created_at: DateTime<Utc>,
}

/// Result of an agent announcing a dongle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announce {
    /// First announcement: a new dongle record.
    Created(Dongle),
    /// The user already had this dongle (possibly via another of their agents, now replaced).
    Existing(Dongle),
}

/// A group as stored, with the presence of its two dongles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Stable id.
    pub id: Uuid,
    /// The owning user.
    pub user_id: Uuid,
    /// Display name.
    pub name: String,
    /// Dongle of side A.
    pub dongle_a: Uuid,
    /// Dongle of side B.
    pub dongle_b: Uuid,
    /// Whether the user activated it.
    pub activated: bool,
    /// The last mode written (and audited).
    pub mode: GroupMode,
    /// Whether dongle A is online.
    pub a_online: bool,
    /// Whether dongle B is online.
    pub b_online: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl Group {
    /// The group's current state as the API and `group_state` events show it, given the relay
    /// engine's status of it (`None`: the engine holds nothing of it).
    ///
    /// The mode is the engine's rule ([`GroupMode::decide`]) over the recorded activation and
    /// presence and the engine's replay state; the backlog is the engine's
    /// ([`GroupStatus::waiting`]). `offline_side` reports presence whatever the mode, so a user
    /// sees before activating that a side is missing.
    pub fn state(&self, relay: Option<&GroupStatus>) -> GroupView {
        let offline_side = match (self.a_online, self.b_online) {
            (true, true) => None,
            (false, true) => Some(OfflineSide::A),
            (true, false) => Some(OfflineSide::B),
            (false, false) => Some(OfflineSide::Both),
        };
        let replaying = relay.is_some_and(|status| status.replaying);
        let mode = GroupMode::decide(self.activated, offline_side.is_none(), replaying);
        let backlog = match relay {
            Some(status) if mode != GroupMode::Active => status.waiting(),
            _ => GroupBacklog::default(),
        };
        GroupView {
            id: self.id,
            name: self.name.clone(),
            dongle_a: self.dongle_a,
            dongle_b: self.dongle_b,
            mode,
            backlog,
            offline_side,
        }
    }
}

/// Why a group could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRefusal {
    /// `dongle_a` and `dongle_b` are the same dongle.
    SameDongle,
    /// The named side's dongle is not one of the user's (or does not exist).
    UnknownDongle(char),
    /// The named side's dongle is already in another group.
    DongleInGroup(char),
}

/// Who caused a recorded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A user through the API (their name).
    User(String),
    /// The data plane (presence or backlog changes).
    DataPlane,
}

impl Actor {
    /// The stored spelling: `user:<name>` or `data-plane`.
    pub fn as_stored(&self) -> String {
        match self {
            Actor::User(name) => format!("user:{name}"),
            Actor::DataPlane => "data-plane".to_owned(),
        }
    }
}

/// A mode change written by the store: what the data plane publishes as a `group_state` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeChange {
    /// The owning user (whose consoles see the event).
    pub user_id: Uuid,
    /// The mode before.
    pub old: GroupMode,
    /// The state after.
    pub state: GroupView,
}

/// One entry of a group's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Increasing id (order of writing).
    pub id: i64,
    /// When.
    #[serde(serialize_with = "millis::one")]
    pub at: DateTime<Utc>,
    /// Who: `user:<name>` or `data-plane`.
    pub actor: String,
    /// What: `create`, `activate`, `deactivate`, `presence`, `backlog`, `delete`, or
    /// `buffer_pressure` (retention removed frames the consumer had not received; the mode is
    /// unchanged).
    pub action: String,
    /// Mode before (`null` for `create`).
    pub old_mode: Option<GroupMode>,
    /// Mode after (`null` for `delete`).
    pub new_mode: Option<GroupMode>,
}
