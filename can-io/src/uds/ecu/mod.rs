//! The ECU simulator: ECUs described by a profile answer UDS on a bus.
//!
//! * [`EcuProfile`] and friends — the profile, as serde types (the binary loads YAML files).
//! * [`EcuResponder`] — one ECU's answers on whole UDS messages (sans-IO).
//! * [`EcuSimulator`] — every ECU of a profile with its ISO-TP link and functional address, a
//!   [`FrameMachine`](crate::isotp::FrameMachine) over frames (sans-IO).
//! * [`run_ecus`] — the async loop that runs a simulator on any bus until told to stop.
//!
//! What it does not do: security access, sessions that time out, DTC snapshots or extended
//! data, or writing DIDs. It is a test peer and a demo, not an ECU.

mod profile;
mod responder;
mod simulator;

pub(crate) use profile::parse_int_text;
pub use profile::{DidSpec, DtcSpec, EcuProfile, EcuSpec, IsoTpSpec};
pub use responder::{EcuResponder, EcuStats};
pub use simulator::{EcuSimulator, run_ecus};

/// The two-ECU test vehicle of the UDS tests (engine and abs), which the integration tests
/// include as well: `tests/fixtures/engine_abs.yaml`.
#[cfg(test)]
pub(crate) const ENGINE_ABS: &str = include_str!("../../../tests/fixtures/engine_abs.yaml");

/// [`ENGINE_ABS`], parsed.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn engine_abs() -> EcuProfile {
    serde_norway::from_str(ENGINE_ABS).unwrap()
}
