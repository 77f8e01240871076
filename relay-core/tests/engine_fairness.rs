//! Replay fairness: while one stream replays 100,000 items, live streams on the same engine
//! (the other direction of the same group, and another group) keep being delivered within a
//! stated bound of scheduling rounds, and the replay itself respects its rate limit.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod storage_support;

use std::collections::HashMap;

use bytes::Bytes;
use futures::executor::block_on;
use relay_core::engine::{
    Direction, EngineConfig, GroupId, GroupMode, GroupSnapshot, RelayEngine, RelayOutput, Side,
    StreamSnapshot,
};
use relay_core::log::{Item, MemoryStreamLog, StreamLog};
use storage_support::{Cursors, serve};

const BACKLOG: u64 = 100_000;
const ROUND_MS: u64 = 10;
/// The stated bound: a live item that became durable before a scheduling round starts is
/// delivered by that round — it takes at most 1 round, whatever the other backlogs.
const LIVE_BOUND_ROUNDS: u64 = 1;
const LIVE_PER_ROUND: u64 = 3;

fn item(seq: u64) -> Item {
    Item {
        seq,
        ts_ms: 0,
        payload: Bytes::from_static(b"frame"),
    }
}

struct Driver {
    engine: RelayEngine,
    log: MemoryStreamLog,
}

impl Driver {
    fn run_storage(&mut self, now: u64) {
        while let Some(req) = self.engine.poll_storage() {
            serve(&mut self.engine, &self.log, req, now, Cursors::Skip);
        }
    }
}

#[test]
fn live_streams_are_not_starved_by_a_100k_replay() {
    let config = EngineConfig {
        quantum: 64,
        replay_rate_per_s: 5_000,
        replay_burst: 500,
        read_batch: 512,
        live_buffer: 4096,
        consumer_window: 1_000_000,
        ..EngineConfig::default()
    };
    let log = MemoryStreamLog::new();
    let g1 = GroupId::new("replaying");
    let g2 = GroupId::new("live");
    let key = Direction::AToB.stream_key(&g1);
    for chunk in (1..=BACKLOG).collect::<Vec<_>>().chunks(1024) {
        block_on(log.append(&key, &chunk.iter().map(|s| item(*s)).collect::<Vec<_>>())).unwrap();
    }

    let mut d = Driver {
        engine: RelayEngine::new(config),
        log,
    };
    let snap1 = GroupSnapshot {
        activated: true,
        a_to_b: StreamSnapshot {
            head: BACKLOG,
            consumer_cursor: 0,
        },
        b_to_a: StreamSnapshot::default(),
    };
    d.engine.add_group(g1.clone(), snap1, 0);
    d.engine.add_group(
        g2.clone(),
        GroupSnapshot {
            activated: true,
            ..Default::default()
        },
        0,
    );
    for g in [&g1, &g2] {
        for side in [Side::A, Side::B] {
            d.engine.handle_connected(g, side, 0, 0).unwrap();
        }
    }

    // (group, direction) -> next seq to produce / last delivered.
    let live = [(g1.clone(), Side::B), (g2.clone(), Side::A)];
    let mut produced: HashMap<GroupId, u64> = HashMap::new();
    let mut durable_round: HashMap<(GroupId, u64), u64> = HashMap::new();
    let mut replayed = 0u64;
    let mut worst_wait = 0u64;
    let mut live_delivered = 0u64;
    let mut g1_modes = Vec::new();
    let mut last_delivered: HashMap<(GroupId, Side), u64> = HashMap::new();

    let mut round = 0u64;
    while replayed < BACKLOG {
        round += 1;
        assert!(
            round < 3_000,
            "replay made too little progress: {replayed} after {round} rounds"
        );
        let now = round * ROUND_MS;
        // Live producers send a few frames; they become durable before the round.
        for (g, side) in &live {
            let next = produced.entry(g.clone()).or_default();
            let items: Vec<Item> = (*next + 1..=*next + LIVE_PER_ROUND).map(item).collect();
            *next += LIVE_PER_ROUND;
            for it in &items {
                durable_round.insert((g.clone(), it.seq), round);
            }
            d.engine.handle_frames(g, *side, items, now).unwrap();
        }
        d.run_storage(now);
        // Exactly one scheduling round.
        d.engine.handle_timeout(now);
        d.run_storage(now);
        let mut replayed_this_round = 0;
        while let Some(out) = d.engine.poll_output() {
            match out {
                RelayOutput::Deliver {
                    group, to, items, ..
                } => {
                    let last = last_delivered.entry((group.clone(), to)).or_default();
                    for it in &items {
                        assert_eq!(it.seq, *last + 1, "per-stream order on {group}/{to}");
                        *last = it.seq;
                    }
                    if group == g1 && to == Side::B {
                        replayed_this_round += items.len() as u64;
                    } else {
                        for it in &items {
                            let wait = round - durable_round[&(group.clone(), it.seq)] + 1;
                            worst_wait = worst_wait.max(wait);
                            live_delivered += 1;
                        }
                    }
                    let up_to = items.last().map(|i| i.seq).unwrap_or(0);
                    d.engine.handle_ack(&group, to, up_to, now).unwrap();
                }
                RelayOutput::ModeChanged { group, status } if group == g1 => {
                    g1_modes.push(status.mode)
                }
                RelayOutput::Ack { .. } | RelayOutput::ModeChanged { .. } => {}
                other => panic!("unexpected output {other:?}"),
            }
        }
        assert!(replayed_this_round <= config.quantum, "quantum per round");
        replayed += replayed_this_round;
        // Token bucket: burst plus rate × elapsed virtual time.
        let allowed = config.replay_burst + config.replay_rate_per_s * now / 1000;
        assert!(
            replayed <= allowed,
            "replayed {replayed} > allowed {allowed} at {now} ms"
        );
        assert!(
            worst_wait <= LIVE_BOUND_ROUNDS,
            "live item took {worst_wait} rounds"
        );
    }

    assert_eq!(
        live_delivered,
        2 * LIVE_PER_ROUND * round,
        "every live item was delivered"
    );
    assert_eq!(worst_wait, LIVE_BOUND_ROUNDS);
    // The replay ran at its rate limit: 100,000 items at 5,000/s (50 per 10 ms round) after a
    // 500-item burst take about 1,990 rounds.
    assert!(
        (1_900..=2_100).contains(&round),
        "replay took {round} rounds"
    );
    // g1 was degraded while replaying and became active once drained.
    assert_eq!(g1_modes.last(), Some(&GroupMode::Active));
    assert!(g1_modes.contains(&GroupMode::Degraded));
}
