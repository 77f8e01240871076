#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = can_io::wire::relay_json::CanRelayFrame::decode(data);
});
