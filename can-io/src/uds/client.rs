//! [`UdsClient`]: the request/response rules of a UDS tester, on whole messages.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::service::suppresses_positive_response;
use super::{NEGATIVE_RESPONSE, Nrc, POSITIVE_OFFSET, UdsError};
use crate::frame::CanId;
use crate::isotp::IsoTpError;

/// How long a tester waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdsTiming {
    /// Wait for the first answer after the request is sent (P2client).
    pub p2: Duration,
    /// Wait after a response-pending answer (P2*client).
    pub p2_star: Duration,
}

impl Default for UdsTiming {
    /// 1 s and 5 s: generous against an ECU's 50 ms / 5 s, for buses reached through a dongle.
    fn default() -> Self {
        UdsTiming {
            p2: Duration::from_secs(1),
            p2_star: Duration::from_secs(5),
        }
    }
}

/// One ECU's final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A positive response, whole (service id + 0x40 first).
    Positive(Vec<u8>),
    /// `0x7F SID NRC`.
    Negative(Nrc),
}

/// A final answer and who gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcuAnswer {
    /// The identifier the answer came on (the ECU's response identifier).
    pub responder: CanId,
    /// The answer.
    pub answer: Answer,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdsEvent {
    /// An ECU answered response-pending (`0x78`); its wait is now P2*.
    Pending {
        /// Who.
        responder: CanId,
    },
    /// An ECU's final answer.
    Answer(EcuAnswer),
    /// The request is over: every expected ECU answered, or the wait ran out (then `Ok` if at
    /// least one did, else [`UdsError::Timeout`]), or the answer's transfer failed.
    Finished(Result<(), UdsError>),
}

/// Counters.
/// Its serde form (the field names) is the `stats()` dict of the Python bindings: renaming a
/// field renames a Python key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UdsStats {
    /// Requests started.
    pub requests: u64,
    /// Positive answers.
    pub positive: u64,
    /// Negative answers (response-pending not included).
    pub negative: u64,
    /// Response-pending answers.
    pub pending: u64,
    /// Requests that got no answer at all.
    pub timeouts: u64,
    /// Messages that matched no outstanding request (another service, a late answer, a
    /// duplicate) and were dropped.
    pub unmatched: u64,
    /// Answers whose ISO-TP transfer failed.
    pub failed_transfers: u64,
}

#[derive(Debug)]
struct Responder {
    id: CanId,
    /// Deadline after a response-pending answer; `None` while a multi-frame answer is arriving.
    deadline: Option<Instant>,
    done: bool,
}

#[derive(Debug)]
struct Exchange {
    sid: u8,
    /// Finish at the first final answer (a physical request).
    single: bool,
    expected: Vec<CanId>,
    suppressed: bool,
    /// P2 deadline, once the request is on the bus.
    p2_deadline: Option<Instant>,
    /// P2 has run out (kept so `poll_timeout` stops reporting it).
    p2_passed: bool,
    responders: Vec<Responder>,
    answers: usize,
    last_wait: Duration,
}

/// The tester's side of UDS on whole messages: a sans-IO state machine.
///
/// Call order: [`begin`](Self::begin) with the request; send it (the caller owns ISO-TP) and
/// call [`request_sent`](Self::request_sent) once it is on the bus, which starts P2; feed every
/// message from an ECU to [`handle_response`](Self::handle_response) (and the start of a
/// multi-frame one to [`handle_response_started`](Self::handle_response_started)); call
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout); read
/// [`poll_event`](Self::poll_event) until [`UdsEvent::Finished`].
///
/// A response belongs to the request when its first byte is the service id + `0x40`, or it is
/// `0x7F SID NRC` with the request's service id; anything else is dropped and counted. A
/// request whose sub-function has the suppress-positive bit set expects no answer and finishes
/// as soon as it is sent.
#[derive(Debug, Default)]
pub struct UdsClient {
    timing: UdsTiming,
    exchange: Option<Exchange>,
    events: VecDeque<UdsEvent>,
    stats: UdsStats,
}

impl UdsClient {
    /// An idle client.
    pub fn new(timing: UdsTiming) -> Self {
        UdsClient {
            timing,
            ..Default::default()
        }
    }

    /// The timing.
    pub fn timing(&self) -> UdsTiming {
        self.timing
    }

    /// Counters so far.
    pub fn stats(&self) -> UdsStats {
        self.stats
    }

    /// Whether no request is outstanding.
    pub fn is_idle(&self) -> bool {
        self.exchange.is_none()
    }

    /// Start a request. With `expected` empty it is physical: the first final answer ends it.
    /// With ECUs listed it is functional: it ends when all of them have answered, or when the
    /// wait runs out (answers from ECUs not listed are taken too).
    pub fn begin(
        &mut self,
        request: &[u8],
        expected: &[CanId],
        functional: bool,
    ) -> Result<(), UdsError> {
        if self.exchange.is_some() {
            return Err(UdsError::Busy);
        }
        let Some(&sid) = request.first() else {
            return Err(UdsError::InvalidRequest {
                reason: "empty request".into(),
            });
        };
        self.stats.requests += 1;
        self.exchange = Some(Exchange {
            sid,
            single: !functional,
            expected: expected.to_vec(),
            suppressed: suppresses_positive_response(request),
            p2_deadline: None,
            p2_passed: false,
            responders: Vec::new(),
            answers: 0,
            last_wait: self.timing.p2,
        });
        Ok(())
    }

    /// Forget the outstanding request, if any, without an event.
    pub fn abandon(&mut self) {
        self.exchange = None;
        self.events.clear();
    }

    /// The request is on the bus: P2 starts (or, if it asked for no answer, it is over).
    pub fn request_sent(&mut self, now: Instant) {
        let Some(x) = self.exchange.as_mut() else {
            return;
        };
        if x.suppressed {
            self.finish(Ok(()));
            return;
        }
        x.p2_deadline = Some(now + self.timing.p2);
    }

    /// The request could not be sent.
    pub fn request_failed(&mut self, error: IsoTpError) {
        if self.exchange.is_some() {
            self.finish(Err(UdsError::Transfer(error)));
        }
    }

    /// A multi-frame message from `responder` has started: its P2 is met, and ISO-TP's N_Cr
    /// guards the rest.
    pub fn handle_response_started(&mut self, responder: CanId, _now: Instant) {
        if let Some(x) = self.exchange.as_mut()
            && x.p2_deadline.is_some()
        {
            let r = responder_mut(x, responder);
            if !r.done {
                r.deadline = None;
            }
        }
    }

    /// The message from `responder` that had started failed to arrive whole.
    pub fn handle_response_failed(&mut self, responder: CanId, error: IsoTpError, now: Instant) {
        let Some(x) = self.exchange.as_mut() else {
            return;
        };
        let Some(r) = x
            .responders
            .iter_mut()
            .find(|r| r.id == responder && !r.done)
        else {
            return;
        };
        self.stats.failed_transfers += 1;
        if x.single {
            self.finish(Err(UdsError::Transfer(error)));
        } else {
            // That ECU is out; the others may still answer.
            r.done = true;
            self.check_done(now);
        }
    }

    /// A whole message from `responder`.
    pub fn handle_response(&mut self, responder: CanId, message: &[u8], now: Instant) {
        let Some(x) = self.exchange.as_mut() else {
            self.stats.unmatched += 1;
            return;
        };
        let answer = match message {
            [NEGATIVE_RESPONSE, sid, nrc, ..] if *sid == x.sid => Answer::Negative(Nrc(*nrc)),
            [first, ..] if *first == x.sid.wrapping_add(POSITIVE_OFFSET) => {
                Answer::Positive(message.to_vec())
            }
            _ => {
                self.stats.unmatched += 1;
                return;
            }
        };
        if x.p2_deadline.is_none() && !x.suppressed {
            // An answer before we saw our request leave: take it, and run P2 from now.
            x.p2_deadline = Some(now + self.timing.p2);
        }
        let p2_star = self.timing.p2_star;
        let r = responder_mut(x, responder);
        if r.done {
            self.stats.unmatched += 1;
            return;
        }
        if answer == Answer::Negative(Nrc::RESPONSE_PENDING) {
            r.deadline = Some(now + p2_star);
            x.last_wait = p2_star;
            self.stats.pending += 1;
            self.events.push_back(UdsEvent::Pending { responder });
            return;
        }
        r.done = true;
        x.answers += 1;
        match answer {
            Answer::Positive(_) => self.stats.positive += 1,
            Answer::Negative(_) => self.stats.negative += 1,
        }
        self.events
            .push_back(UdsEvent::Answer(EcuAnswer { responder, answer }));
        if x.single {
            self.finish(Ok(()));
        } else {
            self.check_done(now);
        }
    }

    /// The next deadline: P2 for a first answer, P2* for an ECU that answered pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let x = self.exchange.as_ref()?;
        let pending = x
            .responders
            .iter()
            .filter(|r| !r.done)
            .filter_map(|r| r.deadline);
        pending.chain(x.p2_deadline.filter(|_| !x.p2_passed)).min()
    }

    /// Expire waits due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(x) = self.exchange.as_mut() else {
            return;
        };
        if x.p2_deadline.is_some_and(|d| d <= now) {
            x.p2_passed = true;
        }
        for r in &mut x.responders {
            if !r.done && r.deadline.is_some_and(|d| d <= now) {
                // Pending answered but the final answer never came.
                r.done = true;
            }
        }
        self.check_done(now);
    }

    fn check_done(&mut self, now: Instant) {
        let Some(x) = self.exchange.as_ref() else {
            return;
        };
        let all_expected = !x.expected.is_empty()
            && x.expected
                .iter()
                .all(|e| x.responders.iter().any(|r| r.id == *e && r.done));
        let waiting = x.responders.iter().any(|r| !r.done);
        let p2_over = x.p2_passed || x.p2_deadline.is_some_and(|d| d <= now);
        if all_expected || (p2_over && !waiting) {
            if x.answers > 0 {
                self.finish(Ok(()));
            } else {
                let (sid, waited) = (x.sid, x.last_wait);
                self.stats.timeouts += 1;
                self.finish(Err(UdsError::Timeout { sid, waited }));
            }
        }
    }

    fn finish(&mut self, outcome: Result<(), UdsError>) {
        self.exchange = None;
        self.events.push_back(UdsEvent::Finished(outcome));
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<UdsEvent> {
        self.events.pop_front()
    }
}

fn responder_mut(x: &mut Exchange, id: CanId) -> &mut Responder {
    if let Some(i) = x.responders.iter().position(|r| r.id == id) {
        return &mut x.responders[i];
    }
    x.responders.push(Responder {
        id,
        deadline: None,
        done: false,
    });
    let last = x.responders.len() - 1;
    &mut x.responders[last]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: u32) -> CanId {
        CanId::standard(raw).unwrap()
    }

    fn events(c: &mut UdsClient) -> Vec<UdsEvent> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    /// A client with the default timing that sent the physical `request` at the returned
    /// instant.
    fn physical(request: &[u8]) -> (UdsClient, Instant) {
        let t0 = Instant::now();
        let mut c = UdsClient::new(UdsTiming::default());
        c.begin(request, &[], false).unwrap();
        c.request_sent(t0);
        (c, t0)
    }

    #[test]
    fn physical_positive_answer() {
        let t0 = Instant::now();
        let mut c = UdsClient::new(UdsTiming::default());
        c.begin(&[0x22, 0xF1, 0x90], &[], false).unwrap();
        assert_eq!(c.begin(&[0x3E, 0], &[], false), Err(UdsError::Busy));
        c.request_sent(t0);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        // Another service's answer is not ours.
        c.handle_response(id(0x7E8), &[0x50, 0x01], t0);
        c.handle_response(id(0x7E8), &[0x62, 0xF1, 0x90, 0x41], t0);
        assert_eq!(
            events(&mut c),
            vec![
                UdsEvent::Answer(EcuAnswer {
                    responder: id(0x7E8),
                    answer: Answer::Positive(vec![0x62, 0xF1, 0x90, 0x41])
                }),
                UdsEvent::Finished(Ok(()))
            ]
        );
        assert!(c.is_idle());
        assert_eq!(c.stats().unmatched, 1);
    }

    #[test]
    fn pending_extends_to_p2_star_then_times_out() {
        let t0 = Instant::now();
        let timing = UdsTiming {
            p2: Duration::from_millis(50),
            p2_star: Duration::from_millis(500),
        };
        let mut c = UdsClient::new(timing);
        c.begin(&[0x14, 0xFF, 0xFF, 0xFF], &[], false).unwrap();
        c.request_sent(t0);
        c.handle_response(
            id(0x7E8),
            &[0x7F, 0x14, 0x78],
            t0 + Duration::from_millis(10),
        );
        let t1 = t0 + Duration::from_millis(60);
        c.handle_timeout(t1);
        assert_eq!(
            events(&mut c),
            vec![UdsEvent::Pending {
                responder: id(0x7E8)
            }]
        );
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(510)));
        c.handle_timeout(t0 + Duration::from_millis(510));
        assert_eq!(
            events(&mut c),
            vec![UdsEvent::Finished(Err(UdsError::Timeout {
                sid: 0x14,
                waited: Duration::from_millis(500)
            }))]
        );
        assert_eq!(c.stats().timeouts, 1);
    }

    #[test]
    fn negative_answer_and_plain_timeout() {
        let (mut c, t0) = physical(&[0x22, 0x12, 0x34]);
        c.handle_response(id(0x7E8), &[0x7F, 0x22, 0x31], t0);
        assert_eq!(
            events(&mut c)[0],
            UdsEvent::Answer(EcuAnswer {
                responder: id(0x7E8),
                answer: Answer::Negative(Nrc(0x31))
            })
        );
        c.begin(&[0x11, 0x01], &[], false).unwrap();
        c.request_sent(t0);
        c.handle_timeout(t0 + Duration::from_millis(999));
        assert!(events(&mut c).is_empty());
        c.handle_timeout(t0 + Duration::from_secs(1));
        assert!(matches!(
            events(&mut c)[..],
            [UdsEvent::Finished(Err(UdsError::Timeout { sid: 0x11, .. }))]
        ));
    }

    #[test]
    fn functional_collects_until_all_expected_or_p2() {
        let t0 = Instant::now();
        let mut c = UdsClient::new(UdsTiming::default());
        let ecus = [id(0x7E8), id(0x7E9)];
        c.begin(&[0x19, 0x02, 0xFF], &ecus, true).unwrap();
        c.request_sent(t0);
        c.handle_response(id(0x7E9), &[0x59, 0x02, 0xFF], t0);
        c.handle_response(id(0x7E9), &[0x59, 0x02, 0xFF], t0);
        c.handle_response_started(id(0x7E8), t0);
        // P2 passes while 0x7E8's long answer is still arriving: keep waiting.
        c.handle_timeout(t0 + Duration::from_secs(2));
        assert_eq!(events(&mut c).len(), 1);
        c.handle_response(id(0x7E8), &[0x59, 0x02, 0xFF, 0x04, 0x20, 0x00, 0x2F], t0);
        let ev = events(&mut c);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1], UdsEvent::Finished(Ok(())));
        assert_eq!(c.stats().unmatched, 1);

        // Only one of two answers: finished at P2 with what came.
        c.begin(&[0x19, 0x02, 0xFF], &ecus, true).unwrap();
        c.request_sent(t0);
        c.handle_response(id(0x7E8), &[0x59, 0x02, 0xFF], t0);
        c.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(events(&mut c).last(), Some(&UdsEvent::Finished(Ok(()))));
    }

    #[test]
    fn suppressed_positive_finishes_when_sent() {
        let (mut c, _) = physical(&[0x3E, 0x80]);
        assert_eq!(events(&mut c), vec![UdsEvent::Finished(Ok(()))]);
    }

    #[test]
    fn failed_transfer_fails_a_physical_request() {
        let (mut c, t0) = physical(&[0x19, 0x02, 0xFF]);
        c.handle_response_started(id(0x7E8), t0);
        c.handle_response_failed(
            id(0x7E8),
            IsoTpError::WrongSequenceNumber {
                expected: 2,
                got: 3,
            },
            t0,
        );
        assert!(matches!(
            events(&mut c)[..],
            [UdsEvent::Finished(Err(UdsError::Transfer(_)))]
        ));
    }
}
