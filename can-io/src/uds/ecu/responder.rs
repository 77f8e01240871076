//! [`EcuResponder`]: one simulated ECU's answers, on whole UDS messages.

use std::collections::{BTreeMap, VecDeque};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use automotive_diag::uds::UdsCommand;

use super::profile::EcuSpec;
use crate::uds::dtc::DtcRecord;
use crate::uds::service::{ALL_DTCS, REPORT_DTC_BY_STATUS_MASK, SUPPRESS_POSITIVE};
use crate::uds::{NEGATIVE_RESPONSE, Nrc, POSITIVE_OFFSET, UdsError};

/// How often a busy ECU repeats response-pending, well inside a tester's P2* (5 s).
const PENDING_REPEAT: Duration = Duration::from_secs(2);

/// The status bits this simulator supports (all of them).
const STATUS_AVAILABILITY_MASK: u8 = 0xFF;

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EcuStats {
    /// Requests taken in.
    pub requests: u64,
    /// Positive answers sent.
    pub positive: u64,
    /// Negative answers sent (response-pending not included).
    pub negative: u64,
    /// Response-pending answers sent.
    pub pending: u64,
    /// Requests that got no answer (suppressed positive, or an NRC suppressed for a functional
    /// request).
    pub silent: u64,
}

#[derive(Debug)]
struct Delayed {
    answer: Vec<u8>,
    due: Instant,
    next_pending: Instant,
    sid: u8,
}

/// One ECU's behaviour: it answers ReadDTCInformation `0x19 0x02` (and `0x01`, the count),
/// ClearDiagnosticInformation `0x14`, ReadDataByIdentifier `0x22`, DiagnosticSessionControl
/// `0x10`, ECUReset `0x11` and TesterPresent `0x3E` from its profile, and everything else with
/// serviceNotSupported. With `response_pending_ms`, each answer is preceded by
/// response-pending (`0x78`), repeated every 2 s, and a request in the meantime gets
/// busyRepeatRequest. Functional requests follow ISO 14229-1's suppression rules.
///
/// Sans-IO: [`handle_request`](Self::handle_request), then [`poll_response`](Self::poll_response);
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct EcuResponder {
    name: String,
    dtcs: Vec<DtcRecord>,
    dids: BTreeMap<u16, Vec<u8>>,
    delay: Duration,
    session: u8,
    busy: Option<Delayed>,
    out: VecDeque<Vec<u8>>,
    stats: EcuStats,
}

impl EcuResponder {
    /// An ECU as its profile entry describes it; refuses bad DTC or DID entries.
    pub fn new(spec: &EcuSpec) -> Result<Self, UdsError> {
        let at = |e: UdsError| UdsError::InvalidProfile {
            reason: format!("ECU {:?}: {}", spec.name, e),
        };
        let dtcs = spec
            .dtcs
            .iter()
            .map(|d| d.record().map_err(at))
            .collect::<Result<_, _>>()?;
        let dids = spec
            .dids
            .iter()
            .map(|(did, v)| Ok((*did, v.bytes().map_err(at)?)))
            .collect::<Result<_, UdsError>>()?;
        Ok(EcuResponder {
            name: spec.name.clone(),
            dtcs,
            dids,
            delay: Duration::from_millis(spec.response_pending_ms),
            session: 1,
            busy: None,
            out: VecDeque::new(),
            stats: EcuStats::default(),
        })
    }

    /// The ECU's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stored DTCs now.
    pub fn dtcs(&self) -> &[DtcRecord] {
        &self.dtcs
    }

    /// The active diagnostic session.
    pub fn session(&self) -> u8 {
        self.session
    }

    /// Counters so far.
    pub fn stats(&self) -> EcuStats {
        self.stats
    }

    /// Take in a request (`functional`: it came on the functional identifier).
    pub fn handle_request(&mut self, request: &[u8], functional: bool, now: Instant) {
        let Some(&sid) = request.first() else {
            return;
        };
        self.stats.requests += 1;
        if self.busy.is_some() {
            self.push(negative(sid, Nrc::BUSY_REPEAT_REQUEST));
            return;
        }
        let answer = match self.answer(request) {
            Ok(positive) => {
                if suppress_bit(request) {
                    None
                } else {
                    Some(positive)
                }
            }
            Err(nrc) if functional && nrc.suppressed_when_functional() => None,
            Err(nrc) => Some(negative(sid, nrc)),
        };
        let Some(answer) = answer else {
            self.stats.silent += 1;
            return;
        };
        if self.delay.is_zero() {
            self.push(answer);
        } else {
            self.push(negative(sid, Nrc::RESPONSE_PENDING));
            self.busy = Some(Delayed {
                answer,
                due: now + self.delay,
                next_pending: now + PENDING_REPEAT,
                sid,
            });
        }
    }

    fn push(&mut self, message: Vec<u8>) {
        match message.as_slice() {
            [NEGATIVE_RESPONSE, _, 0x78] => self.stats.pending += 1,
            [NEGATIVE_RESPONSE, ..] => self.stats.negative += 1,
            _ => self.stats.positive += 1,
        }
        self.out.push_back(message);
    }

    /// The next message to send.
    pub fn poll_response(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// When a delayed answer (or a repeated response-pending) is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.busy.as_ref().map(|b| b.due.min(b.next_pending))
    }

    /// Send what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(b) = self.busy.as_mut() else {
            return;
        };
        if b.due <= now {
            if let Some(b) = self.busy.take() {
                self.push(b.answer);
            }
        } else if b.next_pending <= now {
            b.next_pending = now + PENDING_REPEAT;
            let sid = b.sid;
            self.push(negative(sid, Nrc::RESPONSE_PENDING));
        }
    }

    /// The positive answer to `request`, or the NRC to refuse it with.
    fn answer(&mut self, request: &[u8]) -> Result<Vec<u8>, Nrc> {
        let sid = request[0];
        let mut positive = vec![sid.wrapping_add(POSITIVE_OFFSET)];
        let args = &request[1..];
        match UdsCommand::from_repr(sid) {
            Some(UdsCommand::ReadDTCInformation) => {
                let [sub, mask] = args else {
                    return Err(Nrc::INCORRECT_LENGTH);
                };
                let matching = self.dtcs.iter().filter(|d| d.status.0 & mask != 0);
                match sub & 0x7F {
                    0x01 => {
                        let n = matching.count().min(usize::from(u16::MAX)) as u16;
                        // Format identifier 0x01: ISO 14229-1 DTC format.
                        positive.extend_from_slice(&[0x01, STATUS_AVAILABILITY_MASK, 0x01]);
                        positive.extend_from_slice(&n.to_be_bytes());
                    }
                    REPORT_DTC_BY_STATUS_MASK => {
                        positive.extend_from_slice(&[
                            REPORT_DTC_BY_STATUS_MASK,
                            STATUS_AVAILABILITY_MASK,
                        ]);
                        for d in matching {
                            positive.extend_from_slice(&d.dtc.to_bytes());
                            positive.push(d.status.0);
                        }
                    }
                    _ => return Err(Nrc::SUB_FUNCTION_NOT_SUPPORTED),
                }
            }
            Some(UdsCommand::ClearDiagnosticInformation) => {
                let [a, b, c] = args else {
                    return Err(Nrc::INCORRECT_LENGTH);
                };
                let group = u32::from_be_bytes([0, *a, *b, *c]);
                if group == ALL_DTCS {
                    self.dtcs.clear();
                } else if self.dtcs.iter().any(|d| d.dtc.raw() == group) {
                    self.dtcs.retain(|d| d.dtc.raw() != group);
                } else {
                    return Err(Nrc::REQUEST_OUT_OF_RANGE);
                }
            }
            Some(UdsCommand::ReadDataByIdentifier) => {
                if args.is_empty() || !args.len().is_multiple_of(2) {
                    return Err(Nrc::INCORRECT_LENGTH);
                }
                let mut any = false;
                for pair in args.chunks_exact(2) {
                    let did = u16::from_be_bytes([pair[0], pair[1]]);
                    if let Some(v) = self.dids.get(&did) {
                        positive.extend_from_slice(pair);
                        positive.extend_from_slice(v);
                        any = true;
                    }
                }
                // ISO 14229-1: requestOutOfRange when none of the DIDs is supported; the
                // supported ones are answered otherwise.
                if !any {
                    return Err(Nrc::REQUEST_OUT_OF_RANGE);
                }
            }
            Some(UdsCommand::DiagnosticSessionControl) => {
                let session = sub_function(args, 1..=3)?;
                self.session = session;
                // P2server_max 50 ms, P2*server_max 5000 ms (in units of 10 ms).
                positive.extend_from_slice(&[session, 0x00, 0x32, 0x01, 0xF4]);
            }
            Some(UdsCommand::ECUReset) => {
                let reset_type = sub_function(args, 1..=3)?;
                self.session = 1;
                positive.push(reset_type);
            }
            Some(UdsCommand::TesterPresent) => {
                sub_function(args, 0..=0)?;
                positive.push(0);
            }
            _ => return Err(Nrc::SERVICE_NOT_SUPPORTED),
        }
        Ok(positive)
    }
}

/// The sub-function of a request whose only argument is one, without the suppress bit;
/// refused unless it is in `supported`.
fn sub_function(args: &[u8], supported: RangeInclusive<u8>) -> Result<u8, Nrc> {
    let [sub] = args else {
        return Err(Nrc::INCORRECT_LENGTH);
    };
    let sub = sub & !SUPPRESS_POSITIVE;
    if !supported.contains(&sub) {
        return Err(Nrc::SUB_FUNCTION_NOT_SUPPORTED);
    }
    Ok(sub)
}

fn negative(sid: u8, nrc: Nrc) -> Vec<u8> {
    vec![NEGATIVE_RESPONSE, sid, nrc.0]
}

/// The suppress bit, for the services this ECU answers that have a sub-function.
fn suppress_bit(request: &[u8]) -> bool {
    matches!(request, [0x10 | 0x11 | 0x3E, sub, ..] if sub & SUPPRESS_POSITIVE != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uds::ecu::profile::EcuSpec;

    /// The engine of the shared test vehicle, answering response-pending for `pending_ms`.
    fn engine(pending_ms: u64) -> EcuSpec {
        let mut engine = crate::uds::ecu::engine_abs().ecus.remove(0);
        engine.response_pending_ms = pending_ms;
        engine
    }

    fn ask(e: &mut EcuResponder, req: &[u8]) -> Vec<u8> {
        e.handle_request(req, false, Instant::now());
        e.poll_response().unwrap_or_default()
    }

    #[test]
    fn answers_from_the_profile() {
        let mut e = EcuResponder::new(&engine(0)).unwrap();
        assert_eq!(
            ask(&mut e, &[0x19, 0x02, 0xFF]),
            [
                0x59, 0x02, 0xFF, 0x04, 0x20, 0x00, 0x2F, 0xC1, 0x00, 0x00, 0x09, 0x03, 0x00, 0x00,
                0x08, 0x01, 0x71, 0x00, 0x24, 0x12, 0x34, 0x16, 0x01
            ]
        );
        assert_eq!(
            ask(&mut e, &[0x19, 0x02, 0x20]),
            [
                0x59, 0x02, 0xFF, 0x04, 0x20, 0x00, 0x2F, 0x01, 0x71, 0x00, 0x24
            ]
        );
        assert_eq!(
            ask(&mut e, &[0x19, 0x01, 0xFF]),
            [0x59, 0x01, 0xFF, 0x01, 0x00, 0x05]
        );
        assert_eq!(ask(&mut e, &[0x19, 0x42, 0xFF]), [0x7F, 0x19, 0x12]);
        assert_eq!(ask(&mut e, &[0x19, 0x02]), [0x7F, 0x19, 0x13]);
        let vin = ask(&mut e, &[0x22, 0xF1, 0x90]);
        assert_eq!(&vin[..3], &[0x62, 0xF1, 0x90]);
        assert_eq!(&vin[3..], b"1HGCM82633A004352");
        assert_eq!(ask(&mut e, &[0x22, 0x12, 0x34]), [0x7F, 0x22, 0x31]);
        assert_eq!(ask(&mut e, &[0x22, 0x12]), [0x7F, 0x22, 0x13]);
        assert_eq!(
            ask(&mut e, &[0x10, 0x03]),
            [0x50, 0x03, 0x00, 0x32, 0x01, 0xF4]
        );
        assert_eq!(e.session(), 3);
        assert_eq!(ask(&mut e, &[0x11, 0x01]), [0x51, 0x01]);
        assert_eq!(e.session(), 1);
        assert_eq!(ask(&mut e, &[0x3E, 0x00]), [0x7E, 0x00]);
        assert_eq!(ask(&mut e, &[0x3E, 0x80]), Vec::<u8>::new());
        assert_eq!(ask(&mut e, &[0x27, 0x01]), [0x7F, 0x27, 0x11]);
        assert_eq!(ask(&mut e, &[0x14, 0x00, 0x00, 0x01]), [0x7F, 0x14, 0x31]);
        assert_eq!(ask(&mut e, &[0x14, 0xC1, 0x00, 0x00]), [0x54]);
        assert_eq!(e.dtcs().len(), 4);
        assert_eq!(ask(&mut e, &[0x14, 0xFF, 0xFF, 0xFF]), [0x54]);
        assert!(e.dtcs().is_empty());
        assert_eq!(ask(&mut e, &[0x19, 0x02, 0xFF]), [0x59, 0x02, 0xFF]);
        assert_eq!(e.stats().silent, 1);
    }

    #[test]
    fn functional_requests_suppress_some_nrcs() {
        let mut e = EcuResponder::new(&engine(0)).unwrap();
        let now = Instant::now();
        e.handle_request(&[0x22, 0x12, 0x34], true, now);
        assert_eq!(e.poll_response(), None);
        e.handle_request(&[0x19, 0x02], true, now);
        assert_eq!(e.poll_response(), Some(vec![0x7F, 0x19, 0x13]));
    }

    #[test]
    fn response_pending_then_the_answer() {
        let mut e = EcuResponder::new(&engine(4500)).unwrap();
        let t0 = Instant::now();
        e.handle_request(&[0x22, 0xF1, 0x90], false, t0);
        assert_eq!(e.poll_response(), Some(vec![0x7F, 0x22, 0x78]));
        e.handle_request(&[0x3E, 0x00], false, t0);
        assert_eq!(e.poll_response(), Some(vec![0x7F, 0x3E, 0x21]));
        assert_eq!(e.poll_timeout(), Some(t0 + PENDING_REPEAT));
        e.handle_timeout(t0 + PENDING_REPEAT);
        assert_eq!(e.poll_response(), Some(vec![0x7F, 0x22, 0x78]));
        e.handle_timeout(t0 + Duration::from_millis(4000));
        assert_eq!(e.poll_response(), Some(vec![0x7F, 0x22, 0x78]));
        e.handle_timeout(t0 + Duration::from_millis(4499));
        assert_eq!(e.poll_response(), None);
        e.handle_timeout(t0 + Duration::from_millis(4500));
        assert_eq!(e.poll_response().map(|r| r[0]), Some(0x62));
        assert_eq!(e.poll_timeout(), None);
        assert_eq!(e.stats().pending, 3);
    }
}
