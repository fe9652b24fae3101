//! `cargo xtask fuzz [--target T] [--seconds N]`: runs the agent's fuzz targets (cargo-fuzz,
//! libFuzzer), each on its seeds (mesh-agent/fuzz/seeds/<target>) and a corpus kept under
//! target/fuzz-corpus. A crash or panic fails the run and leaves the input under
//! mesh-agent/fuzz/artifacts/<target>.
//!
//! The targets feed arbitrary bytes to what reads input from outside the agent:
//! - `route_request`: an HTTP/1.1 connection through hyper's parser, route matching, filters
//!   and redirects (with a dictionary of HTTP and route tokens);
//! - `config_load`: a config file through the YAML loader and every section's checks;
//! - `tunnel_connect`: the CONNECT request of a tunnel stream from another node's agent
//!   (authority, `forwarded`, `baggage`);
//! - `k8s_translate`: Kubernetes API objects through the translation into the cluster model
//!   and the merge with the file config.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::cmd::Cmd;
use crate::setup;

/// Every target, and how long `cargo xtask test` runs it: long enough to get past the parsers
/// with the seeds, short enough for CI. The L7 target has the most paths to find.
pub const TARGETS: &[(&str, u64)] = &[
    ("route_request", 60),
    ("config_load", 30),
    ("tunnel_connect", 20),
    ("k8s_translate", 30),
];

pub fn command(workspace: &Path, target: &str, seconds: u64) -> Result<Cmd> {
    let toolchain = setup::ebpf_toolchain_name(workspace);
    let agent = workspace.join("mesh-agent");
    let corpus = workspace.join("target").join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let target_dir = workspace.join("target").join("fuzz");
    let fuzz = agent.join("fuzz");
    // libFuzzer needs nightly (sanitizer coverage flags): the eBPF toolchain is one. Rust is
    // memory-safe, so no sanitizer: what the run looks for is panics, hangs and aborts.
    let mut cmd = Cmd::new("rustup")
        .args([
            "run",
            &toolchain,
            "cargo",
            "fuzz",
            "run",
            "--sanitizer",
            "none",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg(target)
        .arg(&corpus)
        .arg(fuzz.join("seeds").join(target))
        .arg("--");
    let dict = fuzz.join(format!("{target}.dict"));
    if dict.exists() {
        cmd = cmd.arg(format!("-dict={}", dict.display()));
    }
    Ok(cmd
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        // The fuzz build links the agent library only; it never loads eBPF programs.
        .env("MESH_EBPF_SKIP", "1")
        .current_dir(&agent))
}

/// Runs every target for its CI time (`cargo xtask test`); fails naming the targets that
/// failed, after running them all.
pub fn ci(workspace: &Path) -> Result<()> {
    let mut failed = Vec::new();
    for (target, seconds) in TARGETS {
        eprintln!("xtask fuzz: {target} for {seconds} s");
        if let Err(e) = command(workspace, target, *seconds)?.run() {
            eprintln!("xtask fuzz: {target} failed: {e:#}");
            failed.push(*target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz target(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

/// `cargo xtask fuzz`: one target, or every target one after the other, `seconds` each.
pub fn run(workspace: &Path, target: Option<&str>, seconds: u64) -> Result<()> {
    setup::run(workspace, setup::Scope::Full)?;
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.iter().any(|(name, _)| *name == t) => vec![t],
        Some(t) => bail!(
            "no fuzz target {t:?}; the targets: {}",
            TARGETS
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => TARGETS.iter().map(|(name, _)| *name).collect(),
    };
    for target in targets {
        eprintln!("xtask fuzz: {target} for {seconds} s");
        command(workspace, target, seconds)?.run()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_its_source_and_seeds() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("mesh-agent/fuzz");
        let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
        for (target, _) in TARGETS {
            assert!(
                fuzz.join(format!("fuzz_targets/{target}.rs")).exists(),
                "{target}"
            );
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target}"
            );
            let seeds = std::fs::read_dir(fuzz.join("seeds").join(target)).unwrap();
            assert!(seeds.count() > 0, "{target} has no seeds");
        }
    }
}
