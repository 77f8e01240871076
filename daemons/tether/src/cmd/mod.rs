//! Subcommand implementations.

pub mod agent;
pub mod can;
pub mod collector;
pub mod demo;
mod demo_metering;
pub mod server;
pub mod sse;
