#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| can_io::uds::fuzz_response(data));
