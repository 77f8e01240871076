//! The sans-IO group relay engine.
//!
//! A *group* pairs side A and side B; each direction (`a_to_b`, `b_to_a`) is a sequenced
//! stream in the [`crate::log::StreamLog`]. [`RelayEngine`] holds every group of a server
//! instance and decides, from inputs and the current time only:
//!
//! * what to append to the log (producer frames, deduplicated by seq) and when to acknowledge
//!   the producer (only after the log confirmed durability);
//! * what to deliver to each consumer, in seq order, from memory (live) or from log reads
//!   (replay, rate-limited and scheduled round-robin so a large replay never starves live
//!   streams), with explicit gaps for what retention removed;
//! * the group mode (`inactive` / `active` / `degraded`) and buffer-pressure events.
//!
//! It does no I/O: the storage interaction is a queue of [`StorageRequest`]s that a driver
//! executes against a real `StreamLog` and whose results it feeds back. The daemon is that
//! driver in production; the simulation tests (`tests/engine_sim.rs`) drive it with the
//! memory log over a virtual link and clock.
//!
//! What it does not do: it does not own sockets or timers, does not run retention itself (the
//! driver calls `StreamLog::trim` and reports the result with
//! [`RelayEngine::handle_trimmed`]), and does not persist the mode (it emits
//! [`RelayOutput::ModeChanged`] for the driver to persist and publish).

mod io;
mod relay;
mod stream;
mod types;

pub use io::{
    DeliverySource, EngineConfig, GroupSnapshot, GroupStatus, RelayOutput, SideWelcome,
    StorageRequest, StreamSnapshot,
};
pub use relay::RelayEngine;
pub use types::{Direction, GroupBacklog, GroupId, GroupMode, Side};
