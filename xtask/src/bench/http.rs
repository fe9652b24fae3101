//! The `http` suite: what the mesh's L7 path costs HTTP requests, HTTP/1.1 and h2c.
//!
//! Client pod "client" on node1, server pod "server" on node2 running `mesh-probe http-backend`
//! (HTTP/1.1 and h2c on one port). The client is h2load. Scenarios:
//! - direct: no agents, so no eBPF program and no proxy; h2load dials the server pod IP:8080.
//!   The agents are stopped rather than told to ignore the port, because the agent treats every
//!   service endpoint as meshed (as in `bench mtls`).
//! - mesh: agents on both nodes; h2load dials a service VIP whose port declares `protocol: http`
//!   (HTTP/1.1 runs) or `protocol: http2` (h2c runs), with an HTTPRoute attached: node1's agent
//!   terminates HTTP, matches the route's `/bench` PathPrefix rule, applies its
//!   RequestHeaderModifier, picks the backend of the rule's backendRef and sends the request on
//!   a pooled upstream connection riding the mTLS tunnel (HTTP/2 CONNECT) to node2's agent,
//!   which connects to the pod. Requests outside the rule's paths get 404 from the agent, so
//!   200s prove the rule served them; every mesh run also checks node1's `/stats` (proxy,
//!   tunnel, and the `http` section: the L7 request count covers h2load's, no local replies).
//!
//! Tests, for each protocol:
//! - saturation: h2load as fast as it can for `DURATION` s after `WARM_UP` s of warm-up
//!   (connections are opened during the warm-up), HTTP/1.1 with `H1_SAT_CLIENTS` connections,
//!   h2c with `H2_SAT_CLIENTS` connections x `H2_SAT_STREAMS` concurrent streams. Reports
//!   requests/s (goal: mesh / direct >= 0.5) and latency p50/p99.
//! - fixed rate: `RATE_CLIENTS` connections of `RATE_PER_CLIENT` requests/s each, a rate both
//!   scenarios sustain, so latency is not queueing behind a saturated path. Reports the rate
//!   achieved and latency p50/p99.
//!
//! Latency percentiles come from h2load's `--log-file` (one line per request: start, status,
//! microseconds until the end of the response); h2load's own summary has no percentiles.
//!
//! agent_cpu_per_req: user + system CPU of both agents (their cgroups' `cpu.stat`, as in
//! `bench mtls`) during the mesh saturation run, divided by the requests node1's L7 proxy
//! received meanwhile (the `http.requests` delta: both cover the warm-up too). Goal: <= 200 µs.
//! agent_cpu_vs_direct: the same CPU per request over the direct run's wall time per request
//! (1 / its requests per second), a ratio that does not move with the machine's speed.
//!
//! Every test of every round runs direct and then mesh back to back, the agents freshly started
//! for mesh, so both see the machine's momentary load; each number is the median of `ROUNDS`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

pub(super) use mesh_tests::h2load::counts;

use anyhow::{Context, Result, bail, ensure};

use super::agents::BenchAgents;
use mesh_tests::mesh::{Mesh, MeshSpec, ServiceSpec};
use mesh_tests::sim::Proc;
use serde_json::{Value, json};

use super::{median, round3};

mod telemetry;
pub use telemetry::run as run_telemetry;

/// Rounds unless `--rounds` says otherwise (see `bench::rounds`).
const ROUNDS: usize = 3;
/// h2load's measured duration and warm-up, in seconds.
const DURATION: &str = "5";
const WARM_UP: &str = "1";
const H1_SAT_CLIENTS: u32 = 16;
const H2_SAT_CLIENTS: u32 = 4;
const H2_SAT_STREAMS: u32 = 16;
const RATE_CLIENTS: u32 = 4;
const RATE_PER_CLIENT: u32 = 500;
/// A fixed-rate run below this share of the asked rate did not sustain it: its latency is
/// that of a saturated path (reported, with a warning).
const RATE_SUSTAINED: f64 = 0.9;
/// Pause after starting or stopping the agents (see `bench mtls`).
const SETTLE: Duration = Duration::from_secs(1);

const BACKEND_PORT: u16 = 8080;
const H1_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 50), 80);
const H2_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 51), 80);
/// The path h2load requests: the route's `/bench` rule serves it (the backend answers 200).
const BENCH_PATH: &str = "/bench";
/// Header the route's rule sets; checked once through the `/echo` rule.
const BENCH_HEADER: &str = "x-mesh-bench";

const SAT_GOAL: Goal = Goal::ratio_at_least(0.5);
const CPU_GOAL: Goal = Goal::mesh_at_most(200.0);

/// Both HTTP services, each with its own route: `/bench` (what h2load requests) and `/echo`
/// (the setup check) rules, both setting `BENCH_HEADER`; any other path is a 404 from the agent.
const ROUTES_YAML: &str = r#"
http_routes:
  - name: bench-h1
    spec:
      parentRefs: [{name: web, port: 80}]
      rules:
        - matches: [{path: {type: PathPrefix, value: /bench}}, {path: {type: PathPrefix, value: /echo}}]
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: x-mesh-bench, value: "1"}]}
          backendRefs: [{name: web, port: 80}]
  - name: bench-h2
    spec:
      parentRefs: [{name: web-h2, port: 80}]
      rules:
        - matches: [{path: {type: PathPrefix, value: /bench}}, {path: {type: PathPrefix, value: /echo}}]
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: x-mesh-bench, value: "1"}]}
          backendRefs: [{name: web-h2, port: 80}]
"#;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2c,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2c => "h2c",
        }
    }

    /// What h2load's "Application protocol:" line says.
    fn alpn(self) -> &'static str {
        match self {
            Proto::H1 => "http/1.1",
            Proto::H2c => "h2c",
        }
    }

    fn vip(self) -> SocketAddrV4 {
        match self {
            Proto::H1 => H1_VIP,
            Proto::H2c => H2_VIP,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    Saturation,
    FixedRate,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Saturation => "sat",
            Load::FixedRate => "rate",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Test {
    proto: Proto,
    load: Load,
}

const TESTS: [Test; 4] = [
    Test {
        proto: Proto::H1,
        load: Load::Saturation,
    },
    Test {
        proto: Proto::H1,
        load: Load::FixedRate,
    },
    Test {
        proto: Proto::H2c,
        load: Load::Saturation,
    },
    Test {
        proto: Proto::H2c,
        load: Load::FixedRate,
    },
];

impl Test {
    fn metric(self, what: &str) -> String {
        format!("{}_{}_{what}", self.proto.name(), self.load.name())
    }

    /// h2load's arguments, without the log file and URL.
    fn h2load_args(self) -> Vec<String> {
        let mut args: Vec<String> = vec!["-D".into(), DURATION.into()];
        args.extend(["--warm-up-time".into(), WARM_UP.into()]);
        if self.proto == Proto::H1 {
            args.push("--h1".into());
        }
        match (self.proto, self.load) {
            (Proto::H1, Load::Saturation) => args.extend(["-c".into(), H1_SAT_CLIENTS.to_string()]),
            (Proto::H2c, Load::Saturation) => args.extend([
                "-c".into(),
                H2_SAT_CLIENTS.to_string(),
                "-m".into(),
                H2_SAT_STREAMS.to_string(),
            ]),
            (_, Load::FixedRate) => args.extend([
                "-c".into(),
                RATE_CLIENTS.to_string(),
                "--rps".into(),
                RATE_PER_CLIENT.to_string(),
            ]),
        }
        args
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load = match self.load {
            Load::Saturation => "saturation",
            Load::FixedRate => "fixed rate",
        };
        f.pad(&format!("{} {load}", self.proto.name()))
    }
}

/// A goal on the mesh / direct ratio, or on the mesh value itself.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Goal {
    at_most: bool,
    limit: f64,
    on_ratio: bool,
}

impl Goal {
    const fn ratio_at_least(limit: f64) -> Goal {
        Goal {
            at_most: false,
            limit,
            on_ratio: true,
        }
    }

    const fn mesh_at_most(limit: f64) -> Goal {
        Goal {
            at_most: true,
            limit,
            on_ratio: false,
        }
    }

    fn met(self, value: f64) -> bool {
        if self.at_most {
            value <= self.limit
        } else {
            value >= self.limit
        }
    }

    /// "ratio" or "mesh": what the goal applies to.
    fn on(self) -> &'static str {
        if self.on_ratio { "ratio" } else { "mesh" }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.at_most { "<=" } else { ">=" };
        let prefix = if self.on_ratio { "" } else { "mesh " };
        f.pad(&format!("{prefix}{op} {}", self.limit))
    }
}

struct Metric {
    name: String,
    unit: &'static str,
    /// Mesh only: nothing to compare with.
    mesh_only: bool,
    goal: Option<Goal>,
}

/// Every row, in table order.
fn metrics() -> Vec<Metric> {
    let m = |name: String, unit, mesh_only, goal| Metric {
        name,
        unit,
        mesh_only,
        goal,
    };
    let mut out = Vec::new();
    for test in TESTS {
        let (rps_goal, rps_unit) = match test.load {
            Load::Saturation => (Some(SAT_GOAL), "req/s"),
            Load::FixedRate => (None, "req/s"),
        };
        out.push(m(test.metric("rps"), rps_unit, false, rps_goal));
        out.push(m(test.metric("p50"), "us", false, None));
        out.push(m(test.metric("p99"), "us", false, None));
        if test.load == Load::Saturation {
            out.push(m(test.metric("requests"), "count", false, None));
            out.push(m(test.metric("l7_requests"), "count", true, None));
            out.push(m(
                format!("{}_agent_cpu_per_req", test.proto.name()),
                "us",
                true,
                Some(CPU_GOAL),
            ));
            out.push(m(cpu_vs_direct(test.proto), "cpu-us", false, None));
        }
    }
    out
}

/// The agents' CPU per request measured against the same round's direct run: mesh is the
/// agents' CPU µs per request, direct the wall µs per request of the direct saturation run
/// (1 / its requests per second). Absolute CPU times move with the machine (a VM half as
/// fast doubles them); this ratio does not, so `bench compare` gates on it.
fn cpu_vs_direct(proto: Proto) -> String {
    format!("{}_agent_cpu_vs_direct", proto.name())
}

/// Every sample of every (metric, scenario), one per round.
type Samples = BTreeMap<(String, Scenario), Vec<f64>>;

pub fn run(json: bool) -> Result<()> {
    ensure_h2load()?;
    let load_before = loadavg();
    let mut bench = Bench::setup()?;
    let samples = bench.measure()?;
    drop(bench);
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

fn ensure_h2load() -> Result<()> {
    let out = std::process::Command::new("h2load")
        .arg("--version")
        .output()
        .context("running h2load (package nghttp2-client; `cargo xtask setup` installs it)")?;
    ensure!(out.status.success(), "h2load --version failed");
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
    /// The route check ran once.
    routes_checked: bool,
    _server: Proc,
}

/// node1's counters that say which path a run took.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counters {
    accepted: u64,
    streams: u64,
    requests: u64,
    responses_2xx: u64,
    local_replies: u64,
}

/// What one h2load run measured.
#[derive(Debug, PartialEq)]
struct H2loadRun {
    /// Requests done in the measured period.
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Bench {
    fn setup() -> Result<Bench> {
        eprintln!("http bench: setting up node1 (client pod) and node2 (http-backend pod)");
        let (mesh, server) = super::http_client_and_backend(
            "bench-http",
            crate::bench::release_binaries()?,
            BACKEND_PORT,
        )?;
        let service = |name, vip: SocketAddrV4, protocol| {
            ServiceSpec::new(name, *vip.ip(), vip.port(), BACKEND_PORT, &["server"])
                .protocol(protocol)
        };
        let spec = MeshSpec {
            services: vec![
                service("web", H1_VIP, "http"),
                service("web-h2", H2_VIP, "http2"),
            ],
            routes_yaml: Some(ROUTES_YAML.to_string()),
            ..MeshSpec::default()
        };
        Ok(Bench {
            mesh,
            agents: BenchAgents::new(spec, SETTLE),
            routes_checked: false,
            _server: server,
        })
    }

    /// One run of `scenario` for `test` (the agents started with the spec's telemetry for
    /// mesh), its values echoed on stderr, a failure with the agents' logs.
    fn sample(
        &mut self,
        scenario: Scenario,
        test: Test,
        round: usize,
    ) -> Result<Vec<(String, f64)>> {
        let values = self
            .run_scenario(scenario, test)
            .with_context(|| format!("{test} {scenario}, round {round}"));
        let values = values.map_err(|e| {
            eprintln!();
            self.agents.with_logs(&self.mesh, e)
        })?;
        for (metric, value) in &values {
            eprint!(" {metric}={value:.2}");
        }
        eprintln!();
        Ok(values)
    }

    fn measure(&mut self) -> Result<Samples> {
        let mut samples = Samples::new();
        let rounds = crate::bench::rounds(ROUNDS);
        for round in 1..=rounds {
            for test in TESTS {
                for scenario in SCENARIOS {
                    eprint!("round {round}/{rounds}: {test:<16} {scenario:<7}");
                    for (metric, value) in self.sample(scenario, test, round)? {
                        samples.entry((metric, scenario)).or_default().push(value);
                    }
                }
            }
        }
        Ok(samples)
    }

    fn run_scenario(&mut self, scenario: Scenario, test: Test) -> Result<Vec<(String, f64)>> {
        self.agents
            .set(&mut self.mesh, scenario == Scenario::Mesh)?;
        if scenario == Scenario::Mesh && !self.routes_checked {
            self.check_routes()?;
            self.routes_checked = true;
        }
        let before = self.counters()?;
        let cpu_before = self.agents.cpu_seconds(&self.mesh)?;
        let url = format!("http://{}{BENCH_PATH}", self.target(scenario, test.proto));
        let run = self.h2load(test, &url)?;
        let cpu_after = self.agents.cpu_seconds(&self.mesh)?;
        let after = self.counters()?;
        check_path(before, after, run.requests).map_err(|e| {
            // What the agents said about the run (statuses, timeouts, ejections, tunnel
            // errors) is what tells a wrong path apart from an agent fault.
            let stats = |node: &str| {
                self.mesh
                    .admin(node, "/stats")
                    .map(|s| format!("http {} tunnel {}", s["http"], s["tunnel"]))
                    .unwrap_or_else(|e| format!("unreadable: {e:#}"))
            };
            e.context(format!(
                "node1 /stats: {}\nnode2 /stats: {}",
                stats("node1"),
                stats("node2")
            ))
        })?;

        let mut values = vec![
            (test.metric("rps"), run.rps),
            (test.metric("p50"), run.p50_us),
            (test.metric("p99"), run.p99_us),
        ];
        if test.load == Load::FixedRate {
            let asked = f64::from(RATE_CLIENTS * RATE_PER_CLIENT);
            if run.rps < RATE_SUSTAINED * asked {
                eprint!(" (warning: {:.0} of {asked} req/s asked)", run.rps);
            }
        }
        if test.load == Load::Saturation {
            values.push((test.metric("requests"), run.requests as f64));
            if scenario == Scenario::Direct && run.rps > 0.0 {
                // The same run's yardstick for the agents' CPU: the wall time a request takes
                // without them (see `cpu_vs_direct`).
                values.push((cpu_vs_direct(test.proto), 1e6 / run.rps));
            }
            if let (Some(b), Some(a), Some(cb), Some(ca)) = (before, after, cpu_before, cpu_after) {
                let l7 = a.requests - b.requests;
                values.push((test.metric("l7_requests"), l7 as f64));
                let cpu_per_req = (ca - cb) * 1e6 / l7 as f64;
                values.push((
                    format!("{}_agent_cpu_per_req", test.proto.name()),
                    cpu_per_req,
                ));
                values.push((cpu_vs_direct(test.proto), cpu_per_req));
            }
        }
        Ok(values)
    }

    fn target(&self, scenario: Scenario, proto: Proto) -> SocketAddrV4 {
        match scenario {
            Scenario::Direct => SocketAddrV4::new(self.mesh.workload("server").ip, BACKEND_PORT),
            Scenario::Mesh => proto.vip(),
        }
    }

    /// Runs h2load in the client pod; fails unless every request got a 2xx.
    fn h2load(&self, test: Test, url: &str) -> Result<H2loadRun> {
        let log = self.log_file();
        let _ = std::fs::remove_file(&log);
        let mut args = test.h2load_args();
        args.push(format!("--log-file={}", log.display()));
        args.push(url.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.mesh.run_in("client", "h2load", &args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let context = || {
            format!(
                "h2load {}: status {}\nstdout:\n{stdout}\nstderr:\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        };
        ensure!(out.status.success(), "{}", context());
        let summary = parse_summary(&stdout).with_context(context)?;
        ensure!(
            summary.protocol == test.proto.alpn(),
            "h2load spoke {} instead of {}\n{}",
            summary.protocol,
            test.proto.alpn(),
            context()
        );
        let log_text = std::fs::read_to_string(&log)
            .with_context(|| format!("reading h2load's log {}", log.display()))?;
        let mut latencies = parse_log(&log_text).with_context(context)?;
        // Streams still open when the timed run stops count as done without a status (they
        // are skipped in the log); there can be no more of them than streams in flight.
        let in_flight_at_stop = 64;
        ensure!(
            latencies.len() as u64 + in_flight_at_stop >= summary.done,
            "h2load's log has {} answered requests, its summary {} done\n{}",
            latencies.len(),
            summary.done,
            context()
        );
        latencies.sort_unstable();
        Ok(H2loadRun {
            requests: summary.done,
            rps: summary.rps,
            p50_us: percentile(&latencies, 50.0),
            p99_us: percentile(&latencies, 99.0),
        })
    }

    /// Under `logs/`, not beside the agents' config files: the agents watch that directory
    /// for config changes, and h2load's line per request there would wake both agents' file
    /// watchers for every request (measured: ~8 % of the agents' CPU in the saturation runs).
    fn log_file(&self) -> PathBuf {
        self.mesh.sim.dir().join("logs").join("h2load.log")
    }

    /// Once, through the mesh: the `/echo` rule's header modifier reached the backend, and a
    /// path no rule matches is answered by the agent with 404 NR (so the bench's 200s came
    /// from the `/bench` rule).
    fn check_routes(&self) -> Result<()> {
        for proto in [Proto::H1, Proto::H2c] {
            let flag = match proto {
                Proto::H1 => "--http1.1",
                Proto::H2c => "--http2-prior-knowledge",
            };
            let echo = self.curl(flag, &format!("http://{}/echo", proto.vip()))?;
            ensure!(
                echo.to_ascii_lowercase().contains(BENCH_HEADER),
                "{} /echo through the route: the backend did not get header {BENCH_HEADER}:\n{echo}",
                proto.name()
            );
            let miss = self.curl(flag, &format!("http://{}/unrouted", proto.vip()))?;
            ensure!(
                miss.starts_with("HTTP") && miss.contains(" 404") && miss.contains("NR"),
                "{} /unrouted: expected 404 with x-mesh-response-flags NR from the agent:\n{miss}",
                proto.name()
            );
        }
        Ok(())
    }

    /// Response head and body of one curl request from the client pod.
    fn curl(&self, flag: &str, url: &str) -> Result<String> {
        let out = self
            .mesh
            .run_in("client", "curl", &["-sS", "-i", "-m", "5", flag, url])?;
        ensure!(
            out.status.success(),
            "curl {flag} {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
            requests: get("http", "requests")?,
            responses_2xx: get("http", "responses_2xx")?,
            local_replies: get("http", "local_replies")?,
        }))
    }
}

/// A run that took the wrong path would make the comparison meaningless, so it is an error:
/// direct runs without agents; mesh runs through node1's agent, its L7 proxy (every request,
/// every one answered 2xx by the backend, none by the agent itself) and the tunnel.
fn check_path(before: Option<Counters>, after: Option<Counters>, requests: u64) -> Result<()> {
    let (b, a) = match (before, after) {
        (None, None) => return Ok(()),
        (Some(b), Some(a)) => (b, a),
        _ => bail!("the agents started or stopped during the run"),
    };
    ensure!(
        a.accepted > b.accepted,
        "mesh run did not go through node1's agent"
    );
    ensure!(
        a.streams > b.streams,
        "mesh run went through node1's agent but not through the tunnel"
    );
    let l7 = a.requests - b.requests;
    ensure!(
        l7 >= requests,
        "h2load completed {requests} requests but node1's L7 proxy received only {l7}"
    );
    let local = a.local_replies - b.local_replies;
    ensure!(local == 0, "node1's agent answered {local} requests itself");
    let ok = a.responses_2xx - b.responses_2xx;
    ensure!(
        ok >= requests,
        "h2load completed {requests} requests but node1's agent counted only {ok} 2xx"
    );
    Ok(())
}

/// The lines of h2load's summary the bench uses.
#[derive(Debug, PartialEq)]
struct Summary {
    protocol: String,
    rps: f64,
    done: u64,
}

/// Parses h2load's summary; an error if any request failed, errored, timed out or got a
/// status other than 2xx, or if none was done.
fn parse_summary(out: &str) -> Result<Summary> {
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("no {prefix:?} line in h2load's output"))
    };
    let protocol = line("Application protocol:")?.to_string();
    // "finished in 5.00s, 12345.60 req/s, 1.23MB/s"
    let rps = line("finished in")?
        .split(',')
        .find_map(|f| f.trim().strip_suffix(" req/s"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no req/s in h2load's \"finished in\" line")?;
    // "requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout"
    let requests = counts(line("requests:")?)?;
    // "status codes: 10 2xx, 0 3xx, 0 4xx, 0 5xx"
    let statuses = counts(line("status codes:")?)?;
    let get = |map: &BTreeMap<String, u64>, key: &str| {
        map.get(key)
            .copied()
            .with_context(|| format!("h2load's output has no {key:?} count"))
    };
    let done = get(&requests, "done")?;
    for bad in ["failed", "errored", "timeout"] {
        let n = get(&requests, bad)?;
        ensure!(n == 0, "h2load: {n} requests {bad}");
    }
    for bad in ["3xx", "4xx", "5xx"] {
        let n = get(&statuses, bad)?;
        ensure!(n == 0, "h2load: {n} responses {bad}");
    }
    ensure!(done > 0, "h2load completed no request");
    Ok(Summary {
        protocol,
        rps,
        done,
    })
}

/// Microseconds each request took, from h2load's `--log-file` (start time, status, duration,
/// tab-separated); an error for any request that got a status outside 2xx (-1: failed).
/// Status 0 is a stream still open when the timed run stopped (h2load counts it as done, with
/// no response yet; seen once in 530 000 requests of a direct run): it has no latency to
/// report and is skipped. Real failures also show in the summary, which is checked apart.
fn parse_log(text: &str) -> Result<Vec<u64>> {
    let mut latencies = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = l.split('\t').collect();
        let (Some(status), Some(us)) = (fields.get(1), fields.get(2)) else {
            bail!("bad h2load log line {l:?}");
        };
        let status: i32 = status
            .trim()
            .parse()
            .with_context(|| format!("bad status in h2load log line {l:?}"))?;
        if status == 0 {
            continue;
        }
        ensure!(
            (200..300).contains(&status),
            "a request got status {status} (h2load log line {l:?})"
        );
        latencies.push(
            us.trim()
                .parse()
                .with_context(|| format!("bad duration in h2load log line {l:?}"))?,
        );
    }
    Ok(latencies)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

struct Row {
    metric: Metric,
    direct: Option<f64>,
    mesh: Option<f64>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        Some(self.mesh? / self.direct?)
    }

    fn met(&self) -> Option<bool> {
        let goal = self.metric.goal?;
        let value = if goal.on_ratio {
            self.ratio()?
        } else {
            self.mesh?
        };
        Some(goal.met(value))
    }
}

/// One row per metric that has samples, in `metrics()` order.
fn rows(samples: &Samples) -> Vec<Row> {
    metrics()
        .into_iter()
        .map(|metric| {
            let median_of = |scenario| {
                samples
                    .get(&(metric.name.clone(), scenario))
                    .map(|v| median(v))
            };
            let direct = if metric.mesh_only {
                None
            } else {
                median_of(Scenario::Direct)
            };
            let mesh = median_of(Scenario::Mesh);
            Row {
                metric,
                direct,
                mesh,
            }
        })
        .filter(|r| r.direct.is_some() || r.mesh.is_some())
        .collect()
}

fn print_json(rows: &[Row]) {
    for r in rows {
        let line: Value = json!({
            "suite": "http",
            "metric": r.metric.name,
            "unit": r.metric.unit,
            "direct": r.direct.map(round3),
            "mesh": r.mesh.map(round3),
            "ratio": r.ratio().map(round3),
            "goal": r.metric.goal.map(|g| g.to_string()),
            "goal_on": r.metric.goal.map(Goal::on),
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
        "http: h2load in client pod (node1) -> http-backend pod (node2), median of {rounds} \
         rounds, {DURATION} s each after {WARM_UP} s warm-up\n\
         direct: no agents, pod IP; mesh: VIP via node1 agent (L7 route) -> mTLS HTTP/2 \
         CONNECT -> node2 agent\n\
         sat: h1 {H1_SAT_CLIENTS} connections, h2c {H2_SAT_CLIENTS} connections x \
         {H2_SAT_STREAMS} streams; rate: {RATE_CLIENTS} connections x {RATE_PER_CLIENT} req/s\n\
         {:<24} {:<6} {:>10} {:>10} {:>7} {:>12} {:>4}\n",
        "metric", "unit", "direct", "mesh", "ratio", "goal", "met"
    );
    for r in rows {
        let goal = r.metric.goal.map(|g| g.to_string()).unwrap_or_default();
        let met = match r.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        let line = format!(
            "{:<24} {:<6} {} {} {} {:>12} {:>4}",
            r.metric.name,
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
    out
}

fn goals(rows: &[Row]) -> String {
    let mut out = String::from("goals:\n");
    for r in rows {
        let (Some(goal), Some(met)) = (r.metric.goal, r.met()) else {
            continue;
        };
        let value = if goal.on_ratio { r.ratio() } else { r.mesh };
        let Some(value) = value else { continue };
        let verdict = if met { "PASS" } else { "MISS" };
        out += &format!(
            "  {:<22} {} {value:.3} {goal:<12} {verdict}\n",
            r.metric.name,
            goal.on()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H2LOAD_OUT: &str = "\
starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 1s of warm-up time and 5s of main duration for measurements.
Application protocol: h2c
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 5.00s, 9876.50 req/s, 1.10MB/s
requests: 49383 total, 49447 started, 49383 done, 49383 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 49383 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 5.50MB (5767890) total, 1.00MB (1048576) headers (space savings 90.00%), 0.50MB (524288) data
                     min         max         mean         sd        +/- sd
time for request:      101us     12.34ms      1.61ms       0.52ms    70.00%
";

    #[test]
    fn summary_is_parsed() {
        let s = parse_summary(H2LOAD_OUT).unwrap();
        assert_eq!(
            s,
            Summary {
                protocol: "h2c".to_string(),
                rps: 9876.5,
                done: 49383,
            }
        );
    }

    #[test]
    fn failures_are_errors() {
        let failed = H2LOAD_OUT.replace("0 failed, 0 errored", "3 failed, 0 errored");
        assert!(parse_summary(&failed).is_err());
        let status = H2LOAD_OUT.replace("0 4xx", "7 4xx");
        assert!(parse_summary(&status).is_err());
        assert!(parse_summary("connect: Connection refused\n").is_err());
    }

    #[test]
    fn log_gives_latencies() {
        let log = "1700000000000000\t200\t150\n1700000000000100\t200\t250\n";
        assert_eq!(parse_log(log).unwrap(), vec![150, 250]);
        assert!(parse_log("1700000000000000\t-1\t150\n").is_err());
        assert!(parse_log("1700000000000000\t404\t150\n").is_err());
        assert!(parse_log("garbage\n").is_err());
        // A stream still open when the timed run stopped has no latency.
        assert_eq!(
            parse_log("1700000000000000\t200\t150\n1700000000000001\t0\t9\n").unwrap(),
            vec![150]
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7], 99.0), 7.0);
    }

    #[test]
    fn goals_apply_to_ratio_or_mesh() {
        let row = |name: &str, direct, mesh| {
            let metric = metrics().into_iter().find(|m| m.name == name).unwrap();
            Row {
                metric,
                direct,
                mesh,
            }
        };
        assert_eq!(row("h1_sat_rps", Some(100.0), Some(50.0)).met(), Some(true));
        assert_eq!(
            row("h1_sat_rps", Some(100.0), Some(49.0)).met(),
            Some(false)
        );
        assert_eq!(
            row("h2c_agent_cpu_per_req", None, Some(200.0)).met(),
            Some(true)
        );
        assert_eq!(
            row("h2c_agent_cpu_per_req", None, Some(201.0)).met(),
            Some(false)
        );
        assert_eq!(row("h1_rate_p50", Some(1.0), Some(2.0)).met(), None);
    }

    #[test]
    fn wrong_path_is_an_error() {
        let c = |accepted, streams, requests, ok, local| {
            Some(Counters {
                accepted,
                streams,
                requests,
                responses_2xx: ok,
                local_replies: local,
            })
        };
        assert!(check_path(None, None, 10).is_ok());
        assert!(check_path(c(1, 1, 0, 0, 0), c(2, 2, 12, 12, 0), 10).is_ok());
        assert!(check_path(c(1, 1, 0, 0, 0), c(1, 2, 12, 12, 0), 10).is_err());
        assert!(check_path(c(1, 1, 0, 0, 0), c(2, 1, 12, 12, 0), 10).is_err());
        assert!(check_path(c(1, 1, 0, 0, 0), c(2, 2, 9, 9, 0), 10).is_err());
        assert!(check_path(c(1, 1, 0, 0, 0), c(2, 2, 12, 12, 1), 10).is_err());
        assert!(check_path(None, c(2, 2, 12, 12, 0), 10).is_err());
    }

    #[test]
    fn table_has_every_row() {
        let mut samples = Samples::new();
        for m in metrics() {
            samples.insert((m.name.clone(), Scenario::Mesh), vec![1.0, 2.0, 3.0]);
            samples.insert((m.name.clone(), Scenario::Direct), vec![2.0]);
        }
        let rows = rows(&samples);
        assert_eq!(rows.len(), metrics().len());
        let t = table(&rows);
        assert!(t.contains("h1_agent_cpu_per_req"));
        assert!(t.contains("mesh <= 200"));
        // Mesh-only rows have no direct value even if one was sampled.
        let cpu = rows
            .iter()
            .find(|r| r.metric.name == "h1_agent_cpu_per_req")
            .unwrap();
        assert_eq!((cpu.direct, cpu.ratio()), (None, None));
    }
}
