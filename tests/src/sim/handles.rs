//! Plain descriptions of the simulated nodes and workloads, and where a
//! process should run.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Where a process runs: it joins `cgroup` first, then enters `netns_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub cgroup: PathBuf,
    pub netns_path: PathBuf,
}

/// Name of the "container" cgroup the sim creates below a pod cgroup: kubelet runs a pod's
/// processes in container cgroups below the pod cgroup, which itself holds no process.
pub const CONTAINER_CGROUP: &str = "ctr";

impl Placement {
    /// Same netns, in the child cgroup `name` of this placement's cgroup (created when a
    /// process is started there).
    pub fn below(&self, name: &str) -> Placement {
        Placement {
            cgroup: self.cgroup.join(name),
            netns_path: self.netns_path.clone(),
        }
    }
}

/// A simulated node: its own netns attached to the shared bridge.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    pub name: String,
    /// 1-based; the node IP is 10.200.0.<index>, its pods are in 10.1.<index>.0/24.
    pub index: u8,
    pub ip: Ipv4Addr,
    /// Name of the netns (as shown by `ip netns list`).
    pub netns: String,
    /// `/var/run/netns/<netns>`, usable with nsenter/setns.
    pub netns_path: PathBuf,
    /// The node cgroup: mesh programs attach here; pods and host workloads
    /// live below it (`pods/<name>`, `host/<name>`).
    pub cgroup: PathBuf,
    /// `<node cgroup>/agent`, for the mesh agent process.
    pub agent_cgroup: PathBuf,
}

impl NodeHandle {
    /// The agent runs in the node netns, in the node's `agent` cgroup.
    pub fn agent_placement(&self) -> Placement {
        Placement {
            cgroup: self.agent_cgroup.clone(),
            netns_path: self.netns_path.clone(),
        }
    }

    /// `<node cgroup>/tools`: node netns, but neither agent nor workload, for
    /// helper commands (`ip`, `ss`, `curl` from the node itself).
    pub fn tools_placement(&self) -> Placement {
        Placement {
            cgroup: self.cgroup.join("tools"),
            netns_path: self.netns_path.clone(),
        }
    }
}

/// A pod (own netns) or a host workload (shares the node netns).
#[derive(Clone, Debug)]
pub struct WorkloadHandle {
    pub name: String,
    /// Name of the node it runs on.
    pub node: String,
    /// Pod IP, or the node IP for host workloads.
    pub ip: Ipv4Addr,
    pub netns_path: PathBuf,
    pub cgroup: PathBuf,
    pub is_pod: bool,
}

impl WorkloadHandle {
    pub fn placement(&self) -> Placement {
        Placement::from(self)
    }

    /// The workload's netns, in its container cgroup `<workload cgroup>/ctr` (the Kubernetes
    /// layout: the mesh must find the workload from a descendant of its cgroup).
    pub fn container_placement(&self) -> Placement {
        self.placement().below(CONTAINER_CGROUP)
    }
}

impl From<&WorkloadHandle> for Placement {
    fn from(w: &WorkloadHandle) -> Self {
        Placement {
            cgroup: w.cgroup.clone(),
            netns_path: w.netns_path.clone(),
        }
    }
}
