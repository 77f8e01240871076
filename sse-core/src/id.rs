//! Event IDs: `<ms>-<n>`, the same shape as Redis stream IDs.

use std::fmt;
use std::str::FromStr;

/// The ID of one event in one stream: milliseconds and a sequence number within that
/// millisecond. IDs are strictly increasing per stream; they order by `(ms, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Milliseconds part (Unix time in ms for IDs we generate).
    pub ms: u64,
    /// Sequence number within the millisecond.
    pub seq: u64,
}

impl EventId {
    /// Build an ID from its parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The ID to give the next event after `self` when the clock reads `now_ms`: a new
    /// millisecond if the clock moved forward, otherwise the next sequence number. It never goes
    /// backwards even when the clock does.
    pub fn next_after(last: Option<EventId>, floor_ms: u64, now_ms: u64) -> EventId {
        let ms = now_ms.max(floor_ms);
        match last {
            Some(last) if last.ms >= ms => EventId::new(last.ms, last.seq.saturating_add(1)),
            _ => EventId::new(ms, 0),
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a string is not an [`EventId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedEventId;

impl FromStr for EventId {
    type Err = MalformedEventId;

    /// Strict: two runs of ASCII digits joined by one `-`, each fitting in `u64`. No signs, no
    /// spaces, no missing part (Redis would accept `123` alone; we do not, since we never issue it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(MalformedEventId)?;
        Ok(EventId::new(parse_digits(ms)?, parse_digits(seq)?))
    }
}

fn parse_digits(s: &str) -> Result<u64, MalformedEventId> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MalformedEventId);
    }
    s.parse().map_err(|_| MalformedEventId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let id: EventId = "1700000000000-7".parse().expect("valid id");
        assert_eq!(id, EventId::new(1_700_000_000_000, 7));
        assert_eq!(id.to_string(), "1700000000000-7");
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "+1-2",
            "1-+2",
            "1 -2",
            "1-2-3",
            "a-1",
            "99999999999999999999-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn next_after_is_strictly_increasing_even_when_clock_goes_back() {
        let a = EventId::next_after(None, 1000, 5);
        assert_eq!(a, EventId::new(1000, 0));
        let b = EventId::next_after(Some(a), 1000, 1000);
        assert_eq!(b, EventId::new(1000, 1));
        let c = EventId::next_after(Some(b), 1000, 900);
        assert!(c > b);
        let d = EventId::next_after(Some(c), 1000, 2000);
        assert_eq!(d, EventId::new(2000, 0));
    }
}
