//! `cargo xtask bench <suite>`: performance comparisons on simulated nodes.

mod agents;
mod compare;
mod config;

pub use compare::planted_slowdown_is_flagged;
mod http;
mod l4;
mod memory;
mod metrics;
mod mtls;
mod restart;
mod soak;

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail, ensure};
use mesh_tests::mesh::{Binaries, Mesh, MeshSpec, ServiceSpec};
use serde_json::Value;

/// The suites `run` knows, for the error message.
const SUITES: &[&str] = &[
    "l4", "mtls", "http", "metrics", "config", "restart", "soak", "memory",
];

/// What the command line asked of a bench run.
pub struct Options {
    pub json: bool,
    pub rounds: Option<usize>,
    pub telemetry: Option<String>,
    pub record: bool,
}

/// Rounds asked on the command line (`--rounds`), for the suites that take them.
static ROUNDS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The rounds a suite runs: `--rounds` when given, else the suite's own count.
pub(crate) fn rounds(default: usize) -> usize {
    ROUNDS.get().copied().unwrap_or(default)
}

/// `bench SUITE` or `bench compare [SUITE...]`.
pub fn dispatch(workspace: &Path, suites: &[String], options: &Options) -> Result<()> {
    if let Some(n) = options.rounds {
        ensure!(n >= 1, "--rounds must be at least 1");
        let _ = ROUNDS.set(n);
    }
    match suites {
        [first, rest @ ..] if first == "compare" => compare::run(workspace, rest, options),
        [suite] => {
            ensure!(!options.record, "--record goes with `bench compare`");
            if options.telemetry.is_some() {
                ensure!(suite == "http", "--telemetry goes with the http suite");
            }
            run(suite, options)
        }
        _ => bail!(
            "name one suite ({}), or `compare` and the suites to compare",
            SUITES.join(", ")
        ),
    }
}

/// Runs one benchmark suite; `json` prints one JSON object per result line instead of a table.
pub fn run(suite: &str, options: &Options) -> Result<()> {
    // The agents' per-connection debug lines (the tests' default) would be part of what is
    // measured; benchmarks run them at info.
    // SAFETY: set before any thread of this process is started.
    unsafe { std::env::set_var("MESH_TEST_AGENT_LOG", "info") };
    let json = options.json;
    match suite {
        "l4" => l4::run(json),
        "mtls" => mtls::run(json),
        "http" => match &options.telemetry {
            Some(variants) => http::run_telemetry(json, variants),
            None => http::run(json),
        },
        "metrics" => metrics::run(json),
        "config" => config::run(json),
        "restart" => restart::run(json),
        "soak" => soak::run(json),
        "memory" => memory::run(json),
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

/// `cargo xtask bench` exports MESH_RELEASE_DIR, the build's directory (the measured agent may
/// be another, `--agent`). Else: `cargo xtask` exports MESH_AGENT_BIN after its build (it asks cargo where the target directory
/// is, so `build.target-dir` is honoured); mesh-probe sits next to the agent. Without it:
/// CARGO_TARGET_DIR, else the workspace's `target`.
fn release_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESH_RELEASE_DIR") {
        return PathBuf::from(dir);
    }
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

/// The HTTP benches' nodes: a `client` pod on node1 and a `server` pod on node2 running
/// mesh-probe's `http-backend` on `port`.
pub(crate) fn http_client_and_backend(
    name: &str,
    bins: Binaries,
    port: u16,
) -> Result<(Mesh, mesh_tests::sim::Proc)> {
    let mut mesh = Mesh::new(name, bins)?;
    mesh.sim.add_pod("node1", "client")?;
    mesh.sim.add_pod("node2", "server")?;
    let listen = format!("0.0.0.0:{port}");
    let server = mesh.serve(
        "server",
        &["http-backend", "--listen", &listen, "--name", "server"],
    )?;
    Ok((mesh, server))
}

/// Starts or stops the agents of both nodes; stopping also uninstalls, so that no program of ours
/// stays on the node (they outlive a stopped agent).
pub(crate) fn set_agents(mesh: &mut Mesh, spec: &MeshSpec, up: bool) -> Result<()> {
    for node in ["node1", "node2"] {
        if up {
            mesh.start_agent(node, spec)?;
        } else {
            let status = mesh.stop_agent(node)?;
            ensure!(status.success(), "agent on {node} exited with {status}");
            // The programs outlive the agent; "direct" means none of ours at all.
            mesh.uninstall(node)?;
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
