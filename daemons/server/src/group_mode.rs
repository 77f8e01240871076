//! The one place that decides a group's mode from its facts.
//!
//! Pure: the REST API, the store (when presence changes) and the data plane all call
//! [`group_mode`] so the three can never disagree about what `active` means.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The relay mode of a group, as returned by the API and published in `group_state` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    /// Not activated: nothing is relayed.
    Inactive,
    /// Activated, both dongles online, no backlog waiting.
    Active,
    /// Activated, and a dongle is offline or a backlog is still draining.
    Degraded,
}

impl GroupMode {
    /// The stored and wire spelling (`inactive`, `active`, `degraded`).
    pub fn as_str(self) -> &'static str {
        match self {
            GroupMode::Inactive => "inactive",
            GroupMode::Active => "active",
            GroupMode::Degraded => "degraded",
        }
    }

    /// Parses the stored spelling; `None` for anything else.
    pub fn parse(text: &str) -> Option<GroupMode> {
        match text {
            "inactive" => Some(GroupMode::Inactive),
            "active" => Some(GroupMode::Active),
            "degraded" => Some(GroupMode::Degraded),
            _ => None,
        }
    }
}

/// Which side(s) of a group have their dongle offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineSide {
    /// The dongle of side A (`dongle_a`) is offline.
    A,
    /// The dongle of side B (`dongle_b`) is offline.
    B,
    /// Both dongles are offline.
    Both,
}

/// Frames stored for a group but not yet delivered, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    /// Frames from A waiting for B.
    pub a_to_b: u64,
    /// Frames from B waiting for A.
    pub b_to_a: u64,
}

impl Backlog {
    /// Whether nothing waits in either direction.
    pub fn is_empty(&self) -> bool {
        self.a_to_b == 0 && self.b_to_a == 0
    }
}

/// Tells the API how many frames wait in a group's streams.
///
/// The data plane implements this over its stream logs; the API, the store and the console only
/// ask. It lives here, beside [`Backlog`], so that none of them depends on the data plane.
pub trait BacklogProbe: Send + Sync + std::fmt::Debug + 'static {
    /// Undelivered frames per direction of `group`.
    fn backlog(&self, group: Uuid) -> Backlog;
}

/// The probe used while no data plane runs in this server: no frames can have been buffered,
/// so every backlog is zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDataPlane;

impl BacklogProbe for NoDataPlane {
    fn backlog(&self, _group: Uuid) -> Backlog {
        Backlog::default()
    }
}

/// The facts a group's mode depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupFacts {
    /// The user activated the group (and has not deactivated it since).
    pub activated: bool,
    /// The dongle of side A is online.
    pub a_online: bool,
    /// The dongle of side B is online.
    pub b_online: bool,
    /// Undelivered frames per direction.
    pub backlog: Backlog,
}

/// Computes `(mode, offline_side)` from a group's facts.
///
/// `offline_side` reports presence whatever the mode, so a user sees before activating that a
/// side is missing. The mode is `inactive` unless activated; then `active` only when both sides
/// are online and nothing is waiting, otherwise `degraded`.
pub fn group_mode(facts: GroupFacts) -> (GroupMode, Option<OfflineSide>) {
    let offline = match (facts.a_online, facts.b_online) {
        (true, true) => None,
        (false, true) => Some(OfflineSide::A),
        (true, false) => Some(OfflineSide::B),
        (false, false) => Some(OfflineSide::Both),
    };
    let mode = if !facts.activated {
        GroupMode::Inactive
    } else if offline.is_none() && facts.backlog.is_empty() {
        GroupMode::Active
    } else {
        GroupMode::Degraded
    };
    (mode, offline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(activated: bool, a: bool, b: bool, backlog: (u64, u64)) -> GroupFacts {
        GroupFacts {
            activated,
            a_online: a,
            b_online: b,
            backlog: Backlog {
                a_to_b: backlog.0,
                b_to_a: backlog.1,
            },
        }
    }

    #[test]
    fn inactive_unless_activated_whatever_else() {
        for a in [false, true] {
            for b in [false, true] {
                for backlog in [(0, 0), (3, 0), (0, 9)] {
                    assert_eq!(
                        group_mode(facts(false, a, b, backlog)).0,
                        GroupMode::Inactive
                    );
                }
            }
        }
    }

    #[test]
    fn active_needs_both_online_and_no_backlog() {
        assert_eq!(
            group_mode(facts(true, true, true, (0, 0))),
            (GroupMode::Active, None)
        );
        assert_eq!(
            group_mode(facts(true, true, true, (1, 0))),
            (GroupMode::Degraded, None)
        );
        assert_eq!(
            group_mode(facts(true, true, true, (0, 1))),
            (GroupMode::Degraded, None)
        );
    }

    #[test]
    fn offline_side_names_the_missing_dongle() {
        assert_eq!(
            group_mode(facts(true, false, true, (0, 0))),
            (GroupMode::Degraded, Some(OfflineSide::A))
        );
        assert_eq!(
            group_mode(facts(true, true, false, (0, 0))),
            (GroupMode::Degraded, Some(OfflineSide::B))
        );
        assert_eq!(
            group_mode(facts(false, false, false, (0, 0))),
            (GroupMode::Inactive, Some(OfflineSide::Both))
        );
    }

    #[test]
    fn mode_spelling_round_trips() {
        for mode in [GroupMode::Inactive, GroupMode::Active, GroupMode::Degraded] {
            assert_eq!(GroupMode::parse(mode.as_str()), Some(mode));
            assert_eq!(
                serde_json::to_value(mode).ok(),
                Some(serde_json::Value::String(mode.as_str().to_owned()))
            );
        }
        assert_eq!(GroupMode::parse("Active"), None);
    }
}
