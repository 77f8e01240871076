//! The data plane on the Redis Streams backend (needs `REDIS_URL`; fails without it). Each run
//! uses fresh group ids, hence fresh stream keys, and deletes its streams afterwards.

#[path = "server_support/data_client.rs"]
mod data_client;
mod server_support;

use std::time::Duration;

use data_client::{DataClient, Received};
use relay_core::engine::Side;
use relay_core::log::{MAX_SEQ, RedisStreamLog, StreamLog};
use relay_core::protocol::Encoding;
use server_support::{TestResult, TestServer, redis_url};

#[tokio::test]
async fn relay_backlog_and_replay_on_redis_streams() -> TestResult {
    let url = redis_url()?;
    let srv = TestServer::start_with(|config| config.redis_url = Some(url.clone())).await?;
    let (user, agent, id) = srv.user_with_active_group("rita").await?;
    let log = RedisStreamLog::connect(&url, "tether:").await?;
    let keys = [format!("group:{id}:a_to_b"), format!("group:{id}:b_to_a")];

    let result = async {
        let (mut a, _) =
            DataClient::open(&srv.base, &agent, &id, Side::A, 0, &[Encoding::Json]).await?;
        let acked = a.send_acked(1, 100).await?;
        assert!(log.backlog(&keys[0], MAX_SEQ).await?.head >= acked);
        let (mut b, _) =
            DataClient::open(&srv.base, &agent, &id, Side::B, 0, &[Encoding::Msgpack]).await?;
        let mut got = Received::default();
        b.consume_until(100, &mut got).await?;
        assert_eq!(got.seqs, (1..=100).collect::<Vec<_>>());
        b.send_acked(1, 10).await?;
        let mut back = Received::default();
        a.consume_until(10, &mut back).await?;
        assert_eq!(back.seqs, (1..=10).collect::<Vec<_>>());

        // B away: backlog, then replay from B's cursor.
        b.close().await?;
        a.send_acked(101, 160).await?;
        let (mut b, welcome) =
            DataClient::open(&srv.base, &agent, &id, Side::B, 100, &[Encoding::Json]).await?;
        assert_eq!(welcome.tx_acked, 10);
        let mut rest = Received::after(100);
        b.consume_until(160, &mut rest).await?;
        assert_eq!(rest.seqs, (101..=160).collect::<Vec<_>>());
        for _ in 0..400 {
            let (_, state) = srv.get(&format!("/api/v1/groups/{id}"), &user).await?;
            if state["mode"] == "active" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err::<(), Box<dyn std::error::Error + Send + Sync>>("group never became active".into())
    }
    .await;
    for key in &keys {
        log.delete_stream(key).await?;
    }
    result
}
