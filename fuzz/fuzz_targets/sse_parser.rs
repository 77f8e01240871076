#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sse_core::parser::fuzz_check(data));
