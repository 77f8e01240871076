//! `tether can dongle`: a simulated REMP dongle talking to a `tether agent` (dongle role).
//!
//! It says hello at start and sends a keep-alive every second (so a restarted agent learns it
//! again), replays a capture with its timing scaled (or as fast as possible), and writes every
//! frame it receives to a candump log, flushed per frame. With `--record` it runs until
//! stopped; with only `--replay` it exits when the capture ends (unless `--loop`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use can_io::formats::candump::{LineStyle, write_record};
use can_io::transport::CanBus;
use can_io::transport::replay::{LogReplay, ReplaySpeed};
use can_io::transport::udp::RempUdp;
use can_io::wire::remp::RempEvent;
use tokio::sync::mpsc;

use super::record::{resolve, runtime};
use super::{InputFormat, open_log};
use tether_runtime::signals::shutdown_signal;

/// Keep-alive interval.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Capture records buffered between the reader and the socket.
const REPLAY_QUEUE: usize = 1024;

/// Arguments of `tether can dongle`.
#[derive(Debug, clap::Args)]
pub struct DongleArgs {
    /// The dongle's REMP serial (1–32 printable ASCII characters, no spaces).
    #[arg(long)]
    pub serial: String,
    /// The agent's UDP address, `HOST:PORT`.
    #[arg(long)]
    pub agent: String,
    /// A capture to send (candump, ASC or JSON lines).
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Replay speed factor (1 = original timing) or `max`.
    #[arg(long, default_value = "1", requires = "replay")]
    pub speed: ReplaySpeed,
    /// Start the capture again at its end, until stopped.
    #[arg(long = "loop", requires = "replay")]
    pub repeat: bool,
    /// Write every frame received from the agent to this candump log (`-` for stdout); runs
    /// until stopped.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Format of the capture.
    #[arg(long, value_enum, default_value = "auto")]
    pub from: InputFormat,
    /// Sign every datagram with this key (hex, 32–128 digits), as the agent's `dongle.keys`
    /// holds it for this serial. Also read from `TETHER_DONGLE_KEY`.
    #[arg(long, env = "TETHER_DONGLE_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

/// What a run did, printed at exit.
#[derive(Debug, Default)]
struct Report {
    sent: u64,
    received: u64,
    bad_lines: u64,
}

/// Run `tether can dongle`.
pub fn run(args: &DongleArgs) -> anyhow::Result<ExitCode> {
    if args.replay.is_none() && args.record.is_none() {
        bail!("nothing to do: pass --replay FILE, --record OUT or both");
    }
    can_io::wire::remp::validate_serial(&args.serial)
        .with_context(|| format!("--serial {:?}", args.serial))?;
    let key = args
        .key
        .as_deref()
        .map(can_io::wire::remp::RempKey::from_hex)
        .transpose()
        .context("--key")?;
    runtime()?.block_on(async {
        let agent = resolve(&args.agent).await?;
        let mut out: Option<Box<dyn Write>> = match &args.record {
            Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
            Some(p) => Some(Box::new(BufWriter::new(
                File::create(p).with_context(|| format!("creating {}", p.display()))?,
            ))),
            None => None,
        };
        let signed = key.is_some();
        let mut bus = RempUdp::dongle_with_key(agent, &args.serial, key)
            .await
            .with_context(|| format!("starting the dongle towards {agent}"))?;
        eprintln!(
            "dongle {} on udp://{} → agent {agent}{}",
            args.serial,
            bus.local_addr()?,
            if signed { " (signed)" } else { "" }
        );
        let stop = shutdown_signal();
        tokio::pin!(stop);
        let mut report = Report::default();
        let result = drive(args, &mut bus, &mut out, &mut report, &mut stop).await;
        bus.flush().await.ok();
        if let Some(o) = out.as_mut() {
            o.flush().context("writing the record log")?;
        }
        let t = bus.receiver().totals();
        eprintln!(
            "dongle {}: sent {} frames, received {} frames ({} bad capture lines skipped; REMP from the agent: {} datagrams lost, {} duplicate, {} reordered, {} stale)",
            args.serial,
            report.sent,
            report.received,
            report.bad_lines,
            t.lost,
            t.duplicate,
            t.reordered,
            t.stale
        );
        result.map(|()| ExitCode::SUCCESS)
    })
}

/// What the replay task sends: records, then the end of the capture with its statistics.
enum Replayed {
    Record(can_io::CanRecord),
    End { bad_lines: u64 },
}

/// Read the capture (again and again with `--loop`) at its pace into `tx`.
async fn replay_task(
    path: PathBuf,
    from: InputFormat,
    speed: ReplaySpeed,
    repeat: bool,
    tx: mpsc::Sender<Replayed>,
) -> anyhow::Result<()> {
    let mut bad_lines = 0;
    loop {
        let mut replay = LogReplay::from_reader(open_log(&path, from)?.reader, speed);
        let mut sent = 0u64;
        while let Some(record) = replay.recv().await.context("reading the capture")? {
            sent += 1;
            if tx.send(Replayed::Record(record)).await.is_err() {
                return Ok(());
            }
        }
        bad_lines += replay.stats().malformed;
        for (line, reason) in replay.bad_lines().iter().take(20) {
            eprintln!("{}:{line}: {reason}", path.display());
        }
        if !repeat {
            break;
        }
        if sent == 0 {
            bail!("{} has no frames to loop over", path.display());
        }
    }
    let _ = tx.send(Replayed::End { bad_lines }).await;
    Ok(())
}

async fn drive<F: std::future::Future<Output = ()>>(
    args: &DongleArgs,
    bus: &mut RempUdp,
    out: &mut Option<Box<dyn Write>>,
    report: &mut Report,
    stop: &mut std::pin::Pin<&mut F>,
) -> anyhow::Result<()> {
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await;
    let mut line = Vec::with_capacity(128);
    let style = LineStyle::default();
    let (tx, mut rx) = mpsc::channel(REPLAY_QUEUE);
    let mut replaying = match &args.replay {
        Some(p) => Some(tokio::spawn(replay_task(
            p.clone(),
            args.from,
            args.speed,
            args.repeat,
            tx,
        ))),
        None => {
            drop(tx);
            None
        }
    };
    let mut batch = Vec::with_capacity(REPLAY_QUEUE);
    loop {
        tokio::select! {
            () = stop.as_mut() => return Ok(()),
            _ = keepalive.tick() => bus.keepalive().await.context("sending a keep-alive")?,
            ev = bus.recv_event() => {
                if let RempEvent::Frames { records, .. } = ev.context("receiving")? {
                    for r in &records {
                        report.received += 1;
                        if let Some(o) = out.as_mut() {
                            line.clear();
                            write_record(&mut line, r, &style);
                            o.write_all(&line).context("writing the record log")?;
                            o.flush().context("writing the record log")?;
                        }
                    }
                }
            }
            n = rx.recv_many(&mut batch, REPLAY_QUEUE), if replaying.is_some() => {
                let mut ended = n == 0;
                for item in batch.drain(..) {
                    match item {
                        Replayed::Record(r) => {
                            bus.send(&r).await.context("sending to the agent")?;
                            report.sent += 1;
                        }
                        Replayed::End { bad_lines } => {
                            report.bad_lines = bad_lines;
                            ended = true;
                        }
                    }
                }
                // Nothing more is due right now: put the partial batch on the wire.
                bus.flush().await.context("sending to the agent")?;
                if ended {
                    if let Some(task) = replaying.take() {
                        task.await.context("the replay task failed")??;
                    }
                    if args.record.is_none() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
