//! Arbitrary bytes as the CONNECT request of a tunnel stream (method, authority, forwarded, baggage).
//! `cargo xtask fuzz --target tunnel_connect` runs it with its seeds (fuzz/seeds/tunnel_connect).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mesh_agent::proxy::fuzzing::fuzz_one(data);
});
