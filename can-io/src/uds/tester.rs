//! The UDS tester: [`UdsClient`] plus one ISO-TP endpoint per ECU, sans-IO over frames
//! ([`UdsTesterCore`]) and async over a bus ([`UdsTester`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::UdsError;
use super::client::{Answer, EcuAnswer, UdsClient, UdsEvent, UdsStats, UdsTiming};
use super::service::{UdsRequest, UdsResponse};
use crate::error::Error;
use crate::frame::{CanFrame, CanId};
use crate::isotp::driver::{BusDriver, now};
use crate::isotp::{
    Addressing, FrameMachine, IsoTpConfig, IsoTpEndpoint, IsoTpEvent, IsoTpStats, Side,
};
use crate::transport::CanBus;

/// Whom a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// One ECU, by its request identifier (`0x7E0`).
    Ecu(CanId),
    /// Every ECU at once: one single frame on the functional identifier, answers from each.
    Functional,
}

/// A UDS tester over frames: routes each ECU's frames to its own ISO-TP endpoint, sends
/// functional requests as single frames, and feeds the [`UdsClient`]. A [`FrameMachine`]:
/// drive it with [`UdsTester`] or step it by hand with virtual time.
#[derive(Debug)]
pub struct UdsTesterCore {
    client: UdsClient,
    links: Vec<IsoTpEndpoint>,
    functional: Option<IsoTpConfig>,
    out: VecDeque<CanFrame>,
    sending: Option<usize>,
}

impl UdsTesterCore {
    /// A tester for the ECUs in `links` (each an ISO-TP configuration whose transmit identifier
    /// is the ECU's request identifier), with `functional` the configuration for functional
    /// requests (its transmit identifier, e.g. `0x7DF`).
    pub fn new(
        links: Vec<IsoTpConfig>,
        functional: Option<IsoTpConfig>,
        timing: UdsTiming,
    ) -> Result<Self, UdsError> {
        let links = links
            .into_iter()
            .map(IsoTpEndpoint::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(UdsError::Transfer)?;
        Ok(UdsTesterCore {
            client: UdsClient::new(timing),
            links,
            functional,
            out: VecDeque::new(),
            sending: None,
        })
    }

    /// The OBD-II layout on 11-bit identifiers: functional `0x7DF`, ECUs `0x7E0`–`0x7E7`
    /// answering on `0x7E8`–`0x7EF`; classic CAN, padding `0xCC`.
    pub fn obd(timing: UdsTiming) -> Result<Self, UdsError> {
        let cfg = |tx, rx| {
            Addressing::normal(tx, rx)
                .map(IsoTpConfig::new)
                .map_err(UdsError::Transfer)
        };
        let links = (0..8)
            .map(|i| cfg(0x7E0 + i, 0x7E8 + i))
            .collect::<Result<Vec<_>, _>>()?;
        // The functional configuration only ever sends; its receive identifier is unused.
        Self::new(links, Some(cfg(0x7DF, 0x7DF)?), timing)
    }

    /// The client's counters.
    pub fn stats(&self) -> UdsStats {
        self.client.stats()
    }

    /// The ISO-TP counters of the link to the ECU with request identifier `ecu`.
    pub fn link_stats(&self, ecu: CanId) -> Option<IsoTpStats> {
        self.links
            .iter()
            .find(|l| l.config().addressing.tx_id() == ecu)
            .map(|l| l.stats())
    }

    /// Start a request. Errors: one is outstanding ([`UdsError::Busy`]), an unknown ECU, no
    /// functional configuration, a functional request longer than a single frame.
    pub fn request(
        &mut self,
        target: Target,
        request: &[u8],
        now: Instant,
    ) -> Result<(), UdsError> {
        if !self.client.is_idle() {
            return Err(UdsError::Busy);
        }
        match target {
            Target::Ecu(id) => {
                let i = self
                    .links
                    .iter()
                    .position(|l| l.config().addressing.tx_id() == id)
                    .ok_or_else(|| UdsError::InvalidRequest {
                        reason: format!("no ECU with request identifier {id}"),
                    })?;
                self.client.begin(request, &[], false)?;
                if let Err(e) = self.links[i].send(request, now) {
                    self.client.abandon();
                    return Err(UdsError::Transfer(e));
                }
                self.sending = Some(i);
            }
            Target::Functional => {
                let cfg = self
                    .functional
                    .as_ref()
                    .ok_or_else(|| UdsError::InvalidRequest {
                        reason: "no functional address configured".into(),
                    })?;
                let frame = cfg.single_frame(request).map_err(UdsError::Transfer)?;
                let expected: Vec<CanId> = self
                    .links
                    .iter()
                    .map(|l| l.config().addressing.rx_id())
                    .collect();
                self.client.begin(request, &expected, true)?;
                self.out.push_back(frame);
            }
        }
        Ok(())
    }

    /// Drop an outstanding request without waiting for it (after a cancelled call).
    pub fn abandon(&mut self) {
        self.client.abandon();
        self.out.clear();
        self.sending = None;
    }

    /// The next event of the request.
    pub fn poll_event(&mut self) -> Option<UdsEvent> {
        self.client.poll_event()
    }

    /// Hand every link's ISO-TP events to the client.
    fn pump(&mut self, now: Instant) {
        for (i, link) in self.links.iter_mut().enumerate() {
            let responder = link.config().addressing.rx_id();
            while let Some(ev) = link.poll_event() {
                match ev {
                    IsoTpEvent::Received(m) => self.client.handle_response(responder, &m, now),
                    IsoTpEvent::FirstFrame { .. } => {
                        self.client.handle_response_started(responder, now)
                    }
                    IsoTpEvent::Sent => {
                        if self.sending == Some(i) {
                            self.sending = None;
                            self.client.request_sent(now);
                        }
                    }
                    IsoTpEvent::Error(e) if e.aborts_transfer() => match e.side() {
                        Some(Side::Tx) if self.sending == Some(i) => {
                            self.sending = None;
                            self.client.request_failed(e);
                        }
                        _ => self.client.handle_response_failed(responder, e, now),
                    },
                    IsoTpEvent::Error(e) => {
                        tracing::debug!(%responder, error = %e, "ignored ISO-TP frame")
                    }
                }
            }
        }
    }
}

impl FrameMachine for UdsTesterCore {
    fn handle_frame(&mut self, frame: &CanFrame, now: Instant) -> bool {
        let mut mine = false;
        for link in &mut self.links {
            mine |= link.handle_frame(frame, now);
        }
        self.pump(now);
        mine
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<CanFrame> {
        if let Some(f) = self.out.pop_front() {
            self.client.request_sent(now);
            return Some(f);
        }
        let frame = self.links.iter_mut().find_map(|l| l.poll_transmit(now));
        self.pump(now);
        frame
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.links
            .iter()
            .filter_map(|l| l.poll_timeout())
            .chain(self.client.poll_timeout())
            .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        for l in &mut self.links {
            l.handle_timeout(now);
        }
        self.pump(now);
        self.client.handle_timeout(now);
    }

    fn handle_transmit_timeout(&mut self, frame: &CanFrame, now: Instant) {
        let id = frame.id();
        match self
            .links
            .iter_mut()
            .find(|l| Some(l.config().addressing.tx_id()) == id)
        {
            Some(link) => link.handle_transmit_timeout(frame),
            None => self
                .client
                .request_failed(crate::isotp::IsoTpError::Timeout {
                    timer: crate::isotp::Timer::NAs,
                }),
        }
        self.pump(now);
    }
}

/// A UDS tester that owns a bus and the clock.
///
/// ```no_run
/// # async fn demo() -> Result<(), can_io::Error> {
/// use can_io::transport::virtual_bus::{OverflowPolicy, VirtualBus};
/// use can_io::uds::{Target, UdsRequest, UdsResponse, UdsTester, UdsTesterCore, UdsTiming};
///
/// let bus = VirtualBus::new();
/// let port = bus.port("tester", 1024, OverflowPolicy::DropNewest);
/// let mut tester = UdsTester::new(port, UdsTesterCore::obd(UdsTiming::default())?);
/// let ecu = can_io::CanId::standard(0x7E0)?;
/// let request = UdsRequest::ReadDtcByStatusMask { status_mask: 0xFF };
/// if let UdsResponse::Dtcs { dtcs, .. } = tester.request_decoded(ecu, &request, &Default::default()).await? {
///     for d in dtcs {
///         println!("{} status 0x{:02X} {:?}", d.dtc.sae_code(), d.status.0, d.dtc.description());
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct UdsTester<B> {
    driver: BusDriver<B>,
    core: UdsTesterCore,
}

impl<B: CanBus> UdsTester<B> {
    /// A tester on `bus`; records it sends are named `can0`.
    pub fn new(bus: B, core: UdsTesterCore) -> Self {
        let n_as = core
            .links
            .first()
            .map(|l| l.config().timeouts.n_as)
            .unwrap_or(std::time::Duration::from_secs(1));
        UdsTester {
            driver: BusDriver::new(bus, "can0", n_as),
            core,
        }
    }

    /// Name the channel of the records this tester sends.
    pub fn with_channel_name(mut self, name: &str) -> Self {
        self.driver.set_channel(name);
        self
    }

    /// The sans-IO core (counters, links).
    pub fn core(&self) -> &UdsTesterCore {
        &self.core
    }

    /// Send `request` to one ECU and wait for its final answer: the positive response (empty
    /// when the request suppressed it), or [`UdsError::Negative`] / [`UdsError::Timeout`] /
    /// [`UdsError::Transfer`] inside [`Error::Uds`].
    pub async fn request(&mut self, ecu: CanId, request: &[u8]) -> Result<Vec<u8>, Error> {
        let sid = request.first().copied().unwrap_or(0);
        let answers = self
            .run(Target::Ecu(ecu), request, &mut |_: &EcuAnswer| {})
            .await?;
        match answers.into_iter().next().map(|a| a.answer) {
            Some(Answer::Positive(m)) => Ok(m),
            Some(Answer::Negative(nrc)) => Err(UdsError::Negative { sid, nrc }.into()),
            None => Ok(Vec::new()),
        }
    }

    /// [`request`](Self::request) with a typed request and decoded answer (`did_lengths` for
    /// ReadDataByIdentifier of several DIDs).
    pub async fn request_decoded(
        &mut self,
        ecu: CanId,
        request: &UdsRequest,
        did_lengths: &BTreeMap<u16, usize>,
    ) -> Result<UdsResponse, Error> {
        let bytes = request.encode()?;
        let answer = self.request(ecu, &bytes).await?;
        if answer.is_empty() {
            return Ok(UdsResponse::TesterPresent);
        }
        Ok(request.decode_response(&answer, did_lengths)?)
    }

    /// Send `request` functionally and collect every ECU's final answer, calling `on_answer`
    /// as each arrives (to stream them on). Ends when every known ECU has answered or P2 (P2*
    /// for ECUs that answered pending) has run out; no answer at all is
    /// [`UdsError::Timeout`].
    pub async fn request_functional(
        &mut self,
        request: &[u8],
        mut on_answer: impl FnMut(&EcuAnswer) + Send,
    ) -> Result<Vec<EcuAnswer>, Error> {
        self.run(Target::Functional, request, &mut on_answer).await
    }

    async fn run(
        &mut self,
        target: Target,
        request: &[u8],
        on_answer: &mut (dyn FnMut(&EcuAnswer) + Send),
    ) -> Result<Vec<EcuAnswer>, Error> {
        // A previous call that was cancelled may have left its request outstanding.
        self.core.abandon();
        self.core.request(target, request, now())?;
        let mut answers = Vec::new();
        let result = loop {
            if let Err(e) = self.driver.transmit(&mut self.core).await {
                break Err(e);
            }
            while let Some(ev) = self.core.poll_event() {
                match ev {
                    UdsEvent::Answer(a) => {
                        on_answer(&a);
                        answers.push(a);
                    }
                    UdsEvent::Pending { responder } => {
                        tracing::debug!(%responder, "response pending");
                    }
                    UdsEvent::Finished(r) => return r.map(|()| answers).map_err(Error::from),
                }
            }
            if let Err(e) = self.driver.wait(&mut self.core).await {
                break Err(e);
            }
        };
        self.core.abandon();
        result
    }
}
