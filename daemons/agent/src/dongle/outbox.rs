//! One dongle stream's outbox: the SQLite rows ([`DongleStore`]) mirrored in memory, so sending
//! never reads the file. Every change is written to the file first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anyhow::anyhow;
use relay_core::protocol::{FrameBatch, WireFrame};
use tracing::warn;

use super::metrics::{DongleMetrics, DropReason};
use super::store::{DongleStore, StreamKey};

/// The store shared by a process's dongle workers.
pub type SharedStore = Arc<Mutex<DongleStore>>;

/// Run `f` on the store from async code (SQLite blocks; this runtime has worker threads).
pub fn with_store<T>(
    store: &SharedStore,
    f: impl FnOnce(&mut DongleStore) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    tokio::task::block_in_place(|| {
        let mut guard = store
            .lock()
            .map_err(|_| anyhow!("the state store lock is poisoned"))?;
        f(&mut guard)
    })
}

/// A stream's outbox and inbound cursor.
#[derive(Debug)]
pub struct StreamOutbox {
    store: SharedStore,
    id: i64,
    /// Which stream.
    pub key: StreamKey,
    /// Highest seq assigned.
    pub last_seq: u64,
    /// Server's cumulative ack, raised to the floor of a renumbering (seqs below it are never
    /// sent again).
    pub acked: u64,
    /// Highest ack the server itself sent or reported in this process: what "the server lost
    /// frames" is judged against (not the stored `acked`, which a renumbering raises).
    server_acked: u64,
    /// Last inbound seq processed.
    pub rx_seq: u64,
    /// Highest seq that may have reached the server (sent in this process; after a restart
    /// every assigned seq counts). The server may have delivered such a seq to the other side
    /// before it was durable (cut-through), so it is never reused for another frame.
    sent_high: u64,
    pending: VecDeque<(u64, WireFrame)>,
    cap: u64,
    metrics: DongleMetrics,
}

impl StreamOutbox {
    /// Load (creating) the stream `key`.
    pub fn open(
        store: SharedStore,
        key: StreamKey,
        cap: u64,
        metrics: DongleMetrics,
    ) -> anyhow::Result<Self> {
        let loaded = with_store(&store, |s| s.load_stream(&key))?;
        let mut pending = VecDeque::with_capacity(loaded.pending.len());
        let mut invalid = 0;
        for (seq, payload) in loaded.pending {
            match WireFrame::decode(&payload) {
                Ok(f) => pending.push_back((seq, f)),
                Err(e) => {
                    invalid += 1;
                    warn!(serial = %key.serial, seq, error = %e, "dropping an outbox row that does not decode");
                }
            }
        }
        metrics.dropped(&key.serial, DropReason::Invalid, invalid);
        let out = StreamOutbox {
            store,
            id: loaded.id,
            key,
            last_seq: loaded.last_seq,
            acked: loaded.acked,
            server_acked: 0,
            rx_seq: loaded.rx_seq,
            sent_high: loaded.last_seq,
            pending,
            cap,
            metrics,
        };
        out.publish();
        Ok(out)
    }

    fn publish(&self) {
        DongleMetrics::set(
            &self.metrics.outbox_pending,
            &self.key.serial,
            self.pending.len() as u64,
        );
    }

    /// Unacknowledged frames held.
    pub fn pending(&self) -> u64 {
        self.pending.len() as u64
    }

    /// Append frames (assigning the next seqs); drops the oldest beyond the cap, counted.
    /// Returns how many were dropped.
    pub fn append(&mut self, frames: Vec<WireFrame>) -> anyhow::Result<u64> {
        if frames.is_empty() {
            return Ok(0);
        }
        let payloads: Vec<Vec<u8>> = frames.iter().map(|f| f.encode().into_bytes()).collect();
        let (id, last, stored, cap) = (self.id, self.last_seq, self.pending(), self.cap);
        let a = with_store(&self.store, |s| s.append(id, last, stored, &payloads, cap))?;
        let n = frames.len() as u64;
        for (i, f) in frames.into_iter().enumerate() {
            self.pending.push_back((a.first_seq + i as u64, f));
        }
        self.last_seq = last + n;
        for _ in 0..a.dropped_oldest {
            self.pending.pop_front();
        }
        DongleMetrics::inc(&self.metrics.frames_queued, &self.key.serial, n);
        if a.dropped_oldest > 0 {
            self.metrics
                .dropped(&self.key.serial, DropReason::OutboxFull, a.dropped_oldest);
        }
        self.publish();
        Ok(a.dropped_oldest)
    }

    /// The server acknowledged `up_to`; returns how many held frames that released.
    pub fn ack(&mut self, up_to: u64) -> anyhow::Result<u64> {
        self.server_acked = self.server_acked.max(up_to);
        if up_to <= self.acked {
            return Ok(0);
        }
        let id = self.id;
        with_store(&self.store, |s| s.ack(id, up_to))?;
        self.acked = up_to;
        let mut n = 0;
        while self.pending.front().is_some_and(|(s, _)| *s <= up_to) {
            self.pending.pop_front();
            n += 1;
        }
        self.publish();
        Ok(n)
    }

    /// Drop every unacknowledged frame (counted under `reason`).
    pub fn drop_pending(&mut self, reason: DropReason) -> anyhow::Result<u64> {
        let id = self.id;
        let n = with_store(&self.store, |s| s.drop_pending(id))?;
        // `sent_high` stays, whatever the reason: even after a `group_inactive` refusal the
        // server may have accepted (and, by cut-through, delivered) a batch sent just before
        // the deactivation whose append was still in flight when `tx_acked` was read.
        self.pending.clear();
        self.metrics.dropped(&self.key.serial, reason, n);
        self.publish();
        Ok(n)
    }

    /// Frames up to `seq` were handed to the connection.
    pub fn note_sent(&mut self, seq: u64) {
        self.sent_high = self.sent_high.max(seq);
    }

    /// Make the held frames follow `base` densely (`base` becomes the ack).
    fn renumber(&mut self, base: u64) -> anyhow::Result<()> {
        let id = self.id;
        self.last_seq = with_store(&self.store, |s| s.renumber(id, base))?;
        self.acked = base;
        for (i, (seq, _)) in self.pending.iter_mut().enumerate() {
            *seq = base + 1 + i as u64;
        }
        Ok(())
    }

    /// Reconcile with `welcome.tx_acked` (what the server holds durably). Returns the seq after
    /// which to send.
    pub fn reconcile(&mut self, tx_acked: u64) -> anyhow::Result<u64> {
        if tx_acked > self.last_seq {
            warn!(serial = %self.key.serial, group = %self.key.group_id, server = tx_acked, local = self.last_seq,
                "the server holds seqs this agent never assigned (its state was lost): continuing above them");
            self.server_acked = self.server_acked.max(tx_acked);
            self.renumber(tx_acked)?;
            return Ok(tx_acked);
        }
        if tx_acked < self.server_acked {
            warn!(serial = %self.key.serial, server = tx_acked, local = self.server_acked,
                "the server holds fewer frames than it acknowledged before");
        }
        let newly = self.ack(tx_acked)?;
        DongleMetrics::inc(&self.metrics.frames_acked, &self.key.serial, newly);
        let base = tx_acked.max(self.acked);
        // Frames above `base` were dropped here (the cap, or no group) and never stored there.
        // Seqs that were never sent are reused, so the stream stays dense. Seqs that were sent
        // are not: the server may have delivered them to the other side before they were
        // durable, and the other side skips a seq it already has. The server tells the other
        // side about those as a `missing` gap (a hole in a connection's first batch).
        let floor = base.max(self.sent_high.min(self.last_seq));
        let hole = match self.pending.front() {
            Some((first, _)) => *first > floor + 1,
            None => self.last_seq > floor,
        };
        if hole {
            self.renumber(floor)?;
            return Ok(floor);
        }
        Ok(base)
    }

    /// Persist the inbound cursor.
    pub fn set_rx(&mut self, rx_seq: u64) -> anyhow::Result<()> {
        let id = self.id;
        with_store(&self.store, |s| s.set_rx(id, rx_seq))?;
        self.rx_seq = rx_seq;
        Ok(())
    }

    /// The next batch after seq `after`: at most `max` frames, consecutive.
    pub fn batch_after(&self, after: u64, max: usize) -> Option<FrameBatch> {
        let start = self.pending.partition_point(|(s, _)| *s <= after);
        let mut it = self.pending.range(start..);
        let (first, f) = it.next()?;
        let mut frames = Vec::with_capacity(max.min(self.pending.len() - start));
        frames.push(f.clone());
        frames.extend(it.take(max - 1).map(|(_, f)| f.clone()));
        Some(FrameBatch {
            first_seq: *first,
            frames,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use can_io::CanRecord;
    use can_io::frame::{CanFrame, CanId, Channel, DataFrame, Direction};

    use super::*;
    use crate::dongle::config::OutboxSync;

    fn frames(n: u32) -> Vec<WireFrame> {
        (0..n)
            .map(|i| {
                let r = CanRecord::new(
                    u64::from(i),
                    Channel::from("can0"),
                    Direction::Rx,
                    CanFrame::Data(DataFrame::new(CanId::new(i, false).unwrap(), &[1]).unwrap()),
                );
                WireFrame::from_record("g", &r)
            })
            .collect()
    }

    fn open(store: &SharedStore, cap: u64) -> StreamOutbox {
        let key = StreamKey {
            serial: "D".into(),
            group_id: "g".into(),
            side: "a".into(),
        };
        StreamOutbox::open(store.clone(), key, cap, DongleMetrics::default()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconcile_with_the_servers_ack() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(Mutex::new(
            DongleStore::open(&dir.path().join("s.sqlite"), OutboxSync::Normal).unwrap(),
        ));
        let mut o = open(&store, 100);
        o.append(frames(10)).unwrap();
        // Acks lost in a crash: the server holds 1..=6.
        assert_eq!(o.reconcile(6).unwrap(), 6);
        assert_eq!((o.pending(), o.acked), (4, 6));
        let b = o.batch_after(6, 3).unwrap();
        assert_eq!((b.first_seq, b.frames.len()), (7, 3));
        // Reopened from the file: the same state.
        let mut o = open(&store, 100);
        assert_eq!((o.pending(), o.acked, o.last_seq), (4, 6, 10));
        // The server holds more than this store ever assigned (the state was lost).
        assert_eq!(o.reconcile(50).unwrap(), 50);
        assert_eq!(
            (o.last_seq, o.batch_after(50, 10).unwrap().first_seq),
            (54, 51)
        );
        // Everything held was dropped and never sent: the seqs are reused.
        o.drop_pending(DropReason::GroupInactive).unwrap();
        assert_eq!(o.reconcile(50).unwrap(), 50);
        assert_eq!(o.last_seq, 50);
        o.append(frames(1)).unwrap();
        assert_eq!(o.batch_after(50, 10).unwrap().first_seq, 51);
        // The cap drops the oldest held frames.
        o.append(frames(150)).unwrap();
        assert_eq!(o.pending(), 100);
        assert_eq!(o.batch_after(0, 1).unwrap().first_seq, 102);
        // Those were never sent: on the next reconnect the held frames follow the server's
        // ack densely.
        assert_eq!(o.reconcile(50).unwrap(), 50);
        assert_eq!((o.pending(), o.last_seq), (100, 150));
        assert_eq!(o.batch_after(50, 1).unwrap().first_seq, 51);
        // 51..=80 were sent, then the cap drops 51..=90 unacknowledged: the server may have
        // delivered 51..=80 already (cut-through), so those seqs are not reused; the held
        // frames close only the hole of the unsent ones and keep their place above 80.
        o.note_sent(80);
        o.append(frames(40)).unwrap();
        assert_eq!(o.batch_after(0, 1).unwrap().first_seq, 91);
        assert_eq!(o.reconcile(50).unwrap(), 80);
        assert_eq!(o.batch_after(80, 1).unwrap().first_seq, 81);
        assert_eq!((o.pending(), o.last_seq), (100, 180));
        // The group was deactivated while 81..=180 were sent: the server refused some of them,
        // but may have accepted the first batches (appends in flight, not yet in `tx_acked`).
        // None of those seqs is reused; only the unsent 181..=190 are.
        o.note_sent(180);
        o.append(frames(10)).unwrap();
        assert_eq!(o.last_seq, 190);
        o.drop_pending(DropReason::GroupInactive).unwrap();
        assert_eq!(o.reconcile(80).unwrap(), 180);
        assert_eq!(o.last_seq, 180);
        o.append(frames(1)).unwrap();
        assert_eq!(o.batch_after(180, 10).unwrap().first_seq, 181);
    }
}
