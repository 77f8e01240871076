//! Tether inside another Rust service: the host owns the listener and its own routes, and mounts
//! Tether's whole server (REST API, `/ws/data`, consoles, health and metrics) under `/tether`.
//!
//! ```text
//! cargo run -p tether-server --example embed_server -- 127.0.0.1:8080 ./embed-data
//! curl http://127.0.0.1:8080/               # the host's own route
//! curl http://127.0.0.1:8080/tether/healthz # Tether's
//! ```
//!
//! Agents then use `server_url: http://127.0.0.1:8080/tether`. Ctrl-C stops the host, which
//! first shuts Tether down (console streams and data-plane connections end), then lets open
//! requests finish.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::routing::get;
use tether_server::{ServerBuilder, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:8080").parse()?;
    let data_dir = PathBuf::from(args.next().unwrap_or_else(|| "./embed-data".to_owned()));
    tether_runtime::logging::init_json_logs("info");

    // `listen` in the config is only used by `Server::spawn`; here the host binds.
    let tether = ServerBuilder::new(ServerConfig::new(listen, data_dir))
        .build()
        .await?;
    let app = Router::new()
        .route(
            "/",
            get(|| async { "the host service; Tether is under /tether\n" }),
        )
        .nest("/tether", tether.router());

    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("host listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            tether.shutdown().await;
        })
        .await?;
    Ok(())
}
