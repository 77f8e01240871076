//! The reliable-queue scripts against a real Redis (`REDIS_URL`, default 127.0.0.1:6379).

use std::time::Duration;

use metering_core::message::QueueKind;
use metering_core::queue::{DlqEntry, KeyLayout, QueueStore};
use tether_testkit::redis::{RedisNamespace, redis_url};

/// Keys of the test's own, deleted when dropped (whether the test passed or not).
fn namespace() -> RedisNamespace {
    RedisNamespace::new("metering-queue")
}

fn store(prefix: &str, instance: &str) -> QueueStore {
    let client = redis::Client::open(redis_url()).expect("REDIS_URL parses");
    QueueStore::new(
        client,
        KeyLayout::new(prefix, instance),
        Duration::from_secs(5),
    )
    .expect("store")
}

async fn lpush(prefix: &str, q: QueueKind, items: &[&str]) {
    let s = store(prefix, "producer");
    let mut c = s.conn();
    let _: () = redis::cmd("LPUSH")
        .arg(s.keys().queue(q))
        .arg(items)
        .query_async(&mut c)
        .await
        .expect("lpush");
}

#[tokio::test]
async fn fetch_ack_reap_and_dlq_round_trip() {
    let ns = namespace();
    let prefix = &ns.prefix;
    let q = QueueKind::UsageRecords;
    lpush(prefix, q, &["a", "b", "c"]).await;

    // A dies holding two items (no lease ever written).
    let a = store(prefix, "inst-a");
    a.refresh_lease(Duration::from_millis(50))
        .await
        .expect("lease");
    let got = a.fetch(q, 2).await.expect("fetch");
    assert_eq!(
        got,
        vec![b"a".to_vec(), b"b".to_vec()],
        "FIFO: first pushed comes first"
    );
    assert_eq!(a.depths(q).await.expect("depths"), (1, 2, 0));

    // B cannot reap while A's lease lives.
    let b = store(prefix, "inst-b");
    assert_eq!(b.reap(3).await.expect("reap").returned, 0);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let r = b.reap(3).await.expect("reap");
    assert_eq!(r.returned, 2);
    // Returned to the head, in the original order, ahead of "c".
    let got = b.fetch(q, 10).await.expect("fetch");
    assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(b.ack(q, &[b"a", b"b"]).await.expect("ack"), 2);

    // "c": dead-letter, list, retry, purge.
    let entry = DlqEntry {
        id: "e1".into(),
        queue: q.name().into(),
        payload: "c".into(),
        reason: "test".into(),
        attempts: 1,
        first_attempt_at: None,
        dead_lettered_at: "2026-11-23T00:00:00Z".into(),
        response_status: Some(400),
        response_body: Some("no".into()),
    };
    assert!(b.dead_letter(q, b"c", &entry).await.expect("dlq"));
    assert_eq!(b.depths(q).await.expect("depths"), (0, 0, 1));
    assert_eq!(b.dlq_list(q, 10).await.expect("list"), vec![entry.clone()]);
    assert_eq!(b.dlq_retry(q, Some("nope")).await.expect("retry"), 0);
    assert_eq!(b.dlq_retry(q, Some("e1")).await.expect("retry"), 1);
    assert_eq!(b.depths(q).await.expect("depths"), (1, 0, 0));
    let got = b.fetch(q, 10).await.expect("fetch");
    assert!(b.dead_letter(q, &got[0], &entry).await.expect("dlq"));
    assert_eq!(b.dlq_purge(q, None).await.expect("purge"), 1);
    assert_eq!(b.depths(q).await.expect("depths"), (0, 0, 0));
}

#[tokio::test]
async fn item_reaped_too_often_goes_to_the_dlq() {
    let ns = namespace();
    let prefix = &ns.prefix;
    let q = QueueKind::QuotaRefresh;
    lpush(prefix, q, &["poison"]).await;
    let reaper = store(prefix, "reaper");
    for round in 1..=3u64 {
        let dying = store(prefix, &format!("dying-{round}"));
        dying
            .refresh_lease(Duration::from_millis(20))
            .await
            .expect("lease");
        assert_eq!(dying.fetch(q, 1).await.expect("fetch").len(), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let r = reaper.reap(3).await.expect("reap");
        if round < 3 {
            assert_eq!((r.returned, r.dead_lettered), (1, 0));
        } else {
            assert_eq!((r.returned, r.dead_lettered), (0, 1));
        }
    }
    let dlq = reaper.dlq_list(q, 10).await.expect("list");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload, "poison");
    assert_eq!(dlq[0].attempts, 3);
    assert!(dlq[0].reason.contains("delivered 3 times"));
    // Retry resets the delivery count.
    assert_eq!(reaper.dlq_retry(q, None).await.expect("retry"), 1);
    assert_eq!(reaper.depths(q).await.expect("depths"), (1, 0, 0));
}

#[tokio::test]
async fn blocking_fetch_outlives_the_default_response_timeout() {
    let ns = namespace();
    let prefix = &ns.prefix;
    let q = QueueKind::SessionLifecycle;
    let s = store(prefix, "blocker");
    let mut conn = s
        .blocking_connection(Duration::from_secs(2))
        .await
        .expect("conn");
    let pusher = {
        let prefix = prefix.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            lpush(&prefix, q, &["late"]).await;
        })
    };
    let got = s
        .fetch_blocking(&mut conn, q, Duration::from_secs(2))
        .await
        .expect("BLMOVE must not time out");
    pusher.await.expect("pusher");
    assert_eq!(got, Some(b"late".to_vec()));
}

#[tokio::test]
async fn executed_commands_are_remembered() {
    let ns = namespace();
    let prefix = &ns.prefix;
    let s = store(prefix, "cmd");
    let now = 1_800_000_000;
    assert!(!s.command_executed("c1", now).await.expect("check"));
    s.mark_command_executed("c1", now).await.expect("mark");
    assert!(s.command_executed("c1", now + 10).await.expect("check"));
    // Older than 24 h: forgotten.
    assert!(!s.command_executed("c1", now + 86_401).await.expect("check"));
}
