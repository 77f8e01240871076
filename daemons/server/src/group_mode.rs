//! Group mode and backlog as the server shows them: the relay engine's rule and figures.
//!
//! The server keeps no rule of its own. A group's mode is [`GroupMode::decide`] (the rule the
//! engine itself runs) over the records' facts — activation, and the dongles' presence that the
//! data plane records — and the engine's replay state; the backlog is the engine's
//! ([`GroupStatus::waiting`]). The REST API, the store (when presence or activation changes),
//! the audit log and `group_state` console events all go through
//! [`crate::store::Group::state`], which does exactly that.
//!
//! The engine runs in the data plane's driver task; [`RelayProbe`] is how everything else reads
//! it (the data plane implements it with a snapshot the driver refreshes whenever what it shows
//! changes). It lives here so that the API, the store and the console need not depend on the
//! data plane.

use uuid::Uuid;

pub use relay_core::engine::{GroupBacklog, GroupMode, GroupStatus};
pub use sse_core::events::OfflineSide;

/// Reads the relay engine's status of a group.
pub trait RelayProbe: Send + Sync + std::fmt::Debug + 'static {
    /// The engine's status of `group`, or `None` while the engine holds nothing of it (no side
    /// connected since the server started, or no data plane in this server): then nothing is
    /// stored for it beyond what was delivered, and nothing replays.
    fn status(&self, group: Uuid) -> Option<GroupStatus>;
}

/// The probe used while no data plane runs in this server: the engine holds no group.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDataPlane;

impl RelayProbe for NoDataPlane {
    fn status(&self, _group: Uuid) -> Option<GroupStatus> {
        None
    }
}
