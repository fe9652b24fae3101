//! Applying a new config to the running agent: the one place that touches every part of it
//! (the model, certificates, tunnels, listeners, kernel maps, upstream pools, telemetry
//! switches). The config sources (`reload`, `k8s`) reach it through [`RunningAgent`], their
//! narrow handle on the agent.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

use super::Shared;
use crate::{
    config::Config,
    reload::{Agent, refuse_restart_only_changes},
    state::State,
};

/// The running agent as the config sources see it.
pub struct RunningAgent(pub Arc<Shared>);

impl Agent for RunningAgent {
    fn state(&self) -> Arc<State> {
        self.0.state()
    }

    fn apply(&self, config: Config) -> Result<String> {
        apply(&self.0, config)
    }

    fn apply_file(&self, config: Config) -> Result<String> {
        // With the Kubernetes source on, the file is the base the cluster's objects are merged
        // into: refuse node-level changes now, then apply file + cluster.
        match self.0.kube.get() {
            Some(kube) => {
                refuse_restart_only_changes(&self.0.state().config, &config)?;
                kube.set_file(self, config)
            }
            None => apply(&self.0, config),
        }
    }

    fn reload_succeeded(&self) {
        self.0.config_reloads.succeeded();
    }

    fn reload_failed(&self, message: String) {
        self.0.config_reloads.failed(message);
    }

    fn is_draining(&self) -> bool {
        self.0.transport.drain.is_draining()
    }
}

/// Serialises model changes: a file reload and an update from another source never
/// interleave their build, swap and kernel sync.
static APPLY_LOCK: Mutex<()> = Mutex::new(());

/// Makes `config` the running model: refuses node-level changes, builds the complete model
/// (cgroups, certificates, listeners in new pods' namespaces), swaps it in and syncs the
/// kernel maps by diff. On error nothing has changed. Every source goes through here.
/// Returns a one-line summary for the log.
pub(super) fn apply(shared: &Arc<Shared>, config: Config) -> Result<String> {
    let _serialised = APPLY_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if shared.transport.drain.is_draining() {
        bail!(
            "a newer agent has taken the node over and this one only drains; the newer agent applies config changes"
        );
    }
    let current = shared.state();
    refuse_restart_only_changes(&current.config, &config)?;
    let authorization_changed = current.config.authorization != config.authorization;
    let state = State::build(config, Some(&current))?;
    if let Some(w) = state
        .workloads
        .iter()
        .find(|w| w.cgroup_id == shared.agent_cgroup_id)
    {
        bail!(
            "workload {}/{} is in the agent's own cgroup",
            w.namespace,
            w.name
        );
    }
    let ids = state.local_identities();
    shared
        .transport
        .identity
        .ensure(&ids)
        .context("cannot issue certificates for the new workloads")?;
    shared.transport.tunnels.prepare(&ids)?;
    let opened = crate::agent::open_missing_listeners(shared, &state)?;
    let summary = format!(
        "{} workloads, {} services, {} policies, {} new outbound listeners",
        state.workloads.len(),
        state.config.services.len(),
        state.config.authorization.len(),
        opened
    );
    let telemetry = state.config.telemetry.clone();
    // The model first, then the kernel: a connection the kernel newly redirects must find
    // its destination in the model.
    let state = Arc::new(state);
    let dropped = shared.replace_state_arc(state.clone());
    // Listeners of namespaces that left leave the list before the sync, so the kernel stops
    // redirecting to them before their sockets close.
    let closing = shared.take_unwanted_listeners(&state)?;
    let synced = shared
        .transport
        .maps
        .sync(state.kernel_maps(), &shared.listener_cookies())
        .context("cannot write the new model into the kernel maps");
    // The model no longer wants them, whether or not the sync went through.
    for task in &closing {
        task.abort();
    }
    synced?;
    if authorization_changed {
        let dropped = shared.http.upstreams.clear();
        tracing::debug!(
            dropped,
            "authorization changed: pooled upstream connections dropped"
        );
    }
    shared.telemetry.switches.apply(&telemetry);
    shared.transport.identity.retain(&ids);
    Ok(format!(
        "{summary}, {} outbound listeners closed, {dropped} metric label sets dropped",
        closing.len()
    ))
}
