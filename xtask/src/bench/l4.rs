//! The `l4` suite: what the mesh costs a plain TCP connection between pods on two nodes.
//!
//! Scenarios, always client pod "client" on node1 and server pod "server" on node2:
//! - direct: no agents, so no eBPF program is attached; the client dials the server pod IP.
//! - kernel-path: agents on both nodes (connect4 policy, sock_ops counting, sk_msg and ingress
//!   programs attached); the client dials a server port that no service covers. The agent
//!   treats every service endpoint (ip:target_port) as meshed too, so the server listens on
//!   extra, unmeshed ports for this; no redirect, no userspace hop.
//!   The sk_msg fast path stays off, as in the agent's default config; it only pairs sockets
//!   of one node, which no kernel-path connection here has.
//! - relay: the client dials a service VIP whose endpoint is given by address only (no node):
//!   connect4 redirects to node1's agent, which relays in plain TCP to the server pod on node2
//!   (one agent, no TLS: the plain L4 relay).
//! - tunnel: the client dials a service VIP whose endpoint is the server pod of node2: node1's
//!   agent carries the connection over the mTLS tunnel (HTTP/2 CONNECT) to node2's agent,
//!   which connects to the pod (two agents, TLS: what meshed cross-node traffic takes).
//!
//! Direct and kernel-path use the very same server processes and ports, so they differ only in
//! the attached programs. Stopping an agent detaches its programs, so the agents are stopped for
//! `direct` and started again for the other two, for every metric of every round: the three
//! scenarios of a metric then run back to back and share the machine's momentary load (this is
//! a 2-core VM shared with other work). Each number is the median of `ROUNDS` rounds. Every run
//! also checks, from node1's proxy counters, that it really took the path it claims to measure.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result, bail, ensure};

use super::agents::BenchAgents;
use mesh_tests::mesh::{Mesh, MeshSpec};
use mesh_tests::sim::Proc;
use serde_json::json;

use super::{median, number, round3, service};

/// Rounds unless `--rounds` says otherwise (see `bench::rounds`).
const ROUNDS: usize = 3;
const RR_COUNT: &str = "20000";
const RR_WARMUP: &str = "1000";
const BULK_SECONDS: &str = "5";

/// Ports the services forward to (meshed when dialled directly, too).
const ECHO_MESHED: u16 = 9000;
const SINK_MESHED: u16 = 9001;
/// Ports no service covers: direct and kernel-path dial these.
const ECHO_PLAIN: u16 = 9100;
const SINK_PLAIN: u16 = 9101;
const ECHO_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 30), ECHO_MESHED);
const SINK_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 31), SINK_MESHED);
/// The same servers behind services whose endpoints are addresses only (plain relay).
const ECHO_RELAY_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 32), ECHO_MESHED);
const SINK_RELAY_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 33), SINK_MESHED);

/// Kernel-path goals: latency ratio at most this, throughput ratio at least `THROUGHPUT_GOAL`.
const LATENCY_GOAL: f64 = 1.05;
const THROUGHPUT_GOAL: f64 = 0.95;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    Direct,
    KernelPath,
    Relay,
    Tunnel,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario::Direct,
    Scenario::KernelPath,
    Scenario::Relay,
    Scenario::Tunnel,
];

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write_str: the progress lines align these with a width.
        f.pad(match self {
            Scenario::Direct => "direct",
            Scenario::KernelPath => "kernel-path",
            Scenario::Relay => "relay",
            Scenario::Tunnel => "tunnel",
        })
    }
}

/// One probe run; an rr run yields two metrics (p50 and p99 of the same samples).
#[derive(Clone, Copy)]
enum Test {
    Rr {
        size: usize,
        p50: &'static str,
        p99: &'static str,
    },
    Bulk,
}

const TESTS: [Test; 3] = [
    Test::Rr {
        size: 1,
        p50: "rr_1b_p50",
        p99: "rr_1b_p99",
    },
    Test::Rr {
        size: 1024,
        p50: "rr_1k_p50",
        p99: "rr_1k_p99",
    },
    Test::Bulk,
];

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Test::Rr { size, .. } => format!("rr {size} B"),
            Test::Bulk => format!("bulk {BULK_SECONDS} s"),
        };
        f.pad(&name)
    }
}

struct Metric {
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
}

const METRICS: [Metric; 5] = [
    latency("rr_1b_p50"),
    latency("rr_1b_p99"),
    latency("rr_1k_p50"),
    latency("rr_1k_p99"),
    Metric {
        name: "bulk",
        unit: "Gbit/s",
        higher_is_better: true,
    },
];

const fn latency(name: &'static str) -> Metric {
    Metric {
        name,
        unit: "us",
        higher_is_better: false,
    }
}

impl Metric {
    fn goal(&self) -> String {
        if self.higher_is_better {
            format!(">= {THROUGHPUT_GOAL}")
        } else {
            format!("<= {LATENCY_GOAL}")
        }
    }

    fn meets_goal(&self, ratio: f64) -> bool {
        if self.higher_is_better {
            ratio >= THROUGHPUT_GOAL
        } else {
            ratio <= LATENCY_GOAL
        }
    }
}

/// Every sample of every (metric, scenario), one per round.
type Samples = BTreeMap<(&'static str, Scenario), Vec<f64>>;

pub fn run(json: bool) -> Result<()> {
    let mut bench = Bench::setup()?;
    let samples = bench.measure()?;
    // Tear the nodes down before printing: the results do not depend on them.
    drop(bench);
    let rows = rows(&samples)?;
    if json {
        print_json(&rows);
        // Goals on stderr keep stdout strictly one result object per line.
        eprint!("{}", goals(&rows));
    } else {
        print!("{}", table(&rows));
        print!("{}", goals(&rows));
    }
    Ok(())
}

struct Bench {
    mesh: Mesh,
    agents: BenchAgents,
    /// Kept only to be dropped (killed) with the bench; the sim would kill them anyway.
    _servers: Vec<Proc>,
}

impl Bench {
    fn setup() -> Result<Bench> {
        eprintln!("l4 bench: setting up node1 (client pod) and node2 (server pod)");
        let mut mesh = Mesh::new("bench", crate::bench::release_binaries()?)?;
        mesh.sim.add_pod("node1", "client")?;
        mesh.sim.add_pod("node2", "server")?;
        let servers = start_servers(&mesh)?;
        let spec = MeshSpec {
            services: vec![
                service("echo", ECHO_VIP, "server"),
                service("sink", SINK_VIP, "server"),
                service("echo-relay", ECHO_RELAY_VIP, "server").address_only(),
                service("sink-relay", SINK_RELAY_VIP, "server").address_only(),
            ],
            ..MeshSpec::default()
        };
        Ok(Bench {
            mesh,
            agents: BenchAgents::new(spec, std::time::Duration::ZERO),
            _servers: servers,
        })
    }

    /// Rounds of: for each test, every scenario back to back.
    fn measure(&mut self) -> Result<Samples> {
        let mut samples = Samples::new();
        let rounds = crate::bench::rounds(ROUNDS);
        for round in 1..=rounds {
            for test in TESTS {
                for scenario in SCENARIOS {
                    // Every sample goes to stderr too, so the spread behind a median is visible.
                    eprint!("round {round}/{rounds}: {test:<10} {scenario:<12}");
                    for (metric, value) in self.run_scenario(scenario, test)? {
                        eprint!(" {metric}={value:.2}");
                        samples.entry((metric, scenario)).or_default().push(value);
                    }
                    eprintln!();
                }
            }
        }
        Ok(samples)
    }

    fn run_scenario(&mut self, scenario: Scenario, test: Test) -> Result<Vec<(&'static str, f64)>> {
        self.agents
            .set(&mut self.mesh, scenario != Scenario::Direct)?;
        let before = self.proxied()?;
        let values = self.probe(test, self.target(scenario, test))?;
        let after = self.proxied()?;
        check_path(scenario, before, after)?;
        Ok(values)
    }

    fn target(&self, scenario: Scenario, test: Test) -> SocketAddrV4 {
        let server = self.mesh.workload("server").ip;
        match (scenario, test) {
            (Scenario::Tunnel, Test::Rr { .. }) => ECHO_VIP,
            (Scenario::Tunnel, Test::Bulk) => SINK_VIP,
            (Scenario::Relay, Test::Rr { .. }) => ECHO_RELAY_VIP,
            (Scenario::Relay, Test::Bulk) => SINK_RELAY_VIP,
            (_, Test::Rr { .. }) => SocketAddrV4::new(server, ECHO_PLAIN),
            (_, Test::Bulk) => SocketAddrV4::new(server, SINK_PLAIN),
        }
    }

    /// Connections node1's agent has accepted and tunnel streams it has opened so far;
    /// `None` without agents.
    fn proxied(&self) -> Result<Option<Proxied>> {
        let Some(stats) = self.agents.node1_stats(&self.mesh)? else {
            return Ok(None);
        };
        let get = |section, field| stats.get(section, field);
        Ok(Some(Proxied {
            accepted: get("proxy", "accepted")?,
            streams: get("tunnel", "streams_opened")?,
        }))
    }

    fn probe(&self, test: Test, addr: SocketAddrV4) -> Result<Vec<(&'static str, f64)>> {
        let addr = addr.to_string();
        match test {
            Test::Rr { size, p50, p99 } => {
                let size = size.to_string();
                let v = self.mesh.probe(
                    "client",
                    &[
                        "rr",
                        "--connect",
                        &addr,
                        "--size",
                        &size,
                        "--count",
                        RR_COUNT,
                        "--warmup",
                        RR_WARMUP,
                    ],
                )?;
                Ok(vec![
                    (p50, number(&v, "p50_us")?),
                    (p99, number(&v, "p99_us")?),
                ])
            }
            Test::Bulk => {
                let v = self.mesh.probe(
                    "client",
                    &["bulk", "--connect", &addr, "--seconds", BULK_SECONDS],
                )?;
                // The sink reports what it received; anything short means data was lost.
                ensure!(v["bytes"] == v["sent"], "bulk to {addr} lost data: {v}");
                Ok(vec![("bulk", number(&v, "gbit_per_s")?)])
            }
        }
    }
}

fn start_servers(mesh: &Mesh) -> Result<Vec<Proc>> {
    let mut servers = Vec::new();
    for (kind, port) in [
        ("echo-server", ECHO_MESHED),
        ("echo-server", ECHO_PLAIN),
        ("sink-server", SINK_MESHED),
        ("sink-server", SINK_PLAIN),
    ] {
        let listen = format!("0.0.0.0:{port}");
        servers.push(mesh.serve("server", &[kind, "--listen", &listen])?);
    }
    Ok(servers)
}

/// node1's agent's counters that tell the paths apart.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Proxied {
    accepted: u64,
    streams: u64,
}

/// A run that took the wrong path would make the comparison meaningless, so it is an error.
fn check_path(scenario: Scenario, before: Option<Proxied>, after: Option<Proxied>) -> Result<()> {
    match (scenario, before, after) {
        (Scenario::Direct, None, None) => Ok(()),
        (Scenario::KernelPath, Some(b), Some(a)) => {
            ensure!(
                a.accepted == b.accepted,
                "kernel-path run went through the agent ({} -> {} accepted)",
                b.accepted,
                a.accepted
            );
            Ok(())
        }
        (Scenario::Relay, Some(b), Some(a)) => {
            ensure!(
                a.accepted > b.accepted,
                "relay run did not go through node1's agent"
            );
            ensure!(
                a.streams == b.streams,
                "relay run went through the tunnel ({} -> {} streams)",
                b.streams,
                a.streams
            );
            Ok(())
        }
        (Scenario::Tunnel, Some(b), Some(a)) => {
            ensure!(
                a.accepted > b.accepted && a.streams > b.streams,
                "tunnel run did not go through node1's agent and the tunnel ({b:?} -> {a:?})"
            );
            Ok(())
        }
        _ => bail!("agents in the wrong state for the {scenario} scenario"),
    }
}

/// One compared result: a scenario's median against the direct median.
struct Row {
    scenario: Scenario,
    metric: &'static Metric,
    direct: f64,
    value: f64,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.value / self.direct
    }
}

/// Kernel-path rows first, then relay and tunnel rows, each in `METRICS` order.
fn rows(samples: &Samples) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for scenario in [Scenario::KernelPath, Scenario::Relay, Scenario::Tunnel] {
        for metric in &METRICS {
            rows.push(Row {
                scenario,
                metric,
                direct: median_of(samples, metric.name, Scenario::Direct)?,
                value: median_of(samples, metric.name, scenario)?,
            });
        }
    }
    Ok(rows)
}

fn median_of(samples: &Samples, metric: &'static str, scenario: Scenario) -> Result<f64> {
    let values = samples
        .get(&(metric, scenario))
        .with_context(|| format!("no samples of {metric} for {scenario}"))?;
    Ok(median(values))
}

fn print_json(rows: &[Row]) {
    for r in rows {
        let line = json!({
            "scenario": r.scenario.to_string(),
            "metric": r.metric.name,
            "unit": r.metric.unit,
            "direct": round3(r.direct),
            "mesh": round3(r.value),
            "ratio": round3(r.ratio()),
        });
        println!("{line}");
    }
}

/// One line per metric: direct, then kernel-path, relay and tunnel with their ratios to
/// direct.
fn table(rows: &[Row]) -> String {
    let rounds = crate::bench::rounds(ROUNDS);
    let mut out = format!(
        "l4: client pod (node1) -> server pod (node2), median of {rounds} rounds\n\
         relay: one agent, plain TCP; tunnel: two agents over the mTLS tunnel\n\
         {:<10} {:<6} {:>9} {:>12} {:>7} {:>9} {:>7} {:>9} {:>7}\n",
        "metric", "unit", "direct", "kernel-path", "ratio", "relay", "ratio", "tunnel", "ratio"
    );
    for metric in &METRICS {
        let find = |s| {
            rows.iter()
                .find(|r| r.scenario == s && r.metric.name == metric.name)
        };
        let (Some(k), Some(r), Some(t)) = (
            find(Scenario::KernelPath),
            find(Scenario::Relay),
            find(Scenario::Tunnel),
        ) else {
            continue;
        };
        out += &format!(
            "{:<10} {:<6} {:>9.2} {:>12.2} {:>7.3} {:>9.2} {:>7.3} {:>9.2} {:>7.3}\n",
            metric.name,
            metric.unit,
            k.direct,
            k.value,
            k.ratio(),
            r.value,
            r.ratio(),
            t.value,
            t.ratio()
        );
    }
    out
}

/// The kernel-path goals: attaching the programs must cost at most 5 % of latency and
/// throughput.
fn goals(rows: &[Row]) -> String {
    let mut out = String::from("goals (kernel-path / direct):\n");
    for r in rows.iter().filter(|r| r.scenario == Scenario::KernelPath) {
        let verdict = if r.metric.meets_goal(r.ratio()) {
            "PASS"
        } else {
            "MISS"
        };
        out += &format!(
            "  {:<10} ratio {:.3} {:<7} {verdict}\n",
            r.metric.name,
            r.ratio(),
            r.metric.goal()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn goals_depend_on_direction() {
        assert!(METRICS[0].meets_goal(1.05));
        assert!(!METRICS[0].meets_goal(1.06));
        assert!(METRICS[4].meets_goal(0.95));
        assert!(!METRICS[4].meets_goal(0.94));
    }

    #[test]
    fn wrong_path_is_an_error() {
        let p = |accepted, streams| Some(Proxied { accepted, streams });
        assert!(check_path(Scenario::KernelPath, p(3, 1), p(3, 1)).is_ok());
        assert!(check_path(Scenario::KernelPath, p(3, 1), p(4, 1)).is_err());
        assert!(check_path(Scenario::Relay, p(3, 1), p(4, 1)).is_ok());
        assert!(check_path(Scenario::Relay, p(3, 1), p(4, 2)).is_err());
        assert!(check_path(Scenario::Relay, p(3, 1), p(3, 1)).is_err());
        assert!(check_path(Scenario::Tunnel, p(3, 1), p(4, 2)).is_ok());
        assert!(check_path(Scenario::Tunnel, p(3, 1), p(4, 1)).is_err());
        assert!(check_path(Scenario::Direct, p(3, 1), p(3, 1)).is_err());
    }
}
