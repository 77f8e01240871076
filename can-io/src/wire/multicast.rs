//! python-can's `udp_multicast` datagrams: one frame per datagram, a msgpack map (binary type
//! on) with exactly these 11 keys:
//!
//! `timestamp` (float seconds), `arbitration_id`, `is_extended_id`, `is_remote_frame`,
//! `is_error_frame`, `channel` (nil, string or integer), `dlc` (the data length in bytes),
//! `data` (bin), `is_fd`, `bitrate_switch`, `error_state_indicator`.
//!
//! python-can's receiver rejects unknown keys and defaults `is_extended_id` to true, so we always
//! send all 11. The default group is IPv4 `239.74.163.2`, port 43113. The float timestamp loses
//! precision below a microsecond or so at current epoch values; the receiver in python-can
//! replaces it with its own receive time anyway.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::error_frame::ErrorFrame;
use crate::frame::{CanFrame, CanId, DataFrame, FdFlags, FdFrame, RemoteFrame};

const PROTOCOL: &str = "python-can udp_multicast";

/// python-can's default IPv4 group.
pub const DEFAULT_GROUP_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(239, 74, 163, 2);
/// python-can's default port.
pub const DEFAULT_PORT: u16 = 43113;
/// Largest datagram python-can reads (`max_buffer`).
pub const MAX_DATAGRAM: usize = 4096;

/// The `channel` value: python-can sends whatever the message had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MulticastChannel {
    /// A channel name.
    Name(String),
    /// A channel number.
    Number(i64),
}

/// One datagram, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MulticastMessage {
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    /// Identifier (error class bits for error frames).
    pub arbitration_id: u32,
    /// 29-bit identifier.
    pub is_extended_id: bool,
    /// Remote frame.
    pub is_remote_frame: bool,
    /// Error frame.
    pub is_error_frame: bool,
    /// Channel, if any.
    pub channel: Option<MulticastChannel>,
    /// Data length in bytes (requested length for remote frames).
    pub dlc: u8,
    /// Payload.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// CAN FD.
    pub is_fd: bool,
    /// CAN FD bit rate switch.
    pub bitrate_switch: bool,
    /// CAN FD error state indicator.
    pub error_state_indicator: bool,
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        protocol: PROTOCOL,
        reason: reason.into(),
    }
}

impl MulticastMessage {
    /// The message for `frame` at `ts_ns` on `channel`.
    pub fn from_frame(ts_ns: u64, channel: Option<&str>, frame: &CanFrame) -> Self {
        let (arbitration_id, is_extended_id) = match frame.id() {
            Some(id) => (id.raw(), id.is_extended()),
            None => (frame.linux_can_id() & crate::frame::MAX_EXTENDED_ID, false),
        };
        let (brs, esi) = match frame {
            CanFrame::Fd(fd) => (fd.flags().brs, fd.flags().esi),
            _ => (false, false),
        };
        Self {
            timestamp: ts_ns as f64 / 1e9,
            arbitration_id,
            is_extended_id,
            is_remote_frame: matches!(frame, CanFrame::Remote(_)),
            is_error_frame: matches!(frame, CanFrame::Error(_)),
            channel: channel.map(|c| MulticastChannel::Name(c.to_owned())),
            dlc: frame.len() as u8,
            data: frame.data().to_vec(),
            is_fd: frame.is_fd(),
            bitrate_switch: brs,
            error_state_indicator: esi,
        }
    }

    /// The frame, validated.
    pub fn frame(&self) -> Result<CanFrame, Error> {
        if [self.is_fd, self.is_remote_frame, self.is_error_frame]
            .iter()
            .filter(|b| **b)
            .count()
            > 1
        {
            return Err(malformed(
                "at most one of is_fd, is_remote_frame, is_error_frame",
            ));
        }
        if !self.is_fd && (self.bitrate_switch || self.error_state_indicator) {
            return Err(malformed(
                "bitrate_switch / error_state_indicator without is_fd",
            ));
        }
        if self.is_remote_frame {
            if !self.data.is_empty() {
                return Err(malformed("remote frame with data"));
            }
            let id = CanId::new(self.arbitration_id, self.is_extended_id)?;
            return Ok(CanFrame::Remote(RemoteFrame::new(id, self.dlc as usize)?));
        }
        if self.dlc as usize != self.data.len() {
            return Err(malformed(format!(
                "dlc {} but {} data bytes",
                self.dlc,
                self.data.len()
            )));
        }
        if self.is_error_frame {
            return Ok(CanFrame::Error(ErrorFrame::new(
                self.arbitration_id & crate::frame::MAX_EXTENDED_ID,
                &self.data,
            )?));
        }
        let id = CanId::new(self.arbitration_id, self.is_extended_id)?;
        if self.is_fd {
            let flags = FdFlags {
                brs: self.bitrate_switch,
                esi: self.error_state_indicator,
            };
            return Ok(CanFrame::Fd(FdFrame::new(id, &self.data, flags)?));
        }
        Ok(CanFrame::Data(DataFrame::new(id, &self.data)?))
    }

    /// The timestamp in nanoseconds (negative or non-finite values read as 0).
    pub fn ts_ns(&self) -> u64 {
        if self.timestamp.is_finite() && self.timestamp > 0.0 {
            // Round to the nearest microsecond: the float cannot hold more at epoch scale.
            ((self.timestamp * 1e6).round() as u64).saturating_mul(1000)
        } else {
            0
        }
    }

    /// The channel as text, if any.
    pub fn channel_name(&self) -> Option<String> {
        match &self.channel {
            Some(MulticastChannel::Name(s)) => Some(s.clone()),
            Some(MulticastChannel::Number(n)) => Some(n.to_string()),
            None => None,
        }
    }

    /// Encode as python-can does (a map with named keys, binary `data`).
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        rmp_serde::to_vec_named(self).map_err(|e| Error::Unsupported {
            protocol: PROTOCOL,
            reason: e.to_string(),
        })
    }

    /// Decode one datagram, validating the frame it describes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(malformed(format!(
                "datagram of {} bytes exceeds {MAX_DATAGRAM}",
                bytes.len()
            )));
        }
        let m: Self = rmp_serde::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        m.frame()?;
        Ok(m)
    }
}
