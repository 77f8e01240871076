//! The frame model: identifiers, classic / remote / error / CAN FD frames and timestamped records.
//!
//! Every constructor validates its input, so a [`CanFrame`] that exists is always a frame a CAN
//! controller could put on a bus. Payloads are stored inline (no allocation per frame).

use std::fmt;
use std::sync::Arc;

use crate::error::Error;

/// Largest standard (11-bit) identifier.
pub const MAX_STANDARD_ID: u32 = 0x7FF;
/// Largest extended (29-bit) identifier.
pub const MAX_EXTENDED_ID: u32 = 0x1FFF_FFFF;
/// Largest payload of a classic CAN frame.
pub const CLASSIC_MAX_LEN: usize = 8;
/// Largest payload of a CAN FD frame.
pub const FD_MAX_LEN: usize = 64;

/// A CAN identifier: 11-bit standard or 29-bit extended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CanId {
    raw: u32,
    extended: bool,
}

impl CanId {
    /// An 11-bit standard identifier; refuses values above `0x7FF`.
    pub fn standard(raw: u32) -> Result<Self, Error> {
        Self::new(raw, false)
    }

    /// A 29-bit extended identifier; refuses values above `0x1FFF_FFFF`.
    pub fn extended(raw: u32) -> Result<Self, Error> {
        Self::new(raw, true)
    }

    /// Either kind, chosen by `extended`.
    pub fn new(raw: u32, extended: bool) -> Result<Self, Error> {
        let max = if extended {
            MAX_EXTENDED_ID
        } else {
            MAX_STANDARD_ID
        };
        if raw > max {
            return Err(Error::IdOutOfRange { id: raw, extended });
        }
        Ok(Self { raw, extended })
    }

    /// The identifier value without flag bits.
    pub fn raw(self) -> u32 {
        self.raw
    }

    /// Whether this is a 29-bit identifier.
    pub fn is_extended(self) -> bool {
        self.extended
    }
}

impl fmt::Display for CanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.extended {
            write!(f, "{:08X}", self.raw)
        } else {
            write!(f, "{:03X}", self.raw)
        }
    }
}

/// Map a CAN FD DLC code (0–15) to its payload length.
pub fn fd_dlc_to_len(dlc: u8) -> Option<usize> {
    const TABLE: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64];
    TABLE.get(dlc as usize).copied()
}

/// Map a CAN FD payload length to its DLC code; `None` when the length is not a valid FD length.
pub fn fd_len_to_dlc(len: usize) -> Option<u8> {
    match len {
        0..=8 => Some(len as u8),
        12 => Some(9),
        16 => Some(10),
        20 => Some(11),
        24 => Some(12),
        32 => Some(13),
        48 => Some(14),
        64 => Some(15),
        _ => None,
    }
}

/// Inline payload storage, up to 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Payload {
    len: u8,
    bytes: [u8; FD_MAX_LEN],
}

impl Payload {
    fn new(data: &[u8]) -> Self {
        let mut bytes = [0u8; FD_MAX_LEN];
        bytes[..data.len()].copy_from_slice(data);
        Self {
            len: data.len() as u8,
            bytes,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_slice() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// CAN FD flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FdFlags {
    /// Bit rate switch: the data phase was sent at the higher bit rate.
    pub brs: bool,
    /// Error state indicator: the sender was error passive.
    pub esi: bool,
}

impl FdFlags {
    /// The flags as the Linux `canfd_frame.flags` byte (BRS = 1, ESI = 2, FDF = 4 is added by writers).
    pub fn bits(self) -> u8 {
        (self.brs as u8) | ((self.esi as u8) << 1)
    }

    /// Decode the Linux flags byte (FDF and unknown bits are ignored).
    pub fn from_bits(bits: u8) -> Self {
        Self {
            brs: bits & 1 != 0,
            esi: bits & 2 != 0,
        }
    }
}

/// A classic CAN data frame, 0–8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataFrame {
    id: CanId,
    payload: Payload,
    raw_dlc: Option<u8>,
}

impl DataFrame {
    /// A classic data frame; refuses payloads longer than 8 bytes.
    pub fn new(id: CanId, data: &[u8]) -> Result<Self, Error> {
        if data.len() > CLASSIC_MAX_LEN {
            return Err(Error::ClassicTooLong { len: data.len() });
        }
        Ok(Self {
            id,
            payload: Payload::new(data),
            raw_dlc: None,
        })
    }

    /// Attach the raw DLC (9–15) of an 8-byte frame (Linux `len8_dlc`). Refused unless the
    /// payload is 8 bytes and the DLC is in 9..=15.
    pub fn with_raw_dlc(mut self, raw_dlc: u8) -> Result<Self, Error> {
        if self.payload.len as usize != CLASSIC_MAX_LEN || !(9..=15).contains(&raw_dlc) {
            return Err(Error::InvalidRawDlc {
                raw_dlc,
                len: self.payload.len as usize,
            });
        }
        self.raw_dlc = Some(raw_dlc);
        Ok(self)
    }

    /// The identifier.
    pub fn id(&self) -> CanId {
        self.id
    }

    /// The payload.
    pub fn data(&self) -> &[u8] {
        self.payload.as_slice()
    }

    /// The raw DLC (9–15) when it differs from the length.
    pub fn raw_dlc(&self) -> Option<u8> {
        self.raw_dlc
    }
}

/// A classic remote (RTR) frame with its requested length 0–8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteFrame {
    id: CanId,
    len: u8,
}

impl RemoteFrame {
    /// A remote frame; refuses a requested length above 8.
    pub fn new(id: CanId, len: usize) -> Result<Self, Error> {
        if len > CLASSIC_MAX_LEN {
            return Err(Error::ClassicTooLong { len });
        }
        Ok(Self { id, len: len as u8 })
    }

    /// The identifier.
    pub fn id(&self) -> CanId {
        self.id
    }

    /// The requested data length.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the requested length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A CAN FD frame: lengths 0–8, 12, 16, 20, 24, 32, 48, 64, with BRS/ESI flags. FD has no remote
/// frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FdFrame {
    id: CanId,
    payload: Payload,
    flags: FdFlags,
}

impl FdFrame {
    /// A CAN FD frame; refuses lengths that are not valid FD lengths.
    pub fn new(id: CanId, data: &[u8], flags: FdFlags) -> Result<Self, Error> {
        if fd_len_to_dlc(data.len()).is_none() {
            return Err(Error::InvalidFdLength { len: data.len() });
        }
        Ok(Self {
            id,
            payload: Payload::new(data),
            flags,
        })
    }

    /// The identifier.
    pub fn id(&self) -> CanId {
        self.id
    }

    /// The payload.
    pub fn data(&self) -> &[u8] {
        self.payload.as_slice()
    }

    /// The BRS / ESI flags.
    pub fn flags(&self) -> FdFlags {
        self.flags
    }
}

/// A CAN frame of any kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CanFrame {
    /// Classic data frame.
    Data(DataFrame),
    /// Classic remote frame.
    Remote(RemoteFrame),
    /// Error frame reported by the controller (Linux SocketCAN error frame layout).
    Error(crate::error_frame::ErrorFrame),
    /// CAN FD data frame.
    Fd(FdFrame),
}

impl CanFrame {
    /// The identifier; `None` for error frames, which carry error classes instead.
    pub fn id(&self) -> Option<CanId> {
        match self {
            CanFrame::Data(f) => Some(f.id),
            CanFrame::Remote(f) => Some(f.id),
            CanFrame::Fd(f) => Some(f.id),
            CanFrame::Error(_) => None,
        }
    }

    /// The payload bytes (empty for remote frames; the 8 error bytes for error frames).
    pub fn data(&self) -> &[u8] {
        match self {
            CanFrame::Data(f) => f.data(),
            CanFrame::Fd(f) => f.data(),
            CanFrame::Remote(_) => &[],
            CanFrame::Error(e) => e.data(),
        }
    }

    /// The data length: the payload length, or the requested length for remote frames.
    pub fn len(&self) -> usize {
        match self {
            CanFrame::Remote(f) => f.len(),
            other => other.data().len(),
        }
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a CAN FD frame.
    pub fn is_fd(&self) -> bool {
        matches!(self, CanFrame::Fd(_))
    }

    /// The Linux `can_id` word: identifier plus `CAN_EFF_FLAG` / `CAN_RTR_FLAG` / `CAN_ERR_FLAG`.
    pub fn linux_can_id(&self) -> u32 {
        const EFF: u32 = 0x8000_0000;
        const RTR: u32 = 0x4000_0000;
        const ERR: u32 = 0x2000_0000;
        let with_eff = |id: CanId| if id.extended { id.raw | EFF } else { id.raw };
        match self {
            CanFrame::Data(f) => with_eff(f.id),
            CanFrame::Fd(f) => with_eff(f.id),
            CanFrame::Remote(f) => with_eff(f.id) | RTR,
            CanFrame::Error(e) => e.class_bits() | ERR,
        }
    }
}

/// Which way a frame travelled relative to the interface that logged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Received from the bus.
    Rx,
    /// Transmitted by this node.
    Tx,
    /// Not recorded.
    #[default]
    Unknown,
}

/// A channel (interface) name such as `can0`. Cheap to clone; readers share one allocation per
/// distinct name.
pub type Channel = Arc<str>;

/// A frame with its timestamp, channel and direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanRecord {
    /// Nanoseconds since the Unix epoch (or since the start of the capture, when the source uses
    /// relative time).
    pub ts_ns: u64,
    /// Interface name.
    pub channel: Channel,
    /// Direction mark.
    pub direction: Direction,
    /// The frame.
    pub frame: CanFrame,
}

impl CanRecord {
    /// A record.
    pub fn new(ts_ns: u64, channel: Channel, direction: Direction, frame: CanFrame) -> Self {
        Self {
            ts_ns,
            channel,
            direction,
            frame,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_range_checked() {
        assert!(CanId::standard(0x7FF).is_ok());
        assert!(matches!(
            CanId::standard(0x800),
            Err(Error::IdOutOfRange {
                id: 0x800,
                extended: false
            })
        ));
        assert!(CanId::extended(0x1FFF_FFFF).is_ok());
        assert!(CanId::extended(0x2000_0000).is_err());
        assert_eq!(CanId::standard(0x7E0).unwrap().to_string(), "7E0");
        assert_eq!(CanId::extended(0x7E0).unwrap().to_string(), "000007E0");
    }

    #[test]
    fn classic_and_remote_lengths() {
        let id = CanId::standard(0x123).unwrap();
        assert!(DataFrame::new(id, &[0; 8]).is_ok());
        assert!(matches!(
            DataFrame::new(id, &[0; 9]),
            Err(Error::ClassicTooLong { len: 9 })
        ));
        assert!(RemoteFrame::new(id, 8).is_ok());
        assert!(RemoteFrame::new(id, 9).is_err());
    }

    #[test]
    fn raw_dlc_only_on_eight_bytes() {
        let id = CanId::standard(0x456).unwrap();
        let full = DataFrame::new(id, &[1; 8]).unwrap();
        assert_eq!(full.with_raw_dlc(0xF).unwrap().raw_dlc(), Some(0xF));
        assert!(full.with_raw_dlc(8).is_err());
        assert!(full.with_raw_dlc(16).is_err());
        assert!(
            DataFrame::new(id, &[1; 7])
                .unwrap()
                .with_raw_dlc(9)
                .is_err()
        );
    }

    #[test]
    fn fd_lengths() {
        let id = CanId::extended(0x18DA_F110).unwrap();
        for len in [0usize, 1, 7, 8, 12, 16, 20, 24, 32, 48, 64] {
            let f = FdFrame::new(
                id,
                &vec![0xAA; len],
                FdFlags {
                    brs: true,
                    esi: false,
                },
            )
            .unwrap();
            assert_eq!(f.data().len(), len);
            assert_eq!(fd_dlc_to_len(fd_len_to_dlc(len).unwrap()), Some(len));
        }
        for len in [9usize, 10, 11, 13, 63, 65] {
            assert!(matches!(
                FdFrame::new(id, &vec![0; len], FdFlags::default()),
                Err(Error::InvalidFdLength { .. })
            ));
        }
    }

    #[test]
    fn linux_can_id_flags() {
        let std = CanId::standard(0x7DF).unwrap();
        let ext = CanId::extended(0x1FFF_FFFF).unwrap();
        assert_eq!(
            CanFrame::Data(DataFrame::new(std, &[]).unwrap()).linux_can_id(),
            0x7DF
        );
        assert_eq!(
            CanFrame::Data(DataFrame::new(ext, &[]).unwrap()).linux_can_id(),
            0x9FFF_FFFF
        );
        assert_eq!(
            CanFrame::Remote(RemoteFrame::new(std, 8).unwrap()).linux_can_id(),
            0x4000_07DF
        );
        let err = crate::ErrorFrame::new(0x4, &[0; 8]).unwrap();
        assert_eq!(CanFrame::Error(err).linux_can_id(), 0x2000_0004);
        assert_eq!(CanFrame::Remote(RemoteFrame::new(std, 3).unwrap()).len(), 3);
    }
}
