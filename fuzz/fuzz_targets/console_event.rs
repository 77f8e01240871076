#![no_main]
//! Console events as a client reads them: the event type up to the first LF, then the data.
//! Reading must not panic, and an event that reads writes back to data that reads the same.
use sse_core::events::ConsoleEvent;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (event_type, payload) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(event) = ConsoleEvent::from_parts(event_type, payload) {
        let again = ConsoleEvent::from_parts(event.event_type(), &event.to_data());
        assert_eq!(again.ok(), Some(event));
    }
});
