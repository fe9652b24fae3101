//! Fuzzing entry point of the config loader: arbitrary bytes as a config file, through the YAML
//! parser and every section's checks, with the checks of paths on the file system off (the
//! input names arbitrary paths; what is fuzzed is the loader, not the machine's files).
//! A broken input must come back as errors with a line and a reason, never as a panic.

use super::{checker::PathChecks, load::parse};

/// A fixed config for other fuzz targets (their model), checked without touching the file
/// system. Panics when `text` is not a valid config: a bug of the harness.
pub fn model(text: &str) -> super::Config {
    match parse(text, "fuzz model", PathChecks::Skipped) {
        Ok(config) => config,
        Err(e) => panic!("the fuzz model does not load: {e}"),
    }
}

/// Loads `data` as a config file. Panics only when an invariant breaks (a bug).
pub fn fuzz_one(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // The loader's own entry (`load_file`) reports invalid UTF-8 before parsing.
        return;
    };
    match parse(text, "fuzz", PathChecks::Skipped) {
        Ok(config) => {
            // What loaded must also serialize (config_dump shows it) without a panic.
            let _ = serde_json::to_string(&config);
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a rejection without an error");
            for e in errors.all() {
                assert!(!e.reason().is_empty(), "an error without a reason: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_valid_seeds_load() {
        for seed in [
            include_str!("../../fuzz/seeds/config_load/node.yaml"),
            include_str!("../../fuzz/seeds/config_load/default.yaml"),
        ] {
            model(seed);
        }
    }

    #[test]
    fn seeds_and_their_mutations_load_or_fail_cleanly() {
        let seeds: &[&[u8]] = &[
            include_bytes!("../../fuzz/seeds/config_load/node.yaml"),
            include_bytes!("../../fuzz/seeds/config_load/default.yaml"),
            include_bytes!("../../fuzz/seeds/config_load/routes.yaml"),
            b"node: [\n",
            b"\xff\xfe",
            b"node:\n  name: \"\\u0000\"\n",
        ];
        crate::seed_mutations::run_on_seeds(seeds, 200, fuzz_one);
    }
}
