//! `cargo xtask bench <suite>`: performance comparisons on simulated nodes.

mod l4;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail, ensure};
use mesh_tests::mesh::Binaries;

/// The suites `run` knows, for the error message.
const SUITES: &[&str] = &["l4"];

/// Runs one benchmark suite; `json` prints one JSON object per result line instead of a table.
pub fn run(suite: &str, json: bool) -> Result<()> {
    match suite {
        "l4" => l4::run(json),
        other => bail!(
            "unknown bench suite {other}; available: {}",
            SUITES.join(", ")
        ),
    }
}

/// The agent and probe of the workspace's release build. Benchmarks and the demo use release
/// binaries only: debug builds would measure the compiler's settings, not the mesh.
pub(crate) fn release_binaries() -> Result<Binaries> {
    let probe = release_dir().join("mesh-probe");
    ensure!(
        probe.exists(),
        "{} not found: run `cargo build --release --workspace --exclude mesh-ebpf --bins` first",
        probe.display()
    );
    // The agent: MESH_AGENT_BIN if set, else the same target directory, release first.
    Binaries::locate(probe)
}

/// `cargo xtask` exports MESH_AGENT_BIN after its build (it asks cargo where the target directory
/// is, so `build.target-dir` is honoured); mesh-probe sits next to the agent. Without it:
/// CARGO_TARGET_DIR, else the workspace's `target`.
fn release_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESH_AGENT_BIN")
        .map(PathBuf::from)
        .and_then(|agent| agent.parent().map(Path::to_path_buf))
    {
        return dir;
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("release")
}
