//! python-can's `udp_multicast` bus: one msgpack datagram per frame on an IPv4 multicast group.
//!
//! Like python-can, the receiving socket sets `SO_REUSEADDR` and `SO_REUSEPORT` so several
//! processes on one host share the port, and multicast loopback stays on so they hear each
//! other. Sending uses a second socket on an ephemeral port; datagrams that come back from that
//! port are our own and are skipped. Received timestamps are taken from the datagram.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::{BusStats, CanBus, send_error};
use crate::error::Error;
use crate::frame::{CanRecord, Channel, Direction};
use crate::wire::multicast::{MAX_DATAGRAM, MulticastMessage};

/// A python-can compatible multicast bus.
#[derive(Debug)]
pub struct MulticastBus {
    rx: UdpSocket,
    tx: UdpSocket,
    tx_port: u16,
    group: SocketAddrV4,
    channel: Channel,
    buf: Vec<u8>,
    stats: BusStats,
}

fn io(action: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { action, source }
}

impl MulticastBus {
    /// Join `group` (e.g. `239.74.163.2:43113`). Received records are named `channel` when the
    /// sender gave none.
    pub fn join(group: SocketAddrV4, channel: &str) -> Result<Self, Error> {
        if !group.ip().is_multicast() {
            return Err(Error::Unsupported {
                protocol: "udp_multicast",
                reason: format!("{} is not a multicast group", group.ip()),
            });
        }
        let rx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .map_err(io("creating the multicast socket"))?;
        rx.set_reuse_address(true)
            .map_err(io("setting SO_REUSEADDR"))?;
        rx.set_reuse_port(true)
            .map_err(io("setting SO_REUSEPORT"))?;
        rx.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, group.port())).into())
            .map_err(io("binding the multicast port"))?;
        rx.join_multicast_v4(group.ip(), &Ipv4Addr::UNSPECIFIED)
            .map_err(io("joining the multicast group"))?;
        rx.set_multicast_loop_v4(true)
            .map_err(io("enabling multicast loopback"))?;
        rx.set_nonblocking(true)
            .map_err(io("making the multicast socket non-blocking"))?;

        let tx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .map_err(io("creating the send socket"))?;
        tx.set_multicast_ttl_v4(1)
            .map_err(io("setting the multicast TTL"))?;
        tx.set_multicast_loop_v4(true)
            .map_err(io("enabling multicast loopback"))?;
        tx.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
            .map_err(io("binding the send socket"))?;
        tx.set_nonblocking(true)
            .map_err(io("making the send socket non-blocking"))?;

        let rx = UdpSocket::from_std(rx.into()).map_err(io("registering the multicast socket"))?;
        let tx = UdpSocket::from_std(tx.into()).map_err(io("registering the send socket"))?;
        let tx_port = tx
            .local_addr()
            .map_err(io("reading the send socket address"))?
            .port();
        Ok(Self {
            rx,
            tx,
            tx_port,
            group,
            channel: Channel::from(channel),
            buf: vec![0; 65536],
            stats: BusStats::default(),
        })
    }
}

impl CanBus for MulticastBus {
    async fn send(&mut self, record: &CanRecord) -> Result<(), Error> {
        let m = MulticastMessage::from_frame(record.ts_ns, Some(&record.channel), &record.frame);
        let bytes = m.encode()?;
        if bytes.len() > MAX_DATAGRAM {
            return Err(Error::Unsupported {
                protocol: "udp_multicast",
                reason: "datagram too large".into(),
            });
        }
        self.tx
            .send_to(&bytes, SocketAddr::V4(self.group))
            .await
            .map_err(|e| send_error("udp_multicast", "sending a multicast datagram", e))?;
        self.stats.sent += 1;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<CanRecord>, Error> {
        loop {
            let (n, from) = self
                .rx
                .recv_from(&mut self.buf)
                .await
                .map_err(io("receiving a multicast datagram"))?;
            if from.port() == self.tx_port {
                continue; // our own datagram, looped back
            }
            match MulticastMessage::decode(&self.buf[..n]) {
                Ok(m) => {
                    let frame = m.frame()?;
                    let channel = m
                        .channel_name()
                        .map(Channel::from)
                        .unwrap_or_else(|| self.channel.clone());
                    self.stats.received += 1;
                    return Ok(Some(CanRecord::new(
                        m.ts_ns(),
                        channel,
                        Direction::Rx,
                        frame,
                    )));
                }
                Err(e) => {
                    self.stats.malformed += 1;
                    tracing::debug!(%from, error = %e, "skipping malformed multicast datagram");
                }
            }
        }
    }

    fn stats(&self) -> BusStats {
        self.stats
    }
}
