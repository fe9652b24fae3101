//! `start` against a minimal HTTP API server: lists, an open watch that delivers a delete, and
//! a kind the server does not serve (its CRD is not installed).

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::config::CgroupDriver;

type Body = BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct FakeApi {
    lists: HashMap<&'static str, Vec<Value>>,
    watches: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Bytes>>>>,
}

impl FakeApi {
    fn respond(&self, req: &Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("");
        let Some(items) = self.lists.get(path.as_str()) else {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "NotFound", "code": 404,
                "message": "the server could not find the requested resource"});
            return Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(status.to_string())).boxed())
                .expect("response");
        };
        if query.contains("watch=true") {
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            self.watches
                .lock()
                .expect("lock")
                .entry(path)
                .or_default()
                .push(tx);
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            return Response::new(StreamBody::new(stream).boxed());
        }
        let list = json!({"kind": "List", "apiVersion": "v1",
            "metadata": {"resourceVersion": "1"}, "items": items});
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(list.to_string())).boxed())
            .expect("response")
    }

    /// Sends a watch event to every open watch of `path`; false when none is open yet.
    fn send(&self, path: &str, event: Value) -> bool {
        let watches = self.watches.lock().expect("lock");
        let Some(open) = watches.get(path) else {
            return false;
        };
        let line = Bytes::from(format!("{event}\n"));
        open.iter().any(|tx| tx.send(line.clone()).is_ok())
    }
}

async fn serve(api: Arc<FakeApi>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let api = api.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.respond(&req)) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn pod(name: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                     "resourceVersion": rv},
        "spec": {"nodeName": "node1", "containers": []},
        "status": {"phase": "Running", "podIP": "10.1.0.2", "podIPs": [{"ip": "10.1.0.2"}],
                   "qosClass": "BestEffort"}})
}

async fn next_model(
    updates: &mut tokio::sync::watch::Receiver<Option<Arc<ClusterModel>>>,
) -> Arc<ClusterModel> {
    loop {
        tokio::time::timeout(Duration::from_secs(20), updates.changed())
            .await
            .expect("a model within 20 s")
            .expect("source running");
        if let Some(m) = updates.borrow_and_update().clone() {
            return m;
        }
    }
}

#[tokio::test]
async fn start_lists_every_kind_then_follows_watch_events() {
    let root = tempfile::tempdir().expect("tempdir");
    let ctr = root.path().join("kubepods/besteffort/poduid-web/ctr");
    std::fs::create_dir_all(&ctr).expect("mkdir");
    std::fs::write(ctr.join("cgroup.procs"), "4242\n").expect("procs");

    let mut lists: HashMap<&'static str, Vec<Value>> = HashMap::new();
    lists.insert("/api/v1/pods", vec![pod("web", "1")]);
    lists.insert(
        "/api/v1/namespaces",
        vec![json!({"metadata": {"name": "shop", "labels": {"mesh.example.io/mode": "enabled"}}})],
    );
    lists.insert(
        "/api/v1/nodes",
        vec![json!({"metadata": {"name": "node1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}})],
    );
    lists.insert(
        "/api/v1/services",
        vec![json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIPs": ["10.96.0.10"], "ports": [{"name": "http", "port": 80}]}})],
    );
    lists.insert("/apis/discovery.k8s.io/v1/endpointslices", vec![]);
    lists.insert(
        "/apis/mesh.example.io/v1alpha1/meshauthorizationpolicies",
        vec![
            json!({"apiVersion": "mesh.example.io/v1alpha1", "kind": "MeshAuthorizationPolicy",
            "metadata": {"name": "typo", "namespace": "shop"},
            "spec": {"rules": [{"form": []}]}}),
        ],
    );
    lists.insert("/apis/gateway.networking.k8s.io/v1/httproutes", vec![]);
    // GRPCRoutes are not served: the kind counts as empty.
    let api = Arc::new(FakeApi {
        lists,
        ..Default::default()
    });
    let addr = serve(api.clone()).await;
    let client = kube::Client::try_from(kube::Config::new(
        format!("http://{addr}").parse().expect("url"),
    ))
    .expect("client");
    let settings = KubernetesConfig {
        node_name: "node1".into(),
        kubeconfig: None,
        enrollment_label: "mesh.example.io/mode".into(),
        root_namespace: "mesh-system".into(),
        cgroup_driver: CgroupDriver::Auto,
        kubepods_root: root.path().to_path_buf(),
        // No named namespaces here: pods fall back to their process namespace.
        netns_dir: root.path().join("no-netns"),
    };
    let mut handle = start(client, settings);
    let model = next_model(&mut handle.updates).await;
    assert_eq!(model.workloads.len(), 1, "{model:?}");
    assert_eq!(
        model.workloads[0].netns.as_deref(),
        Some(std::path::Path::new("/proc/4242/ns/net"))
    );
    assert_eq!(model.services.len(), 1);
    assert_eq!(model.nodes.len(), 1);
    assert_eq!(model.rejected.len(), 1);
    assert_eq!(model.rejected[0].name, "typo");

    // The pod watch is open once the pod list is done; wait for it, then delete the pod.
    let deleted = json!({"type": "DELETED", "object": pod("web", "2")});
    for _ in 0..200 {
        if api.send("/api/v1/pods", deleted.clone()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let model = next_model(&mut handle.updates).await;
    assert!(model.workloads.is_empty(), "{model:?}");
    let events = handle.stats.events();
    assert!(
        events
            .iter()
            .any(|((kind, t), n)| kind == "Pod" && t == "delete" && *n == 1),
        "{events:?}"
    );
    let restarts = handle.stats.restarts();
    assert!(
        restarts.iter().any(|((kind, _), _)| kind == "GRPCRoute"),
        "{restarts:?}"
    );
}
