//! One kube-runtime watcher per kind, each feeding a store; an aggregator turns the stores into
//! a [`ClusterModel`] after every change.
//!
//! Stores work like kube's reflector: `Init` opens a buffer, `InitApply` fills it and
//! `InitDone` replaces the whole set, so a re-list (after a 410 Expired) drops objects that
//! were deleted while no watch was open. Watchers retry with kube's default backoff; a 410
//! when *starting* a watch restarts the watcher from a fresh list, because kube-runtime would
//! otherwise retry the same expired resourceVersion forever (it re-lists only on a 410 ERROR
//! event or a 410 on the list).

use std::{
    collections::BTreeMap,
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::{ApiResource, DynamicObject},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use super::{
    ClusterModel, KubernetesConfig,
    crd::MeshAuthorizationPolicy,
    gateway, podcgroup,
    translate::{self, Objects},
};

/// Events closer together than this are one model change.
const COALESCE: Duration = Duration::from_millis(100);
/// Pods whose cgroup or process is not there yet are looked for again this often.
const PENDING_RETRY: Duration = Duration::from_secs(1);
/// Pause before listing again after a 410 when starting a watch (no hot loop against a
/// server that keeps refusing).
const EXPIRED_RESTART_DELAY: Duration = Duration::from_secs(1);

/// The kinds watched, in the order of the `listed` flags.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Pod,
    Node,
    Namespace,
    Service,
    EndpointSlice,
    Policy,
    HttpRoute,
    GrpcRoute,
}

const KINDS: usize = 8;

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Policy => "MeshAuthorizationPolicy",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
        }
    }
}

/// Counters of the source, for metrics and tests.
#[derive(Debug, Default)]
pub struct SourceStats {
    events: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    restarts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    relists: Mutex<BTreeMap<&'static str, u64>>,
    models: Mutex<u64>,
}

impl SourceStats {
    /// ((kind, type), count); type is init, init_apply, init_done, apply or delete.
    pub fn events(&self) -> Vec<((String, String), u64)> {
        lock(&self.events)
            .iter()
            .map(|((k, t), n)| ((k.to_string(), t.to_string()), *n))
            .collect()
    }

    /// ((kind, reason), count); reason is `expired` (410) or `error`.
    pub fn restarts(&self) -> Vec<((String, String), u64)> {
        lock(&self.restarts)
            .iter()
            .map(|((k, r), n)| ((k.to_string(), r.to_string()), *n))
            .collect()
    }

    /// Completed lists (the first one included) per kind.
    pub fn relists(&self) -> Vec<(String, u64)> {
        lock(&self.relists)
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect()
    }

    /// Models published.
    pub fn models(&self) -> u64 {
        *lock(&self.models)
    }

    fn event(&self, kind: Kind, kind_of_event: &'static str) {
        *lock(&self.events)
            .entry((kind.name(), kind_of_event))
            .or_default() += 1;
    }

    fn restart(&self, kind: Kind, reason: &'static str) {
        *lock(&self.restarts)
            .entry((kind.name(), reason))
            .or_default() += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running source. Dropping it stops the watchers.
pub struct SourceHandle {
    /// `None` until every watcher has finished its first list.
    pub updates: watch::Receiver<Option<Arc<ClusterModel>>>,
    pub stats: Arc<SourceStats>,
    tasks: Vec<tokio::task::AbortHandle>,
    inner: Arc<Inner>,
}

impl SourceHandle {
    /// Translates the objects again now (e.g. after the model could not be applied because
    /// a pod's process went away), publishing when the result differs.
    pub fn refresh(&self) {
        self.inner.changed.notify_one();
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the watcher tasks share with the aggregator.
struct Inner {
    objects: Mutex<(Objects, [bool; KINDS])>,
    changed: Notify,
    stats: Arc<SourceStats>,
}

/// Starts one watcher per kind (Pods on `settings.node_name`, Nodes, Namespaces, Services,
/// EndpointSlices, MeshAuthorizationPolicies, HTTPRoutes, GRPCRoutes) with backoff, and
/// publishes a new [`ClusterModel`] after every change, coalesced for 100 ms. Must be called
/// within a tokio runtime.
pub fn start(client: Client, settings: KubernetesConfig) -> SourceHandle {
    let stats = Arc::new(SourceStats::default());
    let inner = Arc::new(Inner {
        objects: Mutex::new((Objects::default(), [false; KINDS])),
        changed: Notify::new(),
        stats: stats.clone(),
    });
    let (tx, rx) = watch::channel(None);
    let pods = watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node_name));
    let all = watcher::Config::default;
    let dynamic = |ar: ApiResource| Api::<DynamicObject>::all_with(client.clone(), &ar);
    let tasks = vec![
        spawn_kind(
            Api::<Pod>::all(client.clone()),
            pods,
            Kind::Pod,
            &inner,
            |o, v| o.pods = v,
        ),
        spawn_kind(
            Api::<Node>::all(client.clone()),
            all(),
            Kind::Node,
            &inner,
            |o, v| o.nodes = v,
        ),
        spawn_kind(
            Api::<Namespace>::all(client.clone()),
            all(),
            Kind::Namespace,
            &inner,
            |o, v| o.namespaces = v,
        ),
        spawn_kind(
            Api::<Service>::all(client.clone()),
            all(),
            Kind::Service,
            &inner,
            |o, v| o.services = v,
        ),
        spawn_kind(
            Api::<EndpointSlice>::all(client.clone()),
            all(),
            Kind::EndpointSlice,
            &inner,
            |o, v| o.endpoint_slices = v,
        ),
        spawn_kind(
            dynamic(ApiResource::erase::<MeshAuthorizationPolicy>(&())),
            all(),
            Kind::Policy,
            &inner,
            |o, v| o.policies = v,
        ),
        spawn_kind(
            dynamic(ApiResource::erase::<gateway::HTTPRoute>(&())),
            all(),
            Kind::HttpRoute,
            &inner,
            |o, v| o.http_routes = v,
        ),
        spawn_kind(
            dynamic(ApiResource::erase::<gateway::GRPCRoute>(&())),
            all(),
            Kind::GrpcRoute,
            &inner,
            |o, v| o.grpc_routes = v,
        ),
        tokio::spawn(aggregate(inner.clone(), settings, tx)).abort_handle(),
    ];
    SourceHandle {
        updates: rx,
        stats,
        tasks,
        inner,
    }
}

fn spawn_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    inner: &Arc<Inner>,
    store_into: fn(&mut Objects, Vec<Arc<K>>),
) -> tokio::task::AbortHandle
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    tokio::spawn(watch_kind(api, config, kind, inner.clone(), store_into)).abort_handle()
}

fn key<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// 410 Gone: the resourceVersion is older than the server's history.
fn is_expired(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 410,
        _ => false,
    }
}

async fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    inner: Arc<Inner>,
    store_into: fn(&mut Objects, Vec<Arc<K>>),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut store: BTreeMap<String, Arc<K>> = BTreeMap::new();
    let mut buffer: Option<BTreeMap<String, Arc<K>>> = None;
    let publish = |store: &BTreeMap<String, Arc<K>>| {
        let mut guard = lock(&inner.objects);
        store_into(&mut guard.0, store.values().cloned().collect());
        guard.1[kind as usize] = true;
        drop(guard);
        inner.changed.notify_one();
    };
    let mut missing_logged = false;
    loop {
        let mut stream = watcher::watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed();
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(e) => {
                    let expired = is_expired(&e);
                    inner
                        .stats
                        .restart(kind, if expired { "expired" } else { "error" });
                    // A kind whose CRD is not installed (Gateway API is optional) is an
                    // empty set, so that the rest of the model still gets ready.
                    if let watcher::Error::InitialListFailed(kube::Error::Api(s)) = &e
                        && s.code == 404
                    {
                        if !missing_logged {
                            tracing::warn!(
                                kind = kind.name(),
                                "the API does not serve this kind (CRD not installed?); treating it as empty and retrying"
                            );
                            missing_logged = true;
                        }
                        store.clear();
                        publish(&store);
                        continue;
                    }
                    tracing::warn!(kind = kind.name(), error = %e, "watch failed; retrying");
                    if expired && matches!(e, watcher::Error::WatchStartFailed(_)) {
                        tokio::time::sleep(EXPIRED_RESTART_DELAY).await;
                        break;
                    }
                    continue;
                }
            };
            match event {
                Event::Init => {
                    inner.stats.event(kind, "init");
                    buffer = Some(BTreeMap::new());
                }
                Event::InitApply(obj) => {
                    inner.stats.event(kind, "init_apply");
                    buffer
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key(&obj), Arc::new(obj));
                }
                Event::InitDone => {
                    inner.stats.event(kind, "init_done");
                    *lock(&inner.stats.relists).entry(kind.name()).or_default() += 1;
                    store = buffer.take().unwrap_or_default();
                    publish(&store);
                }
                Event::Apply(obj) => {
                    inner.stats.event(kind, "apply");
                    store.insert(key(&obj), Arc::new(obj));
                    publish(&store);
                }
                Event::Delete(obj) => {
                    inner.stats.event(kind, "delete");
                    store.remove(&key(&obj));
                    publish(&store);
                }
            }
        }
        buffer = None;
    }
}

/// Waits for changes, coalesces them, translates, and publishes when the model differs.
async fn aggregate(
    inner: Arc<Inner>,
    settings: KubernetesConfig,
    tx: watch::Sender<Option<Arc<ClusterModel>>>,
) {
    let finder = super::netns_scan::NetnsFinder::new(&settings.netns_dir);
    let locate = |pod: &Pod| {
        let uid = pod.metadata.uid.as_deref()?;
        let status = pod.status.as_ref();
        let qos = status
            .and_then(|s| s.qos_class.as_deref())
            .and_then(podcgroup::Qos::parse);
        let ips: Vec<std::net::IpAddr> = status
            .into_iter()
            .flat_map(|s| {
                s.pod_ips
                    .iter()
                    .flatten()
                    .map(|p| p.ip.as_str())
                    .chain(s.pod_ip.as_deref())
            })
            .filter_map(|ip| ip.parse().ok())
            .collect();
        podcgroup::locate(
            &settings.kubepods_root,
            settings.cgroup_driver,
            qos,
            uid,
            &ips,
            &finder,
        )
    };
    let mut pending = false;
    loop {
        if pending {
            tokio::select! {
                _ = inner.changed.notified() => tokio::time::sleep(COALESCE).await,
                _ = tokio::time::sleep(PENDING_RETRY) => {}
            }
        } else {
            inner.changed.notified().await;
            tokio::time::sleep(COALESCE).await;
        }
        let objects = {
            let guard = lock(&inner.objects);
            if !guard.1.iter().all(|listed| *listed) {
                continue;
            }
            guard.0.clone()
        };
        let model = translate::translate(&settings, &objects, &locate);
        pending = !model.pending_pods.is_empty();
        let changed = tx.borrow().as_deref() != Some(&model);
        if changed {
            *lock(&inner.stats.models) += 1;
            tx.send_replace(Some(Arc::new(model)));
        }
    }
}
