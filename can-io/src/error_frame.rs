//! Error frames in the Linux SocketCAN layout (`linux/can/error.h`), decoded into their causes.
//!
//! The error class lives in the identifier bits (without `CAN_ERR_FLAG`), the details in up to
//! eight data bytes. Unknown bits are kept, so an error frame round-trips unchanged.

use crate::error::Error;

/// Error class bits (the `can_id` of an error frame without `CAN_ERR_FLAG`).
pub mod class {
    /// TX timeout (by netdevice driver).
    pub const TX_TIMEOUT: u32 = 0x0000_0001;
    /// Lost arbitration; data\[0\] holds the bit number.
    pub const LOST_ARBITRATION: u32 = 0x0000_0002;
    /// Controller problems; data\[1\] holds the status.
    pub const CONTROLLER: u32 = 0x0000_0004;
    /// Protocol violations; data\[2\] type, data\[3\] location.
    pub const PROTOCOL: u32 = 0x0000_0008;
    /// Transceiver status; data\[4\].
    pub const TRANSCEIVER: u32 = 0x0000_0010;
    /// No acknowledgement on transmission.
    pub const NO_ACK: u32 = 0x0000_0020;
    /// Bus off.
    pub const BUS_OFF: u32 = 0x0000_0040;
    /// Bus error (may flood).
    pub const BUS_ERROR: u32 = 0x0000_0080;
    /// Controller restarted.
    pub const RESTARTED: u32 = 0x0000_0100;
    /// TX / RX error counters in data\[6\] and data\[7\].
    pub const COUNTERS: u32 = 0x0000_0200;
}

/// Controller status bits (data\[1\] when [`class::CONTROLLER`] is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControllerStatus {
    /// RX buffer overflow.
    pub rx_overflow: bool,
    /// TX buffer overflow.
    pub tx_overflow: bool,
    /// Reached warning level for RX errors.
    pub rx_warning: bool,
    /// Reached warning level for TX errors.
    pub tx_warning: bool,
    /// Reached error passive status RX.
    pub rx_passive: bool,
    /// Reached error passive status TX.
    pub tx_passive: bool,
    /// Recovered to error active state.
    pub active: bool,
}

/// Protocol violation details (data\[2\] and data\[3\] when [`class::PROTOCOL`] is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProtocolViolation {
    /// Single bit error.
    pub bit: bool,
    /// Frame format error.
    pub form: bool,
    /// Bit stuffing error.
    pub stuff: bool,
    /// Unable to send dominant bit.
    pub bit0: bool,
    /// Unable to send recessive bit.
    pub bit1: bool,
    /// Bus overload.
    pub overload: bool,
    /// Active error announcement.
    pub active: bool,
    /// Error occurred on transmission.
    pub tx: bool,
    /// Location in the frame (`CAN_ERR_PROT_LOC_*`, 0 = unspecified).
    pub location: u8,
}

/// Everything an error frame says, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorCauses {
    /// TX timeout.
    pub tx_timeout: bool,
    /// Lost arbitration, with the bit number when known.
    pub lost_arbitration: Option<u8>,
    /// Controller problems.
    pub controller: Option<ControllerStatus>,
    /// Protocol violations.
    pub protocol: Option<ProtocolViolation>,
    /// Transceiver status code (`CAN_ERR_TRX_*`).
    pub transceiver: Option<u8>,
    /// No acknowledgement on transmission.
    pub no_ack: bool,
    /// Bus off.
    pub bus_off: bool,
    /// Bus error.
    pub bus_error: bool,
    /// Controller restarted.
    pub restarted: bool,
    /// TX and RX error counters.
    pub counters: Option<(u8, u8)>,
}

/// An error frame: error class bits and up to 8 detail bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorFrame {
    class_bits: u32,
    len: u8,
    data: [u8; 8],
}

impl ErrorFrame {
    /// An error frame; refuses class bits beyond the 29-bit mask and more than 8 data bytes.
    pub fn new(class_bits: u32, data: &[u8]) -> Result<Self, Error> {
        if class_bits > crate::frame::MAX_EXTENDED_ID {
            return Err(Error::IdOutOfRange {
                id: class_bits,
                extended: true,
            });
        }
        if data.len() > 8 {
            return Err(Error::ClassicTooLong { len: data.len() });
        }
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        Ok(Self {
            class_bits,
            len: data.len() as u8,
            data: bytes,
        })
    }

    /// The error class bits (without `CAN_ERR_FLAG`).
    pub fn class_bits(&self) -> u32 {
        self.class_bits
    }

    /// The detail bytes as recorded.
    pub fn data(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }

    /// Decode the causes. Bytes missing from a short frame read as zero.
    pub fn causes(&self) -> ErrorCauses {
        let has = |bit: u32| self.class_bits & bit != 0;
        let d = &self.data;
        ErrorCauses {
            tx_timeout: has(class::TX_TIMEOUT),
            lost_arbitration: has(class::LOST_ARBITRATION).then_some(d[0]),
            controller: has(class::CONTROLLER).then(|| ControllerStatus {
                rx_overflow: d[1] & 0x01 != 0,
                tx_overflow: d[1] & 0x02 != 0,
                rx_warning: d[1] & 0x04 != 0,
                tx_warning: d[1] & 0x08 != 0,
                rx_passive: d[1] & 0x10 != 0,
                tx_passive: d[1] & 0x20 != 0,
                active: d[1] & 0x40 != 0,
            }),
            protocol: has(class::PROTOCOL).then(|| ProtocolViolation {
                bit: d[2] & 0x01 != 0,
                form: d[2] & 0x02 != 0,
                stuff: d[2] & 0x04 != 0,
                bit0: d[2] & 0x08 != 0,
                bit1: d[2] & 0x10 != 0,
                overload: d[2] & 0x20 != 0,
                active: d[2] & 0x40 != 0,
                tx: d[2] & 0x80 != 0,
                location: d[3],
            }),
            transceiver: has(class::TRANSCEIVER).then_some(d[4]),
            no_ack: has(class::NO_ACK),
            bus_off: has(class::BUS_OFF),
            bus_error: has(class::BUS_ERROR),
            restarted: has(class::RESTARTED),
            counters: has(class::COUNTERS).then_some((d[6], d[7])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_controller_and_counters() {
        let f = ErrorFrame::new(
            class::CONTROLLER | class::COUNTERS,
            &[0, 0x04, 0, 0, 0, 0, 97, 3],
        )
        .unwrap();
        let c = f.causes();
        assert!(c.controller.unwrap().rx_warning);
        assert_eq!(c.counters, Some((97, 3)));
        assert!(!c.bus_off);
        assert!(c.protocol.is_none());
    }

    #[test]
    fn refuses_oversized_class_and_data() {
        assert!(ErrorFrame::new(0x2000_0000, &[]).is_err());
        assert!(ErrorFrame::new(class::BUS_OFF, &[0; 9]).is_err());
    }
}
