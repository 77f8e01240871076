//! socketcand over TCP: a server that socketcand clients (python-can's `socketcand` interface)
//! attach to, and a client for recording from a socketcand server.
//!
//! The server exports one bus name. Each connection gets `< hi >`, must `< open BUS >` and
//! `< rawmode >` (each answered `< ok >` in its own write), then receives every frame sent
//! through [`CanBus::send`] and may send frames with `< send … >`, which come out of
//! [`CanBus::recv`]. In hub mode, a frame one client sends is also passed to every other client,
//! so the server behaves as a shared bus.
//!
//! Each client has a bounded outgoing queue: a client that does not read loses frames, and the
//! loss is counted (per client in the log, in total in [`BusStats::dropped`]); it never stalls
//! the other clients. Frames raw mode cannot carry (remote, error, CAN FD) are counted as
//! dropped too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{BusStats, CanBus, now_ns};
use crate::error::Error;
use crate::frame::{CanRecord, Channel, Direction};
use crate::wire::socketcand::{
    self as proto, HI, ServerMessage, ServerSession, Tokenizer, encode_frame, encode_send,
    parse_server,
};

/// Frames queued per client before that client starts losing them.
pub const CLIENT_QUEUE: usize = 4096;

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    malformed: AtomicU64,
}

#[derive(Debug)]
struct ClientHandle {
    id: u64,
    peer: SocketAddr,
    raw: Arc<AtomicBool>,
    tx: mpsc::Sender<String>,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Clients {
    list: Mutex<Vec<Arc<ClientHandle>>>,
}

impl Clients {
    fn snapshot(&self) -> Vec<Arc<ClientHandle>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Queue `line` for every raw-mode client except `except`; returns frames dropped.
    fn broadcast(&self, line: &str, except: Option<u64>) -> u64 {
        let mut dropped = 0;
        for c in self.snapshot() {
            if Some(c.id) == except || !c.raw.load(Ordering::Acquire) {
                continue;
            }
            if c.tx.try_send(line.to_owned()).is_err() {
                let n = c.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(peer = %c.peer, dropped = n, "socketcand client too slow, dropping frames");
                }
                dropped += 1;
            }
        }
        dropped
    }
}

/// A socketcand server exporting one bus.
#[derive(Debug)]
pub struct SocketcandServer {
    local: SocketAddr,
    clients: Arc<Clients>,
    counters: Arc<Counters>,
    from_clients: mpsc::Receiver<CanRecord>,
    accept: JoinHandle<()>,
}

impl SocketcandServer {
    /// Listen on `addr` for clients opening `bus`. With `hub`, frames from one client are also
    /// passed to all other clients.
    pub async fn bind(addr: SocketAddr, bus: &str, hub: bool) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Io {
            action: "binding the socketcand listener",
            source,
        })?;
        let local = listener.local_addr().map_err(|source| Error::Io {
            action: "reading the socketcand listener address",
            source,
        })?;
        let clients = Arc::new(Clients::default());
        let counters = Arc::new(Counters::default());
        let (tx, from_clients) = mpsc::channel(CLIENT_QUEUE);
        let ctx = Arc::new(ServerCtx {
            bus: bus.to_owned(),
            channel: Channel::from(bus),
            hub,
            clients: clients.clone(),
            counters: counters.clone(),
            to_app: tx,
        });
        let accept = tokio::spawn(accept_loop(listener, ctx));
        Ok(Self {
            local,
            clients,
            counters,
            from_clients,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Clients currently in raw mode.
    pub fn raw_clients(&self) -> usize {
        self.clients
            .snapshot()
            .iter()
            .filter(|c| c.raw.load(Ordering::Acquire))
            .count()
    }
}

impl Drop for SocketcandServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[derive(Debug)]
struct ServerCtx {
    bus: String,
    channel: Channel,
    hub: bool,
    clients: Arc<Clients>,
    counters: Arc<Counters>,
    to_app: mpsc::Sender<CanRecord>,
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ServerCtx>) {
    let mut next_id = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                next_id += 1;
                tokio::spawn(serve_client(stream, peer, next_id, ctx.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "socketcand accept failed");
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_client(stream: TcpStream, peer: SocketAddr, id: u64, ctx: Arc<ServerCtx>) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<String>(CLIENT_QUEUE);
    let handle = Arc::new(ClientHandle {
        id,
        peer,
        raw: Arc::new(AtomicBool::new(false)),
        tx,
        dropped: AtomicU64::new(0),
    });
    ctx.clients
        .list
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(handle.clone());
    // One write per message: python-can reads the greeting and each `< ok >` with a single recv.
    let writer = tokio::spawn(async move {
        if wr.write_all(HI.as_bytes()).await.is_err() {
            return;
        }
        while let Some(line) = rx.recv().await {
            if wr.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut session = ServerSession::new(&ctx.bus);
    let mut tokens = Tokenizer::new();
    let mut buf = vec![0u8; 4096];
    'conn: loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        tokens.push(&buf[..n]);
        while let Some(el) = tokens.next_element() {
            let el = match el {
                Ok(el) => el,
                Err(e) => {
                    ctx.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "bad socketcand element");
                    continue;
                }
            };
            let action = session.handle_element(&el);
            if let Some(reply) = action.reply {
                if reply.starts_with("< error") {
                    ctx.counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
                // Replies wait for room: they are part of the handshake, not droppable frames.
                if handle.tx.send(reply).await.is_err() {
                    break 'conn;
                }
            }
            handle.raw.store(session.is_raw(), Ordering::Release);
            if let Some(frame) = action.frame {
                let ts = now_ns();
                if let (true, Ok(line)) = (ctx.hub, encode_frame(ts, &frame)) {
                    let d = ctx.clients.broadcast(&line, Some(id));
                    ctx.counters.dropped.fetch_add(d, Ordering::Relaxed);
                }
                let record = CanRecord::new(ts, ctx.channel.clone(), Direction::Rx, frame);
                if ctx.to_app.send(record).await.is_err() {
                    break 'conn;
                }
            }
        }
    }
    ctx.clients
        .list
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|c| c.id != id);
    drop(handle);
    let _ = writer.await;
}

impl CanBus for SocketcandServer {
    async fn send(&mut self, record: &CanRecord) -> Result<(), Error> {
        match encode_frame(record.ts_ns, &record.frame) {
            Ok(line) => {
                let d = self.clients.broadcast(&line, None);
                self.counters.dropped.fetch_add(d, Ordering::Relaxed);
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "frame not sent to socketcand clients");
            }
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<CanRecord>, Error> {
        // The accept task holds a sender for as long as the server lives, so this only ends
        // when the server is shut down.
        let r = self.from_clients.recv().await;
        if r.is_some() {
            self.counters.received.fetch_add(1, Ordering::Relaxed);
        }
        Ok(r)
    }

    fn stats(&self) -> BusStats {
        BusStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            received: self.counters.received.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            malformed: self.counters.malformed.load(Ordering::Relaxed),
        }
    }
}

/// A client of a socketcand server in raw mode.
#[derive(Debug)]
pub struct SocketcandClient {
    stream: TcpStream,
    tokens: Tokenizer,
    channel: Channel,
    buf: Vec<u8>,
    stats: BusStats,
}

impl SocketcandClient {
    /// Connect to `addr`, open `bus` and switch to raw mode.
    pub async fn connect(addr: SocketAddr, bus: &str) -> Result<Self, Error> {
        let stream = TcpStream::connect(addr).await.map_err(|source| Error::Io {
            action: "connecting to the socketcand server",
            source,
        })?;
        let _ = stream.set_nodelay(true);
        let mut c = Self {
            stream,
            tokens: Tokenizer::new(),
            channel: Channel::from(bus),
            buf: vec![0; 4096],
            stats: BusStats::default(),
        };
        c.expect(ServerMessage::Hi).await?;
        c.write(&proto::encode_open(bus)).await?;
        c.expect(ServerMessage::Ok).await?;
        c.write("< rawmode >").await?;
        c.expect(ServerMessage::Ok).await?;
        Ok(c)
    }

    async fn write(&mut self, s: &str) -> Result<(), Error> {
        self.stream
            .write_all(s.as_bytes())
            .await
            .map_err(|source| Error::Io {
                action: "writing to the socketcand server",
                source,
            })
    }

    async fn next_message(&mut self) -> Result<Option<ServerMessage>, Error> {
        loop {
            match self.tokens.next_element() {
                Some(Ok(el)) => match parse_server(&el) {
                    Ok(m) => return Ok(Some(m)),
                    Err(e) => {
                        self.stats.malformed += 1;
                        tracing::debug!(error = %e, "bad socketcand element");
                    }
                },
                Some(Err(e)) => {
                    self.stats.malformed += 1;
                    tracing::debug!(error = %e, "bad socketcand element");
                }
                None => {
                    let n = self
                        .stream
                        .read(&mut self.buf)
                        .await
                        .map_err(|source| Error::Io {
                            action: "reading from the socketcand server",
                            source,
                        })?;
                    if n == 0 {
                        return Ok(None);
                    }
                    self.tokens.push(&self.buf[..n]);
                }
            }
        }
    }

    async fn expect(&mut self, want: ServerMessage) -> Result<(), Error> {
        match self.next_message().await? {
            Some(m) if m == want => Ok(()),
            Some(other) => Err(Error::Malformed {
                protocol: "socketcand",
                reason: format!("expected {want:?} during the handshake, got {other:?}"),
            }),
            None => Err(Error::Closed {
                transport: "socketcand",
            }),
        }
    }
}

impl CanBus for SocketcandClient {
    async fn send(&mut self, record: &CanRecord) -> Result<(), Error> {
        let line = encode_send(&record.frame)?;
        self.write(&line).await?;
        self.stats.sent += 1;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<CanRecord>, Error> {
        loop {
            match self.next_message().await? {
                None => return Ok(None),
                Some(ServerMessage::Frame { ts_ns, frame }) => {
                    self.stats.received += 1;
                    return Ok(Some(CanRecord::new(
                        ts_ns,
                        self.channel.clone(),
                        Direction::Rx,
                        frame,
                    )));
                }
                Some(ServerMessage::Error(e)) => {
                    tracing::warn!(error = %e, "socketcand server reported an error")
                }
                Some(_) => {}
            }
        }
    }

    fn stats(&self) -> BusStats {
        self.stats
    }
}
