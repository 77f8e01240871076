//! # tether-collector
//!
//! The telemetry uplink's two roles as a library (`docs/protocols/telemetry.md`):
//!
//! * [`vehicle`] — a CAN listener turns frames into records (`frame`, and `signals` with a DBC
//!   file via `can-dbc`), stores them durably first (SQLite, `DB_PATH`), serves the dashboard
//!   API, and an uplink manager streams what the remote has not acknowledged over
//!   `/ws/telemetry/upload`, reporting its status on the CAN bus ([`status`]).
//! * [`remote`] — the upload endpoint for many vehicles at once (identity from the credential,
//!   refused before the upgrade when bad), records stored with `(vehicle, seq)` dedup and
//!   acknowledged only after the commit, and a read API with a live stream per vehicle.
//! * [`config`] — the environment names of the original collector (`ROLE`, `DB_PATH`,
//!   `REMOTE_ENDPOINT_URL`, …) and the optional YAML file of `tether collector --config`.
//!
//! Both are built on `relay_core::uplink`: the vehicle's store is a [`StreamOutbox`] driven by
//! an [`UplinkSession`]; the remote's store is an [`UplinkInbox`]. This crate owns the
//! transport (WebSocket, HTTP, CAN) and the record encoding, not the store-and-forward rules.
//!
//! What it does not do: no TLS of its own (put `wss://` behind a proxy or use the `wss` URL
//! support of tungstenite), no Redis or PostgreSQL inbox (SQLite only), no signal handling or
//! log setup (the `tether` binary does both), and it never drops a record without counting it.
//!
//! [`StreamOutbox`]: relay_core::uplink::StreamOutbox
//! [`UplinkSession`]: relay_core::uplink::UplinkSession
//! [`UplinkInbox`]: relay_core::uplink::UplinkInbox

pub mod config;
pub mod dbc;
pub mod http;
pub mod record;
pub mod status;
pub mod vehicle;
pub mod wire;
