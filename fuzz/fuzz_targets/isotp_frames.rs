#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| can_io::isotp::fuzz_frames(data));
