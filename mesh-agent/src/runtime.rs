//! `mesh-agent run`: wires the kernel data path, the model, the proxy and the admin server
//! together and runs until SIGTERM/SIGINT, then detaches everything it attached.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64},
    },
};

use anyhow::{Context, Result};
use mesh_common::AgentConfig;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    admin, cgroup,
    config::Config,
    ebpf::{self, DataPath, SharedMaps},
    flows::{ClosedFlows, FlowRecord},
    identity::{self, Ca, IdentityManager, PeerCert},
    netns,
    proxy::{self, inbound::InboundStats, tunnel::TunnelPool},
    state::State,
};

mod apply;
pub use apply::RunningAgent;

/// How many accepted tunnel sessions /tunnels remembers.
const RECENT_INBOUND_SESSIONS: usize = 256;

/// An accepted tunnel session, as shown on /tunnels.
#[derive(Debug, Clone, Serialize)]
pub struct InboundSession {
    pub peer_address: SocketAddr,
    pub peer: String,
    pub peer_serial: String,
    pub accepted_unix: u64,
}

#[derive(Default, Serialize)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub forwarded: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// A connection the kernel saw close: into the closed-flow table, the live flow stream and
/// the TCP metrics.
fn connection_closed(shared: &Shared, event: &mesh_common::ConnEvent) {
    let workload = shared.workload_name(event.stats.cgroup_id);
    shared
        .flow_events
        .publish_closed(event, workload.as_deref());
    shared.closed.push(event, workload);
    let state = shared.state();
    crate::metrics::connection_closed(
        &shared.telemetry,
        &shared.tcp_accounting,
        &shared.istio,
        &shared.access_log,
        &state,
        event,
    );
}

impl crate::flows::OpenFlows for Shared {
    fn flow_events(&self) -> &crate::flows::FlowEvents {
        &self.flow_events
    }

    fn live_connections(&self) -> Vec<(mesh_common::SockKey, mesh_common::ConnStats)> {
        self.maps.live_connections()
    }

    fn workload_name(&self, cgroup_id: u64) -> Option<String> {
        Shared::workload_name(self, cgroup_id)
    }
}

/// What every task of the running agent shares.
pub struct Shared {
    state: RwLock<Arc<State>>,
    pub maps: SharedMaps,
    pub closed: ClosedFlows,
    pub proxy_stats: ProxyStats,
    pub ready: AtomicBool,
    pub programs: Vec<String>,
    listeners: std::sync::Mutex<Vec<ListenerEntry>>,
    /// The agent's own cgroup: no workload may be in it.
    pub agent_cgroup_id: u64,
    pub identity: Arc<IdentityManager>,
    pub tunnels: TunnelPool,
    pub inbound_stats: InboundStats,
    pub http_stats: crate::l7::stats::HttpStats,
    pub upstreams: crate::l7::upstream::UpstreamPool,
    /// Live connection events for /flows/stream.
    pub flow_events: crate::flows::FlowEvents,
    /// The process log filter, changeable through /logging.
    pub log: crate::logging::LogControl,
    /// Istio's standard metrics (istio_*).
    pub istio: crate::metrics::registry::IstioMetrics,
    /// Which series each kernel-counted connection belongs to.
    pub tcp_accounting: crate::metrics::tcp::TcpAccounting,
    /// Whether istio_* and the access log are recorded.
    pub telemetry: crate::metrics::Switches,
    /// Where access-log records go (a bounded queue to the writer thread).
    pub access_log: crate::accesslog::AccessLog,
    pub program_stats: ebpf::ProgramStats,
    pub config_reloads: crate::exporter::health::ConfigReloads,
    pub started: std::time::Instant,
    /// Where the running config came from (a file path, or "embedded default").
    pub config_source: String,
    /// The Kubernetes source, when the config has a `kubernetes:` section.
    pub kube: std::sync::OnceLock<Arc<crate::k8s::apply::KubeRuntime>>,
    inbound_sessions: std::sync::Mutex<std::collections::VecDeque<InboundSession>>,
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

/// An outbound listener and its accept task (aborting the task closes the socket; accepted
/// connections run in their own tasks and are not affected).
struct ListenerEntry {
    info: ListenerInfo,
    task: tokio::task::AbortHandle,
}

/// A network namespace a listener is wanted in: its path and inode (None: the host's).
type WantedNamespace = (Option<PathBuf>, Option<u64>);

impl Shared {
    pub fn state(&self) -> Arc<State> {
        self.state
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
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
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        if departed.is_empty() {
            return 0;
        }
        self.istio.forget_workloads(&departed)
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

    fn add_listener(self: &Arc<Self>, listener: std::net::TcpListener, info: ListenerInfo) {
        let task = proxy::outbound::spawn_listener(listener, info.netns_cookie, self.clone());
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ListenerEntry { info, task });
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
            .maps
            .live_connections()
            .iter()
            .map(|(k, s)| FlowRecord::from_kernel(k, s, None, self.workload_name(s.cgroup_id)))
            .collect();
        records.extend(self.closed.snapshot());
        records
    }

    pub fn kernel_counters(&self) -> BTreeMap<&'static str, u64> {
        self.maps.counters().into_iter().collect()
    }

    pub fn record_inbound_session(&self, peer_address: SocketAddr, cert: &PeerCert) {
        let mut recent = self
            .inbound_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_INBOUND_SESSIONS {
            recent.pop_front();
        }
        recent.push_back(InboundSession {
            peer_address,
            peer: cert.id.to_string(),
            peer_serial: cert.serial.clone(),
            accepted_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        });
    }

    pub fn inbound_sessions(&self) -> Vec<InboundSession> {
        self.inbound_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
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

/// Opens the outbound listener in the host namespace and in every pod namespace.
fn open_listeners(state: &State) -> Result<Vec<(std::net::TcpListener, ListenerInfo)>> {
    open_listeners_in(state.node.outbound_port, wanted_namespaces(state)?)
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
    let opened = open_listeners_in(state.node.outbound_port, missing)
        .context("cannot open outbound listeners for new pods")?;
    let count = opened.len();
    for (listener, info) in opened {
        shared.add_listener(listener, info);
    }
    Ok(count)
}

fn open_listeners_in(
    port: u16,
    namespaces: Vec<WantedNamespace>,
) -> Result<Vec<(std::net::TcpListener, ListenerInfo)>> {
    let mut out = Vec::new();
    for (ns, netns_inode) in namespaces {
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let listener = netns::listen_in(ns.as_deref(), v4)?;
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
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
        match netns::listen_in(ns.as_deref(), v6) {
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

/// The CA, and certificates for the agent and every local workload, before anything is
/// attached: a broken CA is reported at once and leaves the node untouched.
fn start_identity(state: &State) -> Result<Arc<IdentityManager>> {
    let cfg = &state.config.identity;
    let ca = Ca::load(cfg).context("cannot load the certificate authority")?;
    let manager = Arc::new(IdentityManager::new(
        ca,
        cfg.trust_domain.clone(),
        cfg.cert_lifetime,
    ));
    manager
        .ensure(&state.local_identities())
        .context("cannot issue workload certificates")?;
    Ok(manager)
}

pub async fn run(
    config: Config,
    config_source: String,
    config_path: Option<PathBuf>,
    log: crate::logging::LogControl,
) -> Result<()> {
    // Root first: without it the CA directory or key may be unreadable, and that message
    // would hide the real problem.
    ebpf::require_root()?;
    let state = State::build(config, None)?;
    let identity = start_identity(&state)?;
    let tunnel_tls = identity::tls::server_config(identity.clone())?;
    let tunnel_listener = proxy::inbound::bind(state.node.address, state.node.tunnel_port)?;
    let node = state.node.clone();
    let agent_cgroup = cgroup::own_cgroup()?;
    let agent_cgroup_id = cgroup::cgroup_id(&agent_cgroup)?;
    if state
        .workloads
        .iter()
        .any(|w| w.cgroup_id == agent_cgroup_id)
    {
        anyhow::bail!(
            "the agent runs in the cgroup of a workload ({}); run it in a cgroup of its own",
            agent_cgroup.display()
        );
    }
    let mut datapath = DataPath::start(
        &node.cgroup,
        &node.pin_dir(),
        AgentConfig {
            agent_cgroup_id,
            outbound_port: node.outbound_port,
            fast_path: u8::from(node.fast_path),
            _pad: 0,
            node_cgroup_level: ebpf::cgroup_level(&node.cgroup)?,
        },
    )?;
    let maps = datapath.shared_maps()?;
    let program_stats =
        ebpf::ProgramStats::new(datapath.program_ids(), state.config.telemetry.program_stats);
    let telemetry = state.config.telemetry.clone();
    let listeners = open_listeners(&state).context("cannot open outbound listeners")?;
    let cookies: Vec<(u64, u16)> = listeners
        .iter()
        .map(|(_, info)| (info.netns_cookie, node.outbound_port))
        .collect();
    maps.sync(state.kernel_maps(), &cookies)
        .context("cannot write the model into the kernel maps")?;
    let events = maps.take_events();
    let shared = Arc::new(Shared {
        state: RwLock::new(Arc::new(state)),
        maps,
        closed: ClosedFlows::default(),
        proxy_stats: ProxyStats::default(),
        ready: AtomicBool::new(false),
        programs: datapath.program_names(),
        listeners: std::sync::Mutex::new(Vec::new()),
        agent_cgroup_id,
        tunnels: TunnelPool::new(identity.clone()),
        identity: identity.clone(),
        inbound_stats: InboundStats::default(),
        http_stats: Default::default(),
        upstreams: Default::default(),
        flow_events: Default::default(),
        log,
        istio: Default::default(),
        tcp_accounting: crate::metrics::tcp::TcpAccounting::new(agent_cgroup_id),
        telemetry: crate::metrics::Switches::new(&telemetry),
        access_log: crate::accesslog::AccessLog::start(telemetry.access_log_buffer)?,
        program_stats,
        config_reloads: Default::default(),
        started: std::time::Instant::now(),
        config_source,
        kube: Default::default(),
        inbound_sessions: Default::default(),
    });
    shared.tunnels.prepare(&shared.state().local_identities())?;
    identity.spawn_rotation();
    proxy::inbound::spawn_listener(tunnel_listener, tunnel_tls, shared.clone())?;
    if let Some(ring) = events {
        let shared = shared.clone();
        ebpf::spawn_event_reader(ring, move |event| connection_closed(&shared, event))?;
    }
    crate::flows::spawn_open_poller(shared.clone());
    for (listener, info) in listeners {
        shared.add_listener(listener, info);
    }
    admin::spawn(node.admin, shared.clone()).await?;
    crate::exporter::server::spawn(
        telemetry.metrics_address,
        telemetry.readiness_address,
        shared.clone(),
    )
    .await?;
    shared.config_reloads.succeeded();
    // The cluster's objects join the file's once every watcher has listed; readiness waits.
    let file_config = shared.state().config.clone();
    if let Some(settings) = &file_config.kubernetes {
        let agent: Arc<dyn crate::reload::Agent> = Arc::new(RunningAgent(shared.clone()));
        let kube = crate::k8s::apply::spawn(agent, settings, file_config.clone())
            .await
            .context("cannot start the Kubernetes source")?;
        let _ = shared.kube.set(kube);
    }
    if let Some(path) = config_path {
        crate::reload::spawn(Arc::new(RunningAgent(shared.clone())), path)?;
    }
    shared
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        node = %node.name,
        cgroup = %node.cgroup.display(),
        pin_dir = %node.pin_dir().display(),
        agent_cgroup = %agent_cgroup.display(),
        "mesh-agent ready"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: detaching and exiting"),
        _ = int.recv() => tracing::info!("SIGINT: detaching and exiting"),
    }
    shared
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // The lines of the last connections and requests, before the process goes.
    if !shared.access_log.flush(std::time::Duration::from_secs(2)) {
        tracing::warn!("the access log could not be written out within 2 s");
    }
    // Dropping the data path closes every link: nothing of ours stays attached. Pinned maps
    // stay for the next start.
    drop(datapath);
    tracing::info!("all programs detached");
    Ok(())
}
