//! Subcommand implementations.

pub mod agent;
pub mod can;
pub mod collector;
pub mod demo;
pub mod server;
pub mod sse;
