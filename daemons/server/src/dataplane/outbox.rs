//! The queue between the engine driver and one connection's writer.
//!
//! The driver must never wait for a slow socket, so it pushes into this queue without blocking
//! and the connection's writer task drains it. The queue stays small by construction: frame
//! deliveries are bounded by the consumer window, consecutive `ack`s and `group_state`s are
//! coalesced (both are cumulative or a snapshot), and a queue that grows past
//! [`MAX_QUEUED`] anyway (an agent that sends but never reads) is cut: the connection is closed
//! with an `internal` error, counted by the caller, and the agent resumes after reconnecting.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use relay_core::engine::DeliverySource;
use relay_core::log::{Item, Seq};
use relay_core::protocol::{ErrorCode, GapNotice, GroupState};
use tokio::sync::Notify;

/// Most queued messages before the connection is considered stuck and closed.
pub(super) const MAX_QUEUED: usize = 16_384;

/// A message for the agent.
#[derive(Debug)]
pub(super) enum Out {
    /// Inbound items to deliver (dense seqs), and where they come from.
    Frames(Vec<Item>, DeliverySource),
    /// Cumulative ack of the agent's outbound stream.
    Ack(Seq),
    /// Seqs the agent will never get.
    Gap(GapNotice),
    /// The group's state changed.
    GroupState(GroupState),
    /// A refusal that does not end the connection (`group_inactive`, `seq_out_of_order`).
    Error(ErrorCode, String),
    /// A fatal error: sent, then the connection is closed.
    Fatal(ErrorCode, String),
    /// Close without an error message (replaced by a newer connection, shutdown).
    Close(String),
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Out>,
    /// A `Fatal` or `Close` was queued: nothing more is accepted.
    closing: bool,
}

/// What [`Outbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushed {
    /// Queued (or merged into the previous message).
    Queued,
    /// The connection is already closing: dropped (the agent will get it after reconnecting).
    Closing,
    /// The queue overflowed: everything queued was dropped and the connection is being closed.
    Overflow,
}

/// One connection's outgoing queue.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent queue (no multi-step updates).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message for the writer. Never blocks.
    pub(super) fn push(&self, out: Out) -> Pushed {
        let pushed = {
            let mut inner = self.lock();
            if inner.closing {
                return Pushed::Closing;
            }
            match (&out, inner.queue.back_mut()) {
                (Out::Ack(new), Some(Out::Ack(old))) => {
                    *old = (*old).max(*new);
                    return Pushed::Queued;
                }
                (Out::GroupState(_), Some(last @ Out::GroupState(_))) => {
                    *last = out;
                    return Pushed::Queued;
                }
                _ => {}
            }
            if matches!(out, Out::Fatal(..) | Out::Close(_)) {
                inner.closing = true;
            }
            if inner.queue.len() >= MAX_QUEUED {
                inner.queue.clear();
                inner.closing = true;
                inner.queue.push_back(Out::Fatal(
                    ErrorCode::Internal,
                    "the connection fell too far behind (the agent is not reading); reconnect"
                        .to_owned(),
                ));
                Pushed::Overflow
            } else {
                inner.queue.push_back(out);
                Pushed::Queued
            }
        };
        self.notify.notify_one();
        pushed
    }

    /// Whether a fatal error or close has been queued.
    pub(super) fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Takes everything queued, waiting until something is.
    pub(super) async fn take(&self) -> VecDeque<Out> {
        loop {
            {
                let mut inner = self.lock();
                if !inner.queue.is_empty() {
                    return std::mem::take(&mut inner.queue);
                }
            }
            // `notify_one` stores a permit when nobody waits, so a push between the check above
            // and this await is not missed.
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_and_states_coalesce_and_close_is_final() {
        let outbox = Outbox::default();
        assert_eq!(outbox.push(Out::Ack(3)), Pushed::Queued);
        assert_eq!(outbox.push(Out::Ack(7)), Pushed::Queued);
        assert_eq!(outbox.push(Out::Ack(5)), Pushed::Queued);
        assert_eq!(outbox.push(Out::Close("bye".to_owned())), Pushed::Queued);
        assert_eq!(outbox.push(Out::Ack(9)), Pushed::Closing);
        assert!(outbox.is_closing());
        let inner = outbox.lock();
        assert_eq!(inner.queue.len(), 2);
        assert!(matches!(inner.queue.front(), Some(Out::Ack(7))));
    }

    #[test]
    fn overflow_replaces_the_queue_with_a_fatal_error() {
        let outbox = Outbox::default();
        for i in 0..MAX_QUEUED {
            outbox.push(Out::Frames(Vec::new(), DeliverySource::Live));
            let _ = i;
        }
        assert_eq!(
            outbox.push(Out::Frames(Vec::new(), DeliverySource::Live)),
            Pushed::Overflow
        );
        let inner = outbox.lock();
        assert_eq!(inner.queue.len(), 1);
        assert!(matches!(
            inner.queue.front(),
            Some(Out::Fatal(ErrorCode::Internal, _))
        ));
    }
}
