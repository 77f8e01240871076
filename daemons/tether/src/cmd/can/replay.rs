//! `tether can replay FILE --bus URL`: a simulated dongle (or cannelloni peer, socketcand client,
//! python-can multicast node) sending a capture with its original timing, scaled, or as fast as
//! possible.

use std::path::PathBuf;
use std::process::ExitCode;
use std::task::Poll;
use std::time::Duration;

use anyhow::Context;
use can_io::transport::CanBus;
use can_io::transport::replay::{LogReplay, ReplaySpeed, flush_unless_ready};

use super::record::{BusUrl, UdpProtocol, open_bus, runtime};
use super::{InputFormat, open_log};
use can_io::transport::open::AnyBus;
use tether_runtime::signals::shutdown_signal;

/// Keep-alive interval of the simulated REMP dongle.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Bad lines printed per pass (all are counted).
const MAX_WARNINGS: usize = 20;

/// Arguments of `tether can replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The log to replay (candump, ASC or JSON lines).
    pub file: PathBuf,
    /// The bus to send to: `udp://HOST:PORT`, `socketcand://HOST:PORT/BUS` or
    /// `multicast://GROUP:PORT`. (`--to` is its old spelling: `--from`/`--to` name formats
    /// elsewhere.)
    #[arg(long, alias = "to", value_name = "URL")]
    pub bus: BusUrl,
    /// Protocol on a `udp://` address.
    #[arg(long, value_enum, default_value = "remp")]
    pub protocol: UdpProtocol,
    /// The simulated dongle's REMP serial.
    #[arg(long, default_value = "SIM-0001")]
    pub serial: String,
    /// Speed factor (1 = original timing, 2 = twice as fast) or `max`.
    #[arg(long, default_value = "1")]
    pub speed: ReplaySpeed,
    /// Start again at the end of the file, until stopped.
    #[arg(long = "loop")]
    pub repeat: bool,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    pub from: InputFormat,
}

/// Run `tether can replay`.
pub fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut bus = open_bus(&args.bus, args.protocol, &args.serial, "can0", false).await?;
        let stop = shutdown_signal();
        tokio::pin!(stop);
        let mut total = 0u64;
        let mut bad = 0u64;
        loop {
            let log = open_log(&args.file, args.from)?;
            let mut replay = LogReplay::from_reader(log.reader, args.speed);
            let (sent, stopped) = replay_pass(&mut replay, &mut bus, &mut stop).await?;
            log.progress.finish_and_clear();
            total += sent;
            bad += replay.stats().malformed;
            for (line, reason) in replay.bad_lines().iter().take(MAX_WARNINGS) {
                eprintln!("{}:{line}: {reason}", args.file.display());
            }
            if stopped || !args.repeat {
                break;
            }
            if sent == 0 {
                anyhow::bail!("{} has no frames to loop over", args.file.display());
            }
        }
        bus.flush().await?;
        let stats = bus.stats();
        eprintln!(
            "sent {total} frames to {} ({bad} bad lines skipped, {} frames the protocol could not carry)",
            args.bus, stats.dropped
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// One pass over the log. Returns frames sent and whether a stop signal arrived.
async fn replay_pass<R: std::io::BufRead + Send, F: std::future::Future<Output = ()>>(
    replay: &mut LogReplay<R>,
    bus: &mut AnyBus,
    stop: &mut std::pin::Pin<&mut F>,
) -> anyhow::Result<(u64, bool)> {
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await;
    let mut sent = 0;
    loop {
        let mut recv = std::pin::pin!(replay.recv());
        let next = match flush_unless_ready(recv.as_mut(), bus)
            .await
            .context("sending")?
        {
            Poll::Ready(r) => r,
            // Nothing more is due now and the batch is sent: wait, keeping the dongle alive
            // during long gaps.
            Poll::Pending => loop {
                tokio::select! {
                    r = &mut recv => break r,
                    _ = keepalive.tick() => bus.tick().await?,
                    () = stop.as_mut() => return Ok((sent, true)),
                }
            },
        };
        match next.context("reading the log")? {
            Some(record) => {
                bus.send(&record).await.context("sending")?;
                sent += 1;
            }
            None => return Ok((sent, false)),
        }
    }
}
