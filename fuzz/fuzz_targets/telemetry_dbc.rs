#![no_main]
// The first 8 bytes are the frame (data), the rest is DBC text.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (frame, text) = data.split_at(data.len().min(8));
    let text = String::from_utf8_lossy(text);
    tether_collector::dbc::fuzz_decode(&text, 0x100, false, frame);
});
