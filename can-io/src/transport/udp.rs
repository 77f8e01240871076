//! UDP transports: REMP (our dongle protocol) and cannelloni v2.
//!
//! Both batch frames into datagrams on [`CanBus::send`] and put the batch on the wire at
//! [`CanBus::flush`] or when it is full. Received datagrams that do not decode are skipped and
//! counted (`BusStats::malformed`), never fatal: anyone can send a UDP datagram.

use std::collections::VecDeque;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

use super::{BusStats, CanBus, now_ns, send_error};
use crate::error::Error;
use crate::frame::{CanRecord, Channel};
use crate::wire::cannelloni::{self, CannelloniSender};
use crate::wire::remp::{self, RempEvent, RempReceiver, RempSender};

const RECV_BUF: usize = 65536;
const SENDING_REMP: &str = "sending a REMP datagram";
const SENDING_CANNELLONI: &str = "sending a cannelloni datagram";

/// A UDP socket and the peer it talks to: a fixed address, or else whoever was last heard from.
#[derive(Debug)]
struct UdpPeer {
    socket: UdpSocket,
    peer: Option<SocketAddr>,
    last_from: Option<SocketAddr>,
    protocol: &'static str,
}

impl UdpPeer {
    async fn bind(
        local: SocketAddr,
        peer: Option<SocketAddr>,
        protocol: &'static str,
        action: &'static str,
    ) -> Result<Self, Error> {
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|source| Error::Io { action, source })?;
        Ok(Self {
            socket,
            peer,
            last_from: None,
            protocol,
        })
    }

    fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.socket.local_addr().map_err(|source| Error::Io {
            action: "reading the local address",
            source,
        })
    }

    async fn send(&self, d: &[u8], action: &'static str) -> Result<(), Error> {
        let peer = self
            .peer
            .or(self.last_from)
            .ok_or_else(|| Error::Unsupported {
                protocol: self.protocol,
                reason: "no peer to send to yet (no datagram received)".into(),
            })?;
        self.socket
            .send_to(d, peer)
            .await
            .map_err(|e| send_error(self.protocol, action, e))?;
        Ok(())
    }

    /// Sends `datagrams` in order: what a sender's `push` or `flush` handed back.
    async fn send_all(
        &self,
        datagrams: impl IntoIterator<Item = Vec<u8>>,
        action: &'static str,
    ) -> Result<(), Error> {
        for d in datagrams {
            self.send(&d, action).await?;
        }
        Ok(())
    }

    async fn recv_from(
        &self,
        buf: &mut [u8],
        action: &'static str,
    ) -> Result<(usize, SocketAddr), Error> {
        self.socket
            .recv_from(buf)
            .await
            .map_err(|source| Error::Io { action, source })
    }
}

/// The next record already decoded, counted as received.
fn take_received(inbox: &mut VecDeque<CanRecord>, stats: &mut BusStats) -> Option<CanRecord> {
    let r = inbox.pop_front()?;
    stats.received += 1;
    Some(r)
}

/// REMP over UDP, either side: a dongle sending to an agent, or an agent receiving from
/// dongles (and answering to the address a dongle was last heard from).
#[derive(Debug)]
pub struct RempUdp {
    link: UdpPeer,
    sender: RempSender,
    receiver: RempReceiver,
    inbox: VecDeque<CanRecord>,
    events: VecDeque<RempEvent>,
    buf: Vec<u8>,
    stats: BusStats,
}

impl RempUdp {
    /// Bind `local` and speak as `serial`. With `peer`, datagrams go there; without, they go to
    /// the address the last datagram came from.
    pub async fn bind(
        local: SocketAddr,
        peer: Option<SocketAddr>,
        serial: &str,
    ) -> Result<Self, Error> {
        let boot_id = boot_id();
        Ok(Self {
            link: UdpPeer::bind(local, peer, "REMP", "binding the REMP socket").await?,
            sender: RempSender::new(serial, boot_id, 1000)?,
            receiver: RempReceiver::default(),
            inbox: VecDeque::new(),
            events: VecDeque::new(),
            buf: vec![0; RECV_BUF],
            stats: BusStats::default(),
        })
    }

    /// A simulated dongle: binds an ephemeral port, sends its hello to `agent`.
    pub async fn dongle(agent: SocketAddr, serial: &str) -> Result<Self, Error> {
        Self::dongle_with_key(agent, serial, None).await
    }

    /// [`RempUdp::dongle`] signing every datagram with `key` when given. A signing dongle's
    /// boot id is its start time in nanoseconds, so it grows from run to run as receivers
    /// require.
    pub async fn dongle_with_key(
        agent: SocketAddr,
        serial: &str,
        key: Option<remp::RempKey>,
    ) -> Result<Self, Error> {
        let local: SocketAddr = if agent.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut bus = Self::bind(local, Some(agent), serial).await?;
        if let Some(key) = key {
            bus.sender = RempSender::new(serial, now_ns(), 1000)?.with_key(key);
        }
        bus.hello().await?;
        Ok(bus)
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.link.local_addr()
    }

    async fn send_datagram(&mut self, d: &[u8]) -> Result<(), Error> {
        self.link.send(d, SENDING_REMP).await
    }

    /// Send a hello (announces the serial and channel names).
    pub async fn hello(&mut self) -> Result<(), Error> {
        let d = self.sender.hello()?;
        self.send_datagram(&d).await
    }

    /// Send a keep-alive.
    pub async fn keepalive(&mut self) -> Result<(), Error> {
        let d = self.sender.keepalive()?;
        self.send_datagram(&d).await
    }

    /// The per-dongle sequence counters.
    pub fn receiver(&self) -> &RempReceiver {
        &self.receiver
    }

    /// The next event (hello, keep-alive, frames or a dropped datagram) from any dongle.
    /// Malformed datagrams are counted and skipped.
    pub async fn recv_event(&mut self) -> Result<RempEvent, Error> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        loop {
            let (n, from) = self
                .link
                .recv_from(&mut self.buf, "receiving a REMP datagram")
                .await?;
            match self.receiver.handle_datagram(&self.buf[..n], now_ns()) {
                Ok(ev) => {
                    if !matches!(ev, RempEvent::Dropped { .. }) {
                        self.link.last_from = Some(from);
                    }
                    return Ok(ev);
                }
                Err(e) => {
                    self.stats.malformed += 1;
                    tracing::debug!(%from, error = %e, "skipping malformed REMP datagram");
                }
            }
        }
    }
}

/// A random-enough boot id without a random number generator dependency: time and address
/// of a stack value, hashed.
fn boot_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns());
    h.finish()
}

impl CanBus for RempUdp {
    async fn send(&mut self, record: &CanRecord) -> Result<(), Error> {
        let datagrams = self.sender.push(record)?;
        self.link.send_all(datagrams, SENDING_REMP).await?;
        self.stats.sent += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Error> {
        let datagram = self.sender.flush()?;
        self.link.send_all(datagram, SENDING_REMP).await
    }

    async fn recv(&mut self) -> Result<Option<CanRecord>, Error> {
        loop {
            if let Some(r) = take_received(&mut self.inbox, &mut self.stats) {
                return Ok(Some(r));
            }
            if let RempEvent::Frames { records, .. } = self.recv_event().await? {
                self.inbox.extend(records);
            }
        }
    }

    fn stats(&self) -> BusStats {
        let t = self.receiver.totals();
        BusStats {
            dropped: self.stats.dropped + t.lost + t.stale,
            ..self.stats
        }
    }
}

/// cannelloni v2 over UDP. cannelloni carries no timestamps, channel or direction: received
/// records get the local receive time, the configured channel name and `Direction::Rx`.
#[derive(Debug)]
pub struct CannelloniUdp {
    link: UdpPeer,
    channel: Channel,
    sender: CannelloniSender,
    inbox: VecDeque<CanRecord>,
    buf: Vec<u8>,
    stats: BusStats,
}

impl CannelloniUdp {
    /// Bind `local`; send to `peer` (or, without one, to whoever sent last). Received frames
    /// are named `channel`.
    pub async fn bind(
        local: SocketAddr,
        peer: Option<SocketAddr>,
        channel: &str,
    ) -> Result<Self, Error> {
        Ok(Self {
            link: UdpPeer::bind(local, peer, "cannelloni", "binding the cannelloni socket").await?,
            channel: Channel::from(channel),
            sender: CannelloniSender::new(),
            inbox: VecDeque::new(),
            buf: vec![0; RECV_BUF],
            stats: BusStats::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.link.local_addr()
    }
}

impl CanBus for CannelloniUdp {
    async fn send(&mut self, record: &CanRecord) -> Result<(), Error> {
        let datagram = self.sender.push(record.frame)?;
        self.link.send_all(datagram, SENDING_CANNELLONI).await?;
        self.stats.sent += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Error> {
        let datagram = self.sender.flush()?;
        self.link.send_all(datagram, SENDING_CANNELLONI).await
    }

    async fn recv(&mut self) -> Result<Option<CanRecord>, Error> {
        loop {
            if let Some(r) = take_received(&mut self.inbox, &mut self.stats) {
                return Ok(Some(r));
            }
            let (n, from) = self
                .link
                .recv_from(&mut self.buf, "receiving a cannelloni datagram")
                .await?;
            match cannelloni::decode_datagram(&self.buf[..n]) {
                Ok(d) => {
                    self.link.last_from = Some(from);
                    self.inbox.extend(d.into_records(now_ns(), &self.channel));
                }
                Err(e) => {
                    self.stats.malformed += 1;
                    tracing::debug!(%from, error = %e, "skipping malformed cannelloni datagram");
                }
            }
        }
    }

    fn stats(&self) -> BusStats {
        self.stats
    }
}

/// Re-exported so callers can size buffers.
pub use remp::MAX_DATAGRAM as REMP_MAX_DATAGRAM;
