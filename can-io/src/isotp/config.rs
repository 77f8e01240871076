//! How an endpoint addresses frames and shapes them: addressing mode, classic or CAN FD frames,
//! padding, the flow control it asks for, timers and limits.

use std::time::Duration;

use super::{IsoTpError, StMin};
use crate::frame::{CanFrame, CanId, DataFrame, FdFlags, FdFrame, fd_len_to_dlc};

/// Where an endpoint sends and what it listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addressing {
    /// Normal addressing: one CAN identifier per direction (e.g. tester `0x7E0` → ECU, ECU
    /// `0x7E8` → tester).
    Normal {
        /// Identifier of the frames we send.
        tx_id: CanId,
        /// Identifier of the frames we receive.
        rx_id: CanId,
    },
    /// Extended addressing: as normal, and the first data byte of every frame is the target
    /// address (N_TA).
    Extended {
        /// Identifier of the frames we send.
        tx_id: CanId,
        /// Identifier of the frames we receive.
        rx_id: CanId,
        /// Address byte we put first in frames we send (the peer's address).
        target_address: u8,
        /// Address byte frames for us carry first (our address).
        source_address: u8,
    },
    /// Normal fixed addressing (29-bit): physical frames go on `0x18DA<TA><SA>`, so we send on
    /// `0x18DA<target><source>` and receive on `0x18DA<source><target>`.
    NormalFixed {
        /// Our address (SA of what we send).
        source_address: u8,
        /// The peer's address (TA of what we send).
        target_address: u8,
    },
}

impl Addressing {
    /// Normal addressing with 11-bit identifiers (or 29-bit ones when a value is above
    /// `0x7FF`).
    pub fn normal(tx_id: u32, rx_id: u32) -> Result<Self, IsoTpError> {
        Ok(Addressing::Normal {
            tx_id: auto_id(tx_id)?,
            rx_id: auto_id(rx_id)?,
        })
    }

    /// The identifier of frames we send.
    pub fn tx_id(&self) -> CanId {
        match *self {
            Addressing::Normal { tx_id, .. } | Addressing::Extended { tx_id, .. } => tx_id,
            Addressing::NormalFixed {
                source_address,
                target_address,
            } => fixed_id(target_address, source_address),
        }
    }

    /// The identifier of frames we receive.
    pub fn rx_id(&self) -> CanId {
        match *self {
            Addressing::Normal { rx_id, .. } | Addressing::Extended { rx_id, .. } => rx_id,
            Addressing::NormalFixed {
                source_address,
                target_address,
            } => fixed_id(source_address, target_address),
        }
    }

    /// The address byte in front of frames we send, if any.
    pub fn tx_prefix(&self) -> Option<u8> {
        match *self {
            Addressing::Extended { target_address, .. } => Some(target_address),
            _ => None,
        }
    }

    /// The address byte frames for us start with, if any.
    pub fn rx_prefix(&self) -> Option<u8> {
        match *self {
            Addressing::Extended { source_address, .. } => Some(source_address),
            _ => None,
        }
    }

    /// Bytes of every frame taken by addressing (0 or 1).
    pub fn overhead(&self) -> usize {
        usize::from(self.tx_prefix().is_some())
    }
}

/// `0x18DA<TA><SA>`: the physical normal-fixed identifier of a frame from `sa` to `ta`.
fn fixed_id(ta: u8, sa: u8) -> CanId {
    let raw = 0x18DA_0000 | (u32::from(ta) << 8) | u32::from(sa);
    CanId::extended(raw).expect("0x18DAxxxx is below the 29-bit maximum")
}

/// A standard identifier up to `0x7FF`, an extended one above.
pub(crate) fn auto_id(raw: u32) -> Result<CanId, IsoTpError> {
    CanId::new(raw, raw > 0x7FF).map_err(|e| IsoTpError::InvalidConfig {
        reason: e.to_string(),
    })
}

/// Classic CAN or CAN FD frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FrameFormat {
    /// Classic CAN: up to 8 bytes per frame.
    #[default]
    Classic,
    /// CAN FD: first and consecutive frames of `tx_dl` bytes (8, 12, 16, 20, 24, 32, 48 or 64).
    Fd {
        /// The transmit data length (TX_DL).
        tx_dl: usize,
        /// Set the bit-rate-switch flag on frames we send.
        brs: bool,
    },
}

impl FrameFormat {
    /// CAN FD with 64-byte frames and bit-rate switching.
    pub const FD64: FrameFormat = FrameFormat::Fd {
        tx_dl: 64,
        brs: true,
    };

    /// The TX_DL: bytes in a full frame.
    pub fn tx_dl(&self) -> usize {
        match *self {
            FrameFormat::Classic => 8,
            FrameFormat::Fd { tx_dl, .. } => tx_dl,
        }
    }
}

/// The timeouts an endpoint runs (all 1 s by default, the ISO 15765-2 values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// Sender: data-link confirmation of a frame (enforced by the async driver).
    pub n_as: Duration,
    /// Receiver: data-link confirmation of a flow control (enforced by the async driver).
    pub n_ar: Duration,
    /// Sender: wait for a flow control.
    pub n_bs: Duration,
    /// Receiver: wait for the next consecutive frame.
    pub n_cr: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let s = Duration::from_secs(1);
        Timeouts {
            n_as: s,
            n_ar: s,
            n_bs: s,
            n_cr: s,
        }
    }
}

/// Everything an endpoint needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IsoTpConfig {
    /// Identifiers and address bytes.
    pub addressing: Addressing,
    /// Classic CAN or CAN FD.
    pub format: FrameFormat,
    /// Pad short frames to 8 bytes (and CAN FD frames to their DLC length) with this byte; with
    /// `None`, frames are as short as their content (CAN FD frames longer than 8 bytes are still
    /// filled to a valid length, with `0xCC` as the standard says).
    pub padding: Option<u8>,
    /// Block size we ask senders for (0: no further flow control after the first).
    pub block_size: u8,
    /// Gap we ask senders to keep between consecutive frames.
    pub st_min: StMin,
    /// Timers.
    pub timeouts: Timeouts,
    /// WAIT frames we accept in a row before giving up (N_WFTmax).
    pub max_wait_frames: u8,
    /// Longest message we reassemble; a longer first frame is answered with OVERFLOW.
    pub max_rx_len: u32,
}

impl IsoTpConfig {
    /// Normal addressing, classic CAN, padding with `0xCC`, BS 0, STmin 0, default timers, at
    /// most 10 WAITs, messages up to 1 MiB.
    pub fn new(addressing: Addressing) -> Self {
        IsoTpConfig {
            addressing,
            format: FrameFormat::Classic,
            padding: Some(0xCC),
            block_size: 0,
            st_min: StMin::ZERO,
            timeouts: Timeouts::default(),
            max_wait_frames: 10,
            max_rx_len: 1 << 20,
        }
    }

    /// Check the configuration.
    pub fn validate(&self) -> Result<(), IsoTpError> {
        if let FrameFormat::Fd { tx_dl, .. } = self.format
            && (tx_dl < 8 || fd_len_to_dlc(tx_dl).is_none())
        {
            return Err(IsoTpError::InvalidConfig {
                reason: format!("CAN FD TX_DL {tx_dl} is not one of 8, 12, 16, 20, 24, 32, 48, 64"),
            });
        }
        Ok(())
    }

    /// The most bytes a single frame carries in this configuration.
    pub fn max_single_frame(&self) -> usize {
        let dl = self.format.tx_dl();
        let overhead = self.addressing.overhead();
        if dl <= 8 {
            7 - overhead
        } else {
            dl - 2 - overhead
        }
    }

    /// Encode `payload` as one single frame (for functional requests, which admit nothing
    /// else).
    pub fn single_frame(&self, payload: &[u8]) -> Result<CanFrame, IsoTpError> {
        let len = payload.len();
        if len == 0 || len > self.max_single_frame() {
            return Err(IsoTpError::CannotSend {
                len,
                reason: "does not fit one single frame",
            });
        }
        let mut buf = FrameBuf::new(self.addressing.tx_prefix());
        if len + buf.len() < 8 {
            buf.push(len as u8);
        } else {
            buf.push(0x00);
            buf.push(len as u8);
        }
        buf.extend(payload);
        self.frame(&buf, false)
    }

    /// Turn frame content into a CAN frame on our transmit identifier, padded as configured.
    /// `full` marks first and consecutive frames that must fill TX_DL.
    pub(crate) fn frame(&self, buf: &FrameBuf, full: bool) -> Result<CanFrame, IsoTpError> {
        let used = buf.len();
        let target = if full {
            self.format.tx_dl()
        } else {
            match self.padding {
                Some(_) => used.max(8),
                None => used,
            }
        };
        let (padded_len, fill) = match self.format {
            FrameFormat::Classic => (target, self.padding.unwrap_or(0xCC)),
            FrameFormat::Fd { .. } => (
                next_fd_len(target),
                self.padding.unwrap_or(0xCC), // ISO 15765-2: CAN FD filler is 0xCC
            ),
        };
        let mut data = [fill; 64];
        data[..used].copy_from_slice(buf.as_slice());
        let data = &data[..padded_len];
        let id = self.addressing.tx_id();
        let built = match self.format {
            FrameFormat::Classic => DataFrame::new(id, data).map(CanFrame::Data),
            FrameFormat::Fd { brs, .. } => {
                FdFrame::new(id, data, FdFlags { brs, esi: false }).map(CanFrame::Fd)
            }
        };
        built.map_err(|e| IsoTpError::InvalidConfig {
            reason: e.to_string(),
        })
    }
}

/// The smallest valid CAN FD length at least `len`.
fn next_fd_len(len: usize) -> usize {
    [0usize, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64]
        .into_iter()
        .find(|&l| l >= len)
        .unwrap_or(64)
}

/// Up to 64 bytes of frame content being built.
#[derive(Debug, Clone)]
pub(crate) struct FrameBuf {
    bytes: [u8; 64],
    len: usize,
}

impl FrameBuf {
    pub(crate) fn new(prefix: Option<u8>) -> Self {
        let mut b = FrameBuf {
            bytes: [0; 64],
            len: 0,
        };
        if let Some(p) = prefix {
            b.push(p);
        }
        b
    }

    pub(crate) fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    pub(crate) fn extend(&mut self, data: &[u8]) {
        self.bytes[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_fixed_identifiers() {
        let a = Addressing::NormalFixed {
            source_address: 0xF1,
            target_address: 0x10,
        };
        assert_eq!(a.tx_id(), CanId::extended(0x18DA_10F1).unwrap());
        assert_eq!(a.rx_id(), CanId::extended(0x18DA_F110).unwrap());
        assert_eq!(a.overhead(), 0);
    }

    #[test]
    fn auto_ids_pick_the_width() {
        let a = Addressing::normal(0x7E0, 0x18DA_F110).unwrap();
        assert!(!a.tx_id().is_extended());
        assert!(a.rx_id().is_extended());
        assert!(Addressing::normal(0x2000_0000, 1).is_err());
    }

    #[test]
    fn fd_tx_dl_is_checked() {
        let mut c = IsoTpConfig::new(Addressing::normal(1, 2).unwrap());
        c.format = FrameFormat::Fd {
            tx_dl: 10,
            brs: false,
        };
        assert!(c.validate().is_err());
        c.format = FrameFormat::FD64;
        assert!(c.validate().is_ok());
        assert_eq!(c.max_single_frame(), 62);
    }

    #[test]
    fn single_frames_pad_as_configured() {
        let mut c = IsoTpConfig::new(Addressing::normal(0x7DF, 0x7E8).unwrap());
        let f = c.single_frame(&[0x3E, 0x00]).unwrap();
        assert_eq!(f.data(), &[0x02, 0x3E, 0x00, 0xCC, 0xCC, 0xCC, 0xCC, 0xCC]);
        c.padding = None;
        assert_eq!(
            c.single_frame(&[0x3E, 0x00]).unwrap().data(),
            &[0x02, 0x3E, 0x00]
        );
        assert!(c.single_frame(&[0; 8]).is_err());
        assert!(c.single_frame(&[]).is_err());
        c.format = FrameFormat::FD64;
        let f = c.single_frame(&[7; 10]).unwrap();
        assert!(f.is_fd());
        assert_eq!(f.data().len(), 12);
        assert_eq!(&f.data()[..2], &[0x00, 10]);
    }
}
