//! Arbitrary bytes as Kubernetes API objects, translated into the cluster model and merged with a file config.
//! `cargo xtask fuzz --target k8s_translate` runs it with its seeds (fuzz/seeds/k8s_translate).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mesh_agent::k8s::fuzzing::fuzz_one(data);
});
