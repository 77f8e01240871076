//! In-memory outbox: for tests and for collectors that accept losing the queue on restart.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::outbox::{
    AppendReport, NewRecord, OutboxConfig, OutboxRecord, OutboxStats, UplinkOutbox, check_ack,
};
use crate::error::Result;
use crate::log::Seq;

/// An [`UplinkOutbox`] in a `BTreeMap`. Everything is lost when it is dropped.
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    config: OutboxConfig,
    records: BTreeMap<Seq, (u64, Bytes)>,
    last_seq: Seq,
    acked_through: Seq,
    dropped_pending_total: u64,
}

impl MemoryOutbox {
    /// An empty outbox.
    pub fn new(config: OutboxConfig) -> Self {
        MemoryOutbox {
            config,
            ..Default::default()
        }
    }

    fn to_record(seq: Seq, (ts_ms, payload): (&u64, &Bytes)) -> OutboxRecord {
        OutboxRecord {
            seq,
            ts_ms: *ts_ms,
            payload: payload.clone(),
        }
    }
}

impl UplinkOutbox for MemoryOutbox {
    fn append(&mut self, records: &[NewRecord]) -> Result<AppendReport> {
        let mut report = AppendReport::default();
        if records.is_empty() {
            return Ok(report);
        }
        report.first_seq = self.last_seq + 1;
        for record in records {
            self.last_seq += 1;
            self.records
                .insert(self.last_seq, (record.ts_ms, record.payload.clone()));
        }
        report.last_seq = self.last_seq;
        // Overflow policy: oldest uplinked first, then oldest pending.
        while self.records.len() as u64 > self.config.max_local_records {
            let Some((&seq, _)) = self.records.first_key_value() else {
                break;
            };
            self.records.remove(&seq);
            if seq <= self.acked_through {
                report.pruned_uplinked += 1;
            } else {
                report.dropped_pending += 1;
            }
        }
        // `first_key_value` removes by seq order, and uplinked seqs are exactly the prefix
        // `<= acked_through`, so uplinked records always went first.
        self.dropped_pending_total += report.dropped_pending;
        Ok(report)
    }

    fn fetch_pending(&mut self, after: Seq, max: usize) -> Result<Vec<OutboxRecord>> {
        let start = after.max(self.acked_through).saturating_add(1);
        Ok(self
            .records
            .range(start..)
            .take(max)
            .map(|(seq, v)| Self::to_record(*seq, (&v.0, &v.1)))
            .collect())
    }

    fn mark_uplinked(&mut self, up_to: Seq) -> Result<u64> {
        check_ack(up_to, self.last_seq)?;
        if up_to <= self.acked_through {
            return Ok(0);
        }
        let newly = self.records.range(self.acked_through + 1..=up_to).count() as u64;
        self.acked_through = up_to;
        Ok(newly)
    }

    fn prune_uplinked(&mut self, older_than_ts_ms: u64) -> Result<u64> {
        let doomed: Vec<Seq> = self
            .records
            .range(..=self.acked_through)
            .filter(|(_, (ts, _))| *ts < older_than_ts_ms)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &doomed {
            self.records.remove(seq);
        }
        Ok(doomed.len() as u64)
    }

    fn recent(&mut self, since_ts_ms: u64, max: usize) -> Result<Vec<OutboxRecord>> {
        let mut newest: Vec<OutboxRecord> = self
            .records
            .iter()
            .rev()
            .filter(|(_, (ts, _))| *ts >= since_ts_ms)
            .take(max)
            .map(|(seq, v)| Self::to_record(*seq, (&v.0, &v.1)))
            .collect();
        newest.reverse();
        Ok(newest)
    }

    fn stats(&mut self, now_ms: u64) -> Result<OutboxStats> {
        let pending = self.records.range(self.acked_through + 1..);
        let oldest_pending_ts_ms = pending.clone().next().map(|(_, (ts, _))| *ts);
        Ok(OutboxStats {
            stored: self.records.len() as u64,
            pending: pending.count() as u64,
            oldest_pending_ts_ms,
            oldest_pending_age_ms: oldest_pending_ts_ms.map(|ts| now_ms.saturating_sub(ts)),
            last_seq: self.last_seq,
            acked_through: self.acked_through,
            dropped_pending_total: self.dropped_pending_total,
        })
    }
}
