//! Subcommand implementations.

pub mod agent;
pub mod can;
pub mod server;
pub mod sse;
