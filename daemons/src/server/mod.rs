//! # `tether server` — library side
//!
//! The REST API of the server: users and their tokens, agents, dongles, relay groups with their
//! mode and audit log, plus `/healthz`, `/readyz` and `/metrics`. Records live in SQLite
//! (`<data-dir>/tether.db`, WAL), see `docs/storage-server.md`; the API is described in
//! `docs/api.md`.
//!
//! Layout: [`config`] (YAML + flags), [`store`] (SQLite records, ownership enforced in every
//! query), [`token`] (random tokens, SHA-256 hashes, constant-time checks), [`group_mode`] (the
//! one pure function deciding a group's mode), [`routes`] (axum handlers and JSON errors),
//! [`metrics`] (Prometheus families this code updates).
//!
//! What this module does not do (yet): no data-plane WebSocket (`/ws/data`), no SSE consoles,
//! and no Redis-backed streams. A configured Redis URL is validated and checked by `/readyz`
//! only. Until the data plane is wired in, group backlogs are zero ([`state::NoDataPlane`]) and
//! dongles stay offline. The data plane plugs in through [`spawn_with`] (its
//! [`state::BacklogProbe`]) and calls [`state::AppState::set_dongle_online`],
//! [`state::AppState::refresh_group_mode`] and [`store::Store::mark_dongle_seen`]; consoles turn
//! [`state::AppState::subscribe_mode_changes`] into `group_state` events.

pub mod config;
mod error;
pub mod group_mode;
mod listener;
pub mod metrics;
pub mod routes;
mod serve;
pub mod state;
pub mod store;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::ServerConfig;
pub use error::ServerError;

use listener::CountingListener;
use metrics::ServerMetrics;
use state::{AppState, BacklogProbe, NoDataPlane};
use store::Store;

/// How long a graceful shutdown waits for open requests before closing connections anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A server started with [`spawn`]: its address, state, and a way to stop it.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// The address the server is listening on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (store, metrics), for in-process callers such as the data plane.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting connections, lets open requests finish (up to a grace period) and waits
    /// for the server to end.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            // The receiver is gone only if the server already ended; joining reports why.
            let _ = stop.send(());
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(joined) => joined.map_err(|err| ServerError::TaskFailed {
                task: "server",
                detail: err.to_string(),
            }),
            Err(_) => {
                tracing::warn!("graceful shutdown timed out; closing remaining connections");
                self.task.abort();
                Ok(())
            }
        }
    }
}

/// Opens the data directory, binds the listen address and starts serving in the background.
pub async fn spawn(config: ServerConfig) -> Result<RunningServer, ServerError> {
    spawn_with(config, Arc::new(NoDataPlane)).await
}

/// Like [`spawn`], with the data plane's backlog probe.
pub async fn spawn_with(
    config: ServerConfig,
    backlog: Arc<dyn BacklogProbe>,
) -> Result<RunningServer, ServerError> {
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open_in(&data_dir))
        .await
        .map_err(|err| ServerError::TaskFailed {
            task: "storage",
            detail: err.to_string(),
        })??;
    let redis = config
        .redis_url
        .as_deref()
        .map(redis::Client::open)
        .transpose()
        .map_err(|err| ServerError::RedisUrl {
            detail: err.to_string(),
        })?;
    let metrics = Arc::new(ServerMetrics::new());
    let state = AppState::new(Arc::new(store), Arc::clone(&metrics), backlog, redis);
    let tcp = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen.to_string(),
            source,
        })?;
    let addr = tcp.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen.to_string(),
        source,
    })?;
    let app = routes::router(state.clone(), config.max_body_bytes);
    let (stop, stopped) = oneshot::channel::<()>();
    let listener = CountingListener::new(tcp, metrics);
    let task = tokio::spawn(serve::serve(
        listener,
        app,
        config.header_read_timeout,
        stopped,
    ));
    tracing::info!(%addr, data_dir = %config.data_dir.display(), redis = config.redis_url.is_some(), "server listening");
    Ok(RunningServer {
        addr,
        state,
        stop: Some(stop),
        task,
    })
}

/// Runs a server until `shutdown` completes, then stops it gracefully. `on_listening` is called
/// once with the bound address (the CLI prints it).
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let server = spawn(config).await?;
    on_listening(server.local_addr());
    shutdown.await;
    tracing::info!("shutting down");
    server.shutdown().await
}
