//! The mock connector (`commands.connector: mock`): every command succeeds after a random
//! delay in `commands.mock_delay_ms` (default 0.5–1.5 s) with one final response of the same
//! shape a real vehicle's answer has — DTCs P0420 and P0171 for ReadDTC (filtered by
//! `status_mask`), a confirmation for ClearDTC, the vehicle's VIN for DID `0xF190` and a value
//! derived from the DID for others, the positive response bytes for the rest.

use std::sync::Arc;
use std::time::Duration;

use can_io::uds::command::{CommandKind, response};
use can_io::uds::dtc::{Dtc, DtcRecord, DtcStatus};
use can_io::uds::service::DidValue;
use futures::future::BoxFuture;
use rand::Rng;
use serde_json::Value;

use super::{Connector, Job, Reporter};

/// The VIN the mock reads when the vehicle has none.
const MOCK_VIN: &str = "1HGCM82633A004352";

/// Canned answers after a random delay.
#[derive(Debug, Clone)]
pub struct MockConnector {
    delay: (Duration, Duration),
}

impl MockConnector {
    /// A mock answering after a delay drawn uniformly from `delay` (min, max).
    pub fn new(delay: (Duration, Duration)) -> MockConnector {
        MockConnector { delay }
    }
}

impl Connector for MockConnector {
    fn name(&self) -> &'static str {
        "mock"
    }

    /// The mock's answers touch nothing but the store, so a command is answered while its
    /// insert is still being committed: under load the insert, the response and the
    /// completion share one group commit.
    fn runs_unstored(&self) -> bool {
        true
    }

    fn run(&self, job: Arc<Job>, mut report: Reporter) -> BoxFuture<'static, Reporter> {
        let (min, max) = self.delay;
        let delay = if max > min {
            rand::rng().random_range(min..=max)
        } else {
            min
        };
        Box::pin(async move {
            // With a delay the command is `in_progress` while it lasts; without one the
            // response starts it in the same commit.
            if !delay.is_zero() {
                report.started().await;
                tokio::time::sleep(delay).await;
            }
            report.response(answer(&job), true).await;
            report
        })
    }
}

/// The mock's answer to a command.
pub fn answer(job: &Job) -> Value {
    let ecu = job.targets.first().map_or("engine", |e| e.name.as_str());
    match &job.command.kind {
        CommandKind::ReadDtc { status_mask } => {
            let stored = [("P0420", 0x2F), ("P0171", 0x09)];
            let records: Vec<DtcRecord> = stored
                .iter()
                .filter(|(_, status)| status & status_mask != 0)
                .filter_map(|(code, status)| {
                    Some(DtcRecord {
                        dtc: Dtc::from_sae(code, 0).ok()?,
                        status: DtcStatus(*status),
                    })
                })
                .collect();
            response::dtcs(ecu, &records)
        }
        CommandKind::ClearDtc { group } => response::cleared(ecu, *group),
        CommandKind::ReadDataById { dids, list } => {
            let values: Vec<DidValue> = dids
                .iter()
                .map(|&did| DidValue {
                    did,
                    data: if did == 0xF190 {
                        job.vehicle
                            .vin
                            .as_deref()
                            .unwrap_or(MOCK_VIN)
                            .as_bytes()
                            .to_vec()
                    } else {
                        did.to_be_bytes().iter().map(|b| b ^ 0x5A).collect()
                    },
                })
                .collect();
            response::dids(ecu, &values, *list)
        }
        CommandKind::DiagnosticSessionControl { session } => {
            // P2 50 ms, P2* 5 s.
            response::raw(ecu, &[0x50, *session, 0x00, 0x32, 0x01, 0xF4])
        }
        CommandKind::EcuReset { reset_type } => response::raw(ecu, &[0x51, *reset_type]),
        CommandKind::TesterPresent => response::raw(ecu, &[0x7E, 0x00]),
        CommandKind::Raw(bytes) => {
            let mut positive = bytes.clone();
            if let Some(sid) = positive.first_mut() {
                *sid = sid.wrapping_add(0x40);
            }
            response::raw(ecu, &positive)
        }
    }
}
