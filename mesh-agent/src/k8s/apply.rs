//! The running agent's side of the Kubernetes source: builds the API client, starts the
//! watchers and applies file + cluster through the agent handle (`reload::Agent::apply`)
//! whenever either changes.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};

use super::{ClusterModel, KubernetesConfig, RejectedObject, SourceHandle, SourceStats, merge};
use crate::{config::Config, reload::Agent};

/// A failed apply (e.g. a pod cgroup that vanished meanwhile) is tried again after this.
const RETRY: Duration = Duration::from_secs(1);

/// What the admin endpoints, metrics and the file reload need of the source.
pub struct KubeRuntime {
    pub stats: Arc<SourceStats>,
    /// The last accepted file config: the base every cluster model is merged into.
    file: Mutex<Config>,
    model: Mutex<Option<Arc<ClusterModel>>>,
    /// Objects left out of the running model, and why.
    rejected: Mutex<Vec<RejectedObject>>,
    /// Whether a cluster model has been applied (readiness waits for it).
    applied: AtomicBool,
    /// One merge-and-apply at a time, so that an older merge never lands after a newer one.
    serial: Mutex<()>,
    /// Rejections already logged (each is logged once).
    logged: Mutex<HashSet<(String, String, String, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KubeRuntime {
    pub fn applied(&self) -> bool {
        self.applied.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> Vec<RejectedObject> {
        lock(&self.rejected).clone()
    }

    /// A new file config (already validated): the base of the next merges. Applied at once
    /// when a cluster model is there; otherwise with the first one.
    /// A file that cannot be applied (a node-level change, say) is not kept: the cluster
    /// updates that follow go on being merged into the file config that runs.
    pub fn set_file(&self, agent: &dyn Agent, file: Config) -> Result<String> {
        if lock(&self.model).is_none() {
            // Nothing to merge with yet: at least refuse what a restart would need now.
            crate::reload::refuse_restart_only_changes(&lock(&self.file), &file)?;
            *lock(&self.file) = file;
            return Ok("kept; applied with the first cluster sync".to_owned());
        }
        let previous = std::mem::replace(&mut *lock(&self.file), file);
        match self.apply_latest(agent) {
            Ok(summary) => Ok(summary.unwrap_or_default()),
            Err(e) => {
                *lock(&self.file) = previous;
                Err(e)
            }
        }
    }

    /// Merges the file config with the latest cluster model and applies it; `None` before the
    /// first cluster model.
    fn apply_latest(&self, agent: &dyn Agent) -> Result<Option<String>> {
        let _serial = lock(&self.serial);
        let Some(model) = lock(&self.model).clone() else {
            return Ok(None);
        };
        let file = lock(&self.file).clone();
        let (config, rejected) = merge(&file, &model);
        let summary = agent.apply(config)?;
        {
            let mut logged = lock(&self.logged);
            for r in &rejected {
                let key = (
                    r.kind.clone(),
                    r.namespace.clone(),
                    r.name.clone(),
                    r.reason.clone(),
                );
                if logged.insert(key) {
                    tracing::warn!(kind = %r.kind, namespace = %r.namespace, name = %r.name, reason = %r.reason, "object rejected; the rest of the model is applied");
                }
            }
            // Forget rejections that are gone, so that a recurrence is logged again.
            logged.retain(|(k, ns, n, why)| {
                rejected
                    .iter()
                    .any(|r| &r.kind == k && &r.namespace == ns && &r.name == n && &r.reason == why)
            });
        }
        let count = rejected.len();
        *lock(&self.rejected) = rejected;
        self.applied.store(true, Ordering::Relaxed);
        Ok(Some(format!("{summary}, {count} objects rejected")))
    }
}

/// The API client: from `kubeconfig` when set, else in-cluster or `KUBECONFIG`.
pub async fn client(settings: &KubernetesConfig) -> Result<kube::Client> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("cannot use kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "cannot find the Kubernetes API (no in-cluster service account, no KUBECONFIG); set kubernetes.kubeconfig",
        )?,
    };
    kube::Client::try_from(config).context("cannot build the Kubernetes API client")
}

/// Starts the source and the applier task; the returned runtime goes into the agent's wiring.
pub async fn spawn(
    agent: Arc<dyn Agent>,
    settings: &KubernetesConfig,
    file: Config,
) -> Result<Arc<KubeRuntime>> {
    let client = client(settings).await?;
    let handle = super::start(client, settings.clone());
    let runtime = Arc::new(KubeRuntime {
        stats: handle.stats.clone(),
        file: Mutex::new(file),
        model: Mutex::new(None),
        rejected: Mutex::new(Vec::new()),
        applied: AtomicBool::new(false),
        serial: Mutex::new(()),
        logged: Mutex::new(HashSet::new()),
    });
    tokio::spawn(applier(agent, runtime.clone(), handle));
    tracing::info!(node = %settings.node_name, "Kubernetes source started");
    Ok(runtime)
}

/// Applies every new cluster model; a failure is recorded and retried after [`RETRY`].
async fn applier(agent: Arc<dyn Agent>, runtime: Arc<KubeRuntime>, mut handle: SourceHandle) {
    let mut failing = false;
    loop {
        if failing {
            tokio::select! {
                changed = handle.updates.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RETRY) => {}
            }
        } else if handle.updates.changed().await.is_err() {
            return;
        }
        let Some(model) = handle.updates.borrow_and_update().clone() else {
            continue;
        };
        *lock(&runtime.model) = Some(model);
        let (a, r) = (agent.clone(), runtime.clone());
        let result = tokio::task::spawn_blocking(move || r.apply_latest(a.as_ref())).await;
        match result {
            Ok(Ok(summary)) => {
                failing = false;
                agent.reload_succeeded();
                tracing::info!(
                    summary = summary.unwrap_or_default(),
                    "cluster model applied"
                );
            }
            Ok(Err(e)) => {
                failing = true;
                // The objects may translate differently now (a process gone, a cgroup there).
                handle.refresh();
                let message = format!("{e:#}");
                tracing::error!(error = %message, "cluster model not applied; retrying in 1 s");
                agent.reload_failed(message);
            }
            Err(e) => {
                failing = true;
                agent.reload_failed(format!("the apply task failed: {e}"));
            }
        }
    }
}
