//! [`IsoTpChannel`]: an [`IsoTpEndpoint`] driven over a [`CanBus`].

use std::collections::VecDeque;

use super::driver::{BusDriver, now};
use super::{IsoTpConfig, IsoTpEndpoint, IsoTpError, IsoTpEvent, IsoTpStats, Side};
use crate::error::Error;
use crate::transport::CanBus;

/// An ISO-TP link over a bus: `send(&[u8]).await`, `recv().await`. It owns the bus and the
/// clock (tokio's, so `tokio::time::pause` gives virtual time), and drives the endpoint while
/// either call waits.
///
/// Frames on other identifiers are dropped (counted in [`IsoTpStats::frames_ignored`]): give
/// the channel a bus of its own, or use the UDS tester, which shares one bus between several
/// links. Both calls are cancel-safe as long as the bus's `recv` is (all of this crate's are);
/// a cancelled `send` leaves its message going, and the next `send` finishes it first.
#[derive(Debug)]
pub struct IsoTpChannel<B> {
    driver: BusDriver<B>,
    ep: IsoTpEndpoint,
    inbox: VecDeque<Vec<u8>>,
    rx_errors: VecDeque<IsoTpError>,
    tx_outcome: Option<Result<(), IsoTpError>>,
}

impl<B: CanBus> IsoTpChannel<B> {
    /// A channel on `bus`; the records it sends are named `can0` (see
    /// [`with_channel_name`](Self::with_channel_name)).
    pub fn new(bus: B, cfg: IsoTpConfig) -> Result<Self, Error> {
        let n_as = cfg.timeouts.n_as;
        Ok(IsoTpChannel {
            ep: IsoTpEndpoint::new(cfg)?,
            driver: BusDriver::new(bus, "can0", n_as),
            inbox: VecDeque::new(),
            rx_errors: VecDeque::new(),
            tx_outcome: None,
        })
    }

    /// Name the channel of the records this channel sends (e.g. the dongle's `can1`).
    pub fn with_channel_name(mut self, name: &str) -> Self {
        self.driver.set_channel(name);
        self
    }

    /// The endpoint's counters.
    pub fn stats(&self) -> IsoTpStats {
        self.ep.stats()
    }

    /// The bus.
    pub fn bus(&self) -> &B {
        &self.driver.bus
    }

    /// Send one message and wait until its last frame is on the bus. Errors: the transfer's
    /// ([`IsoTpError::Timeout`] N_Bs, [`IsoTpError::Overflow`], …) or the bus's.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), Error> {
        if self.ep.is_sending() {
            // A cancelled call left its message going: finish it first.
            if let Err(e) = self.finish_send().await? {
                tracing::debug!(error = %e, "abandoned ISO-TP transmission failed");
            }
        }
        self.tx_outcome = None;
        self.ep.send(payload, now())?;
        Ok(self.finish_send().await??)
    }

    /// Drive the endpoint until the message being sent is out (or failed).
    async fn finish_send(&mut self) -> Result<Result<(), IsoTpError>, Error> {
        loop {
            self.driver.transmit(&mut self.ep).await?;
            self.drain_events();
            if let Some(outcome) = self.tx_outcome.take() {
                return Ok(outcome);
            }
            self.driver.wait(&mut self.ep).await?;
        }
    }

    /// The next message. A reception that was aborted (wrong sequence number, N_Cr, …) is
    /// returned as its error; call again for the next message. Frames that were merely ignored
    /// are only counted.
    pub async fn recv(&mut self) -> Result<Vec<u8>, Error> {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(m);
            }
            if let Some(e) = self.rx_errors.pop_front() {
                return Err(e.into());
            }
            self.driver.transmit(&mut self.ep).await?;
            self.drain_events();
            if !self.inbox.is_empty() || !self.rx_errors.is_empty() {
                continue;
            }
            self.driver.wait(&mut self.ep).await?;
        }
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.ep.poll_event() {
            match ev {
                IsoTpEvent::Received(m) => self.inbox.push_back(m),
                IsoTpEvent::Sent => self.tx_outcome = Some(Ok(())),
                IsoTpEvent::FirstFrame { .. } => {}
                IsoTpEvent::Error(e) => match e.side() {
                    Some(Side::Tx) if e.aborts_transfer() => self.tx_outcome = Some(Err(e)),
                    Some(Side::Rx) if e.aborts_transfer() => self.rx_errors.push_back(e),
                    _ => tracing::debug!(error = %e, "ignored ISO-TP frame"),
                },
            }
        }
    }
}
