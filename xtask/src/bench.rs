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
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let probe = target.join("release").join("mesh-probe");
    ensure!(
        probe.exists(),
        "{} not found: run `cargo build --release --workspace --bins` first",
        probe.display()
    );
    // The agent: MESH_AGENT_BIN if set, else the same target directory, release first.
    Binaries::locate(probe)
}
