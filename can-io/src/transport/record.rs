//! The recorder: any bus into a candump log.
//!
//! Records are written as `candump -L` writes them. When the bus reports new drops while
//! recording (a receive queue overflowed, REMP datagrams went missing), a `DROPCOUNT:` line is
//! written at that point, as candump does, so the log itself says where frames are missing.
//!
//! When told to stop, the recorder still writes what the bus already holds (frames received and
//! perhaps already passed on to other nodes): it reads on until the bus has been quiet for
//! [`DRAIN_IDLE`], for at most [`DRAIN_MAX`].

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use super::CanBus;
use crate::error::Error;
use crate::formats::DropNotice;
use crate::formats::candump::{LineStyle, write_drop, write_record};
use crate::frame::Channel;

/// After a stop, how long the bus must stay quiet before the recorder ends.
pub const DRAIN_IDLE: Duration = Duration::from_millis(20);
/// After a stop, the longest the recorder goes on writing what keeps arriving.
pub const DRAIN_MAX: Duration = Duration::from_millis(500);

/// When to stop recording (besides the bus ending).
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordLimit {
    /// Stop after this many frames.
    pub count: Option<u64>,
}

/// What a recording wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordSummary {
    /// Frames written.
    pub frames: u64,
    /// Frames the bus reported dropped during the recording (written as `DROPCOUNT:` lines).
    pub dropped: u64,
}

/// Write every record from `bus` to `out` until `stop` resolves, the limit is reached or the bus
/// ends. The output is flushed on every return path that is not an I/O error on `out`.
pub async fn record<B: CanBus, W: Write, F: Future<Output = ()>>(
    bus: &mut B,
    out: &mut W,
    limit: RecordLimit,
    stop: F,
) -> Result<RecordSummary, Error> {
    tokio::pin!(stop);
    let mut summary = RecordSummary::default();
    let base_dropped = bus.stats().dropped;
    let mut line = Vec::with_capacity(128);
    let mut last_channel: Option<Channel> = None;
    let io = |source| Error::Io {
        action: "writing the candump log",
        source,
    };
    let mut stopped = false;
    let mut result = loop {
        if limit.count.is_some_and(|c| summary.frames >= c) {
            break Ok(());
        }
        // A stop is seen first; what the bus holds then is written by the drain below.
        let next = tokio::select! {
            biased;
            () = &mut stop => {
                stopped = true;
                break Ok(());
            }
            r = bus.recv() => r,
        };
        match next {
            Ok(Some(record)) => write_one(bus, out, &mut line, &record, base_dropped, &mut summary)
                .map(|()| last_channel = Some(record.channel))?,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if stopped {
        let deadline = tokio::time::Instant::now() + DRAIN_MAX;
        while tokio::time::Instant::now() < deadline
            && limit.count.is_none_or(|c| summary.frames < c)
        {
            match tokio::time::timeout(DRAIN_IDLE, bus.recv()).await {
                Ok(Ok(Some(record))) => {
                    write_one(bus, out, &mut line, &record, base_dropped, &mut summary)?;
                    last_channel = Some(record.channel);
                }
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(e)) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    // Drops after the last frame are written too.
    let dropped = bus.stats().dropped - base_dropped;
    if dropped > summary.dropped {
        line.clear();
        let channel = last_channel.unwrap_or_else(|| Channel::from("bus"));
        write_drop(
            &mut line,
            &DropNotice {
                channel,
                dropped: dropped - summary.dropped,
                total: dropped,
            },
        );
        out.write_all(&line).map_err(io)?;
        summary.dropped = dropped;
    }
    out.flush().map_err(io)?;
    result.map(|()| summary)
}

/// Writes `record` (after a `DROPCOUNT:` line when the bus reported new drops) and counts it.
fn write_one<B: CanBus, W: Write>(
    bus: &B,
    out: &mut W,
    line: &mut Vec<u8>,
    record: &crate::frame::CanRecord,
    base_dropped: u64,
    summary: &mut RecordSummary,
) -> Result<(), Error> {
    line.clear();
    let dropped = bus.stats().dropped - base_dropped;
    if dropped > summary.dropped {
        let notice = DropNotice {
            channel: record.channel.clone(),
            dropped: dropped - summary.dropped,
            total: dropped,
        };
        write_drop(line, &notice);
        summary.dropped = dropped;
    }
    write_record(line, record, &LineStyle::default());
    out.write_all(line).map_err(|source| Error::Io {
        action: "writing the candump log",
        source,
    })?;
    summary.frames += 1;
    Ok(())
}
