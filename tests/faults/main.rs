//! The fault-injection suite (issue 18): the group relay under faults a deployment meets, each
//! checked end to end with real processes — `tether server`, two `tether agent`s with the dongle
//! role, two `tether can dongle`s replaying halves of the shipped capture both ways — by the
//! e2e harness's `check_relayed`: what the sending dongle's agent had acknowledged arrives at
//! the other dongle exactly once and in order (nothing lost, doubled or reordered).
//!
//! - [`redis_restart`]: the server's own Redis (a private `redis-server` on a free port, AOF on,
//!   never the shared 6379 one) killed with SIGKILL mid-relay and started again on its files.
//! - [`metering_redis`]: the same kind of Redis killed while a metering agent drains usage
//!   records from it to a control-plane double: every record arrives.
//! - [`disk_full`]: the server's data directory on an 16 MiB tmpfs (the server runs in
//!   `unshare -rm`, its own mount namespace) filled up mid-relay: the server refuses frames
//!   with an error (counted in `tether_server_relay_storage_errors_total`) and takes them again
//!   once space returns.
//! - [`clock_step`]: the server's wall clock stepped back one hour mid-relay (libfaketime, with
//!   the monotonic clock left alone as a real step leaves it).
//! - [`lossy_link`]: each agent reaches the server through a userspace proxy that delays every
//!   chunk by 200 ms and holds back 10 % of them for a retransmission time, as TCP shows packet
//!   loss to the application (this kernel has no `sch_netem`, so `tc netem` is unavailable).
//!
//! Run by `scripts/test.sh` as its own suite; each test is bounded by the harness's patience
//! and the capture's length at speed 8 (about 10 s of traffic).

#[path = "../e2e/support/mod.rs"]
mod support;

#[path = "../../daemons/tether/tests/metering_support/mod.rs"]
mod metering_support;

mod clock_step;
mod disk_full;
mod fault_support;
mod lossy_link;
mod metering_redis;
mod redis_restart;
