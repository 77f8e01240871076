//! The Linux SocketCAN `can_id` word and flag bits, shared by every protocol that copies the
//! kernel layout onto the wire (cannelloni) and by the SocketCAN transport's frame conversions.
//! The kernel structs themselves (`struct can_frame`, `struct canfd_frame`) are the `socketcan`
//! crate's business.

use crate::error::Error;
use crate::error_frame::ErrorFrame;
use crate::frame::{CanFrame, CanId, DataFrame, FdFlags, FdFrame, RemoteFrame};

/// Extended frame format flag in `can_id`.
pub const CAN_EFF_FLAG: u32 = 0x8000_0000;
/// Remote transmission request flag in `can_id`.
pub const CAN_RTR_FLAG: u32 = 0x4000_0000;
/// Error frame flag in `can_id`.
pub const CAN_ERR_FLAG: u32 = 0x2000_0000;
/// Mask of a 29-bit identifier (and of the error class bits).
pub const CAN_EFF_MASK: u32 = 0x1FFF_FFFF;
/// Mask of an 11-bit identifier.
pub const CAN_SFF_MASK: u32 = 0x7FF;
/// `canfd_frame.flags`: bit rate switch.
pub const CANFD_BRS: u8 = 0x01;
/// `canfd_frame.flags`: error state indicator.
pub const CANFD_ESI: u8 = 0x02;
/// `canfd_frame.flags`: marks a CAN FD frame (set by newer kernels; ignored when reading).
pub const CANFD_FDF: u8 = 0x04;

/// Build a frame from the kernel's view of it.
///
/// * `can_id` — identifier with `CAN_EFF_FLAG` / `CAN_RTR_FLAG` / `CAN_ERR_FLAG`.
/// * `len` — the data length (for remote frames the requested length; `data` is then ignored).
/// * `data` — the payload; must be exactly `len` bytes unless the frame is remote.
/// * `fd_flags` — `Some(flags)` for a CAN FD frame.
///
/// Refuses what a controller could not have sent: a standard identifier above `0x7FF` (the
/// kernel would mask it; we report it), remote or error FD frames, remote-and-error at once,
/// and lengths that do not fit the frame kind.
pub fn frame_from_linux(
    protocol: &'static str,
    can_id: u32,
    len: usize,
    data: &[u8],
    fd_flags: Option<u8>,
) -> Result<CanFrame, Error> {
    let malformed = |reason: String| Error::Malformed { protocol, reason };
    let rtr = can_id & CAN_RTR_FLAG != 0;
    let err = can_id & CAN_ERR_FLAG != 0;
    if rtr && err {
        return Err(malformed(format!(
            "can_id 0x{can_id:08X} has both RTR and ERR flags"
        )));
    }
    if err {
        if fd_flags.is_some() {
            return Err(malformed("error frame marked as CAN FD".into()));
        }
        check_len(protocol, len, data)?;
        return Ok(CanFrame::Error(ErrorFrame::new(
            can_id & CAN_EFF_MASK,
            data,
        )?));
    }
    let id = if can_id & CAN_EFF_FLAG != 0 {
        CanId::extended(can_id & CAN_EFF_MASK)?
    } else {
        CanId::standard(can_id & CAN_EFF_MASK)?
    };
    if rtr {
        if fd_flags.is_some() {
            return Err(malformed("CAN FD has no remote frames".into()));
        }
        return Ok(CanFrame::Remote(RemoteFrame::new(id, len)?));
    }
    check_len(protocol, len, data)?;
    match fd_flags {
        Some(bits) => Ok(CanFrame::Fd(FdFrame::new(
            id,
            data,
            FdFlags::from_bits(bits),
        )?)),
        None => Ok(CanFrame::Data(DataFrame::new(id, data)?)),
    }
}

fn check_len(protocol: &'static str, len: usize, data: &[u8]) -> Result<(), Error> {
    if len != data.len() {
        return Err(Error::Malformed {
            protocol,
            reason: format!("length {len} but {} data bytes", data.len()),
        });
    }
    Ok(())
}

/// The `canfd_frame.flags` byte we put on the wire for an FD frame: BRS/ESI plus `CANFD_FDF`,
/// as current kernels report it.
pub fn fd_flags_byte(flags: FdFlags) -> u8 {
    flags.bits() | CANFD_FDF
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_contradictory_flags() {
        assert!(frame_from_linux("t", CAN_RTR_FLAG | CAN_ERR_FLAG, 0, &[], None).is_err());
        assert!(frame_from_linux("t", CAN_RTR_FLAG | 0x123, 0, &[], Some(0)).is_err());
        assert!(frame_from_linux("t", 0x800, 0, &[], None).is_err());
        assert!(frame_from_linux("t", 0x123, 2, &[1], None).is_err());
    }

    #[test]
    fn builds_each_kind() {
        let f = frame_from_linux("t", CAN_EFF_FLAG | 0x1234, 2, &[1, 2], None).unwrap();
        assert_eq!(f.linux_can_id(), CAN_EFF_FLAG | 0x1234);
        let r = frame_from_linux("t", CAN_RTR_FLAG | 0x12, 5, &[], None).unwrap();
        assert_eq!(r.len(), 5);
        let fd = frame_from_linux("t", 0x12, 12, &[0; 12], Some(CANFD_BRS | CANFD_FDF)).unwrap();
        assert!(fd.is_fd());
        let e = frame_from_linux("t", CAN_ERR_FLAG | 0x40, 8, &[0; 8], None).unwrap();
        assert!(matches!(e, CanFrame::Error(_)));
    }
}
