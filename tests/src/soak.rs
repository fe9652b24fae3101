//! Load and soak on two simulated nodes, shared by `cargo xtask bench soak` (full size) and
//! the shortened CI test (`tests/soak.rs`).
//!
//! Idle phase: a client pod on node1 opens `idle_connections` connections to an echo server
//! on node2 through the mesh (node1's agent, the mTLS tunnel, node2's agent), each checked
//! with one echoed byte, and holds them: both agents' RSS and open descriptors before, while
//! held, and after they close give the memory per idle connection and show that every
//! descriptor is given back. Mixed phase: for `mixed` seconds, new TCP connections (every
//! 20 ms), HTTP/1.1 and h2c at a fixed rate through the L7 path; both agents' RSS and
//! descriptors are sampled, and the end is compared with the first sample after warm-up.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::mesh::{Binaries, Mesh, MeshSpec, ServiceSpec};

const ECHO_VIP: &str = "10.96.8.30";
const WEB_VIP: &str = "10.96.8.10";
const GRPC_VIP: &str = "10.96.8.20";
const GRPC_PORT: u16 = 50051;
/// Debian's python3 with python3-grpcio (installed by `cargo xtask setup`).
const PYTHON: &str = "/usr/bin/python3";
/// Calls per second of the gRPC client.
const GRPC_RATE: f64 = 20.0;
const NODES: [&str; 2] = ["node1", "node2"];

pub struct SoakOptions {
    pub idle_connections: usize,
    pub mixed: Duration,
    pub sample_every: Duration,
}

/// RSS (KiB) and open descriptors of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: u64,
}

pub fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("/proc/{pid}/fd"))?
        .count() as u64;
    Ok(Usage { rss_kib, fds })
}

#[derive(Debug, Default)]
pub struct IdleReport {
    pub connections: usize,
    pub errors: u64,
    /// Per node: before, while held, after closing.
    pub before: [Usage; 2],
    pub held: [Usage; 2],
    pub after: [Usage; 2],
}

impl IdleReport {
    /// Bytes of RSS per held connection, per node.
    pub fn per_connection_bytes(&self, node: usize) -> f64 {
        let grown = self.held[node]
            .rss_kib
            .saturating_sub(self.before[node].rss_kib);
        grown as f64 * 1024.0 / self.connections.max(1) as f64
    }
}

#[derive(Debug, Default)]
pub struct MixedReport {
    pub seconds: f64,
    /// (seconds since start, usage per node).
    pub samples: Vec<(f64, [Usage; 2])>,
    pub warm: [Usage; 2],
    pub end: [Usage; 2],
    pub tcp_connections: usize,
    pub tcp_failed: usize,
    pub h1_done: u64,
    pub h1_failed: u64,
    pub h2c_done: u64,
    pub h2c_failed: u64,
    pub grpc_done: u64,
    /// Calls that did not end with status OK.
    pub grpc_failed: u64,
}

#[derive(Debug, Default)]
pub struct SoakReport {
    pub idle: IdleReport,
    pub mixed: MixedReport,
}

/// A script of the gRPC test programs (tests/grpc).
fn grpc_script(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("grpc")
        .join(name)
        .display()
        .to_string()
}

fn agent_usage(mesh: &Mesh) -> Result<[Usage; 2]> {
    let mut out = [Usage::default(); 2];
    for (i, node) in NODES.iter().enumerate() {
        let pid = mesh
            .agent_pid(node)
            .with_context(|| format!("no agent on {node}"))?;
        out[i] = usage(pid)?;
    }
    Ok(out)
}

/// h2load's "requests:" line: (done, failed + errored + timeout).
fn h2load_counts(out: &str) -> Result<(u64, u64)> {
    let c = crate::h2load::summary_counts(out, "requests:")?;
    let n = |key: &str| c.get(key).copied().unwrap_or(0);
    Ok((n("done"), n("failed") + n("errored") + n("timeout")))
}

pub fn run(bins: Binaries, options: &SoakOptions) -> Result<SoakReport> {
    let mut mesh = Mesh::new("soak", bins)?;
    mesh.sim.add_pod("node1", "client")?;
    mesh.sim.add_pod("node2", "echo")?;
    mesh.sim.add_pod("node2", "web")?;
    mesh.sim.add_pod("node2", "grpc")?;
    let spec = MeshSpec {
        services: vec![
            ServiceSpec::new("echo", ECHO_VIP.parse()?, 9000, 9000, &["echo"]),
            ServiceSpec::new("web", WEB_VIP.parse()?, 80, 8080, &["web"]).protocol("http2"),
            ServiceSpec::new("grpc", GRPC_VIP.parse()?, GRPC_PORT, GRPC_PORT, &["grpc"])
                .protocol("grpc"),
        ],
        ..MeshSpec::default()
    };
    let _echo = mesh.serve("echo", &["echo-server", "--listen", "0.0.0.0:9000"])?;
    let _web = mesh.serve(
        "web",
        &["http-backend", "--listen", "0.0.0.0:8080", "--name", "web"],
    )?;
    let grpc_listen = format!("0.0.0.0:{GRPC_PORT}");
    let _grpc = mesh
        .serve_program(
            "grpc",
            PYTHON,
            &[
                &grpc_script("grpc_backend.py"),
                "--listen",
                &grpc_listen,
                "--name",
                "grpc",
            ],
        )
        .context("gRPC backend (needs python3-grpcio)")?;
    mesh.start_agent("node1", &spec)?;
    mesh.start_agent("node2", &spec)?;
    let echo = format!("{ECHO_VIP}:9000");
    let mut report = SoakReport::default();

    // Idle connections.
    std::thread::sleep(Duration::from_secs(1));
    report.idle.before = agent_usage(&mesh)?;
    let mut hold = mesh.spawn_probe(
        "client",
        &[
            "hold",
            "--connect",
            &echo,
            "--count",
            &options.idle_connections.to_string(),
            "--seconds",
            "4",
        ],
    )?;
    let line = hold.wait_for_stdout("established", Duration::from_secs(600))?;
    let established: Value = serde_json::from_str(&line).context("hold output")?;
    report.idle.connections = established["established"].as_u64().unwrap_or(0) as usize;
    report.idle.errors = established["errors"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(1));
    report.idle.held = agent_usage(&mesh)?;
    hold.wait()?;
    // Closed connections leave their descriptors with the agents' tasks for a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        report.idle.after = agent_usage(&mesh)?;
        let settled = (0..2).all(|i| report.idle.after[i].fds <= report.idle.before[i].fds + 16);
        if settled || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // Mixed traffic.
    let seconds = options.mixed.as_secs_f64();
    let secs = format!("{}", seconds.ceil() as u64);
    let client = mesh.placement("client");
    let mut dials = mesh.spawn_probe(
        "client",
        &[
            "dial-loop",
            "--connect",
            &echo,
            "--seconds",
            &secs,
            "--interval-ms",
            "20",
        ],
    )?;
    let url = format!("http://{WEB_VIP}/echo");
    let mut h1 = mesh.sim.spawn(
        &client,
        "h2load",
        ["--h1", "-D", &secs, "-c", "2", "--rps", "20", url.as_str()],
    )?;
    let mut h2c = mesh.sim.spawn(
        &client,
        "h2load",
        [
            "-D",
            &secs,
            "-c",
            "2",
            "-m",
            "4",
            "--rps",
            "20",
            url.as_str(),
        ],
    )?;
    let grpc_calls = ((seconds * GRPC_RATE) as u64).max(1).to_string();
    let grpc_interval = format!("{}", 1.0 / GRPC_RATE);
    let grpc_target = format!("{GRPC_VIP}:{GRPC_PORT}");
    let mut grpc = mesh.sim.spawn(
        &client,
        PYTHON,
        [
            grpc_script("grpc_client.py").as_str(),
            "--target",
            &grpc_target,
            "--method",
            "/mesh.test.Echo/Say",
            "-n",
            &grpc_calls,
            "--interval",
            &grpc_interval,
            "--timeout",
            "10",
        ],
    )?;
    let started = Instant::now();
    let warm_after = seconds * 0.1;
    let mut warm = None;
    while started.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(options.sample_every);
        let t = started.elapsed().as_secs_f64();
        let u = agent_usage(&mesh)?;
        if warm.is_none() && t >= warm_after {
            warm = Some(u);
        }
        report.mixed.samples.push((t, u));
    }
    dials.wait()?;
    h1.wait()?;
    h2c.wait()?;
    grpc.wait()?;
    report.mixed.seconds = seconds;
    report.mixed.warm = warm.unwrap_or_default();
    report.mixed.end = report
        .mixed
        .samples
        .last()
        .map(|(_, u)| *u)
        .unwrap_or_default();
    let attempts: Vec<Value> = dials
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    report.mixed.tcp_connections = attempts.len();
    report.mixed.tcp_failed = attempts.iter().filter(|a| a["ok"] != true).count();
    (report.mixed.h1_done, report.mixed.h1_failed) = h2load_counts(&h1.stdout())?;
    (report.mixed.h2c_done, report.mixed.h2c_failed) = h2load_counts(&h2c.stdout())?;
    let calls = crate::mesh::parse_last_json(grpc.stdout().as_bytes())
        .with_context(|| format!("gRPC client output:\n{}", grpc.logs()))?;
    report.mixed.grpc_done = calls["requests"].as_u64().unwrap_or(0);
    let ok = calls["by_status"]["OK"].as_u64().unwrap_or(0);
    report.mixed.grpc_failed = report.mixed.grpc_done.saturating_sub(ok);
    ensure!(
        report.mixed.h1_done > 0 && report.mixed.h2c_done > 0,
        "h2load did nothing:\n{}\n{}",
        h1.logs(),
        h2c.logs()
    );
    Ok(report)
}

impl SoakReport {
    /// The report as text lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let i = &self.idle;
        out.push_str(&format!(
            "idle: {} connections held (errors {}) client node1 -> tunnel -> node2\n",
            i.connections, i.errors
        ));
        for (n, node) in NODES.iter().enumerate() {
            out.push_str(&format!(
                "  {node} agent: RSS {} KiB -> {} KiB held ({:.1} KiB per connection) -> {} KiB after; fds {} -> {} -> {}\n",
                i.before[n].rss_kib,
                i.held[n].rss_kib,
                i.per_connection_bytes(n) / 1024.0,
                i.after[n].rss_kib,
                i.before[n].fds,
                i.held[n].fds,
                i.after[n].fds
            ));
        }
        let m = &self.mixed;
        out.push_str(&format!(
            "mixed: {:.0} s; TCP {} new connections ({} failed); HTTP/1.1 {} requests ({} failed); h2c {} requests ({} failed); gRPC {} calls ({} not OK)\n",
            m.seconds,
            m.tcp_connections,
            m.tcp_failed,
            m.h1_done,
            m.h1_failed,
            m.h2c_done,
            m.h2c_failed,
            m.grpc_done,
            m.grpc_failed
        ));
        for (n, node) in NODES.iter().enumerate() {
            let ratio = m.end[n].rss_kib as f64 / m.warm[n].rss_kib.max(1) as f64;
            out.push_str(&format!(
                "  {node} agent: RSS after warm-up {} KiB, at the end {} KiB ({ratio:.3}x); fds {} -> {}\n",
                m.warm[n].rss_kib, m.end[n].rss_kib, m.warm[n].fds, m.end[n].fds
            ));
        }
        out
    }
}
