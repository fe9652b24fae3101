use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::*;
use crate::config::CgroupDriver;

fn settings() -> KubernetesConfig {
    KubernetesConfig {
        node_name: "node1".into(),
        kubeconfig: None,
        enrollment_label: "mesh.example.io/mode".into(),
        root_namespace: "mesh-system".into(),
        cgroup_driver: CgroupDriver::Systemd,
        kubepods_root: PathBuf::from("/cg"),
        netns_dir: PathBuf::from("/cg/netns"),
    }
}

fn obj<K: serde::de::DeserializeOwned>(v: Value) -> Arc<K> {
    Arc::new(serde_json::from_value(v).expect("valid object"))
}

fn namespace(name: &str, mode: Option<&str>) -> Arc<Namespace> {
    let labels = match mode {
        Some(m) => json!({"mesh.example.io/mode": m}),
        None => json!({}),
    };
    obj(json!({"metadata": {"name": name, "labels": labels}}))
}

fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                     "labels": {"app": name}},
        "spec": {"nodeName": node, "serviceAccountName": "sa-web", "containers": []},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "qosClass": "Burstable"}
    })
}

/// The pod cgroup from the real path function, a fake pid namespace.
fn locate_all(pod: &Pod) -> Option<(PathBuf, PathBuf)> {
    let uid = pod.metadata.uid.as_deref()?;
    let cg = podcgroup_path(uid);
    Some((cg, PathBuf::from(format!("/proc/1/ns/net#{uid}"))))
}

fn podcgroup_path(uid: &str) -> PathBuf {
    crate::k8s::podcgroup::pod_cgroup(
        Path::new("/cg"),
        CgroupDriver::Systemd,
        crate::k8s::podcgroup::Qos::Burstable,
        uid,
    )
}

fn base() -> Objects {
    Objects {
        namespaces: vec![
            namespace("shop", Some("enabled")),
            namespace("plain", None),
            namespace("mesh-system", None),
        ],
        nodes: vec![
            obj(
                json!({"metadata": {"name": "node1"}, "status": {"addresses": [
                {"type": "Hostname", "address": "node1"},
                {"type": "InternalIP", "address": "10.0.0.1"}]}}),
            ),
            obj(
                json!({"metadata": {"name": "node2"}, "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.2"},
                {"type": "InternalIP", "address": "10.0.0.22"}]}}),
            ),
            obj(json!({"metadata": {"name": "no-address"}})),
        ],
        ..Default::default()
    }
}

#[test]
fn nodes_take_their_first_internal_ip() {
    let m = translate(&settings(), &base(), &locate_all);
    let nodes: Vec<(String, String)> = m
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.address.to_string()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("node1".into(), "10.0.0.1".into()),
            ("node2".into(), "10.0.0.2".into())
        ]
    );
}

#[test]
fn pods_become_workloads_only_when_meshed_here() {
    let mut o = base();
    let mut host = pod("shop", "host", "node1", "10.0.0.1");
    host["spec"]["hostNetwork"] = true.into();
    let mut out = pod("shop", "opted-out", "node1", "10.1.0.3");
    out["metadata"]["labels"]["mesh.example.io/mode"] = "disabled".into();
    let mut done = pod("shop", "done", "node1", "10.1.0.4");
    done["status"]["phase"] = "Succeeded".into();
    let mut no_ip = pod("shop", "no-ip", "node1", "x");
    no_ip["status"] = json!({"phase": "Pending"});
    let mut default_sa = pod("shop", "default-sa", "node1", "10.1.0.6");
    default_sa["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("serviceAccountName");
    o.pods = vec![
        obj(pod("shop", "web", "node1", "10.1.0.2")),
        obj(pod("shop", "elsewhere", "node2", "10.1.0.9")),
        obj(pod("plain", "not-enrolled", "node1", "10.1.0.8")),
        obj(host),
        obj(out),
        obj(done),
        obj(no_ip),
        obj(default_sa),
    ];
    let m = translate(&settings(), &o, &locate_all);
    let names: Vec<&str> = m.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["default-sa", "web"]);
    let web = &m.workloads[1];
    assert_eq!(web.namespace, "shop");
    assert_eq!(web.cgroup, podcgroup_path("uid-web"));
    assert_eq!(web.netns, Some(PathBuf::from("/proc/1/ns/net#uid-web")));
    assert_eq!(web.ips, vec!["10.1.0.2".parse::<IpAddr>().expect("ip")]);
    assert_eq!(web.service_account, "sa-web");
    assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(web.mode, PeerAuthMode::Permissive);
    assert!(web.egress.is_none() && web.ingress.is_none());
    assert_eq!(m.workloads[0].service_account, "default");
    assert!(m.rejected.is_empty() && m.pending_pods.is_empty());
}

#[test]
fn pods_without_cgroup_or_process_are_pending_and_bad_ips_rejected() {
    let mut o = base();
    o.pods = vec![
        obj(pod("shop", "web", "node1", "10.1.0.2")),
        obj(pod("shop", "bad", "node1", "10.1.0.999")),
    ];
    let m = translate(&settings(), &o, &|_| None);
    assert!(m.workloads.is_empty());
    assert_eq!(m.pending_pods, ["shop/web"]);
    assert_eq!(m.rejected.len(), 1);
    assert_eq!(m.rejected[0].kind, "Pod");
    assert_eq!(m.rejected[0].name, "bad");
    assert!(m.rejected[0].reason.contains("invalid pod IP `10.1.0.999`"));
}

fn svc(ns: &str, name: &str, cluster_ips: Value, ports: Value) -> Arc<KubeService> {
    obj(json!({"metadata": {"name": name, "namespace": ns},
               "spec": {"clusterIPs": cluster_ips, "ports": ports}}))
}

fn slice(
    ns: &str,
    name: &str,
    service: &str,
    ports: Value,
    endpoints: Value,
) -> Arc<EndpointSlice> {
    obj(json!({"metadata": {"name": name, "namespace": ns,
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4", "ports": ports, "endpoints": endpoints}))
}

#[test]
fn services_with_slices() {
    let mut o = base();
    o.services = vec![
        svc(
            "shop",
            "web",
            json!(["10.96.0.10", "fd00::10"]),
            json!([
                {"name": "http", "port": 80, "targetPort": "web-port"},
                {"name": "grpc-api", "port": 9090, "targetPort": 9091},
                {"name": "h2", "port": 81, "appProtocol": "kubernetes.io/h2c"},
                {"name": "tcp-db", "port": 5432, "appProtocol": "grpc"},
                {"name": "other", "port": 7000},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "unresolved", "port": 8443, "targetPort": "nope"}
            ]),
        ),
        svc("shop", "headless", json!(["None"]), json!([{"port": 80}])),
        svc("shop", "bad", json!(["10.96.0.300"]), json!([{"port": 80}])),
    ];
    o.endpoint_slices = vec![
        slice(
            "shop",
            "web-abc",
            "web",
            json!([{"name": "http", "port": 8080}, {"name": "grpc-api", "port": 9091}]),
            json!([
                {"addresses": ["10.1.0.2"], "nodeName": "node1", "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}},
                {"addresses": ["10.1.0.3"], "nodeName": "node2",
                 "targetRef": {"kind": "Pod", "name": "web-2", "namespace": "shop"}},
                {"addresses": ["10.1.0.4"], "nodeName": "node2", "conditions": {"ready": false},
                 "targetRef": {"kind": "Pod", "name": "web-3", "namespace": "shop"}},
                {"addresses": ["192.168.1.1"], "nodeName": "node2"}
            ]),
        ),
        // Another service's slice and a slice in another namespace are not this service's.
        slice(
            "shop",
            "api-x",
            "api",
            json!([]),
            json!([{"addresses": ["10.1.9.9"]}]),
        ),
        slice(
            "plain",
            "web-y",
            "web",
            json!([]),
            json!([{"addresses": ["10.1.9.8"]}]),
        ),
    ];
    let m = translate(&settings(), &o, &locate_all);
    assert_eq!(m.services.len(), 1, "{:?}", m.services);
    let web = &m.services[0];
    assert_eq!(web.vips.len(), 2);
    let ports: Vec<(u16, u16, Option<&str>, PortProtocol)> = web
        .ports
        .iter()
        .map(|p| (p.port, p.target_port, p.name.as_deref(), p.protocol))
        .collect();
    use PortProtocol::{Declared, Detect};
    assert_eq!(
        ports,
        [
            (80, 8080, Some("http"), Declared(Protocol::Http)),
            (9090, 9091, Some("grpc-api"), Declared(Protocol::Grpc)),
            (81, 81, Some("h2"), Declared(Protocol::Http2)),
            (5432, 5432, Some("tcp-db"), Declared(Protocol::Grpc)),
            (7000, 7000, Some("other"), Detect),
        ]
    );
    let eps: Vec<(String, Option<&str>, Option<&str>)> = web
        .endpoints
        .iter()
        .map(|e| (e.ip.to_string(), e.node.as_deref(), e.workload.as_deref()))
        .collect();
    assert_eq!(
        eps,
        [
            ("10.1.0.2".into(), Some("node1"), Some("web-1")),
            ("10.1.0.3".into(), Some("node2"), Some("web-2")),
            ("192.168.1.1".into(), None, None),
        ]
    );
    assert_eq!(m.rejected.len(), 1);
    assert_eq!(
        (m.rejected[0].kind.as_str(), m.rejected[0].name.as_str()),
        ("Service", "bad")
    );
    assert!(m.rejected[0].reason.contains("invalid cluster IP"));
}

#[test]
fn endpoints_of_pods_in_unenrolled_namespaces_are_plain() {
    let mut o = base();
    o.services = vec![svc(
        "plain",
        "db",
        json!(["10.96.0.20"]),
        json!([{"port": 5432}]),
    )];
    o.endpoint_slices = vec![slice(
        "plain",
        "db-1",
        "db",
        json!([{"port": 5432}]),
        json!([{"addresses": ["10.1.0.7"], "nodeName": "node1",
                "targetRef": {"kind": "Pod", "name": "db-0", "namespace": "plain"}}]),
    )];
    let m = translate(&settings(), &o, &locate_all);
    assert_eq!(m.services[0].endpoints[0].node, None);
    assert_eq!(m.services[0].endpoints[0].workload.as_deref(), Some("db-0"));
}

fn policy_obj(ns: &str, name: &str, spec: Value) -> Arc<DynamicObject> {
    obj(
        json!({"apiVersion": "mesh.example.io/v1alpha1", "kind": "MeshAuthorizationPolicy",
               "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
}

#[test]
fn policies_use_the_file_rules() {
    let mut o = base();
    o.policies = vec![
        policy_obj(
            "shop",
            "allow-frontend",
            json!({"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
                   "rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/shop/sa/front"]}}],
                              "to": [{"operation": {"ports": ["8080"]}}]}]}),
        ),
        policy_obj(
            "mesh-system",
            "deny-all",
            json!({"action": "DENY", "rules": [{}]}),
        ),
        policy_obj("shop", "typo", json!({"rules": [{"form": []}]})),
        policy_obj(
            "shop",
            "bad-port",
            json!({"rules": [{"to": [{"operation": {"ports": ["0"]}}]}]}),
        ),
        policy_obj(
            "shop",
            "big-port",
            json!({"rules": [{"to": [{"operation": {"ports": ["70000"]}}]}]}),
        ),
        policy_obj(
            "shop",
            "empty-source",
            json!({"rules": [{"from": [{"source": {}}]}]}),
        ),
    ];
    let m = translate(&settings(), &o, &locate_all);
    let names: Vec<&str> = m.authorization.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["deny-all", "allow-frontend"]);
    let allow = &m.authorization[1];
    assert_eq!(
        allow.rules[0].from[0].principals,
        ["cluster.local/ns/shop/sa/front"]
    );
    assert_eq!(allow.rules[0].to[0].ports, [8080]);
    assert_eq!(m.authorization[0].action, crate::config::AuthzAction::Deny);
    let reasons: BTreeMap<&str, &str> = m
        .rejected
        .iter()
        .map(|r| (r.name.as_str(), r.reason.as_str()))
        .collect();
    assert!(
        reasons["typo"].contains("unknown field `form`"),
        "{reasons:?}"
    );
    assert!(
        reasons["bad-port"].contains("port 0 is out of range"),
        "{reasons:?}"
    );
    assert!(
        reasons["big-port"].contains("port 70000 is out of range"),
        "{reasons:?}"
    );
    assert!(
        reasons["empty-source"].contains("empty `source`"),
        "{reasons:?}"
    );
    assert!(
        m.rejected
            .iter()
            .all(|r| r.kind == "MeshAuthorizationPolicy")
    );
}

#[test]
fn a_custom_root_namespace_maps_to_the_mesh_wide_namespace() {
    let mut s = settings();
    s.root_namespace = "istio-system".into();
    let mut o = base();
    o.policies = vec![policy_obj(
        "istio-system",
        "deny",
        json!({"action": "DENY"}),
    )];
    let m = translate(&s, &o, &locate_all);
    assert_eq!(
        m.authorization[0].namespace,
        crate::policy::authz::ROOT_NAMESPACE
    );
}

fn route_obj(kind: &str, ns: &str, name: &str, spec: Value) -> Arc<DynamicObject> {
    obj(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
               "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
}

/// An HTTPRoute as the API server returns it: every defaulted field filled in.
fn defaulted_http_route(name: &str, backend: &str) -> Value {
    json!({
        "parentRefs": [
            {"group": "", "kind": "Service", "name": "web", "port": 80},
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}
        ],
        "hostnames": [],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                         "headers": [{"type": "Exact", "name": "x-version", "value": "v2"}]}],
            "backendRefs": [{"group": "", "kind": "Service", "name": backend, "port": 80, "weight": 1}]
        }, {
            "name": format!("{name}-default"),
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80, "weight": 1}]
        }]
    })
}

#[test]
fn routes_go_through_the_file_checker() {
    let mut o = base();
    o.services = vec![
        svc(
            "shop",
            "web",
            json!(["10.96.0.10"]),
            json!([{"name": "http", "port": 80}]),
        ),
        svc(
            "shop",
            "web-v2",
            json!(["10.96.0.11"]),
            json!([{"name": "http", "port": 80}]),
        ),
    ];
    o.http_routes = vec![
        route_obj(
            "HTTPRoute",
            "shop",
            "by-header",
            defaulted_http_route("by-header", "web-v2"),
        ),
        route_obj(
            "HTTPRoute",
            "shop",
            "missing-backend",
            defaulted_http_route("x", "nope"),
        ),
        route_obj(
            "HTTPRoute",
            "shop",
            "gateway-only",
            json!({"parentRefs": [{"name": "public"}], "rules": [{}]}),
        ),
        route_obj(
            "HTTPRoute",
            "shop",
            "unsupported",
            json!({"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                   "rules": [{"sessionPersistence": {}}]}),
        ),
    ];
    o.grpc_routes = vec![route_obj(
        "GRPCRoute",
        "shop",
        "grpc",
        json!({"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
               "rules": [{"matches": [{"method": {"type": "Exact", "service": "shop.Cart", "method": "Get"},
                                       "headers": [{"type": "Exact", "name": "x", "value": "y"}]}],
                          "backendRefs": [{"group": "", "kind": "Service", "name": "web-v2", "port": 80, "weight": 1}]}]}),
    )];
    let m = translate(&settings(), &o, &locate_all);
    let names: Vec<&str> = m.http_routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["by-header"]);
    assert_eq!(
        m.http_routes[0].parent_refs.len(),
        1,
        "the Gateway parent is not ours"
    );
    assert_eq!(m.grpc_routes.len(), 1);
    assert_eq!(m.http_routes_raw.len(), 3, "gateway-only is not ours");
    let reasons: BTreeMap<&str, &str> = m
        .rejected
        .iter()
        .map(|r| (r.name.as_str(), r.reason.as_str()))
        .collect();
    assert!(
        reasons["missing-backend"].contains("service `shop/nope` is not defined"),
        "{reasons:?}"
    );
    assert!(
        reasons["unsupported"].contains("unknown field `sessionPersistence`"),
        "{reasons:?}"
    );
    assert_eq!(reasons.len(), 2);
}
