#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = (
        can_io::wire::socketcand::parse_client_stream(data),
        can_io::wire::socketcand::parse_server_stream(data),
    );
});
