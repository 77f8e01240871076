//! Sampling of `can_frame` output before publishing ([`StreamSamplers`]): exactly one `log`
//! event per switch, other event types never sampled, and what the hub holds is exactly what
//! was published.

use std::sync::Arc;

use sse_core::sampler::{SamplingConfig, StreamSamplers};
use sse_core::{
    Clock, ConsoleEvent, ManualClock, MemoryBackend, StreamBounds, StreamConfig, StreamItem,
};

#[test]
fn one_log_per_switch_and_other_types_never_sampled() {
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let config = StreamConfig {
        bounds: StreamBounds::default(),
    };
    let hub = MemoryBackend::new(clock.clone(), config);
    let samplers = StreamSamplers::new(SamplingConfig {
        threshold_per_s: 10,
    });
    let mut sub = hub.subscribe_now("dongle:1", None).expect("subscribe");
    // Frames per one-second window: on, stays on, quiet (off), on, silent, one frame (off).
    let pattern = [50u64, 50, 5, 50, 0, 1];
    let mut offered = 0;
    let mut frame_ids = Vec::new();
    let mut presence_ids = Vec::new();
    let mut notices = 0;
    for count in pattern {
        for i in 0..count {
            offered += 1;
            let now = clock.now_ms();
            let decision = samplers.decide(&"dongle:1", now);
            if let Some(switch) = decision.switch {
                let data = ConsoleEvent::Log(samplers.notice(switch, now)).to_data();
                hub.publish_now("dongle:1", "log", &data).expect("publish");
                notices += 1;
            }
            if decision.send {
                frame_ids.push(
                    hub.publish_now("dongle:1", "can_frame", "{}")
                        .expect("publish"),
                );
            }
            if i % 10 == 0 {
                presence_ids.push(
                    hub.publish_now("dongle:1", "presence", "{}")
                        .expect("publish"),
                );
            }
            clock.advance(1_000 / count.max(1) - 1);
        }
        let start = clock.now_ms() - clock.now_ms() % 1_000;
        clock.set(start + 1_000);
    }
    let mut logs = Vec::new();
    let mut frames_out = Vec::new();
    let mut presence_out = Vec::new();
    while let Some(item) = sub.try_next() {
        let StreamItem::Event(e) = item else {
            panic!("no reset expected")
        };
        match e.event_type.as_str() {
            "log" => {
                logs.push(serde_json::from_str::<serde_json::Value>(&e.data).expect("json log"))
            }
            "can_frame" => frames_out.push(e.id),
            "presence" => presence_out.push(e.id),
            other => panic!("unexpected {other}"),
        }
    }
    let active: Vec<bool> = logs
        .iter()
        .map(|l| l["sampling"]["active"].as_bool().expect("active flag"))
        .collect();
    assert_eq!(
        active,
        [true, false, true, false],
        "exactly one log per switch: {logs:?}"
    );
    let on = &logs[0]["sampling"];
    assert!(on["input_rate_per_s"].as_u64().expect("rate") > 10);
    let fraction = on["fraction"].as_f64().expect("fraction");
    assert!(fraction > 0.0 && fraction < 1.0);
    assert!(
        frame_ids.len() < offered,
        "some frames were sampled out of the output"
    );
    assert_eq!(
        frames_out, frame_ids,
        "the hub yields every frame published"
    );
    assert_eq!(presence_out, presence_ids, "other types are never sampled");
    assert!(frame_ids.windows(2).all(|w| w[0] < w[1]));
    let stats = hub.stream_stats("dongle:1").expect("stream");
    assert_eq!(
        stats.retained,
        frame_ids.len() + presence_ids.len() + notices
    );
}
