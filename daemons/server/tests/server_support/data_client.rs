//! A raw `/ws/data` client speaking the data-plane protocol with `relay_core::protocol` types,
//! for the `dataplane_*` tests. Include with
//! `#[path = "server_support/data_client.rs"] mod data_client;`.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use relay_core::engine::Side;
use relay_core::protocol::{
    self, Ack, Encoding, FrameBatch, Hello, Message, ResumeCursor, WireFrame,
};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::TestResult;

/// How long a receive waits before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(20);

/// A frame whose content encodes `seq` (so the receiver can check what it got).
pub fn frame(seq: u64) -> WireFrame {
    let value = json!({
        "groupId": "test",
        "direction": "rx",
        "ts": 1_700_000_000_000_000_000u64 + seq * 1000,
        "canId": seq % 0x7ff,
        "isExtended": false,
        "dlc": 8,
        "dataHex": format!("{seq:016x}"),
    });
    serde_json::from_value(value).unwrap_or_else(|e| panic!("test frame: {e}"))
}

/// The seq a [`frame`] carries.
pub fn seq_of(frame: &WireFrame) -> u64 {
    <[u8; 8]>::try_from(frame.data.as_slice()).map_or(u64::MAX, u64::from_be_bytes)
}

/// A batch of [`frame`]s `first ..= last`.
pub fn batch(first: u64, last: u64) -> Message {
    Message::Frames(FrameBatch {
        first_seq: first,
        frames: (first..=last).map(frame).collect(),
    })
}

/// One data-plane connection.
pub struct DataClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The encoding in use (JSON until a welcome says otherwise).
    pub encoding: Encoding,
    /// The group of the last hello: [`DataClient::send`] names it in every frame.
    pub group: Option<String>,
}

/// The `ws://` URL of a server's data plane from its `http://` base.
pub fn data_url(base: &str) -> String {
    format!("{}/ws/data", base.replacen("http://", "ws://", 1))
}

impl DataClient {
    /// Opens the WebSocket with an agent token.
    pub async fn connect(base: &str, token: &str) -> Result<DataClient, tungstenite::Error> {
        let mut request = data_url(base).into_client_request()?;
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
        request.headers_mut().insert("authorization", value);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true).await?;
        Ok(DataClient {
            ws,
            encoding: Encoding::Json,
            group: None,
        })
    }

    /// Sends a hello and returns the answer (`welcome` or `error`), switching to the welcome's
    /// encoding.
    pub async fn hello(
        &mut self,
        group: &str,
        side: Side,
        rx_seq: u64,
        encodings: &[Encoding],
    ) -> TestResult<Message> {
        let hello = Message::Hello(Hello {
            version: protocol::PROTOCOL_VERSION,
            group_id: group.to_owned(),
            side,
            resume: ResumeCursor { rx_seq },
            encodings: encodings.to_vec(),
        });
        self.send_text(&serde_json::to_string(&hello)?).await?;
        self.group = Some(group.to_owned());
        let answer = self.recv().await?.ok_or("closed before welcome")?;
        if let Message::Welcome(welcome) = &answer {
            self.encoding = welcome.encoding;
        }
        Ok(answer)
    }

    /// Connects and says hello, expecting a welcome.
    pub async fn open(
        base: &str,
        token: &str,
        group: &str,
        side: Side,
        rx_seq: u64,
        encodings: &[Encoding],
    ) -> TestResult<(DataClient, protocol::Welcome)> {
        let mut client = DataClient::connect(base, token).await?;
        match client.hello(group, side, rx_seq, encodings).await? {
            Message::Welcome(welcome) => Ok((client, welcome)),
            other => Err(format!("expected welcome, got {other:?}").into()),
        }
    }

    /// Sends a raw binary message.
    pub async fn send_binary(&mut self, bytes: &[u8]) -> TestResult {
        self.ws
            .send(WsMessage::Binary(bytes.to_vec().into()))
            .await?;
        Ok(())
    }

    /// Sends a raw text message.
    pub async fn send_text(&mut self, text: &str) -> TestResult {
        self.ws.send(WsMessage::Text(text.into())).await?;
        Ok(())
    }

    /// Sends a message in the connection's encoding; frames are made to name the connection's
    /// group (the server refuses frames naming another).
    pub async fn send(&mut self, message: &Message) -> TestResult {
        let mut message = message.clone();
        if let (Message::Frames(batch), Some(group)) = (&mut message, &self.group) {
            for frame in &mut batch.frames {
                frame.group_id.clone_from(group);
            }
        }
        self.send_raw(&message).await
    }

    /// Sends a message as it is, in the connection's encoding.
    pub async fn send_raw(&mut self, message: &Message) -> TestResult {
        let bytes = protocol::encode(message, self.encoding)?;
        let ws = match self.encoding {
            Encoding::Json => WsMessage::Text(String::from_utf8(bytes)?.into()),
            Encoding::Msgpack => WsMessage::Binary(bytes.into()),
        };
        self.ws.send(ws).await?;
        Ok(())
    }

    /// Sends frames `first ..= last`.
    pub async fn send_frames(&mut self, first: u64, last: u64) -> TestResult {
        self.send(&batch(first, last)).await
    }

    /// Sends frames `first..=last` and waits for the server's ack of `last` → the seq acked.
    pub async fn send_acked(&mut self, first: u64, last: u64) -> TestResult<u64> {
        self.send_frames(first, last).await?;
        self.wait_ack(last).await
    }

    /// Sends a cumulative ack.
    pub async fn ack(&mut self, up_to: u64) -> TestResult {
        self.send(&Message::Ack(Ack { up_to })).await
    }

    /// The next protocol message; `None` when the server closed the connection.
    pub async fn recv(&mut self) -> TestResult<Option<Message>> {
        loop {
            let next = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| "timed out waiting for a data-plane message")?;
            let bytes = match next {
                None | Some(Ok(WsMessage::Close(_))) => return Ok(None),
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::Protocol(_),
                )) => {
                    return Ok(None);
                }
                Some(Err(err)) => return Err(err.into()),
                Some(Ok(WsMessage::Text(text))) => {
                    return Ok(Some(protocol::decode(text.as_bytes(), Encoding::Json)?));
                }
                Some(Ok(WsMessage::Binary(bytes))) => bytes,
                Some(Ok(_)) => continue,
            };
            return Ok(Some(protocol::decode(&bytes, Encoding::Msgpack)?));
        }
    }

    /// Receives until `done` returns true for a message, returning every message seen (the
    /// last one included). Fails when the connection closes first.
    pub async fn recv_until(
        &mut self,
        mut done: impl FnMut(&Message) -> bool,
    ) -> TestResult<Vec<Message>> {
        let mut seen = Vec::new();
        loop {
            let message = self
                .recv()
                .await?
                .ok_or_else(|| format!("connection closed; saw {seen:?}"))?;
            let stop = done(&message);
            seen.push(message);
            if stop {
                return Ok(seen);
            }
        }
    }

    /// Receives until the connection closes, returning what arrived.
    pub async fn recv_until_closed(&mut self) -> TestResult<Vec<Message>> {
        let mut seen = Vec::new();
        while let Some(message) = self.recv().await? {
            seen.push(message);
        }
        Ok(seen)
    }

    /// Receives until the server closes the connection; fails unless it sent an error `code`
    /// before.
    pub async fn closed_with(&mut self, code: protocol::ErrorCode) -> TestResult {
        let seen = self.recv_until_closed().await?;
        if !seen
            .iter()
            .any(|m| matches!(m, Message::Error(e) if e.code == code))
        {
            return Err(format!("closed without a {code:?} error: {seen:?}").into());
        }
        Ok(())
    }

    /// Receives until the server's close frame, returning what arrived and the close code
    /// (`None`: the connection ended without a close frame).
    pub async fn recv_until_close_frame(&mut self) -> TestResult<(Vec<Message>, Option<u16>)> {
        let mut seen = Vec::new();
        loop {
            let next = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| "timed out waiting for the close")?;
            let bytes = match next {
                Some(Ok(WsMessage::Close(frame))) => {
                    return Ok((seen, frame.map(|f| u16::from(f.code))));
                }
                None | Some(Err(_)) => return Ok((seen, None)),
                Some(Ok(WsMessage::Text(text))) => text.as_bytes().to_vec(),
                Some(Ok(WsMessage::Binary(bytes))) => bytes.to_vec(),
                Some(Ok(_)) => continue,
            };
            let encoding = if std::str::from_utf8(&bytes).is_ok_and(|t| t.starts_with('{')) {
                Encoding::Json
            } else {
                self.encoding
            };
            seen.push(protocol::decode(&bytes, encoding)?);
        }
    }

    /// Sends `message` while reading (the server may close before it read all of a big
    /// message): what arrived and the close code, as [`DataClient::recv_until_close_frame`].
    pub async fn send_while_reading(
        self,
        message: WsMessage,
    ) -> TestResult<(Vec<Message>, Option<u16>)> {
        let encoding = self.encoding;
        let (mut sink, mut stream) = self.ws.split();
        let writer = tokio::spawn(async move {
            // Fails when the server closed first: that is what is being tested.
            let _ = sink.send(message).await;
            sink
        });
        let mut seen = Vec::new();
        let close = loop {
            let next = tokio::time::timeout(RECV_TIMEOUT, stream.next())
                .await
                .map_err(|_| "timed out waiting for the close")?;
            let bytes = match next {
                Some(Ok(WsMessage::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => break None,
                Some(Ok(WsMessage::Text(text))) => text.as_bytes().to_vec(),
                Some(Ok(WsMessage::Binary(bytes))) => bytes.to_vec(),
                Some(Ok(_)) => continue,
            };
            let encoding = if bytes.first() == Some(&b'{') {
                Encoding::Json
            } else {
                encoding
            };
            seen.push(protocol::decode(&bytes, encoding)?);
        };
        writer.abort();
        Ok((seen, close))
    }

    /// Closes the connection.
    pub async fn close(mut self) -> TestResult {
        self.ws.close(None).await?;
        // Drain until the server's close arrives.
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await
        {}
        Ok(())
    }
}

/// What a consumer received: frame seqs in order and gaps `(from, to, count)`, acknowledging
/// as it goes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Received {
    /// Seqs of the delivered frames, in arrival order.
    pub seqs: Vec<u64>,
    /// Gap notices, in arrival order.
    pub gaps: Vec<(u64, u64, u64, String)>,
    /// Highest seq covered (frames or gaps).
    pub covered: u64,
}

impl Received {
    /// What a consumer resuming after `covered` starts from.
    pub fn after(covered: u64) -> Received {
        Received {
            covered,
            ..Received::default()
        }
    }

    /// Takes one message into account; returns the ack to send, if any.
    pub fn take(&mut self, message: &Message) -> TestResult<Option<u64>> {
        match message {
            Message::Frames(batch) => {
                for (offset, frame) in batch.frames.iter().enumerate() {
                    let seq = batch.first_seq + offset as u64;
                    if seq_of(frame) != seq {
                        return Err(format!("frame at seq {seq} carries {}", seq_of(frame)).into());
                    }
                    self.seqs.push(seq);
                    self.covered = seq;
                }
                Ok(Some(self.covered))
            }
            Message::Gap(gap) => {
                let reason = serde_json::to_value(gap.reason)?
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                self.gaps.push((gap.from, gap.to, gap.count, reason));
                self.covered = gap.to;
                Ok(Some(self.covered))
            }
            _ => Ok(None),
        }
    }
}

impl DataClient {
    /// Receives and acknowledges inbound frames until `last` is covered.
    pub async fn consume_until(&mut self, last: u64, into: &mut Received) -> TestResult {
        while into.covered < last {
            let message = self
                .recv()
                .await?
                .ok_or_else(|| format!("closed while consuming; got {into:?}"))?;
            if let Some(up_to) = into.take(&message)? {
                self.ack(up_to).await?;
            }
        }
        Ok(())
    }

    /// Receives until an ack of at least `up_to` arrives (other messages are ignored).
    pub async fn wait_ack(&mut self, up_to: u64) -> TestResult<u64> {
        loop {
            match self.recv().await? {
                Some(Message::Ack(ack)) if ack.up_to >= up_to => return Ok(ack.up_to),
                Some(Message::Error(err)) => {
                    return Err(format!("error while waiting for ack {up_to}: {err:?}").into());
                }
                Some(_) => {}
                None => return Err(format!("closed while waiting for ack {up_to}").into()),
            }
        }
    }
}
