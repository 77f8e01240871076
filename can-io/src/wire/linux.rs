//! The Linux SocketCAN `can_id` word and flag bits, shared by every protocol that copies the
//! kernel layout onto the wire (cannelloni, SocketCAN itself).

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

/// Size of the kernel's `struct can_frame`.
pub const CAN_MTU: usize = 16;
/// Size of the kernel's `struct canfd_frame`.
pub const CANFD_MTU: usize = 72;

/// The frame as the kernel's `struct can_frame` (classic, remote, error: 16 bytes) or
/// `struct canfd_frame` (FD: 72 bytes), `can_id` in native byte order as the kernel expects.
/// An 8-byte classic frame with a raw DLC puts it in `len8_dlc`.
pub fn to_kernel_bytes(frame: &CanFrame) -> Vec<u8> {
    let mut out = Vec::with_capacity(CANFD_MTU);
    out.extend_from_slice(&frame.linux_can_id().to_ne_bytes());
    match frame {
        CanFrame::Fd(fd) => {
            out.push(fd.data().len() as u8);
            out.push(fd_flags_byte(fd.flags()));
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(fd.data());
            out.resize(CANFD_MTU, 0);
        }
        other => {
            let len8_dlc = match other {
                CanFrame::Data(d) => d.raw_dlc().unwrap_or(0),
                _ => 0,
            };
            out.extend_from_slice(&[other.len() as u8, 0, 0, len8_dlc]);
            out.extend_from_slice(other.data());
            out.resize(CAN_MTU, 0);
        }
    }
    out
}

/// Parse a `struct can_frame` (16 bytes) or `struct canfd_frame` (72 bytes) as read from a raw
/// CAN socket.
pub fn from_kernel_bytes(bytes: &[u8]) -> Result<CanFrame, Error> {
    const P: &str = "SocketCAN";
    let fd = match bytes.len() {
        CAN_MTU => false,
        CANFD_MTU => true,
        n => {
            return Err(Error::Malformed {
                protocol: P,
                reason: format!("{n} bytes is neither CAN_MTU nor CANFD_MTU"),
            });
        }
    };
    let can_id = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let len = bytes[4] as usize;
    let max = if fd { 64 } else { 8 };
    if len > max {
        return Err(Error::Malformed {
            protocol: P,
            reason: format!("length {len} exceeds {max}"),
        });
    }
    if fd {
        return frame_from_linux(P, can_id, len, &bytes[8..8 + len], Some(bytes[5]));
    }
    let data = if can_id & CAN_RTR_FLAG != 0 {
        &[][..]
    } else {
        &bytes[8..8 + len]
    };
    let frame = frame_from_linux(P, can_id, len, data, None)?;
    let len8_dlc = bytes[7];
    match frame {
        CanFrame::Data(d) if len == 8 && (9..=15).contains(&len8_dlc) => {
            Ok(CanFrame::Data(d.with_raw_dlc(len8_dlc)?))
        }
        other => Ok(other),
    }
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

    #[test]
    fn kernel_layout_round_trips() {
        let d =
            CanFrame::Data(DataFrame::new(CanId::standard(0x123).unwrap(), &[1, 2, 3]).unwrap());
        let b = to_kernel_bytes(&d);
        assert_eq!(b.len(), CAN_MTU);
        assert_eq!(&b[..4], &0x123u32.to_ne_bytes());
        assert_eq!(&b[4..11], &[3, 0, 0, 0, 1, 2, 3]);
        assert_eq!(from_kernel_bytes(&b).unwrap(), d);

        let raw = CanFrame::Data(
            DataFrame::new(CanId::extended(0x1abcdef).unwrap(), &[9; 8])
                .unwrap()
                .with_raw_dlc(13)
                .unwrap(),
        );
        let b = to_kernel_bytes(&raw);
        assert_eq!(b[7], 13);
        assert_eq!(&b[..4], &(0x1abcdef | CAN_EFF_FLAG).to_ne_bytes());
        assert_eq!(from_kernel_bytes(&b).unwrap(), raw);

        let fd = CanFrame::Fd(
            FdFrame::new(
                CanId::standard(0x7ff).unwrap(),
                &[0xAA; 48],
                FdFlags {
                    brs: true,
                    esi: true,
                },
            )
            .unwrap(),
        );
        let b = to_kernel_bytes(&fd);
        assert_eq!(b.len(), CANFD_MTU);
        assert_eq!(&b[4..8], &[48, CANFD_BRS | CANFD_ESI | CANFD_FDF, 0, 0]);
        assert_eq!(from_kernel_bytes(&b).unwrap(), fd);

        let rtr = CanFrame::Remote(RemoteFrame::new(CanId::standard(1).unwrap(), 4).unwrap());
        let b = to_kernel_bytes(&rtr);
        assert_eq!(&b[4..5], &[4]);
        assert_eq!(from_kernel_bytes(&b).unwrap(), rtr);

        assert!(from_kernel_bytes(&[0; 15]).is_err());
        let mut bad = to_kernel_bytes(&d);
        bad[4] = 9;
        assert!(from_kernel_bytes(&bad).is_err());
    }
}
