//! `mesh-agent run`: wires the kernel data path, the model, the proxy and the admin server
//! together and runs until SIGTERM/SIGINT; the programs stay attached when it exits.

use std::{path::PathBuf, sync::Arc, sync::atomic::AtomicBool};

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
    let listeners = open_listeners(&state).context("cannot open outbound listeners")?;
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
    proxy::inbound::spawn_listener(tunnel_listener, tunnel_tls, shared.proxy.clone())?;
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
        telemetry_settings.metrics_address,
        telemetry_settings.readiness_address,
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
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
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
