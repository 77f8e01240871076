//! The vehicle's WebSocket to the remote: connect (with the `API_KEY` as Bearer), wait for
//! `welcome`, then a writer task (batches from the driver) and a reader task (acks and errors
//! to the driver). Every event carries the connection's generation, so the driver ignores
//! events of a connection it already gave up.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::wire::RemoteMessage;

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

/// Starts a connection attempt; its outcome and later messages arrive on `events`.
pub(crate) fn spawn_connect(
    generation: u64,
    url: String,
    api_key: Option<String>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    tokio::spawn(async move {
        let outcome =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(&url, api_key.as_deref())).await;
        let (ws, acked) = match outcome {
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
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
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
        // Writer: ends (closing the socket) when the driver drops its sender.
        let writer = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                if sink.send(Message::Binary(batch)).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
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

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, api_key: Option<&str>) -> Result<(Ws, u64), Failure> {
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
        Ok(RemoteMessage::Welcome { version, acked, .. })
            if version == crate::wire::PROTOCOL_VERSION =>
        {
            Ok((ws, acked))
        }
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
