//! A fake Kubernetes API server over real HTTP (hyper 1), for the Kubernetes source tests.
//!
//! It behaves like the parts of kube-apiserver the agent's watchers rely on, so that the real
//! `kube` client and `kube::runtime::watcher` run against it unchanged, in-process (no-root
//! tests) or from the agent binary on a simulated node (bound inside the node's netns):
//! - every kind the agent reads, at cluster-wide (`/api/v1/pods`) and namespaced
//!   (`/api/v1/namespaces/{ns}/pods`) paths, plus GET of one object;
//! - one resourceVersion counter for all kinds (like etcd) and an event log;
//! - list with `fieldSelector` (`=`, `==`, `!=` on dotted paths such as `spec.nodeName`,
//!   `metadata.name`) and equality `labelSelector` (`k=v`, `k!=v`, `k`, `!k`); set-based
//!   selectors are refused with 400 so a test never silently gets the wrong filter;
//! - watch replaying the log after the requested resourceVersion, then a BOOKMARK, then live
//!   events; an object that starts or stops matching a selector arrives as ADDED / DELETED,
//!   as from the real watch cache;
//! - after [`FakeApi::compact`], a watch from an older resourceVersion gets HTTP 200 with one
//!   `ERROR` event (410 Expired) and ends: that is how the real apiserver reports expiry, and
//!   the only form that makes kube's watcher re-list (an HTTP 410 on the watch request makes
//!   it retry the same version forever);
//! - controls for the "no event lost" scenarios: [`FakeApi::end_watches`],
//!   [`FakeApi::fail_next`], [`FakeApi::watches_started`] and a request log.
//!
//! The server runs on its own thread and runtime, so sync (root e2e) and async tests use it
//! alike; dropping the last handle stops it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

pub use objects::*;

/// One kind of object the fake serves.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

/// Everything the agent reads (the contract's watchers, and Secrets for the CA).
pub const RESOURCES: &[Resource] = &[
    Resource {
        kind: "Pod",
        api_version: "v1",
        plural: "pods",
        namespaced: true,
    },
    Resource {
        kind: "Node",
        api_version: "v1",
        plural: "nodes",
        namespaced: false,
    },
    Resource {
        kind: "Namespace",
        api_version: "v1",
        plural: "namespaces",
        namespaced: false,
    },
    Resource {
        kind: "Service",
        api_version: "v1",
        plural: "services",
        namespaced: true,
    },
    Resource {
        kind: "Secret",
        api_version: "v1",
        plural: "secrets",
        namespaced: true,
    },
    Resource {
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        plural: "endpointslices",
        namespaced: true,
    },
    Resource {
        kind: "MeshAuthorizationPolicy",
        api_version: "mesh.example.io/v1alpha1",
        plural: "meshauthorizationpolicies",
        namespaced: true,
    },
    Resource {
        kind: "HTTPRoute",
        api_version: "gateway.networking.k8s.io/v1",
        plural: "httproutes",
        namespaced: true,
    },
    Resource {
        kind: "GRPCRoute",
        api_version: "gateway.networking.k8s.io/v1",
        plural: "grpcroutes",
        namespaced: true,
    },
];

/// The resource of `kind` ("Pod", "HTTPRoute", ...).
pub fn resource(kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Added,
    Modified,
    Deleted,
}

/// One entry of the event log. `before` is the object as it was before a modification, so a
/// watch with a selector can tell "started matching" (ADDED) from "stopped matching" (DELETED).
#[derive(Debug)]
struct Event {
    rv: u64,
    resource: &'static Resource,
    change: Change,
    object: Value,
    before: Option<Value>,
}

/// One request as the server saw it, with the status it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// The kind the path named, if any.
    pub kind: Option<&'static str>,
    pub watch: bool,
    pub status: u16,
    /// A watch answered with the 410 Expired ERROR event (its version was compacted).
    pub expired: bool,
}

impl ApiRequest {
    pub fn resource_version(&self) -> Option<&str> {
        self.query.get("resourceVersion").map(String::as_str)
    }
}

impl fmt::Display for ApiRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.watch { "watch" } else { "get/list" };
        write!(f, "{verb} {} {}", self.kind.unwrap_or("?"), self.path)?;
        if let Some(rv) = self.resource_version() {
            write!(f, " rv={rv}")?;
        }
        write!(f, " -> {}", self.status)
    }
}

/// Answers matching requests with an error status instead of serving them.
#[derive(Debug)]
struct FailRule {
    kind: Option<&'static str>,
    watch_only: bool,
    remaining: usize,
    status: u16,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (kind, namespace ("" for cluster-scoped), name) -> object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    log: Vec<Arc<Event>>,
    /// History up to this resourceVersion is gone: a watch from older gets 410 Expired.
    compacted: u64,
    uids: u64,
    failures: Vec<FailRule>,
    requests: Vec<ApiRequest>,
    watches_started: BTreeMap<&'static str, usize>,
    /// Kinds whose CRD is "not installed": every path of theirs answers 404.
    uninstalled: Vec<&'static str>,
}

/// What [`FakeApi::end_watches`] tells every open watch.
#[derive(Clone, Copy, Debug)]
struct EndWatches {
    gone: bool,
}

struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
    control: broadcast::Sender<EndWatches>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the server's state from the next assertion.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Stops the server thread when the last [`FakeApi`] handle is dropped.
struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A running fake API server. Clones share the server.
#[derive(Clone)]
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _thread: Arc<ServerThread>,
}

impl FakeApi {
    /// Serves on `addr` (port 0: any free port) in the caller's network namespace.
    pub fn start(addr: SocketAddr) -> Result<FakeApi> {
        let listener = StdListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        FakeApi::serve(listener)
    }

    /// Serves on `addr` inside the network namespace at `netns_path` (a simulated node's), so
    /// that processes there reach it on that namespace's loopback. A socket stays in the
    /// namespace it was created in; a short-lived thread enters the namespace to create it,
    /// so no other code of the test runs in the wrong namespace.
    pub fn start_in_netns(netns_path: &Path, addr: SocketAddr) -> Result<FakeApi> {
        let ns = std::fs::File::open(netns_path)
            .with_context(|| format!("opening netns {}", netns_path.display()))?;
        let shown = netns_path.display().to_string();
        let listener = std::thread::spawn(move || -> Result<StdListener> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns(CLONE_NEWNET)")?;
            StdListener::bind(addr).with_context(|| format!("binding {addr}"))
        })
        .join()
        .map_err(|_| anyhow!("bind thread panicked"))?
        .with_context(|| format!("fake API server in netns {shown}"))?;
        FakeApi::serve(listener)
    }

    fn serve(listener: StdListener) -> Result<FakeApi> {
        let addr = listener.local_addr().context("local_addr")?;
        listener
            .set_nonblocking(true)
            .context("set_nonblocking on the fake API listener")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            events: broadcast::channel(4096).0,
            control: broadcast::channel(64).0,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("fake API runtime")?;
        let server = shared.clone();
        std::thread::Builder::new()
            .name(format!("fake-kube-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fake API: cannot register listener: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = accept_loop(listener, server) => {}
                    }
                });
                // Open watches and connections are tasks of this runtime: they end here.
                runtime.shutdown_background();
            })
            .context("spawning the fake API thread")?;
        Ok(FakeApi {
            shared,
            addr,
            _thread: Arc::new(ServerThread {
                stop: Some(stop_tx),
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server: plain http and a user without credentials, which
    /// kube accepts (what the agent gets through `kubernetes.kubeconfig`).
    pub fn kubeconfig(&self, path: &Path) -> Result<()> {
        self.kubeconfig_for(path, &self.url())
    }

    /// A kubeconfig naming `server` (`http://host:port`): for a client that reaches this
    /// server at another address than the one it is bound to (0.0.0.0, another netns).
    pub fn kubeconfig_for(&self, path: &Path, server: &str) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n\
             users:\n- name: nobody\n  user: {{}}\ncurrent-context: fake\n"
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// A client for this server. Needs a tokio runtime (the client spawns its buffer task).
    pub fn client(&self) -> Result<kube::Client> {
        let url = self.url().parse().context("fake API url")?;
        kube::Client::try_from(kube::Config::new(url)).context("kube client for the fake API")
    }

    /// Creates or replaces an object (ADDED or MODIFIED), stamps `metadata.resourceVersion`
    /// (and a `uid` when missing) and returns it as stored.
    ///
    /// Panics on an object of an unknown kind or without a name: a bug in the test.
    pub fn apply(&self, object: impl Into<Value>) -> Value {
        let mut object: Value = object.into();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let res = resource(&kind).unwrap_or_else(|| panic!("fake API: unknown kind in {object}"));
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("fake API: no metadata.name in {object}"))
            .to_string();
        let namespace = if res.namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_else(|| panic!("fake API: {kind} {name} needs metadata.namespace"))
                .to_string()
        } else {
            String::new()
        };
        object["apiVersion"] = json!(res.api_version);
        let mut state = self.shared.state();
        let key = (res.kind, namespace, name);
        let before = state.objects.get(&key).cloned();
        if object["metadata"]["uid"].as_str().is_none() {
            object["metadata"]["uid"] = match &before {
                Some(b) => b["metadata"]["uid"].clone(),
                None => {
                    state.uids += 1;
                    json!(format!("00000000-0000-4000-8000-{:012}", state.uids))
                }
            };
        }
        let change = if before.is_some() {
            Change::Modified
        } else {
            Change::Added
        };
        record(
            &self.shared,
            &mut state,
            res,
            change,
            object,
            before,
            Some(key),
        )
    }

    /// Deletes an object (DELETED with a new resourceVersion); returns it, or None if there
    /// was none. `namespace` is ignored for cluster-scoped kinds.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = resource(kind).unwrap_or_else(|| panic!("fake API: unknown kind {kind}"));
        let namespace = if res.namespaced { namespace } else { "" };
        let mut state = self.shared.state();
        let key = (res.kind, namespace.to_string(), name.to_string());
        let object = state.objects.remove(&key)?;
        Some(record(
            &self.shared,
            &mut state,
            res,
            Change::Deleted,
            object,
            None,
            None,
        ))
    }

    /// The stored object, if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = resource(kind)?;
        let namespace = if res.namespaced { namespace } else { "" };
        self.shared
            .state()
            .objects
            .get(&(res.kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state().rv
    }

    /// Forgets the event log: a watch from any resourceVersion older than now gets 410.
    pub fn compact(&self) {
        let mut state = self.shared.state();
        state.compacted = state.rv;
        state.log.clear();
    }

    /// Ends every open watch, like an apiserver restart or a dropped connection; with `gone`,
    /// each first gets a 410 Expired ERROR event (the watch cache fell too far behind).
    pub fn end_watches(&self, gone: bool) {
        let _ = self.shared.control.send(EndWatches { gone });
    }

    /// Answers the next `n` requests (any kind, list or watch) with `status` (500, 503...).
    pub fn fail_next(&self, n: usize, status: u16) {
        self.add_failure(None, false, n, status);
    }

    /// Answers the next `n` watch requests of `kind` with `status`, leaving every other
    /// request alone (the agent runs one watcher per kind; this picks one).
    pub fn fail_next_watches(&self, kind: &str, n: usize, status: u16) {
        let res = resource(kind).unwrap_or_else(|| panic!("fake API: unknown kind {kind}"));
        self.add_failure(Some(res.kind), true, n, status);
    }

    /// Answers the next `n` requests of `kind`, lists and watches, with `status`. With a
    /// large `n` this holds a kind's watcher off the server (it retries with backoff) until
    /// [`FakeApi::clear_failures`]: changes made meanwhile are then seen only through the
    /// resume (replay, or 410 and a re-list after [`FakeApi::compact`]), never live.
    pub fn fail_next_requests(&self, kind: &str, n: usize, status: u16) {
        let res = resource(kind).unwrap_or_else(|| panic!("fake API: unknown kind {kind}"));
        self.add_failure(Some(res.kind), false, n, status);
    }

    /// Makes `kind` answer 404 everywhere, like a cluster without its CRD (e.g. no Gateway
    /// API installed).
    pub fn uninstall(&self, kind: &str) {
        let res = resource(kind).unwrap_or_else(|| panic!("fake API: unknown kind {kind}"));
        self.shared.state().uninstalled.push(res.kind);
    }

    /// Drops every pending injected failure.
    pub fn clear_failures(&self) {
        self.shared.state().failures.clear();
    }

    fn add_failure(&self, kind: Option<&'static str>, watch_only: bool, n: usize, status: u16) {
        self.shared.state().failures.push(FailRule {
            kind,
            watch_only,
            remaining: n,
            status,
        });
    }

    /// How many watches of `kind` were opened (answered 200) so far.
    pub fn watches_started(&self, kind: &str) -> usize {
        self.shared
            .state()
            .watches_started
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.shared.state().requests.clone()
    }

    /// Successful lists (not watches, not failed) of `kind` so far.
    pub fn lists(&self, kind: &str) -> usize {
        self.shared
            .state()
            .requests
            .iter()
            .filter(|r| r.kind == Some(kind) && !r.watch && r.status == 200)
            .count()
    }

    /// Polls (async) until `kind` has had at least `n` watches opened; Err after `timeout`.
    pub async fn wait_watches(&self, kind: &str, n: usize, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.watches_started(kind) < n {
            if tokio::time::Instant::now() > deadline {
                return Err(anyhow!(
                    "{kind}: {} watches opened, waited for {n}; requests:\n{}",
                    self.watches_started(kind),
                    self.requests_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Like [`FakeApi::wait_watches`], blocking the calling thread (sync tests).
    pub fn wait_watches_blocking(&self, kind: &str, n: usize, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while self.watches_started(kind) < n {
            if std::time::Instant::now() > deadline {
                return Err(anyhow!(
                    "{kind}: {} watches opened, waited for {n}; requests:\n{}",
                    self.watches_started(kind),
                    self.requests_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The request log, one line each (for failure messages).
    pub fn requests_text(&self) -> String {
        self.requests().iter().map(|r| format!("  {r}\n")).collect()
    }
}

/// Bumps the resourceVersion, stamps it, updates the store, logs and broadcasts the change.
/// Runs under the state lock, so a watch that replays the log and then subscribes under the
/// same lock neither misses nor repeats an event.
fn record(
    shared: &Shared,
    state: &mut State,
    res: &'static Resource,
    change: Change,
    mut object: Value,
    before: Option<Value>,
    store_key: Option<(&'static str, String, String)>,
) -> Value {
    state.rv += 1;
    object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
    if let Some(key) = store_key {
        state.objects.insert(key, object.clone());
    }
    let event = Arc::new(Event {
        rv: state.rv,
        resource: res,
        change,
        object: object.clone(),
        before,
    });
    state.log.push(event.clone());
    // No receiver (no open watch) is fine.
    let _ = shared.events.send(event);
    object
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("fake API: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req)) }
            });
            // A client that goes away mid-watch ends the connection; nothing to report.
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// What a request path names.
struct Target {
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
}

/// `/api/v1/...` or `/apis/{group}/{version}/...`, then `{plural}[/{name}]` or
/// `namespaces/{ns}/{plural}[/{name}]`.
fn route(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .find(|r| r.api_version == api_version && r.plural == plural)
    };
    let (res, namespace, name) = match rest {
        [plural] => (find(plural)?, None, None),
        ["namespaces", ns, plural] => (find(plural)?, Some(ns.to_string()), None),
        ["namespaces", ns, plural, name] => {
            (find(plural)?, Some(ns.to_string()), Some(name.to_string()))
        }
        [plural, name] => (find(plural)?, None, Some(name.to_string())),
        _ => return None,
    };
    // A namespaced path for a cluster-scoped kind does not exist, and vice versa for GET.
    if namespace.is_some() && !res.namespaced {
        return None;
    }
    if namespace.is_none() && name.is_some() && res.namespaced {
        return None;
    }
    Some(Target {
        res,
        namespace,
        name,
    })
}

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let uri = req.uri().clone();
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let target = route(uri.path());
    let mut state = shared.state();
    let mut log = ApiRequest {
        method: req.method().to_string(),
        path: uri.path().to_string(),
        query: query.clone(),
        kind: target.as_ref().map(|t| t.res.kind),
        watch,
        status: 200,
        expired: false,
    };
    let (response, expired) = respond(shared, &mut state, req.method(), target, &query, watch);
    log.status = response.status().as_u16();
    log.expired = expired;
    state.requests.push(log);
    response
}

fn respond(
    shared: &Shared,
    state: &mut State,
    method: &Method,
    target: Option<Target>,
    query: &BTreeMap<String, String>,
    watch: bool,
) -> (Response<Body>, bool) {
    let kind = target.as_ref().map(|t| t.res.kind);
    if let Some(rule) = state.failures.iter_mut().find(|f| {
        f.remaining > 0 && (f.kind.is_none() || f.kind == kind) && (!f.watch_only || watch)
    }) {
        rule.remaining -= 1;
        let code = rule.status;
        state.failures.retain(|f| f.remaining > 0);
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            status_response(status, "InternalError", "injected failure"),
            false,
        );
    }
    if method != Method::GET {
        let r = status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake API server is read-only",
        );
        return (r, false);
    }
    let Some(target) = target.filter(|t| !state.uninstalled.contains(&t.res.kind)) else {
        let r = status_response(StatusCode::NOT_FOUND, "NotFound", "no such resource");
        return (r, false);
    };
    let selector = match Selector::from_query(query) {
        Ok(s) => s,
        Err(e) => {
            return (
                status_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
                false,
            );
        }
    };
    let filter = Filter {
        res: target.res,
        namespace: target.namespace.clone(),
        selector,
    };
    if let Some(name) = &target.name {
        let key = (
            target.res.kind,
            target.namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        let r = match state.objects.get(&key) {
            Some(o) => json_response(StatusCode::OK, o),
            None => status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} \"{name}\" not found", target.res.plural),
            ),
        };
        return (r, false);
    }
    if watch {
        return start_watch(shared, state, filter, query);
    }
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|((kind, _, _), o)| *kind == target.res.kind && filter.matches(o))
        .map(|(_, o)| o.clone())
        .collect();
    let list = json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", target.res.kind),
            "apiVersion": target.res.api_version,
            "metadata": {"resourceVersion": state.rv.to_string()},
            "items": items,
        }),
    );
    (list, false)
}

/// Which objects one list or watch wants.
struct Filter {
    res: &'static Resource,
    namespace: Option<String>,
    selector: Selector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let in_namespace = self
            .namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns));
        in_namespace && self.selector.matches(object)
    }

    /// The watch event this change is for a watcher with this filter, if any.
    fn event_for(&self, event: &Event) -> Option<&'static str> {
        if event.resource != self.res {
            return None;
        }
        let now = self.matches(&event.object);
        let then = event.before.as_ref().is_some_and(|b| self.matches(b));
        match (event.change, then, now) {
            (Change::Added, _, true) => Some("ADDED"),
            (Change::Deleted, _, true) => Some("DELETED"),
            (Change::Modified, true, true) => Some("MODIFIED"),
            (Change::Modified, false, true) => Some("ADDED"),
            (Change::Modified, true, false) => Some("DELETED"),
            _ => None,
        }
    }
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

fn expired_line(message: String) -> Bytes {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": "Expired", "code": 410,
    });
    watch_line("ERROR", &status)
}

/// Starts a watch under the state lock: the replay is taken from the log and the live
/// subscription made at the same instant.
fn start_watch(
    shared: &Shared,
    state: &mut State,
    filter: Filter,
    query: &BTreeMap<String, String>,
) -> (Response<Body>, bool) {
    let from: Option<u64> = query
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty())
        .and_then(|rv| rv.parse().ok());
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let mut first: Vec<Bytes> = Vec::new();
    let mut expired = false;
    match from {
        Some(from) if from < state.compacted => {
            first.push(expired_line(format!(
                "too old resource version: {from} ({})",
                state.compacted
            )));
            expired = true;
        }
        Some(from) if from > 0 => {
            for event in state.log.iter().filter(|e| e.rv > from) {
                if let Some(kind) = filter.event_for(event) {
                    first.push(watch_line(kind, &event.object));
                }
            }
        }
        // No version or "0": the current state as ADDED events, then live (apiserver
        // semantics; kube's watcher always passes the version of its list).
        _ => {
            for ((kind, _, _), object) in &state.objects {
                if *kind == filter.res.kind && filter.matches(object) {
                    first.push(watch_line("ADDED", object));
                }
            }
        }
    }
    *state.watches_started.entry(filter.res.kind).or_insert(0) += 1;
    if !expired && bookmarks {
        let bookmark = json!({
            "kind": filter.res.kind, "apiVersion": filter.res.api_version,
            "metadata": {"resourceVersion": state.rv.to_string()},
        });
        first.push(watch_line("BOOKMARK", &bookmark));
    }
    let live = shared.events.subscribe();
    let control = shared.control.subscribe();
    let current = state.rv;
    tokio::spawn(async move {
        for line in first {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if !expired {
            stream_live(tx, live, control, filter, timeout, current).await;
        }
    });
    let body = StreamBody::new(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }));
    let response = Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .expect("static response parts");
    (response, expired)
}

async fn stream_live(
    tx: mpsc::Sender<Bytes>,
    mut live: broadcast::Receiver<Arc<Event>>,
    mut control: broadcast::Receiver<EndWatches>,
    filter: Filter,
    timeout: Option<Duration>,
    mut last_rv: u64,
) {
    let ends = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(ends);
    loop {
        // biased: a control message sent before an event must win, so that "end the watch,
        // then change objects" in a test always means the change is missed by this watch.
        tokio::select! {
            biased;
            end = control.recv() => {
                if let Ok(EndWatches { gone: true }) = end {
                    let _ = tx.send(expired_line(format!(
                        "too old resource version: {last_rv}"
                    ))).await;
                }
                return;
            }
            _ = tx.closed() => return,
            _ = &mut ends => return,
            event = live.recv() => match event {
                Ok(event) => {
                    last_rv = event.rv;
                    if let Some(kind) = filter.event_for(&event)
                        && tx.send(watch_line(kind, &event.object)).await.is_err()
                    {
                        return;
                    }
                }
                // Lagged: this watch cannot promise every event any more; ending it makes the
                // client resume from its last version and get the rest replayed.
                Err(_) => return,
            },
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("static response parts")
}

fn status_response(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason,
            "code": status.as_u16(),
        }),
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

/// A parsed fieldSelector + labelSelector. Fields are dotted paths into the object (a
/// missing field reads as ""); labels are `metadata.labels`.
#[derive(Debug, Default)]
struct Selector {
    fields: Vec<Term>,
    labels: Vec<Term>,
}

impl Selector {
    fn from_query(query: &BTreeMap<String, String>) -> Result<Selector, String> {
        let mut selector = Selector::default();
        if let Some(f) = query.get("fieldSelector") {
            selector.fields = parse_terms(f, false)?;
        }
        if let Some(l) = query.get("labelSelector") {
            selector.labels = parse_terms(l, true)?;
        }
        Ok(selector)
    }

    fn matches(&self, object: &Value) -> bool {
        let field = |key: &str| field_value(object, key).unwrap_or_default();
        let label = |key: &str| {
            object["metadata"]["labels"][key]
                .as_str()
                .map(str::to_string)
        };
        self.fields.iter().all(|t| match t {
            Term::Eq(k, v) => field(k) == *v,
            Term::Ne(k, v) => field(k) != *v,
            Term::Exists(_) | Term::Absent(_) => false,
        }) && self.labels.iter().all(|t| match t {
            Term::Eq(k, v) => label(k).as_deref() == Some(v.as_str()),
            Term::Ne(k, v) => label(k).as_deref() != Some(v.as_str()),
            Term::Exists(k) => label(k).is_some(),
            Term::Absent(k) => label(k).is_none(),
        })
    }
}

/// `a=b,c!=d` (and for labels also `e`, `!f`). Set-based forms are refused.
fn parse_terms(text: &str, labels: bool) -> Result<Vec<Term>, String> {
    let what = if labels {
        "labelSelector"
    } else {
        "fieldSelector"
    };
    let mut terms = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains(" in ") || part.contains("notin") || part.contains('(') {
            return Err(format!(
                "{what} {text:?}: set-based terms are not supported"
            ));
        }
        let term = if let Some((k, v)) = part.split_once("!=") {
            Term::Ne(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = part.split_once("==") {
            Term::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = part.split_once('=') {
            Term::Eq(k.trim().to_string(), v.trim().to_string())
        } else if !labels {
            return Err(format!("{what} {text:?}: {part:?} is not key=value"));
        } else if let Some(k) = part.strip_prefix('!') {
            Term::Absent(k.trim().to_string())
        } else {
            Term::Exists(part.to_string())
        };
        terms.push(term);
    }
    Ok(terms)
}

/// The value at a dotted path (`spec.nodeName`) as a string, for field selectors.
fn field_value(object: &Value, path: &str) -> Option<String> {
    let value = path.split('.').try_fold(object, |v, key| v.get(key))?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Builders of the objects the agent reads, as the API server would return them.
pub mod objects {
    use std::net::IpAddr;

    use serde_json::{Map, Value, json};

    fn labels_map(labels: &[(&str, &str)]) -> Map<String, Value> {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect()
    }

    /// A Namespace with labels (enrolment: `mesh.example.io/mode: enabled`).
    pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels_map(labels)},
            "status": {"phase": "Active"},
        })
    }

    /// A Node with one InternalIP.
    pub fn node(name: &str, internal_ip: IpAddr) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name},
            "status": {"addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": internal_ip.to_string()},
            ]},
        })
    }

    /// A running pod scheduled on a node; see the setters.
    #[derive(Clone, Debug)]
    pub struct PodBuilder {
        namespace: String,
        name: String,
        uid: String,
        node: String,
        ips: Vec<IpAddr>,
        qos: String,
        labels: Vec<(String, String)>,
        service_account: Option<String>,
        phase: String,
        host_network: bool,
    }

    /// A pod `namespace/name` on `node`, phase Running, QoS BestEffort, a uid derived from the
    /// name (set a real-looking one with [`PodBuilder::uid`]), no IP yet.
    pub fn pod(namespace: &str, name: &str, node: &str) -> PodBuilder {
        PodBuilder {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: format!("uid-{namespace}-{name}"),
            node: node.to_string(),
            ips: Vec::new(),
            qos: "BestEffort".to_string(),
            labels: Vec::new(),
            service_account: None,
            phase: "Running".to_string(),
            host_network: false,
        }
    }

    impl PodBuilder {
        pub fn uid(mut self, uid: &str) -> Self {
            self.uid = uid.to_string();
            self
        }
        /// status.podIP is the first; status.podIPs all of them.
        pub fn ip(mut self, ip: IpAddr) -> Self {
            self.ips.push(ip);
            self
        }
        /// Guaranteed | Burstable | BestEffort.
        pub fn qos(mut self, qos: &str) -> Self {
            self.qos = qos.to_string();
            self
        }
        pub fn label(mut self, key: &str, value: &str) -> Self {
            self.labels.push((key.to_string(), value.to_string()));
            self
        }
        pub fn service_account(mut self, sa: &str) -> Self {
            self.service_account = Some(sa.to_string());
            self
        }
        pub fn phase(mut self, phase: &str) -> Self {
            self.phase = phase.to_string();
            self
        }
        pub fn host_network(mut self, on: bool) -> Self {
            self.host_network = on;
            self
        }
        pub fn uid_str(&self) -> &str {
            &self.uid
        }
        pub fn build(&self) -> Value {
            let labels: Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            let mut spec = json!({
                "nodeName": self.node,
                "containers": [{"name": "app", "image": "example/app:1"}],
            });
            if let Some(sa) = &self.service_account {
                spec["serviceAccountName"] = json!(sa);
            }
            if self.host_network {
                spec["hostNetwork"] = json!(true);
            }
            let mut status = json!({"phase": self.phase, "qosClass": self.qos});
            if let Some(first) = self.ips.first() {
                status["podIP"] = json!(first.to_string());
                status["podIPs"] = self
                    .ips
                    .iter()
                    .map(|ip| json!({"ip": ip.to_string()}))
                    .collect();
            }
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": self.name, "namespace": self.namespace, "uid": self.uid,
                    "labels": labels,
                },
                "spec": spec,
                "status": status,
            })
        }
    }

    impl From<PodBuilder> for Value {
        fn from(p: PodBuilder) -> Value {
            p.build()
        }
    }

    impl From<&PodBuilder> for Value {
        fn from(p: &PodBuilder) -> Value {
            p.build()
        }
    }

    /// One port of a Service: `targetPort` numeric, `appProtocol` optional.
    #[derive(Clone, Debug)]
    pub struct ServicePortSpec {
        pub name: Option<String>,
        pub port: u16,
        pub target_port: u16,
        pub app_protocol: Option<String>,
    }

    pub fn service_port(name: Option<&str>, port: u16, target_port: u16) -> ServicePortSpec {
        ServicePortSpec {
            name: name.map(str::to_string),
            port,
            target_port,
            app_protocol: None,
        }
    }

    impl ServicePortSpec {
        pub fn app_protocol(mut self, p: &str) -> Self {
            self.app_protocol = Some(p.to_string());
            self
        }
    }

    /// A ClusterIP Service (`cluster_ips` empty: headless, clusterIP None).
    pub fn service(
        namespace: &str,
        name: &str,
        cluster_ips: &[IpAddr],
        ports: &[ServicePortSpec],
    ) -> Value {
        let ips: Vec<String> = cluster_ips.iter().map(IpAddr::to_string).collect();
        let (cluster_ip, cluster_ips) = match ips.first() {
            Some(first) => (json!(first), json!(ips)),
            None => (json!("None"), json!(["None"])),
        };
        let ports: Vec<Value> = ports
            .iter()
            .map(|p| {
                let mut v = json!({"port": p.port, "targetPort": p.target_port, "protocol": "TCP"});
                if let Some(n) = &p.name {
                    v["name"] = json!(n);
                }
                if let Some(a) = &p.app_protocol {
                    v["appProtocol"] = json!(a);
                }
                v
            })
            .collect();
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": cluster_ips,
                "ports": ports, "selector": {"app": name},
            },
        })
    }

    /// One endpoint of a slice: a pod's IP on a node.
    #[derive(Clone, Debug)]
    pub struct EndpointSpec {
        pub ip: IpAddr,
        pub node: String,
        pub pod: String,
        pub ready: bool,
    }

    pub fn endpoint(ip: IpAddr, node: &str, pod: &str) -> EndpointSpec {
        EndpointSpec {
            ip,
            node: node.to_string(),
            pod: pod.to_string(),
            ready: true,
        }
    }

    impl EndpointSpec {
        pub fn ready(mut self, ready: bool) -> Self {
            self.ready = ready;
            self
        }
    }

    /// An EndpointSlice of `service` (label `kubernetes.io/service-name`), IPv4, with named
    /// ports (`(name, port)`) and endpoints whose targetRef is the pod.
    pub fn endpoint_slice(
        namespace: &str,
        name: &str,
        service: &str,
        ports: &[(Option<&str>, u16)],
        endpoints: &[EndpointSpec],
    ) -> Value {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p)| {
                let mut v = json!({"port": p, "protocol": "TCP"});
                if let Some(n) = n {
                    v["name"] = json!(n);
                }
                v
            })
            .collect();
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|e| {
                json!({
                    "addresses": [e.ip.to_string()],
                    "conditions": {"ready": e.ready, "serving": e.ready, "terminating": false},
                    "nodeName": e.node,
                    "targetRef": {"kind": "Pod", "name": e.pod, "namespace": namespace},
                })
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": name, "namespace": namespace,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        })
    }

    /// A MeshAuthorizationPolicy with the given spec (written as in the CRD).
    pub fn authorization_policy(namespace: &str, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "mesh.example.io/v1alpha1", "kind": "MeshAuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        })
    }

    fn route(kind: &str, namespace: &str, name: &str, service: &str, mut spec: Value) -> Value {
        spec["parentRefs"] = json!([{"group": "", "kind": "Service", "name": service}]);
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        })
    }

    /// An HTTPRoute attached to a Service (GAMMA); `spec` holds the rest (`rules`, ...).
    pub fn http_route(namespace: &str, name: &str, service: &str, spec: Value) -> Value {
        route("HTTPRoute", namespace, name, service, spec)
    }

    /// A GRPCRoute attached to a Service (GAMMA); `spec` holds the rest.
    pub fn grpc_route(namespace: &str, name: &str, service: &str, spec: Value) -> Value {
        route("GRPCRoute", namespace, name, service, spec)
    }

    /// An Opaque Secret; values are base64-encoded here as the API returns them.
    pub fn secret(namespace: &str, name: &str, data: &[(&str, &[u8])]) -> Value {
        let data: Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(base64(v))))
            .collect();
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "data": data,
        })
    }

    /// Standard base64 with padding (what `data` of a Secret holds).
    pub fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_cluster_namespaced_and_named_paths() {
        let t = route("/api/v1/pods").unwrap();
        assert_eq!((t.res.kind, t.namespace, t.name), ("Pod", None, None));
        let t = route("/api/v1/namespaces/ns1/services").unwrap();
        assert_eq!(
            (t.res.kind, t.namespace.as_deref(), t.name),
            ("Service", Some("ns1"), None)
        );
        let t = route("/api/v1/namespaces/mesh-system/secrets/ca").unwrap();
        assert_eq!((t.res.kind, t.name.as_deref()), ("Secret", Some("ca")));
        let t = route("/api/v1/namespaces/ns1").unwrap();
        assert_eq!((t.res.kind, t.name.as_deref()), ("Namespace", Some("ns1")));
        let t = route("/apis/gateway.networking.k8s.io/v1/namespaces/a/grpcroutes").unwrap();
        assert_eq!(t.res.kind, "GRPCRoute");
        let t = route("/apis/mesh.example.io/v1alpha1/meshauthorizationpolicies").unwrap();
        assert_eq!(t.res.kind, "MeshAuthorizationPolicy");
        assert!(route("/api/v1/pods/x").is_none(), "pods are namespaced");
        assert!(
            route("/api/v1/namespaces/a/nodes").is_none(),
            "nodes are not"
        );
        assert!(route("/apis/discovery.k8s.io/v1beta1/endpointslices").is_none());
    }

    #[test]
    fn selectors_filter_fields_and_labels() {
        let pod = pod("ns", "a", "node1").label("app", "web").build();
        let q = |f: &str, l: &str| {
            let mut q = BTreeMap::new();
            if !f.is_empty() {
                q.insert("fieldSelector".to_string(), f.to_string());
            }
            if !l.is_empty() {
                q.insert("labelSelector".to_string(), l.to_string());
            }
            Selector::from_query(&q).unwrap()
        };
        assert!(q("spec.nodeName=node1", "").matches(&pod));
        assert!(!q("spec.nodeName=node2", "").matches(&pod));
        assert!(q("metadata.name==a,spec.nodeName!=node2", "").matches(&pod));
        assert!(q("", "app=web").matches(&pod));
        assert!(q("", "app,!tier").matches(&pod));
        assert!(!q("", "app!=web").matches(&pod));
        assert!(q("", "tier!=x").matches(&pod), "!= matches a missing label");
        let mut bad = BTreeMap::new();
        bad.insert("labelSelector".to_string(), "app in (web)".to_string());
        assert!(Selector::from_query(&bad).is_err());
    }

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn modification_out_of_a_selector_is_a_delete_for_that_watch() {
        let filter = Filter {
            res: resource("Pod").unwrap(),
            namespace: None,
            selector: Selector {
                fields: vec![Term::Eq("spec.nodeName".into(), "node1".into())],
                labels: vec![],
            },
        };
        let on = |n: &str| pod("ns", "a", n).build();
        let event = |change, object, before| Event {
            rv: 1,
            resource: resource("Pod").unwrap(),
            change,
            object,
            before,
        };
        let moved_away = event(Change::Modified, on("node2"), Some(on("node1")));
        assert_eq!(filter.event_for(&moved_away), Some("DELETED"));
        let moved_here = event(Change::Modified, on("node1"), Some(on("node2")));
        assert_eq!(filter.event_for(&moved_here), Some("ADDED"));
        let elsewhere = event(Change::Added, on("node2"), None);
        assert_eq!(filter.event_for(&elsewhere), None);
    }

    /// The probe's scenario against the real kube watcher (plan §2.2): a broken watch resumes
    /// from its last version and gets the gap replayed; a compacted history (410 ERROR event,
    /// on a resume or on an open watch) makes it re-list, and the re-list drops an object
    /// deleted in the gap. Also checks the server's request shapes on the way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kube_watcher_loses_nothing_across_breaks_and_expiry() {
        use futures::StreamExt;
        use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
        use kube::runtime::watcher::{self, Event as W};
        use std::collections::BTreeSet;

        let api = FakeApi::start("127.0.0.1:0".parse().unwrap()).unwrap();
        api.apply(pod("ns", "a", "node1"));
        api.apply(pod("ns", "b", "node1"));
        api.apply(pod("ns", "x", "node2"));
        let dir = std::env::temp_dir().join(format!("fake-kube-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        api.kubeconfig(&path).unwrap();
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&path).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let client = kube::Client::try_from(config).unwrap();
        let gvk = GroupVersionKind::gvk("", "v1", "Pod");
        let pods: Api<DynamicObject> =
            Api::all_with(client, &ApiResource::from_gvk_with_plural(&gvk, "pods"));
        let cfg = watcher::Config::default().fields("spec.nodeName=node1");

        #[derive(Default)]
        struct Seen {
            names: BTreeSet<String>,
            buffer: BTreeSet<String>,
            relists: usize,
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let feed = seen.clone();
        // Driven in its own task: a watcher only makes requests while polled.
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher::watcher(pods, cfg));
            while let Some(event) = stream.next().await {
                let mut s = feed.lock().unwrap();
                let name = |o: &DynamicObject| o.metadata.name.clone().unwrap();
                match event {
                    Ok(W::Init) => s.buffer.clear(),
                    Ok(W::InitApply(o)) => {
                        s.buffer.insert(name(&o));
                    }
                    Ok(W::InitDone) => {
                        s.names = std::mem::take(&mut s.buffer);
                        s.relists += 1;
                    }
                    Ok(W::Apply(o)) => {
                        s.names.insert(name(&o));
                    }
                    Ok(W::Delete(o)) => {
                        s.names.remove(&name(&o));
                    }
                    Err(_) => {}
                }
            }
        });
        let until = |want: &[&str], relists: usize| {
            let seen = seen.clone();
            let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
            let api = api.clone();
            async move {
                for _ in 0..1000 {
                    {
                        let s = seen.lock().unwrap();
                        if s.names == want && s.relists == relists {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let s = seen.lock().unwrap();
                panic!(
                    "saw {:?} after {} lists, want {want:?} after {relists}; requests:\n{}",
                    s.names,
                    s.relists,
                    api.requests_text()
                );
            }
        };
        until(&["a", "b"], 1).await;
        api.wait_watches("Pod", 1, Duration::from_secs(10))
            .await
            .unwrap();
        api.apply(pod("ns", "c", "node1"));
        until(&["a", "b", "c"], 1).await;

        api.end_watches(false);
        api.delete("Pod", "ns", "b");
        api.apply(pod("ns", "d", "node1"));
        until(&["a", "c", "d"], 1).await;

        api.wait_watches("Pod", 2, Duration::from_secs(10))
            .await
            .unwrap();
        api.delete("Pod", "ns", "a");
        api.apply(pod("ns", "e", "node1"));
        // A change the Pod watch never sees moves the version past the last one the watcher
        // saw; compacting there, before the watch ends, makes its resume expire (410, then a
        // re-list) whether or not the open watch delivered the two changes before it ended.
        api.apply(service("ns", "other", &["10.96.0.9".parse().unwrap()], &[]));
        api.compact();
        api.end_watches(false);
        until(&["c", "d", "e"], 2).await;

        api.wait_watches("Pod", 4, Duration::from_secs(10))
            .await
            .unwrap();
        api.compact();
        api.end_watches(true);
        api.delete("Pod", "ns", "c");
        until(&["d", "e"], 3).await;

        // A watch answered 500 is retried (no re-list needed: nothing expired).
        api.wait_watches("Pod", 5, Duration::from_secs(10))
            .await
            .unwrap();
        api.fail_next_watches("Pod", 1, 500);
        api.end_watches(false);
        api.apply(pod("ns", "f", "node1"));
        until(&["d", "e", "f"], 3).await;
        task.abort();

        let requests = api.requests();
        assert!(requests.iter().all(|r| r.kind == Some("Pod")));
        assert!(
            requests
                .iter()
                .all(|r| r.query["fieldSelector"] == "spec.nodeName=node1")
        );
        assert!(requests.iter().any(|r| r.watch && r.status == 500));
        assert_eq!(api.lists("Pod"), 3, "{}", api.requests_text());
    }

    #[tokio::test]
    async fn get_and_namespaced_list_and_unknown_paths() {
        let api = FakeApi::start("127.0.0.1:0".parse().unwrap()).unwrap();
        api.apply(secret("mesh-system", "ca", &[("ca.crt", b"pem")]));
        api.apply(service("a", "web", &["10.96.0.1".parse().unwrap()], &[]));
        api.apply(service("b", "web", &["10.96.0.2".parse().unwrap()], &[]));
        let client = api.client().unwrap();
        let get = |path: &str| {
            let client = client.clone();
            let req = http::Request::get(path).body(Vec::new()).unwrap();
            async move { client.request_text(req).await }
        };
        let secret: Value = serde_json::from_str(
            &get("/api/v1/namespaces/mesh-system/secrets/ca")
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(secret["data"]["ca.crt"], "cGVt");
        let list: Value =
            serde_json::from_str(&get("/api/v1/namespaces/b/services").await.unwrap()).unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(list["items"][0]["spec"]["clusterIP"], "10.96.0.2");
        assert_eq!(list["metadata"]["resourceVersion"], "3");
        let missing = get("/api/v1/namespaces/mesh-system/secrets/nope").await;
        assert!(missing.is_err(), "{missing:?}");
        let unknown = get("/apis/apps/v1/deployments").await;
        assert!(unknown.is_err(), "{unknown:?}");
        // 500, not 503: kube's client retries 503 by itself.
        api.fail_next(1, 500);
        assert!(get("/api/v1/namespaces/b/services").await.is_err());
        assert!(get("/api/v1/namespaces/b/services").await.is_ok());
        let statuses: Vec<u16> = api.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 200, 404, 404, 500, 200]);
    }
}
