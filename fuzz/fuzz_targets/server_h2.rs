#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anygrpc_fuzz::server_h2(data));
