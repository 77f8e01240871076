//! In-memory stream log: fast, shared between clones, lost when the process exits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    AppendOutcome, Backlog, Item, ReadBatch, Retention, Seq, StreamLog, StreamMeta, TrimReason,
    Trimmed, dense_prefix, validate_batch, validate_stream_name,
};
use crate::error::Result;

/// A [`StreamLog`] kept in process memory. Cloning shares the same log.
///
/// Everything is lost when the process exits; producers that resume with higher seqs are then
/// reported to readers as a [`super::GapReason::Missing`] gap. Use it for tests and for
/// deployments that accept that loss.
#[derive(Debug, Clone, Default)]
pub struct MemoryStreamLog {
    streams: Arc<Mutex<HashMap<String, MemStream>>>,
}

#[derive(Debug, Default)]
struct MemStream {
    meta: StreamMeta,
    /// Ascending by seq.
    items: VecDeque<Item>,
    cursors: HashMap<String, Seq>,
}

impl MemStream {
    /// Index of the first item with seq > `after`.
    fn index_after(&self, after: Seq) -> usize {
        self.items.partition_point(|i| i.seq <= after)
    }

    /// Removes the first `n` items and records the trim.
    fn remove_prefix(&mut self, n: usize, reason: TrimReason) -> Option<Trimmed> {
        if n == 0 {
            return None;
        }
        let first = self.items.front()?.seq;
        self.items.drain(..n);
        let last = match self.items.front() {
            Some(survivor) => survivor.seq - 1,
            None => self.meta.head,
        };
        self.meta.trimmed_through = last;
        self.meta.trim_reason = Some(reason);
        Some(Trimmed {
            count: n as u64,
            first,
            last,
            reason,
        })
    }
}

impl MemoryStreamLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, MemStream>> {
        // A panic while holding the lock cannot leave a stream half-updated in a way that breaks
        // its invariants (every mutation is a single push/drain), so poisoning is ignored.
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn append_now(&self, stream: &str, items: &[Item]) -> Result<AppendOutcome> {
        validate_stream_name(stream)?;
        validate_batch(stream, items)?;
        let mut streams = self.lock();
        let s = match streams.get_mut(stream) {
            Some(s) => s,
            None => streams.entry(stream.to_owned()).or_default(),
        };
        let mut stored = 0;
        for item in items {
            if item.seq > s.meta.head {
                s.items.push_back(item.clone());
                s.meta.head = item.seq;
                stored += 1;
            }
        }
        Ok(AppendOutcome {
            stored,
            duplicates: items.len() as u64 - stored,
            ack: s.meta.head,
        })
    }

    fn read_now(&self, stream: &str, after: Seq, max: usize) -> Result<ReadBatch> {
        validate_stream_name(stream)?;
        let streams = self.lock();
        let Some(s) = streams.get(stream) else {
            return Ok(ReadBatch::default());
        };
        let idx = s.index_after(after);
        let next = s.items.get(idx).map(|i| i.seq);
        let gap = s.meta.gap_after(after, next);
        let mut items = Vec::new();
        if let Some(start) = next
            && StreamMeta::items_follow(gap.as_ref(), next)
        {
            items.extend(s.items.range(idx..).take(max).cloned());
            dense_prefix(&mut items, start);
        }
        Ok(ReadBatch { gap, items })
    }

    fn trim_now(&self, stream: &str, retention: &Retention, now_ms: u64) -> Result<Vec<Trimmed>> {
        validate_stream_name(stream)?;
        let mut streams = self.lock();
        let Some(s) = streams.get_mut(stream) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if let Some(max_age) = retention.max_age_ms {
            let cutoff = now_ms.saturating_sub(max_age);
            let n = s.items.iter().take_while(|i| i.ts_ms < cutoff).count();
            out.extend(s.remove_prefix(n, TrimReason::Age));
        }
        if let Some(max_len) = retention.max_len {
            let excess = (s.items.len() as u64).saturating_sub(max_len);
            out.extend(s.remove_prefix(excess as usize, TrimReason::Length));
        }
        Ok(out)
    }

    fn backlog_now(&self, stream: &str, after: Seq) -> Result<Backlog> {
        validate_stream_name(stream)?;
        let streams = self.lock();
        let Some(s) = streams.get(stream) else {
            return Ok(Backlog::default());
        };
        let idx = s.index_after(after);
        let oldest = s.items.get(idx);
        Ok(Backlog {
            count: (s.items.len() - idx) as u64,
            oldest_seq: oldest.map(|i| i.seq),
            newest_seq: oldest.and(s.items.back()).map(|i| i.seq),
            oldest_ts_ms: oldest.map(|i| i.ts_ms),
            head: s.meta.head,
        })
    }
}

impl StreamLog for MemoryStreamLog {
    async fn append(&self, stream: &str, items: &[Item]) -> Result<AppendOutcome> {
        self.append_now(stream, items)
    }

    async fn read(&self, stream: &str, after: Seq, max: usize) -> Result<ReadBatch> {
        self.read_now(stream, after, max)
    }

    async fn store_cursor(&self, stream: &str, consumer: &str, seq: Seq) -> Result<()> {
        validate_stream_name(stream)?;
        let mut streams = self.lock();
        streams
            .entry(stream.to_owned())
            .or_default()
            .cursors
            .insert(consumer.to_owned(), seq);
        Ok(())
    }

    async fn load_cursor(&self, stream: &str, consumer: &str) -> Result<Option<Seq>> {
        validate_stream_name(stream)?;
        let streams = self.lock();
        Ok(streams
            .get(stream)
            .and_then(|s| s.cursors.get(consumer).copied()))
    }

    async fn trim(&self, stream: &str, retention: &Retention, now_ms: u64) -> Result<Vec<Trimmed>> {
        self.trim_now(stream, retention, now_ms)
    }

    async fn backlog(&self, stream: &str, after: Seq) -> Result<Backlog> {
        self.backlog_now(stream, after)
    }

    async fn delete(&self, stream: &str) -> Result<u64> {
        validate_stream_name(stream)?;
        Ok(self
            .lock()
            .remove(stream)
            .map_or(0, |s| s.items.len() as u64))
    }
}
