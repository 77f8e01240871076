//! One vehicle's upload connection: `welcome` with what the inbox holds, then batches →
//! inbox commits (pipelined, in order) → one cumulative `ack` per commit: the batches of this
//! connection that one group commit stored are answered by one `ack` of the last; and `status`
//! text messages → the status book (not stored, not acknowledged).

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};

use super::Inner;
use crate::wire::{
    ACCEPTS_STATUS, BatchError, PROTOCOL_VERSION, RemoteMessage, VehicleMessage, decode_batch,
    decode_vehicle_text,
};

/// Batches committed but not yet acknowledged, at most, per connection (then the socket is
/// not read: TCP pushes back on the vehicle).
const MAX_PIPELINED: usize = 64;

async fn send(socket: &mut WebSocket, message: RemoteMessage) -> bool {
    socket
        .send(Message::Text(message.to_text().into()))
        .await
        .is_ok()
}

async fn refuse(socket: &mut WebSocket, code: &str, message: String) {
    let _ = send(
        socket,
        RemoteMessage::Error {
            code: code.to_owned(),
            message,
        },
    )
    .await;
    let _ = socket.send(Message::Close(None)).await;
}

/// Serves one connection of `vehicle` until it closes or is replaced.
pub(crate) async fn serve(inner: Arc<Inner>, vehicle: String, mut socket: WebSocket) {
    let (id, mut replaced) = inner.register_conn(&vehicle);
    inner.metrics.connections.inc();
    let acked = match inner.acked(&vehicle).await {
        Ok(acked) => acked,
        Err(e) => {
            refuse(&mut socket, "internal", e).await;
            inner.metrics.connections.dec();
            inner.unregister_conn(&vehicle, id);
            return;
        }
    };
    tracing::debug!(%vehicle, acked, "vehicle connected");
    let welcome = RemoteMessage::Welcome {
        version: PROTOCOL_VERSION,
        vehicle: vehicle.clone(),
        acked,
        accepts: vec![ACCEPTS_STATUS.to_owned()],
    };
    let mut high = acked;
    if send(&mut socket, welcome).await {
        let mut pending = FuturesOrdered::new();
        loop {
            tokio::select! {
                _ = &mut replaced => {
                    refuse(&mut socket, "replaced", "another connection of this vehicle took over".into()).await;
                    break;
                }
                message = socket.recv(), if pending.len() < MAX_PIPELINED => match message {
                    Some(Ok(Message::Binary(bytes))) => match decode_batch(&bytes) {
                        Ok(records) => {
                            inner.metrics.batches.inc();
                            let inner = Arc::clone(&inner);
                            let vehicle = vehicle.clone();
                            pending.push_back(async move { inner.commit(&vehicle, records).await });
                        }
                        Err(e) => {
                            inner.metrics.bad_batches.inc();
                            let code = match e {
                                BatchError::Version(_) => "unsupported_version",
                                _ => "bad_message",
                            };
                            tracing::warn!(%vehicle, error = %e, "refused a batch");
                            refuse(&mut socket, code, e.to_string()).await;
                            break;
                        }
                    },
                    Some(Ok(Message::Text(text))) => match decode_vehicle_text(text.as_str()) {
                        Ok(VehicleMessage::Status(status)) => {
                            inner.metrics.statuses.inc();
                            inner.statuses.record(&vehicle, status, super::status::wall_ms());
                        }
                        Err(e) => {
                            inner.metrics.bad_statuses.inc();
                            tracing::warn!(%vehicle, error = %e, "refused a text message");
                            refuse(&mut socket, "bad_message", e.to_string()).await;
                            break;
                        }
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                committed = pending.next(), if !pending.is_empty() => {
                    // Every batch of this connection committed in the same group is ready
                    // now: one cumulative ack answers them all.
                    let mut committed = committed;
                    let mut up_to = None;
                    let mut failed = None;
                    while let Some(result) = committed {
                        match result {
                            Ok((commit, records)) => {
                                inner.publish(&vehicle, &records, high);
                                high = high.max(commit.ack);
                                up_to = Some(commit.ack.max(up_to.unwrap_or(0)));
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                        committed = pending.next().now_or_never().flatten();
                    }
                    if let Some(up_to) = up_to
                        && !send(&mut socket, RemoteMessage::Ack { up_to }).await
                    {
                        break;
                    }
                    if let Some(e) = failed {
                        refuse(&mut socket, "internal", e).await;
                        break;
                    }
                }
            }
        }
    }
    inner.metrics.connections.dec();
    inner.unregister_conn(&vehicle, id);
    tracing::debug!(%vehicle, "vehicle disconnected");
}
