#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| metering_core::message::QueueKind::ALL.into_iter().for_each(|q| drop(metering_core::message::validate(q, data))));
