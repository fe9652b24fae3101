//! Simulated cluster nodes on one machine.
//!
//! Layout of a simulation with prefix `P` (`mt-<tag>-<pid>-<n>`):
//! - netns `P-br` holds bridge `br0`; node i's veth `n<i>` is a port of it.
//! - node `N` (index i, 1-based): netns `P-N`, `eth0` = 10.200.0.i/24,
//!   ip_forward=1, route 10.1.j.0/24 via 10.200.0.j for every other node j;
//!   cgroup `/sys/fs/cgroup/unified/P/N` (mesh programs attach here) with
//!   `agent`, `tools`, `pods/<pod>` (or a kubelet-style path given to
//!   [`Sim::add_pod_with_cgroup`]) and `host/<workload>` below it; a workload's
//!   processes may run in its container cgroup `<workload cgroup>/ctr`.
//! - pod k (0-based) on node i: netns `P-N-<pod>`, `eth0` = 10.1.i.(4k+2)/30,
//!   default via the node end `p<k>` = 10.1.i.(4k+1)/30.
//! - host workloads share the node netns and use the node IP.
//!
//! Everything is torn down on drop; [`cleanup_stale`] removes what crashed
//! runs left behind.

mod cgroup;
mod cleanup;
mod handles;
mod naming;
mod netns;
mod privileges;
mod process;
mod tcp;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};

pub use cgroup::CGROUP_ROOT;
pub use cleanup::cleanup_stale;
pub use handles::{CONTAINER_CGROUP, NodeHandle, Placement, WorkloadHandle};
pub use naming::STALE_PREFIX;
pub use netns::{NETNS_DIR, list as list_netns};
pub use privileges::require_privileges;
pub use process::Proc;

/// One simulated cluster. Dropping it kills its processes and removes its
/// namespaces and cgroups.
pub struct Sim {
    prefix: String,
    dir: PathBuf,
    cgroup: PathBuf,
    bridge_netns: String,
    /// Every netns we created, in creation order, for teardown.
    created_netns: Vec<String>,
    nodes: Vec<NodeHandle>,
    workloads: Vec<WorkloadHandle>,
    /// Pod slots handed out per node; never reused, even after a failed add.
    pod_slots: HashMap<String, usize>,
    spawn_seq: AtomicU32,
}

impl Sim {
    /// Creates the bridge netns and the sim cgroup. `tag` only makes names
    /// readable; uniqueness comes from pid and a counter.
    pub fn new(tag: &str) -> Result<Sim> {
        // Once per process: parallel tests would otherwise race on the same
        // stale entries. Leftovers never block us (our names are unique).
        static STALE: Once = Once::new();
        STALE.call_once(|| {
            if let Err(e) = cleanup_stale(STALE_PREFIX) {
                eprintln!("mesh-tests: {e:#}");
            }
        });
        let prefix = naming::new_prefix(tag);
        let mut sim = Sim {
            dir: std::env::temp_dir().join("mesh-tests").join(&prefix),
            cgroup: Path::new(CGROUP_ROOT).join(&prefix),
            bridge_netns: naming::netns_name(&[&prefix, "br"]),
            prefix,
            created_netns: Vec::new(),
            nodes: Vec::new(),
            workloads: Vec::new(),
            pod_slots: HashMap::new(),
            spawn_seq: AtomicU32::new(0),
        };
        // On error `sim` drops here and removes whatever was created.
        sim.init()
            .with_context(|| format!("creating simulation {}", sim.prefix))?;
        Ok(sim)
    }

    fn init(&mut self) -> Result<()> {
        // A dead run with a recycled pid may have left logs under this name.
        let _ = std::fs::remove_dir_all(&self.dir);
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        cgroup::create(&self.cgroup)?;
        let br = self.bridge_netns.clone();
        self.create_netns(&br)?;
        netns::ip_in(&br, &["link", "add", "br0", "type", "bridge"])?;
        netns::ip_in(&br, &["link", "set", "br0", "up"])?;
        netns::ip_in(&br, &["link", "set", "lo", "up"])
    }

    fn create_netns(&mut self, name: &str) -> Result<PathBuf> {
        netns::add(name)?;
        self.created_netns.push(name.to_string());
        Ok(netns::netns_path(name))
    }

    /// Adds node number `nodes().len() + 1` and routes between it and every
    /// existing node's pod subnet.
    pub fn add_node(&mut self, name: &str) -> Result<NodeHandle> {
        naming::validate_name("node", name)?;
        ensure!(
            self.nodes.iter().all(|n| n.name != name),
            "node {name} already exists"
        );
        ensure!(
            self.nodes.len() < naming::MAX_NODES,
            "at most {} nodes",
            naming::MAX_NODES
        );
        let index = (self.nodes.len() + 1) as u8;
        let node = self
            .setup_node(name, index)
            .with_context(|| format!("adding node {name} to {}", self.prefix))?;
        self.nodes.push(node.clone());
        Ok(node)
    }

    fn setup_node(&mut self, name: &str, index: u8) -> Result<NodeHandle> {
        let ns = naming::netns_name(&[&self.prefix, name]);
        let netns_path = self.create_netns(&ns)?;
        let cgroup = self.cgroup.join(name);
        let agent_cgroup = cgroup.join("agent");
        cgroup::create(&agent_cgroup)?;

        let ip = naming::node_ip(index);
        let port = naming::bridge_port(index);
        let br = &self.bridge_netns;
        netns::ip_in(
            br,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        netns::ip_in(br, &["link", "set", &port, "master", "br0", "up"])?;
        netns::ip_in(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        netns::ip_in(&ns, &["link", "set", "eth0", "up"])?;
        netns::ip_in(&ns, &["link", "set", "lo", "up"])?;
        // Nodes route between their pods and the bridge.
        netns::sysctl(&netns_path, "net.ipv4.ip_forward", "1")?;
        for other in &self.nodes {
            let subnet = naming::pod_subnet(other.index);
            let via = other.ip.to_string();
            netns::ip_in(&ns, &["route", "add", &subnet, "via", &via])?;
            let subnet = naming::pod_subnet(index);
            let via = ip.to_string();
            netns::ip_in(&other.netns, &["route", "add", &subnet, "via", &via])?;
        }
        Ok(NodeHandle {
            name: name.to_string(),
            index,
            ip,
            netns: ns,
            netns_path,
            cgroup,
            agent_cgroup,
        })
    }

    /// Adds a pod with its own netns behind a /30 veth to `node`, with the cgroup
    /// `<node cgroup>/pods/<name>`.
    pub fn add_pod(&mut self, node: &str, name: &str) -> Result<WorkloadHandle> {
        let cgroup = Path::new("pods").join(name);
        self.add_pod_with_cgroup(node, name, &cgroup)
    }

    /// Like [`Sim::add_pod`], with the pod cgroup at `cgroup` relative to the node cgroup,
    /// e.g. kubelet's `kubepods/burstable/pod<uid>` (Burstable) or `kubepods/pod<uid>`
    /// (Guaranteed, one level shallower). Run processes in
    /// [`WorkloadHandle::container_placement`] for kubelet's layout.
    pub fn add_pod_with_cgroup(
        &mut self,
        node: &str,
        name: &str,
        cgroup: &Path,
    ) -> Result<WorkloadHandle> {
        naming::validate_name("pod", name)?;
        ensure!(
            !cgroup.as_os_str().is_empty()
                && cgroup
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
            "pod cgroup {} must be a relative path below the node cgroup",
            cgroup.display()
        );
        self.ensure_new_workload(name)?;
        let node = self.find_node(node)?.clone();
        let slot = self.pod_slots.entry(node.name.clone()).or_insert(0);
        let k = *slot;
        let (gw, ip) = naming::pod_ips(node.index, k)?;
        *slot += 1;
        let pod = self
            .setup_pod(&node, k, name, gw, ip, &node.cgroup.join(cgroup))
            .with_context(|| format!("adding pod {name} on node {}", node.name))?;
        self.workloads.push(pod.clone());
        Ok(pod)
    }

    fn setup_pod(
        &mut self,
        node: &NodeHandle,
        k: usize,
        name: &str,
        gw: Ipv4Addr,
        ip: Ipv4Addr,
        cgroup: &Path,
    ) -> Result<WorkloadHandle> {
        let ns = naming::netns_name(&[&self.prefix, &node.name, name]);
        let netns_path = self.create_netns(&ns)?;
        let cgroup = cgroup.to_path_buf();
        cgroup::create(&cgroup)?;

        let port = naming::pod_port(k);
        let n = &node.netns;
        netns::ip_in(
            n,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        netns::ip_in(n, &["addr", "add", &format!("{gw}/30"), "dev", &port])?;
        netns::ip_in(n, &["link", "set", &port, "up"])?;
        netns::ip_in(&ns, &["addr", "add", &format!("{ip}/30"), "dev", "eth0"])?;
        netns::ip_in(&ns, &["link", "set", "eth0", "up"])?;
        netns::ip_in(&ns, &["link", "set", "lo", "up"])?;
        netns::ip_in(&ns, &["route", "add", "default", "via", &gw.to_string()])?;
        Ok(WorkloadHandle {
            name: name.to_string(),
            node: node.name.clone(),
            ip,
            netns_path,
            cgroup,
            is_pod: true,
        })
    }

    /// Adds a workload that shares the node netns (and IP) but has its own
    /// cgroup `<node cgroup>/host/<name>`.
    pub fn add_host_workload(&mut self, node: &str, name: &str) -> Result<WorkloadHandle> {
        naming::validate_name("host workload", name)?;
        self.ensure_new_workload(name)?;
        let node = self.find_node(node)?;
        let cgroup = node.cgroup.join("host").join(name);
        cgroup::create(&cgroup)?;
        let workload = WorkloadHandle {
            name: name.to_string(),
            node: node.name.clone(),
            ip: node.ip,
            netns_path: node.netns_path.clone(),
            cgroup,
            is_pod: false,
        };
        self.workloads.push(workload.clone());
        Ok(workload)
    }

    fn ensure_new_workload(&self, name: &str) -> Result<()> {
        ensure!(
            self.workloads.iter().all(|w| w.name != name),
            "workload {name} already exists"
        );
        Ok(())
    }

    fn find_node(&self, name: &str) -> Result<&NodeHandle> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no node {name:?} in {}", self.prefix))
    }

    /// Panics if there is no such node (a bug in the test itself).
    pub fn node(&self, name: &str) -> &NodeHandle {
        self.find_node(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Panics if there is no such workload (a bug in the test itself).
    pub fn workload(&self, name: &str) -> &WorkloadHandle {
        self.workloads
            .iter()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no workload {name:?} in {}", self.prefix))
    }

    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    pub fn workloads(&self) -> &[WorkloadHandle] {
        &self.workloads
    }

    /// `mt-<tag>-<pid>-<n>`: the start of every netns and cgroup name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `/sys/fs/cgroup/unified/<prefix>`.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn bridge_netns(&self) -> &str {
        &self.bridge_netns
    }

    /// Per-sim temp dir for configs; logs go to `<dir>/logs`. Removed on drop
    /// unless the thread is panicking (a failing test), to keep the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `program` in the placement's cgroup (created if missing) and
    /// netns, with stdout/stderr going to files under `dir()/logs`.
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        target: &Placement,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Proc> {
        let program = program.as_ref();
        cgroup::create(&target.cgroup)?;
        let seq = self.spawn_seq.fetch_add(1, Ordering::Relaxed);
        let base = Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned();
        let label = format!("{seq:03}-{base}");
        let cmd = process::placed_command(target, program, args);
        Proc::start(cmd, &self.dir.join("logs"), &label)
    }

    /// Like [`Sim::spawn`] but waits and returns the captured output. A
    /// non-zero exit is not an error here; callers check `status`.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        target: &Placement,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Output> {
        let program = program.as_ref();
        cgroup::create(&target.cgroup)?;
        let mut cmd = process::placed_command(target, program, args);
        cmd.output()
            .with_context(|| format!("running {program:?} in {target:?}"))
    }

    /// Runs a command in the node netns, in `<node cgroup>/tools` so it is
    /// neither treated as the agent nor as a workload.
    pub fn exec_in_node<S: AsRef<OsStr>>(
        &self,
        node: &str,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Output> {
        let placement = self.find_node(node)?.tools_placement();
        self.run(&placement, program, args)
    }

    /// Polls a TCP connect to `addr` from the placement's netns (see
    /// [`tcp::wait_for_tcp_in`] for why the cgroup is not joined).
    pub fn wait_for_tcp(
        &self,
        placement: &Placement,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<()> {
        tcp::wait_for_tcp_in(&placement.netns_path, addr, timeout)
    }

    fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        // Processes first: a netns lives on while a process is inside it.
        cgroup::kill_all(&self.cgroup);
        for ns in self.created_netns.drain(..).rev() {
            if let Err(e) = netns::del(&ns) {
                errors.push(format!("{e:#}"));
            }
        }
        if let Err(e) = cgroup::destroy(&self.cgroup) {
            errors.push(format!("{e:#}"));
        }
        if std::thread::panicking() || !errors.is_empty() {
            eprintln!(
                "mesh-tests: logs of {} kept in {}",
                self.prefix,
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        ensure!(errors.is_empty(), "{}", errors.join("; "));
        Ok(())
    }
}

impl Drop for Sim {
    /// Best effort, never panics: kill every process in the sim cgroup tree,
    /// delete the namespaces, remove the cgroups bottom-up.
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("mesh-tests: teardown of {} incomplete: {e:#}", self.prefix);
        }
    }
}
