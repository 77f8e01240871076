#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_core::protocol::fuzz_stored_frame(data));
