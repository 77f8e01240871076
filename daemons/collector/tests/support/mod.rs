//! Shared by the collector's integration tests: a standalone remote on a loopback port.

#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use relay_core::sqlite::Durability;
use tether_collector::config::VehicleKey;
use tether_collector::remote::{KeyAuth, Remote};
use tokio::task::JoinHandle;

/// A remote with its inbox at `db`, `keys` for the vehicles and `reader` as the read key,
/// served on a free loopback port until the handle is aborted.
pub(crate) async fn spawn_remote(db: &Path, keys: Vec<VehicleKey>) -> (SocketAddr, JoinHandle<()>) {
    let auth = Arc::new(KeyAuth::new(keys, Some("reader".into())));
    let remote = Remote::open(db, Durability::Full, auth).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let router = remote.router();
    let server = tokio::spawn(async move { axum::serve(tcp, router).await.unwrap() });
    (addr, server)
}
