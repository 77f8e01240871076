//! Bus addresses and one bus type over every network backend, so a program opens any of them
//! from a string (`udp://127.0.0.1:20000`, `multicast://239.74.163.2:43113`, …).
//!
//! | address | backend | [`OpenOptions::listen`] = `false` | `listen` = `true` |
//! |---|---|---|---|
//! | `udp://HOST:PORT` | REMP ([`RempUdp`]) | a dongle sending to the agent at `HOST:PORT` (hello first, keep-alives from [`AnyBus::tick`]) | an agent bound to `HOST:PORT`, answering whoever was last heard |
//! | `cannelloni://HOST:PORT` | cannelloni v2 ([`CannelloniUdp`]) | sends to `HOST:PORT` | bound to `HOST:PORT`, answering whoever was last heard |
//! | `socketcand://HOST:PORT/BUS` | [`SocketcandClient`] | raw-mode client | (same) |
//! | `multicast://GROUP:PORT` | python-can `udp_multicast` ([`MulticastBus`]) | joins the IPv4 group | (same) |
//! | `socketcan://IFACE` | SocketCAN raw socket (`SocketCan`, the `socketcan` feature, Linux) | opens the interface | (same) |
//!
//! What this module does not do: it does not retry or reconnect (a closed socketcand
//! connection ends the bus), and it does not run a loop; the caller drives [`CanBus`].

use std::net::{SocketAddr, SocketAddrV4};

use super::multicast::MulticastBus;
use super::socketcand::SocketcandClient;
use super::udp::{CannelloniUdp, RempUdp};
use super::{BusStats, CanBus};
use crate::error::Error;
use crate::frame::CanRecord;

/// A parsed bus address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusAddress {
    /// `udp://HOST:PORT`: REMP.
    Remp(String),
    /// `cannelloni://HOST:PORT`: cannelloni v2 over UDP.
    Cannelloni(String),
    /// `socketcand://HOST:PORT/BUS`.
    Socketcand {
        /// `HOST:PORT`.
        addr: String,
        /// The bus name to open.
        bus: String,
    },
    /// `multicast://GROUP:PORT`: python-can's `udp_multicast` (IPv4 group).
    Multicast(SocketAddrV4),
    /// `socketcan://IFACE`: a SocketCAN interface (`can0`, `vcan0`); opening it needs the
    /// `socketcan` feature on Linux.
    SocketCan(String),
}

fn bad_address(reason: String) -> Error {
    Error::Unsupported {
        protocol: "bus address",
        reason,
    }
}

fn host_port(scheme: &str, rest: &str) -> Result<String, Error> {
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(rest.to_owned())
        }
        _ => Err(bad_address(format!(
            "{scheme}://HOST:PORT expected, got {rest:?}"
        ))),
    }
}

impl std::str::FromStr for BusAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad_address(format!("{s:?}: expected SCHEME://…")))?;
        match scheme {
            "udp" | "remp" => Ok(BusAddress::Remp(host_port(scheme, rest)?)),
            "cannelloni" => Ok(BusAddress::Cannelloni(host_port(scheme, rest)?)),
            "socketcand" => {
                let (addr, bus) = rest.split_once('/').unwrap_or((rest, ""));
                let bus = bus.trim_end_matches('/');
                if bus.is_empty() || bus.contains('/') {
                    return Err(bad_address(
                        "socketcand://HOST:PORT/BUS needs one bus name".into(),
                    ));
                }
                Ok(BusAddress::Socketcand {
                    addr: host_port(scheme, addr)?,
                    bus: bus.to_owned(),
                })
            }
            "multicast" => {
                let addr: SocketAddrV4 = rest
                    .trim_end_matches('/')
                    .parse()
                    .map_err(|e| bad_address(format!("multicast://GROUP:PORT: {e}")))?;
                if !addr.ip().is_multicast() {
                    return Err(bad_address(format!(
                        "{} is not an IPv4 multicast group",
                        addr.ip()
                    )));
                }
                Ok(BusAddress::Multicast(addr))
            }
            "socketcan" => {
                let iface = rest.trim_end_matches('/');
                // Linux interface names: 1–15 bytes, no '/', no whitespace.
                if iface.is_empty()
                    || iface.len() > 15
                    || iface.contains('/')
                    || iface.chars().any(char::is_whitespace)
                {
                    return Err(bad_address(format!(
                        "socketcan://IFACE expected (an interface name such as can0), got {rest:?}"
                    )));
                }
                Ok(BusAddress::SocketCan(iface.to_owned()))
            }
            other => Err(bad_address(format!(
                "unknown scheme {other:?} (udp, cannelloni, socketcand, multicast, socketcan)"
            ))),
        }
    }
}

impl std::fmt::Display for BusAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusAddress::Remp(a) => write!(f, "udp://{a}"),
            BusAddress::Cannelloni(a) => write!(f, "cannelloni://{a}"),
            BusAddress::Socketcand { addr, bus } => write!(f, "socketcand://{addr}/{bus}"),
            BusAddress::Multicast(a) => write!(f, "multicast://{a}"),
            BusAddress::SocketCan(i) => write!(f, "socketcan://{i}"),
        }
    }
}

/// How to open a [`BusAddress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOptions {
    /// UDP addresses: bind the address and answer whoever sent last (agent side), instead of
    /// sending to it.
    pub listen: bool,
    /// REMP: the serial this side speaks as.
    pub serial: String,
    /// The channel name of received frames whose protocol carries none (cannelloni,
    /// socketcand, multicast without a channel).
    pub channel: String,
    /// UDP addresses when not listening: bind this local address instead of an ephemeral port
    /// (a cannelloni peer configured with a fixed remote port sends there).
    pub local: Option<SocketAddr>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            listen: false,
            serial: "TETHER-0001".into(),
            channel: "can0".into(),
            local: None,
        }
    }
}

/// Resolves `HOST:PORT` to its first address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, Error> {
    let action = "resolving a bus address";
    tokio::net::lookup_host(addr)
        .await
        .map_err(|source| Error::Io { action, source })?
        .next()
        .ok_or_else(|| Error::Io {
            action,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{addr} resolves to no address"),
            ),
        })
}

/// Where a UDP bus to `addr` binds and whom it sends to: listening, `addr` itself and whoever
/// sent last; otherwise `options.local` (or an ephemeral port) and `addr`.
async fn udp_ends(
    addr: &str,
    options: &OpenOptions,
) -> Result<(SocketAddr, Option<SocketAddr>), Error> {
    let addr = resolve(addr).await?;
    Ok(if options.listen {
        (addr, None)
    } else {
        let local = options.local.unwrap_or_else(|| unspecified_like(addr));
        (local, Some(addr))
    })
}

fn unspecified_like(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    }
}

/// Any network bus, opened from a [`BusAddress`].
#[derive(Debug)]
pub enum AnyBus {
    /// REMP over UDP.
    Remp(RempUdp),
    /// cannelloni over UDP.
    Cannelloni(CannelloniUdp),
    /// socketcand client.
    Socketcand(SocketcandClient),
    /// python-can multicast.
    Multicast(MulticastBus),
    /// A SocketCAN interface.
    #[cfg(all(target_os = "linux", feature = "socketcan"))]
    SocketCan(super::socketcan::SocketCan),
}

impl AnyBus {
    /// Opens `address` as `options` say. A REMP dongle (not listening) sends its hello here.
    pub async fn open(address: &BusAddress, options: &OpenOptions) -> Result<Self, Error> {
        Ok(match address {
            BusAddress::Remp(addr) => {
                let (local, peer) = udp_ends(addr, options).await?;
                let mut bus = RempUdp::bind(local, peer, &options.serial).await?;
                if !options.listen {
                    bus.hello().await?;
                }
                AnyBus::Remp(bus)
            }
            BusAddress::Cannelloni(addr) => {
                let (local, peer) = udp_ends(addr, options).await?;
                AnyBus::Cannelloni(CannelloniUdp::bind(local, peer, &options.channel).await?)
            }
            BusAddress::Socketcand { addr, bus } => {
                AnyBus::Socketcand(SocketcandClient::connect(resolve(addr).await?, bus).await?)
            }
            BusAddress::Multicast(group) => {
                AnyBus::Multicast(MulticastBus::join(*group, &options.channel)?)
            }
            #[cfg(all(target_os = "linux", feature = "socketcan"))]
            BusAddress::SocketCan(iface) => {
                AnyBus::SocketCan(super::socketcan::SocketCan::open(iface)?)
            }
            #[cfg(not(all(target_os = "linux", feature = "socketcan")))]
            BusAddress::SocketCan(_) => {
                return Err(Error::Unsupported {
                    protocol: "SocketCAN",
                    reason:
                        "this build has no SocketCAN support (Linux, can-io feature `socketcan`)"
                            .into(),
                });
            }
        })
    }

    /// Whether [`tick`](Self::tick) has work: a REMP bus sends keep-alives.
    pub fn needs_ticks(&self) -> bool {
        matches!(self, AnyBus::Remp(_))
    }

    /// Periodic work, about once a second: a REMP keep-alive (so the peer keeps this side
    /// online and learns a restart). Nothing for the other backends.
    pub async fn tick(&mut self) -> Result<(), Error> {
        match self {
            AnyBus::Remp(b) => match b.keepalive().await {
                // An agent-side bus has nobody to tell until a dongle was heard.
                Err(Error::Unsupported { .. }) => Ok(()),
                other => other,
            },
            _ => Ok(()),
        }
    }

    /// The bound local address of a UDP bus.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            AnyBus::Remp(b) => b.local_addr().ok(),
            AnyBus::Cannelloni(b) => b.local_addr().ok(),
            _ => None,
        }
    }
}

/// `$body` with `$b` bound to whichever backend `$bus` holds.
macro_rules! each_backend {
    ($bus:expr, $b:ident => $body:expr) => {
        match $bus {
            AnyBus::Remp($b) => $body,
            AnyBus::Cannelloni($b) => $body,
            AnyBus::Socketcand($b) => $body,
            AnyBus::Multicast($b) => $body,
            #[cfg(all(target_os = "linux", feature = "socketcan"))]
            AnyBus::SocketCan($b) => $body,
        }
    };
}

impl CanBus for AnyBus {
    async fn send(&mut self, record: &CanRecord) -> Result<(), Error> {
        each_backend!(self, b => b.send(record).await)
    }

    async fn flush(&mut self) -> Result<(), Error> {
        each_backend!(self, b => b.flush().await)
    }

    async fn recv(&mut self) -> Result<Option<CanRecord>, Error> {
        each_backend!(self, b => b.recv().await)
    }

    fn stats(&self) -> BusStats {
        each_backend!(self, b => b.stats())
    }
}

/// An [`AnyBus`] that runs [`AnyBus::tick`] on its own, about once a second, while it waits
/// for frames: for loops that only speak [`CanBus`] (an ECU simulator, a UDS tester), so a
/// REMP dongle stays known to its agent. For the other backends it is the bus itself.
#[derive(Debug)]
pub struct TickingBus {
    bus: AnyBus,
    every: tokio::time::Interval,
}

impl TickingBus {
    /// Wrap `bus`; the first tick is one period from now.
    pub fn new(bus: AnyBus) -> Self {
        let period = std::time::Duration::from_secs(1);
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        TickingBus { bus, every }
    }

    /// The bus inside.
    pub fn get_ref(&self) -> &AnyBus {
        &self.bus
    }
}

impl CanBus for TickingBus {
    async fn send(&mut self, record: &CanRecord) -> Result<(), Error> {
        self.bus.send(record).await
    }

    async fn flush(&mut self) -> Result<(), Error> {
        self.bus.flush().await
    }

    async fn recv(&mut self) -> Result<Option<CanRecord>, Error> {
        if !self.bus.needs_ticks() {
            return self.bus.recv().await;
        }
        loop {
            // Both branches are cancel-safe: the REMP bus keeps decoded records in its inbox.
            tokio::select! {
                r = self.bus.recv() => return r,
                _ = self.every.tick() => self.bus.tick().await?,
            }
        }
    }

    fn stats(&self) -> BusStats {
        self.bus.stats()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        for s in [
            "udp://127.0.0.1:20000",
            "cannelloni://localhost:20000",
            "socketcand://127.0.0.1:29536/vcan0",
            "multicast://239.74.163.2:43113",
            "udp://[::1]:9000",
            "socketcan://vcan0",
        ] {
            let a: BusAddress = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "remp://h:1/".parse::<BusAddress>().unwrap(),
            BusAddress::Remp("h:1".into())
        );
        for bad in [
            "udp://127.0.0.1",
            "udp://:9",
            "udp://h:99999",
            "socketcand://h:1",
            "socketcand://h:1/a/b",
            "multicast://10.0.0.1:1",
            "multicast://239.1.1.1",
            "tcp://h:1",
            "h:1",
            "socketcan://",
            "socketcan://a/b",
            "socketcan://much-too-long-name0",
        ] {
            assert!(
                bad.parse::<BusAddress>().is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[tokio::test]
    async fn udp_buses_talk_to_each_other_on_loopback() {
        let listen = OpenOptions {
            listen: true,
            ..OpenOptions::default()
        };
        for scheme in ["udp", "cannelloni"] {
            let addr: BusAddress = format!("{scheme}://127.0.0.1:0").parse().unwrap();
            let mut agent = AnyBus::open(&addr, &listen).await.unwrap();
            let bound = agent.local_addr().unwrap();
            let peer: BusAddress = format!("{scheme}://{bound}").parse().unwrap();
            let mut dongle = AnyBus::open(&peer, &OpenOptions::default()).await.unwrap();
            let frame = crate::CanFrame::Data(
                crate::DataFrame::new(crate::CanId::standard(0x7E0).unwrap(), &[1, 2]).unwrap(),
            );
            let record = CanRecord::new(5, "can0".into(), crate::Direction::Rx, frame);
            dongle.send(&record).await.unwrap();
            dongle.flush().await.unwrap();
            let got = agent.recv().await.unwrap().unwrap();
            assert_eq!(got.frame, frame, "{scheme}");
            // The agent side answers whoever it heard last.
            agent.send(&record).await.unwrap();
            agent.flush().await.unwrap();
            assert_eq!(dongle.recv().await.unwrap().unwrap().frame, frame);
            assert!(agent.tick().await.is_ok() && dongle.tick().await.is_ok());
        }
    }
}
