#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_collector::wire::fuzz_decode_vehicle_text(data));
