//! SocketCAN (Linux `AF_CAN` raw sockets), behind the `socketcan` feature.
//!
//! The frame conversions to and from the kernel's `struct can_frame` / `struct canfd_frame`
//! live in [`crate::wire::linux`] (always compiled and unit-tested); this module only owns the
//! socket. Receive timestamps are taken when the frame is read.

// Why unsafe is allowed here, and only here: creating, binding and reading an AF_CAN socket
// needs raw libc calls (`socket`, `setsockopt`, `bind` with a `sockaddr_can`, `read`, `write`)
// that neither std, tokio nor socket2 wrap. Each unsafe block is a single FFI call on a file
// descriptor this module owns, with buffers whose lengths are passed alongside.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{BusStats, CanBus, now_ns, send_error};
use crate::error::Error;
use crate::frame::{CanRecord, Channel, Direction};
use crate::wire::linux::{CANFD_MTU, from_kernel_bytes, to_kernel_bytes};

/// A raw CAN socket bound to one interface, with CAN FD frames enabled.
#[derive(Debug)]
pub struct SocketCan {
    fd: AsyncFd<OwnedFd>,
    channel: Channel,
    stats: BusStats,
}

fn last_error(action: &'static str) -> Error {
    Error::Io {
        action,
        source: std::io::Error::last_os_error(),
    }
}

impl SocketCan {
    /// Open interface `ifname` (e.g. `can0`, `vcan0`).
    pub fn open(ifname: &str) -> Result<Self, Error> {
        let name = CString::new(ifname).map_err(|_| Error::Unsupported {
            protocol: "SocketCAN",
            reason: "interface name contains NUL".into(),
        })?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(last_error("looking up the CAN interface"));
        }
        // SAFETY: plain FFI call with constant arguments.
        let raw = unsafe {
            libc::socket(
                libc::AF_CAN,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::CAN_RAW,
            )
        };
        if raw < 0 {
            return Err(last_error("creating the CAN socket"));
        }
        // SAFETY: `raw` is a fresh descriptor we own; OwnedFd closes it on every path below.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let on: libc::c_int = 1;
        // SAFETY: the option value points to a c_int and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_CAN_RAW,
                libc::CAN_RAW_FD_FRAMES,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(last_error("enabling CAN FD frames"));
        }
        // SAFETY: sockaddr_can is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_can = unsafe { std::mem::zeroed() };
        addr.can_family = libc::AF_CAN as libc::sa_family_t;
        addr.can_ifindex = ifindex as libc::c_int;
        // SAFETY: `addr` is a valid sockaddr_can and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_can).cast(),
                std::mem::size_of::<libc::sockaddr_can>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(last_error("binding the CAN socket"));
        }
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, so it stays open and keeps the same
        // descriptor for the AsyncFd's whole lifetime.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| Error::Io {
            action: "registering the CAN socket",
            source: e.into_parts().1,
        })?;
        Ok(Self {
            fd,
            channel: Channel::from(ifname),
            stats: BusStats::default(),
        })
    }
}

impl CanBus for SocketCan {
    async fn send(&mut self, record: &CanRecord) -> Result<(), Error> {
        let bytes = to_kernel_bytes(&record.frame);
        // A full kernel queue (ENOBUFS) is reported as QueueFull, not retried in a loop here:
        // CAN drivers do not signal writability when the queue drains.
        let n = self
            .fd
            .async_io(Interest::WRITABLE, |fd| {
                // SAFETY: `bytes` is a live buffer of the given length.
                let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
            .await
            .map_err(|e| send_error("SocketCAN", "writing a CAN frame", e))?;
        if n != bytes.len() {
            return Err(Error::Io {
                action: "writing a CAN frame",
                source: std::io::Error::new(std::io::ErrorKind::WriteZero, "short write"),
            });
        }
        self.stats.sent += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<CanRecord>, Error> {
        let mut buf = [0u8; CANFD_MTU];
        loop {
            let n = self
                .fd
                .async_io(Interest::READABLE, |fd| {
                    // SAFETY: `buf` is a live buffer of the given length.
                    let n =
                        unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                    if n < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                })
                .await
                .map_err(|source| Error::Io {
                    action: "reading a CAN frame",
                    source,
                })?;
            match from_kernel_bytes(&buf[..n]) {
                Ok(frame) => {
                    self.stats.received += 1;
                    return Ok(Some(CanRecord::new(
                        now_ns(),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_interface_is_a_typed_error() {
        // Works without AF_CAN: the name lookup fails first.
        assert!(matches!(
            SocketCan::open("tether-no-such-if0"),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            SocketCan::open("bad\0name"),
            Err(Error::Unsupported { .. })
        ));
    }

    #[tokio::test]
    #[ignore = "needs AF_CAN/vcan"]
    async fn vcan_loopback() {
        let mut a = SocketCan::open("vcan0").unwrap();
        let mut b = SocketCan::open("vcan0").unwrap();
        let frame = crate::frame::CanFrame::Data(
            crate::frame::DataFrame::new(crate::frame::CanId::standard(0x123).unwrap(), &[1, 2])
                .unwrap(),
        );
        a.send(&CanRecord::new(
            0,
            Channel::from("vcan0"),
            Direction::Tx,
            frame,
        ))
        .await
        .unwrap();
        assert_eq!(b.recv().await.unwrap().unwrap().frame, frame);
    }
}
