//! # tether-server
//!
//! Tether's cloud side as a library: the REST API (users and their tokens, agents, dongles,
//! relay groups with their mode and audit log, vehicles and their commands), `/healthz`, `/readyz` and `/metrics`; the data
//! plane (`/ws/data`), where dongle agents relay CAN frames between the two sides of a group;
//! the live console (Server-Sent Event streams of dongles and groups); and the telemetry
//! receiver (`/ws/telemetry/upload` with agent tokens, `/api/v1/telemetry/vehicles…` with user
//! tokens, `<data-dir>/telemetry.db`; see [`telemetry`] and `docs/protocols/telemetry.md`). Records live in
//! SQLite (`<data-dir>/tether.db`, WAL), see `docs/storage-server.md`; relay streams live in
//! `<data-dir>/streams.db` (SQLite) or, with a Redis URL, in Redis Streams. The API is described
//! in `docs/api.md`, the data-plane protocol in `docs/protocols/data-plane.md`, the console in
//! `docs/sse.md`.
//!
//! ## Running it
//! [`spawn`] builds everything from a [`ServerConfig`] and serves it on `config.listen` (with a
//! header-read timeout and connection metrics); [`run`] does the same until a stop future
//! completes (what `tether server` calls). To serve Tether from **another Rust service**, build
//! it with [`ServerBuilder`] and mount [`Server::router`] under any path prefix of your own
//! axum app, on your own listener; call [`Server::shutdown`] when your server stops (it ends
//! console streams and data-plane connections, which an HTTP graceful shutdown does not track).
//!
//! ```
//! use axum::Router;
//! use axum::routing::get;
//! use tether_server::{ServerBuilder, ServerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let data_dir = dir.path().join("tether");
//! let tether = ServerBuilder::new(ServerConfig::new("127.0.0.1:0".parse()?, data_dir))
//!     .build()
//!     .await?;
//! // Tether's routes under /tether, next to the host's own.
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "host service" }))
//!     .nest("/tether", tether.router());
//! # drop(app);
//! // … serve `app` on your listener; when it stops:
//! tether.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Layout
//! Modules, lowest first; each imports only modules listed before it:
//! [`token`] (random tokens, SHA-256 hashes, constant-time checks), [`group_mode`] (the relay
//! engine's mode rule and backlog as the server reads them, [`group_mode::RelayProbe`]), [`metrics`]
//! (Prometheus families), `error` ([`ServerError`]) → [`store`] (records in SQLite or PostgreSQL, ownership
//! enforced in every query) → [`http`] (bearer auth, [`http::ApiError`], id extractors) →
//! [`console`] (the live console and its stream handlers) → [`config`] (YAML + flags) →
//! [`state`] ([`state::AppState`], what handlers share) → [`dataplane`] (the relay engine's
//! driver and the `/ws/data` connections) → [`commands`] (vehicle commands: queues,
//! connectors, the response bus, the diagnostics channel of `/ws/data`) → [`routes`] (the
//! router: REST handlers, and the console's and data plane's endpoints mounted, and [`ui`],
//! the web page at `/`). A new feature with HTTP endpoints (the
//! commands service, the telemetry receiver) is a module beside [`dataplane`], its REST
//! handlers a file in `routes/` registered in [`routes::router`], its tasks started in
//! [`ServerBuilder::build`].
//!
//! The data plane reports to the API through [`state::AppState::set_dongle_online`],
//! [`state::AppState::refresh_group_mode`], [`state::AppState::mark_dongle_seen`] and
//! [`state::AppState::set_agent_online`], and follows REST activations and deletions through
//! [`state::AppState::subscribe_mode_changes`] and
//! [`state::AppState::subscribe_group_deletions`].
//!
//! ## What it does not do
//! It installs no signal handlers and no log subscriber (the `tether` binary does, with
//! `tether-runtime`), parses no command line, and holds no relay or event-stream logic of its
//! own: ordering, replay, retention and group modes are `relay-core`'s engine, event streams
//! `sse-core`'s hub. TLS is left to a proxy or to the embedding service.

pub mod cache;
pub mod commands;
pub mod config;
pub mod console;
pub mod dataplane;
mod error;
pub mod group_mode;
pub mod http;
mod listener;
pub mod metering;
pub mod metrics;
pub mod routes;
mod serve;
mod setting;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::ServerConfig;
pub use error::ServerError;

use dataplane::{DataPlane, DataPlaneTasks, RelayStatusCache};
use group_mode::RelayProbe;
use listener::CountingListener;
use metrics::{RelayMetrics, ServerMetrics};
use state::AppState;
use store::Store;

/// How long a graceful shutdown waits for open requests before closing connections anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A server started with [`spawn`] or [`Server::spawn`]: its address, state, and a way to stop
/// it.
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
            Ok(joined) => joined.map_err(ServerError::task_failed("server")),
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
    ServerBuilder::new(config).build().await?.spawn().await
}

/// Like [`spawn`] but without the data plane: the REST API with the caller's relay probe.
/// `/ws/data` answers 503.
pub async fn spawn_with(
    config: ServerConfig,
    relay: Arc<dyn RelayProbe>,
) -> Result<RunningServer, ServerError> {
    ServerBuilder::new(config)
        .without_data_plane(relay)
        .build()
        .await?
        .spawn()
        .await
}

/// Builds a [`Server`] from its configuration.
#[derive(Debug)]
pub struct ServerBuilder {
    config: ServerConfig,
    probe: Option<Arc<dyn RelayProbe>>,
}

impl ServerBuilder {
    /// A builder for the whole server: REST API, console and data plane.
    pub fn new(config: ServerConfig) -> ServerBuilder {
        ServerBuilder {
            config,
            probe: None,
        }
    }

    /// Leaves the data plane out: the REST API and the console run with `probe` as the relay
    /// engine's status of groups (tests of the API's mode logic), and `/ws/data` answers 503.
    pub fn without_data_plane(mut self, probe: Arc<dyn RelayProbe>) -> ServerBuilder {
        self.probe = Some(probe);
        self
    }

    /// Opens the records store in the data directory and the relay stream log (SQLite now;
    /// Redis is connected in the background), starts the console and the data plane, and builds
    /// the router. Nothing listens yet: serve [`Server::router`] yourself or call
    /// [`Server::spawn`].
    pub async fn build(self) -> Result<Server, ServerError> {
        let ServerBuilder { config, probe } = self;
        let data_dir = config.data_dir.clone();
        let database_url = config.database_url.clone();
        let store = store::blocking("storage", move || {
            Store::open_configured(&data_dir, database_url.as_deref())
        })
        .await?;
        let redis = config
            .redis_url
            .as_deref()
            .map(redis::Client::open)
            .transpose()
            .map_err(|err| ServerError::RedisUrl {
                detail: err.to_string(),
            })?;
        let mut metrics = ServerMetrics::new();
        let limits = http::limits::Limits::new(config.limits, metrics.registry_mut());
        let command_metrics = commands::CommandMetrics::register(&mut metrics);
        let relay = match probe {
            Some(probe) => Err(probe),
            None => Ok((
                RelayMetrics::register(&mut metrics),
                Arc::new(RelayStatusCache::default()),
                dataplane::open_stream_log(&config).await?,
            )),
        };
        let metrics = Arc::new(metrics);
        let probe: Arc<dyn RelayProbe> = match &relay {
            Ok((_, cache, _)) => cache.clone(),
            Err(probe) => Arc::clone(probe),
        };
        let console = console::Console::start(
            config.console.clone(),
            config.redis_url.as_deref(),
            &metrics,
        )?;
        let state = AppState::new(Arc::new(store), Arc::clone(&metrics), probe, redis, console);
        let metering_dir = config.data_dir.clone();
        let metering = store::blocking("metering storage", move || {
            metering::MeteringStore::open_in(&metering_dir)
        })
        .await?;
        let telemetry = tether_collector::remote::Remote::open(
            &config.data_dir.join("telemetry.db"),
            relay_core::sqlite::Durability::Full,
            Arc::new(telemetry::StoreAuth::new(Arc::clone(state.store()))),
        )
        .map_err(|err| ServerError::TaskFailed {
            task: "telemetry inbox",
            detail: format!("{err:#}"),
        })?;
        let mut router = routes::router(state.clone(), config.max_body_bytes)
            .layer(Extension(metering::Metering(Arc::new(metering))))
            .merge(tether_collector::remote::upload_router(telemetry.clone()))
            .merge(tether_collector::remote::read_router(telemetry));
        let mut data_plane = None;
        let mut plane_handle = None;
        if let Ok((relay_metrics, cache, log)) = relay {
            // Presence recorded by an earlier process is stale until agents reconnect (in a
            // cluster: only what no live instance holds).
            dataplane::reset_presence(&state, &log).await?;
            let (plane, tasks): (DataPlane, DataPlaneTasks) = DataPlane::start(
                state.clone(),
                log,
                config.relay.clone(),
                relay_metrics,
                cache,
            );
            router = router.layer(Extension(plane.clone()));
            data_plane = Some(tasks);
            plane_handle = Some(plane);
        }
        let commands =
            commands::Commands::start(&config.commands, &state, command_metrics, plane_handle)
                .await?;
        router = router.layer(Extension(commands)).layer(Extension(limits));
        // The origin policy for WebSocket handlers' origin check, and the CORS layer outermost
        // so it answers preflights before any other layer sees them.
        router = router.layer(Extension(config.cors.clone()));
        if let Some(cors) = config.cors.layer() {
            router = router.layer(cors);
        }
        Ok(Server {
            config,
            router,
            state,
            data_plane,
        })
    }
}

/// A built server, not listening: its router, its shared state and its background tasks.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    router: Router,
    state: AppState,
    data_plane: Option<DataPlaneTasks>,
}

impl Server {
    /// Every route of the server (`/healthz`, `/readyz`, `/metrics`, `/ws/data`, `/api/v1/…`)
    /// with its layers (JSON errors, body limit, request metrics and tracing). Mount it at the
    /// root or under a prefix (`Router::nest("/tether", …)`) of your own router and serve that
    /// on your listener. Your listener's connections are not counted in
    /// `tether_server_connections_*` and get no header-read timeout from Tether; both come with
    /// [`Server::spawn`].
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The shared state (store, metrics, console), for in-process callers.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Ends what an HTTP graceful shutdown does not track: open console streams (which never
    /// end by themselves) and data-plane WebSockets (closed by the data plane, which flushes
    /// consumer cursors). Call it when the service serving [`Server::router`] starts to stop,
    /// e.g. first thing in its graceful-shutdown future.
    pub async fn shutdown(mut self) {
        self.state.console().close();
        if let Some(data_plane) = self.data_plane.take() {
            data_plane.shutdown().await;
        }
    }

    /// Binds `config.listen` and serves the router there in the background, with a header-read
    /// timeout and connection metrics. On a bind failure the server is shut down.
    pub async fn spawn(self) -> Result<RunningServer, ServerError> {
        let listen = self.config.listen;
        let bound = match TcpListener::bind(listen).await {
            Ok(tcp) => tcp.local_addr().map(|addr| (tcp, addr)),
            Err(err) => Err(err),
        };
        let (tcp, addr) = match bound {
            Ok(bound) => bound,
            Err(source) => {
                self.shutdown().await;
                return Err(ServerError::Bind {
                    addr: listen.to_string(),
                    source,
                });
            }
        };
        let Server {
            config,
            router,
            state,
            data_plane,
        } = self;
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = CountingListener::new(tcp, Arc::clone(state.metrics()));
        let task = tokio::spawn(serve::serve(
            listener,
            router,
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
