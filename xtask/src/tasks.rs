//! `build` and `test`: cargo runs over the workspace, after `setup`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, Cmd};
use crate::setup;

/// The eBPF crate builds only for bpfel-unknown-none (mesh-agent's build.rs builds it), so the
/// host-side cargo runs leave it out.
const EBPF_CRATE: &str = "mesh-ebpf";

/// Setup, then the release binaries. Exports MESH_AGENT_BIN (absolute path of the release
/// agent) for every later child and returns it.
pub fn build(workspace: &Path) -> Result<PathBuf> {
    setup::run(workspace, setup::Scope::Full)?;
    let agent = agent_path(workspace)?;
    build_step(workspace).run()?;
    cmd::export("MESH_AGENT_BIN", &agent);
    Ok(agent)
}

/// Setup of what the agent needs, then a release build of the agent alone (the container
/// image build: no test tools, no bpffs).
pub fn build_agent(workspace: &Path) -> Result<PathBuf> {
    setup::run(workspace, setup::Scope::AgentOnly)?;
    let agent = agent_path(workspace)?;
    cargo(workspace)
        .args([
            "build",
            "--release",
            "--package",
            "mesh-agent",
            "--bin",
            "mesh-agent",
        ])
        .run()?;
    Ok(agent)
}

/// Setup, build, the layering check (and its self-test), tests, clippy, rustfmt, a short fuzz
/// run and the bench guard's self-check.
/// Runs every step after a successful build and fails naming the steps that failed.
pub fn test(workspace: &Path) -> Result<()> {
    setup::run(workspace, setup::Scope::Full)?;
    let agent = agent_path(workspace)?;
    if let Err(e) = build_step(workspace).run() {
        return Err(e.context("xtask test: step `build` failed"));
    }
    cmd::export("MESH_AGENT_BIN", &agent);

    let steps = [
        (
            "test",
            cargo(workspace).env("MESH_AGENT_BIN", &agent).args([
                "test",
                "--release",
                // Every test binary runs even after one fails: a failure must not hide others.
                "--no-fail-fast",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
            ]),
        ),
        (
            "clippy",
            cargo(workspace).args([
                "clippy",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        ("fmt", cargo(workspace).args(["fmt", "--all", "--check"])),
    ];
    let mut failed = Vec::new();
    // The layering of the agent's imports, the check's own self-test on a planted copy, and
    // the map (ARCHITECTURE.md) naming only what exists.
    eprintln!("xtask test: step `layers`");
    let layers = crate::layers::run(workspace)
        .and_then(|()| crate::layers::planted_breaks_are_flagged(workspace))
        .and_then(|()| crate::architecture::run(workspace));
    if let Err(e) = layers {
        eprintln!("xtask test: step `layers` failed: {e:#}");
        failed.push("layers");
    }
    for (name, step) in steps {
        eprintln!("xtask test: step `{name}`");
        if let Err(e) = step.run() {
            eprintln!("xtask test: step `{name}` failed: {e:#}");
            failed.push(name);
        }
    }
    // Every fuzz target for a short run.
    eprintln!("xtask test: step `fuzz`");
    if let Err(e) = crate::fuzz::ci(workspace) {
        eprintln!("xtask test: step `fuzz` failed: {e:#}");
        failed.push("fuzz");
    }
    // The regression guard catches a slowdown planted in a test build of the agent.
    eprintln!("xtask test: step `bench-guard`");
    let planted = agent.with_file_name("mesh-agent-planted");
    if let Err(e) = crate::bench::planted_slowdown_is_flagged(&planted) {
        eprintln!("xtask test: step `bench-guard` failed: {e:#}");
        failed.push("bench-guard");
    }
    if !failed.is_empty() {
        bail!("xtask test: failed step(s): {}", failed.join(", "));
    }
    println!("xtask test: ok (build, layers, test, clippy, fmt, fuzz, bench-guard)");
    Ok(())
}

fn cargo(workspace: &Path) -> Cmd {
    Cmd::cargo().current_dir(workspace)
}

fn build_step(workspace: &Path) -> Cmd {
    cargo(workspace).args([
        "build",
        "--release",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--bins",
    ])
}

/// `<target dir>/release/mesh-agent`, absolute. The target directory comes from cargo itself, so
/// CARGO_TARGET_DIR and `build.target-dir` are respected; a relative CARGO_TARGET_DIR is made
/// absolute for the children (they run from the workspace root).
fn agent_path(workspace: &Path) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = std::env::current_dir()?.join(dir);
        cmd::export("CARGO_TARGET_DIR", &dir);
    }
    let meta = cargo(workspace)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .read()?;
    let meta: serde_json::Value =
        serde_json::from_str(&meta).context("parsing `cargo metadata` output")?;
    let target = meta["target_directory"]
        .as_str()
        .context("no target_directory in `cargo metadata` output")?;
    Ok(Path::new(target).join("release").join("mesh-agent"))
}
