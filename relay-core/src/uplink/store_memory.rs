//! In-memory outbox store: for tests, and for producers that accept losing their queue on
//! restart.

use std::collections::{HashMap, VecDeque};

use super::store::{
    OutboxStore, StoredRecord, StoredStream, StreamId, StreamState, StreamWrite, out_of_order,
    validate_key,
};
use crate::error::Result;

/// An [`OutboxStore`] in memory. Everything is lost when it is dropped.
#[derive(Debug, Default)]
pub struct MemoryOutboxStore {
    keys: HashMap<String, StreamId>,
    streams: Vec<MemoryStream>,
}

#[derive(Debug, Clone)]
struct MemoryStream {
    next_slot: u64,
    removed_through: u64,
    state: StreamState,
    /// Stored records, slots `removed_through + 1 ..`.
    records: VecDeque<StoredRecord>,
}

impl MemoryOutboxStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self, stream: StreamId) -> Result<usize> {
        usize::try_from(stream)
            .ok()
            .and_then(|id| id.checked_sub(1))
            .filter(|i| *i < self.streams.len())
            .ok_or_else(|| out_of_order(stream, "no such stream".to_owned()))
    }

    /// Checks every write against the streams as the earlier writes leave them, so that a
    /// commit is refused whole before anything changes.
    fn check(&self, writes: &[StreamWrite]) -> Result<()> {
        let mut bounds: HashMap<StreamId, (u64, u64)> = HashMap::new();
        for write in writes {
            let stream = match write {
                StreamWrite::Append { stream, .. }
                | StreamWrite::RemoveThrough { stream, .. }
                | StreamWrite::State { stream, .. } => *stream,
            };
            let s = &self.streams[self.index(stream)?];
            let (next, removed) = bounds
                .entry(stream)
                .or_insert((s.next_slot, s.removed_through));
            match write {
                StreamWrite::Append {
                    first_slot,
                    records,
                    ..
                } => {
                    check_append(stream, *next, *first_slot, records.len())?;
                    *next += records.len() as u64;
                }
                StreamWrite::RemoveThrough { slot, .. } => {
                    check_remove(stream, *removed, *next, *slot)?;
                    *removed = *slot;
                }
                StreamWrite::State { .. } => {}
            }
        }
        Ok(())
    }
}

pub(crate) fn check_append(stream: StreamId, next: u64, first: u64, len: usize) -> Result<()> {
    if first != next || len == 0 {
        return Err(out_of_order(
            stream,
            format!("append of {len} records at slot {first}, the next slot is {next}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_remove(stream: StreamId, removed: u64, next: u64, slot: u64) -> Result<()> {
    if slot < removed || slot >= next {
        return Err(out_of_order(
            stream,
            format!(
                "removal through slot {slot}, stored are the slots {} ..= {}",
                removed + 1,
                next.saturating_sub(1)
            ),
        ));
    }
    Ok(())
}

impl OutboxStore for MemoryOutboxStore {
    fn open_stream(&mut self, key: &str) -> Result<StoredStream> {
        validate_key(key)?;
        let id = match self.keys.get(key) {
            Some(id) => *id,
            None => {
                self.streams.push(MemoryStream {
                    next_slot: 1,
                    removed_through: 0,
                    state: StreamState::default(),
                    records: VecDeque::new(),
                });
                let id = self.streams.len() as StreamId;
                self.keys.insert(key.to_owned(), id);
                id
            }
        };
        let s = &self.streams[self.index(id)?];
        Ok(StoredStream {
            id,
            next_slot: s.next_slot,
            removed_through: s.removed_through,
            state: s.state.clone(),
        })
    }

    fn read(&mut self, stream: StreamId, after_slot: u64, max: usize) -> Result<Vec<StoredRecord>> {
        let s = &self.streams[self.index(stream)?];
        let skip = after_slot.saturating_sub(s.removed_through);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        Ok(s.records.iter().skip(skip).take(max).cloned().collect())
    }

    fn read_newest(
        &mut self,
        stream: StreamId,
        since_ts_ms: u64,
        before_slot: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>> {
        let s = &self.streams[self.index(stream)?];
        let mut newest: Vec<StoredRecord> = s
            .records
            .iter()
            .rev()
            .skip_while(|r| r.slot >= before_slot)
            .take_while(|r| r.ts_ms >= since_ts_ms)
            .take(max)
            .cloned()
            .collect();
        newest.reverse();
        Ok(newest)
    }

    fn commit(&mut self, writes: &[StreamWrite]) -> Result<()> {
        self.check(writes)?;
        for write in writes {
            match write {
                StreamWrite::Append {
                    stream, records, ..
                } => {
                    let i = self.index(*stream)?;
                    let s = &mut self.streams[i];
                    for r in records {
                        s.records.push_back(StoredRecord {
                            slot: s.next_slot,
                            ts_ms: r.ts_ms,
                            payload: r.payload.clone(),
                        });
                        s.next_slot += 1;
                    }
                }
                StreamWrite::RemoveThrough { stream, slot } => {
                    let i = self.index(*stream)?;
                    let s = &mut self.streams[i];
                    while s.records.front().is_some_and(|r| r.slot <= *slot) {
                        s.records.pop_front();
                    }
                    s.removed_through = *slot;
                }
                StreamWrite::State { stream, state } => {
                    let i = self.index(*stream)?;
                    self.streams[i].state = state.clone();
                }
            }
        }
        Ok(())
    }
}
