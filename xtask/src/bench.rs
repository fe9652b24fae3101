//! `cargo xtask bench <suite>`: performance comparisons on simulated nodes.

mod config;
mod http;
mod l4;
mod metrics;
mod mtls;

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail, ensure};
use mesh_tests::mesh::{Binaries, Mesh, MeshSpec, ServiceSpec};
use serde_json::Value;

/// The suites `run` knows, for the error message.
const SUITES: &[&str] = &["l4", "mtls", "http", "metrics", "config"];

/// Runs one benchmark suite; `json` prints one JSON object per result line instead of a table.
pub fn run(suite: &str, json: bool) -> Result<()> {
    // The agents' per-connection debug lines (the tests' default) would be part of what is
    // measured; benchmarks run them at info.
    // SAFETY: set before any thread of this process is started.
    unsafe { std::env::set_var("MESH_TEST_AGENT_LOG", "info") };
    match suite {
        "l4" => l4::run(json),
        "mtls" => mtls::run(json),
        "http" => http::run(json),
        "metrics" => metrics::run(json),
        "config" => config::run(json),
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

/// A service with one VIP:port forwarded to the same port of one workload.
pub(crate) fn service(name: &str, vip: SocketAddrV4, endpoint: &str) -> ServiceSpec {
    ServiceSpec::new(name, *vip.ip(), vip.port(), vip.port(), &[endpoint])
}

/// A number field of a probe's JSON output.
pub(crate) fn number(v: &Value, field: &str) -> Result<f64> {
    v[field]
        .as_f64()
        .with_context(|| format!("no number {field:?} in probe output {v}"))
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Starts or stops the agents of both nodes (stopping detaches every program of the node).
pub(crate) fn set_agents(mesh: &mut Mesh, spec: &MeshSpec, up: bool) -> Result<()> {
    for node in ["node1", "node2"] {
        if up {
            mesh.start_agent(node, spec)?;
        } else {
            let status = mesh.stop_agent(node)?;
            ensure!(status.success(), "agent on {node} exited with {status}");
        }
    }
    Ok(())
}

/// CPU time of every process in a cgroup so far (`usage_usec` of its cpu.stat: the same sum
/// as utime + stime in /proc/<pid>/stat, in microseconds instead of clock ticks).
pub(crate) fn cgroup_cpu_seconds(cgroup: &Path) -> Result<f64> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .with_context(|| format!("reading {}/cgroup.procs", cgroup.display()))?;
    ensure!(
        !procs.trim().is_empty(),
        "no process in {}: is the agent running?",
        cgroup.display()
    );
    let path = cgroup.join("cpu.stat");
    let stat =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_usage_usec(&stat)
        .map(|us| us as f64 / 1e6)
        .with_context(|| format!("no usage_usec in {}", path.display()))
}

fn parse_usage_usec(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// Three decimals: beyond that it is noise, and the lines stay readable.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_usage() {
        let stat = "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n";
        assert_eq!(parse_usage_usec(stat), Some(1_500_000));
        assert_eq!(parse_usage_usec("user_usec 1\n"), None);
    }
}
