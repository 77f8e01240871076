//! Glue between wire messages and the engine's stream items.
//!
//! A relayed frame is stored in the stream log as the compact JSON of its `CanRelayFrame`
//! (the log is byte-level), with the frame's own timestamp, in milliseconds, as the item's
//! `ts_ms` (so age retention follows capture time).

use bytes::Bytes;

use super::messages::{FrameBatch, GroupState, WireFrame};
use crate::engine::{GroupId, GroupStatus};
use crate::error::{Error, Result};
use crate::log::Item;

impl FrameBatch {
    /// The batch as stream items: seqs `first_seq ..`, payload = the frame's compact JSON,
    /// `ts_ms` = the frame's `ts` (ns) in ms.
    pub fn to_items(&self) -> Vec<Item> {
        (self.first_seq..)
            .zip(&self.frames)
            .map(|(seq, frame)| Item {
                seq,
                ts_ms: frame.ts / 1_000_000,
                payload: Bytes::from(frame.encode()),
            })
            .collect()
    }

    /// A batch from items the engine delivers (dense seqs). Fails with [`Error::Corrupt`] when
    /// an item is not a valid `CanRelayFrame` (someone else wrote to `stream`), or the items are
    /// empty or not dense.
    pub fn from_items(stream: &str, items: &[Item]) -> Result<FrameBatch> {
        let corrupt = |detail: String| Error::Corrupt {
            stream: stream.to_owned(),
            detail,
        };
        let first_seq = items
            .first()
            .map(|i| i.seq)
            .ok_or_else(|| corrupt("empty delivery".to_owned()))?;
        let mut frames = Vec::with_capacity(items.len());
        for (expected, item) in (first_seq..).zip(items) {
            if item.seq != expected {
                return Err(corrupt(format!(
                    "seq {} where {expected} was expected",
                    item.seq
                )));
            }
            let frame = WireFrame::decode(&item.payload)
                .map_err(|e| corrupt(format!("item {} is not a CanRelayFrame: {e}", item.seq)))?;
            frames.push(frame);
        }
        Ok(FrameBatch { first_seq, frames })
    }
}

impl GroupState {
    /// The `group_state` message for an engine status.
    pub fn from_status(group: &GroupId, status: &GroupStatus) -> Self {
        GroupState {
            group_id: group.as_str().to_owned(),
            mode: status.mode,
            backlog: status.backlog,
            offline: status.offline.clone(),
        }
    }
}
