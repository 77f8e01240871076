//! The accept loop: hyper connections with a header-read timeout and graceful shutdown.
//!
//! `axum::serve` sets no timer, so a client that opens a connection and never sends a complete
//! request head would hold it (and a file descriptor) forever. This loop is the same
//! hyper-util machinery with `header_read_timeout` switched on — it also closes idle keep-alive
//! connections that send nothing — and upgrades enabled for the WebSockets to come.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::oneshot;
use tower::ServiceExt;

use crate::listener::CountingListener;

/// Serves `app` on `listener` until `stop` fires (or its sender is dropped), then stops
/// accepting, asks every open connection to finish its current request, and waits for them.
pub(crate) async fn serve(
    mut listener: CountingListener,
    app: Router,
    header_read_timeout: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => break,
        };
        let service = app
            .clone()
            .map_request(|request: hyper::Request<Incoming>| request.map(Body::new));
        let service = TowerToHyperService::new(service);
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .enable_connect_protocol();
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%remote, %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
