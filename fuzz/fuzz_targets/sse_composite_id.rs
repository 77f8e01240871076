#![no_main]
//! Composite `Last-Event-ID`s of multiplexed console streams come straight from clients. The
//! first byte picks the stream count (0–32), the rest is the ID. Splitting must not panic, gives
//! one start per stream, and the composite written back from those starts splits the same way.
use sse_core::multiplex::{CompositeEncoder, Member, parse_composite};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let streams = usize::from(n % 33);
    let members = |text: &str| -> Vec<Member> {
        let starts = parse_composite(text, streams);
        assert_eq!(starts.len(), streams);
        let keys = (0..streams).map(|i| format!("dongle:{i}"));
        keys.zip(starts)
            .map(|(key, start)| Member { key, start })
            .collect()
    };
    let written = CompositeEncoder::new(&members(text)).composite_id();
    assert!(!written.contains(['\r', '\n', '\0']), "{written:?}");
    assert_eq!(
        CompositeEncoder::new(&members(&written)).composite_id(),
        written
    );
});
