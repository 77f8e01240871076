//! [`EcuSimulator`] (frames in, frames out) and [`run_ecus`] (the same over a bus).

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use super::profile::{EcuProfile, EcuSpec};
use super::responder::{EcuResponder, EcuStats};
use crate::error::Error;
use crate::frame::{CanFrame, CanId};
use crate::isotp::driver::BusDriver;
use crate::isotp::pci::{self, Pci};
use crate::isotp::{
    Addressing, FrameFormat, FrameMachine, IsoTpConfig, IsoTpEndpoint, IsoTpEvent, IsoTpStats,
    StMin,
};
use crate::transport::CanBus;
use crate::uds::UdsError;

#[derive(Debug)]
struct SimEcu {
    responder: EcuResponder,
    link: IsoTpEndpoint,
    functional_id: CanId,
    /// Answers waiting for the link to finish sending the previous one.
    queued: VecDeque<Vec<u8>>,
    /// Functional single frames that did not decode.
    bad_functional: u64,
}

/// Every ECU of a profile on one bus, each with its physical ISO-TP link (request identifier →
/// response identifier) and its functional identifier (single frames only).
#[derive(Debug)]
pub struct EcuSimulator {
    ecus: Vec<SimEcu>,
}

fn link_config(spec: &EcuSpec) -> Result<IsoTpConfig, UdsError> {
    let invalid = |e: crate::isotp::IsoTpError| UdsError::InvalidProfile {
        reason: format!("ECU {:?}: {e}", spec.name),
    };
    let mut cfg =
        IsoTpConfig::new(Addressing::normal(spec.response_id, spec.request_id).map_err(invalid)?);
    cfg.padding = spec.isotp.padding;
    cfg.block_size = spec.isotp.block_size;
    cfg.st_min = StMin::from_raw(spec.isotp.st_min);
    if let Some(tx_dl) = spec.isotp.fd_tx_dl {
        cfg.format = FrameFormat::Fd { tx_dl, brs: true };
    }
    cfg.validate().map_err(invalid)?;
    Ok(cfg)
}

impl EcuSimulator {
    /// A simulator for every ECU of `profile`. Refuses a profile with bad entries, or two ECUs
    /// on the same request identifier.
    pub fn new(profile: &EcuProfile) -> Result<Self, UdsError> {
        let mut ecus: Vec<SimEcu> = Vec::new();
        for spec in &profile.ecus {
            let cfg = link_config(spec)?;
            let rx = cfg.addressing.rx_id();
            if ecus
                .iter()
                .any(|e| e.link.config().addressing.rx_id() == rx)
            {
                return Err(UdsError::InvalidProfile {
                    reason: format!("two ECUs listen on request identifier {rx}"),
                });
            }
            let functional =
                spec.functional_id
                    .unwrap_or(if rx.is_extended() { 0x18DB_33F1 } else { 0x7DF });
            let functional_id =
                crate::isotp::config_auto_id(functional).map_err(|e| UdsError::InvalidProfile {
                    reason: format!("ECU {:?}: {e}", spec.name),
                })?;
            ecus.push(SimEcu {
                responder: EcuResponder::new(spec)?,
                link: IsoTpEndpoint::new(cfg).map_err(UdsError::Transfer)?,
                functional_id,
                queued: VecDeque::new(),
                bad_functional: 0,
            });
        }
        Ok(EcuSimulator { ecus })
    }

    /// The ECUs' responders (stored DTCs, counters), in profile order.
    pub fn responders(&self) -> impl Iterator<Item = &EcuResponder> {
        self.ecus.iter().map(|e| &e.responder)
    }

    /// Counters per ECU: name, UDS counters, ISO-TP counters of the physical link, functional
    /// frames that did not decode.
    pub fn stats(&self) -> Vec<(String, EcuStats, IsoTpStats, u64)> {
        self.ecus
            .iter()
            .map(|e| {
                (
                    e.responder.name().to_owned(),
                    e.responder.stats(),
                    e.link.stats(),
                    e.bad_functional,
                )
            })
            .collect()
    }

    /// Move requests from the links to the responders and answers back.
    fn pump(&mut self, now: Instant) {
        for e in &mut self.ecus {
            while let Some(ev) = e.link.poll_event() {
                match ev {
                    IsoTpEvent::Received(req) => e.responder.handle_request(&req, false, now),
                    IsoTpEvent::Error(err) => {
                        tracing::debug!(ecu = e.responder.name(), error = %err, "ISO-TP error")
                    }
                    IsoTpEvent::Sent | IsoTpEvent::FirstFrame { .. } => {}
                }
            }
            while let Some(answer) = e.responder.poll_response() {
                e.queued.push_back(answer);
            }
            if !e.link.is_sending()
                && let Some(answer) = e.queued.pop_front()
                && let Err(err) = e.link.send(&answer, now)
            {
                tracing::warn!(ecu = e.responder.name(), error = %err, "answer not sent");
            }
        }
    }
}

impl FrameMachine for EcuSimulator {
    fn handle_frame(&mut self, frame: &CanFrame, now: Instant) -> bool {
        let mut mine = false;
        for e in &mut self.ecus {
            if frame.id() == Some(e.functional_id) && !frame.is_empty() {
                mine = true;
                match pci::parse(frame.data(), frame.len()) {
                    Ok(Pci::Single { data }) => e.responder.handle_request(data, true, now),
                    _ => e.bad_functional += 1,
                }
            } else {
                mine |= e.link.handle_frame(frame, now);
            }
        }
        self.pump(now);
        mine
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<CanFrame> {
        self.pump(now);
        let frame = self.ecus.iter_mut().find_map(|e| e.link.poll_transmit(now));
        self.pump(now);
        frame
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.ecus
            .iter()
            .flat_map(|e| [e.link.poll_timeout(), e.responder.poll_timeout()])
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        for e in &mut self.ecus {
            e.link.handle_timeout(now);
            e.responder.handle_timeout(now);
        }
        self.pump(now);
    }

    fn handle_transmit_timeout(&mut self, frame: &CanFrame, now: Instant) {
        for e in &mut self.ecus {
            if Some(e.link.config().addressing.tx_id()) == frame.id() {
                e.link.handle_transmit_timeout(frame);
            }
        }
        self.pump(now);
    }
}

/// Run the ECUs of `profile` on `bus` until `stop` completes or the bus ends; returns the
/// simulator (for its counters and final DTC lists). Refuses a bad profile before touching the
/// bus.
pub async fn run_ecus<B: CanBus>(
    bus: B,
    profile: &EcuProfile,
    stop: impl Future<Output = ()>,
) -> Result<EcuSimulator, Error> {
    let mut sim = EcuSimulator::new(profile)?;
    let mut driver = BusDriver::new(bus, "can0", Duration::from_secs(1));
    tokio::pin!(stop);
    loop {
        driver.transmit(&mut sim).await?;
        tokio::select! {
            () = &mut stop => return Ok(sim),
            r = driver.wait(&mut sim) => match r {
                Ok(()) => {}
                Err(Error::Closed { .. }) => return Ok(sim),
                Err(e) => return Err(e),
            },
        }
    }
}
