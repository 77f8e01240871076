//! Protocol control information (PCI): the leading byte(s) of every ISO-TP frame that say what
//! kind of frame it is, and pure encoders / decoders for them. No state, no I/O.

use std::time::Duration;

use super::IsoTpError;

/// Largest message length a 12-bit first-frame length can announce; longer messages use the
/// escape form (`0x10 0x00` + 32-bit length).
pub const FF_DL_12BIT_MAX: u32 = 4095;

/// Flow status of a flow-control frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowStatus {
    /// `0`: send the next block.
    ContinueToSend,
    /// `1`: wait for another flow-control frame.
    Wait,
    /// `2`: the receiver cannot take a message this long; the transfer is over.
    Overflow,
}

impl FlowStatus {
    /// The nibble on the wire.
    pub fn nibble(self) -> u8 {
        match self {
            FlowStatus::ContinueToSend => 0,
            FlowStatus::Wait => 1,
            FlowStatus::Overflow => 2,
        }
    }

    /// Decode a nibble; `None` for the reserved values 3–15.
    pub fn from_nibble(n: u8) -> Option<Self> {
        match n {
            0 => Some(FlowStatus::ContinueToSend),
            1 => Some(FlowStatus::Wait),
            2 => Some(FlowStatus::Overflow),
            _ => None,
        }
    }
}

/// Separation time minimum (STmin): the gap a receiver asks for between consecutive frames.
///
/// Encoding (ISO 15765-2): `0x00`–`0x7F` are 0–127 ms, `0xF1`–`0xF9` are 100–900 µs. The
/// reserved values (`0x80`–`0xF0`, `0xFA`–`0xFF`) are kept as received and honoured as the
/// longest gap, 127 ms, as the standard says a sender must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StMin(u8);

impl StMin {
    /// No gap.
    pub const ZERO: StMin = StMin(0);

    /// The byte as found on the wire.
    pub fn from_raw(raw: u8) -> Self {
        StMin(raw)
    }

    /// The byte on the wire.
    pub fn raw(self) -> u8 {
        self.0
    }

    /// The gap a sender keeps.
    pub fn duration(self) -> Duration {
        match self.0 {
            ms @ 0x00..=0x7F => Duration::from_millis(u64::from(ms)),
            us @ 0xF1..=0xF9 => Duration::from_micros(u64::from(us - 0xF0) * 100),
            _ => Duration::from_millis(0x7F),
        }
    }

    /// The smallest encodable STmin that is at least `d` (capped at 127 ms).
    pub fn from_duration(d: Duration) -> Self {
        if d.is_zero() {
            return StMin(0);
        }
        if d < Duration::from_millis(1) {
            let hundreds = d.as_micros().div_ceil(100) as u8; // 1..=10
            return if hundreds >= 10 {
                StMin(1)
            } else {
                StMin(0xF0 + hundreds)
            };
        }
        let ms = d.as_micros().div_ceil(1000).min(0x7F) as u8;
        StMin(ms)
    }
}

/// One decoded N_PDU (the frame's data after any address byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pci<'a> {
    /// A whole message in one frame.
    Single {
        /// The message.
        data: &'a [u8],
    },
    /// The start of a segmented message.
    First {
        /// The whole message length (FF_DL).
        len: u32,
        /// The first bytes of the message (at most `len`).
        data: &'a [u8],
        /// Whether the 32-bit escape form was used.
        escape: bool,
    },
    /// A continuation of a segmented message.
    Consecutive {
        /// Sequence number, 0–15.
        sn: u8,
        /// The bytes after the PCI (may include padding on the last frame).
        data: &'a [u8],
    },
    /// A receiver's flow-control answer.
    FlowControl {
        /// Continue, wait or overflow.
        status: FlowStatus,
        /// Consecutive frames before the next flow control (0 = all).
        block_size: u8,
        /// Gap between consecutive frames.
        st_min: StMin,
    },
}

/// Decode one N_PDU. `frame_len` is the length of the whole CAN frame payload (address byte
/// included), which decides whether a single frame may use the escape form (only in frames
/// longer than 8 bytes).
///
/// Lenient where the standard leaves room and nothing can be misread: a short single frame in
/// a long CAN FD frame is accepted. Never panics.
pub fn parse(pdu: &[u8], frame_len: usize) -> Result<Pci<'_>, IsoTpError> {
    let Some(&b0) = pdu.first() else {
        return Err(IsoTpError::InvalidFrame {
            reason: "empty frame",
        });
    };
    match b0 >> 4 {
        0 => {
            let nibble = usize::from(b0 & 0x0F);
            let (len, start) = if nibble != 0 {
                (nibble, 1)
            } else if frame_len > 8 && pdu.len() >= 2 {
                (usize::from(pdu[1]), 2)
            } else {
                return Err(IsoTpError::InvalidFrame {
                    reason: "single frame with length 0",
                });
            };
            if len == 0 || (start == 1 && len > 7) || start + len > pdu.len() {
                return Err(IsoTpError::InvalidFrame {
                    reason: "single frame length exceeds the frame",
                });
            }
            Ok(Pci::Single {
                data: &pdu[start..start + len],
            })
        }
        1 => {
            if pdu.len() < 2 {
                return Err(IsoTpError::InvalidFrame {
                    reason: "first frame shorter than its PCI",
                });
            }
            let short = (u32::from(b0 & 0x0F) << 8) | u32::from(pdu[1]);
            let (len, start, escape) = if short != 0 {
                (short, 2, false)
            } else {
                let Some(l) = pdu.get(2..6) else {
                    return Err(IsoTpError::InvalidFrame {
                        reason: "escaped first frame shorter than its PCI",
                    });
                };
                let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]);
                if len <= FF_DL_12BIT_MAX {
                    return Err(IsoTpError::FirstFrameTooShort { len, min: 4096 });
                }
                (len, 6, true)
            };
            let data = &pdu[start..];
            let data = &data[..data.len().min(len as usize)];
            Ok(Pci::First { len, data, escape })
        }
        2 => Ok(Pci::Consecutive {
            sn: b0 & 0x0F,
            data: &pdu[1..],
        }),
        3 => {
            if pdu.len() < 3 {
                return Err(IsoTpError::InvalidFrame {
                    reason: "flow control shorter than 3 bytes",
                });
            }
            let Some(status) = FlowStatus::from_nibble(b0 & 0x0F) else {
                return Err(IsoTpError::InvalidFlowStatus { status: b0 & 0x0F });
            };
            Ok(Pci::FlowControl {
                status,
                block_size: pdu[1],
                st_min: StMin::from_raw(pdu[2]),
            })
        }
        _ => Err(IsoTpError::InvalidFrame {
            reason: "unknown frame type (PCI nibble 4–15)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn st_min_encodings() {
        assert_eq!(StMin::from_raw(0).duration(), Duration::ZERO);
        assert_eq!(StMin::from_raw(0x7F).duration(), Duration::from_millis(127));
        assert_eq!(StMin::from_raw(0x14).duration(), Duration::from_millis(20));
        assert_eq!(StMin::from_raw(0xF1).duration(), Duration::from_micros(100));
        assert_eq!(StMin::from_raw(0xF9).duration(), Duration::from_micros(900));
        for reserved in [0x80u8, 0xA0, 0xF0, 0xFA, 0xFF] {
            assert_eq!(
                StMin::from_raw(reserved).duration(),
                Duration::from_millis(127)
            );
        }
        assert_eq!(StMin::from_duration(Duration::ZERO).raw(), 0);
        assert_eq!(StMin::from_duration(Duration::from_micros(1)).raw(), 0xF1);
        assert_eq!(StMin::from_duration(Duration::from_micros(250)).raw(), 0xF3);
        assert_eq!(StMin::from_duration(Duration::from_micros(950)).raw(), 1);
        assert_eq!(StMin::from_duration(Duration::from_micros(1500)).raw(), 2);
        assert_eq!(StMin::from_duration(Duration::from_secs(1)).raw(), 0x7F);
        for raw in (0u8..=0x7F).chain(0xF1..=0xF9) {
            let s = StMin::from_raw(raw);
            assert_eq!(StMin::from_duration(s.duration()), s);
        }
    }

    #[test]
    fn single_frames() {
        assert_eq!(
            parse(&[0x02, 0x21, 0x01, 0xFF], 4),
            Ok(Pci::Single {
                data: &[0x21, 0x01]
            })
        );
        assert!(parse(&[0x00, 0x01, 0x02], 3).is_err());
        assert!(parse(&[0x08, 1, 2, 3, 4, 5, 6, 7, 8], 9).is_err());
        assert!(parse(&[0x03, 1, 2], 3).is_err());
        let mut fd = vec![0x00, 20];
        fd.extend(0..22u8);
        match parse(&fd, 24) {
            Ok(Pci::Single { data }) => assert_eq!(data.len(), 20),
            other => panic!("{other:?}"),
        }
        // The escape form is only valid in frames longer than 8 bytes.
        assert!(parse(&[0x00, 0x03, 1, 2, 3], 5).is_err());
    }

    #[test]
    fn first_frames() {
        assert_eq!(
            parse(&[0x10, 0x35, 0x61, 0x01, 0xFF, 0xFF, 0xF3, 0xCC], 8),
            Ok(Pci::First {
                len: 0x35,
                data: &[0x61, 0x01, 0xFF, 0xFF, 0xF3, 0xCC],
                escape: false
            })
        );
        let esc = [0x10, 0x00, 0x00, 0x00, 0x10, 0x00, 0xAA, 0xBB];
        assert!(matches!(
            parse(&esc, 8),
            Ok(Pci::First {
                len: 4096,
                escape: true,
                ..
            })
        ));
        assert_eq!(
            parse(&[0x10, 0x00, 0x00, 0x00, 0x0F, 0xFF, 0, 0], 8),
            Err(IsoTpError::FirstFrameTooShort {
                len: 4095,
                min: 4096
            })
        );
        assert!(parse(&[0x10], 1).is_err());
        assert!(parse(&[0x10, 0x00, 0x00], 3).is_err());
    }

    #[test]
    fn consecutive_and_flow_control() {
        assert_eq!(
            parse(&[0x21, 1, 2], 3),
            Ok(Pci::Consecutive {
                sn: 1,
                data: &[1, 2]
            })
        );
        assert_eq!(
            parse(&[0x30, 0x08, 0xF5], 3),
            Ok(Pci::FlowControl {
                status: FlowStatus::ContinueToSend,
                block_size: 8,
                st_min: StMin::from_raw(0xF5)
            })
        );
        assert_eq!(
            parse(&[0x33, 0, 0], 3),
            Err(IsoTpError::InvalidFlowStatus { status: 3 })
        );
        assert!(parse(&[0x30, 0], 2).is_err());
        assert!(parse(&[0x45], 1).is_err());
        assert!(parse(&[], 0).is_err());
    }
}
