//! Arbitrary bytes as a config file through the YAML loader and every section's checks.
//! `cargo xtask fuzz --target config_load` runs it with its seeds (fuzz/seeds/config_load).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mesh_agent::config::fuzzing::fuzz_one(data);
});
