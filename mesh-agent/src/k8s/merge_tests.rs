use std::path::PathBuf;

use super::*;
use crate::config::{Endpoint, PeerAuthMode, ServicePort};

fn file() -> Config {
    let mut cfg = crate::config::embedded_default();
    cfg.node.name = "local".into();
    cfg.node.address = Some("10.0.0.1".parse().expect("ip"));
    cfg.kubernetes = Some(KubernetesConfig {
        node_name: "node1".into(),
        kubeconfig: None,
        enrollment_label: "mesh.example.io/mode".into(),
        root_namespace: "mesh-system".into(),
        cgroup_driver: CgroupDriver::Auto,
        kubepods_root: PathBuf::from("/cg"),
        netns_dir: PathBuf::from("/cg/netns"),
    });
    cfg.workloads
        .push(workload("default", "file-app", "/cg/file", "10.1.0.1"));
    cfg.services
        .push(service("default", "file-svc", "10.96.0.1", vec![]));
    cfg
}

fn workload(ns: &str, name: &str, cgroup: &str, ip: &str) -> Workload {
    Workload {
        name: name.into(),
        namespace: ns.into(),
        cgroup: PathBuf::from(cgroup),
        netns: None,
        ips: vec![ip.parse().expect("ip")],
        egress: None,
        ingress: None,
        service_account: "default".into(),
        labels: Default::default(),
        mode: PeerAuthMode::Permissive,
    }
}

fn service(ns: &str, name: &str, vip: &str, endpoints: Vec<Endpoint>) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        vips: vec![vip.parse().expect("ip")],
        ports: vec![ServicePort {
            port: 80,
            target_port: 8080,
            name: Some("http".into()),
            protocol: crate::config::PortProtocol::Detect,
        }],
        endpoints,
        load_balancer: Default::default(),
        outlier_detection: None,
    }
}

fn ep(ip: &str, node: Option<&str>) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("ip"),
        node: node.map(Into::into),
        workload: None,
    }
}

#[test]
fn cluster_objects_are_added_and_clashes_rejected() {
    let cluster = ClusterModel {
        nodes: vec![
            PeerNode {
                name: "node1".into(),
                address: "10.0.0.1".parse().expect("ip"),
            },
            PeerNode {
                name: "node2".into(),
                address: "10.0.0.2".parse().expect("ip"),
            },
            PeerNode {
                name: "node3".into(),
                address: "10.0.0.2".parse().expect("ip"),
            },
        ],
        workloads: vec![
            workload("shop", "web", "/cg/web", "10.1.0.2"),
            workload("default", "file-app", "/cg/other", "10.1.0.3"),
            workload("shop", "same-cgroup", "/cg/file", "10.1.0.4"),
            workload("shop", "same-ip", "/cg/x", "10.1.0.1"),
        ],
        services: vec![
            service(
                "shop",
                "web",
                "10.96.0.10",
                vec![
                    ep("10.1.0.2", Some("node1")),
                    ep("10.1.0.5", Some("node2")),
                    ep("10.1.0.6", Some("node9")),
                ],
            ),
            service("default", "file-svc", "10.96.0.50", vec![]),
            service("shop", "vip-clash", "10.96.0.1", vec![]),
        ],
        rejected: vec![RejectedObject {
            kind: "Pod".into(),
            namespace: "shop".into(),
            name: "bad".into(),
            reason: "invalid pod IP".into(),
        }],
        http_routes_raw: vec![
            serde_json::json!({"name": "to-file", "namespace": "default", "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "file-svc", "port": 80}],
                "rules": [{"backendRefs": [{"name": "web", "namespace": "shop", "port": 80}]}]}}),
            serde_json::json!({"name": "broken", "namespace": "default", "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "nope"}]}}),
        ],
        ..Default::default()
    };
    let (cfg, rejected) = merge(&file(), &cluster);
    let nodes: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(nodes, ["node2"]);
    let workloads: Vec<&str> = cfg.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(workloads, ["file-app", "web"]);
    let web = cfg
        .services
        .iter()
        .find(|s| s.name == "web")
        .expect("web service");
    let nodes: Vec<Option<&str>> = web.endpoints.iter().map(|e| e.node.as_deref()).collect();
    assert_eq!(nodes, [Some("local"), Some("node2"), None]);
    assert_eq!(cfg.services.len(), 2);
    assert_eq!(
        cfg.http_routes.len(),
        1,
        "a route to a file service and a cluster backend"
    );
    let got: Vec<(&str, &str)> = rejected
        .iter()
        .map(|r| (r.kind.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("HTTPRoute", "broken"),
            ("Node", "node3"),
            ("Pod", "file-app"),
            ("Pod", "bad"),
            ("Pod", "same-cgroup"),
            ("Pod", "same-ip"),
            ("Service", "file-svc"),
            ("Service", "vip-clash"),
        ]
    );
    // The merged config builds into a model (the node names endpoints use resolve).
    assert!(
        cfg.services
            .iter()
            .all(|s| s.endpoints.iter().all(|e| match &e.node {
                Some(n) => *n == cfg.node.name || cfg.nodes.iter().any(|p| &p.name == n),
                None => true,
            }))
    );
}
