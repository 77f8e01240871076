//! One `/ws/data` connection: handshake and authorisation, then a reader (this task) feeding
//! the driver and a writer task draining the connection's outbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, close_code};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use relay_core::Error as RelayError;
use relay_core::engine::{DeliverySource, Direction, GroupId, GroupSnapshot, Side, StreamSnapshot};
use relay_core::log::{AnyStreamLog, Item, MAX_SEQ, StreamLog};
use relay_core::protocol::{
    self, Ack, DeliveryMessage, Encoding, ErrorCode, ErrorMessage, Hello, MAX_BATCH_FRAMES,
    Message, PROTOCOL_VERSION, Welcome,
};
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

use super::outbox::{Out, Outbox};
use super::{Command, DataPlane, Refusal, clip, taps};
use crate::metrics::{CodeLabels, RelayMetrics};
use crate::state::AppState;
use crate::store::Agent;

/// Time an agent has to send its `hello` after the upgrade.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Time the reader waits for the writer to send a final error before dropping the socket.
const WRITER_GRACE: Duration = Duration::from_secs(5);

/// How long the socket stays open after a `message_too_big` close. The server stopped reading
/// in the middle of the agent's message; closing at once would make the kernel answer the
/// unread bytes with a reset, which can destroy the error and close frame before the agent
/// reads them.
const TOO_BIG_LINGER: Duration = Duration::from_secs(1);

/// Encodings this server speaks after the handshake.
const SUPPORTED: &[Encoding] = &[Encoding::Msgpack, Encoding::Json];

type Sink = SplitSink<WebSocket, WsMessage>;
type Source = SplitStream<WebSocket>;

/// When a read failed because the message was larger than the connection accepts: the refusal
/// to send before closing with 1009.
fn too_big(err: &axum::Error) -> Option<Refusal> {
    // axum wraps the tungstenite error it got as the source.
    let inner = std::error::Error::source(err)?.downcast_ref::<tungstenite_axum::Error>();
    match inner {
        Some(tungstenite_axum::Error::Capacity(capacity)) => Some(refusal(
            ErrorCode::MessageTooBig,
            format!(
                "{capacity}; a message may be at most {} bytes",
                relay_core::protocol::MAX_MESSAGE_BYTES
            ),
        )),
        _ => None,
    }
}

/// The WebSocket close code for a fatal error: 1009 for too big, 1011 for the server's own
/// failure, 1008 (policy) for every refusal.
fn close_code_for(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::MessageTooBig => close_code::SIZE,
        ErrorCode::Internal => close_code::ERROR,
        _ => close_code::POLICY,
    }
}

fn refusal(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: clip(message.into()),
    }
}

/// The connection after a successful handshake.
struct Session {
    conn: super::ConnId,
    group: Uuid,
    /// `group` as frames spell it (`groupId`).
    group_id: String,
    side: Side,
    dongle: Uuid,
}

/// Runs one upgraded connection to its end.
pub(super) async fn run(socket: WebSocket, plane: DataPlane, state: AppState, agent: Agent) {
    // Before anything else, so that no revocation after the token check is missed.
    let mut revocations = state.subscribe_agent_revocations();
    let mut revocations_open = true;
    let (mut sink, mut source) = socket.split();
    let metrics = &plane.shared.metrics;
    let hello = match read_hello(&mut source, plane.shared.diag.get().is_some()).await {
        Ok(Some(First::Relay(hello))) => hello,
        Ok(Some(First::Diag(bytes))) => {
            let Some(channel) = plane.shared.diag.get().cloned() else {
                return;
            };
            let Ok(socket) = sink.reunite(source) else {
                return;
            };
            drop(revocations);
            plane.agent_connection(agent.id, true);
            channel.serve(socket, bytes, agent.clone()).await;
            plane.agent_connection(agent.id, false);
            return;
        }
        Ok(None) => return,
        Err(refused) => {
            tracing::info!(agent = %agent.id, code = refused.code.as_str(), reason = %refused.message, "data-plane connection refused before its hello");
            let linger = refused.code == ErrorCode::MessageTooBig;
            close_with_error(&mut sink, refused, metrics).await;
            if linger {
                tokio::time::sleep(TOO_BIG_LINGER).await;
            }
            drop(source);
            return;
        }
    };
    let conn = plane.next_conn_id();
    let outbox = Arc::new(Outbox::default());
    let (session, welcome) = match welcome(&plane, &state, &agent, &hello, conn, &outbox).await {
        Ok(done) => done,
        Err(refused) => {
            tracing::info!(agent = %agent.id, group = %hello.group_id, side = %hello.side, code = refused.code.as_str(), reason = %refused.message, "data-plane connection refused");
            close_with_error(&mut sink, refused, metrics).await;
            return;
        }
    };
    let encoding = welcome.encoding;
    let text = match serde_json::to_string(&Message::Welcome(welcome)) {
        Ok(text) => text,
        Err(err) => {
            tracing::error!(%err, "encoding a welcome failed");
            return;
        }
    };
    if sink.send(WsMessage::Text(text.into())).await.is_err() {
        disconnected(&plane, &session).await;
        return;
    }
    metrics.connections.inc();
    plane.agent_connection(agent.id, true);
    tracing::info!(agent = %agent.id, group = %session.group, side = %session.side, encoding = encoding.as_str(), "data-plane side connected");
    let stream_key = session
        .side
        .inbound()
        .stream_key(&GroupId::new(session.group.to_string()));
    let mut writer = tokio::spawn(write_loop(
        sink,
        Arc::clone(&outbox),
        encoding,
        stream_key,
        metrics.clone(),
    ));
    let mut writer_done = false;
    let mut linger = false;
    loop {
        // Biased: a revocation first (a flooding agent is still cut off), then messages, then the
        // writer's end — what the agent sent before it went away (a last `ack` before its close)
        // is handled even when the writer noticed the closed socket first.
        tokio::select! {
            biased;
            revoked = revocations.recv(), if revocations_open => match revoked {
                Ok(id) if id == agent.id => {
                    outbox.push(Out::Fatal(
                        ErrorCode::Unauthorized,
                        "the agent was revoked".to_owned(),
                    ));
                    break;
                }
                Ok(_) => {}
                // Revocations were missed: this one may be among them. The agent reconnects,
                // which checks its token again.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    outbox.push(Out::Fatal(
                        ErrorCode::Internal,
                        "the server missed agent revocations; reconnect".to_owned(),
                    ));
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => revocations_open = false,
            },
            message = source.next() => {
                let bytes_and_encoding = match message {
                    Some(Err(err)) => {
                        if let Some(refused) = too_big(&err) {
                            tracing::warn!(agent = %agent.id, group = %session.group, side = %session.side, reason = %refused.message, "data-plane message too big: closing with 1009");
                            count_error(metrics, refused.code);
                            outbox.push(Out::Fatal(refused.code, refused.message));
                            linger = true;
                        } else {
                            tracing::debug!(agent = %agent.id, %err, "data-plane read failed");
                        }
                        break;
                    }
                    None | Some(Ok(WsMessage::Close(_))) => break,
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    Some(Ok(WsMessage::Text(text))) => (Bytes::from(text), Encoding::Json),
                    Some(Ok(WsMessage::Binary(bytes))) => (bytes, Encoding::Msgpack),
                };
                let (bytes, encoding) = bytes_and_encoding;
                if !handle(&plane, &state, &session, &outbox, &bytes, encoding).await
                    || outbox.is_closing()
                {
                    break;
                }
            }
            _ = &mut writer => {
                writer_done = true;
                break;
            }
        }
    }
    disconnected(&plane, &session).await;
    if !writer_done {
        // Lets the writer send a queued fatal error, or stops it when the agent went away.
        outbox.push(Out::Close("connection closed".to_owned()));
        if tokio::time::timeout(WRITER_GRACE, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
    if linger {
        tokio::time::sleep(TOO_BIG_LINGER).await;
    }
    drop(source);
    metrics.connections.dec();
    plane.agent_connection(agent.id, false);
    tracing::info!(agent = %agent.id, group = %session.group, side = %session.side, "data-plane side disconnected");
}

async fn disconnected(plane: &DataPlane, session: &Session) {
    let command = Command::Disconnected {
        conn: session.conn,
        group: session.group,
        side: session.side,
    };
    // Fails only when the driver is gone (shutdown), which forgets every connection anyway.
    let _ = plane.shared.commands.send(command).await;
}

/// What a connection opened with.
enum First {
    /// The relay's `hello`.
    Relay(Hello),
    /// A `diag_hello` (the diagnostics channel), as received.
    Diag(Bytes),
}

/// Reads the first message, which must be a JSON `hello` (or, when `diag` is served, a
/// `diag_hello`). `Ok(None)`: the agent left.
async fn read_hello(source: &mut Source, diag: bool) -> Result<Option<First>, Refusal> {
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    loop {
        let message = match tokio::time::timeout_at(deadline, source.next()).await {
            Ok(message) => message,
            Err(_) => {
                return Err(refusal(
                    ErrorCode::HandshakeRequired,
                    format!("no hello within {} s", HELLO_TIMEOUT.as_secs()),
                ));
            }
        };
        let bytes = match message {
            Some(Err(err)) => return too_big(&err).map_or(Ok(None), Err),
            None | Some(Ok(WsMessage::Close(_))) => return Ok(None),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Text(text))) => Bytes::from(text),
            Some(Ok(WsMessage::Binary(bytes))) => bytes,
        };
        if diag && protocol::diag::is_diag_hello(&bytes) {
            return Ok(Some(First::Diag(bytes)));
        }
        return match protocol::decode(&bytes, Encoding::Json) {
            Ok(Message::Hello(hello)) => Ok(Some(First::Relay(hello))),
            Ok(other) => Err(refusal(
                ErrorCode::HandshakeRequired,
                format!(
                    "the first message must be `hello`, got `{}`",
                    other.type_name()
                ),
            )),
            Err(RelayError::UnsupportedProtocolVersion { got, supported }) => Err(refusal(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {got} is not supported; this server speaks {supported:?}"
                ),
            )),
            Err(err @ RelayError::MessageTooLarge { .. }) => {
                Err(refusal(ErrorCode::MessageTooBig, err.to_string()))
            }
            Err(err) => Err(refusal(ErrorCode::BadMessage, err.to_string())),
        };
    }
}

/// Authorises the hello, loads what the group needs, and registers the side with the driver.
async fn welcome(
    plane: &DataPlane,
    state: &AppState,
    agent: &Agent,
    hello: &Hello,
    conn: super::ConnId,
    outbox: &Arc<Outbox>,
) -> Result<(Session, Welcome), Refusal> {
    let side = hello.side;
    let not_allowed = || {
        refusal(
            ErrorCode::Unauthorized,
            format!(
                "group {:?} side {side} is not a group side of a dongle this agent announced",
                hello.group_id
            ),
        )
    };
    let group_id = Uuid::parse_str(&hello.group_id).map_err(|_| not_allowed())?;
    let who = agent.clone();
    let found = state
        .store()
        .call(move |store| {
            let Some(group) = store.group(group_id)? else {
                return Ok(None);
            };
            let dongle = match side {
                Side::A => group.dongle_a,
                Side::B => group.dongle_b,
            };
            Ok(store.dongle_of_agent(&who, dongle)?.map(|_| group))
        })
        .await
        .map_err(|err| {
            refusal(
                ErrorCode::Internal,
                format!("reading the group failed: {err}"),
            )
        })?;
    let group = found.ok_or_else(not_allowed)?;
    let log = plane.shared.log.get().ok_or_else(|| {
        refusal(
            ErrorCode::Internal,
            "the relay stream log is not reachable yet; retry later",
        )
    })?;
    let snapshot = load_snapshot(log, group_id, group.activated)
        .await
        .map_err(|err| {
            refusal(
                ErrorCode::Internal,
                format!("reading the group's streams failed: {err}"),
            )
        })?;
    let (reply, answer) = oneshot::channel();
    let command = Command::Connect {
        conn,
        group: group_id,
        side,
        dongles: [group.dongle_a, group.dongle_b],
        rx_cursor: hello.resume.rx_seq,
        snapshot,
        outbox: Arc::clone(outbox),
        reply,
    };
    let gone = || refusal(ErrorCode::Internal, "the server is shutting down");
    plane
        .shared
        .commands
        .send(command)
        .await
        .map_err(|_| gone())?;
    let welcomed = answer.await.map_err(|_| gone())??;
    let dongle = match side {
        Side::A => group.dongle_a,
        Side::B => group.dongle_b,
    };
    let encoding = protocol::negotiate_encoding(&hello.encodings, SUPPORTED);
    Ok((
        Session {
            conn,
            group: group_id,
            group_id: group_id.to_string(),
            side,
            dongle,
        },
        Welcome {
            version: PROTOCOL_VERSION,
            encoding,
            tx_acked: welcomed.tx_acked,
            rx_from: welcomed.rx_from,
            mode: welcomed.mode,
        },
    ))
}

/// What the stream log holds for the group (heads and consumer cursors).
async fn load_snapshot(
    log: &AnyStreamLog,
    group: Uuid,
    activated: bool,
) -> Result<GroupSnapshot, RelayError> {
    let gid = GroupId::new(group.to_string());
    let mut streams = [StreamSnapshot::default(); 2];
    for (index, direction) in Direction::BOTH.into_iter().enumerate() {
        let key = direction.stream_key(&gid);
        let head = log.backlog(&key, MAX_SEQ).await?.head;
        let consumer = direction.consumer().to_string();
        let cursor = log.load_cursor(&key, &consumer).await?.unwrap_or(0);
        streams[index] = StreamSnapshot {
            head,
            consumer_cursor: cursor,
        };
    }
    let [a_to_b, b_to_a] = streams;
    Ok(GroupSnapshot {
        activated,
        a_to_b,
        b_to_a,
    })
}

/// What waits in the stream log for each direction's consumer: stored items above its stored
/// cursor.
pub(super) async fn stored_backlog(
    log: &AnyStreamLog,
    group: Uuid,
) -> Result<crate::group_mode::GroupBacklog, RelayError> {
    let gid = GroupId::new(group.to_string());
    let mut waiting = [0; 2];
    for (index, direction) in Direction::BOTH.into_iter().enumerate() {
        let key = direction.stream_key(&gid);
        let consumer = direction.consumer().to_string();
        let cursor = log.load_cursor(&key, &consumer).await?.unwrap_or(0);
        waiting[index] = log.backlog(&key, cursor).await?.count;
    }
    Ok(crate::group_mode::GroupBacklog {
        a_to_b: waiting[0],
        b_to_a: waiting[1],
    })
}

/// Handles one message after the handshake. `false`: stop reading (a fatal error is queued or
/// the driver is gone).
async fn handle(
    plane: &DataPlane,
    state: &AppState,
    session: &Session,
    outbox: &Outbox,
    bytes: &Bytes,
    encoding: Encoding,
) -> bool {
    let metrics = &plane.shared.metrics;
    let fatal = |code: ErrorCode, message: String| {
        count_error(metrics, code);
        outbox.push(Out::Fatal(code, clip(message)));
        false
    };
    let command = match protocol::decode(bytes, encoding) {
        Ok(Message::Frames(batch)) => {
            metrics.frames_received.inc_by(batch.frames.len() as u64);
            if let Some((index, frame)) = batch
                .frames
                .iter()
                .enumerate()
                .find(|(_, f)| f.group_id != session.group_id)
            {
                // Stored as is, it would reach the other side naming a group it is not in.
                count_error(metrics, ErrorCode::GroupMismatch);
                metrics
                    .frames_refused
                    .get_or_create(&CodeLabels {
                        code: ErrorCode::GroupMismatch.as_str(),
                    })
                    .inc_by(batch.frames.len() as u64);
                tracing::warn!(group = %session.group, side = %session.side, frame = index, named = %frame.group_id, "frame batch names another group: refused");
                outbox.push(Out::Error(
                    ErrorCode::GroupMismatch,
                    clip(format!(
                        "frame {index} names group {:?}, but this connection is group {}; the batch was not stored",
                        frame.group_id, session.group
                    )),
                ));
                return true;
            }
            let skip = plane.already_shown(
                session.group,
                session.side,
                batch.first_seq,
                batch.frames.len(),
            );
            taps::can_frames(state, session.dongle, session.group, &batch.frames[skip..]);
            let items = match batch.to_items_from(bytes, encoding) {
                Ok(items) => items,
                Err(err) => return fatal(ErrorCode::Internal, err.to_string()),
            };
            Command::Frames {
                conn: session.conn,
                group: session.group,
                side: session.side,
                items,
                received: Instant::now(),
            }
        }
        Ok(Message::Ack(ack)) => Command::Ack {
            conn: session.conn,
            group: session.group,
            side: session.side,
            up_to: ack.up_to,
        },
        Ok(Message::Hello(_)) => {
            return fatal(
                ErrorCode::HandshakeRequired,
                "hello was already received on this connection".to_owned(),
            );
        }
        Ok(Message::Error(error)) => {
            tracing::warn!(group = %session.group, side = %session.side, code = ?error.code, message = %error.message, "agent reported an error");
            return true;
        }
        Ok(other) => {
            return fatal(
                ErrorCode::BadMessage,
                format!("agents do not send `{}` messages", other.type_name()),
            );
        }
        Err(err @ RelayError::MessageTooLarge { .. }) => {
            tracing::warn!(group = %session.group, side = %session.side, %err, "data-plane message too big: closing with 1009");
            return fatal(ErrorCode::MessageTooBig, err.to_string());
        }
        Err(err) => return fatal(ErrorCode::BadMessage, err.to_string()),
    };
    plane.shared.commands.send(command).await.is_ok()
}

/// Sends an error and closes, before the writer exists (handshake refusals).
async fn close_with_error(sink: &mut Sink, refused: Refusal, metrics: &RelayMetrics) {
    count_error(metrics, refused.code);
    let close_as = close_code_for(refused.code);
    let message = Message::Error(ErrorMessage {
        code: refused.code,
        message: refused.message,
    });
    if let Ok(text) = serde_json::to_string(&message) {
        let _ = sink.send(WsMessage::Text(text.into())).await;
    }
    let _ = sink
        .send(WsMessage::Close(Some(CloseFrame {
            code: close_as,
            reason: Utf8Bytes::from_static("refused"),
        })))
        .await;
    let _ = sink.close().await;
}

/// Counts a refusal in `relay_errors_total{code}`.
fn count_error(metrics: &RelayMetrics, code: ErrorCode) {
    metrics
        .errors
        .get_or_create(&CodeLabels {
            code: code.as_str(),
        })
        .inc();
}

/// Encodes a message in the connection's encoding.
fn encode(message: &Message, encoding: Encoding) -> Result<WsMessage, RelayError> {
    Ok(ws_message(protocol::encode(message, encoding)?, encoding))
}

/// JSON as a text message, MessagePack as a binary one.
fn ws_message(bytes: Vec<u8>, encoding: Encoding) -> WsMessage {
    match encoding {
        Encoding::Json => match String::from_utf8(bytes) {
            Ok(text) => WsMessage::Text(text.into()),
            Err(err) => WsMessage::Binary(Bytes::from(err.into_bytes())),
        },
        Encoding::Msgpack => WsMessage::Binary(Bytes::from(bytes)),
    }
}

/// Encodes delivered items as `frames` messages of at most [`MAX_BATCH_FRAMES`] frames,
/// spliced from the stored payloads where their format allows. Stored items that are not a
/// valid frame go out as a `corrupt` gap, counted and logged.
fn encode_frames(
    items: &[Item],
    source: DeliverySource,
    encoding: Encoding,
    stream_key: &str,
    metrics: &RelayMetrics,
) -> Result<Vec<WsMessage>, RelayError> {
    let mut out = Vec::with_capacity(items.len().div_ceil(MAX_BATCH_FRAMES));
    for chunk in items.chunks(MAX_BATCH_FRAMES) {
        for message in protocol::encode_delivery(stream_key, chunk, encoding, source)? {
            if let DeliveryMessage::Corrupt { gap, detail, .. } = &message {
                tracing::error!(stream = %stream_key, from = gap.from, to = gap.to, %detail,
                    "stored items are not valid frames: skipped, reported to the agent as a corrupt gap");
                metrics.frames_corrupt.inc_by(gap.count);
            }
            out.push(ws_message(message.into_bytes(), encoding));
        }
    }
    Ok(out)
}

async fn close(sink: &mut Sink, code: u16, reason: &'static str) {
    let _ = sink
        .send(WsMessage::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
    let _ = sink.close().await;
}

/// Drains the outbox into the socket until a close or a write failure.
async fn write_loop(
    mut sink: Sink,
    outbox: Arc<Outbox>,
    encoding: Encoding,
    stream_key: String,
    metrics: RelayMetrics,
) {
    loop {
        let batch = outbox.take().await;
        for out in batch {
            let encoded = match out {
                Out::Frames(items, source) => {
                    encode_frames(&items, source, encoding, &stream_key, &metrics)
                }
                Out::Ack(up_to) => encode(&Message::Ack(Ack { up_to }), encoding).map(|m| vec![m]),
                Out::Gap(gap) => encode(&Message::Gap(gap), encoding).map(|m| vec![m]),
                Out::GroupState(state) => {
                    encode(&Message::GroupState(state), encoding).map(|m| vec![m])
                }
                Out::Error(code, message) => {
                    encode(&Message::Error(ErrorMessage { code, message }), encoding)
                        .map(|m| vec![m])
                }
                Out::Fatal(code, message) => {
                    if let Ok(m) = encode(&Message::Error(ErrorMessage { code, message }), encoding)
                    {
                        let _ = sink.send(m).await;
                    }
                    close(&mut sink, close_code_for(code), "error").await;
                    return;
                }
                Out::Close(reason) => {
                    tracing::debug!(%reason, "closing data-plane connection");
                    close(&mut sink, close_code::NORMAL, "closed").await;
                    return;
                }
            };
            let messages = match encoded {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::error!(stream = %stream_key, %err, "encoding a data-plane message failed");
                    let message = Message::Error(ErrorMessage {
                        code: ErrorCode::Internal,
                        message: clip(format!("the server could not encode a message: {err}")),
                    });
                    if let Ok(m) = encode(&message, encoding) {
                        let _ = sink.send(m).await;
                    }
                    close(&mut sink, close_code::ERROR, "error").await;
                    return;
                }
            };
            for message in messages {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}
