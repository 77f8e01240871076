//! Model-based property test of the sans-IO `StreamBuffer`: random publishes, clock steps,
//! subscriptions at random IDs and partial reads, checked against a plain `Vec` of everything ever
//! published and the bounds applied by definition.

use proptest::prelude::*;
use sse_core::buffer::{ResetReason, StreamBuffer, StreamCursor, StreamItem};
use sse_core::{EventId, StreamBounds};

const ORIGIN: u64 = 1_000_000;

#[derive(Debug, Clone)]
enum Action {
    Publish {
        burst: usize,
    },
    Advance {
        ms: u64,
    },
    Subscribe {
        pick: prop::sample::Index,
        kind: u8,
    },
    Read {
        which: prop::sample::Index,
        max: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1usize..20).prop_map(|burst| Action::Publish { burst }),
        2 => (0u64..400).prop_map(|ms| Action::Advance { ms }),
        2 => (any::<prop::sample::Index>(), 0u8..6).prop_map(|(pick, kind)| Action::Subscribe { pick, kind }),
        3 => (any::<prop::sample::Index>(), 1usize..30).prop_map(|(which, max)| Action::Read { which, max }),
    ]
}

struct Model {
    /// (id, published_ms) of everything ever published.
    all: Vec<(EventId, u64)>,
    /// Index into `all` of the oldest retained event.
    first: usize,
}

impl Model {
    fn trim(&mut self, bounds: StreamBounds, now: u64) {
        self.first = self
            .first
            .max(self.all.len().saturating_sub(bounds.max_events));
        while self.first < self.all.len() && now - self.all[self.first].1 > bounds.max_age_ms {
            self.first += 1;
        }
    }
}

struct Sub {
    cursor: StreamCursor,
    /// Index into `all` of the next event this subscriber must get.
    next: usize,
    pending_reset: bool,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn buffer_matches_model(actions in proptest::collection::vec(action(), 1..80), max_events in 1usize..40, max_age_ms in 1u64..1500) {
        let bounds = StreamBounds { max_events, max_age_ms };
        let mut buffer = StreamBuffer::new(bounds, ORIGIN);
        let mut model = Model { all: Vec::new(), first: 0 };
        let mut now = ORIGIN;
        let mut subs: Vec<Sub> = Vec::new();
        for a in actions {
            match a {
                Action::Publish { burst } => {
                    for _ in 0..burst {
                        let ev = buffer.push("log", "{}", now).expect("push");
                        if let Some((last, _)) = model.all.last() {
                            prop_assert!(ev.id > *last);
                        }
                        model.all.push((ev.id, now));
                        model.trim(bounds, now);
                    }
                }
                Action::Advance { ms } => {
                    now += ms;
                    buffer.trim(now);
                    model.trim(bounds, now);
                }
                Action::Subscribe { pick, kind } => {
                    buffer.trim(now);
                    model.trim(bounds, now);
                    let (requested, expect): (Option<String>, Result<usize, ResetReason>) = match kind {
                        0 => (None, Ok(model.all.len())),
                        1 => (Some("bogus".into()), Err(ResetReason::Malformed)),
                        2 => (Some(EventId::new(ORIGIN - 1, 0).to_string()), Err(ResetReason::EarlierProcess)),
                        3 => {
                            let newer = model.all.last().map(|(id, _)| EventId::new(id.ms, id.seq + 1)).unwrap_or(EventId::new(now, 0));
                            (Some(newer.to_string()), Err(ResetReason::NewerThanLatest))
                        }
                        _ if model.all.is_empty() => continue,
                        _ => {
                            let i = pick.index(model.all.len());
                            let exact = i + 1 >= model.first || i + 1 == model.all.len();
                            (Some(model.all[i].0.to_string()), if exact { Ok(i + 1) } else { Err(ResetReason::TooOld) })
                        }
                    };
                    let start = buffer.locate(requested.as_deref());
                    match expect {
                        Ok(next) => {
                            prop_assert!(start.reset.is_none(), "unexpected reset {:?}", start.reset);
                            subs.push(Sub { cursor: start.cursor, next, pending_reset: false });
                        }
                        Err(reason) => {
                            let reset = start.reset.clone().expect("a reset");
                            prop_assert_eq!(reset.reason, reason);
                            prop_assert_eq!(reset.oldest, model.all.get(model.first).map(|(id, _)| id.to_string()));
                            subs.push(Sub { cursor: start.cursor, next: model.first, pending_reset: false });
                        }
                    }
                }
                Action::Read { which, max } => {
                    if subs.is_empty() {
                        continue;
                    }
                    buffer.trim(now);
                    model.trim(bounds, now);
                    let n = subs.len();
                    let sub = &mut subs[which.index(n)];
                    if sub.next < model.first {
                        sub.next = model.first;
                        sub.pending_reset = true;
                    }
                    let mut out = Vec::new();
                    buffer.read(&mut sub.cursor, &mut out, max);
                    let mut items = out.into_iter();
                    if sub.pending_reset {
                        match items.next() {
                            Some(StreamItem::Reset(r)) => prop_assert_eq!(r.reason, ResetReason::Lagged),
                            other => prop_assert!(false, "expected lagged reset, got {:?}", other),
                        }
                        sub.pending_reset = false;
                    }
                    let got: Vec<EventId> = items
                        .map(|i| match i { StreamItem::Event(e) => e.id, StreamItem::Reset(_) => EventId::new(0, 0) })
                        .collect();
                    let end = (sub.next + max).min(model.all.len());
                    let expected: Vec<EventId> = model.all[sub.next..end].iter().map(|(id, _)| *id).collect();
                    prop_assert_eq!(&got, &expected);
                    sub.next = end;
                }
            }
            prop_assert_eq!(buffer.len(), model.all.len() - model.first);
            prop_assert!(buffer.len() <= max_events);
        }
    }
}
