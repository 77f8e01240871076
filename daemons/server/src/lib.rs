//! # `tether server` — library side
//!
//! The REST API of the server: users and their tokens, agents, dongles, relay groups with their
//! mode and audit log, plus `/healthz`, `/readyz` and `/metrics`; and the data plane
//! (`/ws/data`), where dongle agents relay CAN frames between the two sides of a group. Records
//! live in SQLite (`<data-dir>/tether.db`, WAL), see `docs/storage-server.md`; relay streams
//! live in `<data-dir>/streams.db` (SQLite) or, with a Redis URL, in Redis Streams. The API is
//! described in `docs/api.md`, the data-plane protocol in `docs/protocols/data-plane.md`.
//!
//! Layout: [`config`] (YAML + flags), [`store`] (SQLite records, ownership enforced in every
//! query), [`token`] (random tokens, SHA-256 hashes, constant-time checks), [`group_mode`] (the
//! one pure function deciding a group's mode), [`routes`] (axum handlers and JSON errors),
//! [`metrics`] (Prometheus families this code updates), [`dataplane`] (the relay engine's
//! driver and the `/ws/data` connections).
//!
//! [`spawn`] runs everything. [`spawn_with`] runs the REST API alone with a caller-provided
//! [`group_mode::BacklogProbe`] (tests of the API's mode logic); its `/ws/data` answers 503. The data
//! plane reports to the API through [`state::AppState::set_dongle_online`],
//! [`state::AppState::refresh_group_mode`], [`state::AppState::mark_dongle_seen`] and
//! [`state::AppState::set_agent_online`], and follows REST activations and deletions through
//! [`state::AppState::subscribe_mode_changes`] and
//! [`state::AppState::subscribe_group_deletions`].

pub mod config;
pub mod console;
pub mod dataplane;
mod error;
pub mod group_mode;
pub mod http;
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

use axum::Extension;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::ServerConfig;
pub use error::ServerError;

use dataplane::{BacklogCache, DataPlane, DataPlaneTasks};
use group_mode::BacklogProbe;
use listener::CountingListener;
use metrics::{RelayMetrics, ServerMetrics};
use state::AppState;
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
    data_plane: Option<DataPlaneTasks>,
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
        // Open console streams never end by themselves: end them so connections can close.
        self.state.console().close();
        if let Some(stop) = self.stop.take() {
            // The receiver is gone only if the server already ended; joining reports why.
            let _ = stop.send(());
        }
        // Upgraded WebSockets are not tracked by the HTTP graceful shutdown: the data plane
        // closes its connections itself (and flushes consumer cursors).
        if let Some(data_plane) = self.data_plane.take() {
            data_plane.shutdown().await;
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

/// Opens the data directory and the relay stream log, binds the listen address and starts
/// serving the REST API and the data plane in the background.
pub async fn spawn(config: ServerConfig) -> Result<RunningServer, ServerError> {
    start(config, None).await
}

/// Like [`spawn`] but without the data plane: the REST API with the caller's backlog probe.
/// `/ws/data` answers 503.
pub async fn spawn_with(
    config: ServerConfig,
    backlog: Arc<dyn BacklogProbe>,
) -> Result<RunningServer, ServerError> {
    start(config, Some(backlog)).await
}

async fn start(
    config: ServerConfig,
    probe: Option<Arc<dyn BacklogProbe>>,
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
    let mut metrics = ServerMetrics::new();
    let relay = match probe {
        Some(probe) => Err(probe),
        None => Ok((
            RelayMetrics::register(&mut metrics),
            Arc::new(BacklogCache::default()),
            dataplane::open_stream_log(&config).await?,
        )),
    };
    let metrics = Arc::new(metrics);
    let probe: Arc<dyn BacklogProbe> = match &relay {
        Ok((_, cache, _)) => cache.clone(),
        Err(probe) => Arc::clone(probe),
    };
    let console = console::Console::start(
        config.console.clone(),
        config.redis_url.as_deref(),
        &metrics,
    )?;
    let state = AppState::new(Arc::new(store), Arc::clone(&metrics), probe, redis, console);
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
    let mut app = routes::router(state.clone(), config.max_body_bytes);
    let mut data_plane = None;
    if let Ok((relay_metrics, cache, log)) = relay {
        // Presence recorded by an earlier process is stale until agents reconnect.
        let changes = state
            .store()
            .call(|store| store.reset_presence(chrono::Utc::now()))
            .await?;
        state.publish_mode_changes(changes);
        let (plane, tasks): (DataPlane, DataPlaneTasks) = DataPlane::start(
            state.clone(),
            log,
            config.relay.clone(),
            relay_metrics,
            cache,
        );
        app = app.layer(Extension(plane));
        data_plane = Some(tasks);
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let listener = CountingListener::new(tcp, metrics);
    let task = tokio::spawn(serve::serve(
        listener,
        app,
        config.header_read_timeout,
        stopped,
    ));
    tracing::info!(
        %addr,
        data_dir = %config.data_dir.display(),
        redis = config.redis_url.is_some(),
        data_plane = data_plane.is_some(),
        "server listening"
    );
    Ok(RunningServer {
        addr,
        state,
        stop: Some(stop),
        task,
        data_plane,
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
