//! `cargo xtask fuzz [--seconds N]`: runs the agent's fuzz target (cargo-fuzz, libFuzzer) that
//! feeds arbitrary bytes through the L7 request path: hyper's HTTP/1 parser, route matching,
//! filters and redirects (mesh-agent/fuzz/fuzz_targets/route_request.rs). A crash or panic
//! fails the run and leaves the input under mesh-agent/fuzz/artifacts.

use std::path::Path;

use anyhow::{Context, Result};

use crate::cmd::Cmd;
use crate::setup;

const TARGET: &str = "route_request";

/// The fuzz run inside `cargo xtask test`: long enough to get past hyper's parser into the
/// routing paths with the seeds and dictionary, short enough for CI.
pub const CI_SECONDS: u64 = 60;

pub fn command(workspace: &Path, seconds: u64) -> Result<Cmd> {
    let toolchain = setup::ebpf_toolchain_name(workspace);
    let agent = workspace.join("mesh-agent");
    let corpus = workspace.join("target").join("fuzz-corpus").join(TARGET);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let target_dir = workspace.join("target").join("fuzz");
    // libFuzzer needs nightly (sanitizer coverage flags): the eBPF toolchain is one. Rust is
    // memory-safe, so no sanitizer: what the run looks for is panics, hangs and aborts.
    Ok(Cmd::new("rustup")
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
        .arg(TARGET)
        .arg(&corpus)
        .arg(agent.join("fuzz").join("seeds").join(TARGET))
        .arg("--")
        .arg(format!(
            "-dict={}",
            agent.join("fuzz").join(format!("{TARGET}.dict")).display()
        ))
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        // The fuzz build links the agent library only; it never loads eBPF programs.
        .env("MESH_EBPF_SKIP", "1")
        .current_dir(&agent))
}

pub fn run(workspace: &Path, seconds: u64) -> Result<()> {
    setup::run(workspace, setup::Scope::Full)?;
    command(workspace, seconds)?.run()
}
