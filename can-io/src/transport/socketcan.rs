//! SocketCAN (Linux raw `AF_CAN` sockets) through the `socketcan` crate's tokio
//! support, behind the `socketcan` feature.
//!
//! [`SocketCan::open`] opens a raw socket on one interface with CAN FD frames enabled, every
//! error class subscribed (the kernel then delivers error frames) and kernel receive timestamps
//! (`SO_TIMESTAMPNS`) switched on. All socket calls are the crate's; this module only converts
//! frames and counts.
//!
//! Conversions, both ways, between the crate's [`CanAnyFrame`] and our [`CanFrame`]:
//!
//! * [`to_socketcan`] is total: classic data frames keep a raw DLC 9–15 in `len8_dlc`, FD
//!   frames get `CANFD_FDF` plus their BRS/ESI bits, error frames carry 8 detail bytes (shorter
//!   detail data is padded with zeros, as SocketCAN always delivers 8).
//! * [`from_socketcan`] checks what the kernel (or a caller-built struct) hands over with the
//!   same rules as every other Linux-layout codec (`wire::linux::frame_from_linux`): a standard
//!   identifier above `0x7FF`, RTR and ERR at once, or a remote or error frame marked FD is
//!   [`Error::Malformed`]. Unknown FD flag bits (FDF included) are ignored.
//!
//! What this module does not do: it does not set filters, bit rates or interface state (that is
//! `ip link`'s job), and it cannot be run on machines without `AF_CAN`; see
//! `docs/protocols/can-wire.md` for how it was checked.

use std::time::{SystemTime, UNIX_EPOCH};

use ::socketcan::frame::{can_frame_default, canfd_frame_default};
use ::socketcan::tokio::CanFdSocket;
use ::socketcan::{CanAnyFrame, CanFdFrame, EmbeddedFrame, Frame, SocketOptions};

use super::{BusStats, CanBus, now_ns, send_error};
use crate::error::Error;
use crate::frame::{CanFrame, CanRecord, Channel, Direction};
use crate::wire::linux::{fd_flags_byte, frame_from_linux};

const PROTOCOL: &str = "SocketCAN";
/// `EINVAL`: what the kernel answers when an FD frame is written to an interface whose MTU is
/// the classic 16 bytes.
const EINVAL: i32 = 22;

/// A raw CAN socket bound to one interface, with CAN FD frames, error frames and kernel receive
/// timestamps enabled.
#[derive(Debug)]
pub struct SocketCan {
    socket: CanFdSocket,
    channel: Channel,
    stats: BusStats,
}

impl SocketCan {
    /// Open interface `ifname` (e.g. `can0`, `vcan0`).
    ///
    /// Fails with [`Error::Interface`] naming the interface and the step that failed: a missing
    /// interface (`ENODEV`), a kernel without `AF_CAN` (`EAFNOSUPPORT`), a socket option the
    /// kernel refuses.
    pub fn open(ifname: &str) -> Result<Self, Error> {
        let fail = |action: &'static str| {
            move |source: std::io::Error| Error::Interface {
                interface: ifname.to_owned(),
                action,
                source,
            }
        };
        let socket = CanFdSocket::open(ifname).map_err(fail("open"))?;
        socket
            .set_error_filter_accept_all()
            .map_err(fail("subscribe to error frames on"))?;
        socket
            .set_recv_timestamp(true)
            .map_err(fail("enable receive timestamps on"))?;
        Ok(Self {
            socket,
            channel: Channel::from(ifname),
            stats: BusStats::default(),
        })
    }
}

impl CanBus for SocketCan {
    async fn send(&mut self, record: &CanRecord) -> Result<(), Error> {
        let frame = to_socketcan(&record.frame);
        // A full kernel queue (ENOBUFS) is reported as QueueFull, not retried in a loop here:
        // CAN drivers do not signal writability when the queue drains.
        match self.socket.write_frame(&frame).await {
            Ok(()) => {
                self.stats.sent += 1;
                Ok(())
            }
            Err(e) if record.frame.is_fd() && e.raw_os_error() == Some(EINVAL) => {
                Err(Error::Unsupported {
                    protocol: PROTOCOL,
                    reason: format!(
                        "{} refused a CAN FD frame (is it in FD mode, `ip link set {} mtu 72`?)",
                        self.channel, self.channel
                    ),
                })
            }
            Err(e) => Err(send_error(PROTOCOL, "writing a CAN frame", e)),
        }
    }

    async fn recv(&mut self) -> Result<Option<CanRecord>, Error> {
        loop {
            let (raw, stamps) = match self.socket.read_frame_with_timestamps().await {
                Ok(read) => read,
                // A read of neither CAN_MTU nor CANFD_MTU bytes, or truncated control data.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    self.stats.malformed += 1;
                    tracing::debug!(error = %e, "skipping an unreadable CAN frame");
                    continue;
                }
                Err(source) => {
                    return Err(Error::Io {
                        action: "reading a CAN frame",
                        source,
                    });
                }
            };
            match from_socketcan(&raw) {
                Ok(frame) => {
                    self.stats.received += 1;
                    let ts_ns = stamps.socket.map_or_else(now_ns, system_time_ns);
                    return Ok(Some(CanRecord::new(
                        ts_ns,
                        self.channel.clone(),
                        Direction::Rx,
                        frame,
                    )));
                }
                Err(e) => {
                    self.stats.malformed += 1;
                    tracing::debug!(error = %e, "skipping a CAN frame the model refuses");
                }
            }
        }
    }

    fn stats(&self) -> BusStats {
        self.stats
    }
}

fn system_time_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Our frame as the `socketcan` crate's frame, ready to write to a CAN FD socket.
pub fn to_socketcan(frame: &CanFrame) -> CanAnyFrame {
    match frame {
        CanFrame::Fd(fd) => {
            let mut raw = canfd_frame_default();
            raw.can_id = frame.linux_can_id();
            raw.len = fd.data().len() as u8;
            raw.flags = fd_flags_byte(fd.flags());
            raw.data[..fd.data().len()].copy_from_slice(fd.data());
            CanAnyFrame::Fd(CanFdFrame::from(raw))
        }
        classic => {
            let mut raw = can_frame_default();
            raw.can_id = classic.linux_can_id();
            raw.can_dlc = classic.len() as u8;
            raw.data[..classic.data().len()].copy_from_slice(classic.data());
            if let CanFrame::Data(d) = classic {
                raw.len8_dlc = d.raw_dlc().unwrap_or(0);
            }
            // The crate picks data, remote or error from the flag bits in `can_id`, and gives
            // an error frame its 8 detail bytes.
            CanAnyFrame::from(raw)
        }
    }
}

/// The `socketcan` crate's frame as ours; [`Error::Malformed`] for what the frame model refuses.
pub fn from_socketcan(frame: &CanAnyFrame) -> Result<CanFrame, Error> {
    let id_word = frame.id_word();
    match frame {
        CanAnyFrame::Normal(d) => {
            let data = d.data();
            let frame = frame_from_linux(PROTOCOL, id_word, data.len(), data, None)?;
            let len8_dlc = d.as_ref().len8_dlc;
            match frame {
                CanFrame::Data(d) if data.len() == 8 && (9..=15).contains(&len8_dlc) => {
                    Ok(CanFrame::Data(d.with_raw_dlc(len8_dlc)?))
                }
                other => Ok(other),
            }
        }
        CanAnyFrame::Remote(r) => frame_from_linux(PROTOCOL, id_word, r.dlc(), &[], None),
        CanAnyFrame::Error(e) => {
            frame_from_linux(PROTOCOL, id_word, e.data().len(), e.data(), None)
        }
        CanAnyFrame::Fd(fd) => frame_from_linux(
            PROTOCOL,
            id_word,
            fd.data().len(),
            fd.data(),
            Some(fd.flags().bits()),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::frame::{CanId, DataFrame};

    /// These machines have no AF_CAN: whatever fails first (the name lookup for a missing
    /// interface, the socket itself for `lo`), the error is typed and names the interface.
    #[tokio::test]
    async fn open_failures_are_typed_and_name_the_interface() {
        const ENODEV: i32 = 19;
        const EAFNOSUPPORT: i32 = 97;
        match SocketCan::open("tether-nosuch0") {
            Err(Error::Interface {
                interface,
                action: "open",
                source,
            }) => {
                assert_eq!(interface, "tether-nosuch0");
                assert_eq!(source.raw_os_error(), Some(ENODEV), "{source}");
            }
            other => panic!("expected an interface error, got {other:?}"),
        }
        // `lo` exists; without AF_CAN the socket call fails, with AF_CAN binding a non-CAN
        // device does (ENODEV).
        let err = SocketCan::open("lo").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"lo\""), "{text}");
        match err {
            Error::Interface { source, .. } => assert!(
                matches!(source.raw_os_error(), Some(EAFNOSUPPORT | ENODEV)),
                "{source}"
            ),
            other => panic!("expected an interface error, got {other:?}"),
        }
        assert!(matches!(
            SocketCan::open("bad\0name"),
            Err(Error::Interface { .. })
        ));
    }

    #[test]
    fn raw_dlc_travels_in_len8_dlc() {
        let d = DataFrame::new(CanId::extended(0x1abcdef).unwrap(), &[9; 8])
            .unwrap()
            .with_raw_dlc(13)
            .unwrap();
        let theirs = to_socketcan(&CanFrame::Data(d));
        match &theirs {
            CanAnyFrame::Normal(n) => assert_eq!(n.as_ref().len8_dlc, 13),
            other => panic!("{other:?}"),
        }
        assert_eq!(from_socketcan(&theirs).unwrap(), CanFrame::Data(d));
    }

    #[tokio::test]
    #[ignore = "needs AF_CAN and a vcan0 interface (`ip link add vcan0 type vcan`)"]
    async fn vcan_loopback() {
        let mut a = SocketCan::open("vcan0").unwrap();
        let mut b = SocketCan::open("vcan0").unwrap();
        let frame =
            CanFrame::Data(DataFrame::new(CanId::standard(0x123).unwrap(), &[1, 2]).unwrap());
        a.send(&CanRecord::new(
            0,
            Channel::from("vcan0"),
            Direction::Tx,
            frame,
        ))
        .await
        .unwrap();
        let got = b.recv().await.unwrap().unwrap();
        assert_eq!(got.frame, frame);
        assert!(got.ts_ns > 0);
    }
}
