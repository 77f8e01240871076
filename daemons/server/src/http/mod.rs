//! HTTP plumbing shared by every handler — the REST routes, the console streams and the data
//! plane's `/ws/data`: bearer-token authentication of users and agents ([`UserAuth`],
//! [`AgentAuth`]), the JSON error shape ([`ApiError`]: `{"error": {"code", "message"}}`) and
//! the extractors whose rejections use it ([`ApiJson`], [`IdPath`]), and the cross-origin
//! policy ([`cors::OriginPolicy`]: the CORS layer and browser WebSockets' origin check), and
//! the limits per token and per agent ([`limits::Limits`]: `429`/`503` with `Retry-After`).
//!
//! It sits low in the crate: it knows the records store and the error type, nothing else, so
//! routes, console and data plane can all use it without importing each other.

mod auth;
pub mod cors;
mod error;
pub(crate) mod hyper_errors;
pub mod limits;

pub use auth::{AgentAuth, UserAuth};
pub(crate) use auth::{bearer_token, user_from_header_or_param};
pub use error::{ApiError, ApiJson, IdPath};
