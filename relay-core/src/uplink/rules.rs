//! The rules of a producer stream, as pure computations over its numbers: seqs, acks, the cap,
//! drops and renumbering. [`super::StreamOutbox`] builds a [`Draft`] from its state, lets one
//! rule change it, commits the writes the draft collected, and only then takes the draft's
//! numbers as its own — so a failed commit changes nothing.
//!
//! Terms (all per stream): a record's *slot* is fixed at append; its *seq* is
//! `slot + seq_offset`. *Stored* records are the slots `removed_through + 1 ..= last_slot`;
//! among them, those with a seq at or below `acked` are *uplinked* (kept only with
//! [`OnAck::Keep`]), the rest are *pending* ("held"). `sent_high` is the highest seq that may
//! have reached the remote (after a restart: every assigned seq).

use super::store::{DropReason, NewRecord, StreamId, StreamState, StreamWrite};
use crate::error::{Error, Result};
use crate::log::Seq;

/// What happens to a record once the remote acknowledged it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnAck {
    /// It is removed at once (the agent: the server holds it now).
    #[default]
    Delete,
    /// It stays, *uplinked*, until [`super::StreamOutbox::prune_uplinked`] or the cap removes
    /// it (the telemetry vehicle shows recent records on its dashboard).
    Keep,
}

/// What one append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Seq of the first record of this batch still stored (0 when none is: an empty batch).
    pub first_seq: Seq,
    /// Seq of the batch's last record (0 for an empty batch).
    pub last_seq: Seq,
    /// Uplinked records removed to make room (no data lost: the remote holds them).
    pub pruned_uplinked: u64,
    /// Pending records dropped to stay under the cap that cannot reach the remote any more
    /// (never sent, or not sent again since the remote's last handshake showed it lacks them):
    /// lost, counted as [`DropReason::Overflow`] now.
    pub dropped_pending: u64,
    /// Pending records dropped to stay under the cap that may still reach the remote (sent on
    /// the current connection, or before the stream was opened): an ack covering them settles
    /// them as delivered; the rest are counted as [`DropReason::Overflow`] at the remote's next
    /// handshake ([`Reconciled::lost_in_flight`]).
    pub dropped_in_flight: u64,
    /// The held records were renumbered to close the hole the drop left.
    pub renumbered: bool,
}

/// What one [`super::StreamOutbox::drop_pending`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropReport {
    /// Pending records dropped, counted under the call's reason. Records already sent are
    /// included: an upper bound, since the remote may have stored some of them.
    pub dropped: u64,
    /// Sent records the cap had dropped earlier whose fate the remote would have told at its
    /// next handshake; a stream given up ([`DropReason::Abandoned`]) counts them now, as
    /// [`DropReason::Overflow`]. 0 for the other reasons.
    pub unsettled_lost: u64,
}

/// The outcome of reconciling with the remote's handshake (the relay's `welcome.tx_acked`,
/// the uplink's acked seq).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Send the records with seqs above this one (the first may be higher: see
    /// `docs/protocols/uplink.md`).
    pub resume_after: Seq,
    /// The cumulative ack now.
    pub acked: Seq,
    /// The stream's last seq now.
    pub last_seq: Seq,
    /// Held records the handshake acknowledged (acks lost with the previous connection).
    pub newly_acked: u64,
    /// Sent records the cap dropped that the remote turned out not to hold: counted as
    /// [`DropReason::Overflow`] now.
    pub lost_in_flight: u64,
    /// Uplinked records removed because the remote is ahead (their seqs mean other records
    /// there).
    pub pruned_uplinked: u64,
    /// The held records were renumbered (to close a hole, or to follow a remote that is ahead).
    pub renumbered: bool,
    /// The remote holds seqs this stream never assigned (this store was lost or reset); the
    /// held records now follow the remote's ack.
    pub remote_ahead: bool,
    /// The remote holds fewer records than it acknowledged to this process before (it lost
    /// acknowledged data).
    pub remote_behind: bool,
}

/// What this process knows about sending, kept in memory only (a restarted process knows
/// nothing, so it assumes every assigned seq was sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SendState {
    /// The highest seq that may have reached the remote (at open: the last seq).
    pub(crate) sent_high: Seq,
    /// The highest ack the remote itself sent or reported to this process.
    pub(crate) server_acked: Seq,
    /// The seqs handed out for sending since the last reconcile, `first ..= last` (0, 0 when
    /// none): what the current connection carried, in order.
    pub(crate) tx_first: Seq,
    pub(crate) tx_last: Seq,
    /// A reconcile happened since the stream was opened: what was not carried since is known
    /// not to be at the remote unless acknowledged.
    pub(crate) reconciled: bool,
}

impl SendState {
    /// Marks `first ..= last` as handed out for sending.
    pub(crate) fn sent(&mut self, first: Seq, last: Seq) {
        if self.tx_last == 0 {
            self.tx_first = first;
        }
        self.tx_last = self.tx_last.max(last);
        self.sent_high = self.sent_high.max(last);
    }

    /// How many of the seqs `a ..= b` were handed out since the last reconcile.
    fn carried(&self, a: Seq, b: Seq) -> u64 {
        if self.tx_last == 0 {
            return 0;
        }
        let lo = a.max(self.tx_first);
        let hi = b.min(self.tx_last);
        (hi + 1).saturating_sub(lo)
    }
}

/// What a prefix removal took, by kind.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Removed {
    /// Uplinked records.
    pub(crate) uplinked: u64,
    /// Pending records never sent.
    pub(crate) unsent: u64,
    /// Pending records sent (seq at or below `sent_high`) whose fate the remote tells later:
    /// carried since the last reconcile, or sent before the stream was opened and not
    /// reconciled since.
    pub(crate) sent: u64,
    /// Pending records that count as sent but were not carried since the last reconcile,
    /// which showed the remote does not hold them: lost.
    pub(crate) sent_lost: u64,
    /// Seq of the last record counted in `sent`.
    pub(crate) last_sent_seq: Seq,
}

/// The numbers of a stream while one rule changes them, and the writes that persist the change.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub(crate) id: StreamId,
    pub(crate) max_records: u64,
    pub(crate) on_ack: OnAck,
    pub(crate) next_slot: u64,
    pub(crate) removed_through: u64,
    pub(crate) state: StreamState,
    pub(crate) send: SendState,
    writes: Vec<StreamWrite>,
    state_dirty: bool,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Draft {
    pub(crate) fn new(
        id: StreamId,
        max_records: u64,
        on_ack: OnAck,
        next_slot: u64,
        removed_through: u64,
        state: StreamState,
        send: SendState,
    ) -> Self {
        Draft {
            id,
            max_records,
            on_ack,
            next_slot,
            removed_through,
            state,
            send,
            writes: Vec::new(),
            state_dirty: false,
        }
    }

    /// The writes that persist this draft.
    pub(crate) fn finish(&mut self) -> Vec<StreamWrite> {
        if std::mem::take(&mut self.state_dirty) {
            self.writes.push(StreamWrite::State {
                stream: self.id,
                state: self.state.clone(),
            });
        }
        std::mem::take(&mut self.writes)
    }

    // ---- derived numbers -------------------------------------------------------------------

    /// The seq of `slot`.
    pub(crate) fn seq_of(&self, slot: u64) -> Seq {
        u64::try_from(to_i64(slot).saturating_add(self.state.seq_offset)).unwrap_or(0)
    }

    /// The slot of `seq` (0 or below for seqs before the first slot).
    pub(crate) fn slot_of(&self, seq: Seq) -> i64 {
        to_i64(seq).saturating_sub(self.state.seq_offset)
    }

    pub(crate) fn last_slot(&self) -> u64 {
        self.next_slot.saturating_sub(1)
    }

    pub(crate) fn last_seq(&self) -> Seq {
        self.seq_of(self.last_slot())
    }

    /// The first pending slot (one past the last slot when nothing is pending).
    pub(crate) fn pending_first_slot(&self) -> u64 {
        let acked_slot = u64::try_from(self.slot_of(self.state.acked)).unwrap_or(0);
        self.removed_through.max(acked_slot).saturating_add(1)
    }

    pub(crate) fn pending(&self) -> u64 {
        self.next_slot.saturating_sub(self.pending_first_slot())
    }

    pub(crate) fn stored(&self) -> u64 {
        self.last_slot().saturating_sub(self.removed_through)
    }

    fn uplinked_stored(&self) -> u64 {
        self.pending_first_slot()
            .saturating_sub(1)
            .saturating_sub(self.removed_through)
    }

    /// Seqs at or below this may be at the remote: never given to another record.
    fn floor(&self) -> Seq {
        self.state
            .acked
            .max(self.send.sent_high.min(self.last_seq()))
    }

    // ---- building blocks -------------------------------------------------------------------

    fn dirty(&mut self) {
        self.state_dirty = true;
    }

    /// Removes the stored records through `slot` (a prefix) and says what they were.
    pub(crate) fn remove_through(&mut self, slot: u64) -> Removed {
        let slot = slot.min(self.last_slot());
        let mut removed = Removed::default();
        if slot <= self.removed_through {
            return removed;
        }
        let pending_first = self.pending_first_slot();
        removed.uplinked = slot
            .min(pending_first - 1)
            .saturating_sub(self.removed_through);
        let first = pending_first.max(self.removed_through + 1);
        if first <= slot {
            let total = slot - first + 1;
            let last_sent_slot = self.slot_of(self.send.sent_high);
            let sent_end = u64::try_from(last_sent_slot.min(to_i64(slot))).unwrap_or(0);
            let sent = (sent_end + 1).saturating_sub(first).min(total);
            removed.unsent = total - sent;
            if sent > 0 {
                let (a, b) = (self.seq_of(first), self.seq_of(first + sent - 1));
                if self.send.reconciled {
                    removed.sent = self.send.carried(a, b);
                    removed.sent_lost = sent - removed.sent;
                    removed.last_sent_seq = b.min(self.send.tx_last);
                } else {
                    removed.sent = sent;
                    removed.last_sent_seq = b;
                }
            }
        }
        self.writes.push(StreamWrite::RemoveThrough {
            stream: self.id,
            slot,
        });
        self.removed_through = slot;
        removed
    }

    /// Drops what a removal took from the pending records under the cap: unsent records are
    /// counted now, sent ones once the remote's handshake shows they did not arrive.
    fn count_overflow(&mut self, removed: Removed) {
        let mut lost = removed.unsent + removed.sent_lost;
        if removed.sent > 0 {
            // Drops take the oldest pending records, so these lie above the unsettled ones.
            let first = removed.last_sent_seq + 1 - removed.sent;
            lost += self.state.unsettled.add(first, removed.last_sent_seq);
            self.dirty();
        }
        if lost > 0 {
            self.state.dropped.add(DropReason::Overflow, lost);
            self.dirty();
        }
    }

    /// Keeps the stream free of holes above what may be at the remote: when drops left one,
    /// the held records (none of them sent, none uplinked — drops take the oldest first) move
    /// down to follow [`floor`](Self::floor), or the last seq moves down when nothing is held.
    /// A seq that may have reached the remote is never given to another record: the relay
    /// delivers a frame to the other side before it is durable (cut-through), and the other
    /// side skips a seq it already has.
    fn close_hole(&mut self) -> bool {
        let floor = self.floor();
        let excess = if self.pending() > 0 {
            self.seq_of(self.pending_first_slot())
                .saturating_sub(floor + 1)
        } else {
            self.last_seq().saturating_sub(floor)
        };
        if excess == 0 || self.uplinked_stored() > 0 {
            return false;
        }
        self.state.seq_offset = self.state.seq_offset.saturating_sub(to_i64(excess));
        self.dirty();
        true
    }

    // ---- the rules -------------------------------------------------------------------------

    /// Appends `records` (assigning the next seqs) and applies the cap: the oldest stored
    /// records go first — uplinked ones, then pending ones.
    pub(crate) fn append(&mut self, records: Vec<NewRecord>) -> AppendReport {
        let mut report = AppendReport::default();
        if records.is_empty() {
            return report;
        }
        let first_slot = self.next_slot;
        self.next_slot += records.len() as u64;
        self.writes.push(StreamWrite::Append {
            stream: self.id,
            first_slot,
            records,
        });
        let excess = self.stored().saturating_sub(self.max_records);
        if excess > 0 {
            let removed = self.remove_through(self.removed_through + excess);
            report.pruned_uplinked = removed.uplinked;
            report.dropped_pending = removed.unsent + removed.sent_lost;
            report.dropped_in_flight = removed.sent;
            self.count_overflow(removed);
        }
        report.renumbered = self.close_hole();
        let first_kept = first_slot.max(self.removed_through + 1);
        report.first_seq = self.seq_of(first_kept);
        report.last_seq = self.last_seq();
        report
    }

    /// The remote acknowledged every seq up to `up_to`. Returns how many held records that
    /// covered. An ack above the last seq is refused; one at or below the current ack changes
    /// nothing.
    pub(crate) fn ack(&mut self, up_to: Seq) -> Result<u64> {
        let last = self.last_seq();
        if up_to > last {
            return Err(Error::UplinkAckAhead {
                acked: up_to,
                sent: last,
            });
        }
        self.send.server_acked = self.send.server_acked.max(up_to);
        if up_to <= self.state.acked {
            return Ok(0);
        }
        let first = self.pending_first_slot();
        let up_to_slot = u64::try_from(self.slot_of(up_to)).unwrap_or(0);
        let newly = (up_to_slot + 1).saturating_sub(first);
        self.state.acked = up_to;
        // Unsettled records the ack covers reached the remote.
        self.state.unsettled.delivered_through(up_to);
        self.dirty();
        if self.on_ack == OnAck::Delete && up_to_slot > self.removed_through {
            self.remove_through(up_to_slot);
        }
        Ok(newly)
    }

    /// Drops every pending record (with [`OnAck::Keep`], the uplinked copies too: removal is
    /// always of a prefix), counted under `reason`.
    pub(crate) fn drop_pending(&mut self, reason: DropReason) -> DropReport {
        let mut report = DropReport {
            dropped: self.pending(),
            unsettled_lost: 0,
        };
        if self.stored() > 0 {
            self.remove_through(self.last_slot());
        }
        if report.dropped > 0 {
            self.state.dropped.add(reason, report.dropped);
            self.dirty();
        }
        if reason == DropReason::Abandoned {
            report.unsettled_lost = self.settle_unsettled(self.state.acked);
        }
        self.close_hole();
        report
    }

    /// Counts the unsettled records above `held_by_remote` as lost; none stays unsettled.
    fn settle_unsettled(&mut self, held_by_remote: Seq) -> u64 {
        if self.state.unsettled.ranges().is_empty() {
            return 0;
        }
        let lost = self.state.unsettled.settle(held_by_remote);
        self.state.dropped.add(DropReason::Overflow, lost);
        self.dirty();
        lost
    }

    /// Reconciles with what the remote says it holds durably (`remote_acked`).
    ///
    /// * At or below the last seq: everything up to it is acknowledged (acks lost in a crash
    ///   or with the connection are recovered), sent records the cap dropped above it are
    ///   counted lost, and a hole above what may be at the remote is closed.
    /// * Above the last seq: the remote holds seqs this stream never assigned (its store was
    ///   lost). The held records are renumbered to follow `remote_acked` — otherwise the
    ///   remote would take them for retransmissions — and uplinked copies are removed.
    pub(crate) fn reconcile(&mut self, remote_acked: Seq) -> Reconciled {
        let mut out = Reconciled::default();
        // A new connection: it has carried nothing yet.
        self.send.reconciled = true;
        self.send.tx_first = 0;
        self.send.tx_last = 0;
        if remote_acked > self.last_seq() {
            out.remote_ahead = true;
            let pending_first = self.pending_first_slot();
            if pending_first > self.removed_through + 1 {
                out.pruned_uplinked = self.remove_through(pending_first - 1).uplinked;
            }
            let follow = if self.pending() > 0 {
                self.seq_of(pending_first)
            } else {
                self.last_seq() + 1
            };
            let shift = remote_acked + 1 - follow;
            self.state.seq_offset = self.state.seq_offset.saturating_add(to_i64(shift));
            self.state.acked = remote_acked;
            self.state.unsettled = Default::default();
            self.send.server_acked = self.send.server_acked.max(remote_acked);
            self.dirty();
            out.renumbered = true;
            out.resume_after = remote_acked;
        } else {
            out.remote_behind = remote_acked < self.send.server_acked;
            // `ack` cannot fail: `remote_acked` is at most the last seq.
            out.newly_acked = self.ack(remote_acked).unwrap_or(0);
            out.lost_in_flight = self.settle_unsettled(remote_acked.max(self.state.acked));
            out.renumbered = self.close_hole();
            // Right before the first held record (or the last seq when none is held), but
            // never below the ack and never above what may be at the remote.
            let before_first = if self.pending() > 0 {
                self.seq_of(self.pending_first_slot()) - 1
            } else {
                self.last_seq()
            };
            out.resume_after = self.state.acked.max(before_first.min(self.floor()));
        }
        out.acked = self.state.acked;
        out.last_seq = self.last_seq();
        out
    }

    /// Stores the inbound cursor.
    pub(crate) fn set_rx(&mut self, rx_seq: Seq) {
        if self.state.rx_seq != rx_seq {
            self.state.rx_seq = rx_seq;
            self.dirty();
        }
    }
}
