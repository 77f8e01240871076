//! Two engines as two server instances of one cluster (`docs/cluster.md`): side A's producer
//! on one, side B's consumer on the other. The second learns of A's durable items only through
//! a tail of the log (`handle_tailed`) or the log's head (`handle_remote_progress`), and of
//! A's presence through `handle_remote_presence`.

use bytes::Bytes;
use relay_core::engine::{
    DeliverySource, Direction, EngineConfig, GroupId, GroupMode, GroupSnapshot, RelayEngine,
    RelayOutput, Side, StorageRequest,
};
use relay_core::log::{AppendOutcome, Item, ReadBatch};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn item(seq: u64) -> Item {
    Item {
        seq,
        ts_ms: 1_000 + seq,
        payload: Bytes::from(format!("frame {seq}")),
    }
}

/// One server instance: an engine holding the activated group `gid` with `side` connected here.
fn instance(gid: &GroupId, side: Side) -> Result<RelayEngine, Box<dyn std::error::Error>> {
    let mut engine = RelayEngine::new(EngineConfig::default());
    let snapshot = GroupSnapshot {
        activated: true,
        ..GroupSnapshot::default()
    };
    engine.add_group(gid.clone(), snapshot, 0);
    engine.handle_connected(gid, side, 0, 1)?;
    Ok(engine)
}

fn drain(engine: &mut RelayEngine, now: u64) -> (Vec<RelayOutput>, Vec<StorageRequest>) {
    while engine.poll_timeout().is_some_and(|at| at <= now) {
        engine.handle_timeout(now);
    }
    let mut outputs = Vec::new();
    while let Some(output) = engine.poll_output() {
        outputs.push(output);
    }
    let mut storage = Vec::new();
    while let Some(request) = engine.poll_storage() {
        storage.push(request);
    }
    (outputs, storage)
}

fn delivered(outputs: &[RelayOutput]) -> Vec<(u64, DeliverySource)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            RelayOutput::Deliver { items, source, .. } => {
                Some(items.iter().map(|i| (i.seq, *source)).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn tailed_items_reach_a_consumer_on_another_instance_once_in_order() -> TestResult {
    let gid = GroupId::new("g");
    let mut one = instance(&gid, Side::A)?;
    let mut two = instance(&gid, Side::B)?;
    // Each instance sees the other side offline until presence says otherwise.
    assert_eq!(
        two.group_status(&gid).map(|s| s.mode),
        Some(GroupMode::Degraded)
    );
    two.handle_remote_presence(&gid, Side::A, true, 2)?;
    one.handle_remote_presence(&gid, Side::B, true, 2)?;
    assert_eq!(
        two.group_status(&gid).map(|s| s.mode),
        Some(GroupMode::Active)
    );
    assert_eq!(
        one.group_status(&gid).map(|s| s.mode),
        Some(GroupMode::Active)
    );

    // A's frames on instance one: appended there, acknowledged after the append.
    one.handle_frames(&gid, Side::A, (1..=5).map(item).collect(), 3)?;
    let (outputs, storage) = drain(&mut one, 3);
    assert!(delivered(&outputs).is_empty(), "B is not on instance one");
    assert!(
        matches!(storage.as_slice(), [StorageRequest::Append { items, .. }] if items.len() == 5)
    );
    let ack = AppendOutcome {
        stored: 5,
        duplicates: 0,
        ack: 5,
    };
    one.handle_append_result(&gid, Direction::AToB, Ok(ack), 4)?;
    let (outputs, _) = drain(&mut one, 4);
    assert!(outputs.iter().any(|o| matches!(
        o,
        RelayOutput::Ack {
            to: Side::A,
            up_to: 5,
            ..
        }
    )));

    // Instance two tails the log: 1..=3, then 2..=5 again (an overlapping re-read).
    two.handle_tailed(&gid, Direction::AToB, (1..=3).map(item).collect(), 5)?;
    two.handle_tailed(&gid, Direction::AToB, (2..=5).map(item).collect(), 5)?;
    let (outputs, _) = drain(&mut two, 5);
    let got = delivered(&outputs);
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(got.iter().all(|(_, source)| *source == DeliverySource::Log));
    Ok(())
}

#[test]
fn a_hole_in_the_tail_is_read_from_the_log() -> TestResult {
    let gid = GroupId::new("g");
    let mut two = instance(&gid, Side::B)?;
    // The tail starts late (it missed 1..=3): nothing is delivered before a log read.
    two.handle_tailed(&gid, Direction::AToB, (4..=6).map(item).collect(), 2)?;
    let (outputs, storage) = drain(&mut two, 2);
    assert!(delivered(&outputs).is_empty());
    let Some(StorageRequest::Read { after, epoch, .. }) = storage
        .into_iter()
        .find(|r| matches!(r, StorageRequest::Read { .. }))
    else {
        return Err("no log read for the hole".into());
    };
    assert_eq!(after, 0);
    let batch = ReadBatch {
        gap: None,
        items: (1..=6).map(item).collect(),
    };
    two.handle_read_result(&gid, Direction::AToB, epoch, Ok(batch), 3)?;
    let (outputs, _) = drain(&mut two, 5);
    let seqs: Vec<u64> = delivered(&outputs).iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    Ok(())
}

#[test]
fn remote_progress_sets_head_and_backlog_without_a_tail() -> TestResult {
    let gid = GroupId::new("g");
    // B produces here; A (remote, now offline) had acknowledged 4 of B's 10 frames.
    let mut two = instance(&gid, Side::B)?;
    two.handle_frames(&gid, Side::B, (1..=10).map(item).collect(), 2)?;
    let _ = drain(&mut two, 2);
    let ack = AppendOutcome {
        stored: 10,
        duplicates: 0,
        ack: 10,
    };
    two.handle_append_result(&gid, Direction::BToA, Ok(ack), 3)?;
    two.handle_remote_progress(&gid, Direction::BToA, 10, Some(4), 4)?;
    let status = two.group_status(&gid).ok_or("unknown group")?;
    assert_eq!(status.backlog.b_to_a, 6);
    assert_eq!(status.offline, vec![Side::A]);
    // A's producer elsewhere stored 7 items in a_to_b: B, connected here, reads them.
    two.handle_remote_progress(&gid, Direction::AToB, 7, None, 5)?;
    let (_, storage) = drain(&mut two, 5);
    assert!(storage.iter().any(|r| matches!(
        r,
        StorageRequest::Read {
            direction: Direction::AToB,
            after: 0,
            ..
        }
    )));
    Ok(())
}
