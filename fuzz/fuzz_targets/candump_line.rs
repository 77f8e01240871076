#![no_main]
libfuzzer_sys::fuzz_target!(
    |data: &[u8]| can_io::formats::candump::Reader::new(data).for_each(drop)
);
