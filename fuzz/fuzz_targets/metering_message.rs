#![no_main]
// Both validators (the tree one and the flat fast path) on every queue: no panic, and the
// same verdict, reason, key and forwarded object.
libfuzzer_sys::fuzz_target!(|data: &[u8]| metering_core::message::QueueKind::ALL
    .into_iter()
    .for_each(|q| metering_core::message::fuzz_validators_agree(q, data)));
