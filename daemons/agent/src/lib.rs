//! # tether-agent
//!
//! The edge side of Tether: roles switched on by sections of the agent's config file.
//!
//! * [`dongle`] — REMP dongles on a UDP port ↔ the server's `/ws/data` group relay.
//! * [`metering`] — usage records from Redis queues to a control plane.
//! * [`dlq`] — the metering role's dead-letter queues as a tool.
//! * [`config`] — the agent file: one optional section per role.

pub mod config;
pub mod dlq;
pub mod dongle;
pub mod metering;
