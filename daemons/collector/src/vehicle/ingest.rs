//! The queue from the record sources (the CAN listener, [`super::Vehicle::ingest`]) to the
//! driver, bounded in bytes rather than in batches: a batch takes its cost
//! ([`record_cost`] per record) out of a budget of [`INGEST_BYTES`] before it is queued, and
//! gives it back when the driver's append of it has committed. So what waits in memory for the
//! store is at most the budget, whatever the batch sizes (a bound in batches let 16 batches of
//! 4,096 records — 10 MB — wait). A batch larger than the whole budget waits for all of it.
//!
//! It does not drop anything: a producer that outruns the store waits in [`Ingest::send`]
//! (the listener gathers frames meanwhile and counts what exceeds its own backlog).

use std::sync::Arc;

use relay_core::uplink::NewRecord;
use tokio::sync::mpsc::error::SendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Bytes of records queued for the store or being appended, at most. 4 MiB is about 32,000
/// records of 64 bytes: room for the append being committed and the next one
/// ([`super::driver`]'s `MAX_APPEND`), so a fast producer never leaves the store idle.
pub const INGEST_BYTES: usize = 4 << 20;

/// What one record costs in the budget: its payload and what holds it (the `NewRecord` in
/// its vector, the payload's allocation).
pub fn record_cost(record: &NewRecord) -> usize {
    record.payload.len() + 64
}

/// A batch admitted into the budget; the budget is given back when it is dropped.
pub(crate) struct Admitted {
    pub(crate) records: Vec<NewRecord>,
    pub(crate) permit: OwnedSemaphorePermit,
}

/// The sending side: clone it freely.
#[derive(Debug, Clone)]
pub struct Ingest {
    tx: mpsc::UnboundedSender<Admitted>,
    budget: Arc<Semaphore>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("records", &self.records.len())
            .finish()
    }
}

/// A new queue: the sender and the driver's receiver.
pub(crate) fn channel() -> (Ingest, mpsc::UnboundedReceiver<Admitted>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(INGEST_BYTES));
    (Ingest { tx, budget }, rx)
}

/// The budget a batch of `bytes` takes: all of it, at most.
fn permits(bytes: usize) -> u32 {
    bytes.clamp(1, INGEST_BYTES) as u32
}

impl Ingest {
    /// Queues `records` for the store, waiting while the budget is spent. Fails (handing the
    /// records back) once the vehicle has stopped.
    pub async fn send(&self, records: Vec<NewRecord>) -> Result<(), SendError<Vec<NewRecord>>> {
        let bytes = records.iter().map(record_cost).sum();
        match self.reserve(bytes).await {
            Some(permit) => self.send_reserved(records, permit),
            None => Err(SendError(records)),
        }
    }

    /// Waits for room for `bytes` of records (all the budget, if more). `None`: the vehicle
    /// stopped. Dropping the future gives back what it had taken.
    pub(crate) async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        if self.tx.is_closed() {
            return None;
        }
        Arc::clone(&self.budget)
            .acquire_many_owned(permits(bytes))
            .await
            .ok()
    }

    /// Queues `records` with the room [`Ingest::reserve`] gave.
    pub(crate) fn send_reserved(
        &self,
        records: Vec<NewRecord>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), SendError<Vec<NewRecord>>> {
        self.tx
            .send(Admitted { records, permit })
            .map_err(|e| SendError(e.0.records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(n: usize, size: usize) -> Vec<NewRecord> {
        (0..n)
            .map(|i| NewRecord {
                ts_ms: i as u64,
                payload: Bytes::from(vec![b'x'; size]),
            })
            .collect()
    }

    #[tokio::test]
    async fn the_budget_bounds_queued_bytes_and_comes_back_after_the_append() {
        let (ingest, mut rx) = channel();
        // 1,000-byte payloads: 1,064 each in the budget.
        let per_batch = 1000;
        let cost = per_batch * 1064;
        let fit = INGEST_BYTES / cost;
        for _ in 0..fit {
            ingest.send(batch(per_batch, 1000)).await.unwrap();
        }
        // The next batch does not fit: it waits.
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            ingest.send(batch(per_batch, 1000)),
        )
        .await;
        assert!(blocked.is_err(), "a batch over the budget was queued");
        // The driver takes one and drops it (appended): room for one more.
        let first = rx.recv().await.unwrap();
        assert_eq!(first.records.len(), per_batch);
        drop(first);
        ingest.send(batch(per_batch, 1000)).await.unwrap();
        // A batch larger than the whole budget waits for all of it, then goes.
        let mut all = Vec::new();
        for _ in 0..fit {
            all.push(rx.recv().await.unwrap());
        }
        let huge = tokio::spawn({
            let ingest = ingest.clone();
            async move { ingest.send(batch(INGEST_BYTES / 100, 1000)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!huge.is_finished(), "went before the budget was free");
        drop(all);
        huge.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.unwrap().records.len(), INGEST_BYTES / 100);
        // Once the driver is gone the records come back.
        drop(rx);
        let back = ingest.send(batch(3, 10)).await.unwrap_err();
        assert_eq!(back.0.len(), 3);
    }
}
