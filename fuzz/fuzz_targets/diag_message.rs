#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_core::protocol::diag::fuzz_decode_diag(data));
