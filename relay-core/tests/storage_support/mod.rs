//! The engine's storage requests served from an in-memory log, shared by the engine tests
//! (`engine_support`, `engine_fairness`, `engine_modes`) and `benches/relay_engine.rs`
//! (`#[path = "../tests/storage_support/mod.rs"]`).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use futures::executor::block_on;
use relay_core::engine::{RelayEngine, StorageRequest};
use relay_core::log::{MemoryStreamLog, StreamLog};

/// Whether a `StoreCursor` request is written to the log or dropped (a driver that never
/// restarts the engine has no use for stored cursors).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cursors {
    /// Stored in the log.
    Store,
    /// Dropped.
    Skip,
}

/// Serves one storage request of `engine` from `log` at time `now` (ms), handing the result
/// back to the engine; panics on an engine or log error (a bug in a test driver).
pub fn serve(
    engine: &mut RelayEngine,
    log: &MemoryStreamLog,
    request: StorageRequest,
    now: u64,
    cursors: Cursors,
) {
    match request {
        StorageRequest::Append {
            group,
            direction,
            items,
        } => {
            let result = block_on(log.append(&direction.stream_key(&group), &items));
            engine
                .handle_append_result(&group, direction, result, now)
                .expect("loaded");
        }
        StorageRequest::Read {
            group,
            direction,
            after,
            max,
            epoch,
        } => {
            let result = block_on(log.read(&direction.stream_key(&group), after, max));
            engine
                .handle_read_result(&group, direction, epoch, result, now)
                .expect("loaded");
        }
        StorageRequest::StoreCursor {
            group,
            direction,
            seq,
        } => {
            if cursors == Cursors::Store {
                let consumer = direction.consumer().to_string();
                block_on(log.store_cursor(&direction.stream_key(&group), &consumer, seq))
                    .expect("cursor");
            }
        }
    }
}
