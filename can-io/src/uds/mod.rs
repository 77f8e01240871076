//! UDS (ISO 14229) over ISO-TP: what a tester asks, what an ECU answers.
//!
//! * [`service`] — request builders ([`UdsRequest`]) and decoders of positive responses
//!   ([`UdsResponse`]): ReadDTCInformation `0x19 0x02`, ClearDiagnosticInformation `0x14`,
//!   ReadDataByIdentifier `0x22`, DiagnosticSessionControl `0x10`, ECUReset `0x11`,
//!   TesterPresent `0x3E`, and raw requests.
//! * [`command`] — the commands API's commands (`ReadDTC`, `ClearDTC`, `ReadDataByID`, …)
//!   parsed from `(command_name, command_params)` into a [`DiagCommand`] and its request.
//! * [`dtc`] — DTCs, their SAE rendering (`P0420`) and status bytes.
//! * [`UdsClient`] — the sans-IO request/response state machine: matches responses by service
//!   id, turns `0x7F SID NRC` into typed negative answers, extends the wait to P2* on
//!   response-pending (`0x78`), times out, and collects several answers to a functional
//!   request.
//! * [`UdsTesterCore`] / [`UdsTester`] — the client with one ISO-TP endpoint per ECU, sans-IO
//!   over frames and async over any [`CanBus`](crate::transport::CanBus).
//! * [`ecu`] — the ECU simulator: a profile (YAML-friendly serde types), a sans-IO responder,
//!   and [`ecu::run_ecus`] over any bus.
//! * [`exec`] — a parsed [`DiagCommand`] run on a [`UdsTester`]: the request(s), functional
//!   collection, and the commands API's response JSON.
//!
//! Service identifiers and NRC names come from the `automotive_diag` crate, not a table of our
//! own. What this module does not do: security access, flashing, periodic or event-driven
//! responses, or keeping a session alive on its own (send TesterPresent when you need it).

mod client;
pub mod command;
pub mod dtc;
pub mod ecu;
pub mod exec;
pub mod service;
mod tester;

use std::fmt;
use std::time::Duration;

use automotive_diag::uds::{UdsCommand, UdsError as NrcCode};

use crate::isotp::IsoTpError;

pub use client::{Answer, EcuAnswer, UdsClient, UdsEvent, UdsStats, UdsTiming};
pub use command::{CommandParamsError, DiagCommand, EcuAddress, SUPPORTED_COMMANDS};
pub use dtc::{Dtc, DtcRecord, DtcStatus};
pub use service::{DidValue, UdsRequest, UdsResponse};
pub use tester::{Target, UdsTester, UdsTesterCore};

/// `0x7F`: the service id of a negative response.
pub const NEGATIVE_RESPONSE: u8 = 0x7F;
/// Offset of a positive response's service id from the request's.
pub const POSITIVE_OFFSET: u8 = 0x40;

/// A negative response code (NRC), the third byte of `0x7F SID NRC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nrc(pub u8);

impl Nrc {
    /// `0x10` generalReject.
    pub const GENERAL_REJECT: Nrc = Nrc(0x10);
    /// `0x11` serviceNotSupported.
    pub const SERVICE_NOT_SUPPORTED: Nrc = Nrc(0x11);
    /// `0x12` subFunctionNotSupported.
    pub const SUB_FUNCTION_NOT_SUPPORTED: Nrc = Nrc(0x12);
    /// `0x13` incorrectMessageLengthOrInvalidFormat.
    pub const INCORRECT_LENGTH: Nrc = Nrc(0x13);
    /// `0x21` busyRepeatRequest.
    pub const BUSY_REPEAT_REQUEST: Nrc = Nrc(0x21);
    /// `0x31` requestOutOfRange.
    pub const REQUEST_OUT_OF_RANGE: Nrc = Nrc(0x31);
    /// `0x78` requestCorrectlyReceivedResponsePending.
    pub const RESPONSE_PENDING: Nrc = Nrc(0x78);
    /// `0x7E` subFunctionNotSupportedInActiveSession.
    pub const SUB_FUNCTION_NOT_SUPPORTED_IN_ACTIVE_SESSION: Nrc = Nrc(0x7E);
    /// `0x7F` serviceNotSupportedInActiveSession.
    pub const SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION: Nrc = Nrc(0x7F);

    /// The ISO 14229 name in lower camel case (`requestOutOfRange`), from `automotive_diag`;
    /// `nrc0xNN` for codes it does not name (reserved and manufacturer-specific ones).
    pub fn name(self) -> String {
        match NrcCode::from_repr(self.0) {
            Some(code) => lower_camel(&format!("{code:?}")),
            None => format!("nrc0x{:02X}", self.0),
        }
    }

    /// Whether a functional request answered with this NRC gets no answer at all
    /// (ISO 14229-1 7.5: 0x11, 0x12, 0x31, 0x7E, 0x7F are suppressed for functional requests).
    pub fn suppressed_when_functional(self) -> bool {
        matches!(self.0, 0x11 | 0x12 | 0x31 | 0x7E | 0x7F)
    }
}

impl fmt::Display for Nrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02X})", self.name(), self.0)
    }
}

/// The service's name from `automotive_diag` (`ReadDTCInformation`), or `service 0xNN`.
pub fn service_name(sid: u8) -> String {
    match UdsCommand::from_repr(sid) {
        Some(c) => format!("{c:?}"),
        None => format!("service 0x{sid:02X}"),
    }
}

fn lower_camel(pascal: &str) -> String {
    let mut chars = pascal.chars();
    match chars.next() {
        Some(c) => c.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// Why a UDS request failed or a profile was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UdsError {
    /// The ECU answered `0x7F SID NRC`.
    #[error("{} refused: {nrc}", service_name(*sid))]
    Negative {
        /// The request's service id.
        sid: u8,
        /// The reason the ECU gave.
        nrc: Nrc,
    },
    /// No (final) answer within P2, or within P2* after a response-pending answer.
    #[error("timeout: no answer to {} within {waited:?}", service_name(*sid))]
    Timeout {
        /// The request's service id.
        sid: u8,
        /// The last wait that ran out (P2 or P2*).
        waited: Duration,
    },
    /// A request while another is outstanding (one at a time per client).
    #[error("a request is already outstanding")]
    Busy,
    /// The answer's ISO-TP transfer failed, or the request could not be sent.
    #[error("transfer failed: {0}")]
    Transfer(IsoTpError),
    /// A positive response that does not decode as the request's answer.
    #[error("malformed answer to {}: {reason}", service_name(*sid))]
    Malformed {
        /// The request's service id.
        sid: u8,
        /// What is wrong.
        reason: String,
    },
    /// A request that cannot be built or sent (empty, a parameter out of range, an unknown
    /// ECU).
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// An ECU profile that cannot be used.
    #[error("invalid ECU profile: {reason}")]
    InvalidProfile {
        /// What is wrong, and where.
        reason: String,
    },
}

impl UdsError {
    /// Whether sending the same request again may succeed: timeouts, a busy client, a failed
    /// transfer, and the NRCs busyRepeatRequest / conditionsNotCorrect.
    pub fn is_retryable(&self) -> bool {
        match self {
            UdsError::Timeout { .. } | UdsError::Busy | UdsError::Transfer(_) => true,
            UdsError::Negative { nrc, .. } => matches!(nrc.0, 0x21 | 0x22),
            _ => false,
        }
    }

    /// The name to report to users: the NRC's name for a negative answer (`requestOutOfRange`),
    /// `timeout`, else the error text.
    pub fn reason(&self) -> String {
        match self {
            UdsError::Negative { nrc, .. } => nrc.name(),
            UdsError::Timeout { .. } => "timeout".to_owned(),
            other => other.to_string(),
        }
    }
}

/// Fuzz entry point (`fuzz/fuzz_targets/uds_response.rs`): byte 0 picks a request (ReadDTC,
/// ClearDTC, ReadDataByIdentifier of one or two DIDs, session, reset, TesterPresent, raw) and
/// the rest is the ECU's answer. The answer goes through the request's decoder and a
/// [`UdsClient`]; the same bytes go to a simulated ECU as a request. Never panics.
/// Built only for tests and `cargo fuzz` (`--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
pub fn fuzz_response(data: &[u8]) {
    use std::collections::BTreeMap;
    use std::time::Instant;
    let Some((&pick, answer)) = data.split_first() else {
        return;
    };
    let request = match pick % 8 {
        0 => UdsRequest::ReadDtcByStatusMask { status_mask: 0xFF },
        1 => UdsRequest::ClearDiagnosticInformation {
            group: service::ALL_DTCS,
        },
        2 => UdsRequest::ReadDataByIdentifier { dids: vec![0xF190] },
        3 => UdsRequest::ReadDataByIdentifier {
            dids: vec![0xF40D, 0xF190],
        },
        4 => UdsRequest::DiagnosticSessionControl { session: 3 },
        5 => UdsRequest::EcuReset { reset_type: 1 },
        6 => UdsRequest::TesterPresent {
            suppress_positive: false,
        },
        _ => UdsRequest::Raw(vec![pick]),
    };
    let lengths = BTreeMap::from([(0xF40D, 1), (0xF190, usize::from(pick >> 3))]);
    let _ = request.decode_response(answer, &lengths);
    let Ok(bytes) = request.encode() else {
        return;
    };
    let now = Instant::now();
    let mut client = UdsClient::new(UdsTiming::default());
    let Ok(responder) = crate::frame::CanId::standard(0x7E8) else {
        return;
    };
    if client.begin(&bytes, &[], false).is_ok() {
        client.request_sent(now);
        client.handle_response(responder, answer, now);
        client.handle_timeout(now + std::time::Duration::from_secs(10));
        while client.poll_event().is_some() {}
        assert!(client.is_idle());
    }
    let spec = ecu::EcuSpec {
        name: "fuzz".into(),
        request_id: 0x7E0,
        response_id: 0x7E8,
        functional_id: None,
        dtcs: vec![ecu::DtcSpec {
            code: Some("P0420".into()),
            ftb: 0,
            dtc: None,
            status: 0x2F,
        }],
        dids: BTreeMap::from([(
            0xF190,
            ecu::DidSpec {
                ascii: Some("VIN".into()),
                hex: None,
            },
        )]),
        response_pending_ms: 0,
        isotp: ecu::IsoTpSpec::default(),
    };
    if let Ok(mut ecu) = ecu::EcuResponder::new(&spec) {
        ecu.handle_request(answer, pick & 1 == 1, now);
        while ecu.poll_response().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz entry points (built for tests too) take any bytes, the seeds' shapes included.
    #[test]
    fn fuzz_entry_points_take_any_bytes() {
        for data in [
            &[][..],
            &[0, 0x59, 0x02, 0xFF, 0x04, 0x20, 0x00, 0x2F],
            &[3, 0x7F, 0x22, 0x78, 0x62, 0xF1, 0x90],
            &[7; 64],
        ] {
            fuzz_response(data);
            crate::isotp::fuzz_frames(data);
        }
        crate::isotp::fuzz_frames(&[0, 3, 0x10, 0x14, 0x62, 1, 8, 0x21, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn nrc_names_come_from_automotive_diag() {
        assert_eq!(Nrc::REQUEST_OUT_OF_RANGE.name(), "requestOutOfRange");
        assert_eq!(Nrc::SERVICE_NOT_SUPPORTED.name(), "serviceNotSupported");
        assert_eq!(
            Nrc::RESPONSE_PENDING.name(),
            "requestCorrectlyReceivedResponsePending"
        );
        assert_eq!(Nrc(0x01).name(), "nrc0x01");
        assert_eq!(Nrc(0x31).to_string(), "requestOutOfRange (0x31)");
        assert_eq!(service_name(0x19), "ReadDTCInformation");
        assert_eq!(service_name(0xBA), "service 0xBA");
        let e = UdsError::Negative {
            sid: 0x22,
            nrc: Nrc(0x31),
        };
        assert_eq!(e.reason(), "requestOutOfRange");
        assert_eq!(
            e.to_string(),
            "ReadDataByIdentifier refused: requestOutOfRange (0x31)"
        );
        assert!(!e.is_retryable());
    }
}
