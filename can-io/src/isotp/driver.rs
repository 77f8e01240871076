//! The async glue shared by every frame-level state machine: it owns the bus and the clock,
//! puts due frames on the bus (under the N_As deadline), and feeds back frames and timeouts.

use std::time::{Duration, Instant};

use super::FrameMachine;
use crate::error::Error;
use crate::frame::{CanRecord, Channel, Direction};
use crate::transport::{CanBus, now_ns};

/// The current time on tokio's clock (virtual under `tokio::time::pause`).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A bus and the name its records carry.
#[derive(Debug)]
pub(crate) struct BusDriver<B> {
    pub(crate) bus: B,
    channel: Channel,
    n_as: Duration,
}

impl<B: CanBus> BusDriver<B> {
    pub(crate) fn new(bus: B, channel: &str, n_as: Duration) -> Self {
        BusDriver {
            bus,
            channel: Channel::from(channel),
            n_as,
        }
    }

    pub(crate) fn set_channel(&mut self, channel: &str) {
        self.channel = Channel::from(channel);
    }

    /// Put every frame that is due on the bus, then flush. A frame the bus does not take within
    /// N_As is reported to the machine, which aborts that transfer.
    pub(crate) async fn transmit<M: FrameMachine>(&mut self, m: &mut M) -> Result<(), Error> {
        let mut sent = false;
        while let Some(frame) = m.poll_transmit(now()) {
            let record = CanRecord::new(now_ns(), self.channel.clone(), Direction::Tx, frame);
            match tokio::time::timeout(self.n_as, self.bus.send(&record)).await {
                Ok(r) => r?,
                Err(_) => m.handle_transmit_timeout(&frame, now()),
            }
            sent = true;
        }
        if sent {
            self.bus.flush().await?;
        }
        Ok(())
    }

    /// Wait for one input — a frame from the bus, or the machine's next deadline — and feed it
    /// in. A bus that has ended is [`Error::Closed`].
    pub(crate) async fn wait<M: FrameMachine>(&mut self, m: &mut M) -> Result<(), Error> {
        let deadline = m.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = self.bus.recv() => match r? {
                Some(record) => {
                    m.handle_frame(&record.frame, now());
                    Ok(())
                }
                None => Err(Error::Closed { transport: "CAN bus" }),
            },
            () = sleep => {
                m.handle_timeout(now());
                Ok(())
            }
        }
    }
}
