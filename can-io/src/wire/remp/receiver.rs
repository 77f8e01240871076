//! The receiving side of REMP, sans-IO: datagrams in, records and loss counts out.

use std::collections::HashMap;

use serde::Serialize;

use super::{RempBody, RempKey, decode, is_authenticated};
use crate::error::Error;
use crate::frame::{CanRecord, Channel};

/// Width of the window in which late datagrams are still accepted (and told apart from
/// duplicates).
pub const SEQ_WINDOW: u32 = 64;

/// What a sequence number means relative to what was seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Next in order (or the first one seen).
    InOrder,
    /// Ahead of the expected number: `skipped` datagrams are (so far) lost.
    Gap {
        /// How many numbers were skipped.
        skipped: u32,
    },
    /// Late but not seen before: accepted, and no longer counted as lost.
    Reordered,
    /// Seen before: drop it.
    Duplicate,
    /// Older than the window: cannot tell a duplicate from a late one, so drop it.
    Stale,
}

/// Anti-replay style window over 32-bit wrapping sequence numbers (as in IPsec, RFC 4303).
#[derive(Debug, Clone, Default)]
pub struct SeqWindow {
    highest: Option<u32>,
    /// Bit i set = `highest - i` was seen.
    seen: u64,
}

impl SeqWindow {
    /// Classify `seq` and remember it.
    pub fn observe(&mut self, seq: u32) -> SeqVerdict {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            self.seen = 1;
            return SeqVerdict::InOrder;
        };
        let ahead = seq.wrapping_sub(highest);
        if ahead == 0 {
            return SeqVerdict::Duplicate;
        }
        if ahead < 0x8000_0000 {
            self.seen = if ahead >= 64 { 0 } else { self.seen << ahead };
            self.seen |= 1;
            self.highest = Some(seq);
            return if ahead == 1 {
                SeqVerdict::InOrder
            } else {
                SeqVerdict::Gap { skipped: ahead - 1 }
            };
        }
        let behind = highest.wrapping_sub(seq);
        if behind >= SEQ_WINDOW {
            return SeqVerdict::Stale;
        }
        let bit = 1u64 << behind;
        if self.seen & bit != 0 {
            SeqVerdict::Duplicate
        } else {
            self.seen |= bit;
            SeqVerdict::Reordered
        }
    }

    /// Forget everything (the sender restarted).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// Counters for one dongle.
/// Its serde form (the field names) is the `stats()` dict of the Python bindings: renaming a
/// field renames a Python key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DongleStats {
    /// Datagrams accepted.
    pub datagrams: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Datagrams missing from the sequence (goes down again when a late one arrives).
    pub lost: u64,
    /// Datagrams received twice (dropped).
    pub duplicate: u64,
    /// Datagrams that arrived late but were still accepted.
    pub reordered: u64,
    /// Datagrams too old to classify (dropped).
    pub stale: u64,
    /// Times the dongle restarted (new boot id).
    pub restarts: u64,
    /// Frames the dongle itself reported as dropped (latest hello / keep-alive).
    pub dongle_dropped: u32,
}

#[derive(Debug, Default)]
struct DongleState {
    boot_id: Option<u64>,
    window: SeqWindow,
    channels: Vec<Channel>,
    last_seen_ns: u64,
    stats: DongleStats,
}

/// What one datagram produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RempEvent {
    /// A hello. `restarted` when the boot id differs from the previous one.
    Hello {
        /// Dongle serial.
        serial: String,
        /// Boot id.
        boot_id: u64,
        /// Keep-alive interval promised, ms.
        keepalive_ms: u16,
        /// Whether this dongle was known with another boot id.
        restarted: bool,
    },
    /// A keep-alive.
    Keepalive {
        /// Dongle serial.
        serial: String,
    },
    /// Frames, in the order the dongle sent them.
    Frames {
        /// Dongle serial.
        serial: String,
        /// The records; channels named from the hello (`canN` before one was seen).
        records: Vec<CanRecord>,
    },
    /// A datagram dropped as a duplicate or as too old; counted in [`DongleStats`].
    Dropped {
        /// Dongle serial.
        serial: String,
        /// Its sequence number.
        seq: u32,
        /// Why.
        verdict: SeqVerdict,
    },
}

/// Decodes datagrams from any number of dongles and keeps per-dongle sequence state.
#[derive(Debug)]
pub struct RempReceiver {
    dongles: HashMap<String, DongleState>,
    max_dongles: usize,
    rejected_dongles: u64,
    /// Authentication settings and counts (boxed: most receivers have none).
    auth: Box<AuthState>,
}

#[derive(Debug, Default)]
struct AuthState {
    /// Keys per serial (several while a key is rotated); a serial listed here must sign.
    keys: HashMap<String, Vec<RempKey>>,
    /// Refuse every serial without a key.
    require_auth: bool,
    /// Datagrams refused by authentication, by reason.
    refused: AuthRefused,
}

/// Datagrams refused by authentication (none of them changed any state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthRefused {
    /// From a serial that has a key, without a valid tag under any of its keys.
    pub bad_tag: u64,
    /// From a serial without a key while authentication is required, or signed by a serial
    /// the receiver has no key for.
    pub no_key: u64,
    /// Signed and valid, but from an older boot than one already accepted (a replay).
    pub old_boot: u64,
}

impl AuthRefused {
    /// All refusals.
    pub fn total(&self) -> u64 {
        self.bad_tag + self.no_key + self.old_boot
    }
}

impl Default for RempReceiver {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl RempReceiver {
    /// A receiver that tracks at most `max_dongles` serials (more are refused, so a flood of
    /// forged serials cannot grow memory without bound).
    pub fn new(max_dongles: usize) -> Self {
        Self {
            dongles: HashMap::new(),
            max_dongles,
            rejected_dongles: 0,
            auth: Box::default(),
        }
    }

    /// Requires datagrams of `serial` to be signed with one of `keys` (several while a key is
    /// being rotated; an empty list removes the requirement). Takes effect at once.
    pub fn set_keys(&mut self, serial: &str, keys: Vec<RempKey>) {
        if keys.is_empty() {
            self.auth.keys.remove(serial);
        } else {
            self.auth.keys.insert(serial.to_owned(), keys);
        }
    }

    /// With `true`, datagrams of serials without a key are refused (the production setting).
    pub fn set_require_auth(&mut self, require: bool) {
        self.auth.require_auth = require;
    }

    /// Datagrams refused by authentication so far.
    pub fn auth_refused(&self) -> AuthRefused {
        self.auth.refused
    }

    /// Checks the tag of a datagram of `serial` whose sender claims (hello, keep-alive) or is
    /// known to be in (frames) boot `boot_id`. `Err` (counted) when it must be refused;
    /// `Ok(true)` for a valid signature.
    fn authenticate(
        &mut self,
        serial: &str,
        boot_id: Option<u64>,
        bytes: &[u8],
    ) -> Result<bool, Error> {
        let refuse = |reason: String| Error::Unsupported {
            protocol: "REMP",
            reason,
        };
        match self.auth.keys.get(serial) {
            Some(keys) => {
                if let Some(boot) = boot_id
                    && keys.iter().any(|k| k.verify(boot, bytes))
                {
                    Ok(true)
                } else {
                    self.auth.refused.bad_tag += 1;
                    Err(refuse(if boot_id.is_none() {
                        format!("frames of {serial} before its signed hello: dropped")
                    } else {
                        format!("datagram of {serial} is not signed with its key: dropped")
                    }))
                }
            }
            None if self.auth.require_auth || is_authenticated(bytes) => {
                self.auth.refused.no_key += 1;
                Err(refuse(format!(
                    "no key for dongle {serial} (authentication required): dropped"
                )))
            }
            None => Ok(false),
        }
    }

    /// Handle one datagram received at `now_ns`.
    pub fn handle_datagram(&mut self, bytes: &[u8], now_ns: u64) -> Result<RempEvent, Error> {
        let d = decode(bytes)?;
        let claimed_boot = match &d.body {
            RempBody::Hello(h) => Some(h.boot_id),
            RempBody::Keepalive(k) => Some(k.boot_id),
            RempBody::Frames(_) => None,
        };
        let known_boot = self.dongles.get(&d.serial).and_then(|s| s.boot_id);
        // Before any state is touched: a forged datagram must change nothing.
        let signed = self.authenticate(&d.serial, claimed_boot.or(known_boot), bytes)?;
        if signed
            && let (Some(claimed), Some(known)) = (claimed_boot, known_boot)
            && claimed < known
        {
            // A signed dongle's boot id only grows: an older one is a recorded datagram.
            self.auth.refused.old_boot += 1;
            return Err(Error::Unsupported {
                protocol: "REMP",
                reason: format!(
                    "datagram of {} from an older boot than the current one: dropped as a replay",
                    d.serial
                ),
            });
        }
        if !self.dongles.contains_key(&d.serial) && self.dongles.len() >= self.max_dongles {
            self.rejected_dongles += 1;
            return Err(Error::Unsupported {
                protocol: "REMP",
                reason: format!("more than {} dongles tracked", self.max_dongles),
            });
        }
        let state = self.dongles.entry(d.serial.clone()).or_default();
        state.last_seen_ns = now_ns;
        // A new boot id restarts numbering: judge the sequence number only afterwards.
        let mut restarted = false;
        let boot = match &d.body {
            RempBody::Hello(h) => Some((h.boot_id, h.dropped)),
            RempBody::Keepalive(k) => Some((k.boot_id, k.dropped)),
            RempBody::Frames(_) => None,
        };
        if let Some((boot_id, dropped)) = boot {
            if state.boot_id.is_some_and(|b| b != boot_id) {
                restarted = true;
                state.stats.restarts += 1;
                state.window.reset();
            }
            state.boot_id = Some(boot_id);
            state.stats.dongle_dropped = dropped;
        }
        match state.window.observe(d.seq) {
            SeqVerdict::InOrder => {}
            SeqVerdict::Gap { skipped } => state.stats.lost += u64::from(skipped),
            SeqVerdict::Reordered => {
                state.stats.reordered += 1;
                state.stats.lost = state.stats.lost.saturating_sub(1);
            }
            verdict @ (SeqVerdict::Duplicate | SeqVerdict::Stale) => {
                if verdict == SeqVerdict::Duplicate {
                    state.stats.duplicate += 1;
                } else {
                    state.stats.stale += 1;
                }
                return Ok(RempEvent::Dropped {
                    serial: d.serial,
                    seq: d.seq,
                    verdict,
                });
            }
        }
        state.stats.datagrams += 1;
        Ok(match d.body {
            RempBody::Hello(h) => {
                state.channels = h
                    .channels
                    .iter()
                    .map(|c| Channel::from(c.as_str()))
                    .collect();
                RempEvent::Hello {
                    serial: d.serial,
                    boot_id: h.boot_id,
                    keepalive_ms: h.keepalive_ms,
                    restarted,
                }
            }
            RempBody::Keepalive(_) => RempEvent::Keepalive { serial: d.serial },
            RempBody::Frames(frames) => {
                state.stats.frames += frames.len() as u64;
                let records = frames
                    .into_iter()
                    .map(|f| {
                        let channel = match state.channels.get(f.channel as usize) {
                            Some(c) => c.clone(),
                            None => Channel::from(format!("can{}", f.channel)),
                        };
                        CanRecord::new(f.ts_ns, channel, f.direction, f.frame)
                    })
                    .collect();
                RempEvent::Frames {
                    serial: d.serial,
                    records,
                }
            }
        })
    }

    /// Counters for one dongle.
    pub fn stats(&self, serial: &str) -> Option<DongleStats> {
        self.dongles.get(serial).map(|s| s.stats)
    }

    /// All dongles seen, with their counters and when they were last heard (ns).
    pub fn dongles(&self) -> impl Iterator<Item = (&str, DongleStats, u64)> {
        self.dongles
            .iter()
            .map(|(k, s)| (k.as_str(), s.stats, s.last_seen_ns))
    }

    /// Datagrams refused because too many dongles were tracked.
    pub fn rejected_dongles(&self) -> u64 {
        self.rejected_dongles
    }

    /// Sum of the counters over all dongles.
    pub fn totals(&self) -> DongleStats {
        let mut t = DongleStats::default();
        for s in self.dongles.values() {
            let s = s.stats;
            t.datagrams += s.datagrams;
            t.frames += s.frames;
            t.lost += s.lost;
            t.duplicate += s.duplicate;
            t.reordered += s.reordered;
            t.stale += s.stale;
            t.restarts += s.restarts;
            t.dongle_dropped = t.dongle_dropped.wrapping_add(s.dongle_dropped);
        }
        t
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(i: u64) -> CanRecord {
        use crate::frame::{CanFrame, CanId, DataFrame, Direction};
        let frame = DataFrame::new(CanId::standard(0x100).unwrap(), &[i as u8]).unwrap();
        CanRecord::new(
            i,
            Channel::from("can0"),
            Direction::Rx,
            CanFrame::Data(frame),
        )
    }

    /// Hello then one frames datagram per record.
    fn datagrams(sender: &mut super::super::RempSender, n: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for i in 0..n {
            out.extend(sender.push(&record(i)).unwrap());
            out.extend(sender.flush().unwrap());
        }
        out
    }

    #[test]
    fn keyed_serials_accept_only_fresh_datagrams_signed_with_their_key() {
        use super::super::RempSender;
        let key = RempKey::new(&[7; 32]).unwrap();
        let other = RempKey::new(&[8; 32]).unwrap();
        let mut rx = RempReceiver::default();
        rx.set_keys("D1", vec![key.clone()]);
        let frames_of = |rx: &mut RempReceiver, bytes: &[u8]| match rx.handle_datagram(bytes, 0) {
            Ok(RempEvent::Frames { records, .. }) => records.len(),
            _ => 0,
        };
        // Unsigned and wrongly signed datagrams of D1 are dropped, counted, and change nothing.
        let mut plain = RempSender::new("D1", 10, 1000).unwrap();
        for d in datagrams(&mut plain, 2) {
            assert!(rx.handle_datagram(&d, 0).is_err());
        }
        let mut forger = RempSender::new("D1", 10, 1000).unwrap().with_key(other);
        for d in datagrams(&mut forger, 2) {
            assert!(rx.handle_datagram(&d, 0).is_err());
        }
        assert_eq!(rx.auth_refused().bad_tag, 6);
        assert_eq!(rx.stats("D1"), None, "no state from refused datagrams");
        // The real dongle.
        let mut dongle = RempSender::new("D1", 10, 1000)
            .unwrap()
            .with_key(key.clone());
        let sent = datagrams(&mut dongle, 3);
        let got: usize = sent.iter().map(|d| frames_of(&mut rx, d)).sum();
        assert_eq!(got, 3);
        // Replays are dropped by the sequence window.
        for d in &sent {
            assert_eq!(frames_of(&mut rx, d), 0);
        }
        // After a restart (a larger boot id) the old boot's datagrams fail: frames are bound
        // to the boot, hellos from an older boot are refused as replays.
        let mut rebooted = RempSender::new("D1", 11, 1000)
            .unwrap()
            .with_key(key.clone());
        let fresh = datagrams(&mut rebooted, 1);
        assert_eq!(
            fresh.iter().map(|d| frames_of(&mut rx, d)).sum::<usize>(),
            1
        );
        let before = rx.auth_refused();
        for d in &sent {
            assert!(rx.handle_datagram(d, 0).is_err());
        }
        let after = rx.auth_refused();
        assert_eq!(after.old_boot - before.old_boot, 1, "the old hello");
        assert_eq!(after.bad_tag - before.bad_tag, 3, "the old frames");
        // Rotation: both keys accepted while the dongle switches.
        let new_key = RempKey::new(&[9; 32]).unwrap();
        rx.set_keys("D1", vec![key, new_key.clone()]);
        let mut switched = RempSender::new("D1", 12, 1000).unwrap().with_key(new_key);
        let n: usize = datagrams(&mut switched, 2)
            .iter()
            .map(|d| frames_of(&mut rx, d))
            .sum();
        assert_eq!(n, 2);
        // Serials without a key: accepted unless authentication is required.
        let mut open = RempSender::new("D2", 1, 1000).unwrap();
        let first = datagrams(&mut open, 1);
        assert_eq!(
            first.iter().map(|d| frames_of(&mut rx, d)).sum::<usize>(),
            1
        );
        rx.set_require_auth(true);
        let before = rx.auth_refused().no_key;
        let more = datagrams(&mut open, 1);
        assert_eq!(more.iter().map(|d| frames_of(&mut rx, d)).sum::<usize>(), 0);
        assert_eq!(rx.auth_refused().no_key - before, 1);
    }

    #[test]
    fn window_classifies() {
        let mut w = SeqWindow::default();
        assert_eq!(w.observe(10), SeqVerdict::InOrder);
        assert_eq!(w.observe(11), SeqVerdict::InOrder);
        assert_eq!(w.observe(14), SeqVerdict::Gap { skipped: 2 });
        assert_eq!(w.observe(12), SeqVerdict::Reordered);
        assert_eq!(w.observe(12), SeqVerdict::Duplicate);
        assert_eq!(w.observe(14), SeqVerdict::Duplicate);
        assert_eq!(w.observe(14 + 200), SeqVerdict::Gap { skipped: 199 });
        assert_eq!(w.observe(14), SeqVerdict::Stale);
    }

    #[test]
    fn restart_resets_numbering_and_names_channels() {
        use crate::frame::{CanFrame, CanId, DataFrame, Direction};
        let frame = CanFrame::Data(DataFrame::new(CanId::standard(1).unwrap(), &[1]).unwrap());
        let rec = |ch: &str| CanRecord::new(5, Channel::from(ch), Direction::Rx, frame);
        let mut rx = RempReceiver::default();
        let mut first = super::super::RempSender::new("D1", 1, 1000).unwrap();
        for _ in 0..10 {
            rx.handle_datagram(&first.keepalive().unwrap(), 0).unwrap();
        }
        // The dongle reboots: numbering starts again at 0 with a new boot id.
        let mut second = super::super::RempSender::new("D1", 2, 1000).unwrap();
        let hello = second.push(&rec("vcan3")).unwrap();
        assert_eq!(hello.len(), 1);
        match rx.handle_datagram(&hello[0], 1).unwrap() {
            RempEvent::Hello { restarted, .. } => assert!(restarted),
            other => panic!("{other:?}"),
        }
        let batch = second.flush().unwrap().unwrap();
        match rx.handle_datagram(&batch, 2).unwrap() {
            RempEvent::Frames { records, .. } => assert_eq!(records, vec![rec("vcan3")]),
            other => panic!("{other:?}"),
        }
        let s = rx.stats("D1").unwrap();
        assert_eq!(
            (s.restarts, s.lost, s.stale, s.datagrams, s.frames),
            (1, 0, 0, 12, 1)
        );
        // The same datagram again is a duplicate, dropped.
        assert!(matches!(
            rx.handle_datagram(&batch, 3).unwrap(),
            RempEvent::Dropped {
                verdict: SeqVerdict::Duplicate,
                ..
            }
        ));
    }

    #[test]
    fn caps_tracked_dongles() {
        let mut rx = RempReceiver::new(1);
        let mut a = super::super::RempSender::new("A", 1, 1000).unwrap();
        let mut b = super::super::RempSender::new("B", 1, 1000).unwrap();
        rx.handle_datagram(&a.keepalive().unwrap(), 0).unwrap();
        assert!(rx.handle_datagram(&b.keepalive().unwrap(), 0).is_err());
        assert_eq!(rx.rejected_dongles(), 1);
    }

    #[test]
    fn window_wraps() {
        let mut w = SeqWindow::default();
        assert_eq!(w.observe(u32::MAX), SeqVerdict::InOrder);
        assert_eq!(w.observe(0), SeqVerdict::InOrder);
        assert_eq!(w.observe(2), SeqVerdict::Gap { skipped: 1 });
        assert_eq!(w.observe(1), SeqVerdict::Reordered);
        assert_eq!(w.observe(u32::MAX), SeqVerdict::Duplicate);
    }
}
