//! Request builders and positive-response decoders for the services Tether's commands use.
//! Pure functions over bytes; nothing here sends or waits.

use std::collections::BTreeMap;
use std::time::Duration;

use automotive_diag::uds::UdsCommand;

use super::dtc::{Dtc, DtcRecord, DtcStatus};
use super::{NEGATIVE_RESPONSE, Nrc, POSITIVE_OFFSET, UdsError};

/// ReadDTCInformation sub-function reportDTCByStatusMask.
pub const REPORT_DTC_BY_STATUS_MASK: u8 = 0x02;
/// The suppress-positive-response bit of a sub-function byte.
pub const SUPPRESS_POSITIVE: u8 = 0x80;
/// ClearDiagnosticInformation group of all DTCs.
pub const ALL_DTCS: u32 = 0xFF_FFFF;

fn sid(c: UdsCommand) -> u8 {
    c.into()
}

/// A request, as the commands API names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UdsRequest {
    /// `0x19 0x02 mask`: the DTCs whose status has any bit of `status_mask` set.
    ReadDtcByStatusMask {
        /// Status bits to match (`0xFF`: any).
        status_mask: u8,
    },
    /// `0x14 group`: clear the DTCs of a group (`0xFFFFFF`: all).
    ClearDiagnosticInformation {
        /// The 3-byte group.
        group: u32,
    },
    /// `0x22 did…`: read one or several data identifiers.
    ReadDataByIdentifier {
        /// The identifiers, in the order the answer lists them.
        dids: Vec<u16>,
    },
    /// `0x10 session`: switch diagnostic session (1 default, 2 programming, 3 extended).
    DiagnosticSessionControl {
        /// The session type.
        session: u8,
    },
    /// `0x11 type`: reset the ECU (1 hard, 2 key off/on, 3 soft).
    EcuReset {
        /// The reset type.
        reset_type: u8,
    },
    /// `0x3E 0x00` (or `0x3E 0x80`, which asks for no positive answer).
    TesterPresent {
        /// Set the suppress-positive-response bit.
        suppress_positive: bool,
    },
    /// Any request, as bytes (service id first).
    Raw(Vec<u8>),
}

impl UdsRequest {
    /// The request bytes. Refuses what cannot be encoded: an empty raw request, no DIDs, a
    /// group over 3 bytes.
    pub fn encode(&self) -> Result<Vec<u8>, UdsError> {
        let invalid = |reason: &str| UdsError::InvalidRequest {
            reason: reason.to_owned(),
        };
        Ok(match self {
            UdsRequest::ReadDtcByStatusMask { status_mask } => vec![
                sid(UdsCommand::ReadDTCInformation),
                REPORT_DTC_BY_STATUS_MASK,
                *status_mask,
            ],
            UdsRequest::ClearDiagnosticInformation { group } => {
                if *group > ALL_DTCS {
                    return Err(invalid("ClearDiagnosticInformation group exceeds 3 bytes"));
                }
                let g = group.to_be_bytes();
                vec![
                    sid(UdsCommand::ClearDiagnosticInformation),
                    g[1],
                    g[2],
                    g[3],
                ]
            }
            UdsRequest::ReadDataByIdentifier { dids } => {
                if dids.is_empty() {
                    return Err(invalid("ReadDataByIdentifier needs at least one DID"));
                }
                let mut v = vec![sid(UdsCommand::ReadDataByIdentifier)];
                for d in dids {
                    v.extend_from_slice(&d.to_be_bytes());
                }
                v
            }
            UdsRequest::DiagnosticSessionControl { session } => {
                vec![sid(UdsCommand::DiagnosticSessionControl), *session]
            }
            UdsRequest::EcuReset { reset_type } => vec![sid(UdsCommand::ECUReset), *reset_type],
            UdsRequest::TesterPresent { suppress_positive } => vec![
                sid(UdsCommand::TesterPresent),
                if *suppress_positive {
                    SUPPRESS_POSITIVE
                } else {
                    0
                },
            ],
            UdsRequest::Raw(bytes) => {
                if bytes.is_empty() {
                    return Err(invalid("empty request"));
                }
                bytes.clone()
            }
        })
    }

    /// Decode the positive response to this request (`response` starts with SID + 0x40).
    /// ReadDataByIdentifier needs the length of every DID's value but the last one
    /// (`did_lengths`, e.g. from a vehicle profile); the last (or only) one may take the
    /// remainder.
    pub fn decode_response(
        &self,
        response: &[u8],
        did_lengths: &BTreeMap<u16, usize>,
    ) -> Result<UdsResponse, UdsError> {
        let request = self.encode()?;
        let sid = request[0];
        let malformed = |reason: String| UdsError::Malformed { sid, reason };
        match response.first() {
            Some(&b) if b == sid.wrapping_add(POSITIVE_OFFSET) => {}
            Some(&NEGATIVE_RESPONSE) => {
                let nrc = Nrc(response.get(2).copied().unwrap_or(0));
                return Err(UdsError::Negative { sid, nrc });
            }
            _ => return Err(malformed("not a positive response to this request".into())),
        }
        let body = &response[1..];
        Ok(match self {
            UdsRequest::ReadDtcByStatusMask { .. } => {
                let (availability_mask, dtcs) = decode_dtc_report(body).map_err(malformed)?;
                UdsResponse::Dtcs {
                    availability_mask,
                    dtcs,
                }
            }
            UdsRequest::ClearDiagnosticInformation { .. } => UdsResponse::Cleared,
            UdsRequest::ReadDataByIdentifier { dids } => {
                UdsResponse::Data(decode_did_values(body, dids, did_lengths).map_err(malformed)?)
            }
            UdsRequest::DiagnosticSessionControl { .. } => {
                let (&session, params) = body
                    .split_first()
                    .ok_or_else(|| malformed("no session type".into()))?;
                let timing = match params {
                    [a, b, c, d, ..] => Some((
                        Duration::from_millis(u64::from(u16::from_be_bytes([*a, *b]))),
                        Duration::from_millis(u64::from(u16::from_be_bytes([*c, *d])) * 10),
                    )),
                    _ => None,
                };
                UdsResponse::Session { session, timing }
            }
            UdsRequest::EcuReset { .. } => {
                let (&reset_type, rest) = body
                    .split_first()
                    .ok_or_else(|| malformed("no reset type".into()))?;
                UdsResponse::Reset {
                    reset_type,
                    power_down_time: rest.first().copied(),
                }
            }
            UdsRequest::TesterPresent { .. } => UdsResponse::TesterPresent,
            UdsRequest::Raw(_) => UdsResponse::Raw(response.to_vec()),
        })
    }
}

/// A decoded positive response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdsResponse {
    /// ReadDTCInformation reportDTCByStatusMask.
    Dtcs {
        /// The status bits the ECU supports.
        availability_mask: u8,
        /// The DTCs and their status.
        dtcs: Vec<DtcRecord>,
    },
    /// ClearDiagnosticInformation succeeded.
    Cleared,
    /// ReadDataByIdentifier: the values in the order the ECU sent them.
    Data(Vec<DidValue>),
    /// DiagnosticSessionControl: the new session, and P2 / P2* if the ECU sent them.
    Session {
        /// The session type.
        session: u8,
        /// P2server_max and P2*server_max.
        timing: Option<(Duration, Duration)>,
    },
    /// ECUReset: the reset type, and the power-down time for rapid shutdown.
    Reset {
        /// The reset type.
        reset_type: u8,
        /// Seconds until power down, if sent.
        power_down_time: Option<u8>,
    },
    /// TesterPresent acknowledged.
    TesterPresent,
    /// A raw request's whole positive response.
    Raw(Vec<u8>),
}

/// One data identifier and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DidValue {
    /// The identifier.
    pub did: u16,
    /// The value bytes.
    pub data: Vec<u8>,
}

/// Decode the body (after `0x59`) of a reportDTCByStatusMask answer: the sub-function echo,
/// the availability mask, then 4-byte records (3-byte DTC, status).
pub fn decode_dtc_report(body: &[u8]) -> Result<(u8, Vec<DtcRecord>), String> {
    let [sub, mask, records @ ..] = body else {
        return Err("shorter than sub-function and availability mask".into());
    };
    if *sub & 0x7F != REPORT_DTC_BY_STATUS_MASK {
        return Err(format!("sub-function 0x{sub:02X}, expected 0x02"));
    }
    if !records.len().is_multiple_of(4) {
        return Err(format!(
            "{} bytes of DTC records, not a multiple of 4",
            records.len()
        ));
    }
    let dtcs = records
        .chunks_exact(4)
        .map(|r| DtcRecord {
            dtc: Dtc::from_bytes([r[0], r[1], r[2]]),
            status: DtcStatus(r[3]),
        })
        .collect();
    Ok((*mask, dtcs))
}

/// Decode the body (after `0x62`) of a ReadDataByIdentifier answer to `requested`. Each value
/// ends where its known length says; a DID of unknown length must be the last one and takes
/// the remainder.
pub fn decode_did_values(
    mut body: &[u8],
    requested: &[u16],
    lengths: &BTreeMap<u16, usize>,
) -> Result<Vec<DidValue>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let [hi, lo, rest @ ..] = body else {
            return Err("a DID cut short".into());
        };
        let did = u16::from_be_bytes([*hi, *lo]);
        if !requested.contains(&did) {
            return Err(format!("DID 0x{did:04X} was not requested"));
        }
        let len = match lengths.get(&did) {
            Some(&n) if n <= rest.len() => n,
            Some(&n) => {
                return Err(format!(
                    "DID 0x{did:04X} needs {n} bytes, {} left",
                    rest.len()
                ));
            }
            None => rest.len(),
        };
        out.push(DidValue {
            did,
            data: rest[..len].to_vec(),
        });
        body = &rest[len..];
    }
    if out.is_empty() {
        return Err("no DID in the answer".into());
    }
    Ok(out)
}

/// Whether `request` asks for no positive answer: the suppress bit set in the sub-function of
/// a service that has one.
pub fn suppresses_positive_response(request: &[u8]) -> bool {
    let (Some(&sid), Some(&sub)) = (request.first(), request.get(1)) else {
        return false;
    };
    let has_sub_function = matches!(
        UdsCommand::from_repr(sid),
        Some(
            UdsCommand::DiagnosticSessionControl
                | UdsCommand::ECUReset
                | UdsCommand::SecurityAccess
                | UdsCommand::CommunicationControl
                | UdsCommand::TesterPresent
                | UdsCommand::Authentication
                | UdsCommand::ControlDTCSetting
                | UdsCommand::ResponseOnEvent
                | UdsCommand::LinkControl
                | UdsCommand::RoutineControl
                | UdsCommand::DynamicallyDefineDataIdentifier
        )
    );
    has_sub_function && sub & SUPPRESS_POSITIVE != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_lengths() -> BTreeMap<u16, usize> {
        BTreeMap::new()
    }

    #[test]
    fn builders() {
        let enc = |r: UdsRequest| r.encode().unwrap();
        assert_eq!(
            enc(UdsRequest::ReadDtcByStatusMask { status_mask: 0xFF }),
            [0x19, 0x02, 0xFF]
        );
        assert_eq!(
            enc(UdsRequest::ClearDiagnosticInformation { group: ALL_DTCS }),
            [0x14, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(
            enc(UdsRequest::ReadDataByIdentifier {
                dids: vec![0xF190, 0xF40D]
            }),
            [0x22, 0xF1, 0x90, 0xF4, 0x0D]
        );
        assert_eq!(
            enc(UdsRequest::DiagnosticSessionControl { session: 3 }),
            [0x10, 3]
        );
        assert_eq!(enc(UdsRequest::EcuReset { reset_type: 1 }), [0x11, 1]);
        assert_eq!(
            enc(UdsRequest::TesterPresent {
                suppress_positive: true
            }),
            [0x3E, 0x80]
        );
        assert!(
            UdsRequest::ClearDiagnosticInformation { group: 0x100_0000 }
                .encode()
                .is_err()
        );
        assert!(
            UdsRequest::ReadDataByIdentifier { dids: vec![] }
                .encode()
                .is_err()
        );
        assert!(UdsRequest::Raw(vec![]).encode().is_err());
        assert!(suppresses_positive_response(&[0x3E, 0x80]));
        assert!(!suppresses_positive_response(&[0x3E, 0x00]));
        assert!(!suppresses_positive_response(&[0x19, 0x82, 0xFF]));
    }

    #[test]
    fn dtc_report() {
        let req = UdsRequest::ReadDtcByStatusMask { status_mask: 0xFF };
        let resp = [
            0x59, 0x02, 0xFF, 0x04, 0x20, 0x00, 0x2F, 0xC1, 0x00, 0x00, 0x09,
        ];
        let UdsResponse::Dtcs {
            availability_mask,
            dtcs,
        } = req.decode_response(&resp, &no_lengths()).unwrap()
        else {
            panic!("not DTCs")
        };
        assert_eq!(availability_mask, 0xFF);
        assert_eq!(dtcs.len(), 2);
        assert_eq!(dtcs[0].dtc.sae_code(), "P0420");
        assert_eq!(dtcs[0].status, DtcStatus(0x2F));
        assert_eq!(dtcs[1].dtc.sae_code(), "U0100");
        assert!(
            req.decode_response(&resp[..10], &no_lengths())
                .unwrap_err()
                .to_string()
                .contains("multiple of 4")
        );
        assert!(req.decode_response(&[0x59], &no_lengths()).is_err());
        assert!(req.decode_response(&[0x62, 1, 2], &no_lengths()).is_err());
        assert_eq!(
            req.decode_response(&[0x7F, 0x19, 0x31], &no_lengths()),
            Err(UdsError::Negative {
                sid: 0x19,
                nrc: Nrc(0x31)
            })
        );
    }

    #[test]
    fn did_values() {
        let one = UdsRequest::ReadDataByIdentifier { dids: vec![0xF190] };
        let mut resp = vec![0x62, 0xF1, 0x90];
        resp.extend_from_slice(b"1HGCM82633A004352");
        assert_eq!(
            one.decode_response(&resp, &no_lengths()).unwrap(),
            UdsResponse::Data(vec![DidValue {
                did: 0xF190,
                data: b"1HGCM82633A004352".to_vec()
            }])
        );
        let two = UdsRequest::ReadDataByIdentifier {
            dids: vec![0xF40D, 0xF190],
        };
        let resp2 = [0x62, 0xF4, 0x0D, 0x3C, 0xF1, 0x90, b'A', b'B'];
        let lengths = BTreeMap::from([(0xF40D, 1)]);
        assert_eq!(
            two.decode_response(&resp2, &lengths).unwrap(),
            UdsResponse::Data(vec![
                DidValue {
                    did: 0xF40D,
                    data: vec![0x3C]
                },
                DidValue {
                    did: 0xF190,
                    data: b"AB".to_vec()
                },
            ])
        );
        // Without the first length the whole remainder is taken, and the stray bytes make it
        // obvious in the value rather than mis-splitting silently.
        assert!(matches!(
            two.decode_response(&resp2, &no_lengths()).unwrap(),
            UdsResponse::Data(v) if v.len() == 1 && v[0].data.len() == 5
        ));
        assert!(
            two.decode_response(&[0x62, 0x12, 0x34, 0], &no_lengths())
                .is_err()
        );
        assert!(two.decode_response(&[0x62, 0xF4], &no_lengths()).is_err());
        assert!(two.decode_response(&[0x62], &no_lengths()).is_err());
        let long = BTreeMap::from([(0xF40D, 4)]);
        assert!(two.decode_response(&resp2[..4], &long).is_err());
    }

    #[test]
    fn session_and_reset() {
        let s = UdsRequest::DiagnosticSessionControl { session: 3 };
        assert_eq!(
            s.decode_response(&[0x50, 0x03, 0x00, 0x32, 0x01, 0xF4], &no_lengths())
                .unwrap(),
            UdsResponse::Session {
                session: 3,
                timing: Some((Duration::from_millis(50), Duration::from_millis(5000)))
            }
        );
        let r = UdsRequest::EcuReset { reset_type: 1 };
        assert_eq!(
            r.decode_response(&[0x51, 0x01], &no_lengths()).unwrap(),
            UdsResponse::Reset {
                reset_type: 1,
                power_down_time: None
            }
        );
        assert!(r.decode_response(&[0x51], &no_lengths()).is_err());
        let raw = UdsRequest::Raw(vec![0x22, 0xF1, 0x90]);
        assert_eq!(
            raw.decode_response(&[0x62, 0xF1, 0x90, 1], &no_lengths())
                .unwrap(),
            UdsResponse::Raw(vec![0x62, 0xF1, 0x90, 1])
        );
    }
}
