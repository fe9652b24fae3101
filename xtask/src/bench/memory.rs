//! `cargo xtask bench memory`: what the agents hold in memory. Two simulated nodes, a client
//! pod on node1, an echo server and an HTTP backend on node2; every connection crosses node1's
//! agent, the mTLS tunnel and node2's agent. Measured for both agents:
//! - idle: RSS once started and settled (no connection yet);
//! - 1 000 and 10 000 idle meshed connections held open (`mesh-probe hold`, each checked with
//!   an echoed byte): RSS before and while held, and the bytes per connection;
//! - load: HTTP/1.1 at 1 000 requests/s through the L7 path for `LOAD_SECONDS`, RSS at the
//!   end.
//!
//! RSS is `VmRSS` of /proc/<pid>/status; where the agent's cgroup has the v2 memory
//! controller, its `memory.current` (which also counts the kernel's socket buffers) is shown
//! beside it. Goals (issue 16): idle <= 12 MB, <= 30 MB per 1 000 idle connections.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mesh_tests::mesh::{Mesh, MeshSpec, ServiceSpec};
use mesh_tests::soak::{Usage, usage};
use serde_json::{Value, json};

use super::release_binaries;

const ECHO_VIP: &str = "10.96.9.30";
const WEB_VIP: &str = "10.96.9.10";
const NODES: [&str; 2] = ["node1", "node2"];
const HELD: [usize; 2] = [1_000, 10_000];
const LOAD_SECONDS: u64 = 30;
/// 10 connections x 100 requests/s.
const LOAD_CLIENTS: u32 = 10;
const LOAD_RATE_PER_CLIENT: u32 = 100;

/// What one agent holds at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    usage: Usage,
    /// `memory.current` of the agent's cgroup, where the v2 memory controller is on.
    cgroup_bytes: Option<u64>,
}

fn measure(mesh: &Mesh) -> Result<[Memory; 2]> {
    let mut out = [Memory::default(); 2];
    for (i, node) in NODES.iter().enumerate() {
        let pid = mesh
            .agent_pid(node)
            .with_context(|| format!("no agent on {node}"))?;
        let cgroup = &mesh.sim.node(node).agent_cgroup;
        out[i] = Memory {
            usage: usage(pid)?,
            cgroup_bytes: std::fs::read_to_string(cgroup.join("memory.current"))
                .ok()
                .and_then(|v| v.trim().parse().ok()),
        };
    }
    Ok(out)
}

/// One line of the report.
struct Row {
    metric: String,
    node: &'static str,
    value: f64,
    unit: &'static str,
}

fn kib(m: &Memory) -> f64 {
    m.usage.rss_kib as f64
}

fn held_rows(rows: &mut Vec<Row>, count: usize, before: &[Memory; 2], held: &[Memory; 2]) {
    for (n, node) in NODES.iter().enumerate() {
        rows.push(Row {
            metric: format!("rss_with_{count}_idle"),
            node,
            value: kib(&held[n]),
            unit: "KiB",
        });
        let grown = held[n]
            .usage
            .rss_kib
            .saturating_sub(before[n].usage.rss_kib);
        rows.push(Row {
            metric: format!("rss_per_1000_idle_at_{count}"),
            node,
            value: grown as f64 / 1024.0 * 1000.0 / count as f64,
            unit: "MiB",
        });
        if let (Some(b), Some(h)) = (before[n].cgroup_bytes, held[n].cgroup_bytes) {
            rows.push(Row {
                metric: format!("cgroup_per_1000_idle_at_{count}"),
                node,
                value: h.saturating_sub(b) as f64 / (1024.0 * 1024.0) * 1000.0 / count as f64,
                unit: "MiB",
            });
        }
    }
}

/// Holds `count` idle connections to `target` from the client pod; usage while held.
fn hold(mesh: &Mesh, target: &str, count: usize) -> Result<[Memory; 2]> {
    let mut hold = mesh.spawn_probe(
        "client",
        &[
            "hold",
            "--connect",
            target,
            "--count",
            &count.to_string(),
            "--seconds",
            "3",
        ],
    )?;
    let line = hold.wait_for_stdout("established", Duration::from_secs(600))?;
    let established: Value = serde_json::from_str(&line).context("hold output")?;
    ensure!(
        established["established"].as_u64() == Some(count as u64)
            && established["errors"].as_u64() == Some(0),
        "not every connection was established: {line}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let held = measure(mesh)?;
    hold.wait()?;
    // Closed connections leave the agents' tasks a moment to let go.
    std::thread::sleep(Duration::from_secs(3));
    Ok(held)
}

pub fn run(json_out: bool) -> Result<()> {
    let mut mesh = Mesh::new("bench-memory", release_binaries()?)?;
    mesh.sim.add_pod("node1", "client")?;
    mesh.sim.add_pod("node2", "echo")?;
    mesh.sim.add_pod("node2", "web")?;
    let spec = MeshSpec {
        services: vec![
            ServiceSpec::new("echo", ECHO_VIP.parse()?, 9000, 9000, &["echo"]).protocol("tcp"),
            ServiceSpec::new("web", WEB_VIP.parse()?, 80, 8080, &["web"]).protocol("http"),
        ],
        ..MeshSpec::default()
    };
    let _echo = mesh.serve("echo", &["echo-server", "--listen", "0.0.0.0:9000"])?;
    let _web = mesh.serve(
        "web",
        &["http-backend", "--listen", "0.0.0.0:8080", "--name", "web"],
    )?;
    mesh.start_agent("node1", &spec)?;
    mesh.start_agent("node2", &spec)?;
    std::thread::sleep(Duration::from_secs(2));

    let mut rows = Vec::new();
    let idle = measure(&mesh)?;
    for (n, node) in NODES.iter().enumerate() {
        rows.push(Row {
            metric: "rss_idle".into(),
            node,
            value: kib(&idle[n]),
            unit: "KiB",
        });
        if let Some(bytes) = idle[n].cgroup_bytes {
            rows.push(Row {
                metric: "cgroup_idle".into(),
                node,
                value: bytes as f64 / 1024.0,
                unit: "KiB",
            });
        }
    }
    let echo = format!("{ECHO_VIP}:9000");
    for count in HELD {
        let before = measure(&mesh)?;
        let held = hold(&mesh, &echo, count)?;
        held_rows(&mut rows, count, &before, &held);
    }

    let url = format!("http://{WEB_VIP}/echo");
    let secs = LOAD_SECONDS.to_string();
    let clients = LOAD_CLIENTS.to_string();
    let rate = LOAD_RATE_PER_CLIENT.to_string();
    let out = mesh.sim.run(
        &mesh.placement("client"),
        "h2load",
        [
            "--h1",
            "-D",
            secs.as_str(),
            "-c",
            clients.as_str(),
            "--rps",
            rate.as_str(),
            url.as_str(),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let requests = mesh_tests::h2load::summary_counts(&text, "requests:")?;
    let n = |key: &str| requests.get(key).copied().unwrap_or(0);
    ensure!(
        n("done") > 0 && n("failed") + n("errored") + n("timeout") == 0,
        "h2load under load failed:\n{text}"
    );
    let loaded = measure(&mesh)?;
    for (i, node) in NODES.iter().enumerate() {
        rows.push(Row {
            metric: format!("rss_after_{}s_at_1000_rps", LOAD_SECONDS),
            node,
            value: kib(&loaded[i]),
            unit: "KiB",
        });
    }

    if json_out {
        for r in &rows {
            println!(
                "{}",
                json!({"suite": "memory", "scenario": "mesh", "node": r.node,
                       "metric": r.metric, "unit": r.unit, "mesh": r.value})
            );
        }
    } else {
        println!(
            "memory bench: both agents, client node1 -> tunnel -> node2; {} HTTP/1.1 requests at 1000/s",
            n("done")
        );
        for r in &rows {
            println!(
                "  {:<34} {:<6} {:>12.1} {}",
                r.metric, r.node, r.value, r.unit
            );
        }
        if idle[0].cgroup_bytes.is_none() {
            println!("  (no cgroup v2 memory controller on the agents' cgroups here: RSS only)");
        }
    }
    Ok(())
}
