//! The recorder: any bus into a candump log.
//!
//! Records are written as `candump -L` writes them. When the bus reports new drops while
//! recording (a receive queue overflowed, REMP datagrams went missing), a `DROPCOUNT:` line is
//! written at that point, as candump does, so the log itself says where frames are missing.

use std::future::Future;
use std::io::Write;

use super::CanBus;
use crate::error::Error;
use crate::formats::DropNotice;
use crate::formats::candump::{LineStyle, write_drop, write_record};
use crate::frame::Channel;

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
    let result = loop {
        if limit.count.is_some_and(|c| summary.frames >= c) {
            break Ok(());
        }
        let next = tokio::select! {
            r = bus.recv() => r,
            () = &mut stop => break Ok(()),
        };
        let record = match next {
            Ok(Some(r)) => r,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        line.clear();
        let dropped = bus.stats().dropped - base_dropped;
        if dropped > summary.dropped {
            let notice = DropNotice {
                channel: record.channel.clone(),
                dropped: dropped - summary.dropped,
                total: dropped,
            };
            write_drop(&mut line, &notice);
            summary.dropped = dropped;
        }
        write_record(&mut line, &record, &LineStyle::default());
        if let Err(e) = out.write_all(&line) {
            return Err(io(e));
        }
        last_channel = Some(record.channel);
        summary.frames += 1;
    };
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
