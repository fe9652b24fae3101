//! A small mesh on simulated nodes: two nodes, workloads, services, and one real mesh-agent per
//! node. Shared by the end-to-end tests, `cargo xtask demo` and `cargo xtask bench`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::sim::{Placement, Proc, Sim, WorkloadHandle};

/// Paths of the binaries the mesh runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub agent: PathBuf,
    pub probe: PathBuf,
}

impl Binaries {
    /// The agent comes from MESH_AGENT_BIN, else from the workspace target directory (release
    /// first); the probe path is given by the caller (tests use CARGO_BIN_EXE_mesh-probe).
    pub fn locate(probe: impl Into<PathBuf>) -> Result<Binaries> {
        let probe = probe.into();
        if let Ok(agent) = std::env::var("MESH_AGENT_BIN") {
            return Ok(Binaries {
                agent: agent.into(),
                probe,
            });
        }
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        for profile in ["release", "debug"] {
            let agent = target.join(profile).join("mesh-agent");
            if agent.exists() {
                return Ok(Binaries { agent, probe });
            }
        }
        bail!(
            "mesh-agent binary not found: build it (cargo build --release -p mesh-agent) or set \
             MESH_AGENT_BIN"
        )
    }
}

/// A meshed service: VIP:port forwarded to `target_port` of the named workloads. Build it with
/// [`ServiceSpec::new`] and the L7 setters; the fields stay public for tests that tweak them.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub target_port: u16,
    pub endpoints: Vec<String>,
    /// The port's `protocol:` (tcp | http | http2 | grpc); absent: the agent detects it (or
    /// follows the port name's Istio convention).
    pub protocol: Option<String>,
    /// The port's `name:` (Istio convention: "http-web" means http when `protocol` is absent).
    pub port_name: Option<String>,
    /// `load_balancer:` (round_robin | least_request).
    pub load_balancer: Option<String>,
    /// Rendered under the service as `outlier_detection:`: a flow mapping
    /// (`{consecutive_5xx_errors: 3}`) or block lines (re-indented under the key).
    pub outlier_yaml: Option<String>,
    /// Endpoints by address only (no `node:`, no `workload:`): the client's agent relays to
    /// them in plain TCP, as to endpoints outside the mesh (no tunnel).
    pub address_only: bool,
}

impl ServiceSpec {
    /// A service on `vip:port` forwarded to `target_port` of the named workloads, with no L7
    /// settings (the agent's defaults).
    pub fn new(
        name: &str,
        vip: Ipv4Addr,
        port: u16,
        target_port: u16,
        endpoints: &[&str],
    ) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            vip,
            port,
            target_port,
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            protocol: None,
            port_name: None,
            load_balancer: None,
            outlier_yaml: None,
            address_only: false,
        }
    }

    /// Endpoints rendered by address only (see `address_only`).
    pub fn address_only(mut self) -> ServiceSpec {
        self.address_only = true;
        self
    }

    pub fn protocol(mut self, protocol: &str) -> ServiceSpec {
        self.protocol = Some(protocol.to_string());
        self
    }

    pub fn port_name(mut self, name: &str) -> ServiceSpec {
        self.port_name = Some(name.to_string());
        self
    }

    pub fn load_balancer(mut self, lb: &str) -> ServiceSpec {
        self.load_balancer = Some(lb.to_string());
        self
    }

    pub fn outlier(mut self, yaml: &str) -> ServiceSpec {
        self.outlier_yaml = Some(yaml.to_string());
        self
    }
}

/// L4 allow rules of a workload: (CIDR, ports; empty = any).
#[derive(Debug, Clone, Default)]
pub struct PolicySpec {
    pub egress: Option<Vec<(String, Vec<u16>)>>,
    pub ingress: Option<Vec<(String, Vec<u16>)>>,
}

/// Identity settings of a workload: service account (default "default"), labels, STRICT mode.
#[derive(Debug, Clone, Default)]
pub struct IdentitySpec {
    pub service_account: Option<String>,
    pub labels: Vec<(String, String)>,
    pub strict: bool,
}

/// What the agents of a mesh are told. `fast_path` defaults to false, like the agent's own
/// default (see the README on the sockmap EAGAIN quirk).
#[derive(Debug, Clone, Default)]
pub struct MeshSpec {
    pub services: Vec<ServiceSpec>,
    pub policies: BTreeMap<String, PolicySpec>,
    pub fast_path: bool,
    /// Per workload name.
    pub identities: BTreeMap<String, IdentitySpec>,
    /// `identity.cert_lifetime`, e.g. "6s"; the agent's default (24h) when None.
    pub cert_lifetime: Option<String>,
    /// YAML list items placed under the top-level `authorization:` key, indented by 2.
    pub authorization_yaml: Option<String>,
    /// Replaces the whole `identity:` section (for CA error tests); indented by 2.
    pub identity_yaml: Option<String>,
    /// Top-level YAML appended to every node's config (`http:`, `http_routes:`,
    /// `grpc_routes:` sections); common indentation is removed, otherwise verbatim.
    pub routes_yaml: Option<String>,
    /// The top-level `telemetry:` section: a flow mapping (`{istio_metrics: false}`) or block
    /// lines (re-indented under the key); absent: the agent's defaults.
    pub telemetry_yaml: Option<String>,
    /// Workloads left out of the config, as if their pods had gone (they still run).
    pub absent_workloads: Vec<String>,
    /// `node.fail_mode` of every node ("closed", "open"); absent: the agent's default.
    pub fail_mode: Option<String>,
    /// `node.drain_timeout` of every node (e.g. "20s"); absent: the agent's default.
    pub drain_timeout: Option<String>,
}

/// Waits until the agent `proc` of `node` logs that it is ready; fails when it exits first or
/// after `limit`, with its logs and `more` (extra context for the failure).
pub fn wait_until_ready(
    proc: &mut Proc,
    node: &str,
    limit: Duration,
    more: impl Fn() -> String,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if proc.stderr().contains("mesh-agent ready") {
            return Ok(());
        }
        if let Some(status) = proc.try_wait()? {
            bail!("agent on {node} exited with {status}:\n{}", proc.logs());
        }
        if Instant::now() > deadline {
            bail!(
                "agent on {node} not ready after {} s:\n{}{}",
                limit.as_secs(),
                proc.logs(),
                more()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for an agent replaced by a handover to drain and exit; its logs once it exited
/// cleanly, an error when it failed or still runs after `limit`.
pub fn wait_replaced_exit(old: &mut Proc, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = old.try_wait()? {
            let logs = old.logs();
            anyhow::ensure!(
                status.success(),
                "a replaced agent exited with {status}:\n{logs}"
            );
            return Ok(logs);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "a replaced agent still runs after {} s:\n{}",
            limit.as_secs(),
            old.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines of `text` that are JSON values (a probe's or agent's JSON output), parsed.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Simulated nodes share one kernel; running several meshes at once on a 2-core machine only
/// makes them slower and noisier, so they take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Mesh {
    agents: BTreeMap<String, Proc>,
    pub bins: Binaries,
    pub sim: Sim,
    /// `node.bpffs` of agents started from now on, when not the default /sys/fs/bpf/<prefix>.
    bpffs: Option<PathBuf>,
    _turn: MutexGuard<'static, ()>,
}

impl Mesh {
    /// Two nodes ("node1", "node2") and no workloads yet.
    pub fn new(tag: &str, bins: Binaries) -> Result<Mesh> {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        crate::sim::require_privileges()?;
        let mut sim = Sim::new(tag)?;
        sim.add_node("node1")?;
        sim.add_node("node2")?;
        Ok(Mesh {
            agents: BTreeMap::new(),
            bins,
            sim,
            bpffs: None,
            _turn: turn,
        })
    }

    pub fn pin_root(&self) -> PathBuf {
        self.bpffs
            .clone()
            .unwrap_or_else(|| Path::new("/sys/fs/bpf").join(self.sim.prefix()))
    }

    /// Agents started from now on pin under `dir` (`node.bpffs`) instead of a directory of
    /// /sys/fs/bpf: where no bpffs is mounted, the agent mounts one. The mesh unmounts it
    /// when dropped.
    pub fn use_bpffs(&mut self, dir: PathBuf) {
        self.bpffs = Some(dir);
    }

    pub fn workload(&self, name: &str) -> &WorkloadHandle {
        self.sim.workload(name)
    }

    /// The CA every agent of this mesh shares: created by the first agent that starts, in
    /// the sim's directory, like an operator copying one CA to every bare host.
    pub fn ca_dir(&self) -> PathBuf {
        self.sim.dir().join("ca")
    }

    /// The agent config of one node: its workloads and every service of the cluster.
    pub fn render_config(&self, node: &str, spec: &MeshSpec) -> String {
        let n = self.sim.node(node);
        let mut y = String::new();
        let _ = writeln!(y, "node:");
        let _ = writeln!(y, "  name: {node}");
        let _ = writeln!(y, "  cgroup: {}", n.cgroup.display());
        let _ = writeln!(y, "  bpffs: {}", self.pin_root().display());
        let _ = writeln!(y, "  fast_path: {}", spec.fast_path);
        let _ = writeln!(y, "  address: {}", n.ip);
        if let Some(mode) = &spec.fail_mode {
            let _ = writeln!(y, "  fail_mode: {mode}");
        }
        // Each mesh its own handover sockets: a leftover of another test is never found.
        let _ = writeln!(y, "  state_dir: {}", self.state_dir().display());
        if let Some(timeout) = &spec.drain_timeout {
            let _ = writeln!(y, "  drain_timeout: {timeout}");
        }
        let _ = writeln!(y, "nodes:");
        for other in self.sim.nodes().iter().filter(|o| o.name != node) {
            let _ = writeln!(y, "  - name: {}", other.name);
            let _ = writeln!(y, "    address: {}", other.ip);
        }
        let _ = writeln!(y, "identity:");
        match &spec.identity_yaml {
            Some(custom) => y.push_str(custom),
            None => {
                let _ = writeln!(y, "  ca:");
                let _ = writeln!(y, "    dir: {}", self.ca_dir().display());
                if let Some(lifetime) = &spec.cert_lifetime {
                    let _ = writeln!(y, "  cert_lifetime: {lifetime}");
                }
            }
        }
        if let Some(authz) = &spec.authorization_yaml {
            let _ = writeln!(y, "authorization:");
            y.push_str(authz);
            if !authz.ends_with('\n') {
                y.push('\n');
            }
        }
        let _ = writeln!(y, "workloads:");
        for w in self
            .sim
            .workloads()
            .iter()
            .filter(|w| w.node == node && !spec.absent_workloads.contains(&w.name))
        {
            let _ = writeln!(y, "  - name: {}", w.name);
            let _ = writeln!(y, "    cgroup: {}", w.cgroup.display());
            if w.is_pod {
                let _ = writeln!(y, "    netns: {}", w.netns_path.display());
            }
            let _ = writeln!(y, "    ips: [{}]", w.ip);
            if let Some(id) = spec.identities.get(&w.name) {
                if let Some(sa) = &id.service_account {
                    let _ = writeln!(y, "    service_account: {sa}");
                }
                if !id.labels.is_empty() {
                    let labels: Vec<String> =
                        id.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                    let _ = writeln!(y, "    labels: {{{}}}", labels.join(", "));
                }
                if id.strict {
                    let _ = writeln!(y, "    mode: STRICT");
                }
            }
            if let Some(policy) = spec.policies.get(&w.name) {
                for (key, rules, field) in [
                    ("egress", &policy.egress, "to"),
                    ("ingress", &policy.ingress, "from"),
                ] {
                    if let Some(rules) = rules {
                        if rules.is_empty() {
                            let _ = writeln!(y, "    {key}: []");
                            continue;
                        }
                        let _ = writeln!(y, "    {key}:");
                        for (cidr, ports) in rules {
                            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                            let _ = writeln!(y, "      - {field}: {cidr}");
                            let _ = writeln!(y, "        ports: [{}]", ports.join(", "));
                        }
                    }
                }
            }
        }
        let _ = writeln!(y, "services:");
        for s in &spec.services {
            let _ = writeln!(y, "  - name: {}", s.name);
            let _ = writeln!(y, "    vips: [{}]", s.vip);
            let _ = writeln!(y, "    ports:");
            let _ = writeln!(y, "      - port: {}", s.port);
            let _ = writeln!(y, "        target_port: {}", s.target_port);
            if let Some(name) = &s.port_name {
                let _ = writeln!(y, "        name: {name}");
            }
            if let Some(protocol) = &s.protocol {
                let _ = writeln!(y, "        protocol: {protocol}");
            }
            if let Some(lb) = &s.load_balancer {
                let _ = writeln!(y, "    load_balancer: {lb}");
            }
            if let Some(outlier) = &s.outlier_yaml {
                let block = indent_block(outlier, 6);
                if block.lines().count() == 1 {
                    let _ = writeln!(y, "    outlier_detection: {}", block.trim());
                } else {
                    let _ = writeln!(y, "    outlier_detection:");
                    y.push_str(&block);
                }
            }
            let _ = writeln!(y, "    endpoints:");
            for e in &s.endpoints {
                let w = self.sim.workload(e);
                let _ = writeln!(y, "      - ip: {}", w.ip);
                if !s.address_only {
                    let _ = writeln!(y, "        node: {}", w.node);
                    let _ = writeln!(y, "        workload: {}", w.name);
                }
            }
        }
        if let Some(routes) = &spec.routes_yaml {
            y.push_str(&indent_block(routes, 0));
        }
        if let Some(telemetry) = &spec.telemetry_yaml {
            let block = indent_block(telemetry, 2);
            if block.lines().count() == 1 {
                let _ = writeln!(y, "telemetry: {}", block.trim());
            } else {
                let _ = writeln!(y, "telemetry:");
                y.push_str(&block);
            }
        }
        y
    }

    /// Writes the node's config and starts its agent; returns once it reports ready.
    pub fn start_agent(&mut self, node: &str, spec: &MeshSpec) -> Result<()> {
        let proc = self.spawn_agent(node, spec)?;
        self.agents.insert(node.to_string(), proc);
        Ok(())
    }

    /// Starts the node's agent with `spec` and expects it to fail at start; returns its exit
    /// status and logs (for "bad input gives a clear error" tests).
    pub fn start_agent_expecting_failure(
        &mut self,
        node: &str,
        spec: &MeshSpec,
    ) -> Result<(ExitStatus, String)> {
        let path = self.sim.dir().join(format!("{node}.yaml"));
        std::fs::write(&path, self.render_config(node, spec))
            .with_context(|| format!("write {}", path.display()))?;
        let placement = self.sim.node(node).agent_placement();
        let path = path.display().to_string();
        let agent = self.bins.agent.clone();
        let mut proc = self
            .sim
            .spawn(&placement, &agent, ["run", "--config", path.as_str()])?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = proc.try_wait()? {
                return Ok((status, proc.logs()));
            }
            if proc.stderr().contains("mesh-agent ready") || Instant::now() > deadline {
                let logs = proc.logs();
                let _ = proc.kill();
                bail!("agent on {node} started although it should have failed:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `node.state_dir` of this mesh's agents.
    pub fn state_dir(&self) -> PathBuf {
        self.sim.dir().join("state")
    }

    /// Starts a second agent on `node` (the same binary, or `binary`: an upgrade) while the
    /// first runs; returns the old one's process once the new one is ready. The old agent
    /// drains and exits by itself.
    pub fn take_over(
        &mut self,
        node: &str,
        spec: &MeshSpec,
        binary: Option<&Path>,
    ) -> Result<Proc> {
        if !self.agents.contains_key(node) {
            bail!("no agent running on {node} to take over from");
        }
        let mut proc = self.spawn_agent_binary(node, spec, binary.map(Path::to_path_buf))?;
        // Ready first, then it tells the old agent to step back: wait for that word.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !proc.stderr().contains("took the node over")
            && !proc.stderr().contains("did not confirm the handover")
        {
            if let Some(status) = proc.try_wait()? {
                bail!("new agent on {node} exited with {status}:\n{}", proc.logs());
            }
            if Instant::now() > deadline {
                bail!("new agent on {node} never took over:\n{}", proc.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let old = self
            .agents
            .insert(node.to_string(), proc)
            .with_context(|| format!("no agent running on {node}"))?;
        Ok(old)
    }

    fn spawn_agent(&mut self, node: &str, spec: &MeshSpec) -> Result<Proc> {
        self.spawn_agent_binary(node, spec, None)
    }

    fn spawn_agent_binary(
        &mut self,
        node: &str,
        spec: &MeshSpec,
        binary: Option<PathBuf>,
    ) -> Result<Proc> {
        // Tests want the per-connection debug lines; benchmarks set MESH_TEST_AGENT_LOG=info
        // so that logging does not weigh on what they measure.
        let agent_log = std::env::var("MESH_TEST_AGENT_LOG")
            .unwrap_or_else(|_| "info,mesh_agent=debug".to_string());
        let path = self.sim.dir().join(format!("{node}.yaml"));
        std::fs::write(&path, self.render_config(node, spec))
            .with_context(|| format!("write {}", path.display()))?;
        let placement = self.sim.node(node).agent_placement();
        let path = path.display().to_string();
        let agent = binary.unwrap_or_else(|| self.bins.agent.clone());
        let mut proc = self.sim.spawn(
            &placement,
            &agent,
            [
                "--log",
                agent_log.as_str(),
                "run",
                "--config",
                path.as_str(),
            ],
        )?;
        wait_until_ready(&mut proc, node, Duration::from_secs(20), String::new)?;
        Ok(proc)
    }

    /// SIGTERM to the node's agent; returns its exit status.
    pub fn stop_agent(&mut self, node: &str) -> Result<ExitStatus> {
        let mut proc = self
            .agents
            .remove(node)
            .with_context(|| format!("no agent running on {node}"))?;
        proc.kill()
    }

    /// kill -9 of the node's agent (a crash); returns its exit status.
    pub fn kill_agent(&mut self, node: &str) -> Result<ExitStatus> {
        let mut proc = self
            .agents
            .remove(node)
            .with_context(|| format!("no agent running on {node}"))?;
        proc.kill_hard()
    }

    /// Where the node's agent pins its maps and links.
    pub fn pin_dir(&self, node: &str) -> PathBuf {
        self.pin_root().join(node)
    }

    /// `mesh-agent uninstall` for the node (its agent stopped): detaches its programs for
    /// good. Fails with the command's output when it fails.
    pub fn uninstall(&self, node: &str) -> Result<String> {
        let out = std::process::Command::new(&self.bins.agent)
            .arg("uninstall")
            .arg("--pin-dir")
            .arg(self.pin_dir(node))
            .output()
            .context("run mesh-agent uninstall")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!(
                "mesh-agent uninstall on {node} failed ({}): {text}",
                out.status
            );
        }
        Ok(text)
    }

    pub fn agent_logs(&self, node: &str) -> String {
        self.agents.get(node).map(Proc::logs).unwrap_or_default()
    }

    /// The process id of the node's running agent (to signal it).
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.agents.get(node).map(Proc::pid)
    }

    /// Starts mesh-probe in a workload in the background (e.g. a long transfer); its output
    /// is read once it has exited.
    pub fn spawn_probe(&self, workload: &str, args: &[&str]) -> Result<Proc> {
        self.sim.spawn(
            &self.sim.workload(workload).placement(),
            &self.bins.probe,
            args,
        )
    }

    /// Runs a command inside a workload (cgroup, then netns) and returns its output.
    pub fn run_in(
        &self,
        workload: &str,
        program: &str,
        args: &[&str],
    ) -> Result<std::process::Output> {
        self.sim
            .run(&self.sim.workload(workload).placement(), program, args)
    }

    /// Runs mesh-probe in a workload and parses its last JSON line.
    pub fn probe(&self, workload: &str, args: &[&str]) -> Result<Value> {
        let out = self.sim.run(
            &self.sim.workload(workload).placement(),
            &self.bins.probe,
            args,
        )?;
        parse_last_json(&out.stdout).with_context(|| {
            format!(
                "mesh-probe {args:?} in {workload}: status {}, stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Starts a long-running mesh-probe server in a workload; waits until it listens.
    pub fn serve(&self, workload: &str, args: &[&str]) -> Result<Proc> {
        let probe = self.bins.probe.clone();
        self.serve_program(workload, &probe, args)
    }

    /// Starts any long-running server in a workload and waits until it prints a line with
    /// "listening" (e.g. tests/grpc/grpc_backend.py).
    pub fn serve_program(
        &self,
        workload: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
    ) -> Result<Proc> {
        let mut proc = self
            .sim
            .spawn(&self.sim.workload(workload).placement(), program, args)?;
        proc.wait_for_stdout("listening", Duration::from_secs(20))?;
        Ok(proc)
    }

    /// GET a path of the node agent's admin API (from the node namespace, outside the mesh).
    pub fn admin(&self, node: &str, path: &str) -> Result<Value> {
        let url = format!("http://127.0.0.1:15000{path}");
        let out = self
            .sim
            .exec_in_node(node, "curl", ["-sS", "-m", "5", url.as_str()])?;
        if !out.status.success() {
            bail!(
                "curl {url} on {node}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("JSON from {url}"))
    }

    pub fn flows(&self, node: &str) -> Result<Vec<Value>> {
        match self.admin(node, "/flows")? {
            Value::Array(v) => Ok(v),
            other => bail!("/flows is not a list: {other}"),
        }
    }

    /// Polls the node's flow table until a flow matches, e.g. a closed one with a given local
    /// address (close events arrive asynchronously through the ring buffer).
    pub fn wait_for_flow(
        &self,
        node: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let flows = self.flows(node)?;
            if let Some(f) = flows.iter().find(|f| matches(f)) {
                return Ok(f.clone());
            }
            if Instant::now() > deadline {
                bail!("no matching flow on {node} within {timeout:?}; flows: {flows:#?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A kernel counter of the node (see /stats "kernel").
    pub fn kernel_counter(&self, node: &str, name: &str) -> Result<u64> {
        self.admin(node, "/stats")?["kernel"][name]
            .as_u64()
            .with_context(|| format!("counter {name} missing"))
    }

    /// A counter of the node's /stats, e.g. `stat("node2", "inbound", "authz_denied")`.
    pub fn stat(&self, node: &str, section: &str, name: &str) -> Result<u64> {
        let stats = self.admin(node, "/stats")?;
        stats[section][name]
            .as_u64()
            .with_context(|| format!("{node} /stats {section}.{name} missing: {stats}"))
    }

    /// The node's network namespace with a cgroup outside every node cgroup: no mesh program
    /// sees what runs there, like a process on the machine that is not part of the mesh.
    pub fn outside(&self, node: &str) -> Placement {
        Placement {
            cgroup: self.sim.cgroup().join(format!("outside-{node}")),
            netns_path: self.sim.node(node).netns_path.clone(),
        }
    }

    pub fn placement(&self, workload: &str) -> Placement {
        self.sim.workload(workload).placement()
    }

    /// The workload's container cgroup `<workload cgroup>/ctr` in its netns: where kubelet
    /// would run the pod's processes.
    pub fn container(&self, workload: &str) -> Placement {
        self.sim.workload(workload).container_placement()
    }

    /// Runs mesh-probe at a placement (e.g. [`Mesh::container`]) and parses its last JSON line.
    pub fn probe_at(&self, placement: &Placement, args: &[&str]) -> Result<Value> {
        let out = self.sim.run(placement, &self.bins.probe, args)?;
        parse_last_json(&out.stdout).with_context(|| {
            format!(
                "mesh-probe {args:?} in {}: status {}, stderr: {}",
                placement.cgroup.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Starts a long-running mesh-probe server at a placement; waits until it listens.
    pub fn serve_at(&self, placement: &Placement, args: &[&str]) -> Result<Proc> {
        let mut proc = self.sim.spawn(placement, &self.bins.probe, args)?;
        proc.wait_for_stdout("listening", Duration::from_secs(20))?;
        Ok(proc)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Agents first (SIGTERM), then the pins: removing the pinned links detaches the
        // programs, which outlive the agents; then the sim.
        for (_, mut proc) in std::mem::take(&mut self.agents) {
            let _ = proc.kill();
        }
        let _ = std::fs::remove_dir_all(self.pin_root());
        if let Some(dir) = &self.bpffs {
            // A bpffs the agent mounted; lazily, in case a process still has a pin open.
            let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// `text` without blank lines at either end, its common leading indentation replaced by
/// `indent` spaces, ending with a newline.
pub fn indent_block(text: &str, indent: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.iter().position(|l| !l.trim().is_empty());
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    let (Some(first), Some(last)) = (first, last) else {
        return String::new();
    };
    let lines = &lines[first..=last];
    let common = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for line in lines {
        if line.trim().is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{pad}{}", &line[common..]);
        }
    }
    out
}

/// The last line of output that parses as JSON.
pub fn parse_last_json(stdout: &[u8]) -> Result<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .context("no JSON line in output")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indent_block_reindents() {
        assert_eq!(
            indent_block("\n  a: 1\n    b: 2\n\n", 6),
            "      a: 1\n        b: 2\n"
        );
        assert_eq!(indent_block("{x: 1}", 6), "      {x: 1}\n");
        assert_eq!(
            indent_block("http_routes:\n  - name: r\n", 0),
            "http_routes:\n  - name: r\n"
        );
        assert_eq!(indent_block("  \n", 2), "");
    }

    #[test]
    fn service_builder_sets_l7_fields() {
        let s = ServiceSpec::new("web", Ipv4Addr::new(10, 96, 0, 10), 80, 8080, &["a", "b"])
            .protocol("http")
            .port_name("http-web")
            .load_balancer("least_request")
            .outlier("{consecutive_5xx_errors: 3}");
        assert_eq!(s.endpoints, ["a", "b"]);
        assert_eq!(s.protocol.as_deref(), Some("http"));
        assert_eq!(s.port_name.as_deref(), Some("http-web"));
        assert_eq!(s.load_balancer.as_deref(), Some("least_request"));
        assert_eq!(
            s.outlier_yaml.as_deref(),
            Some("{consecutive_5xx_errors: 3}")
        );
    }
}
