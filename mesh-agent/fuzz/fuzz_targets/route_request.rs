//! Arbitrary bytes as an HTTP/1.1 connection: hyper's server parses them as the proxy does,
//! and every request is routed, filtered or redirected through a fixed route table.
//! Run in mesh-agent/ (seeds and dictionary are optional but find the routing paths sooner):
//! `MESH_EBPF_TOOLCHAIN=nightly cargo +nightly fuzz run route_request fuzz/corpus/route_request
//! fuzz/seeds/route_request -- -dict=fuzz/route_request.dict -max_total_time=60`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mesh_agent::l7::fuzzing::fuzz_one(data);
});
