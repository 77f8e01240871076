//! `tether can ecu --profile FILE --bus ADDRESS`: simulated ECUs answering UDS (ISO 14229)
//! over ISO-TP on a bus, from a YAML profile (`can_io::uds::ecu::EcuProfile`).
//!
//! The profile is read and checked before the bus is touched; a bad profile exits with status
//! 2 and the reason. The simulator runs until SIGTERM / Ctrl-C or the bus ends, then prints
//! each ECU's counters and the DTCs it still stores.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use can_io::transport::open::{AnyBus, BusAddress, OpenOptions, TickingBus};
use can_io::uds::ecu::{EcuProfile, EcuSimulator, run_ecus};

use super::record::runtime;
use tether_runtime::signals::StopSignals;

/// Arguments of `tether can ecu`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Example: an engine ECU with two stored DTCs and a VIN, read by python udsoncan over
python-can's udp_multicast interface (or by `tether agent`'s diagnostics role):

  cat > ecu.yaml <<'EOF'
  ecus:
    - name: engine
      request_id: 0x7E0          # tester -> ECU
      response_id: 0x7E8         # ECU -> tester
      dtcs:
        - {code: P0420, status: 0x2F}
        - {dtc: 0xC10000, status: 0x09}
      dids:
        0xF190: {ascii: \"1HGCM82633A004352\"}
        0xF40D: {hex: \"3C\"}
      response_pending_ms: 0     # answer 0x78 first for this long
  EOF
  tether can ecu --profile ecu.yaml --bus multicast://239.74.163.2:43113

Buses: udp://AGENT:PORT (a REMP dongle towards `tether agent`), multicast://GROUP:PORT
(python-can udp_multicast), socketcand://HOST:PORT/BUS, socketcan://IFACE, cannelloni://HOST:PORT.
A shipped profile: data/ecu/demo.yaml.")]
pub struct EcuArgs {
    /// The ECU profile (YAML): `ecus:` with name, request_id, response_id, dtcs, dids,
    /// response_pending_ms, isotp.
    #[arg(long)]
    pub profile: PathBuf,
    /// The bus to answer on.
    #[arg(long)]
    pub bus: BusAddress,
    /// The REMP serial on a `udp://` bus (the dongle the agent learns).
    #[arg(long, default_value = "ECU-SIM-0001")]
    pub serial: String,
    /// Check the profile, print its ECUs and exit.
    #[arg(long)]
    pub check: bool,
}

/// Read and check a profile file: YAML, then every ECU built once (DTC codes, DID values,
/// identifiers, ISO-TP settings).
pub fn load_profile(path: &Path) -> anyhow::Result<EcuProfile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let profile: EcuProfile =
        serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if profile.ecus.is_empty() {
        anyhow::bail!("{}: the profile lists no ECUs", path.display());
    }
    EcuSimulator::new(&profile).with_context(|| format!("checking {}", path.display()))?;
    Ok(profile)
}

fn describe(profile: &EcuProfile) -> String {
    profile
        .ecus
        .iter()
        .map(|e| {
            format!(
                "{} 0x{:X}→0x{:X} ({} DTCs, {} DIDs)",
                e.name,
                e.request_id,
                e.response_id,
                e.dtcs.len(),
                e.dids.len()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Run `tether can ecu`.
pub fn run(args: &EcuArgs) -> anyhow::Result<ExitCode> {
    let profile = match load_profile(&args.profile) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.check {
        println!("{}", describe(&profile));
        return Ok(ExitCode::SUCCESS);
    }
    runtime()?.block_on(async {
        // Registered before the bus opens: a signal during start-up is a clean stop.
        let signals = StopSignals::register();
        let options = OpenOptions {
            serial: args.serial.clone(),
            ..OpenOptions::default()
        };
        let bus = AnyBus::open(&args.bus, &options)
            .await
            .with_context(|| format!("opening {}", args.bus))?;
        let local = bus
            .local_addr()
            .map(|a| format!(" (local {a})"))
            .unwrap_or_default();
        // Tests and scripts wait for this line.
        eprintln!(
            "ecu simulator ready on {}{local}: {}",
            args.bus,
            describe(&profile)
        );
        let sim = run_ecus(TickingBus::new(bus), &profile, signals.wait())
            .await
            .with_context(|| format!("running the ECUs on {}", args.bus))?;
        for (name, uds, isotp, bad_functional) in sim.stats() {
            let dtcs = sim
                .responders()
                .find(|r| r.name() == name)
                .map(|r| r.dtcs().len())
                .unwrap_or(0);
            eprintln!(
                "ecu {name}: {} requests, {} positive, {} negative, {} pending, {} silent; \
                 ISO-TP {} frames in, {} out, {} transfers aborted, {} invalid frames; \
                 {bad_functional} bad functional frames; {dtcs} DTCs stored",
                uds.requests,
                uds.positive,
                uds.negative,
                uds.pending,
                uds.silent,
                isotp.frames_received,
                isotp.frames_sent,
                isotp.rx_aborted + isotp.tx_aborted,
                isotp.invalid_frames,
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
