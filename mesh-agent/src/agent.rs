//! The running agent: the handles of its layers (transport, L7, listeners, telemetry), its
//! outbound listeners per network namespace, and what its surfaces (admin, status, the
//! exporter) and config sources read and change. `runtime` builds it; everything above the
//! data path reaches the agent through it, nothing below does.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicBool},
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    ebpf,
    flows::{ClosedFlows, FlowRecord},
    handover::{Incoming, Outgoing},
    l7::HttpPlane,
    metrics::Telemetry,
    netns,
    proxy::{self, ProxyPlane},
    state::State,
    transport::Transport,
};

/// A connection the kernel saw close: into the closed-flow table, the live flow stream and
/// the TCP metrics.
pub fn connection_closed(shared: &Shared, event: &mesh_common::ConnEvent) {
    let workload = shared.workload_name(event.stats.cgroup_id);
    shared
        .flow_events
        .publish_closed(event, workload.as_deref());
    shared.closed.push(event, workload);
    shared.telemetry.connection_closed(&shared.state(), event);
}

impl crate::flows::OpenFlows for Shared {
    fn flow_events(&self) -> &crate::flows::FlowEvents {
        &self.flow_events
    }

    fn live_connections(&self) -> Vec<(mesh_common::SockKey, mesh_common::ConnStats)> {
        self.transport.maps.live_connections()
    }

    fn workload_name(&self, cgroup_id: u64) -> Option<String> {
        Shared::workload_name(self, cgroup_id)
    }
}

/// What every task of the running agent shares.
pub struct Shared {
    /// The data path's handle: the model in force, the kernel maps, identities, tunnels.
    pub transport: Arc<Transport>,
    /// The L7 path: upstream pool and HTTP counters.
    pub http: Arc<HttpPlane>,
    /// The listeners' counters and recent tunnel sessions.
    pub proxy: Arc<ProxyPlane>,
    /// Istio's metrics, TCP accounting, the access log and their switches.
    pub telemetry: Arc<Telemetry>,
    pub closed: ClosedFlows,
    pub ready: AtomicBool,
    pub programs: Vec<String>,
    pub(crate) listeners: std::sync::Mutex<Vec<ListenerEntry>>,
    /// The tunnel, admin, metrics and readiness listeners by their handover names (copies:
    /// the accept loops own the originals), for a newer agent taking the node over.
    pub fixed_sockets: Mutex<Vec<(String, OwnedFd)>>,
    /// The agent's own cgroup: no workload may be in it.
    pub agent_cgroup_id: u64,
    /// Live connection events for /flows/stream.
    pub flow_events: crate::flows::FlowEvents,
    /// The process log filter, changeable through /logging.
    pub log: crate::logging::LogControl,
    pub program_stats: ebpf::ProgramStats,
    pub config_reloads: crate::reload::ConfigReloads,
    pub started: std::time::Instant,
    /// Where the running config came from (a file path, or "embedded default").
    pub config_source: String,
    /// The Kubernetes source, when the config has a `kubernetes:` section.
    pub kube: std::sync::OnceLock<Arc<crate::k8s::apply::KubeRuntime>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerInfo {
    pub netns: Option<PathBuf>,
    /// The namespace's inode number (as in `net:[4026532..]`), None for the host namespace.
    /// Namespaces are told apart by it, not by path: a pod's namespace may be named through
    /// different `/proc/<pid>/ns/net` paths over time.
    pub netns_inode: Option<u64>,
    pub netns_cookie: u64,
    pub address: SocketAddr,
}

impl ListenerInfo {
    /// The name the listener is handed over under: its namespace and address family, the
    /// same in both agents whatever path names the namespace.
    pub fn handover_name(&self) -> String {
        handover_name(self.netns_inode, self.address)
    }
}

fn handover_name(netns_inode: Option<u64>, address: SocketAddr) -> String {
    let namespace = netns_inode.map_or_else(|| "node".to_owned(), |inode| inode.to_string());
    let family = if address.is_ipv6() { "v6" } else { "v4" };
    format!("outbound/{namespace}/{family}")
}

/// An outbound listener and its accept task (aborting the task closes the socket; accepted
/// connections run in their own tasks and are not affected).
pub(crate) struct ListenerEntry {
    info: ListenerInfo,
    task: tokio::task::AbortHandle,
    /// A copy of the socket for a handover; dropped with the entry or when handing over.
    socket: Option<OwnedFd>,
}

impl Outgoing for Shared {
    fn sockets(&self) -> Vec<(String, OwnedFd)> {
        let mut sockets = Vec::new();
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let fixed = self.fixed_sockets.lock().unwrap_or_else(|p| p.into_inner());
        let outbound = listeners
            .iter()
            .filter_map(|l| Some((l.info.handover_name(), l.socket.as_ref()?)));
        let fixed = fixed.iter().map(|(name, fd)| (name.clone(), fd));
        for (name, fd) in outbound.chain(fixed) {
            match fd.try_clone() {
                Ok(copy) => sockets.push((name, copy)),
                Err(e) => tracing::warn!(name, error = %e, "cannot copy a socket for the handover"),
            }
        }
        sockets
    }

    fn hand_over(&self) -> usize {
        // Not ready any more: probes and /status tell the newer agent from this one.
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.transport.drain.start();
        // Idle tunnel sessions and pooled upstream connections would keep the drain open
        // forever: they close once what runs on them ends.
        let sessions = self.transport.tunnels.retire_all();
        let upstreams = self.http.upstreams.clear();
        tracing::debug!(
            sessions,
            upstreams,
            "draining: pooled sessions and upstream connections let go"
        );
        // The newer agent holds the listening sockets now; this agent's copies go, and its
        // accept loops end on the drain.
        for entry in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            entry.socket = None;
        }
        self.fixed_sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.transport.drain.active()
    }
}

/// A network namespace a listener is wanted in: its path and inode (None: the host's).
type WantedNamespace = (Option<PathBuf>, Option<u64>);

impl Shared {
    pub fn state(&self) -> Arc<State> {
        self.transport.state()
    }

    /// Installs a new model (a config change) and drops the istio_* series of this node's
    /// workloads that are no longer in it; returns how many label sets were dropped.
    pub fn replace_state(&self, state: State) -> usize {
        self.replace_state_arc(Arc::new(state))
    }

    pub fn replace_state_arc(&self, state: Arc<State>) -> usize {
        // Only workloads that were ours and left: series naming another node's workloads (a
        // remote client reported at the destination, a remote server at the source) are not
        // this config's to end, so a reload must not reset them.
        let departed: HashSet<(String, String)> = self
            .state()
            .peers
            .workloads()
            .difference(state.peers.workloads())
            .cloned()
            .collect();
        self.transport.replace_state(state);
        if departed.is_empty() {
            return 0;
        }
        self.telemetry.istio.forget_workloads(&departed)
    }

    /// The outbound listeners (one or two per network namespace).
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|l| l.info.clone())
            .collect()
    }

    /// Removes the listeners of namespaces the model no longer wants (pods that left) from
    /// the list and returns their tasks; the caller aborts them once the kernel maps no
    /// longer redirect to them.
    pub fn take_unwanted_listeners(&self, state: &State) -> Result<Vec<tokio::task::AbortHandle>> {
        let wanted: Vec<Option<u64>> = wanted_namespaces(state)?
            .into_iter()
            .map(|(_, inode)| inode)
            .collect();
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = Vec::new();
        listeners.retain(|l| {
            let keep = wanted.contains(&l.info.netns_inode);
            if !keep {
                tracing::info!(netns = ?l.info.netns, address = %l.info.address, "closing the outbound listener of a namespace that left the model");
                gone.push(l.task.clone());
            }
            keep
        });
        Ok(gone)
    }

    pub(crate) fn add_listener(
        self: &Arc<Self>,
        listener: std::net::TcpListener,
        info: ListenerInfo,
    ) -> Result<()> {
        let socket = listener
            .try_clone()
            .map(OwnedFd::from)
            .with_context(|| format!("cannot copy the outbound listener {}", info.address))?;
        let task = proxy::outbound::spawn_listener(listener, info.netns_cookie, self.proxy.clone());
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ListenerEntry {
                info,
                task,
                socket: Some(socket),
            });
        Ok(())
    }

    /// Keeps a copy of a fixed listener (tunnel, admin, metrics, readiness) for a handover.
    pub fn keep_for_handover(&self, name: &str, listener: &std::net::TcpListener) -> Result<()> {
        let copy = listener
            .try_clone()
            .with_context(|| format!("cannot copy the {name} listener"))?;
        self.fixed_sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_owned(), OwnedFd::from(copy)));
        Ok(())
    }

    /// (namespace cookie, port) of every outbound listener, for the kernel's listener map.
    pub fn listener_cookies(&self) -> Vec<(u64, u16)> {
        self.listeners()
            .iter()
            .map(|l| (l.netns_cookie, l.address.port()))
            .collect()
    }

    pub fn workload_name(&self, cgroup_id: u64) -> Option<String> {
        if cgroup_id == 0 {
            return None;
        }
        let state = self.state();
        state
            .workload_by_cgroup(cgroup_id)
            .map(|w| format!("{}/{}", w.namespace, w.name))
    }

    /// Live connections (from the kernel) followed by recently closed ones.
    pub fn flows(&self) -> Vec<FlowRecord> {
        let mut records: Vec<FlowRecord> = self
            .transport
            .maps
            .live_connections()
            .iter()
            .map(|(k, s)| FlowRecord::from_kernel(k, s, None, self.workload_name(s.cgroup_id)))
            .collect();
        records.extend(self.closed.snapshot());
        records
    }

    pub fn kernel_counters(&self) -> BTreeMap<&'static str, u64> {
        self.transport.maps.counters().into_iter().collect()
    }

    /// The tunnel sessions accepted lately (for /tunnels).
    pub fn inbound_sessions(&self) -> Vec<crate::proxy::inbound::InboundSession> {
        self.proxy.inbound_sessions()
    }
}

/// The network namespaces that need an outbound listener: the host's and every pod's.
fn wanted_namespaces(state: &State) -> Result<Vec<WantedNamespace>> {
    let mut namespaces: Vec<WantedNamespace> = vec![(None, None)];
    for w in &state.workloads {
        let Some(path) = &w.netns else { continue };
        let inode = netns::namespace_inode(path)?;
        if !namespaces.iter().any(|(_, i)| *i == Some(inode)) {
            namespaces.push((Some(path.clone()), Some(inode)));
        }
    }
    Ok(namespaces)
}

/// Opens the outbound listener in the host namespace and in every pod namespace, or takes
/// the one the previous agent handed over.
pub(crate) fn open_listeners(
    state: &State,
    incoming: Option<&mut Incoming>,
) -> Result<Vec<(std::net::TcpListener, ListenerInfo)>> {
    open_listeners_in(
        state.node.outbound_port,
        wanted_namespaces(state)?,
        incoming,
    )
}

/// After a config change: opens listeners in the pod namespaces that have none yet and
/// starts serving them; returns how many were opened. Listeners of namespaces that left are
/// closed by [`Shared::take_unwanted_listeners`] after the kernel maps are updated.
pub fn open_missing_listeners(shared: &Arc<Shared>, state: &State) -> Result<usize> {
    let have: Vec<Option<u64>> = shared.listeners().iter().map(|l| l.netns_inode).collect();
    let missing: Vec<WantedNamespace> = wanted_namespaces(state)?
        .into_iter()
        .filter(|(_, inode)| !have.contains(inode))
        .collect();
    let opened = open_listeners_in(state.node.outbound_port, missing, None)
        .context("cannot open outbound listeners for new pods")?;
    let count = opened.len();
    for (listener, info) in opened {
        shared.add_listener(listener, info)?;
    }
    Ok(count)
}

fn open_listeners_in(
    port: u16,
    namespaces: Vec<WantedNamespace>,
    mut incoming: Option<&mut Incoming>,
) -> Result<Vec<(std::net::TcpListener, ListenerInfo)>> {
    let mut out = Vec::new();
    for (ns, netns_inode) in namespaces {
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
        let mut handed_over = |address: SocketAddr| {
            incoming.as_deref_mut().and_then(|incoming| {
                incoming.tcp(&handover_name(netns_inode, address), Some(address), port)
            })
        };
        let taken_v4 = handed_over(v4);
        let taken_v6 = handed_over(v6);
        let listener = match taken_v4 {
            Some(listener) => listener,
            None => netns::listen_in(ns.as_deref(), v4)?,
        };
        let cookie = netns::netns_cookie(&listener)?;
        out.push((
            listener,
            ListenerInfo {
                netns: ns.clone(),
                netns_inode,
                netns_cookie: cookie,
                address: v4,
            },
        ));
        // IPv6 loopback may be disabled in a namespace; IPv4 redirect still works then.
        let v6_listener = match taken_v6 {
            Some(listener) => Ok(listener),
            None => netns::listen_in(ns.as_deref(), v6),
        };
        match v6_listener {
            Ok(listener) => out.push((
                listener,
                ListenerInfo {
                    netns: ns.clone(),
                    netns_inode,
                    netns_cookie: cookie,
                    address: v6,
                },
            )),
            Err(e) => tracing::debug!(error = format!("{e:#}"), "no IPv6 outbound listener"),
        }
    }
    Ok(out)
}
