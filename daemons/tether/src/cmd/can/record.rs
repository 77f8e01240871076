//! `tether can record` (any bus → candump log), `tether can serve-socketcand` (a socketcand
//! server that socketcand clients share as a bus), and the bus addresses both they and
//! `tether can replay` accept.
//!
//! Bus addresses:
//! * `udp://HOST:PORT` — REMP (default) or cannelloni with `--protocol`. `record` listens on the
//!   address; `replay` sends to it.
//! * `socketcand://HOST:PORT/BUS` — a socketcand server, as a raw-mode client.
//! * `multicast://GROUP:PORT` — python-can's `udp_multicast` (IPv4 group).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use can_io::transport::CanBus;
use can_io::transport::open::{AnyBus, BusAddress, OpenOptions};
use can_io::transport::record::{RecordLimit, record};
use can_io::transport::socketcand::SocketcandServer;

use tether_runtime::signals::shutdown_signal;

/// The UDP protocol on a `udp://` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UdpProtocol {
    /// REMP, our dongle protocol (docs/protocols/remp.md).
    Remp,
    /// cannelloni v2.
    Cannelloni,
}

/// A parsed bus address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusUrl {
    /// `udp://HOST:PORT`.
    Udp(String),
    /// `socketcand://HOST:PORT/BUS`.
    Socketcand {
        /// `HOST:PORT`.
        addr: String,
        /// Bus name to open.
        bus: String,
    },
    /// `multicast://GROUP:PORT`.
    Multicast(SocketAddrV4),
}

impl std::str::FromStr for BusUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?}: expected SCHEME://…"))?;
        match scheme {
            "udp" => Ok(BusUrl::Udp(rest.trim_end_matches('/').to_owned())),
            "socketcand" => {
                let (addr, bus) = rest
                    .split_once('/')
                    .ok_or("socketcand://HOST:PORT/BUS needs a bus name")?;
                if bus.is_empty() || addr.is_empty() {
                    return Err("socketcand://HOST:PORT/BUS needs a host and a bus name".into());
                }
                Ok(BusUrl::Socketcand {
                    addr: addr.to_owned(),
                    bus: bus.to_owned(),
                })
            }
            "multicast" => {
                let addr: SocketAddrV4 = rest
                    .trim_end_matches('/')
                    .parse()
                    .map_err(|e| format!("multicast://GROUP:PORT: {e}"))?;
                if !addr.ip().is_multicast() {
                    return Err(format!("{} is not a multicast group", addr.ip()));
                }
                Ok(BusUrl::Multicast(addr))
            }
            other => Err(format!(
                "unknown scheme {other:?} (udp, socketcand, multicast)"
            )),
        }
    }
}

impl std::fmt::Display for BusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusUrl::Udp(a) => write!(f, "udp://{a}"),
            BusUrl::Socketcand { addr, bus } => write!(f, "socketcand://{addr}/{bus}"),
            BusUrl::Multicast(a) => write!(f, "multicast://{a}"),
        }
    }
}

pub(crate) async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

impl BusUrl {
    /// The transport address of this URL with `protocol` on a `udp://` address.
    fn address(&self, protocol: UdpProtocol) -> BusAddress {
        match (self, protocol) {
            (BusUrl::Udp(addr), UdpProtocol::Remp) => BusAddress::Remp(addr.clone()),
            (BusUrl::Udp(addr), UdpProtocol::Cannelloni) => BusAddress::Cannelloni(addr.clone()),
            (BusUrl::Socketcand { addr, bus }, _) => BusAddress::Socketcand {
                addr: addr.clone(),
                bus: bus.clone(),
            },
            (BusUrl::Multicast(group), _) => BusAddress::Multicast(*group),
        }
    }
}

/// Opens `url` for sending (`listen = false`: UDP addresses are the peer) or receiving
/// (`listen = true`: UDP addresses are bound), through can-io's [`AnyBus::open`].
pub(crate) async fn open_bus(
    url: &BusUrl,
    protocol: UdpProtocol,
    serial: &str,
    channel: &str,
    listen: bool,
) -> anyhow::Result<AnyBus> {
    let options = OpenOptions {
        listen,
        serial: serial.to_owned(),
        channel: channel.to_owned(),
        local: None,
    };
    Ok(AnyBus::open(&url.address(protocol), &options).await?)
}

/// A line for stderr about losses a REMP bus tracks itself.
fn loss_report(bus: &AnyBus) -> Option<String> {
    let AnyBus::Remp(b) = bus else { return None };
    let lines: Vec<String> = b
        .receiver()
        .dongles()
        .map(|(serial, s, _)| {
            format!(
                "dongle {serial}: {} datagrams, {} frames, {} lost, {} duplicate, {} reordered, {} stale, {} dropped by the dongle",
                s.datagrams, s.frames, s.lost, s.duplicate, s.reordered, s.stale, s.dongle_dropped
            )
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn open_output(path: &std::path::Path) -> anyhow::Result<Box<dyn Write>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufWriter::new(std::io::stdout())));
    }
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(Box::new(BufWriter::new(f)))
}

/// Arguments of `tether can record`.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The bus to record: `udp://HOST:PORT` (listen), `socketcand://HOST:PORT/BUS` or
    /// `multicast://GROUP:PORT`. (`--from` is its old spelling: `--from`/`--to` name formats
    /// elsewhere.)
    #[arg(long, alias = "from", value_name = "URL")]
    pub bus: BusUrl,
    /// Output candump log (`-` for stdout).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Protocol on a `udp://` address.
    #[arg(long, value_enum, default_value = "remp")]
    pub protocol: UdpProtocol,
    /// Channel name for frames whose protocol carries none (cannelloni, multicast).
    #[arg(long, default_value = "can0")]
    pub channel: String,
    /// Stop after this many frames.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
}

/// Run `tether can record`.
pub fn run_record(args: &RecordArgs) -> anyhow::Result<ExitCode> {
    if args.duration.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
        bail!("--duration must be a positive number of seconds");
    }
    runtime()?.block_on(async {
        let mut bus = open_bus(&args.bus, args.protocol, "recorder", &args.channel, true).await?;
        let mut out = open_output(&args.output)?;
        if let AnyBus::Remp(b) = &bus {
            eprintln!("recording REMP on udp://{}", b.local_addr()?);
        } else {
            eprintln!("recording from {}", args.bus);
        }
        let duration = args.duration;
        let stop = async move {
            match duration {
                Some(secs) => {
                    tokio::select! {
                        () = shutdown_signal() => {}
                        () = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                    }
                }
                None => shutdown_signal().await,
            }
        };
        let summary = record(&mut bus, &mut out, RecordLimit { count: args.count }, stop).await?;
        let stats = bus.stats();
        eprintln!(
            "recorded {} frames to {} ({} dropped, {} malformed messages skipped)",
            summary.frames,
            args.output.display(),
            stats.dropped,
            stats.malformed
        );
        if let Some(report) = loss_report(&bus) {
            eprintln!("{report}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Arguments of `tether can serve-socketcand`.
#[derive(Debug, clap::Args)]
pub struct ServeSocketcandArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:29536")]
    pub listen: SocketAddr,
    /// The bus name clients open.
    #[arg(long, default_value = "vcan0")]
    pub bus: String,
    /// Also write every frame clients send to this candump log.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Stop after clients sent this many frames.
    #[arg(long)]
    pub count: Option<u64>,
}

/// Run `tether can serve-socketcand`: a socketcand server whose clients share one virtual bus
/// (each frame a client sends goes to every other client), until Ctrl-C / SIGTERM.
pub fn run_serve_socketcand(args: &ServeSocketcandArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut server = SocketcandServer::bind(args.listen, &args.bus, true).await?;
        println!("listening on {}", server.local_addr());
        std::io::stdout().flush().context("writing to stdout")?;
        let mut out: Box<dyn Write> = match &args.output {
            Some(p) => open_output(p)?,
            None => Box::new(std::io::sink()),
        };
        let summary =
            record(&mut server, &mut out, RecordLimit { count: args.count }, shutdown_signal()).await?;
        let stats = server.stats();
        eprintln!(
            "clients sent {} frames ({} dropped for slow clients or unsupported kinds, {} bad messages)",
            summary.frames, stats.dropped, stats.malformed
        );
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_bus_urls() {
        assert_eq!(
            "udp://127.0.0.1:9000".parse::<BusUrl>().unwrap(),
            BusUrl::Udp("127.0.0.1:9000".into())
        );
        assert_eq!(
            "socketcand://localhost:29536/vcan0"
                .parse::<BusUrl>()
                .unwrap(),
            BusUrl::Socketcand {
                addr: "localhost:29536".into(),
                bus: "vcan0".into()
            }
        );
        assert_eq!(
            "multicast://239.74.163.2:43113".parse::<BusUrl>().unwrap(),
            BusUrl::Multicast("239.74.163.2:43113".parse().unwrap())
        );
        assert!("multicast://10.0.0.1:1".parse::<BusUrl>().is_err());
        assert!("socketcand://host:1".parse::<BusUrl>().is_err());
        assert!("tcp://x:1".parse::<BusUrl>().is_err());
        assert!("udp".parse::<BusUrl>().is_err());
    }
}
