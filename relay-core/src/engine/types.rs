//! Plain domain types shared by the engine, its driver and the wire protocol.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One end of a group: the two dongles of a group are side `a` and side `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Side A.
    A,
    /// Side B.
    B,
}

impl Side {
    /// The side's slot in per-side arrays: A = 0, B = 1.
    pub const fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    /// The other side of the group.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// The direction this side produces into (`A` → `a_to_b`).
    pub fn outbound(self) -> Direction {
        match self {
            Side::A => Direction::AToB,
            Side::B => Direction::BToA,
        }
    }

    /// The direction this side consumes from (`A` ← `b_to_a`).
    pub fn inbound(self) -> Direction {
        self.peer().outbound()
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::A => "a",
            Side::B => "b",
        })
    }
}

/// One direction of a group: each direction is its own sequenced stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Frames produced by side A, delivered to side B.
    AToB,
    /// Frames produced by side B, delivered to side A.
    BToA,
}

impl Direction {
    /// Both directions, in a fixed order.
    pub const BOTH: [Direction; 2] = [Direction::AToB, Direction::BToA];

    /// The direction's slot in per-direction arrays: its place in [`BOTH`](Self::BOTH).
    pub const fn index(self) -> usize {
        match self {
            Direction::AToB => 0,
            Direction::BToA => 1,
        }
    }

    /// The side that produces this stream.
    pub fn producer(self) -> Side {
        match self {
            Direction::AToB => Side::A,
            Direction::BToA => Side::B,
        }
    }

    /// The side that consumes this stream.
    pub fn consumer(self) -> Side {
        self.producer().peer()
    }

    /// The stream key suffix used by the stream log (`a_to_b` / `b_to_a`).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::AToB => "a_to_b",
            Direction::BToA => "b_to_a",
        }
    }

    /// The stream-log key for this direction of `group` (`group:{id}:a_to_b`).
    pub fn stream_key(self, group: &GroupId) -> String {
        format!("group:{}:{}", group.as_str(), self.as_str())
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifier of a relay group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(String);

impl GroupId {
    /// Wraps a group id. Validation (length, characters) is the caller's: the engine treats it
    /// as an opaque key.
    pub fn new(id: impl Into<String>) -> Self {
        GroupId(id.into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The relay mode of a group, as published in `group_state` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    /// Not activated: nothing is relayed.
    Inactive,
    /// Activated, both sides online, no backlog replaying.
    Active,
    /// Activated, and one side is offline or a backlog is still draining.
    Degraded,
}

impl GroupMode {
    /// The one rule for a group's mode, used by the engine and by the server's records:
    /// `inactive` unless activated; then `active` only when both sides are online and no
    /// stream is replaying a backlog, otherwise `degraded`.
    pub fn decide(activated: bool, both_online: bool, replaying: bool) -> GroupMode {
        if !activated {
            GroupMode::Inactive
        } else if both_online && !replaying {
            GroupMode::Active
        } else {
            GroupMode::Degraded
        }
    }

    /// The stored and wire spelling (`inactive`, `active`, `degraded`).
    pub fn as_str(self) -> &'static str {
        match self {
            GroupMode::Inactive => "inactive",
            GroupMode::Active => "active",
            GroupMode::Degraded => "degraded",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s spelling; `None` for anything else.
    pub fn parse(text: &str) -> Option<GroupMode> {
        match text {
            "inactive" => Some(GroupMode::Inactive),
            "active" => Some(GroupMode::Active),
            "degraded" => Some(GroupMode::Degraded),
            _ => None,
        }
    }
}

impl fmt::Display for GroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Items stored but not yet acknowledged by the consumer, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupBacklog {
    /// Backlog of the `a_to_b` stream (waiting for side B).
    pub a_to_b: u64,
    /// Backlog of the `b_to_a` stream (waiting for side A).
    pub b_to_a: u64,
}

impl GroupBacklog {
    /// Whether nothing waits in either direction.
    pub fn is_empty(&self) -> bool {
        self.a_to_b == 0 && self.b_to_a == 0
    }

    /// The backlog of one direction.
    pub fn get(&self, dir: Direction) -> u64 {
        match dir {
            Direction::AToB => self.a_to_b,
            Direction::BToA => self.b_to_a,
        }
    }

    pub(crate) fn set(&mut self, dir: Direction, value: u64) {
        match dir {
            Direction::AToB => self.a_to_b = value,
            Direction::BToA => self.b_to_a = value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inactive_unless_activated_whatever_else() {
        for both_online in [false, true] {
            for replaying in [false, true] {
                assert_eq!(
                    GroupMode::decide(false, both_online, replaying),
                    GroupMode::Inactive
                );
            }
        }
    }

    #[test]
    fn active_needs_both_online_and_no_replay() {
        assert_eq!(GroupMode::decide(true, true, false), GroupMode::Active);
        assert_eq!(GroupMode::decide(true, true, true), GroupMode::Degraded);
        assert_eq!(GroupMode::decide(true, false, false), GroupMode::Degraded);
        assert_eq!(GroupMode::decide(true, false, true), GroupMode::Degraded);
    }

    #[test]
    fn mode_spelling_round_trips() {
        for mode in [GroupMode::Inactive, GroupMode::Active, GroupMode::Degraded] {
            assert_eq!(GroupMode::parse(mode.as_str()), Some(mode));
            assert_eq!(mode.to_string(), mode.as_str());
            assert_eq!(
                serde_json::to_value(mode).ok(),
                Some(serde_json::Value::String(mode.as_str().to_owned()))
            );
        }
        assert_eq!(GroupMode::parse("Active"), None);
        assert!(GroupBacklog::default().is_empty());
        assert!(
            !GroupBacklog {
                a_to_b: 0,
                b_to_a: 1
            }
            .is_empty()
        );
    }
}
