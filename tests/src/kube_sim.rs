//! Kubernetes on simulated nodes: the fake API server inside node1's network namespace, pods
//! laid out the way kubelet does (a pod cgroup at the driver's path under the node cgroup, its
//! own netns and IP), and real agents configured with `kubernetes:` instead of workload lists.
//!
//! The node cgroup plays the part of the machine's cgroup2 root (`kubepods_root`), so a pod's
//! cgroup is `<node cgroup>/kubepods.slice/.../kubepods-<qos>-pod<UID_>.slice`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::fake_kube::{self, FakeApi, PodBuilder};
use crate::mesh::{Binaries, Mesh};
use crate::sim::{CONTAINER_CGROUP, Placement, Proc};

/// The namespace label that enrols a namespace (the agent's default).
pub const ENROLLMENT_LABEL: &str = "mesh.example.io/mode";

/// kubelet's cgroup drivers, which name pod cgroups differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// Where kubelet puts a pod's cgroup under `root` (the cgroup2 root on a real node), for a
/// QoS class (Guaranteed | Burstable | BestEffort) and the pod UID.
/// The DaemonSet's capabilities as a `setpriv --bounding-set` argument. SYS_RESOURCE only where
/// this machine's own bounding set has it (some VMs withhold it); the agent must work without.
pub fn daemonset_bounding_set() -> Result<String> {
    const CAP_SYS_RESOURCE: u32 = 24;
    let bounding = capability_set("/proc/self/status", "CapBnd")?;
    let mut set = String::from("-all,+bpf,+perfmon,+net_admin,+sys_admin");
    if bounding & (1 << CAP_SYS_RESOURCE) != 0 {
        set.push_str(",+sys_resource");
    }
    Ok(set)
}

/// A capability set (`CapEff`, `CapBnd`, ...) of a /proc/PID/status file, as a bit mask.
fn capability_set(status_file: &str, field: &str) -> Result<u64> {
    let status =
        std::fs::read_to_string(status_file).with_context(|| format!("read {status_file}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .with_context(|| format!("no {field} in {status_file}"))
}

pub fn kubelet_pod_cgroup(root: &Path, driver: Driver, qos: &str, uid: &str) -> PathBuf {
    let qos = qos.to_ascii_lowercase();
    match driver {
        Driver::Systemd => {
            // systemd unit names cannot hold '-' inside a component: kubelet writes '_'.
            let uid = uid.replace('-', "_");
            let top = root.join("kubepods.slice");
            match qos.as_str() {
                "guaranteed" => top.join(format!("kubepods-pod{uid}.slice")),
                _ => top
                    .join(format!("kubepods-{qos}.slice"))
                    .join(format!("kubepods-{qos}-pod{uid}.slice")),
            }
        }
        Driver::Cgroupfs => {
            let top = root.join("kubepods");
            match qos.as_str() {
                "guaranteed" => top.join(format!("pod{uid}")),
                _ => top.join(qos).join(format!("pod{uid}")),
            }
        }
    }
}

/// A Kubernetes-style pod on a simulated node.
#[derive(Clone, Debug)]
pub struct KubePod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub uid: String,
    pub qos: String,
    pub ip: Ipv4Addr,
    pub netns_path: PathBuf,
    /// The pod cgroup at kubelet's path.
    pub cgroup: PathBuf,
    pub labels: Vec<(String, String)>,
    pub service_account: Option<String>,
}

impl KubePod {
    /// Where the pod's processes run: kubelet's layout, a container cgroup below the pod
    /// cgroup (which itself holds no process); the kernel finds the pod from it.
    pub fn placement(&self) -> Placement {
        Placement {
            cgroup: self.cgroup.clone(),
            netns_path: self.netns_path.clone(),
        }
        .below(CONTAINER_CGROUP)
    }

    /// The Pod object as the API would show it (Running, IP, QoS, labels, service account).
    pub fn builder(&self) -> PodBuilder {
        let mut pod = fake_kube::pod(&self.namespace, &self.name, &self.node)
            .uid(&self.uid)
            .qos(&self.qos)
            .ip(IpAddr::V4(self.ip));
        for (k, v) in &self.labels {
            pod = pod.label(k, v);
        }
        if let Some(sa) = &self.service_account {
            pod = pod.service_account(sa);
        }
        pod
    }

    pub fn object(&self) -> Value {
        self.builder().build()
    }

    /// The kernel's id of the pod cgroup (its inode number), the key of the workload map.
    pub fn cgroup_id(&self) -> Result<u64> {
        let meta = std::fs::metadata(&self.cgroup)
            .with_context(|| format!("stat {}", self.cgroup.display()))?;
        Ok(meta.ino())
    }
}

/// Two simulated nodes, the fake API in node1's netns (node2 reaches it over the bridge), Node
/// objects for both, and agents started with a `kubernetes:` section.
pub struct KubeMesh {
    pub mesh: Mesh,
    pub api: FakeApi,
    agents: BTreeMap<String, Proc>,
    pods: BTreeMap<String, KubePod>,
    /// One long-lived process per pod (kubelet's pause container).
    pauses: Vec<Proc>,
    uids: u32,
}

impl KubeMesh {
    pub fn new(tag: &str, bins: Binaries) -> Result<KubeMesh> {
        let mesh = Mesh::new(tag, bins)?;
        let node1 = mesh.sim.node("node1").clone();
        let api = FakeApi::start_in_netns(&node1.netns_path, "0.0.0.0:0".parse()?)?;
        for node in mesh.sim.nodes() {
            api.apply(fake_kube::node(&node.name, IpAddr::V4(node.ip)));
        }
        Ok(KubeMesh {
            mesh,
            api,
            agents: BTreeMap::new(),
            pods: BTreeMap::new(),
            pauses: Vec::new(),
            uids: 0,
        })
    }

    /// A namespace object, enrolled or not.
    pub fn namespace(&self, name: &str, enrolled: bool) {
        let labels: &[(&str, &str)] = if enrolled {
            &[(ENROLLMENT_LABEL, "enabled")]
        } else {
            &[]
        };
        self.api.apply(fake_kube::namespace(name, labels));
    }

    /// Creates the pod's netns, IP and cgroup (systemd driver, QoS class `qos`), and starts a
    /// long-lived process in its container cgroup (kubelet's pause container: the agent finds
    /// the pod's netns through a process below its cgroup). The Pod object is not published:
    /// call [`KubeMesh::publish`].
    pub fn add_pod(
        &mut self,
        node: &str,
        namespace: &str,
        name: &str,
        qos: &str,
        labels: &[(&str, &str)],
        service_account: Option<&str>,
    ) -> Result<KubePod> {
        self.uids += 1;
        let uid = format!("{:08x}-5a1e-4c0d-9e7f-{:012x}", self.uids, 0xfeed_0000u64);
        // Relative to the node cgroup, which plays the cgroup2 root (kubepods_root).
        let relative = kubelet_pod_cgroup(Path::new(""), Driver::Systemd, qos, &uid);
        let handle = self.mesh.sim.add_pod_with_cgroup(node, name, &relative)?;
        let pod = KubePod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            node: node.to_string(),
            uid,
            qos: qos.to_string(),
            ip: handle.ip,
            netns_path: handle.netns_path.clone(),
            cgroup: handle.cgroup.clone(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: service_account.map(str::to_string),
        };
        let pause = self
            .mesh
            .sim
            .spawn(&pod.placement(), "sleep", ["1000000"])?;
        self.pauses.push(pause);
        self.pods.insert(name.to_string(), pod.clone());
        Ok(pod)
    }

    pub fn pod(&self, name: &str) -> &KubePod {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("no kube pod {name}"))
    }

    /// Publishes (creates or updates) the pod's object in the API.
    pub fn publish(&self, name: &str) -> Value {
        self.api.apply(self.pod(name).object())
    }

    /// Where the kubeconfig of a node's agent is written.
    pub fn kubeconfig_path(&self, node: &str) -> PathBuf {
        self.mesh.sim.dir().join(format!("{node}.kubeconfig"))
    }

    /// The agent config of a node: node settings, the shared CA, and `kubernetes:`. No
    /// workloads, services or peer nodes: those come from the API.
    pub fn render_config(&self, node: &str) -> String {
        let n = self.mesh.sim.node(node);
        let mut y = String::new();
        let _ = writeln!(y, "node:");
        let _ = writeln!(y, "  name: {node}");
        let _ = writeln!(y, "  cgroup: {}", n.cgroup.display());
        let _ = writeln!(y, "  bpffs: {}", self.mesh.pin_root().display());
        let _ = writeln!(y, "  fast_path: false");
        let _ = writeln!(y, "  address: {}", n.ip);
        let _ = writeln!(y, "identity:");
        let _ = writeln!(y, "  ca:");
        let _ = writeln!(y, "    dir: {}", self.mesh.ca_dir().display());
        let _ = writeln!(y, "kubernetes:");
        let _ = writeln!(y, "  node_name: {node}");
        let _ = writeln!(y, "  kubeconfig: {}", self.kubeconfig_path(node).display());
        let _ = writeln!(y, "  cgroup_driver: systemd");
        let _ = writeln!(y, "  kubepods_root: {}", n.cgroup.display());
        y
    }

    /// Writes the node's kubeconfig (node1: the API on its loopback; others: node1's address)
    /// and config, starts the agent and waits until it says it is ready.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        let node1 = self.mesh.sim.node("node1");
        let host: IpAddr = if node == "node1" {
            Ipv4Addr::LOCALHOST.into()
        } else {
            node1.ip.into()
        };
        let server = SocketAddr::new(host, self.api.addr().port());
        self.api
            .kubeconfig_for(&self.kubeconfig_path(node), &format!("http://{server}"))?;
        let path = self.mesh.sim.dir().join(format!("{node}.yaml"));
        std::fs::write(&path, self.render_config(node))
            .with_context(|| format!("write {}", path.display()))?;
        let log = std::env::var("MESH_TEST_AGENT_LOG")
            .unwrap_or_else(|_| "info,mesh_agent=debug".to_string());
        let placement = self.mesh.sim.node(node).agent_placement();
        let path = path.display().to_string();
        let agent = self.mesh.bins.agent.display().to_string();
        // With exactly the DaemonSet's capabilities (deploy/kubernetes/base/daemonset.yaml):
        // root, bounding set limited, so nothing else (no SYS_PTRACE, no DAC_OVERRIDE).
        let bounding = daemonset_bounding_set()?;
        let mut proc = self.mesh.sim.spawn(
            &placement,
            "setpriv",
            [
                "--bounding-set",
                bounding.as_str(),
                "--",
                agent.as_str(),
                "--log",
                log.as_str(),
                "run",
                "--config",
                path.as_str(),
            ],
        )?;
        crate::mesh::wait_until_ready(&mut proc, node, Duration::from_secs(30), || {
            format!("\nAPI requests:\n{}", self.api.requests_text())
        })?;
        // The agent really runs with no capability beyond the DaemonSet's.
        let effective = capability_set(&format!("/proc/{}/status", proc.pid()), "CapEff")?;
        // CAP_NET_ADMIN 12, CAP_SYS_ADMIN 21, CAP_SYS_RESOURCE 24, CAP_PERFMON 38, CAP_BPF 39.
        let allowed: u64 = [12u32, 21, 24, 38, 39].iter().map(|b| 1u64 << b).sum();
        ensure!(
            effective & !allowed == 0 && effective != 0,
            "agent on {node} has capabilities {effective:#x} beyond the DaemonSet's"
        );
        self.agents.insert(node.to_string(), proc);
        Ok(())
    }

    pub fn agent_logs(&self, node: &str) -> String {
        self.agents.get(node).map(Proc::logs).unwrap_or_default()
    }

    /// The node agent's /config_dump.
    pub fn config_dump(&self, node: &str) -> Result<Value> {
        self.mesh.admin(node, "/config_dump")
    }

    /// Runs a program inside a pod (its cgroup, then its netns).
    pub fn run_in_pod<S: AsRef<OsStr>>(
        &self,
        pod: &str,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Output> {
        self.mesh.sim.run(&self.pod(pod).placement(), program, args)
    }

    /// Starts a long-running program in a pod and waits until it prints "listening".
    pub fn serve_in_pod(&self, pod: &str, args: &[&str]) -> Result<Proc> {
        let mut proc =
            self.mesh
                .sim
                .spawn(&self.pod(pod).placement(), &self.mesh.bins.probe, args)?;
        proc.wait_for_stdout("listening", Duration::from_secs(20))?;
        Ok(proc)
    }

    /// Raw keys of a pinned map of the node (`bpftool map dump pinned`).
    pub fn map_keys(&self, node: &str, map: &str) -> Result<Vec<Vec<u8>>> {
        let path = self.mesh.pin_root().join(node).join(map);
        map_keys(&path)
    }

    /// Whether the pod's cgroup is a key of the node's workload map.
    pub fn workload_in_maps(&self, node: &str, pod: &KubePod) -> Result<bool> {
        let id = pod.cgroup_id()?.to_ne_bytes().to_vec();
        Ok(self.map_keys(node, "MESH_WORKLOADS")?.contains(&id))
    }

    /// Whether `vip:port` is a key of the node's service map.
    pub fn service_in_maps(&self, node: &str, vip: Ipv4Addr, port: u16) -> Result<bool> {
        let mut key = vip.to_ipv6_mapped().octets().to_vec();
        key.extend_from_slice(&port.to_ne_bytes());
        key.extend_from_slice(&[0, 0]);
        Ok(self.map_keys(node, "MESH_SERVICES")?.contains(&key))
    }
}

impl Drop for KubeMesh {
    fn drop(&mut self) {
        // Agents first (SIGTERM, so they detach cleanly); Mesh then removes pins and the sim.
        for (_, mut proc) in std::mem::take(&mut self.agents) {
            let _ = proc.kill();
        }
    }
}

/// Keys of a pinned BPF map, from `bpftool -j map dump pinned PATH` (raw "key" bytes).
pub fn map_keys(path: &Path) -> Result<Vec<Vec<u8>>> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path)
        .output()
        .context("bpftool must be installed (cargo xtask setup)")?;
    ensure!(
        out.status.success(),
        "bpftool map dump pinned {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool JSON for {}", path.display()))?;
    let entries = entries.as_array().context("bpftool dump is not a list")?;
    entries
        .iter()
        .map(|e| {
            e["key"]
                .as_array()
                .context("entry without raw key")?
                .iter()
                .map(|b| {
                    let text = b.as_str().context("key byte is not a string")?;
                    u8::from_str_radix(text.trim_start_matches("0x"), 16)
                        .with_context(|| format!("key byte {text}"))
                })
                .collect()
        })
        .collect()
}

/// Polls `check` until it returns Ok(true); the error names `what` and the last result.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = check();
        if let Ok(true) = last {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?} (last check: {last:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_paths_for_both_drivers_and_every_qos() {
        let root = Path::new("/cg");
        let uid = "1f0a-22";
        let p = |d, q| kubelet_pod_cgroup(root, d, q, uid).display().to_string();
        assert_eq!(
            p(Driver::Systemd, "Guaranteed"),
            "/cg/kubepods.slice/kubepods-pod1f0a_22.slice"
        );
        assert_eq!(
            p(Driver::Systemd, "Burstable"),
            "/cg/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f0a_22.slice"
        );
        assert_eq!(
            p(Driver::Systemd, "BestEffort"),
            "/cg/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1f0a_22.slice"
        );
        assert_eq!(p(Driver::Cgroupfs, "Guaranteed"), "/cg/kubepods/pod1f0a-22");
        assert_eq!(
            p(Driver::Cgroupfs, "Burstable"),
            "/cg/kubepods/burstable/pod1f0a-22"
        );
        assert_eq!(
            p(Driver::Cgroupfs, "BestEffort"),
            "/cg/kubepods/besteffort/pod1f0a-22"
        );
    }
}
