//! The server's Redis killed (SIGKILL) in the middle of a two-way relay and started again on
//! its append-only file: relay streams live in Redis, so appends fail while it is down; agents
//! keep what was not acknowledged and send it again, and nothing acknowledged is lost.

use std::time::Duration;

use crate::fault_support::TwoWay;
use crate::support::{Pair, ServerOptions, ServerProc, TestResult, Workspace};
use tether_testkit::redis::OwnRedis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_relay_loses_and_duplicates_nothing() -> TestResult {
    let ws = Workspace::new()?;
    let mut redis = OwnRedis::start(&ws.path("redis")).await?;
    let server = ServerProc::start(
        &ws,
        ServerOptions {
            redis_url: Some(redis.url()),
            ..ServerOptions::default()
        },
    )
    .await?;
    let pair = Pair::start(&ws, &server, "rita").await?;
    let outcome = async {
        let stream = TwoWay::start(&ws, &server, &pair).await?;
        let at_kill = stream.received_at_b();
        redis.kill9();
        // Down for a while the dongles keep sending.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        redis.restart().await?;
        stream
            .check_across("across a Redis restart", &server, &pair, at_kill)
            .await?;
        stream.stop().await
    }
    .await;
    pair.explain(&ws, outcome).await
}
