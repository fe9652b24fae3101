//! The Kubernetes source (`mesh_agent::k8s::start`) in-process against the fake API server
//! over real HTTP: add, update and delete of every kind reach the `ClusterModel` (routes via
//! `merge`), bad objects are rejected alone with their reason, and a watch that breaks,
//! expires (410) or fails (500) resumes without losing an event (plan §2.2, per kind).
//!
//! No root needed: `kubepods_root` is a temp dir where each pod gets its cgroup directory at
//! kubelet's path with a `cgroup.procs` naming this test process, so pods resolve to a netns.
//! No timing assertions: deadlines only bound waits for something that must happen.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_agent::config::{AuthzAction, Config, PeerAuthMode};
use mesh_agent::k8s::{self, CgroupDriver, ClusterModel, KubernetesConfig, SourceHandle};
use mesh_tests::fake_kube::{self, FakeApi, PodBuilder};
use mesh_tests::kube_sim::{Driver, ENROLLMENT_LABEL, kubelet_pod_cgroup};
use serde_json::{Value, json};

const NODE: &str = "node1";
const WAIT: Duration = Duration::from_secs(30);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// The fake API, a kubepods root, and the source watching them as node1.
struct Cluster {
    api: FakeApi,
    root: tempfile::TempDir,
    source: SourceHandle,
}

impl Cluster {
    /// Starts the source once `prepare` has put the initial objects in the API, and waits
    /// for the first model (every watcher listed).
    async fn start(prepare: impl FnOnce(&FakeApi, &Path)) -> Cluster {
        let api = FakeApi::start("127.0.0.1:0".parse().unwrap()).expect("fake API");
        let root = tempfile::tempdir().expect("temp dir");
        prepare(&api, root.path());
        let settings = KubernetesConfig {
            node_name: NODE.to_string(),
            kubeconfig: None,
            enrollment_label: ENROLLMENT_LABEL.to_string(),
            root_namespace: "mesh-system".to_string(),
            cgroup_driver: CgroupDriver::Systemd,
            kubepods_root: root.path().to_path_buf(),
            // No named namespaces here: pods fall back to their process namespace.
            netns_dir: root.path().join("no-netns"),
        };
        let source = k8s::start(api.client().expect("client"), settings);
        let mut cluster = Cluster { api, root, source };
        cluster.until("the first model", |_| true).await;
        cluster
    }

    /// Waits until the published model satisfies `check`; panics with the model and the
    /// request log after [`WAIT`].
    async fn until(
        &mut self,
        what: &str,
        check: impl Fn(&ClusterModel) -> bool,
    ) -> Arc<ClusterModel> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let current = self.source.updates.borrow_and_update().clone();
            if let Some(model) = current
                && check(&model)
            {
                return model;
            }
            let changed = tokio::time::timeout_at(deadline, self.source.updates.changed()).await;
            if changed.is_err() {
                let model = self.source.updates.borrow().clone();
                panic!(
                    "{what}: not within {WAIT:?}\nmodel: {model:#?}\nrequests:\n{}",
                    self.api.requests_text()
                );
            }
            changed.unwrap().expect("the source stopped publishing");
        }
    }

    fn relists(&self, kind: &str) -> u64 {
        self.source
            .stats
            .relists()
            .into_iter()
            .find(|(k, _)| k == kind)
            .map_or(0, |(_, n)| n)
    }

    fn restarts(&self, kind: &str, reason: &str) -> u64 {
        self.source
            .stats
            .restarts()
            .into_iter()
            .find(|((k, r), _)| k == kind && r == reason)
            .map_or(0, |(_, n)| n)
    }

    /// The file config the agent would merge the cluster into.
    fn file_config(&self) -> Config {
        let root = self.root.path().display();
        let text = format!(
            "node:\n  name: {NODE}\n  cgroup: {root}\nkubernetes:\n  node_name: {NODE}\n  \
             cgroup_driver: systemd\n  kubepods_root: {root}\n"
        );
        mesh_agent::config::parse_str(&text, "test.yaml").expect("file config")
    }
}

/// Creates the pod's cgroup at kubelet's systemd path under `root`, with this process in its
/// `cgroup.procs` (a live pid, so the source finds a netns), and returns the path.
fn pod_cgroup(root: &Path, pod: &PodBuilder) -> PathBuf {
    let qos = pod.build()["status"]["qosClass"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = kubelet_pod_cgroup(root, Driver::Systemd, &qos, pod.uid_str());
    std::fs::create_dir_all(&dir).expect("pod cgroup dir");
    std::fs::write(
        dir.join("cgroup.procs"),
        format!("{}\n", std::process::id()),
    )
    .expect("cgroup.procs");
    dir
}

fn enrolled(name: &str) -> Value {
    fake_kube::namespace(name, &[(ENROLLMENT_LABEL, "enabled")])
}

fn names<T>(items: &[T], name: impl Fn(&T) -> &str) -> BTreeSet<String> {
    items.iter().map(|i| name(i).to_string()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn rejected(model_rejects: &[k8s::RejectedObject], kind: &str, name: &str) -> Option<String> {
    model_rejects
        .iter()
        .find(|r| r.kind == kind && r.name == name)
        .map(|r| r.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_nodes_add_update_delete_and_enrollment() {
    let web = fake_kube::pod("demo", "web", NODE)
        .uid("3c1e5a2b-0d4f-4e6a-9b7c-1d2e3f405162")
        .qos("Burstable")
        .ip(ip("10.1.1.2"))
        .label("app", "web")
        .service_account("web-sa");
    let mut cluster = Cluster::start(|api, root| {
        api.apply(enrolled("demo"));
        api.apply(fake_kube::namespace("plain", &[]));
        api.apply(fake_kube::node(NODE, ip("10.200.0.1")));
        api.apply(fake_kube::node("node2", ip("10.200.0.2")));
        pod_cgroup(root, &web);
        api.apply(&web);
    })
    .await;
    let root = cluster.root.path().to_path_buf();

    let model = cluster
        .until("pod web", |m| m.workloads.iter().any(|w| w.name == "web"))
        .await;
    let w = model.workloads.iter().find(|w| w.name == "web").unwrap();
    assert_eq!(w.namespace, "demo");
    assert_eq!(
        w.cgroup,
        root.join(
            "kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod3c1e5a2b_0d4f_4e6a_9b7c_1d2e3f405162.slice"
        )
    );
    assert_eq!(
        w.netns.as_deref(),
        Some(Path::new(&format!("/proc/{}/ns/net", std::process::id())))
    );
    assert_eq!(w.ips, [ip("10.1.1.2")]);
    assert_eq!(w.service_account, "web-sa");
    assert_eq!(w.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(w.mode, PeerAuthMode::Permissive);
    assert!(w.egress.is_none() && w.ingress.is_none());
    let nodes: Vec<(String, IpAddr)> = model
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.address))
        .collect();
    assert!(
        nodes.contains(&("node2".to_string(), ip("10.200.0.2"))),
        "{nodes:?}"
    );

    // Not workloads: another node's pod, a pod of an unenrolled namespace, a hostNetwork pod,
    // a finished pod, an opted-out pod. A pod without its cgroup yet is pending, then added.
    let elsewhere = fake_kube::pod("demo", "elsewhere", "node2").ip(ip("10.1.2.2"));
    let plain = fake_kube::pod("plain", "plain", NODE).ip(ip("10.1.1.6"));
    let host = fake_kube::pod("demo", "host", NODE)
        .ip(ip("10.200.0.1"))
        .host_network(true);
    let done = fake_kube::pod("demo", "done", NODE)
        .ip(ip("10.1.1.10"))
        .phase("Succeeded");
    let out = fake_kube::pod("demo", "out", NODE)
        .ip(ip("10.1.1.14"))
        .label(ENROLLMENT_LABEL, "disabled");
    let late = fake_kube::pod("demo", "late", NODE).ip(ip("10.1.1.18"));
    for p in [&plain, &host, &done, &out] {
        pod_cgroup(&root, p);
    }
    for p in [&elsewhere, &plain, &host, &done, &out, &late] {
        cluster.api.apply(p);
    }
    let model = cluster
        .until("late pending", |m| {
            m.pending_pods.contains(&"demo/late".to_string())
        })
        .await;
    assert_eq!(names(&model.workloads, |w| &w.name), set(&["web"]));
    pod_cgroup(&root, &late);
    cluster
        .until("late resolved once its cgroup exists", |m| {
            m.workloads.iter().any(|w| w.name == "late") && m.pending_pods.is_empty()
        })
        .await;

    // Update: new labels and IP.
    cluster
        .api
        .apply(web.clone().label("version", "v2").ip(ip("10.1.1.3")));
    cluster
        .until("web updated", |m| {
            m.workloads.iter().any(|w| {
                w.name == "web"
                    && w.labels.get("version").map(String::as_str) == Some("v2")
                    && w.ips == [ip("10.1.1.2"), ip("10.1.1.3")]
            })
        })
        .await;

    // Enrollment follows the namespace label both ways.
    cluster.api.apply(enrolled("plain"));
    cluster
        .until("plain enrolled", |m| {
            m.workloads.iter().any(|w| w.name == "plain")
        })
        .await;
    cluster.api.apply(fake_kube::namespace("plain", &[]));
    cluster
        .until("plain unenrolled", |m| {
            !m.workloads.iter().any(|w| w.name == "plain")
        })
        .await;

    // Delete: the pod and a node leave the model.
    cluster.api.delete("Pod", "demo", "web");
    cluster.api.delete("Node", "", "node2");
    let model = cluster
        .until("web and node2 deleted", |m| {
            !m.workloads.iter().any(|w| w.name == "web")
                && !m.nodes.iter().any(|n| n.name == "node2")
        })
        .await;
    assert_eq!(names(&model.workloads, |w| &w.name), set(&["late"]));

    // Every pod request carried the node's field selector.
    let pod_requests: Vec<_> = cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.kind == Some("Pod"))
        .collect();
    assert!(!pod_requests.is_empty());
    for r in &pod_requests {
        assert_eq!(
            r.query.get("fieldSelector").map(String::as_str),
            Some("spec.nodeName=node1"),
            "{r}"
        );
    }
}

fn web_service(port: u16, target: u16) -> Value {
    fake_kube::service(
        "demo",
        "web",
        &[ip("10.96.0.10")],
        &[fake_kube::service_port(Some("http-web"), port, target).app_protocol("http")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_endpoint_slices_add_update_delete() {
    let mut cluster = Cluster::start(|api, _| {
        api.apply(enrolled("demo"));
        api.apply(fake_kube::namespace("plain", &[]));
        api.apply(web_service(80, 8080));
        // Headless: skipped.
        api.apply(fake_kube::service("demo", "headless", &[], &[]));
    })
    .await;
    let slice = |endpoints: &[fake_kube::EndpointSpec]| {
        fake_kube::endpoint_slice(
            "demo",
            "web-abc12",
            "web",
            &[(Some("http-web"), 8080)],
            endpoints,
        )
    };
    cluster.api.apply(slice(&[
        fake_kube::endpoint(ip("10.1.1.2"), NODE, "web-1"),
        fake_kube::endpoint(ip("10.1.2.2"), "node2", "web-2"),
        fake_kube::endpoint(ip("10.1.2.6"), "node2", "web-3").ready(false),
    ]));
    let model = cluster
        .until("web with two endpoints", |m| {
            m.services
                .iter()
                .any(|s| s.name == "web" && s.endpoints.len() == 2)
        })
        .await;
    assert_eq!(names(&model.services, |s| &s.name), set(&["web"]));
    let s = &model.services[0];
    assert_eq!(s.namespace, "demo");
    assert_eq!(s.vips, [ip("10.96.0.10")]);
    assert_eq!(s.ports.len(), 1);
    assert_eq!((s.ports[0].port, s.ports[0].target_port), (80, 8080));
    assert_eq!(s.ports[0].name.as_deref(), Some("http-web"));
    assert_eq!(format!("{:?}", s.ports[0].protocol), "Declared(Http)");
    let eps: Vec<(IpAddr, Option<&str>, Option<&str>)> = s
        .endpoints
        .iter()
        .map(|e| (e.ip, e.node.as_deref(), e.workload.as_deref()))
        .collect();
    assert_eq!(
        eps,
        [
            (ip("10.1.1.2"), Some(NODE), Some("web-1")),
            (ip("10.1.2.2"), Some("node2"), Some("web-2")),
        ]
    );

    // Update the slice (one endpoint left) and the service (new port).
    cluster.api.apply(slice(&[fake_kube::endpoint(
        ip("10.1.2.2"),
        "node2",
        "web-2",
    )]));
    cluster.api.apply(web_service(81, 8080));
    cluster
        .until("web updated", |m| {
            m.services.iter().any(|s| {
                s.name == "web"
                    && s.ports.iter().map(|p| p.port).eq([81])
                    && s.endpoints.iter().map(|e| e.ip).eq([ip("10.1.2.2")])
            })
        })
        .await;

    // An endpoint of a pod in an unenrolled namespace has no node (not meshed there).
    cluster.api.apply(fake_kube::endpoint_slice(
        "plain",
        "db-x",
        "db",
        &[(None, 5432)],
        &[fake_kube::endpoint(ip("10.1.2.10"), "node2", "db-1")],
    ));
    cluster.api.apply(fake_kube::service(
        "plain",
        "db",
        &[ip("10.96.0.20")],
        &[fake_kube::service_port(None, 5432, 5432)],
    ));
    let model = cluster
        .until("db", |m| m.services.iter().any(|s| s.name == "db"))
        .await;
    let db = model.services.iter().find(|s| s.name == "db").unwrap();
    assert_eq!(db.endpoints.len(), 1);
    assert_eq!(db.endpoints[0].node, None, "{db:?}");

    // Delete the slice, then the service.
    cluster.api.delete("EndpointSlice", "demo", "web-abc12");
    cluster
        .until("web without endpoints", |m| {
            m.services
                .iter()
                .any(|s| s.name == "web" && s.endpoints.is_empty())
        })
        .await;
    cluster.api.delete("Service", "demo", "web");
    cluster
        .until("web deleted", |m| {
            !m.services.iter().any(|s| s.name == "web")
        })
        .await;
}

fn deny_from(namespace: &str) -> Value {
    json!({
        "selector": {"matchLabels": {"app": "web"}},
        "action": "DENY",
        "rules": [{"from": [{"source": {"namespaces": [namespace]}}]}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_add_update_delete_and_bad_ones_are_rejected_alone() {
    let mut cluster = Cluster::start(|api, _| {
        api.apply(enrolled("demo"));
        api.apply(fake_kube::authorization_policy(
            "demo",
            "deny-other",
            deny_from("other"),
        ));
    })
    .await;
    let model = cluster
        .until("deny-other", |m| {
            m.authorization.iter().any(|p| p.name == "deny-other")
        })
        .await;
    let p = &model.authorization[0];
    assert_eq!(p.namespace, "demo");
    assert_eq!(p.action, AuthzAction::Deny);
    assert_eq!(
        p.selector
            .as_ref()
            .and_then(|s| s.get("app"))
            .map(String::as_str),
        Some("web")
    );
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].from[0].namespaces, ["other"]);

    // A typo in a field, and a port out of range: each rejected with its reason; the good
    // policy stays.
    cluster.api.apply(fake_kube::authorization_policy(
        "demo",
        "typo",
        json!({"rules": [{"form": [{"source": {"namespaces": ["x"]}}]}]}),
    ));
    cluster.api.apply(fake_kube::authorization_policy(
        "demo",
        "port-zero",
        json!({"rules": [{"to": [{"operation": {"ports": ["0"]}}]}]}),
    ));
    let model = cluster
        .until("two rejections", |m| {
            rejected(&m.rejected, "MeshAuthorizationPolicy", "typo").is_some()
                && rejected(&m.rejected, "MeshAuthorizationPolicy", "port-zero").is_some()
        })
        .await;
    assert_eq!(
        names(&model.authorization, |p| &p.name),
        set(&["deny-other"])
    );
    let typo = rejected(&model.rejected, "MeshAuthorizationPolicy", "typo").unwrap();
    assert!(typo.contains("form"), "{typo}");
    let zero = rejected(&model.rejected, "MeshAuthorizationPolicy", "port-zero").unwrap();
    assert!(zero.contains('0'), "{zero}");

    // Fixing a rejected policy accepts it; update and delete of the good one.
    cluster.api.apply(fake_kube::authorization_policy(
        "demo",
        "typo",
        json!({"rules": [{"from": [{"source": {"namespaces": ["x"]}}]}]}),
    ));
    cluster.api.apply(fake_kube::authorization_policy(
        "demo",
        "deny-other",
        deny_from("third"),
    ));
    cluster
        .until("typo fixed, deny-other updated", |m| {
            rejected(&m.rejected, "MeshAuthorizationPolicy", "typo").is_none()
                && m.authorization.iter().any(|p| p.name == "typo")
                && m.authorization
                    .iter()
                    .any(|p| p.name == "deny-other" && p.rules[0].from[0].namespaces == ["third"])
        })
        .await;
    cluster
        .api
        .delete("MeshAuthorizationPolicy", "demo", "deny-other");
    cluster
        .until("deny-other deleted", |m| {
            !m.authorization.iter().any(|p| p.name == "deny-other")
        })
        .await;
}

fn http_services(api: &FakeApi) {
    for (name, vip) in [
        ("web", "10.96.1.10"),
        ("web-v1", "10.96.1.11"),
        ("web-v2", "10.96.1.12"),
    ] {
        api.apply(fake_kube::service(
            "demo",
            name,
            &[ip(vip)],
            &[fake_kube::service_port(Some("http"), 80, 8080).app_protocol("http")],
        ));
    }
}

fn canary(backend: &str) -> Value {
    json!({"rules": [
        {"matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
         "backendRefs": [{"name": backend, "port": 80}]},
        {"backendRefs": [{"name": "web-v1", "port": 80}]},
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reach_the_merged_config_and_bad_ones_are_rejected_alone() {
    let mut cluster = Cluster::start(|api, _| {
        api.apply(enrolled("demo"));
        http_services(api);
        api.apply(fake_kube::http_route(
            "demo",
            "canary",
            "web",
            canary("web-v2"),
        ));
    })
    .await;
    let file = cluster.file_config();
    let model = cluster
        .until("canary route", |m| m.http_routes_raw.len() == 1)
        .await;
    let (merged, rejects) = k8s::merge(&file, &model);
    assert!(rejects.is_empty(), "{rejects:?}");
    let route = merged
        .http_routes
        .iter()
        .find(|r| r.name == "canary")
        .expect("canary in the merged config");
    assert_eq!(route.namespace, "demo");
    assert_eq!(route.parent_refs[0].name, "web");
    assert_eq!(route.rules.len(), 2);
    assert_eq!(route.rules[0].backend_refs[0].name, "web-v2");

    // A route to a service that does not exist is rejected alone; a GRPCRoute is accepted.
    cluster.api.apply(fake_kube::http_route(
        "demo",
        "broken",
        "web",
        canary("no-such-service"),
    ));
    cluster.api.apply(fake_kube::grpc_route(
        "demo",
        "grpc",
        "web",
        json!({"rules": [{
            "matches": [{"method": {"service": "echo.Echo", "method": "Say"}}],
            "backendRefs": [{"name": "web-v2", "port": 80}],
        }]}),
    ));
    let model = cluster
        .until("broken and grpc", |m| {
            m.http_routes_raw.len() == 2 && m.grpc_routes_raw.len() == 1
        })
        .await;
    let (merged, rejects) = k8s::merge(&file, &model);
    assert_eq!(names(&merged.http_routes, |r| &r.name), set(&["canary"]));
    assert_eq!(names(&merged.grpc_routes, |r| &r.name), set(&["grpc"]));
    let reason = rejected(&rejects, "HTTPRoute", "broken").expect("broken rejected");
    assert!(reason.contains("no-such-service"), "{reason}");
    assert_eq!(rejects.len(), 1, "{rejects:?}");

    // Update (the canary goes to web-v1 now), then delete both.
    cluster.api.apply(fake_kube::http_route(
        "demo",
        "canary",
        "web",
        canary("web-v1"),
    ));
    let file2 = file.clone();
    cluster
        .until("canary updated", move |m| {
            let (merged, _) = k8s::merge(&file2, m);
            merged
                .http_routes
                .iter()
                .any(|r| r.name == "canary" && r.rules[0].backend_refs[0].name == "web-v1")
        })
        .await;
    cluster.api.delete("HTTPRoute", "demo", "canary");
    cluster.api.delete("GRPCRoute", "demo", "grpc");
    let model = cluster
        .until("routes deleted", |m| {
            m.http_routes_raw.len() == 1 && m.grpc_routes_raw.is_empty()
        })
        .await;
    let (merged, _) = k8s::merge(&file, &model);
    assert!(merged.http_routes.is_empty() && merged.grpc_routes.is_empty());
}

/// The §2.2 scenario for one kind. `make(name)` builds an object of that kind (creating what
/// it needs on disk); `present(model)` lists the names the model holds of that kind.
///
/// "Gating" a kind answers all its requests with 500 for a moment: the source's watcher of
/// that kind is then off the server, so changes made meanwhile can only reach it through the
/// resume (a replay, or a 410 and a re-list), never as live events.
async fn loses_nothing(
    cluster: &mut Cluster,
    kind: &str,
    namespace: &str,
    make: impl Fn(&str) -> Value,
    present: impl Fn(&ClusterModel) -> BTreeSet<String> + Copy,
) {
    let api = cluster.api.clone();
    let want = |names: &[&str]| {
        let want = set(names);
        move |m: &ClusterModel| present(m) == want
    };
    api.apply(make("a"));
    api.apply(make("b"));
    cluster
        .until(&format!("{kind}: a, b"), want(&["a", "b"]))
        .await;
    api.apply(make("c"));
    cluster
        .until(&format!("{kind}: live c"), want(&["a", "b", "c"]))
        .await;
    let lists = cluster.relists(kind);

    // 1. The watch breaks; b is deleted and d added meanwhile: the resume replays both,
    //    without a re-list.
    api.fail_next_requests(kind, 1_000_000, 500);
    api.end_watches(false);
    api.delete(kind, namespace, "b");
    api.apply(make("d"));
    api.clear_failures();
    cluster
        .until(&format!("{kind}: replayed"), want(&["a", "c", "d"]))
        .await;
    assert_eq!(cluster.relists(kind), lists, "a replay needs no re-list");

    // 2. The history is compacted while the watch is down and a is deleted: the resume gets
    //    410 Expired, the source re-lists, and the re-list's snapshot drops a.
    let started = api.watches_started(kind);
    api.fail_next_requests(kind, 1_000_000, 500);
    api.end_watches(false);
    api.delete(kind, namespace, "a");
    api.apply(make("e"));
    api.compact();
    api.clear_failures();
    cluster
        .until(&format!("{kind}: re-listed"), want(&["c", "d", "e"]))
        .await;
    assert!(cluster.relists(kind) > lists, "expiry forces a re-list");
    assert!(cluster.restarts(kind, "expired") >= 1);
    assert!(
        api.requests()
            .iter()
            .any(|r| r.kind == Some(kind) && r.watch && r.expired),
        "{}",
        api.requests_text()
    );

    // 3. 410 on an open watch (ERROR event), c deleted before the source can list again.
    api.wait_watches(kind, started + 2, WAIT)
        .await
        .expect("watch reopened");
    let lists = cluster.relists(kind);
    api.fail_next_requests(kind, 1_000_000, 500);
    api.compact();
    api.end_watches(true);
    api.delete(kind, namespace, "c");
    api.clear_failures();
    cluster
        .until(&format!("{kind}: 410 on open watch"), want(&["d", "e"]))
        .await;
    assert!(cluster.relists(kind) > lists);

    // 4. Watches answered 500 are retried; nothing is lost meanwhile.
    let lists = cluster.relists(kind);
    let failed_before = api
        .requests()
        .iter()
        .filter(|r| r.kind == Some(kind) && r.status == 500)
        .count();
    api.fail_next_watches(kind, 2, 500);
    api.end_watches(false);
    api.apply(make("f"));
    cluster
        .until(&format!("{kind}: after 500s"), want(&["d", "e", "f"]))
        .await;
    assert_eq!(
        cluster.relists(kind),
        lists,
        "a failed watch needs no re-list"
    );
    let failed_after = api
        .requests()
        .iter()
        .filter(|r| r.kind == Some(kind) && r.status == 500)
        .count();
    assert_eq!(failed_after, failed_before + 2, "{}", api.requests_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_watch_errors_and_expiry_lose_nothing() {
    let mut cluster = Cluster::start(|api, _| {
        api.apply(enrolled("demo"));
    })
    .await;
    let root = cluster.root.path().to_path_buf();
    let make = move |name: &str| {
        let pod = fake_kube::pod("demo", name, NODE).ip(ip(match name {
            "a" => "10.1.1.2",
            "b" => "10.1.1.6",
            "c" => "10.1.1.10",
            "d" => "10.1.1.14",
            "e" => "10.1.1.18",
            _ => "10.1.1.22",
        }));
        pod_cgroup(&root, &pod);
        pod.build()
    };
    loses_nothing(&mut cluster, "Pod", "demo", make, |m| {
        names(&m.workloads, |w| &w.name)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_watch_errors_and_expiry_lose_nothing() {
    let mut cluster = Cluster::start(|api, _| {
        api.apply(enrolled("demo"));
    })
    .await;
    let make = |name: &str| {
        let last = name.as_bytes()[0];
        fake_kube::service(
            "demo",
            name,
            &[IpAddr::from([10, 96, 0, last])],
            &[fake_kube::service_port(None, 80, 8080)],
        )
    };
    loses_nothing(&mut cluster, "Service", "demo", make, |m| {
        names(&m.services, |s| &s.name)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_watch_errors_and_expiry_lose_nothing() {
    let mut cluster = Cluster::start(|api, _| {
        api.apply(enrolled("demo"));
    })
    .await;
    let make = |name: &str| fake_kube::authorization_policy("demo", name, deny_from("other"));
    loses_nothing(&mut cluster, "MeshAuthorizationPolicy", "demo", make, |m| {
        names(&m.authorization, |p| &p.name)
    })
    .await;
}

/// Slice `name` holds one endpoint whose address encodes the name (10.1.1.<first byte>).
fn slice_ip(name: &str) -> IpAddr {
    IpAddr::from([10, 1, 1, name.as_bytes()[0]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slice_watch_errors_and_expiry_lose_nothing() {
    let mut cluster = Cluster::start(|api, _| {
        api.apply(enrolled("demo"));
        api.apply(web_service(80, 8080));
    })
    .await;
    let make = |name: &str| {
        fake_kube::endpoint_slice(
            "demo",
            name,
            "web",
            &[(Some("http-web"), 8080)],
            &[fake_kube::endpoint(
                slice_ip(name),
                NODE,
                &format!("web-{name}"),
            )],
        )
    };
    let present = |m: &ClusterModel| {
        let Some(web) = m.services.iter().find(|s| s.name == "web") else {
            return BTreeSet::new();
        };
        ["a", "b", "c", "d", "e", "f"]
            .into_iter()
            .filter(|n| web.endpoints.iter().any(|e| e.ip == slice_ip(n)))
            .map(str::to_string)
            .collect()
    };
    loses_nothing(&mut cluster, "EndpointSlice", "demo", make, present).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_watch_errors_and_expiry_lose_nothing() {
    let mut cluster = Cluster::start(|api, _| {
        api.apply(enrolled("demo"));
        http_services(api);
    })
    .await;
    let make = |name: &str| fake_kube::http_route("demo", name, "web", canary("web-v2"));
    let present = |m: &ClusterModel| {
        m.http_routes_raw
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect()
    };
    loses_nothing(&mut cluster, "HTTPRoute", "demo", make, present).await;
}

/// A cluster without the Gateway API CRDs (404 on their paths) still gets a model: the route
/// kinds count as listed and empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_route_crds_do_not_block_the_model() {
    let pod = fake_kube::pod("demo", "web", NODE).ip(ip("10.1.1.2"));
    let mut cluster = Cluster::start(|api, root| {
        api.uninstall("HTTPRoute");
        api.uninstall("GRPCRoute");
        api.apply(enrolled("demo"));
        pod_cgroup(root, &pod);
        api.apply(&pod);
    })
    .await;
    let model = cluster
        .until("pod web", |m| m.workloads.iter().any(|w| w.name == "web"))
        .await;
    assert!(model.http_routes_raw.is_empty() && model.grpc_routes_raw.is_empty());
    assert!(
        cluster
            .api
            .requests()
            .iter()
            .any(|r| r.kind == Some("HTTPRoute") && r.status == 404),
        "{}",
        cluster.api.requests_text()
    );
}
