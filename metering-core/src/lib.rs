//! # metering-core
//!
//! Reliable usage metering: a speech API server pushes usage records, session lifecycle events
//! and quota-refresh requests onto Redis lists; this crate moves each of them to the control
//! plane's REST API so that the control plane sees every item exactly once (at-least-once
//! delivery plus idempotency keys the control plane deduplicates on).
//!
//! - [`queue`]: the reliable-queue pattern — `BLMOVE` into a per-process-start processing list,
//!   a lease key, a reaper for dead instances, delivery counting and dead-letter queues. Every
//!   multi-key step is one Lua script.
//! - [`message`]: pure validation, idempotency keys and enrichment.
//! - [`backoff`] and [`breaker`]: pure retry timing and the circuit breaker (time passed in).
//! - [`client`]: the control-plane HTTP client (retries, `Retry-After`, duplicate = success).
//! - [`consumer`]: the async shell that ties these together.
//! - [`commands`]: verification of signed control-plane commands.
//! - [`metrics`]: Prometheus metrics.
//!
//! What it does not do: it computes no credits or prices (the control plane does), it does not
//! parse configuration files, serve HTTP, install signal handlers or poll for commands — the
//! `tether agent` daemon does that around this crate. It does not make Redis durable: run Redis
//! with `maxmemory-policy noeviction` and AOF (the agent warns when it is not).

pub mod backoff;
pub mod breaker;
pub mod client;
pub mod commands;
pub mod consumer;
mod error;
pub mod message;
pub mod metrics;
pub mod queue;

pub use error::{MeteringError, Result};
