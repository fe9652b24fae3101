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
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    config::{self, Config},
    state::State,
};

/// Config loads and reloads, and the last rejection (shown in /config_dump and the log).
#[derive(Default, Serialize)]
pub struct ConfigReloads {
    pub success: AtomicU64,
    pub failure: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl ConfigReloads {
    pub fn succeeded(&self) {
        self.success.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    pub fn failed(&self, error: String) {
        self.failure.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error);
        }
    }
}

/// What the config sources (the file watcher here, the Kubernetes source) need of the running
/// agent. The wiring at the top (`runtime`) provides it; a source never sees the rest.
pub trait Agent: Send + Sync + 'static {
    /// The model running now.
    fn state(&self) -> Arc<State>;
    /// Makes `config` the running model, all of it or nothing (the running model stays on
    /// error); a one-line summary for the log.
    fn apply(&self, config: Config) -> Result<String>;
    /// A new content of the config file: applied as is, or with the Kubernetes source on,
    /// kept as the base the cluster's objects are merged into.
    fn apply_file(&self, config: Config) -> Result<String>;
    /// Counts an applied or a rejected change (/status, mesh_agent_config_reloads_total).
    fn reload_succeeded(&self);
    fn reload_failed(&self, message: String);
    /// A newer agent has taken the node over: this one applies no change (the newer one
    /// does) and does not count it as a failure.
    fn is_draining(&self) -> bool {
        false
    }
}

/// The link the kubelet swaps to update every file of a mounted ConfigMap at once.
const KUBELET_DATA_LINK: &str = "..data";

/// Changes closer together than this are one reload (editors write a file in steps).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Reloads `path`; on failure the running config stays and the error is recorded.
pub fn reload(agent: &dyn Agent, path: &Path) -> Result<()> {
    if agent.is_draining() {
        tracing::info!(file = %path.display(), "config changed; not applied here: a newer agent has taken the node over");
        return Ok(());
    }
    match config::load_file(path)
        .map_err(anyhow::Error::from)
        .and_then(|config| agent.apply_file(config))
    {
        Ok(summary) => {
            agent.reload_succeeded();
            tracing::info!(file = %path.display(), %summary, "config reloaded");
            Ok(())
        }
        Err(e) => {
            let message = format!("{e:#}");
            tracing::error!(file = %path.display(), error = %message, "config rejected; the running config stays");
            agent.reload_failed(message);
            Err(e)
        }
    }
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
pub fn spawn(agent: Arc<dyn Agent>, path: PathBuf) -> Result<()> {
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
            let agent = agent.clone();
            let path = path.clone();
            let _ = tokio::task::spawn_blocking(move || reload(agent.as_ref(), &path)).await;
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
    use std::sync::atomic::Ordering;

    use super::ConfigReloads;
    use crate::config::parse_str;

    #[test]
    fn reload_failures_keep_the_last_error_until_a_success() {
        let r = ConfigReloads::default();
        r.failed("bad".into());
        assert_eq!(r.last_error.lock().unwrap().as_deref(), Some("bad"));
        r.succeeded();
        assert_eq!(r.last_error.lock().unwrap().as_deref(), None);
        assert_eq!(r.failure.load(Ordering::Relaxed), 1);
        assert_eq!(r.success.load(Ordering::Relaxed), 1);
    }

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
