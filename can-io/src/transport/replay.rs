//! Log replay as a bus: records come out of [`CanBus::recv`] at the pace of their timestamps.
//!
//! [`ReplaySchedule`] is the sans-IO part: given the first timestamp and a speed, it says how
//! long after the start each record is due. [`LogReplay`] sleeps until then (tokio time, so
//! tests can pause the clock). Timestamps are kept as recorded. A timestamp that goes backwards
//! is sent at once, after the previous record, rather than reordering the log.

use std::future::Future;
use std::io::BufRead;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::{BusStats, CanBus};
use crate::error::Error;
use crate::formats::{Entry, LogFormat, LogLine, LogReader};
use crate::frame::CanRecord;

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReplaySpeed {
    /// Original timing divided by the factor (2.0 = twice as fast). Must be finite and > 0.
    Factor(f64),
    /// As fast as possible.
    Max,
}

impl std::str::FromStr for ReplaySpeed {
    type Err = String;

    /// `max`, or a positive factor such as `1`, `0.5`, `10`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(ReplaySpeed::Max);
        }
        match s.parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => Ok(ReplaySpeed::Factor(f)),
            _ => Err(format!(
                "speed must be a positive number or `max`, not {s:?}"
            )),
        }
    }
}

/// When each record of a log is due, relative to the start of the replay.
#[derive(Debug, Clone)]
pub struct ReplaySchedule {
    speed: ReplaySpeed,
    first_ts: Option<u64>,
    last_due: Duration,
}

impl ReplaySchedule {
    /// A schedule at `speed`.
    pub fn new(speed: ReplaySpeed) -> Self {
        Self {
            speed,
            first_ts: None,
            last_due: Duration::ZERO,
        }
    }

    /// The offset from the start at which a record stamped `ts_ns` is due. Never earlier than
    /// the previous record's.
    pub fn due(&mut self, ts_ns: u64) -> Duration {
        let factor = match self.speed {
            ReplaySpeed::Max => return Duration::ZERO,
            ReplaySpeed::Factor(f) => f,
        };
        let first = *self.first_ts.get_or_insert(ts_ns);
        let elapsed = ts_ns.saturating_sub(first) as f64 / factor;
        let due = Duration::from_nanos(elapsed.min(u64::MAX as f64) as u64);
        self.last_due = self.last_due.max(due);
        self.last_due
    }
}

/// A log file replayed as a receive-only bus.
#[derive(Debug)]
pub struct LogReplay<R> {
    reader: LogReader<R>,
    schedule: ReplaySchedule,
    start: Option<Instant>,
    stats: BusStats,
    bad_lines: Vec<(u64, String)>,
}

/// At most this many bad lines are kept for [`LogReplay::bad_lines`] (all are counted).
const KEEP_BAD_LINES: usize = 100;

impl<R: BufRead + Send> LogReplay<R> {
    /// Replay `input` in `format` at `speed`. The clock starts at the first `recv`.
    pub fn new(format: LogFormat, input: R, speed: ReplaySpeed) -> Self {
        Self::from_reader(LogReader::new(format, input), speed)
    }

    /// Replay what an already opened reader yields.
    pub fn from_reader(reader: LogReader<R>, speed: ReplaySpeed) -> Self {
        Self {
            reader,
            schedule: ReplaySchedule::new(speed),
            start: None,
            stats: BusStats::default(),
            bad_lines: Vec::new(),
        }
    }

    /// Bad lines seen so far (line number, reason); the first 100 only, all are counted in
    /// `stats().malformed`.
    pub fn bad_lines(&self) -> &[(u64, String)] {
        &self.bad_lines
    }

    /// The next record without waiting for its time.
    fn next_record(&mut self) -> Result<Option<CanRecord>, Error> {
        loop {
            match self.reader.next() {
                None => return Ok(None),
                Some(Ok(LogLine {
                    entry: Entry::Record(r),
                    ..
                })) => return Ok(Some(r)),
                Some(Ok(LogLine {
                    entry: Entry::Drop(d),
                    number,
                    ..
                })) => {
                    tracing::warn!(
                        line = number,
                        dropped = d.dropped,
                        "the capture itself dropped frames here"
                    );
                }
                Some(Err(Error::AtLine { line, source })) => {
                    self.stats.malformed += 1;
                    tracing::warn!(line, error = %source, "skipping bad line");
                    if self.bad_lines.len() < KEEP_BAD_LINES {
                        self.bad_lines.push((line, source.to_string()));
                    }
                }
                Some(Err(e)) => return Err(e),
            }
        }
    }
}

impl<R: BufRead + Send> CanBus for LogReplay<R> {
    async fn send(&mut self, _record: &CanRecord) -> Result<(), Error> {
        Err(Error::Unsupported {
            protocol: "log replay",
            reason: "a replayed log is receive-only".into(),
        })
    }

    async fn recv(&mut self) -> Result<Option<CanRecord>, Error> {
        let Some(record) = self.next_record()? else {
            return Ok(None);
        };
        let start = *self.start.get_or_insert_with(Instant::now);
        let due = start + self.schedule.due(record.ts_ns);
        tokio::time::sleep_until(due).await;
        self.stats.received += 1;
        Ok(Some(record))
    }

    fn stats(&self) -> BusStats {
        self.stats
    }
}

/// Copy every record from `source` to `sink` until the source ends, flushing the sink whenever
/// the next record is not due right away (so batching transports send what is due now).
/// Returns the number of records sent.
pub async fn pump<S: CanBus, D: CanBus>(source: &mut S, sink: &mut D) -> Result<u64, Error> {
    let mut n = 0;
    loop {
        let mut recv = std::pin::pin!(source.recv());
        let next = match flush_unless_ready(recv.as_mut(), sink).await? {
            Poll::Ready(r) => r,
            Poll::Pending => recv.await,
        };
        match next? {
            Some(r) => {
                sink.send(&r).await?;
                n += 1;
            }
            None => break,
        }
    }
    sink.flush().await?;
    Ok(n)
}

/// The step [`pump`] takes before it waits on its source, for callers that wait on more than
/// the source (a keep-alive timer, a stop signal): polls `recv`, a pending receive from the
/// source, once. Ready: its result. Not ready: flushes `sink` first, so that nothing due sits in
/// a batch while the source sleeps, and returns `Poll::Pending`; the caller then awaits `recv`.
pub async fn flush_unless_ready<F: Future, D: CanBus>(
    recv: Pin<&mut F>,
    sink: &mut D,
) -> Result<Poll<F::Output>, Error> {
    match futures::poll!(recv) {
        Poll::Ready(r) => Ok(Poll::Ready(r)),
        Poll::Pending => {
            sink.flush().await?;
            Ok(Poll::Pending)
        }
    }
}
