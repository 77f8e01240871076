//! `tether can uds --bus ADDRESS COMMAND [--params JSON]`: one diagnostic command, as the
//! commands API names it, run as UDS over ISO-TP on a bus (`can_io::uds::exec`); each ECU's
//! response is printed as a JSON line, exactly as the agent's diagnostics role would stream it.

use std::process::ExitCode;

use anyhow::Context;
use can_io::transport::open::{AnyBus, BusAddress, OpenOptions, TickingBus};
use can_io::uds::exec::{ExecPlan, execute};
use can_io::uds::{DiagCommand, EcuAddress, UdsTester, UdsTiming};

use super::record::runtime;

/// Arguments of `tether can uds`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tether can uds --bus multicast://239.74.163.2:43113 ReadDTC --params '{\"ecuAddress\": \"0x7E0\"}'
  tether can uds --bus multicast://239.74.163.2:43113 ReadDataByID --params '{\"did\": \"0xF190\"}'
  tether can uds --bus socketcan://can0 UdsRequest --params '{\"hex\": \"1003\", \"ecu\": \"engine\"}' \\
      --ecus '[{\"name\": \"engine\", \"request_id\": 2016, \"response_id\": 2024}]'

Prints one JSON line per ECU answer ({\"ecu\", \"dtcs\": [...]}, ...); on failure prints the reason
(an NRC name such as requestOutOfRange, `timeout`, ...) on stderr and exits with status 1.")]
pub struct UdsArgs {
    /// The bus: multicast://GROUP:PORT, socketcan://IFACE, socketcand://HOST:PORT/BUS,
    /// udp://HOST:PORT (as a REMP dongle), cannelloni://HOST:PORT.
    #[arg(long)]
    pub bus: BusAddress,
    /// The command: ReadDTC, ClearDTC, ReadDataByID, DiagnosticSessionControl, ECUReset,
    /// TesterPresent, UdsRequest.
    pub command: String,
    /// The command's params as JSON (`ecu`, `ecuAddress`, `did`, `status_mask`, `hex`, …).
    #[arg(long, default_value = "{}")]
    pub params: String,
    /// The vehicle's ECU list as JSON (`[{"name","request_id","response_id"}]`), for
    /// `params.ecu` and functional requests.
    #[arg(long, default_value = "[]")]
    pub ecus: String,
    /// Milliseconds to wait for a first answer (P2).
    #[arg(long, default_value_t = 1000)]
    pub p2_ms: u64,
    /// Milliseconds to wait after a response-pending answer (P2*).
    #[arg(long, default_value_t = 5000)]
    pub p2_star_ms: u64,
}

/// Run `tether can uds`.
pub fn run(args: &UdsArgs) -> anyhow::Result<ExitCode> {
    let params: serde_json::Value =
        serde_json::from_str(&args.params).context("--params is not JSON")?;
    let ecus: Vec<EcuAddress> =
        serde_json::from_str(&args.ecus).context("--ecus is not a JSON list of ECUs")?;
    let command = DiagCommand::parse(&args.command, &params)?;
    let plan = ExecPlan::new(&command, &ecus).map_err(|e| anyhow::anyhow!(e.reason()))?;
    let timing = UdsTiming {
        p2: std::time::Duration::from_millis(args.p2_ms),
        p2_star: std::time::Duration::from_millis(args.p2_star_ms),
    };
    let core = plan
        .tester_core(timing)
        .map_err(|e| anyhow::anyhow!(e.reason()))?;
    runtime()?.block_on(async {
        let bus = AnyBus::open(&args.bus, &OpenOptions::default())
            .await
            .with_context(|| format!("opening {}", args.bus))?;
        let mut tester = UdsTester::new(TickingBus::new(bus), core);
        let mut emit = |response: serde_json::Value, _last: bool| println!("{response}");
        match execute(&mut tester, &plan, &command, &mut emit).await {
            Ok(_) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("{}", e.reason());
                Ok(ExitCode::from(1))
            }
        }
    })
}
