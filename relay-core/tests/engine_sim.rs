//! Simulation tests: two sides and the relay engine over a virtual link and clock, with
//! disconnects, reconnects, deactivation, retention trims, slow and failing storage and server
//! crashes at random points. The end state is
//! checked against the model in `engine_support` (every frame delivered exactly once in order,
//! or reported in a retention gap with the exact count).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod engine_support;

use engine_support::Sim;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use relay_core::engine::{Direction, EngineConfig, GroupMode, Side};

#[derive(Debug, Clone)]
enum Op {
    Produce(Side, u64),
    Step(usize),
    Advance(u64),
    Disconnect(Side),
    Connect(Side),
    Trim(Direction, u64),
    Deactivate,
    Activate,
    /// Completes this many storage requests (only with slow storage).
    Storage(usize),
    FailAppend,
    Crash,
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::A), Just(Side::B)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (side(), 1u64..40).prop_map(|(s, n)| Op::Produce(s, n)),
        4 => (1usize..8).prop_map(Op::Step),
        2 => (1u64..500).prop_map(Op::Advance),
        1 => side().prop_map(Op::Disconnect),
        1 => side().prop_map(Op::Connect),
        1 => (prop_oneof![Just(Direction::AToB), Just(Direction::BToA)], 0u64..30)
            .prop_map(|(d, n)| Op::Trim(d, n)),
        1 => Just(Op::Deactivate),
        1 => Just(Op::Activate),
    ]
}

/// The same, plus slow storage (appends complete only when told), failing appends and server
/// crashes: what cut-through delivery has to survive.
fn op_slow_storage() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => op(),
        4 => (1usize..6).prop_map(Op::Storage),
        1 => Just(Op::FailAppend),
        1 => Just(Op::Crash),
    ]
}

fn small_config() -> EngineConfig {
    // Small numbers so that the live buffer overflows, reads are partial, the token bucket
    // runs dry and the consumer window fills inside short action sequences.
    EngineConfig {
        quantum: 4,
        replay_rate_per_s: 200,
        replay_burst: 10,
        read_batch: 7,
        live_buffer: 5,
        consumer_window: 12,
        cut_through: 6,
    }
}

fn run(ops: &[Op], config: EngineConfig) -> Sim {
    run_with(ops, config, false)
}

fn run_with(ops: &[Op], config: EngineConfig, slow_storage: bool) -> Sim {
    let mut sim = Sim::new(config);
    sim.deferred = slow_storage;
    sim.connect(Side::A);
    sim.connect(Side::B);
    for op in ops {
        match *op {
            Op::Produce(s, n) => sim.produce(s, n),
            Op::Step(h) => sim.step(h),
            Op::Advance(ms) => sim.advance(ms),
            Op::Disconnect(s) => sim.disconnect(s),
            Op::Connect(s) => sim.connect(s),
            Op::Trim(d, n) => sim.trim(d, n),
            Op::Deactivate => sim.set_active(false),
            Op::Activate => sim.set_active(true),
            Op::Storage(n) => sim.complete_storage(n),
            Op::FailAppend => sim.fail_next_append = true,
            Op::Crash => sim.crash(),
        }
    }
    sim.settle();
    sim.check_model();
    sim
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/engine_sim.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_frame_delivered_once_in_order_or_gapped(ops in proptest::collection::vec(op(), 1..80)) {
        let mut sim = run(&ops, small_config());
        // Settled with both sides online and nothing to replay: the group is active.
        prop_assert_eq!(sim.engine.group_status(&sim.group).map(|s| s.mode), Some(GroupMode::Active));
    }

    #[test]
    fn slow_storage_failures_and_crashes_neither_lose_nor_repeat(
        ops in proptest::collection::vec(op_slow_storage(), 1..100),
        strict in any::<bool>(),
    ) {
        let config = EngineConfig {
            cut_through: if strict { 0 } else { 6 },
            ..small_config()
        };
        let mut sim = run_with(&ops, config, true);
        prop_assert_eq!(sim.engine.group_status(&sim.group).map(|s| s.mode), Some(GroupMode::Active));
        if strict {
            prop_assert_eq!(sim.ahead_of_log, 0, "without cut-through no side holds undurable items");
        }
    }

    #[test]
    fn same_with_default_config(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops, EngineConfig::default());
    }
}

/// A sim where A connected and produced `n` frames while B stayed away, then `rounds` steps of
/// 8 hops ran.
fn produced_while_b_away(n: u64, rounds: usize) -> Sim {
    let mut sim = Sim::new(small_config());
    sim.connect(Side::A);
    sim.produce(Side::A, n);
    for _ in 0..rounds {
        sim.step(8);
    }
    sim
}

#[test]
fn offline_consumer_gets_backlog_in_order_after_reconnect() {
    let mut sim = produced_while_b_away(100, 50);
    assert_eq!(sim.sides[&Side::A].tx_acked, 100, "durable while B is away");
    assert_eq!(
        sim.engine
            .group_status(&sim.group)
            .map(|s| s.backlog.a_to_b),
        Some(100)
    );
    sim.settle();
    sim.check_model();
    assert_eq!(sim.sides[&Side::B].received, (1..=100).collect::<Vec<_>>());
    assert!(sim.sides[&Side::B].gaps.is_empty());
}

#[test]
fn trim_while_offline_reports_exact_gap_and_pressure() {
    let mut sim = produced_while_b_away(50, 30);
    sim.trim(Direction::AToB, 20);
    assert_eq!(sim.pressure.get(&Direction::AToB), Some(&30));
    sim.settle();
    sim.check_model();
    let b = &sim.sides[&Side::B];
    assert_eq!(b.gaps.len(), 1);
    assert_eq!((b.gaps[0].from, b.gaps[0].to, b.gaps[0].count), (1, 30, 30));
    assert_eq!(b.received, (31..=50).collect::<Vec<_>>());
}

#[test]
fn regression_disconnect_during_replay_then_trim() {
    use Op::*;
    let ops = [
        Produce(Side::A, 39),
        Disconnect(Side::B),
        Produce(Side::A, 39),
        Step(7),
        Connect(Side::B),
        Step(1),
        Trim(Direction::AToB, 3),
        Step(2),
        Disconnect(Side::B),
        Trim(Direction::AToB, 0),
        Produce(Side::A, 5),
        Connect(Side::B),
    ];
    run(&ops, small_config());
}
