//! The `mtls` suite: what the mTLS tunnel between two agents costs a TCP connection.
//!
//! Client pod "client" on node1, server pod "server" on node2. Scenarios:
//! - direct: no agents, so no eBPF program and no proxy; the client dials the server pod IP.
//!   This is the plain network, so a ratio is the whole cost of the mesh on this path (eBPF,
//!   both agents, TLS, HTTP/2). The kernel programs' share alone is what `bench l4` reports as
//!   kernel-path; it is left out here. The agents are stopped, not told to ignore a port,
//!   because the agent treats every service endpoint as meshed.
//! - mesh: agents on both nodes; the client dials a service VIP whose only endpoint is the
//!   server pod, so connect4 sends it to node1's agent, which opens an HTTP/2 CONNECT stream on
//!   a pooled mTLS (TLS 1.3, ECDSA P-256 SPIFFE certificates) session to node2's agent on
//!   :15008, which connects to the pod. Both scenarios reach the very same server processes.
//!
//! As in `l4`, every test of every round runs direct and then mesh back to back (stopping the
//! agents for direct and starting them again for mesh), so both see the machine's momentary load
//! (a small VM shared with other work), and every mesh run starts with freshly started agents.
//! Each number is the median over `ROUNDS` rounds. Every mesh run checks from node1's counters
//! that it went through the agent and the tunnel.
//!
//! What the connection and handshake rows compare:
//! - conn_*: `mesh-probe conn-rate`, `CONN_CONCURRENCY` clients doing connect, 1 byte echoed,
//!   close, for `CONN_SECONDS`. Through the mesh every such connection is a new CONNECT stream on
//!   the one pooled session; `tunnel_sessions` is how many TLS sessions node1 opened meanwhile.
//! - first_conn_cold: time to first byte (connect until the echo is back) of the first
//!   connection after both agents started, from pod "cold" that does nothing else: it pays for
//!   the new TLS session, and also for whatever else a fresh agent does once (first accept,
//!   first connect to the pod).
//! - first_conn_new_session: the first connection of pods "fresh1".. on node1, each with its own
//!   service account, through agents that are already warm. Sessions are pooled per source
//!   identity, so each of them opens a new session (checked on node1's counters), and nothing
//!   else about it is new.
//! - conn_pooled_p50: the p50 of the later connections of the same runs (one at a time, each
//!   run `FIRST_RUN_COUNT` connections), which reuse the session.
//! - session_setup: median first_conn_new_session minus median conn_pooled_p50: what opening a
//!   session adds to a connection (TCP connect between the nodes, mutual-auth TLS 1.3
//!   handshake, HTTP/2 handshake, the first stream on the new session).
//! - tls_handshake: the goal "handshakes per second within 2x of rustls alone". Forcing a new
//!   session per connection is not possible from outside, so the mesh side is 1 / session_setup
//!   (the rate at which one client could open sessions back to back), and the baseline is
//!   `mesh-probe tls-handshakes --concurrency 1` on this machine: rustls alone, both sides in one
//!   process over loopback, full mutual-auth TLS 1.3 handshakes with the agent's provider, key
//!   type and settings, one after the other. Both are rates of serial handshakes; the mesh's
//!   includes its two network round trips, the baseline's the loopback ones.
//!   `tls_handshake_all_cores` is the same baseline with one client/server pair per core (what
//!   the machine can do at most), for reference; it has no mesh counterpart.
//! - agent_cpu_per_gb: CPU time (user + system) of both agents during the mesh bulk run, per
//!   GB delivered. Read from each agent's cgroup (`cpu.stat` usage_usec; the agent is the only
//!   process in `<node cgroup>/agent`): the same sum as utime + stime in /proc/<pid>/stat, in
//!   microseconds instead of clock ticks.
//! - agent_cpu_vs_direct: the same CPU per GB over the seconds a GB takes direct (8 / the
//!   direct bulk Gbit/s) in the same round: a ratio that does not move with the machine's
//!   speed, where the absolute CPU time does.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use super::agents::BenchAgents;
use mesh_tests::mesh::{IdentitySpec, Mesh, MeshSpec, parse_last_json};
use mesh_tests::sim::Proc;
use serde_json::{Value, json};

use super::{median, number, round3, service};

/// Rounds unless `--rounds` says otherwise (see `bench::rounds`).
const ROUNDS: usize = 3;
const RR_COUNT: &str = "20000";
const RR_WARMUP: &str = "1000";
const BULK_SECONDS: &str = "5";
const CONN_SECONDS: &str = "5";
const CONN_CONCURRENCY: &str = "4";
/// Connections of a first-connection run (one at a time): the first, then pooled ones.
const FIRST_RUN_COUNT: &str = "50";
const HANDSHAKE_SECONDS: &str = "3";
/// Pod on node1 that only makes the first connections after the agents start. Not "client":
/// after conn-rate its ports are full of TIME_WAIT entries, which slows down connect().
const COLD_POD: &str = "cold";
/// Pods on node1 with service accounts of their own, so their first connection opens a new
/// session on an already warm agent.
const FRESH_PODS: [&str; 8] = [
    "fresh1", "fresh2", "fresh3", "fresh4", "fresh5", "fresh6", "fresh7", "fresh8",
];
/// Pause after starting or stopping the agents: stopping one frees its programs and maps in
/// the background, which shows in the next few connections' times.
const SETTLE: Duration = Duration::from_secs(1);

/// The server pod's ports; direct dials them on the pod IP, mesh through the VIPs.
const ECHO_PORT: u16 = 9000;
const SINK_PORT: u16 = 9001;
const ECHO_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 40), ECHO_PORT);
const SINK_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 41), SINK_PORT);

/// Goals, on mesh / direct: round-trip latency at most 3x, bulk throughput at least 35 %, and
/// new sessions at least half as fast as rustls alone handshakes.
const RR_GOAL: Goal = Goal::AtMost(3.0);
const BULK_GOAL: Goal = Goal::AtLeast(0.35);
const HANDSHAKE_GOAL: Goal = Goal::AtLeast(0.5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    Direct,
    Mesh,
}

const SCENARIOS: [Scenario; 2] = [Scenario::Direct, Scenario::Mesh];

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Scenario::Direct => "direct",
            Scenario::Mesh => "mesh",
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Test {
    Rr {
        size: usize,
        p50: &'static str,
        p99: &'static str,
    },
    Bulk,
    ConnRate,
    /// First connections (cold agent, then new sessions on a warm one), and rustls alone.
    Sessions,
}

const TESTS: [Test; 5] = [
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
    Test::ConnRate,
    Test::Sessions,
];

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Test::Rr { size, .. } => format!("rr {size} B"),
            Test::Bulk => format!("bulk {BULK_SECONDS} s"),
            Test::ConnRate => format!("conn-rate {CONN_SECONDS} s"),
            Test::Sessions => "sessions".to_string(),
        };
        f.pad(&name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtMost(g) => ratio <= g,
            Goal::AtLeast(g) => ratio >= g,
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Goal::AtMost(g) => format!("<= {g}"),
            Goal::AtLeast(g) => format!(">= {g}"),
        };
        f.pad(&s)
    }
}

/// What the `direct` column of a metric holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Baseline {
    Direct,
    RustlsAlone,
    /// Mesh only (nothing to compare with).
    None,
}

impl Baseline {
    fn name(self) -> Option<&'static str> {
        match self {
            Baseline::Direct => Some("direct"),
            Baseline::RustlsAlone => Some("rustls-alone"),
            Baseline::None => None,
        }
    }
}

struct Metric {
    name: &'static str,
    unit: &'static str,
    baseline: Baseline,
    goal: Option<Goal>,
}

const fn metric(
    name: &'static str,
    unit: &'static str,
    baseline: Baseline,
    goal: Option<Goal>,
) -> Metric {
    Metric {
        name,
        unit,
        baseline,
        goal,
    }
}

const METRICS: [Metric; 18] = [
    metric("rr_1b_p50", "us", Baseline::Direct, Some(RR_GOAL)),
    metric("rr_1b_p99", "us", Baseline::Direct, Some(RR_GOAL)),
    metric("rr_1k_p50", "us", Baseline::Direct, Some(RR_GOAL)),
    metric("rr_1k_p99", "us", Baseline::Direct, Some(RR_GOAL)),
    metric("bulk", "Gbit/s", Baseline::Direct, Some(BULK_GOAL)),
    metric("agent_cpu_per_gb", "cpu-s/GB", Baseline::None, None),
    metric("agent_cpu_vs_direct", "cpu-s/GB", Baseline::Direct, None),
    metric("conn_rate", "conn/s", Baseline::Direct, None),
    metric("conn_p50", "us", Baseline::Direct, None),
    metric("conn_p99", "us", Baseline::Direct, None),
    metric("conn_rate_connections", "count", Baseline::Direct, None),
    metric("tunnel_sessions", "count", Baseline::None, None),
    metric("first_conn_cold", "us", Baseline::Direct, None),
    metric("first_conn_new_session", "us", Baseline::Direct, None),
    metric("conn_pooled_p50", "us", Baseline::Direct, None),
    metric("session_setup", "us", Baseline::None, None),
    metric(
        "tls_handshake",
        "/s",
        Baseline::RustlsAlone,
        Some(HANDSHAKE_GOAL),
    ),
    metric("tls_handshake_all_cores", "/s", Baseline::RustlsAlone, None),
];

/// Every sample of every (metric, scenario), one or more per round. Rustls-alone samples are
/// filed under `Direct`.
type Samples = BTreeMap<(&'static str, Scenario), Vec<f64>>;

pub fn run(json: bool) -> Result<()> {
    let load_before = loadavg();
    let mut bench = Bench::setup()?;
    let samples = bench.measure()?;
    drop(bench);
    // The machine may be shared: the load says how much the numbers can be trusted.
    let load = format!("load average before {load_before}, after {}", loadavg());
    let rows = rows(&samples);
    if json {
        print_json(&rows);
        eprintln!("{load}");
        eprint!("{}", goals(&rows));
    } else {
        print!("{}", table(&rows));
        println!("{load}");
        print!("{}", goals(&rows));
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

struct Bench {
    mesh: Mesh,
    agents: BenchAgents,
    _servers: Vec<Proc>,
}

/// node1's tunnel and proxy counters.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    accepted: u64,
    streams: u64,
    sessions: u64,
}

impl Bench {
    fn setup() -> Result<Bench> {
        eprintln!("mtls bench: setting up node1 (client pods) and node2 (server pod)");
        let mut mesh = Mesh::new("bench-mtls", crate::bench::release_binaries()?)?;
        mesh.sim.add_pod("node1", "client")?;
        mesh.sim.add_pod("node1", COLD_POD)?;
        for pod in FRESH_PODS {
            mesh.sim.add_pod("node1", pod)?;
        }
        mesh.sim.add_pod("node2", "server")?;
        let servers = vec![
            mesh.serve(
                "server",
                &["echo-server", "--listen", &format!("0.0.0.0:{ECHO_PORT}")],
            )?,
            mesh.serve(
                "server",
                &["sink-server", "--listen", &format!("0.0.0.0:{SINK_PORT}")],
            )?,
        ];
        allow_time_wait_reuse(&mesh)?;
        let identities = FRESH_PODS
            .iter()
            .map(|pod| {
                let id = IdentitySpec {
                    service_account: Some(format!("{pod}-sa")),
                    ..IdentitySpec::default()
                };
                (pod.to_string(), id)
            })
            .collect();
        let spec = MeshSpec {
            services: vec![
                service("echo", ECHO_VIP, "server"),
                service("sink", SINK_VIP, "server"),
            ],
            identities,
            ..MeshSpec::default()
        };
        Ok(Bench {
            mesh,
            agents: BenchAgents::new(spec, SETTLE),
            _servers: servers,
        })
    }

    fn measure(&mut self) -> Result<Samples> {
        let mut samples = Samples::new();
        let rounds = crate::bench::rounds(ROUNDS);
        for round in 1..=rounds {
            for test in TESTS {
                for scenario in SCENARIOS {
                    eprint!("round {round}/{rounds}: {test:<14} {scenario:<7}");
                    let values = self
                        .run_scenario(scenario, test)
                        .with_context(|| format!("{test} {scenario}, round {round}"));
                    let values = match values {
                        Ok(v) => v,
                        Err(e) => {
                            eprintln!();
                            return Err(self.agents.with_logs(&self.mesh, e));
                        }
                    };
                    for (metric, scenario, value) in values {
                        eprint!(" {metric}={value:.2}");
                        samples.entry((metric, scenario)).or_default().push(value);
                    }
                    eprintln!();
                }
            }
        }
        Ok(samples)
    }

    fn run_scenario(
        &mut self,
        scenario: Scenario,
        test: Test,
    ) -> Result<Vec<(&'static str, Scenario, f64)>> {
        self.agents
            .set(&mut self.mesh, scenario == Scenario::Mesh)?;
        let before = self.counters()?;
        let values = match test {
            Test::Rr { size, p50, p99 } => {
                let v = self.rr(self.echo(scenario), size)?;
                vec![
                    (p50, scenario, number(&v, "p50_us")?),
                    (p99, scenario, number(&v, "p99_us")?),
                ]
            }
            Test::Bulk => self.bulk(scenario)?,
            Test::ConnRate => self.conn_rate(scenario, before)?,
            Test::Sessions => self.sessions(scenario)?,
        };
        let after = self.counters()?;
        check_path(scenario, before, after)?;
        Ok(values)
    }

    fn echo(&self, scenario: Scenario) -> SocketAddrV4 {
        match scenario {
            Scenario::Direct => SocketAddrV4::new(self.mesh.workload("server").ip, ECHO_PORT),
            Scenario::Mesh => ECHO_VIP,
        }
    }

    fn sink(&self, scenario: Scenario) -> SocketAddrV4 {
        match scenario {
            Scenario::Direct => SocketAddrV4::new(self.mesh.workload("server").ip, SINK_PORT),
            Scenario::Mesh => SINK_VIP,
        }
    }

    /// `None` without agents.
    fn counters(&self) -> Result<Option<Counters>> {
        let Some(stats) = self.agents.node1_stats(&self.mesh)? else {
            return Ok(None);
        };
        let get = |section, field| stats.get(section, field);
        Ok(Some(Counters {
            accepted: get("proxy", "accepted")?,
            streams: get("tunnel", "streams_opened")?,
            sessions: get("tunnel", "sessions_opened")?,
        }))
    }

    fn sessions_opened(&self) -> Result<u64> {
        Ok(self.counters()?.map(|c| c.sessions).unwrap_or(0))
    }

    fn rr(&self, addr: SocketAddrV4, size: usize) -> Result<Value> {
        let (addr, size) = (addr.to_string(), size.to_string());
        self.mesh.probe(
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
        )
    }

    /// Throughput, and for the mesh the agents' CPU time per GB delivered.
    fn bulk(&self, scenario: Scenario) -> Result<Vec<(&'static str, Scenario, f64)>> {
        let addr = self.sink(scenario).to_string();
        let cpu_before = self.agents.cpu_seconds(&self.mesh)?;
        let v = self.mesh.probe(
            "client",
            &["bulk", "--connect", &addr, "--seconds", BULK_SECONDS],
        )?;
        let cpu_after = self.agents.cpu_seconds(&self.mesh)?;
        ensure!(v["bytes"] == v["sent"], "bulk to {addr} lost data: {v}");
        let gbit_per_s = number(&v, "gbit_per_s")?;
        let mut values = vec![("bulk", scenario, gbit_per_s)];
        match (cpu_before, cpu_after) {
            (Some(before), Some(after)) => {
                let gb = number(&v, "bytes")? / 1e9;
                let cpu_per_gb = (after - before) / gb;
                values.push(("agent_cpu_per_gb", scenario, cpu_per_gb));
                values.push(("agent_cpu_vs_direct", scenario, cpu_per_gb));
            }
            // The yardstick of the agents' CPU per GB: the seconds a GB takes direct.
            _ if gbit_per_s > 0.0 => {
                values.push(("agent_cpu_vs_direct", scenario, 8.0 / gbit_per_s))
            }
            _ => {}
        }
        Ok(values)
    }

    fn conn_rate(
        &self,
        scenario: Scenario,
        before: Option<Counters>,
    ) -> Result<Vec<(&'static str, Scenario, f64)>> {
        let addr = self.echo(scenario).to_string();
        let v = self.mesh.probe(
            "client",
            &[
                "conn-rate",
                "--connect",
                &addr,
                "--seconds",
                CONN_SECONDS,
                "--concurrency",
                CONN_CONCURRENCY,
            ],
        )?;
        check_conn_rate(&v, &addr)?;
        let mut values = vec![
            ("conn_rate", scenario, number(&v, "conn_per_s")?),
            ("conn_p50", scenario, number(&v, "p50_us")?),
            ("conn_p99", scenario, number(&v, "p99_us")?),
            (
                "conn_rate_connections",
                scenario,
                number(&v, "connections")?,
            ),
        ];
        if let (Some(before), Some(after)) = (before, self.counters()?) {
            let connections = v["connections"].as_u64().unwrap_or(0);
            let streams = after.streams - before.streams;
            ensure!(
                streams >= connections,
                "{connections} connections but only {streams} tunnel streams: not all went \
                 through the tunnel"
            );
            values.push((
                "tunnel_sessions",
                scenario,
                (after.sessions - before.sessions) as f64,
            ));
        }
        Ok(values)
    }

    /// First connections: from `COLD_POD` right after the agents started, then from each fresh
    /// pod; with direct, also rustls alone.
    fn sessions(&self, scenario: Scenario) -> Result<Vec<(&'static str, Scenario, f64)>> {
        let addr = self.echo(scenario).to_string();
        let mut values = Vec::new();
        let first_run = |pod: &str| -> Result<(f64, f64, u64)> {
            let sessions = self.sessions_opened()?;
            let v = self.mesh.probe(
                pod,
                &[
                    "conn-rate",
                    "--connect",
                    &addr,
                    "--seconds",
                    "30",
                    "--count",
                    FIRST_RUN_COUNT,
                ],
            )?;
            check_conn_rate(&v, &addr)?;
            let opened = self.sessions_opened()? - sessions;
            Ok((number(&v, "first_us")?, number(&v, "p50_us")?, opened))
        };

        let (cold, pooled, opened) = first_run(COLD_POD)?;
        if scenario == Scenario::Mesh {
            ensure!(
                opened == 1,
                "the first connections after agent start opened {opened} TLS sessions, not 1"
            );
        }
        values.push(("first_conn_cold", scenario, cold));
        values.push(("conn_pooled_p50", scenario, pooled));
        for pod in FRESH_PODS {
            let (first, pooled, opened) = first_run(pod)?;
            if scenario == Scenario::Mesh {
                // Without a new session this would measure nothing.
                ensure!(
                    opened == 1,
                    "{FIRST_RUN_COUNT} connections from {pod} (own service account) opened \
                     {opened} TLS sessions, not 1"
                );
            }
            values.push(("first_conn_new_session", scenario, first));
            values.push(("conn_pooled_p50", scenario, pooled));
        }
        if scenario == Scenario::Direct {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            let one = self.rustls_alone(1)?;
            let all = self.rustls_alone(cores)?;
            values.push(("tls_handshake", Scenario::Direct, one));
            values.push(("tls_handshake_all_cores", Scenario::Direct, all));
        }
        Ok(values)
    }

    /// `mesh-probe tls-handshakes` on the host itself, outside the simulated nodes.
    fn rustls_alone(&self, concurrency: usize) -> Result<f64> {
        let concurrency = concurrency.to_string();
        let args = [
            "tls-handshakes",
            "--seconds",
            HANDSHAKE_SECONDS,
            "--concurrency",
            &concurrency,
        ];
        let out = Command::new(&self.mesh.bins.probe)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.mesh.bins.probe.display()))?;
        let v = parse_last_json(&out.stdout).with_context(|| {
            format!(
                "mesh-probe {args:?}: status {}, stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        ensure!(out.status.success(), "mesh-probe {args:?} failed: {v}");
        number(&v, "handshakes_per_s")
    }
}

/// conn-rate clients close first, so their side of each connection waits in TIME_WAIT for 60 s;
/// thousands of connections per second would run out of ephemeral ports towards the one
/// server address. `tcp_tw_reuse=1` (per network namespace) lets connect() reuse such ports
/// after a second. The client pods, and node2, whose agent connects to the server pod and
/// closes first too.
fn allow_time_wait_reuse(mesh: &Mesh) -> Result<()> {
    const SYSCTL: &str = "net.ipv4.tcp_tw_reuse=1";
    for pod in ["client", COLD_POD].into_iter().chain(FRESH_PODS) {
        let out = mesh.run_in(pod, "sysctl", &["-qw", SYSCTL])?;
        ensure!(
            out.status.success(),
            "sysctl {SYSCTL} in pod {pod}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = mesh.sim.exec_in_node("node2", "sysctl", ["-qw", SYSCTL])?;
    ensure!(
        out.status.success(),
        "sysctl {SYSCTL} on node2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn check_conn_rate(v: &Value, addr: &str) -> Result<()> {
    ensure!(
        v["errors"] == 0 && v["connections"].as_u64().is_some_and(|n| n > 0),
        "conn-rate to {addr} failed: {v}"
    );
    Ok(())
}

/// A run that took the wrong path would make the comparison meaningless, so it is an error:
/// direct runs without agents, mesh runs through node1's agent and a tunnel stream.
fn check_path(scenario: Scenario, before: Option<Counters>, after: Option<Counters>) -> Result<()> {
    match (scenario, before, after) {
        (Scenario::Direct, None, None) => Ok(()),
        (Scenario::Mesh, Some(b), Some(a)) => {
            ensure!(
                a.accepted > b.accepted,
                "mesh run did not go through node1's agent"
            );
            ensure!(
                a.streams > b.streams,
                "mesh run went through node1's agent but not through the tunnel"
            );
            Ok(())
        }
        _ => bail!("agents in the wrong state for the {scenario} scenario"),
    }
}

struct Row {
    metric: &'static Metric,
    direct: Option<f64>,
    mesh: Option<f64>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        Some(self.mesh? / self.direct?)
    }

    fn met(&self) -> Option<bool> {
        Some(self.metric.goal?.met(self.ratio()?))
    }
}

/// One row per metric that has samples, in `METRICS` order.
///
/// Two mesh values are derived from medians rather than sampled: `session_setup` is the median
/// first connection on a new session minus the median pooled connection (a difference per run
/// would subtract two single noisy numbers), and `tls_handshake` is 1 / `session_setup`.
fn rows(samples: &Samples) -> Vec<Row> {
    let median_of = |name, scenario| samples.get(&(name, scenario)).map(|v| median(v));
    let setup = median_of("first_conn_new_session", Scenario::Mesh)
        .zip(median_of("conn_pooled_p50", Scenario::Mesh))
        .map(|(first, pooled)| first - pooled);
    METRICS
        .iter()
        .map(|metric| {
            let mesh = match metric.name {
                "session_setup" => setup,
                // A session that costs nothing measurable would be an infinite rate.
                "tls_handshake" => setup.filter(|us| *us > 0.0).map(|us| 1e6 / us),
                name => median_of(name, Scenario::Mesh),
            };
            Row {
                metric,
                direct: median_of(metric.name, Scenario::Direct),
                mesh,
            }
        })
        .filter(|r| r.direct.is_some() || r.mesh.is_some())
        .collect()
}

fn print_json(rows: &[Row]) {
    for r in rows {
        let line = json!({
            "suite": "mtls",
            "scenario": "mesh",
            "metric": r.metric.name,
            "unit": r.metric.unit,
            "baseline": r.metric.baseline.name(),
            "direct": r.direct.map(round3),
            "mesh": r.mesh.map(round3),
            "ratio": r.ratio().map(round3),
            "goal": r.metric.goal.map(|g| g.to_string()),
            "met": r.met(),
        });
        println!("{line}");
    }
}

fn cell(v: Option<f64>, width: usize, precision: usize) -> String {
    match v {
        Some(v) => format!("{v:>width$.precision$}"),
        None => format!("{:>width$}", "-"),
    }
}

fn table(rows: &[Row]) -> String {
    let rounds = crate::bench::rounds(ROUNDS);
    let mut out = format!(
        "mtls: client pod (node1) -> server pod (node2), median of {rounds} rounds\n\
         direct: no agents, pod IP; mesh: VIP via node1 agent -> mTLS HTTP/2 CONNECT -> node2 agent\n\
         {:<28} {:<8} {:>10} {:>10} {:>7} {:>7} {:>4}\n",
        "metric", "unit", "direct", "mesh", "ratio", "goal", "met"
    );
    for r in rows {
        let goal = r.metric.goal.map(|g| g.to_string()).unwrap_or_default();
        let met = match r.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        let name = match r.metric.baseline {
            Baseline::RustlsAlone => format!("{} (1)", r.metric.name),
            _ => r.metric.name.to_string(),
        };
        let line = format!(
            "{:<28} {:<8} {} {} {} {:>7} {:>4}",
            name,
            r.metric.unit,
            cell(r.direct, 10, 2),
            cell(r.mesh, 10, 2),
            cell(r.ratio(), 7, 3),
            goal,
            met
        );
        out += line.trim_end();
        out.push('\n');
    }
    out += "(1) direct column: rustls alone on this machine (mesh-probe tls-handshakes, one \
            handshake at a time; all_cores: one client/server pair per core); mesh column: \
            1 / session_setup\n";
    out
}

fn goals(rows: &[Row]) -> String {
    let mut out = String::from("goals (mesh / baseline):\n");
    for r in rows {
        let (Some(goal), Some(ratio), Some(met)) = (r.metric.goal, r.ratio(), r.met()) else {
            continue;
        };
        let verdict = if met { "PASS" } else { "MISS" };
        out += &format!(
            "  {:<14} ratio {ratio:.3} {goal:<7} {verdict}\n",
            r.metric.name
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_depend_on_direction() {
        assert!(RR_GOAL.met(3.0));
        assert!(!RR_GOAL.met(3.01));
        assert!(BULK_GOAL.met(0.35));
        assert!(!BULK_GOAL.met(0.34));
        assert!(HANDSHAKE_GOAL.met(0.5));
        assert!(!HANDSHAKE_GOAL.met(0.49));
    }

    #[test]
    fn wrong_path_is_an_error() {
        let c = |accepted, streams| {
            Some(Counters {
                accepted,
                streams,
                sessions: 1,
            })
        };
        assert!(check_path(Scenario::Direct, None, None).is_ok());
        assert!(check_path(Scenario::Mesh, c(1, 1), c(2, 2)).is_ok());
        assert!(check_path(Scenario::Mesh, c(1, 1), c(1, 1)).is_err());
        assert!(check_path(Scenario::Mesh, c(1, 1), c(2, 1)).is_err());
        assert!(check_path(Scenario::Direct, c(1, 1), c(1, 1)).is_err());
    }

    #[test]
    fn rows_without_a_baseline_have_no_ratio() {
        let mut samples = Samples::new();
        samples.insert(("bulk", Scenario::Direct), vec![10.0, 9.0, 11.0]);
        samples.insert(("bulk", Scenario::Mesh), vec![3.0, 4.0, 5.0]);
        samples.insert(("agent_cpu_per_gb", Scenario::Mesh), vec![2.0]);
        let rows = rows(&samples);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ratio(), Some(0.4));
        assert_eq!(rows[0].met(), Some(true));
        assert_eq!((rows[1].ratio(), rows[1].met()), (None, None));
        assert!(table(&rows).contains("agent_cpu_per_gb"));
    }

    #[test]
    fn handshake_rate_is_derived_from_medians() {
        let mut samples = Samples::new();
        samples.insert(
            ("first_conn_new_session", Scenario::Mesh),
            vec![900.0, 1500.0, 1200.0],
        );
        samples.insert(
            ("conn_pooled_p50", Scenario::Mesh),
            vec![200.0, 250.0, 300.0],
        );
        samples.insert(("tls_handshake", Scenario::Direct), vec![2000.0]);
        let rows = rows(&samples);
        let row = |name| rows.iter().find(|r| r.metric.name == name).unwrap();
        assert_eq!(row("session_setup").mesh, Some(950.0));
        let hs = row("tls_handshake");
        assert_eq!(hs.direct, Some(2000.0));
        assert!((hs.mesh.unwrap() - 1e6 / 950.0).abs() < 1e-9);
        assert_eq!(hs.met(), Some(true));
    }
}
