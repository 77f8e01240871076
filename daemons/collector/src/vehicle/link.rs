//! The vehicle's WebSocket to the remote: connect (with the `API_KEY` as Bearer), wait for
//! `welcome`, then a writer task (batches from the driver, and — when the welcome `accepts`
//! `status` — the driver's latest uplink status on connect and whenever it changes) and a
//! reader task (acks and errors to the driver). Every event carries the connection's
//! generation, so the driver ignores events of a connection it already gave up.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::wire::{ACCEPTS_STATUS, RemoteMessage, UplinkStatus, VehicleMessage};

/// How long a connection attempt, handshake included, may take.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection reports to the driver.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// Handshaken: `acked` is what the remote holds; `tx` takes batch messages.
    Connected {
        generation: u64,
        tx: mpsc::Sender<Bytes>,
        acked: u64,
    },
    /// The attempt failed; `fatal` when retrying cannot help (credential refused, protocol
    /// version).
    ConnectFailed {
        generation: u64,
        reason: String,
        fatal: bool,
    },
    /// A message after the handshake.
    Message {
        generation: u64,
        message: RemoteMessage,
    },
    /// The connection ended.
    Closed { generation: u64, reason: String },
}

struct Failure {
    reason: String,
    fatal: bool,
}

fn fail(reason: impl Into<String>) -> Failure {
    Failure {
        reason: reason.into(),
        fatal: false,
    }
}

/// Starts a connection attempt; its outcome and later messages arrive on `events`. `status`
/// is the driver's latest uplink status, sent if the remote accepts it.
pub(crate) fn spawn_connect(
    generation: u64,
    url: String,
    api_key: Option<String>,
    events: mpsc::UnboundedSender<LinkEvent>,
    status: watch::Receiver<Option<UplinkStatus>>,
) {
    tokio::spawn(async move {
        let outcome =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(&url, api_key.as_deref())).await;
        let (ws, acked, accepts) = match outcome {
            Ok(Ok(connected)) => connected,
            Ok(Err(f)) => {
                let _ = events.send(LinkEvent::ConnectFailed {
                    generation,
                    reason: f.reason,
                    fatal: f.fatal,
                });
                return;
            }
            Err(_) => {
                let _ = events.send(LinkEvent::ConnectFailed {
                    generation,
                    reason: "connecting timed out".into(),
                    fatal: false,
                });
                return;
            }
        };
        let (sink, mut stream) = ws.split();
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        if events
            .send(LinkEvent::Connected {
                generation,
                tx,
                acked,
            })
            .is_err()
        {
            return;
        }
        let status = accepts
            .iter()
            .any(|a| a == ACCEPTS_STATUS)
            .then_some(status);
        // Writer: ends (closing the socket) when the driver drops its sender.
        let writer = tokio::spawn(write(sink, rx, status));
        let reason = loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<RemoteMessage>(text.as_str()) {
                        Ok(message) => {
                            if events
                                .send(LinkEvent::Message {
                                    generation,
                                    message,
                                })
                                .is_err()
                            {
                                break "the driver stopped".to_owned();
                            }
                        }
                        Err(e) => break format!("bad message from the remote: {e}"),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break format!("closed by the remote: {frame:?}");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("connection error: {e}"),
                None => break "connection closed".to_owned(),
            }
        };
        writer.abort();
        let _ = events.send(LinkEvent::Closed { generation, reason });
    });
}

/// What woke the writer.
enum Wake {
    Batch(Option<Bytes>),
    Status { alive: bool },
}

/// Writes the driver's batches, and the latest status on connect and whenever it changes
/// (`status`: `None` when the remote does not accept it), until the driver drops its sender.
async fn write(
    mut sink: SplitSink<Ws, Message>,
    mut batches: mpsc::Receiver<Bytes>,
    mut status: Option<watch::Receiver<Option<UplinkStatus>>>,
) {
    let mut status_due = true;
    loop {
        if std::mem::take(&mut status_due)
            && let Some(text) = status.as_mut().and_then(status_text)
            && sink.send(Message::Text(text.into())).await.is_err()
        {
            return;
        }
        let changed = async {
            match status.as_mut() {
                Some(s) => s.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            batch = batches.recv() => Wake::Batch(batch),
            alive = changed => Wake::Status { alive },
        };
        match wake {
            Wake::Batch(Some(batch)) => {
                if sink.send(Message::Binary(batch)).await.is_err() {
                    return;
                }
            }
            Wake::Batch(None) => break,
            Wake::Status { alive: true } => status_due = true,
            // The driver is gone; its batches' sender goes with it.
            Wake::Status { alive: false } => status = None,
        }
    }
    let _ = sink.close().await;
}

/// The text of the latest status, marking it seen; `None` before the driver's first one.
fn status_text(status: &mut watch::Receiver<Option<UplinkStatus>>) -> Option<String> {
    let latest = status.borrow_and_update();
    latest
        .as_ref()
        .map(|s| VehicleMessage::Status(s.clone()).to_text())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, api_key: Option<&str>) -> Result<(Ws, u64, Vec<String>), Failure> {
    let mut request = url.into_client_request().map_err(|e| Failure {
        reason: format!("REMOTE_ENDPOINT_URL {url:?}: {e}"),
        fatal: true,
    })?;
    if let Some(key) = api_key {
        let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| Failure {
            reason: "API_KEY is not a valid header value".into(),
            fatal: true,
        })?;
        request.headers_mut().insert("authorization", value);
    }
    let connected = tokio_tungstenite::connect_async_with_config(
        request,
        Some(tether_runtime::ws::ws_client_config()),
        true,
    )
    .await;
    let (mut ws, _) = match connected {
        Ok(ok) => ok,
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status();
            return Err(Failure {
                reason: format!("the remote refused the upgrade: HTTP {status}"),
                fatal: status == 401 || status == 403,
            });
        }
        Err(e) => return Err(fail(format!("connecting to {url}: {e}"))),
    };
    let first = ws
        .next()
        .await
        .ok_or_else(|| fail("closed before welcome"))?
        .map_err(|e| fail(format!("reading welcome: {e}")))?;
    let Message::Text(text) = first else {
        return Err(fail(format!("expected welcome, got {first:?}")));
    };
    match serde_json::from_str::<RemoteMessage>(text.as_str()) {
        Ok(RemoteMessage::Welcome {
            version,
            acked,
            accepts,
            ..
        }) if version == crate::wire::PROTOCOL_VERSION => Ok((ws, acked, accepts)),
        Ok(RemoteMessage::Welcome { version, .. }) => Err(Failure {
            reason: format!("the remote speaks protocol version {version}"),
            fatal: true,
        }),
        Ok(RemoteMessage::Error { code, message }) => Err(Failure {
            fatal: code == "unsupported_version",
            reason: format!("refused: {code}: {message}"),
        }),
        Ok(other) => Err(fail(format!("expected welcome, got {other:?}"))),
        Err(e) => Err(fail(format!("bad welcome: {e}"))),
    }
}
