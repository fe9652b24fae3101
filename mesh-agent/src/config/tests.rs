//! Tests of whole configuration files: examples that set every section, mistakes that any
//! section can make (unknown keys, missing fields, duplicates), every error class with its
//! exact message, and that every error of a file is reported, each once, in file order.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::fixture::{Fixture, with_node};
use super::*;

#[test]
fn full_example_with_defaults() {
    let fx = Fixture::new();
    let yaml = "\
node:
  name: node1
  cgroup: $D/node
  admin: '[::1]:9000'
  fast_path: false
nodes:
  - name: node2
    address: 10.200.0.2
workloads:
  - name: web
    cgroup: $D/pods/web
    netns: $D/netns-web
    ips: [10.1.1.2, 'fd00::2']
    egress:
      - to: 10.96.0.0/16
        ports: [80, 443]
      - to: 10.1.2.3
      - to: 10.9.9.9/8
    ingress: []
  - name: web
    namespace: other
    cgroup: $D/pods/api
services:
  - name: web
    vips: [10.96.0.10]
    ports:
      - port: 80
        target_port: 8080
        name: http
      - port: 443
    endpoints:
      - ip: 10.1.2.2
        node: node2
        workload: web
  - name: headless
    namespace: kube-system
";
    let cfg = fx.parse(yaml).expect("valid config");
    let node = &cfg.node;
    assert_eq!(node.name, "node1");
    assert_eq!(node.bpffs, PathBuf::from(DEFAULT_BPFFS));
    assert_eq!(
        node.pin_dir(),
        PathBuf::from("/sys/fs/bpf/mesh-agent/node1")
    );
    assert_eq!(node.outbound_port, 15001);
    assert_eq!(node.admin, "[::1]:9000".parse().expect("addr"));
    assert!(!node.fast_path);

    let web = &cfg.workloads[0];
    assert_eq!(web.namespace, "default");
    assert_eq!(web.netns, Some(fx.dir.path().join("netns-web")));
    assert_eq!(web.ips.len(), 2);
    let egress = web.egress.as_ref().expect("egress present");
    assert_eq!(egress[0].to, "10.96.0.0/16".parse::<IpNet>().expect("net"));
    assert_eq!(egress[0].ports, vec![80, 443]);
    assert_eq!(egress[1].to, "10.1.2.3/32".parse::<IpNet>().expect("net"));
    assert!(egress[1].ports.is_empty());
    assert_eq!(egress[2].to, "10.0.0.0/8".parse::<IpNet>().expect("net"));
    assert_eq!(web.ingress, Some(Vec::new()));
    assert_eq!(cfg.workloads[1].namespace, "other");
    assert_eq!(cfg.workloads[1].egress, None);
    assert_eq!(cfg.workloads[1].ingress, None);

    let svc = &cfg.services[0];
    assert_eq!(svc.namespace, "default");
    assert_eq!(svc.ports[0].target_port, 8080);
    assert_eq!(svc.ports[0].name.as_deref(), Some("http"));
    assert_eq!(svc.ports[1].target_port, 443);
    assert_eq!(svc.endpoints[0].node.as_deref(), Some("node2"));
    assert!(cfg.services[1].vips.is_empty());

    let json = serde_json::to_value(&cfg).expect("serializable");
    assert_eq!(json["node"]["admin"], "[::1]:9000");
    assert_eq!(json["workloads"][0]["egress"][0]["to"], "10.96.0.0/16");
}

#[test]
fn null_lists_are_empty() {
    let fx = Fixture::new();
    let cfg = fx
        .parse(&with_node("workloads:\nservices:\n"))
        .expect("valid");
    assert!(cfg.workloads.is_empty() && cfg.services.is_empty());
}

#[test]
fn unknown_fields_everywhere() {
    let fx = Fixture::new();
    fx.fails(&with_node("extra: 1\n"), 4, "unknown field `extra`");
    let e = fx.fails(
        "node:\n  name: n\n  cgroup: $D/node\n  cgrop: /x\n",
        4,
        "unknown field `cgrop`, expected one of",
    );
    assert_eq!(e.column(), Some(3));
    fx.fails(
        &with_node("workloads:\n  - name: w\n    cgroup: $D/pods/web\n    color: red\n"),
        7,
        "unknown field `color`",
    );
    fx.fails(
            &with_node(
                "workloads:\n  - name: w\n    cgroup: $D/pods/web\n    egress:\n      - to: 10.0.0.0/8\n        port: 80\n",
            ),
            9,
            "unknown field `port`",
        );
    fx.fails(
        &with_node(
            "services:\n  - name: s\n    ports:\n      - port: 80\n        targetPort: 81\n",
        ),
        8,
        "unknown field `targetPort`",
    );
    fx.fails(
        &with_node(
            "services:\n  - name: s\n    endpoints:\n      - ip: 10.0.0.1\n        zone: a\n",
        ),
        8,
        "unknown field `zone`",
    );
}

#[test]
fn missing_required_fields() {
    let fx = Fixture::new();
    fx.fails("node:\n  cgroup: $D/node\n", 2, "missing field `name`");
    fx.fails("node:\n  name: n\n", 2, "missing field `cgroup`");
    fx.fails("workloads: []\n", 1, "missing field `node`");
    fx.fails(
        &with_node("workloads:\n  - name: w\n  - name: v\n    cgroup: $D/pods/web\n"),
        5,
        "missing field `cgroup`",
    );
    fx.fails(
        &with_node("services:\n  - name: s\n    endpoints:\n      - node: n2\n"),
        7,
        "missing field `ip`",
    );
    fx.fails(
        &with_node(
            "workloads:\n  - name: w\n    cgroup: $D/pods/web\n    egress:\n      - ports: [80]\n",
        ),
        8,
        "missing field `to`",
    );
}

#[test]
fn duplicates() {
    let fx = Fixture::new();
    fx.fails(
            &with_node(
                "workloads:\n  - name: web\n    cgroup: $D/pods/web\n  - name: web\n    namespace: default\n    cgroup: $D/pods/api\n",
            ),
            7,
            "duplicate workload `default/web` (first defined at line 5)",
        );
    fx.fails(
            &with_node(
                "workloads:\n  - name: web\n    cgroup: $D/pods/web\n  - name: api\n    cgroup: $D/pods/web/\n",
            ),
            8,
            "is already used by workload `default/web` (line 6)",
        );
    fx.fails(
            &with_node(
                "workloads:\n  - name: a\n    cgroup: $D/pods/web\n    ips: [10.0.0.1]\n  - name: b\n    cgroup: $D/pods/api\n    ips: [10.0.0.1]\n",
            ),
            10,
            "IP 10.0.0.1 is already assigned to workload `default/a`",
        );
    fx.fails(
        &with_node("services:\n  - name: s\n  - name: s\n"),
        6,
        "duplicate service `default/s`",
    );
    fx.fails(
        &with_node("services:\n  - name: s\n    ports:\n      - port: 80\n      - port: 80\n"),
        8,
        "duplicate service port 80",
    );
    fx.fails(
            &with_node(
                "services:\n  - name: a\n    vips: [10.96.0.1]\n    ports: [{port: 80}]\n  - name: b\n    vips: [10.96.0.1]\n    ports: [{port: 80}]\n",
            ),
            9,
            "VIP 10.96.0.1 port 80 is already used by service `default/a`",
        );
    fx.parse(&with_node(
            "services:\n  - name: a\n    vips: [10.96.0.1]\n    ports: [{port: 80}]\n  - name: b\n    vips: [10.96.0.1]\n    ports: [{port: 81}]\n",
        ))
        .expect("different ports on one VIP are fine");
}

#[test]
fn new_sections_full_example() {
    let fx = Fixture::new();
    let yaml = "\
node:
  name: node1
  cgroup: $D/node
  address: 10.200.0.1
  tunnel_port: 15009
nodes:
  - name: node1
    address: 10.200.0.1
  - name: node2
    address: 'fd00::2'
identity:
  trust_domain: mesh.example_1
  ca:
    cert: $D/ca.pem
    key: $D/ca-key.pem
  trust_bundle: [$D/old-root.pem]
  cert_lifetime: 90m
workloads:
  - name: web
    cgroup: $D/pods/web
    service_account: web-sa
    labels: {app: web, example.com/version: v1.2_3, empty: ''}
    mode: strict
  - name: api
    cgroup: $D/pods/api
services:
  - name: web
    ports: [{port: 80}]
    endpoints:
      - ip: 10.1.1.2
        node: node1
      - ip: 10.1.2.2
        node: node2
      - ip: 192.0.2.7
authorization:
  - name: allow-a
    selector:
      matchLabels: {app: web}
    action: ALLOW
    rules:
      - from:
          - source:
              principals: ['cluster.local/ns/default/sa/a', 'spiffe://td/ns/x/sa/*']
              notPrincipals: ['*/sa/legacy']
              namespaces: [default, 'team-*']
              notNamespaces: ['*']
        to:
          - operation:
              ports: ['8080', 9090]
              notPorts: ['22']
      - {}
  - name: deny-all
    namespace: mesh-system
    selector: {matchLabels: {}}
    action: Deny
  - name: allow-a
    namespace: other
";
    let cfg = fx.parse(yaml).expect("valid config");
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");

    assert_eq!(cfg.node.address, Some(ip("10.200.0.1")));
    assert_eq!(cfg.node.tunnel_port, 15009);
    assert_eq!(
        cfg.nodes,
        vec![
            PeerNode {
                name: "node1".to_owned(),
                address: ip("10.200.0.1"),
            },
            PeerNode {
                name: "node2".to_owned(),
                address: ip("fd00::2"),
            },
        ]
    );

    let root = fx.dir.path();
    assert_eq!(
        cfg.identity,
        IdentityConfig {
            trust_domain: "mesh.example_1".to_owned(),
            ca: CaSource::Files {
                cert: root.join("ca.pem"),
                key: root.join("ca-key.pem"),
            },
            trust_bundle: vec![root.join("old-root.pem")],
            cert_lifetime: Duration::from_secs(90 * 60),
        }
    );

    let web = &cfg.workloads[0];
    assert_eq!(web.service_account, "web-sa");
    let labels: Vec<(&str, &str)> = web
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("app", "web"),
            ("empty", ""),
            ("example.com/version", "v1.2_3")
        ]
    );
    assert_eq!(web.mode, PeerAuthMode::Strict);
    let api = &cfg.workloads[1];
    assert_eq!(api.service_account, "default");
    assert!(api.labels.is_empty());
    assert_eq!(api.mode, PeerAuthMode::Permissive);

    let nodes: Vec<Option<&str>> = cfg.services[0]
        .endpoints
        .iter()
        .map(|e| e.node.as_deref())
        .collect();
    assert_eq!(nodes, [Some("node1"), Some("node2"), None]);

    let string = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        cfg.authorization[0],
        AuthorizationPolicy {
            name: "allow-a".to_owned(),
            namespace: "default".to_owned(),
            selector: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            action: AuthzAction::Allow,
            rules: vec![
                AuthzRule {
                    from: vec![AuthzSource {
                        principals: string(&["cluster.local/ns/default/sa/a", "td/ns/x/sa/*"]),
                        not_principals: string(&["*/sa/legacy"]),
                        namespaces: string(&["default", "team-*"]),
                        not_namespaces: string(&["*"]),
                    }],
                    to: vec![AuthzOperation {
                        ports: vec![8080, 9090],
                        not_ports: vec![22],
                    }],
                },
                AuthzRule {
                    from: Vec::new(),
                    to: Vec::new(),
                },
            ],
        }
    );
    let deny = &cfg.authorization[1];
    assert_eq!(deny.namespace, "mesh-system");
    assert_eq!(deny.selector, None, "empty matchLabels selects everything");
    assert_eq!(deny.action, AuthzAction::Deny);
    assert!(deny.rules.is_empty());
    assert_eq!(cfg.authorization[2].namespace, "other");

    let json = serde_json::to_value(&cfg).expect("serializable");
    assert_eq!(json["identity"]["cert_lifetime"], "90m");
    assert_eq!(
        json["identity"]["ca"]["files"]["cert"],
        root.join("ca.pem").display().to_string()
    );
    assert_eq!(json["workloads"][0]["mode"], "STRICT");
    assert_eq!(json["authorization"][1]["action"], "DENY");
    assert_eq!(json["node"]["address"], "10.200.0.1");
}

/// One case per error class of the sections (routes aside) whose own tests
/// check the reason only in part: the exact `FILE:LINE:COLUMN: reason`,
/// and that the mistake gives one error. (Route classes: the tests of
/// `routes`, which check every one exactly.)
#[test]
fn error_classes_with_exact_messages() {
    let fx = Fixture::new();
    let node_at = |rest: &str| format!("node:\n  name: node1\n  cgroup: $D/node\n{rest}");
    let cases: Vec<(String, &str)> = vec![
        (
            "- a\n".to_owned(),
            "1:1: found a list; expected a mapping with a `node` section at the top level",
        ),
        (
            "node:\n  name: Node_1\n  cgroup: $D/node\n".to_owned(),
            "2:9: invalid node name `Node_1`: use 1 to 63 characters among a-z, 0-9 and '-'",
        ),
        (
            node_at("  address: 0.0.0.0\n"),
            "4:12: node address 0.0.0.0 cannot be connected to; use the node's own IP address",
        ),
        (
            node_at("nodes:\n  - {name: B, address: 10.0.0.2}\n"),
            "5:12: invalid node name `B`: use 1 to 63 characters among a-z, 0-9 and '-'",
        ),
        (
            node_at("  address: 10.0.0.1\nnodes:\n  - {name: b, address: 10.0.0.1}\n"),
            "6:24: address 10.0.0.1 of node `b` is this node's address (node.address)",
        ),
        (
            node_at("identity:\n  ca: {cert: $D/ca.pem}\n"),
            "5:14: `ca.cert` needs `ca.key`: give both files of the CA, or `dir` alone",
        ),
        (
            node_at("identity:\n  ca: {key: $D/ca-key.pem}\n"),
            "5:13: `ca.key` needs `ca.cert`: give both files of the CA, or `dir` alone",
        ),
        (
            node_at("identity:\n  ca: {}\n"),
            "5:7: `ca` is empty: set `dir` (a CA generated by the agent) or `cert` and `key` (a CA you provide)",
        ),
        (
            node_at("identity:\n  trust_bundle: [$D/node]\n"),
            "5:18: trust_bundle path $D/node is a directory, not a PEM file",
        ),
        (
            node_at("identity:\n  ca: {cert: $D/ca.pem/x, key: $D/ca-key.pem}\n"),
            "5:14: ca.cert path $D/ca.pem/x cannot be accessed: Not a directory (os error 20)",
        ),
        (
            node_at("identity:\n  cert_lifetime: 1w\n"),
            "5:18: invalid cert_lifetime `1w`: expected a whole number and a unit s, m, h or d, such as 90m or 24h",
        ),
        (
            node_at("  admin: localhost:15000\n"),
            "4:10: invalid admin address `localhost:15000`: expected IP:PORT such as 127.0.0.1:15000 or [::1]:15000",
        ),
        (
            node_at("  admin: 0.0.0.0:15000\n"),
            "4:10: admin address 0.0.0.0:15000 is not a loopback address (use 127.0.0.1 or ::1)",
        ),
        (
            node_at("workloads:\n  - name: w\n    cgroup: $D/pods/web\n    egress:\n"),
            "7:11: `egress` has no value: write `egress: []` to deny all, or remove the key to allow all",
        ),
        (
            node_at("workloads:\n  - name: w\n    cgroup: $D/pods/web\n    netns: $D/node\n"),
            "7:12: netns path $D/node is a directory, not a network namespace file",
        ),
        (
            node_at(
                "workloads:\n  - name: w\n    cgroup: $D/pods/web\n    egress: [{to: 10.0.0.0.1}]\n",
            ),
            "7:19: invalid CIDR `10.0.0.0.1`: expected an IP address or ADDRESS/PREFIX_LENGTH",
        ),
        (
            node_at(
                "workloads:\n  - name: w\n    cgroup: $D/pods/web\n    ingress: [{from: 10.0.0/8}]\n",
            ),
            "7:22: invalid CIDR `10.0.0/8`: `10.0.0` is not an IP address",
        ),
        (
            node_at(
                "workloads:\n  - name: w\n    cgroup: $D/pods/web\n    labels: {Example.com/app: web}\n",
            ),
            "7:14: invalid label key `Example.com/app`: the prefix before '/' must be a DNS subdomain such as example.com (lowercase, at most 253 characters)",
        ),
        (
            node_at("workloads:\n  - name: w\n    cgroup: $D/pods/web\n    labels: {-app: web}\n"),
            "7:14: invalid label key `-app`: the name must be 1 to 63 characters among A-Z, a-z, 0-9, '-', '_' and '.' (at most one '/' after an optional DNS prefix), starting and ending with a letter or digit",
        ),
        (
            node_at("workloads:\n  - name: w\n    cgroup: $D/pods/web\n    labels: {app: web_}\n"),
            "7:19: invalid value `web_` of label `app`: use at most 63 characters among A-Z, a-z, 0-9, '-', '_' and '.', starting and ending with a letter or digit",
        ),
        (
            node_at("services:\n  - name: a/b\n"),
            "5:11: invalid service name `a/b`: must be non-empty without '/', spaces or control characters",
        ),
        (
            node_at(
                "authorization:\n  - name: p\n    rules:\n      - from:\n          - source: {namespaces: [a/b]}\n",
            ),
            "8:35: invalid namespace `a/b`: a namespace contains no '/'",
        ),
        (
            node_at("  admin: 127.0.0.1:15020\ntelemetry:\n  istio_metrics: true\n"),
            // No position: both values are defaults.
            " telemetry.metrics_address uses port 15020, which `node.admin` also uses; set telemetry.metrics_address to another port",
        ),
        (
            node_at("telemetry:\n  metrics_address: 15020\n"),
            "5:20: invalid telemetry.metrics_address `15020`: expected IP:PORT such as 0.0.0.0:15020 or [::]:15020",
        ),
        (
            node_at("telemetry:\n  cluster_id: a b\n"),
            "5:15: invalid telemetry.cluster_id `a b`: use 1 to 63 characters among letters, digits, '-', '_' and '.'",
        ),
        (
            node_at("telemetry:\n  cluster_domain: Cluster.Local\n"),
            "5:19: invalid telemetry.cluster_domain `Cluster.Local`: expected a DNS domain such as cluster.local",
        ),
    ];
    let mut wrong = Vec::new();
    for (yaml, expected) in &cases {
        let expected = format!("test.yaml:{}", fx.text(expected));
        match fx.parse(yaml) {
            Ok(_) => wrong.push(format!("accepted:\n{yaml}")),
            Err(e) if e.to_string() != expected => {
                wrong.push(format!("{yaml}\n  expected {expected}\n  got      {e}"));
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn every_semantic_error_is_reported_in_file_order() {
    let fx = Fixture::new();
    let yaml = "\
node:
  name: Node1
  cgroup: $D/node
  outbound_port: 0
workloads:
  - name: web
    cgroup: $D/pods/missing
    ips: [10.0.0.300, 10.0.0.1]
    egress: [{to: 10.0.0.0/33, ports: [80, x]}]
  - name: web
    cgroup: $D/pods/api
services:
  - name: db
    ports: [{port: 70000}]
authorization:
  - name: p
    action: MAYBE
telemetry:
  cluster_id: a b
";
    let err = fx.parse(yaml).expect_err("many mistakes");
    let root = fx.root();
    let expected = [
            "test.yaml:2:9: invalid node name `Node1`: use 1 to 63 characters among a-z, 0-9 and '-'".to_owned(),
            "test.yaml:4:18: port 0 is out of range 1..=65535".to_owned(),
            format!("test.yaml:7:13: cgroup path {root}/pods/missing does not exist"),
            "test.yaml:8:11: invalid IP address `10.0.0.300`".to_owned(),
            "test.yaml:9:19: invalid CIDR `10.0.0.0/33`: prefix length 33 is longer than 32".to_owned(),
            "test.yaml:9:44: invalid port `x`: expected a number in 1..=65535".to_owned(),
            "test.yaml:10:11: duplicate workload `default/web` (first defined at line 6)".to_owned(),
            "test.yaml:14:20: port 70000 is out of range 1..=65535".to_owned(),
            "test.yaml:17:13: invalid action `MAYBE`: expected ALLOW or DENY".to_owned(),
            "test.yaml:19:15: invalid telemetry.cluster_id `a b`: use 1 to 63 characters among letters, digits, '-', '_' and '.'".to_owned(),
        ];
    assert_eq!(err.to_string(), expected.join("\n"));
    assert_eq!(err.len(), expected.len());
    assert!(!err.stopped_early());
    // The accessors describe the first error.
    assert_eq!((err.line(), err.column()), (Some(2), Some(9)));
    assert!(err.reason().starts_with("invalid node name"));
    assert_eq!(err.file(), "test.yaml");
    assert_eq!(err.into_first().line(), Some(2));
}

/// A mistake in something other parts refer to is reported once, not
/// again at every reference.
#[test]
fn one_mistake_one_error() {
    let fx = Fixture::new();
    let cases = [
        // A service with a bad port: routes attached to it or sending to it.
        (
            with_node(
                "services:\n  - name: web\n    ports: [{port: 0}]\nhttp_routes:\n  - name: r\n    spec:\n      parentRefs: [{name: web, port: 80}]\n      rules: [{backendRefs: [{name: web, port: 80}]}]\n",
            ),
            6,
            "port 0 is out of range",
        ),
        // The same for a GRPCRoute, with a service whose name is wrong.
        (
            with_node(
                "services:\n  - name: 'g rpc'\ngrpc_routes:\n  - name: r\n    spec:\n      parentRefs: [{name: 'g rpc'}]\n",
            ),
            5,
            "invalid service name",
        ),
        // A bad node address: peers are not compared with it.
        (
            with_node(
                "  address: 10.0.0.300\nnodes:\n  - {name: node1, address: 10.0.0.1}\n  - {name: b, address: 10.0.0.2}\n",
            ),
            4,
            "invalid IP address",
        ),
        // A bad node port: telemetry is not compared with it.
        (
            with_node("  admin: 127.0.0.1:0x\ntelemetry:\n  metrics_address: 0.0.0.0:15000\n"),
            4,
            "invalid admin address",
        ),
        // A peer with a bad address is still a known node for endpoints.
        (
            with_node(
                "nodes:\n  - {name: b, address: nowhere}\nservices:\n  - name: s\n    endpoints: [{ip: 10.1.0.1, node: b}]\n",
            ),
            5,
            "invalid IP address",
        ),
        // A duplicate service: the first definition stays valid for routes.
        (
            with_node(
                "services:\n  - name: web\n    ports: [{port: 80}]\n  - name: web\nhttp_routes:\n  - name: r\n    spec:\n      parentRefs: [{name: web, port: 80}]\n",
            ),
            7,
            "duplicate service",
        ),
    ];
    for (yaml, line, needle) in cases {
        fx.fails(&yaml, line, needle);
    }
}
