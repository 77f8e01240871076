//! Model-based property test of the UDS tester against the ECU simulator, both sans-IO over a
//! virtual link with a virtual clock: random request sequences (DTC reads with random masks,
//! clears of all / one / unknown DTCs, DID reads, session changes, TesterPresent, unsupported
//! services), with and without response-pending, give exactly the answers a plain model of
//! the ECU's DTC list and DIDs predicts.
#![allow(clippy::unwrap_used)]

mod isotp_support;

use std::collections::BTreeMap;
use std::time::Duration;

use can_io::CanId;
use can_io::uds::ecu::{DidSpec, DtcSpec, EcuProfile, EcuSimulator, EcuSpec, IsoTpSpec};
use can_io::uds::{Answer, Target, UdsError, UdsEvent, UdsTesterCore, UdsTiming};
use isotp_support::Pair;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Action {
    ReadDtcs(u8),
    ClearAll,
    ClearOne(usize),
    ClearUnknown,
    ReadDids(Vec<u16>),
    Session(u8),
    TesterPresent(bool),
    Unsupported(u8),
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        any::<u8>().prop_map(Action::ReadDtcs),
        Just(Action::ClearAll),
        (0usize..8).prop_map(Action::ClearOne),
        Just(Action::ClearUnknown),
        prop::collection::vec(prop::sample::select(vec![0xF190u16, 0xF40D, 0x1234]), 1..4)
            .prop_map(Action::ReadDids),
        (0u8..6).prop_map(Action::Session),
        any::<bool>().prop_map(Action::TesterPresent),
        prop::sample::select(vec![0x27u8, 0x2E, 0x31, 0x85]).prop_map(Action::Unsupported),
    ]
}

/// The ECU as a list and a map.
struct Model {
    dtcs: Vec<(u32, u8)>,
    dids: BTreeMap<u16, Vec<u8>>,
}

impl Model {
    /// The request bytes, and the answer expected (`None`: no answer).
    fn step(&mut self, a: &Action) -> (Vec<u8>, Option<Vec<u8>>) {
        match a {
            Action::ReadDtcs(mask) => {
                let mut r = vec![0x59, 0x02, 0xFF];
                for (dtc, st) in self.dtcs.iter().filter(|(_, st)| st & mask != 0) {
                    r.extend_from_slice(&dtc.to_be_bytes()[1..]);
                    r.push(*st);
                }
                (vec![0x19, 0x02, *mask], Some(r))
            }
            Action::ClearAll => {
                self.dtcs.clear();
                (vec![0x14, 0xFF, 0xFF, 0xFF], Some(vec![0x54]))
            }
            Action::ClearOne(i) => match self.dtcs.get(*i).copied() {
                Some((dtc, _)) => {
                    self.dtcs.retain(|(d, _)| *d != dtc);
                    let b = dtc.to_be_bytes();
                    (vec![0x14, b[1], b[2], b[3]], Some(vec![0x54]))
                }
                None => (vec![0x14, 0x00, 0x00, 0x07], Some(vec![0x7F, 0x14, 0x31])),
            },
            Action::ClearUnknown => (vec![0x14, 0x00, 0x00, 0x07], Some(vec![0x7F, 0x14, 0x31])),
            Action::ReadDids(dids) => {
                let mut req = vec![0x22];
                let mut r = vec![0x62];
                for d in dids {
                    req.extend_from_slice(&d.to_be_bytes());
                    if let Some(v) = self.dids.get(d) {
                        r.extend_from_slice(&d.to_be_bytes());
                        r.extend_from_slice(v);
                    }
                }
                let answer = if r.len() == 1 {
                    vec![0x7F, 0x22, 0x31]
                } else {
                    r
                };
                (req, Some(answer))
            }
            Action::Session(s) => {
                let answer = if (1..=3).contains(s) {
                    vec![0x50, *s, 0x00, 0x32, 0x01, 0xF4]
                } else {
                    vec![0x7F, 0x10, 0x12]
                };
                (vec![0x10, *s], Some(answer))
            }
            Action::TesterPresent(suppress) => {
                if *suppress {
                    (vec![0x3E, 0x80], None)
                } else {
                    (vec![0x3E, 0x00], Some(vec![0x7E, 0x00]))
                }
            }
            Action::Unsupported(sid) => (vec![*sid, 0x01], Some(vec![0x7F, *sid, 0x11])),
        }
    }
}

fn spec(pending_ms: u64, block_size: u8) -> EcuSpec {
    let codes = [
        "P0420", "U0100", "P0300", "C0035", "B1234", "P0171", "P0562", "U0073",
    ];
    EcuSpec {
        name: "engine".into(),
        request_id: 0x7E0,
        response_id: 0x7E8,
        functional_id: None,
        dtcs: codes
            .iter()
            .enumerate()
            .map(|(i, c)| DtcSpec {
                code: Some((*c).into()),
                ftb: i as u8,
                dtc: None,
                status: [0x2F, 0x09, 0x08, 0x24, 0x01, 0x80, 0x40, 0x10][i],
            })
            .collect(),
        dids: BTreeMap::from([
            (
                0xF190,
                DidSpec {
                    ascii: Some("1HGCM82633A004352".into()),
                    hex: None,
                },
            ),
            (
                0xF40D,
                DidSpec {
                    ascii: None,
                    hex: Some("3C".into()),
                },
            ),
        ]),
        response_pending_ms: pending_ms,
        isotp: IsoTpSpec {
            block_size,
            ..IsoTpSpec::default()
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tester_and_simulator_agree_with_the_model(
        actions in prop::collection::vec(arb_action(), 1..25),
        pending in prop_oneof![Just(0u64), Just(300u64)],
        block_size in 0u8..4,
    ) {
        let spec = spec(pending, block_size);
        let mut model = Model {
            dtcs: spec.dtcs.iter().map(|d| {
                let r = d.record().unwrap();
                (r.dtc.raw(), r.status.0)
            }).collect(),
            dids: spec.dids.iter().map(|(k, v)| (*k, v.bytes().unwrap())).collect(),
        };
        let sim = EcuSimulator::new(&EcuProfile { ecus: vec![spec] }).unwrap();
        let timing = UdsTiming { p2: Duration::from_millis(100), p2_star: Duration::from_secs(2) };
        let tester = UdsTesterCore::obd(timing).unwrap();
        let mut pair = Pair::new(tester, sim);
        let ecu = CanId::standard(0x7E0).unwrap();
        for a in &actions {
            let (request, want) = model.step(a);
            pair.a.request(Target::Ecu(ecu), &request, pair.now).unwrap();
            prop_assert!(pair.run(Duration::from_secs(10)));
            let events: Vec<UdsEvent> = std::iter::from_fn(|| pair.a.poll_event()).collect();
            let answers: Vec<Vec<u8>> = events.iter().filter_map(|e| match e {
                UdsEvent::Answer(a) => Some(match &a.answer {
                    Answer::Positive(m) => m.clone(),
                    Answer::Negative(nrc) => vec![0x7F, request[0], nrc.0],
                }),
                _ => None,
            }).collect();
            let finished = events.iter().filter_map(|e| match e {
                UdsEvent::Finished(r) => Some(r.clone()),
                _ => None,
            }).collect::<Vec<Result<(), UdsError>>>();
            prop_assert_eq!(finished, vec![Ok(())], "action {:?}", a);
            prop_assert_eq!(answers, want.into_iter().collect::<Vec<_>>(), "action {:?}", a);
            let pendings = events.iter().filter(|e| matches!(e, UdsEvent::Pending { .. })).count();
            let answered = !matches!(a, Action::TesterPresent(true));
            prop_assert_eq!(pendings, usize::from(pending > 0 && answered));
        }
        let dtcs_left: Vec<(u32, u8)> = pair.b.responders().next().unwrap().dtcs().iter()
            .map(|d| (d.dtc.raw(), d.status.0)).collect();
        prop_assert_eq!(dtcs_left, model.dtcs);
        prop_assert_eq!(pair.a.stats().unmatched, 0);
        prop_assert_eq!(pair.a.link_stats(ecu).unwrap().errors(), 0);
    }
}
