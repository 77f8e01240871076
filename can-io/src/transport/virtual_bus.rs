//! An in-process CAN bus: every frame a port sends is delivered to every other port.
//!
//! Each port has its own bounded receive queue. What happens when it is full is the port's
//! [`OverflowPolicy`]: a `DropNewest` port loses the frame and counts it (a slow listener never
//! stalls the bus, like a real node whose receive FIFO overflows); a `Backpressure` port makes
//! senders wait ([`VirtualPort::send`]) or fail with the retryable [`Error::QueueFull`]
//! ([`VirtualPort::try_send`]) — for consumers that must not lose frames, such as a recorder.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{BusStats, CanBus};
use crate::error::Error;
use crate::frame::CanRecord;

/// What a port does when its receive queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Drop the incoming frame for this port and count it.
    #[default]
    DropNewest,
    /// Refuse the frame for everyone until this port has room (senders wait or get
    /// [`Error::QueueFull`]).
    Backpressure,
}

#[derive(Debug)]
struct PortShared {
    id: u64,
    name: String,
    capacity: usize,
    policy: OverflowPolicy,
    queue: Mutex<VecDeque<CanRecord>>,
    ready: Notify,
    dropped: AtomicU64,
    received: AtomicU64,
}

#[derive(Debug, Default)]
struct BusInner {
    ports: Mutex<Vec<Arc<PortShared>>>,
    next_id: AtomicU64,
    space: Notify,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a VecDeque half-updated in a way that
    // matters here; keep going rather than poison every port.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bus. Cheap to clone; all clones are the same bus.
#[derive(Debug, Clone, Default)]
pub struct VirtualBus {
    inner: Arc<BusInner>,
}

impl VirtualBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attach a port named `name` with a receive queue of `capacity` frames (at least 1).
    pub fn port(&self, name: &str, capacity: usize, policy: OverflowPolicy) -> VirtualPort {
        let shared = Arc::new(PortShared {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            capacity: capacity.max(1),
            policy,
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
        });
        lock(&self.inner.ports).push(shared.clone());
        VirtualPort {
            shared,
            bus: self.inner.clone(),
            sent: 0,
        }
    }

    /// Frames dropped so far, per attached port, by port name.
    pub fn drop_report(&self) -> Vec<(String, u64)> {
        lock(&self.inner.ports)
            .iter()
            .map(|p| (p.name.clone(), p.dropped.load(Ordering::Relaxed)))
            .collect()
    }

    /// Close the bus: pending frames can still be read, then `recv` returns `None`, and sending
    /// fails with [`Error::Closed`].
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for p in lock(&self.inner.ports).iter() {
            p.ready.notify_one();
        }
        self.inner.space.notify_waiters();
    }
}

/// One node on a [`VirtualBus`]. Detaches when dropped.
#[derive(Debug)]
pub struct VirtualPort {
    shared: Arc<PortShared>,
    bus: Arc<BusInner>,
    sent: u64,
}

impl VirtualPort {
    /// Broadcast without waiting. Fails with [`Error::QueueFull`] (nothing delivered to anyone)
    /// when a `Backpressure` port has no room.
    pub fn try_send(&mut self, record: &CanRecord) -> Result<(), Error> {
        if self.bus.closed.load(Ordering::Acquire) {
            return Err(Error::Closed {
                transport: "virtual bus",
            });
        }
        let ports = lock(&self.bus.ports);
        let others = || ports.iter().filter(|p| p.id != self.shared.id);
        for p in others() {
            if p.policy == OverflowPolicy::Backpressure && lock(&p.queue).len() >= p.capacity {
                return Err(Error::QueueFull {
                    transport: "virtual bus",
                    capacity: p.capacity,
                });
            }
        }
        for p in others() {
            let mut q = lock(&p.queue);
            if q.len() >= p.capacity {
                p.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            q.push_back(record.clone());
            drop(q);
            p.ready.notify_one();
        }
        self.sent += 1;
        Ok(())
    }

    /// Frames waiting in this port's receive queue.
    pub fn queued(&self) -> usize {
        lock(&self.shared.queue).len()
    }

    /// Frames this port lost to a full receive queue.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The next frame without waiting.
    pub fn try_recv(&mut self) -> Option<CanRecord> {
        let r = lock(&self.shared.queue).pop_front();
        if r.is_some() {
            self.shared.received.fetch_add(1, Ordering::Relaxed);
            self.bus.space.notify_waiters();
        }
        r
    }
}

impl Drop for VirtualPort {
    fn drop(&mut self) {
        lock(&self.bus.ports).retain(|p| p.id != self.shared.id);
        // A backpressured sender may have been waiting for this port.
        self.bus.space.notify_waiters();
    }
}

impl CanBus for VirtualPort {
    async fn send(&mut self, record: &CanRecord) -> Result<(), Error> {
        loop {
            let bus = self.bus.clone();
            let space = bus.space.notified();
            tokio::pin!(space);
            // Register before trying, so room freed in between is not missed.
            space.as_mut().enable();
            match self.try_send(record) {
                Err(Error::QueueFull { .. }) => space.await,
                other => return other,
            }
        }
    }

    async fn recv(&mut self) -> Result<Option<CanRecord>, Error> {
        loop {
            if let Some(r) = self.try_recv() {
                return Ok(Some(r));
            }
            if self.bus.closed.load(Ordering::Acquire) {
                return Ok(None);
            }
            // `notify_one` stores a permit when nobody waits, so a frame pushed between the
            // check above and this await still wakes us.
            self.shared.ready.notified().await;
        }
    }

    fn stats(&self) -> BusStats {
        BusStats {
            sent: self.sent,
            received: self.shared.received.load(Ordering::Relaxed),
            dropped: self.dropped(),
            malformed: 0,
        }
    }
}
