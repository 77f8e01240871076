//! Full-jitter exponential backoff and `Retry-After` parsing: `tether-retry`'s, re-exported
//! under the names this crate always had.

pub use tether_retry::{FullJitter, RetryPolicy, parse_retry_after};
