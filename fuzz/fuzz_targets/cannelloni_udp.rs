#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = can_io::wire::cannelloni::decode_datagram(data);
});
