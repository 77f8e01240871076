#![no_main]
//! `Last-Event-ID` values come straight from clients: parsing any string must not panic, and an
//! ID that parses prints back to a string that parses to the same ID.
use sse_core::id::EventId;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<EventId>() {
        let printed = id.to_string();
        assert_eq!(printed.parse::<EventId>(), Ok(id));
        // Only leading zeros may differ between what was sent and what we print.
        assert!(printed.len() <= text.len());
    }
});
