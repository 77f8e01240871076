#![no_main]
// Decoding never panics, and what decodes encodes back to the same bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(u) = relay_core::uplink::Unsettled::from_bytes(data) {
        assert_eq!(u.to_bytes(), data);
    }
});
