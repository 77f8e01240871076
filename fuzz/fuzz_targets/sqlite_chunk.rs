#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_core::log::sqlite_chunk::fuzz_chunk(data));
