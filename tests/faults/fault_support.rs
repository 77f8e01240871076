//! What the fault tests share: a two-way stream through a [`Pair`] and its end-to-end check,
//! and a lossy TCP proxy (a private `redis-server` is the test kit's `OwnRedis`).

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::{self, Pair, ServerProc, TestResult, Workspace, candump_frames};

/// Both dongles replaying their half of the capture (speed 8) and recording what they get: the
/// e2e harness's [`Pair::replay_both_ways`], started and checked the way every fault test does.
pub(crate) struct TwoWay(support::TwoWay);

impl TwoWay {
    /// Starts the dongles and waits until frames flow both ways (the fault comes mid-stream).
    pub(crate) async fn start(
        ws: &Workspace,
        server: &ServerProc,
        pair: &Pair,
    ) -> TestResult<TwoWay> {
        let two_way = pair.replay_both_ways(ws)?;
        pair.wait_mode(&server.api(), "active").await?;
        two_way.running(200).await?;
        Ok(TwoWay(two_way))
    }

    /// Frames B has received so far (to show the fault came before the end).
    pub(crate) fn received_at_b(&self) -> usize {
        candump_frames(&self.0.b_rx).len()
    }

    /// Both directions complete, exactly once and in order; the group drains to no backlog.
    pub(crate) async fn check(&self, what: &str, server: &ServerProc, pair: &Pair) -> TestResult {
        self.0.check(pair, what).await?;
        self.drained(server, pair).await
    }

    /// [`TwoWay::check`] across a fault that came when B had received `at_fault` frames
    /// ([`TwoWay::received_at_b`]), which must be before the stream ended
    /// ([`support::TwoWay::check_across`]).
    pub(crate) async fn check_across(
        &self,
        what: &str,
        server: &ServerProc,
        pair: &Pair,
        at_fault: usize,
    ) -> TestResult {
        self.0.check_across(pair, what, at_fault).await?;
        self.drained(server, pair).await
    }

    /// The group is active again with no backlog either way.
    async fn drained(&self, server: &ServerProc, pair: &Pair) -> TestResult {
        let group = pair.wait_mode(&server.api(), "active").await?;
        assert_eq!(group["backlog"]["a_to_b"], 0, "{group}");
        assert_eq!(group["backlog"]["b_to_a"], 0, "{group}");
        Ok(())
    }

    /// Stops both dongles.
    pub(crate) async fn stop(mut self) -> TestResult {
        self.0.stop().await
    }
}

/// Delay of every chunk through the [`LossyProxy`].
pub(crate) const LINK_DELAY: Duration = Duration::from_millis(200);
/// Share of chunks held back for a retransmission time.
pub(crate) const LINK_LOSS: f64 = 0.10;
/// Extra delay of a "lost" chunk: TCP's shortest retransmission timeout (200 ms) plus one more
/// trip, as a lost segment reaches the application.
pub(crate) const LINK_RETRANSMIT: Duration = Duration::from_millis(400);

/// A TCP proxy in front of `upstream` that delays every chunk in each direction by
/// [`LINK_DELAY`] and holds back [`LINK_LOSS`] of them another [`LINK_RETRANSMIT`], keeping
/// the byte order (TCP's view of a lossy, slow link). Runs until the test ends.
pub(crate) struct LossyProxy {
    pub addr: SocketAddr,
}

impl LossyProxy {
    pub(crate) async fn start(upstream: SocketAddr) -> TestResult<LossyProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::spawn(lossy_copy(cr, sw));
                        tokio::spawn(lossy_copy(sr, cw));
                    }
                });
            }
        });
        Ok(LossyProxy { addr })
    }

    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn lossy_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_due = tokio::time::Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut delay = LINK_DELAY;
        if rand::rng().random_bool(LINK_LOSS) {
            delay += LINK_RETRANSMIT;
        }
        // In order: a chunk never overtakes one held back before it.
        let due = (tokio::time::Instant::now() + delay).max(last_due);
        last_due = due;
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
