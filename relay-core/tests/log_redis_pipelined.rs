//! Pipelined Redis appends (`RedisStreamLog::append_after`, `docs/storage.md`): an append sent
//! before the one it follows was answered stores nothing until that one's items are stored, so
//! a refused, failed or late predecessor never leaves a hole behind its followers. Needs the
//! server at `REDIS_URL` (fails without it).

mod log_common;

use log_common::{Harness, RedisHarness, items};
use relay_core::log::{AppendOutcome, Pipelined, ReadBatch, StreamLog};

fn seqs(batch: &ReadBatch) -> Vec<u64> {
    batch.items.iter().map(|i| i.seq).collect()
}

fn done(stored: u64, duplicates: u64, ack: u64) -> Pipelined {
    Pipelined::Done(AppendOutcome {
        stored,
        duplicates,
        ack,
    })
}

#[tokio::test]
async fn a_follower_stores_nothing_until_its_predecessor_is_stored() {
    let h = RedisHarness::new().await;
    let log = h.log();
    let s = "p";
    assert_eq!(
        log.append_after(s, &items(s, 1..=3), 0)
            .await
            .expect("append"),
        done(3, 0, 3)
    );
    assert_eq!(
        log.append_after(s, &items(s, 4..=6), 3)
            .await
            .expect("append"),
        done(3, 0, 6)
    );
    // A follower of 7..=9 reaching Redis before it: refused, nothing stored, head unchanged.
    assert_eq!(
        log.append_after(s, &items(s, 10..=12), 9)
            .await
            .expect("append"),
        Pipelined::Behind { head: 6 }
    );
    let read = log.read(s, 6, 100).await.expect("read");
    assert_eq!((read.gap, seqs(&read)), (None, vec![]));
    // The predecessor, carrying duplicates (refused once, then sent again without them), then
    // the follower again: dense, nothing lost, nothing twice.
    assert_eq!(
        log.append_after(s, &items(s, 5..=9), 0)
            .await
            .expect("append"),
        done(3, 2, 9)
    );
    assert_eq!(
        log.append_after(s, &items(s, 10..=12), 9)
            .await
            .expect("append"),
        done(3, 0, 12)
    );
    // A follower whose predecessor's items another writer already stored: duplicates dropped.
    assert_eq!(
        log.append_after(s, &items(s, 11..=14), 10)
            .await
            .expect("append"),
        done(2, 2, 14)
    );
    let read = log.read(s, 0, 100).await.expect("read");
    assert_eq!(read.gap, None);
    assert_eq!(seqs(&read), (1..=14).collect::<Vec<_>>());
    // Only duplicates, behind or not.
    assert_eq!(
        log.append_after(s, &items(s, 13..=14), 12)
            .await
            .expect("append"),
        done(0, 2, 14)
    );
    assert_eq!(
        log.append_after(s, &[], 20).await.expect("append"),
        Pipelined::Behind { head: 14 }
    );
    h.cleanup().await;
}

#[tokio::test]
async fn pipelined_appends_on_one_connection_keep_the_stream_dense() {
    let h = RedisHarness::new().await;
    let log = h.log();
    let s = "q";
    // Batches of 10 sent 4 at a time, each behind the one before; a batch refused as behind is
    // sent again (plainly) once the ones before it are settled, as the server's lanes do.
    let mut after = 0;
    for round in 0..25u64 {
        let batches: Vec<_> = (0..4u64)
            .map(|k| {
                let first = round * 40 + k * 10 + 1;
                items(s, first..=first + 9)
            })
            .collect();
        let sends = batches.iter().enumerate().map(|(k, batch)| {
            let follows = if k == 0 { after } else { batches[k - 1][9].seq };
            log.append_after(s, batch, follows)
        });
        let answers = futures::future::join_all(sends).await;
        for (batch, answer) in batches.iter().zip(answers) {
            match answer.expect("append") {
                Pipelined::Done(outcome) => assert_eq!(outcome.ack, batch[9].seq),
                Pipelined::Behind { .. } => {
                    let outcome = log.append(s, batch).await.expect("append again");
                    assert_eq!(outcome.ack, batch[9].seq);
                }
            }
        }
        after = batches[3][9].seq;
    }
    let read = log.read(s, 0, 2000).await.expect("read");
    assert_eq!(read.gap, None);
    assert_eq!(seqs(&read), (1..=1000).collect::<Vec<_>>());
    h.cleanup().await;
}
