//! Frame columns in plain Rust vectors: built from records without the GIL, read back row by
//! row as validated records.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use can_io::{
    CanFrame, CanId, CanRecord, Channel, DataFrame, Direction, ErrorFrame, FdFlags, FdFrame,
    RemoteFrame,
};

/// `direction` column codes.
pub(crate) const DIRECTION_NAMES: [&str; 3] = ["unknown", "rx", "tx"];

pub(crate) fn direction_code(d: Direction) -> u8 {
    match d {
        Direction::Unknown => 0,
        Direction::Rx => 1,
        Direction::Tx => 2,
    }
}

fn direction_of(code: u8) -> Option<Direction> {
    match code {
        0 => Some(Direction::Unknown),
        1 => Some(Direction::Rx),
        2 => Some(Direction::Tx),
        _ => None,
    }
}

/// Channel names and their codes, in order of first appearance. Shared by the batches of one
/// `iter_log`, so a code means the same name in every batch.
#[derive(Debug, Default, Clone)]
pub(crate) struct ChannelCodes {
    pub(crate) names: Vec<Channel>,
    known: HashMap<Channel, i32>,
    last: Option<(Channel, i32)>,
}

impl ChannelCodes {
    /// The code of `channel`, adding it when new. Readers intern names, so the pointer test
    /// answers for nearly every frame.
    pub(crate) fn code(&mut self, channel: &Channel) -> i32 {
        if let Some((last, code)) = &self.last
            && (Arc::ptr_eq(last, channel) || **last == **channel)
        {
            return *code;
        }
        let code = match self.known.get(channel) {
            Some(&c) => c,
            None => {
                // More than 2^31 distinct names cannot come from a log that fits in memory.
                let c = i32::try_from(self.names.len()).unwrap_or(i32::MAX);
                self.names.push(channel.clone());
                self.known.insert(channel.clone(), c);
                c
            }
        };
        self.last = Some((channel.clone(), code));
        code
    }
}

/// A frame's `id` column value and whether it is extended: the identifier, or the error
/// class bits of an error frame (never extended).
pub(crate) fn id_of(frame: &CanFrame) -> (u32, bool) {
    match frame {
        CanFrame::Error(e) => (e.class_bits(), false),
        other => other
            .id()
            .map_or((0, false), |id| (id.raw(), id.is_extended())),
    }
}

/// A frame's CAN FD flags column values: `(fd, brs, esi)`.
pub(crate) fn fd_of(frame: &CanFrame) -> (bool, bool, bool) {
    match frame {
        CanFrame::Fd(f) => (true, f.flags().brs, f.flags().esi),
        _ => (false, false, false),
    }
}

/// Which identifiers to keep (error frames, which carry no identifier, never match).
#[derive(Debug, Clone, Default)]
pub(crate) struct IdFilter(Option<HashSet<u32>>);

impl IdFilter {
    pub(crate) fn new(ids: Option<Vec<u32>>) -> Self {
        IdFilter(ids.map(|v| v.into_iter().collect()))
    }

    pub(crate) fn keeps(&self, id: u32, error: bool) -> bool {
        match &self.0 {
            None => true,
            Some(set) => !error && set.contains(&id),
        }
    }

    pub(crate) fn keeps_record(&self, record: &CanRecord) -> bool {
        match &self.0 {
            None => true,
            Some(set) => record.frame.id().is_some_and(|id| set.contains(&id.raw())),
        }
    }
}

/// The columns of a frame table (the channel names live in a [`ChannelCodes`]).
#[derive(Debug, Default)]
pub(crate) struct Columns {
    pub(crate) ts_ns: Vec<i64>,
    pub(crate) id: Vec<u32>,
    pub(crate) extended: Vec<bool>,
    pub(crate) remote: Vec<bool>,
    pub(crate) error: Vec<bool>,
    pub(crate) fd: Vec<bool>,
    pub(crate) brs: Vec<bool>,
    pub(crate) esi: Vec<bool>,
    pub(crate) len: Vec<u8>,
    pub(crate) raw_dlc: Vec<u8>,
    pub(crate) direction: Vec<u8>,
    /// `n + 1` offsets into `values`.
    pub(crate) offsets: Vec<i64>,
    pub(crate) values: Vec<u8>,
    pub(crate) channel: Vec<i32>,
}

/// A timestamp that does not fit the `int64` nanoseconds column (after 2262-04-11).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimestampOverflow(pub(crate) u64);

impl Columns {
    pub(crate) fn with_capacity(n: usize) -> Self {
        let mut c = Columns {
            ts_ns: Vec::with_capacity(n),
            id: Vec::with_capacity(n),
            extended: Vec::with_capacity(n),
            remote: Vec::with_capacity(n),
            error: Vec::with_capacity(n),
            fd: Vec::with_capacity(n),
            brs: Vec::with_capacity(n),
            esi: Vec::with_capacity(n),
            len: Vec::with_capacity(n),
            raw_dlc: Vec::with_capacity(n),
            direction: Vec::with_capacity(n),
            offsets: Vec::with_capacity(n + 1),
            values: Vec::with_capacity(n * 8),
            channel: Vec::with_capacity(n),
        };
        c.offsets.push(0);
        c
    }

    pub(crate) fn rows(&self) -> usize {
        self.ts_ns.len()
    }

    /// Appends one record; refuses (changing nothing) a timestamp beyond `i64`.
    pub(crate) fn push(
        &mut self,
        record: &CanRecord,
        names: &mut ChannelCodes,
    ) -> Result<(), TimestampOverflow> {
        let ts = i64::try_from(record.ts_ns).map_err(|_| TimestampOverflow(record.ts_ns))?;
        let frame = &record.frame;
        let (id, extended) = id_of(frame);
        let (fd, brs, esi) = fd_of(frame);
        self.ts_ns.push(ts);
        self.id.push(id);
        self.extended.push(extended);
        self.remote.push(matches!(frame, CanFrame::Remote(_)));
        self.error.push(matches!(frame, CanFrame::Error(_)));
        self.fd.push(fd);
        self.brs.push(brs);
        self.esi.push(esi);
        // Lengths are at most 64: they fit.
        self.len.push(u8::try_from(frame.len()).unwrap_or(u8::MAX));
        self.raw_dlc.push(match frame {
            CanFrame::Data(d) => d.raw_dlc().unwrap_or(0),
            _ => 0,
        });
        self.direction.push(direction_code(record.direction));
        self.values.extend_from_slice(frame.data());
        self.offsets.push(self.values.len() as i64);
        self.channel.push(names.code(&record.channel));
        Ok(())
    }
}

/// The flag and length columns of one frame.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FrameParts {
    pub(crate) id: u32,
    pub(crate) extended: bool,
    pub(crate) remote: bool,
    pub(crate) error: bool,
    pub(crate) fd: bool,
    pub(crate) brs: bool,
    pub(crate) esi: bool,
    /// The data length; a remote frame's requested length.
    pub(crate) len: u8,
    /// 9–15 for an 8-byte classic frame sent with that DLC, else 0.
    pub(crate) raw_dlc: u8,
}

/// A validated frame from its parts (`data` is ignored for remote frames).
pub(crate) fn build_frame(p: FrameParts, data: &[u8]) -> Result<CanFrame, can_io::Error> {
    if p.error {
        return Ok(CanFrame::Error(ErrorFrame::new(p.id, data)?));
    }
    let id = CanId::new(p.id, p.extended)?;
    Ok(if p.remote {
        CanFrame::Remote(RemoteFrame::new(id, usize::from(p.len))?)
    } else if p.fd {
        CanFrame::Fd(FdFrame::new(
            id,
            data,
            FdFlags {
                brs: p.brs,
                esi: p.esi,
            },
        )?)
    } else {
        let mut f = DataFrame::new(id, data)?;
        if p.raw_dlc != 0 {
            f = f.with_raw_dlc(p.raw_dlc)?;
        }
        CanFrame::Data(f)
    })
}

/// Borrowed columns of a table, read row by row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) ts_ns: &'a [i64],
    pub(crate) id: &'a [u32],
    pub(crate) extended: &'a [bool],
    pub(crate) remote: &'a [bool],
    pub(crate) error: &'a [bool],
    pub(crate) fd: &'a [bool],
    pub(crate) brs: &'a [bool],
    pub(crate) esi: &'a [bool],
    pub(crate) len: &'a [u8],
    pub(crate) raw_dlc: &'a [u8],
    pub(crate) direction: &'a [u8],
    pub(crate) offsets: &'a [i64],
    pub(crate) values: &'a [u8],
    pub(crate) channel: &'a [i32],
    pub(crate) names: &'a [Channel],
}

/// Why a row is not a frame (only possible for columns edited outside this module).
#[derive(Debug)]
pub(crate) enum RowError {
    Frame(can_io::Error),
    Column(String),
}

impl From<can_io::Error> for RowError {
    fn from(e: can_io::Error) -> Self {
        RowError::Frame(e)
    }
}

impl View<'_> {
    pub(crate) fn rows(&self) -> usize {
        self.ts_ns.len()
    }

    /// The payload of row `i`.
    pub(crate) fn data(&self, i: usize) -> Result<&[u8], RowError> {
        let (Some(&a), Some(&b)) = (self.offsets.get(i), self.offsets.get(i + 1)) else {
            return Err(RowError::Column(format!("row {i}: no data offsets")));
        };
        usize::try_from(a)
            .ok()
            .zip(usize::try_from(b).ok())
            .and_then(|(a, b)| self.values.get(a..b))
            .ok_or_else(|| RowError::Column(format!("row {i}: data offsets {a}..{b} out of range")))
    }

    /// Row `i` as a validated record.
    pub(crate) fn record(&self, i: usize) -> Result<CanRecord, RowError> {
        let column = |what: &str| RowError::Column(format!("row {i}: bad {what}"));
        let data = self.data(i)?;
        let ts = u64::try_from(self.ts_ns[i]).map_err(|_| column("ts_ns (negative)"))?;
        let frame = build_frame(
            FrameParts {
                id: self.id[i],
                extended: self.extended[i],
                remote: self.remote[i],
                error: self.error[i],
                fd: self.fd[i],
                brs: self.brs[i],
                esi: self.esi[i],
                len: self.len[i],
                raw_dlc: self.raw_dlc[i],
            },
            data,
        )?;
        let channel = usize::try_from(self.channel[i])
            .ok()
            .and_then(|c| self.names.get(c))
            .ok_or_else(|| column("channel code"))?
            .clone();
        let direction = direction_of(self.direction[i]).ok_or_else(|| column("direction"))?;
        Ok(CanRecord::new(ts, channel, direction, frame))
    }

    /// The rows at `indices`, with the same channel names and codes.
    pub(crate) fn gather(&self, indices: &[usize]) -> Result<Columns, RowError> {
        let mut c = Columns::with_capacity(indices.len());
        for &i in indices {
            let data = self.data(i)?;
            c.ts_ns.push(self.ts_ns[i]);
            c.id.push(self.id[i]);
            c.extended.push(self.extended[i]);
            c.remote.push(self.remote[i]);
            c.error.push(self.error[i]);
            c.fd.push(self.fd[i]);
            c.brs.push(self.brs[i]);
            c.esi.push(self.esi[i]);
            c.len.push(self.len[i]);
            c.raw_dlc.push(self.raw_dlc[i]);
            c.direction.push(self.direction[i]);
            c.values.extend_from_slice(data);
            c.offsets.push(c.values.len() as i64);
            c.channel.push(self.channel[i]);
        }
        Ok(c)
    }
}
