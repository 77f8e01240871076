//! The data plane's calls into the live console (`crate::console`): frames seen from a
//! producing dongle, and buffer-pressure log lines on the group console. Both calls are
//! synchronous and never block (the console samples and buffers on its side).

use relay_core::protocol::WireFrame;
use serde_json::Value;
use sse_core::events::LogLevel;
use uuid::Uuid;

use crate::console::ConsoleStream;
use crate::state::AppState;

/// Every frame a producing dongle sent in one batch.
pub(super) fn can_frames(state: &AppState, dongle: Uuid, group: Uuid, frames: &[WireFrame]) {
    let console = state.console();
    for frame in frames {
        console.can_frame(dongle, Some(group), frame);
    }
}

/// A warning line on the group console.
pub(super) fn group_warning(state: &AppState, group: Uuid, message: String, fields: Value) {
    state
        .console()
        .log(ConsoleStream::Group(group), LogLevel::Warn, message, fields);
}
