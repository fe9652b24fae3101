//! Config reload for the file source: on SIGHUP and when the file changes. A new file is
//! validated and built into a complete model first; only then is it swapped in, so a broken
//! file changes nothing (it is logged, counted in mesh_agent_config_reloads_total{result=
//! "failure"} and shown in /config_dump). Existing connections are untouched: they hold
//! their own sockets and the kernel maps change entry by entry.
//!
//! What cannot change while running (the node's own settings, identity, listening
//! addresses) is refused with a message saying that a restart is needed.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;

use crate::{
    config::{self, Config},
    runtime::Shared,
    state::State,
};

/// The link the kubelet swaps to update every file of a mounted ConfigMap at once.
const KUBELET_DATA_LINK: &str = "..data";

/// Changes closer together than this are one reload (editors write a file in steps).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Reloads `path`; on failure the running config stays and the error is recorded.
pub fn reload(shared: &Arc<Shared>, path: &Path) -> Result<()> {
    match try_reload(shared, path) {
        Ok(summary) => {
            shared.config_reloads.succeeded();
            tracing::info!(file = %path.display(), %summary, "config reloaded");
            Ok(())
        }
        Err(e) => {
            let message = format!("{e:#}");
            tracing::error!(file = %path.display(), error = %message, "config rejected; the running config stays");
            shared.config_reloads.failed(message);
            Err(e)
        }
    }
}

fn try_reload(shared: &Arc<Shared>, path: &Path) -> Result<String> {
    let config = config::load_file(path)?;
    // With the Kubernetes source on, the file is the base the cluster's objects are merged
    // into: refuse node-level changes now, then apply file + cluster.
    if let Some(kube) = shared.kube.get() {
        refuse_restart_only_changes(&shared.state().config, &config)?;
        return kube.set_file(shared, config);
    }
    apply(shared, config)
}

/// Serialises model changes: a file reload and an update from another source never
/// interleave their build, swap and kernel sync.
static APPLY_LOCK: Mutex<()> = Mutex::new(());

/// Makes `config` the running model: refuses node-level changes, builds the complete model
/// (cgroups, certificates, listeners in new pods' namespaces), swaps it in and syncs the
/// kernel maps by diff. On error nothing has changed. Every source goes through here.
/// Returns a one-line summary for the log.
pub fn apply(shared: &Arc<Shared>, config: Config) -> Result<String> {
    let _serialised = APPLY_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
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
        .identity
        .ensure(&ids)
        .context("cannot issue certificates for the new workloads")?;
    shared.tunnels.prepare(&ids)?;
    let opened = crate::runtime::open_missing_listeners(shared, &state)?;
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
        .maps
        .sync(&state, &shared.listener_cookies())
        .context("cannot write the new model into the kernel maps");
    // The model no longer wants them, whether or not the sync went through.
    for task in &closing {
        task.abort();
    }
    synced?;
    if authorization_changed {
        let dropped = shared.upstreams.clear();
        tracing::debug!(
            dropped,
            "authorization changed: pooled upstream connections dropped"
        );
    }
    shared.telemetry.apply(&telemetry);
    shared.identity.retain(&ids);
    Ok(format!(
        "{summary}, {} outbound listeners closed, {dropped} metric label sets dropped",
        closing.len()
    ))
}

/// What cannot change while running: the node's own settings, identity and listening
/// addresses.
pub fn refuse_restart_only_changes(old: &Config, new: &Config) -> Result<()> {
    if new.node != old.node {
        bail!("the `node` section changed; restart the agent to apply it");
    }
    if new.identity != old.identity {
        bail!("the `identity` section changed; restart the agent to apply it");
    }
    let t = (&new.telemetry, &old.telemetry);
    if t.0.metrics_address != t.1.metrics_address
        || t.0.readiness_address != t.1.readiness_address
        || t.0.program_stats != t.1.program_stats
        || t.0.access_log_buffer != t.1.access_log_buffer
    {
        bail!(
            "telemetry addresses, program_stats or access_log_buffer changed; restart the agent to apply them"
        );
    }
    if new.kubernetes != old.kubernetes {
        bail!("the `kubernetes` section changed; restart the agent to apply it");
    }
    Ok(())
}

/// Reloads on SIGHUP and whenever the file (or the directory entry pointing to it) changes.
pub fn spawn(shared: Arc<Shared>, path: PathBuf) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watcher = watch(&path, tx.clone())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            let _ = tx.send(());
        }
    });
    tokio::spawn(async move {
        // The watcher stops when dropped: it lives as long as this task.
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let shared = shared.clone();
            let path = path.clone();
            let _ = tokio::task::spawn_blocking(move || reload(&shared, &path)).await;
        }
    });
    Ok(())
}

/// Watches the file's directory (editors replace the file by renaming another onto it, which a
/// watch on the file itself would miss). A mounted ConfigMap is a symlink `config.yaml ->
/// ..data/config.yaml`, and the kubelet updates it by renaming a new `..data` link into place:
/// events on `..data` count as changes of the file too.
fn watch(path: &Path, tx: mpsc::UnboundedSender<()>) -> Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let ours = event.paths.iter().any(|p| {
            let changed = p.file_name().map(|n| n.to_os_string());
            changed == name || changed.as_deref() == Some(OsStr::new(KUBELET_DATA_LINK))
        });
        if ours {
            let _ = tx.send(());
        }
    })
    .context("cannot create a file watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;

    #[test]
    fn a_changed_kubernetes_section_needs_a_restart() {
        // One directory for every version, so that only the section differs.
        let dir = tempfile::tempdir().expect("tempdir");
        let parse = |section: &str| {
            let node = format!("node:\n  name: node1\n  cgroup: {}\n", dir.path().display());
            parse_str(&format!("{node}{section}"), "test.yaml").expect("valid")
        };
        let on = parse("kubernetes:\n  root_namespace: a\n");
        let other = parse("kubernetes:\n  root_namespace: b\n");
        let off = parse("");
        assert!(super::refuse_restart_only_changes(&on, &on).is_ok());
        for (old, new) in [(&on, &other), (&on, &off), (&off, &on)] {
            let err = super::refuse_restart_only_changes(old, new).expect_err("refused");
            assert_eq!(
                err.to_string(),
                "the `kubernetes` section changed; restart the agent to apply it"
            );
        }
    }
}
