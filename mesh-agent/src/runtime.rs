//! `mesh-agent run`: wires the kernel data path, the model, the proxy and the admin server
//! together and runs until SIGTERM/SIGINT, or until a newer agent has taken the node over
//! and this one has drained; the programs stay attached when it exits.
//!
//! When an agent of the node already runs, this one takes its listening sockets over
//! (`handover`) instead of binding, and tells it to drain once it is ready itself.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::Arc,
    sync::atomic::AtomicBool,
};

use anyhow::{Context, Result};
use mesh_common::AgentConfig;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    admin,
    agent::{Shared, connection_closed, open_listeners},
    cgroup,
    config::{Config, FailMode},
    ebpf::{self, DataPath},
    flows::ClosedFlows,
    handover::{self, Incoming},
    identity::{self, Ca, IdentityManager},
    l7::HttpPlane,
    metrics::Telemetry,
    proxy::{self, ProxyPlane},
    state::State,
    transport::Transport,
};

mod apply;
pub use apply::RunningAgent;

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

/// A fixed listener: the previous agent's when it handed one over that matches the config,
/// else bound here.
fn listener(
    incoming: Option<&mut Incoming>,
    name: &str,
    address: SocketAddr,
) -> Result<TcpListener> {
    if let Some(listener) =
        incoming.and_then(|incoming| incoming.tcp(name, Some(address), address.port()))
    {
        return Ok(listener);
    }
    let listener = TcpListener::bind(address)
        .with_context(|| format!("cannot bind the {name} endpoint on {address}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Every carried connection holds one or two descriptors; the usual soft limit (1024 under
/// systemd) would cap the node at a few hundred connections. Raised to the hard limit, as
/// proxies do; returns the limit in force.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
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
    let open_files = raise_open_file_limit();
    if open_files < 16_384 {
        tracing::warn!(
            open_files,
            "the open file limit caps the connections this agent can carry; raise it (LimitNOFILE)"
        );
    }
    let state = State::build(config, None)?;
    let identity = start_identity(&state)?;
    let tunnel_tls = identity::tls::server_config(identity.clone())?;
    let node = state.node.clone();
    // An agent already serving this node hands its listening sockets over; without one
    // this agent binds its own.
    let handover_path = handover::socket_path(&node.state_dir, &node.name);
    let mut incoming = handover::take_over(&handover_path).with_context(|| {
        format!(
            "an agent already runs on node {} ({}) and the takeover failed; stop it first or fix the cause",
            node.name,
            handover_path.display()
        )
    })?;
    if let Some(incoming) = &incoming {
        tracing::info!(
            previous_pid = incoming.previous_pid,
            sockets = incoming.names().len(),
            "an agent runs on this node: taking its listening sockets over"
        );
    }
    let tunnel_listener = match incoming.as_mut().and_then(|incoming| {
        let address = node.address.map(|ip| SocketAddr::new(ip, node.tunnel_port));
        incoming.tcp("tunnel", address, node.tunnel_port)
    }) {
        Some(listener) => listener,
        None => proxy::inbound::bind(node.address, node.tunnel_port)?,
    };
    let admin_listener = listener(incoming.as_mut(), "admin", node.admin)?;
    let metrics_listener = listener(
        incoming.as_mut(),
        "metrics",
        state.config.telemetry.metrics_address,
    )?;
    let readiness_listener = listener(
        incoming.as_mut(),
        "readiness",
        state.config.telemetry.readiness_address,
    )?;
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
            fail_open: u8::from(node.fail_mode == FailMode::Open),
            node_cgroup_level: ebpf::cgroup_level(&node.cgroup)?,
            ..AgentConfig::default()
        },
    )?;
    let replaced = datapath
        .attached
        .iter()
        .filter(|(_, how)| *how == ebpf::Attached::Replaced)
        .count();
    tracing::info!(
        replaced,
        attached = datapath.attached.len() - replaced,
        pin_dir = %node.pin_dir().display(),
        "programs attached (pinned links: they stay when the agent exits); a previous agent's \
         links had their programs replaced in place"
    );
    let maps = datapath.shared_maps()?;
    let program_stats =
        ebpf::ProgramStats::new(datapath.program_ids(), state.config.telemetry.program_stats);
    let telemetry_settings = state.config.telemetry.clone();
    let listeners =
        open_listeners(&state, incoming.as_mut()).context("cannot open outbound listeners")?;
    let cookies: Vec<(u64, u16)> = listeners
        .iter()
        .map(|(_, info)| (info.netns_cookie, node.outbound_port))
        .collect();
    maps.sync(state.kernel_maps(), &cookies)
        .context("cannot write the model into the kernel maps")?;
    let events = maps.take_events();
    let telemetry = Arc::new(Telemetry::start(&telemetry_settings, agent_cgroup_id)?);
    let transport = Arc::new(Transport::new(
        Arc::new(state),
        maps,
        identity.clone(),
        telemetry.clone(),
    ));
    let http = Arc::new(HttpPlane::new(transport.clone(), telemetry.clone()));
    let proxy_plane = Arc::new(ProxyPlane::new(transport.clone(), http.clone()));
    let shared = Arc::new(Shared {
        transport,
        http,
        proxy: proxy_plane,
        telemetry,
        closed: ClosedFlows::default(),
        ready: AtomicBool::new(false),
        programs: datapath.program_names(),
        listeners: std::sync::Mutex::new(Vec::new()),
        fixed_sockets: Default::default(),
        agent_cgroup_id,
        flow_events: Default::default(),
        log,
        program_stats,
        config_reloads: Default::default(),
        started: std::time::Instant::now(),
        config_source,
        kube: Default::default(),
    });
    shared
        .transport
        .tunnels
        .prepare(&shared.state().local_identities())?;
    identity.spawn_rotation();
    shared.keep_for_handover("tunnel", &tunnel_listener)?;
    shared.keep_for_handover("admin", &admin_listener)?;
    shared.keep_for_handover("metrics", &metrics_listener)?;
    shared.keep_for_handover("readiness", &readiness_listener)?;
    proxy::inbound::spawn_listener(tunnel_listener, tunnel_tls, shared.proxy.clone())?;
    if let Some(ring) = events {
        let shared = shared.clone();
        ebpf::spawn_event_reader(ring, move |event| connection_closed(&shared, event))?;
    }
    crate::flows::spawn_open_poller(shared.clone());
    for (listener, info) in listeners {
        shared.add_listener(listener, info)?;
    }
    admin::spawn(admin_listener, shared.clone())?;
    crate::exporter::server::spawn(metrics_listener, readiness_listener, shared.clone())?;
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

    // Everything serves here now: the previous agent may step back.
    if let Some(incoming) = incoming {
        let previous_pid = incoming.previous_pid;
        match incoming.complete() {
            Ok(connections) => tracing::info!(
                previous_pid,
                connections,
                "took the node over; the previous agent drains its connections"
            ),
            Err(e) => tracing::warn!(
                previous_pid,
                error = format!("{e:#}"),
                "the previous agent did not confirm the handover; both serve until it exits"
            ),
        }
    }
    if let Err(e) = handover::serve(&handover_path, shared.clone()) {
        tracing::error!(
            error = format!("{e:#}"),
            "no handover socket: a restart of this agent will not be hitless"
        );
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let drain = shared.transport.drain.clone();
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        _ = drain.started() => {
            let timeout = shared.state().config.node.drain_timeout;
            tracing::info!(
                connections = drain.active(),
                timeout = ?timeout,
                "a newer agent took the node over: draining"
            );
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut progress = tokio::time::interval(std::time::Duration::from_secs(5));
            progress.tick().await;
            loop {
                tokio::select! {
                    _ = progress.tick() => tracing::info!(
                        carried = ?drain.carried(),
                        "draining: connections still carried"
                    ),
                    _ = drain.idle() => {
                        tracing::info!("drained: every connection ended");
                        break;
                    }
                    _ = &mut deadline => {
                        tracing::warn!(
                            connections = drain.active(),
                            "drain timeout: closing the connections left"
                        );
                        break;
                    }
                    // The orchestrator stopping the old pod once the new one is ready: the
                    // connections it carries still deserve their drain.
                    _ = term.recv() => tracing::info!("SIGTERM while draining: draining on"),
                    _ = int.recv() => {
                        tracing::info!("SIGINT while draining: stopping now");
                        break;
                    }
                }
            }
        }
    }
    shared
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // The lines of the last connections and requests, before the process goes.
    if !shared
        .telemetry
        .access_log
        .flush(std::time::Duration::from_secs(2))
    {
        tracing::warn!("the access log could not be written out within 2 s");
    }
    // The links are pinned: the programs stay attached and the maps pinned, so the node's
    // policy holds until the next agent takes them over (`mesh-agent uninstall` removes
    // them for good).
    drop(datapath);
    tracing::info!("exiting; the programs stay attached and enforce policy until the next agent");
    Ok(())
}
