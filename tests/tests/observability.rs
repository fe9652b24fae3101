//! Observability end to end, checked by the real tools operators use: a real Prometheus
//! server (Debian's 2.42) scrapes both agents' `/metrics` every second, and PromQL must give
//! exact numbers for a traffic pattern whose every byte and request is known; `promtool check
//! metrics` and Python's strict OpenMetrics parser must accept the expositions; the label sets
//! must be Istio's exactly; and every panel of the Grafana dashboard must return data.
//!
//! One mesh and one Prometheus serve all four checks (building a mesh costs seconds, and meshes
//! take turns): `observability_must_show` runs them as steps, each collecting every problem it
//! finds, and fails at the end with all of them. The steps are named after the issue's
//! Must-show tests:
//! - `prometheus_counts_exact_bytes_and_requests`
//! - `exposition_is_valid_openmetrics_and_prometheus_text`
//! - `labels_match_istio_exactly`
//! - `every_dashboard_panel_returns_data`
//!
//! `prometheus_harness_scrapes_itself` checks the harness alone (Prometheus scraping itself in
//! a simulated node), and `promtool_and_openmetrics_checkers_catch_problems` that the two
//! validators really reject bad input, so that a clean result means something.
//!
//! Like every privileged test here, these FAIL (never skip) without root, cgroup v2 and BPF.

mod common;
mod l7_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use l7_support::{Backend, GRPC_PORT, grpc_backend, grpc_call, http_service};
use mesh_tests::dashboard;
use mesh_tests::mesh::{IdentitySpec, Mesh, MeshSpec, PolicySpec, ServiceSpec};
use mesh_tests::prometheus::{
    self, HttpReply, Prometheus, openmetrics_parse, parse_exposition, promtool_check_metrics,
    promtool_check_metrics_allowing, show_labels,
};
use mesh_tests::sim::{Proc, Sim};

// ---------------------------------------------------------------------------------------------
// The cluster of the test.
//
// node1: pods "client" (sa client-sa, app=shop-client, version=v7) and "denied" (egress policy);
// node2: pods "tcp-server" (sink-server, sa sink-sa, app=sink), "web" (http-backend, sa
//        web-sa), "client2" (sa client2-sa), "guarded" (sink-server behind an ingress rule)
//        "secret" (sink-server behind an authorization policy that lets nobody in) and "grpc"
//        (tests/grpc/grpc_backend.py).
// Services: sink (TCP), web (HTTP with one route), guarded (TCP), secret (TCP), greeter (gRPC).
// ---------------------------------------------------------------------------------------------

const NS: &str = "default";
const TRUST_DOMAIN: &str = "cluster.local";
/// `telemetry.cluster_id` default (Istio's).
const CLUSTER: &str = "Kubernetes";

const SINK_VIP: &str = "10.96.5.10";
const SINK_PORT: u16 = 9000;
const WEB_VIP: &str = "10.96.5.20";
const GUARDED_VIP: &str = "10.96.5.30";
const GUARDED_PORT: u16 = 9100;
const SECRET_VIP: &str = "10.96.5.40";
const SECRET_PORT: u16 = 9200;

/// TCP traffic: K1 connections from "client" (node1, through the mTLS tunnel) and K2 from
/// "client2" (node2, same node as the server), each sending X bytes and half-closing; the
/// sink server answers with the 8-byte big-endian count of what it received, then closes.
const K1: u64 = 4;
const X1: u64 = 1500;
const K2: u64 = 3;
const X2: u64 = 700;
/// What the sink answers on every connection (a u64, big endian).
const Y: u64 = 8;

/// HTTP traffic from "client": N POSTs with a B-byte body to /api/items (the route's rule
/// sends them to http-backend "web", which answers 200 with the body "web\n"), then M GETs of
/// a path no rule matches, which the agent answers itself with 404 (flag NR).
const N: u64 = 6;
const B: u64 = 777;
/// The http-backend's body for any path it does not treat specially: its name and "\n".
const WEB_BODY: &str = "web\n";
const M: u64 = 3;

/// gRPC traffic from "client" to the Python gRPC backend: G_OK calls of Say (status OK, 0)
/// and G_FAIL of Fail (UNAVAILABLE, 14); all of them are HTTP 200 with grpc-status in the
/// trailers.
const G_OK: u64 = 5;
const G_FAIL: u64 = 2;
const GREETER_VIP: &str = "10.96.5.50";

/// The one line `promtool check metrics` prints for Istio's exposition: Istio names its
/// duration histogram in milliseconds, which promtool's lint wants in seconds. The name is
/// Istio's (dashboards, Kiali and Flagger query it), so it stays; anything else is a problem.
const PROMTOOL_ISTIO_UNIT: &str =
    r#"istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds""#;

/// Every Istio metric and its type, as a Prometheus 0.0.4 text exposition names its families
/// (counters keep `_total`, as their samples do).
const ISTIO_TEXT_FAMILIES: [(&str, &str); 8] = [
    ("istio_tcp_sent_bytes_total", "counter"),
    ("istio_tcp_received_bytes_total", "counter"),
    ("istio_tcp_connections_opened_total", "counter"),
    ("istio_tcp_connections_closed_total", "counter"),
    ("istio_requests_total", "counter"),
    ("istio_request_duration_milliseconds", "histogram"),
    ("istio_request_bytes", "histogram"),
    ("istio_response_bytes", "histogram"),
];

/// Istio's standard label set of the TCP metrics, exactly ztunnel's without the locality
/// labels (written out here on purpose, not taken from the agent's code).
const ISTIO_TRAFFIC_LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];
/// What the request metrics add to the traffic labels.
const ISTIO_REQUEST_EXTRA_LABELS: [&str; 2] = ["response_code", "grpc_response_status"];

fn principal(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NS}/sa/{sa}")
}

fn service_host(name: &str) -> String {
    format!("{name}.{NS}.svc.cluster.local")
}

fn identity(sa: &str, labels: &[(&str, &str)]) -> IdentitySpec {
    IdentitySpec {
        service_account: Some(sa.to_string()),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        strict: false,
    }
}

fn tcp_service(name: &str, vip: &str, port: u16, endpoint: &str) -> ServiceSpec {
    service(name, vip, port, port, &[endpoint]).protocol("tcp")
}

/// Nobody may talk to "secret": its only ALLOW rule names a principal no workload has.
const SECRET_POLICY: &str = r#"
  - name: secret-nobody
    namespace: default
    selector: {matchLabels: {app: secret}}
    action: ALLOW
    rules:
      - from:
          - source:
              principals: ["cluster.local/ns/default/sa/nobody"]
"#;

/// The web service's route: /api goes to web; any other path has no rule (404 NR).
const ROUTES: &str = r#"
http_routes:
  - name: web-api
    spec:
      parentRefs: [{name: web, port: 80}]
      rules:
        - matches: [{path: {type: PathPrefix, value: /api}}]
          backendRefs: [{name: web, port: 80}]
"#;

struct Cluster {
    // Dropped in reverse order: Prometheus and the servers before the mesh (whose sim
    // teardown would kill them anyway).
    mesh: Mesh,
    _servers: Vec<Proc>,
    _web: Backend,
    prom: Prometheus,
    /// The byte count of the agent's own 404 body (as curl saw it), per request.
    not_found_body: u64,
}

fn metrics_targets(mesh: &Mesh) -> Vec<SocketAddr> {
    ["node1", "node2"]
        .iter()
        .map(|n| SocketAddr::from((mesh.sim.node(n).ip, 15020)))
        .collect()
}

fn setup() -> Cluster {
    let mut mesh = mesh("obs");
    for (node, pod) in [
        ("node1", "client"),
        ("node1", "denied"),
        ("node2", "tcp-server"),
        ("node2", "web"),
        ("node2", "client2"),
        ("node2", "guarded"),
        ("node2", "secret"),
        ("node2", "grpc"),
    ] {
        mesh.sim
            .add_pod(node, pod)
            .unwrap_or_else(|e| panic!("pod {pod}: {e:#}"));
    }
    let mut spec = MeshSpec {
        services: vec![
            tcp_service("sink", SINK_VIP, SINK_PORT, "tcp-server"),
            http_service("web", WEB_VIP, "http", &["web"]),
            tcp_service("guarded", GUARDED_VIP, GUARDED_PORT, "guarded"),
            tcp_service("secret", SECRET_VIP, SECRET_PORT, "secret"),
            service("greeter", GREETER_VIP, GRPC_PORT, GRPC_PORT, &["grpc"]).protocol("grpc"),
        ],
        routes_yaml: Some(ROUTES.to_string()),
        authorization_yaml: Some(SECRET_POLICY.to_string()),
        ..MeshSpec::default()
    };
    for (w, sa, labels) in [
        (
            "client",
            "client-sa",
            &[("app", "shop-client"), ("version", "v7")][..],
        ),
        ("client2", "client2-sa", &[][..]),
        ("tcp-server", "sink-sa", &[("app", "sink")][..]),
        ("web", "web-sa", &[][..]),
        ("secret", "secret-sa", &[("app", "secret")][..]),
    ] {
        spec.identities.insert(w.to_string(), identity(sa, labels));
    }
    // "denied" may only reach the web VIP: its connect to the sink VIP gets EPERM.
    spec.policies.insert(
        "denied".into(),
        PolicySpec {
            egress: Some(vec![(format!("{WEB_VIP}/32"), vec![80])]),
            ingress: None,
        },
    );
    // "guarded" accepts its port only from an address nothing has: every SYN is dropped.
    spec.policies.insert(
        "guarded".into(),
        PolicySpec {
            egress: None,
            ingress: Some(vec![("10.96.255.254/32".to_string(), vec![GUARDED_PORT])]),
        },
    );

    let sink = |pod: &str, port: u16| {
        mesh.serve(
            pod,
            &["sink-server", "--listen", &format!("0.0.0.0:{port}")],
        )
        .unwrap_or_else(|e| panic!("sink-server in {pod}: {e:#}"))
    };
    let mut servers = vec![
        sink("tcp-server", SINK_PORT),
        sink("guarded", GUARDED_PORT),
        sink("secret", SECRET_PORT),
    ];
    let web = Backend::start(&mesh, "web", "web", &[]);
    let (grpc, _) = grpc_backend(&mesh, "grpc", "grpc");
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");

    // Prometheus in node1's network namespace, in a cgroup outside every node cgroup: its
    // scrapes are not mesh traffic.
    let targets = metrics_targets(&mesh);
    let mut prom =
        Prometheus::start(&mesh.sim, &mesh.outside("node1"), &targets).expect("prometheus");
    prom.wait_until_ready(Duration::from_secs(30))
        .expect("prometheus ready");
    prom.wait_for_targets_up(2, Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\n{}\n{}",
                mesh.agent_logs("node1"),
                mesh.agent_logs("node2")
            )
        });

    servers.push(grpc);
    let not_found_body = run_traffic(&mesh);
    Cluster {
        mesh,
        _servers: servers,
        _web: web,
        prom,
        not_found_body,
    }
}

/// The traffic pattern whose numbers the checks know. Every connection is closed when this
/// returns. Returns the size of the agent's 404 body.
fn run_traffic(mesh: &Mesh) -> u64 {
    // TCP: K1 connections client -> sink (cross-node), K2 client2 -> sink (same node).
    for (from, k, x) in [("client", K1, X1), ("client2", K2, X2)] {
        let payload = "x".repeat(x as usize);
        for i in 0..k {
            let r = mesh
                .probe(
                    from,
                    &[
                        "connect",
                        "--connect",
                        &format!("{SINK_VIP}:{SINK_PORT}"),
                        "--send",
                        &payload,
                        "--timeout-ms",
                        "5000",
                    ],
                )
                .expect("probe");
            assert_eq!(r["ok"], true, "{from} connection {i} to sink: {r}");
            // The sink's answer is the count it received: 8 bytes, big endian. The probe shows
            // it as lossy UTF-8 text: 6 NULs, then 2 bytes that each become one character.
            let reply: Vec<char> = s(&r, "reply").chars().collect();
            assert_eq!(reply.len() as u64, Y, "{from}: sink reply {r}");
        }
    }

    // HTTP: N POSTs of B bytes, each answered 200 "web\n" by the backend.
    let body_file = mesh.sim.dir().join("request-body");
    std::fs::write(&body_file, vec![b'b'; B as usize]).expect("body file");
    let data = format!("@{}", body_file.display());
    for i in 0..N {
        let (code, up, down) = curl_sizes(
            mesh,
            &[
                "--http1.1",
                "-H",
                "Expect:",
                "--data-binary",
                &data,
                &format!("http://{WEB_VIP}/api/items"),
            ],
        );
        assert_eq!(
            (code, up, down),
            (200, B, WEB_BODY.len() as u64),
            "POST {i}: status, bytes uploaded, bytes downloaded"
        );
    }
    // M GETs that no rule matches: 404 from the agent. Its body size is the agent's business;
    // curl tells it, and every one must be the same.
    let mut not_found_body = None;
    for i in 0..M {
        let (code, up, down) =
            curl_sizes(mesh, &["--http1.1", &format!("http://{WEB_VIP}/nowhere")]);
        assert_eq!((code, up), (404, 0), "GET /nowhere {i}");
        assert!(
            not_found_body.is_none_or(|b| b == down),
            "404 bodies differ in size"
        );
        not_found_body = Some(down);
    }

    // gRPC: G_OK successful calls and G_FAIL failing ones, on one channel each.
    let target = format!("{GREETER_VIP}:{GRPC_PORT}");
    let ok = grpc_call(
        mesh,
        "client",
        &target,
        "/mesh.test.Echo/Say",
        G_OK as usize,
        &[],
    );
    assert_eq!(ok["by_status"], serde_json::json!({"OK": G_OK}), "{ok}");
    let fail = grpc_call(
        mesh,
        "client",
        &target,
        "/mesh.test.Echo/Fail",
        G_FAIL as usize,
        &[],
    );
    assert_eq!(
        fail["by_status"],
        serde_json::json!({"UNAVAILABLE": G_FAIL}),
        "{fail}"
    );

    // Policy drops, one each way. Outbound: "denied" may not connect to the sink VIP (EPERM at
    // once, connect4 refuses it).
    let r = mesh
        .probe(
            "denied",
            &[
                "connect",
                "--connect",
                &format!("{SINK_VIP}:{SINK_PORT}"),
                "--timeout-ms",
                "3000",
            ],
        )
        .expect("probe");
    assert_eq!(r["ok"], false, "denied connect must fail: {r}");
    assert_eq!(r["errno"].as_i64(), Some(1), "EPERM expected: {r}");
    // Inbound: a process on node2 dials the guarded pod; node2's agent relays it and its SYN
    // to the pod is dropped by the pod's ingress rule (as in tests/policy.rs).
    let guarded_ip = mesh.workload("guarded").ip.to_string();
    let out = mesh
        .sim
        .run(
            &mesh.sim.node("node2").tools_placement(),
            &mesh.bins.probe,
            [
                "connect",
                "--connect",
                &format!("{guarded_ip}:{GUARDED_PORT}"),
                "--timeout-ms",
                "1500",
                "--send",
                "hello",
            ],
        )
        .expect("probe from node2");
    let r = mesh_tests::mesh::parse_last_json(&out.stdout).expect("json");
    assert!(
        r["ok"] == false && !s(&r, "reply").contains('\u{0}'),
        "the guarded sink must never answer: {r}"
    );
    // Authorization: client -> secret is refused by node2's agent (no ALLOW rule matches).
    let _ = mesh.probe(
        "client",
        &[
            "connect",
            "--connect",
            &format!("{SECRET_VIP}:{SECRET_PORT}"),
            "--send",
            "let me in",
            "--timeout-ms",
            "3000",
        ],
    );
    not_found_body.expect("M > 0")
}

/// Runs curl in "client"; returns (status, bytes uploaded, bytes downloaded of the body).
fn curl_sizes(mesh: &Mesh, args: &[&str]) -> (u16, u64, u64) {
    let mut full = vec![
        "-sS",
        "-m",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_upload} %{size_download}",
    ];
    full.extend_from_slice(args);
    let out = mesh.run_in("client", "curl", &full).expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?}: {} {text} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("curl -w output {text:?}"))
        })
        .collect();
    (nums[0] as u16, nums[1], nums[2])
}

/// Problems found by a step; the test fails at the end with all of them.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, p: impl Into<String>) {
        let p = p.into();
        eprintln!("PROBLEM: {p}");
        self.0.push(p);
    }

    fn check(&mut self, result: anyhow::Result<impl Sized>) {
        if let Err(e) = result {
            self.add(format!("{e:#}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------------

#[test]
fn observability_must_show() {
    let cluster = setup();
    let report: Vec<(&str, Problems)> = vec![
        (
            "prometheus_counts_exact_bytes_and_requests",
            prometheus_counts_exact_bytes_and_requests(&cluster),
        ),
        (
            "exposition_is_valid_openmetrics_and_prometheus_text",
            exposition_is_valid_openmetrics_and_prometheus_text(&cluster),
        ),
        (
            "labels_match_istio_exactly",
            labels_match_istio_exactly(&cluster),
        ),
        (
            "every_dashboard_panel_returns_data",
            every_dashboard_panel_returns_data(&cluster),
        ),
    ];
    let mut failed = String::new();
    for (step, problems) in &report {
        let verdict = if problems.0.is_empty() {
            "ok".to_string()
        } else {
            format!("FAILED ({} problems)", problems.0.len())
        };
        eprintln!("step {step}: {verdict}");
        for p in &problems.0 {
            failed += &format!("\n[{step}] {p}");
        }
    }
    if !failed.is_empty() {
        panic!(
            "{failed}\n\nagent logs: {}\nprometheus: {}",
            cluster.mesh.sim.dir().join("logs").display(),
            cluster.prom.config_path.display()
        );
    }
}

/// Waits up to this long for the first exact value (close events arrive through the ring
/// buffer, then Prometheus scrapes every second); later values are usually there at once.
const SETTLE: Duration = Duration::from_secs(20);

/// Sum of `metric{selector}` must become exactly `expected`.
fn exact(problems: &mut Problems, prom: &Prometheus, metric: &str, selector: &str, expected: u64) {
    let expr = format!("sum({metric}{{{selector}}})");
    problems.check(prom.wait_for(&expr, expected as f64, SETTLE));
}

/// Every series of `metric{selector}` has these label values; there is at least one series.
fn labels_are(
    problems: &mut Problems,
    prom: &Prometheus,
    metric: &str,
    selector: &str,
    want: &[(&str, String)],
) {
    let expr = format!("{metric}{{{selector}}}");
    let series = match prom.query(&expr) {
        Ok(s) => s,
        Err(e) => return problems.add(format!("{e:#}")),
    };
    if series.is_empty() {
        return problems.add(format!("`{expr}`: no series"));
    }
    for (labels, _) in &series {
        for (k, v) in want {
            let got = labels.get(*k).map(String::as_str).unwrap_or("<absent>");
            if got != v {
                problems.add(format!(
                    "`{expr}`: label {k} is {got:?}, expected {v:?} (series {})",
                    show_labels(labels)
                ));
            }
        }
    }
}

/// (a) Exact numbers through PromQL.
fn prometheus_counts_exact_bytes_and_requests(c: &Cluster) -> Problems {
    let mut p = Problems::default();
    let prom = &c.prom;

    // --- TCP, reporter="source": the client sockets, counted by each client's own agent. ---
    // "received" is the request direction (client -> server), "sent" the response direction
    // (server -> client), as Istio defines them.
    let from_client =
        r#"reporter="source",source_workload="client",destination_service_name="sink""#;
    // K1 = 4 connections x X1 = 1500 bytes = 6000 bytes from client to the sink.
    exact(
        &mut p,
        prom,
        "istio_tcp_received_bytes_total",
        from_client,
        K1 * X1,
    );
    // K1 = 4 connections x Y = 8 bytes (the sink's count) = 32 bytes back.
    exact(
        &mut p,
        prom,
        "istio_tcp_sent_bytes_total",
        from_client,
        K1 * Y,
    );
    // Each connection opened once and closed once.
    exact(
        &mut p,
        prom,
        "istio_tcp_connections_opened_total",
        from_client,
        K1,
    );
    exact(
        &mut p,
        prom,
        "istio_tcp_connections_closed_total",
        from_client,
        K1,
    );
    let from_client2 =
        r#"reporter="source",source_workload="client2",destination_service_name="sink""#;
    // K2 = 3 connections x X2 = 700 bytes = 2100 bytes; K2 x 8 = 24 bytes back.
    exact(
        &mut p,
        prom,
        "istio_tcp_received_bytes_total",
        from_client2,
        K2 * X2,
    );
    exact(
        &mut p,
        prom,
        "istio_tcp_sent_bytes_total",
        from_client2,
        K2 * Y,
    );
    exact(
        &mut p,
        prom,
        "istio_tcp_connections_opened_total",
        from_client2,
        K2,
    );
    exact(
        &mut p,
        prom,
        "istio_tcp_connections_closed_total",
        from_client2,
        K2,
    );

    // --- TCP, reporter="destination": the sink's sockets, counted by node2's agent. ---
    let at_sink = r#"reporter="destination",destination_workload="tcp-server""#;
    // Both clients: 4 x 1500 + 3 x 700 = 6000 + 2100 = 8100 bytes received by the sink.
    exact(
        &mut p,
        prom,
        "istio_tcp_received_bytes_total",
        at_sink,
        K1 * X1 + K2 * X2,
    );
    // (4 + 3) x 8 = 56 bytes sent by the sink.
    exact(
        &mut p,
        prom,
        "istio_tcp_sent_bytes_total",
        at_sink,
        (K1 + K2) * Y,
    );
    exact(
        &mut p,
        prom,
        "istio_tcp_connections_opened_total",
        at_sink,
        K1 + K2,
    );
    exact(
        &mut p,
        prom,
        "istio_tcp_connections_closed_total",
        at_sink,
        K1 + K2,
    );
    // The cross-node part, told apart by the client's certificate: client's 4 x 1500 bytes.
    let at_sink_from_client = format!(r#"{at_sink},source_principal="{}""#, principal("client-sa"));
    exact(
        &mut p,
        prom,
        "istio_tcp_received_bytes_total",
        &at_sink_from_client,
        K1 * X1,
    );
    exact(
        &mut p,
        prom,
        "istio_tcp_connections_closed_total",
        &at_sink_from_client,
        K1,
    );
    // Same node: client2's 3 x 700 bytes.
    let at_sink_from_client2 = format!(
        r#"{at_sink},source_principal="{}""#,
        principal("client2-sa")
    );
    exact(
        &mut p,
        prom,
        "istio_tcp_received_bytes_total",
        &at_sink_from_client2,
        K2 * X2,
    );

    // Label values of the TCP series: every one of the 23, for each reporter.
    let v = |k: &'static str, val: &str| (k, val.to_string());
    // client (node1, labels app=shop-client version=v7, sa client-sa) -> sink (tcp-server).
    let client_labels = [
        v("source_workload", "client"),
        v("source_canonical_service", "shop-client"),
        v("source_canonical_revision", "v7"),
        v("source_workload_namespace", NS),
        ("source_principal", principal("client-sa")),
        v("source_app", "shop-client"),
        v("source_version", "v7"),
        v("source_cluster", CLUSTER),
    ];
    let sink_service = [
        ("destination_service", service_host("sink")),
        v("destination_service_namespace", NS),
        v("destination_service_name", "sink"),
    ];
    // tcp-server as its own node (node2) knows it: labels app=sink, sa sink-sa.
    let sink_full = [
        v("destination_workload", "tcp-server"),
        v("destination_canonical_service", "sink"),
        v("destination_canonical_revision", "latest"),
        v("destination_workload_namespace", NS),
        ("destination_principal", principal("sink-sa")),
        v("destination_app", "sink"),
        v("destination_version", "latest"),
        v("destination_cluster", CLUSTER),
    ];
    // TCP through the agents with certificates on both ends.
    let tcp_mtls = [
        v("request_protocol", "tcp"),
        v("response_flags", "-"),
        v("connection_security_policy", "mutual_tls"),
    ];
    // Destination (node2): it knows its own workload, and the source from the client's
    // certificate and the metadata node1's agent sends along.
    let mut at_destination = vec![v("reporter", "destination")];
    at_destination.extend(client_labels.iter().cloned());
    at_destination.extend(sink_service.iter().cloned());
    at_destination.extend(sink_full.iter().cloned());
    at_destination.extend(tcp_mtls.iter().cloned());
    assert_eq!(at_destination.len(), 23);
    labels_are(
        &mut p,
        prom,
        "istio_tcp_received_bytes_total",
        &at_sink_from_client,
        &at_destination,
    );
    // Source (node1): its own workload in full, and the remote endpoint's workload as node2's
    // agent described it in its answer to the tunnel request (labels and service account are
    // not in node1's config): the same 23 values as the destination's, reporter aside, as
    // in Istio.
    let mut at_source = vec![v("reporter", "source")];
    at_source.extend(client_labels.iter().cloned());
    at_source.extend(sink_service.iter().cloned());
    at_source.extend(sink_full.iter().cloned());
    at_source.extend(tcp_mtls.iter().cloned());
    assert_eq!(at_source.len(), 23);
    labels_are(
        &mut p,
        prom,
        "istio_tcp_received_bytes_total",
        from_client,
        &at_source,
    );
    // Same node: node2 reports client2 -> sink as source and knows both ends fully
    // (client2 has no labels: canonical service = workload name, revision "latest").
    let mut same_node = vec![
        v("reporter", "source"),
        v("source_workload", "client2"),
        v("source_canonical_service", "client2"),
        v("source_canonical_revision", "latest"),
        v("source_workload_namespace", NS),
        ("source_principal", principal("client2-sa")),
        v("source_app", "client2"),
        v("source_version", "latest"),
        v("source_cluster", CLUSTER),
    ];
    same_node.extend(sink_service.iter().cloned());
    same_node.extend(sink_full.iter().cloned());
    same_node.extend(tcp_mtls.iter().cloned());
    assert_eq!(same_node.len(), 23);
    labels_are(
        &mut p,
        prom,
        "istio_tcp_received_bytes_total",
        from_client2,
        &same_node,
    );
    // What node1 says of the remote destination, shown for the record.
    if let Ok(series) = prom.query(&format!("istio_tcp_received_bytes_total{{{from_client}}}")) {
        for (labels, v) in series {
            eprintln!("info: source-side series {v} {}", show_labels(&labels));
        }
    }

    // --- HTTP, reporter="source" (node1's L7 proxy). ---
    let web = r#"reporter="source",source_workload="client",destination_service_name="web""#;
    let ok = format!(r#"{web},response_code="200""#);
    let not_found = format!(r#"{web},response_code="404""#);
    // N = 6 requests answered 200, M = 3 answered 404 by the agent (no route).
    exact(&mut p, prom, "istio_requests_total", &ok, N);
    exact(&mut p, prom, "istio_requests_total", &not_found, M);
    // Request bodies: 6 x 777 = 4662 bytes for the 200s; the 404s were GETs without body.
    exact(&mut p, prom, "istio_request_bytes_sum", &ok, N * B);
    exact(&mut p, prom, "istio_request_bytes_count", &ok, N);
    exact(&mut p, prom, "istio_request_bytes_sum", &not_found, 0);
    exact(&mut p, prom, "istio_request_bytes_sum", web, N * B);
    // Response bodies: 6 x "web\n" = 24 bytes; 3 x the agent's 404 body (as curl counted it).
    let web_body = WEB_BODY.len() as u64;
    exact(&mut p, prom, "istio_response_bytes_sum", &ok, N * web_body);
    exact(
        &mut p,
        prom,
        "istio_response_bytes_sum",
        &not_found,
        M * c.not_found_body,
    );
    exact(&mut p, prom, "istio_response_bytes_count", web, N + M);
    // Every request has one duration: 6 + 3 = 9.
    exact(
        &mut p,
        prom,
        "istio_request_duration_milliseconds_count",
        web,
        N + M,
    );
    // The +Inf bucket holds every observation.
    exact(
        &mut p,
        prom,
        "istio_request_duration_milliseconds_bucket",
        &format!(r#"{web},le="+Inf""#),
        N + M,
    );
    let mut http_labels = vec![v("reporter", "source")];
    http_labels.extend(client_labels.iter().cloned());
    http_labels.extend([
        ("destination_service", service_host("web")),
        v("destination_service_namespace", NS),
        v("destination_service_name", "web"),
        v("request_protocol", "http"),
    ]);
    let mut ok_labels = http_labels.clone();
    ok_labels.extend([
        v("destination_workload", "web"),
        v("destination_workload_namespace", NS),
        v("destination_cluster", CLUSTER),
        v("response_flags", "-"),
        v("connection_security_policy", "mutual_tls"),
    ]);
    labels_are(&mut p, prom, "istio_requests_total", &ok, &ok_labels);
    // No route: the agent answered itself, with Envoy's flag NR.
    http_labels.push(v("response_flags", "NR"));
    labels_are(
        &mut p,
        prom,
        "istio_requests_total",
        &not_found,
        &http_labels,
    );

    // --- gRPC, reporter="source": HTTP 200 each, the gRPC status in its own label. ---
    let greeter =
        r#"reporter="source",source_workload="client",destination_service_name="greeter""#;
    // 5 calls of Say: status OK (0).
    exact(
        &mut p,
        prom,
        "istio_requests_total",
        &format!(r#"{greeter},grpc_response_status="0""#),
        G_OK,
    );
    // 2 calls of Fail: UNAVAILABLE (14).
    exact(
        &mut p,
        prom,
        "istio_requests_total",
        &format!(r#"{greeter},grpc_response_status="14""#),
        G_FAIL,
    );
    // All 7 are HTTP 200 and gRPC.
    exact(
        &mut p,
        prom,
        "istio_requests_total",
        &format!(r#"{greeter},response_code="200",request_protocol="grpc""#),
        G_OK + G_FAIL,
    );

    // --- The agent's own counters for the policy drops and the authorization refusal. ---
    // One denied connect() on node1 (the "denied" pod's one attempt).
    exact(
        &mut p,
        prom,
        "mesh_agent_policy_drops_total",
        r#"direction="outbound",reason="policy",instance=~"10.200.0.1:.*""#,
        1,
    );
    // The guarded pod's SYN drops: at least one (the SYN may be retransmitted).
    p.check(at_least(
        prom,
        r#"sum(mesh_agent_policy_drops_total{direction="inbound",instance=~"10.200.0.2:.*"})"#,
        1.0,
    ));
    // One connection refused by node2's authorization.
    exact(
        &mut p,
        prom,
        "mesh_agent_authz_denied_total",
        r#"reporter="destination",instance=~"10.200.0.2:.*""#,
        1,
    );
    p
}

/// Polls until the sum of `expr` is at least `min`.
fn at_least(prom: &Prometheus, expr: &str, min: f64) -> anyhow::Result<f64> {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let v = prom.query_scalar_sum(expr)?;
        if v.is_some_and(|v| v >= min) {
            return Ok(v.unwrap_or_default());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("`{expr}`: expected >= {min}, got {v:?} after {SETTLE:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const OPENMETRICS: &str = "application/openmetrics-text";
/// What Prometheus 2.42 sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn fetch(c: &Cluster, node: &str, path: &str, accept: Option<&str>) -> anyhow::Result<HttpReply> {
    let url = format!("http://{}:15020{path}", c.mesh.sim.node(node).ip);
    let reply = prometheus::http_get_in(&c.prom.netns_path, &url, accept)?;
    anyhow::ensure!(
        reply.status == 200,
        "GET {url} (Accept {accept:?}): status {}: {}",
        reply.status,
        reply.body
    );
    Ok(reply)
}

/// The istio_* samples of a text exposition: (name, sorted labels) -> value.
/// (sample name, sorted labels) -> value.
type SampleMap = BTreeMap<(String, Vec<(String, String)>), f64>;

fn istio_samples(text: &str) -> anyhow::Result<SampleMap> {
    let mut out = BTreeMap::new();
    for f in parse_exposition(text)? {
        for s in f.samples {
            if s.name.starts_with("istio_") && !s.name.ends_with("_created") {
                let mut labels = s.labels.clone();
                labels.sort();
                out.insert((s.name.clone(), labels), s.value);
            }
        }
    }
    Ok(out)
}

/// (b) Both formats, both nodes: content types, promtool, the strict OpenMetrics parser.
fn exposition_is_valid_openmetrics_and_prometheus_text(c: &Cluster) -> Problems {
    let mut p = Problems::default();
    for node in ["node1", "node2"] {
        // Plain Prometheus text: no Accept header (what curl and older scrapers send).
        let text = match fetch(c, node, "/metrics", None) {
            Ok(r) => r,
            Err(e) => {
                p.add(format!("{e:#}"));
                continue;
            }
        };
        let ct = text.content_type.replace(' ', "").to_ascii_lowercase();
        if !(ct.starts_with("text/plain") && ct.contains("version=0.0.4")) {
            p.add(format!(
                "{node} /metrics without Accept: content type {:?}, expected text/plain; version=0.0.4",
                text.content_type
            ));
        }
        if text.body.lines().any(|l| l.trim() == "# EOF") {
            p.add(format!(
                "{node}: the Prometheus text exposition ends with the OpenMetrics '# EOF'"
            ));
        }
        if let Err(e) = promtool_check_metrics_allowing(&text.body, &[PROMTOOL_ISTIO_UNIT]) {
            p.add(format!("{node} Prometheus text: {e:#}"));
        }
        if !text.body.contains("istio_tcp_received_bytes_total") {
            p.add(format!("{node} Prometheus text has no istio_* series"));
        }
        // OpenMetrics, asked plainly and the way Prometheus asks.
        for accept in [OPENMETRICS, PROMETHEUS_ACCEPT] {
            let om = match fetch(c, node, "/metrics", Some(accept)) {
                Ok(r) => r,
                Err(e) => {
                    p.add(format!("{e:#}"));
                    continue;
                }
            };
            let ct = om.content_type.replace(' ', "").to_ascii_lowercase();
            if !ct.starts_with("application/openmetrics-text;version=1.0.0") {
                p.add(format!(
                    "{node} /metrics with Accept {accept:?}: content type {:?}, expected \
                     application/openmetrics-text; version=1.0.0; charset=utf-8",
                    om.content_type
                ));
            }
            if !om.body.ends_with("# EOF\n") {
                p.add(format!(
                    "{node}: the OpenMetrics exposition does not end with '# EOF\\n'"
                ));
            }
            match openmetrics_parse(&om.body) {
                Ok(families) => {
                    let names: BTreeSet<&str> = families.iter().map(|f| f.name.as_str()).collect();
                    for want in ["istio_tcp_received_bytes", "mesh_agent_build_info"] {
                        if !names.contains(want) {
                            p.add(format!(
                                "{node} OpenMetrics: no family {want} (families: {names:?})"
                            ));
                        }
                    }
                }
                Err(e) => p.add(format!("{node} OpenMetrics (Accept {accept:?}): {e:#}")),
            }
            // The same istio_* series and values in both formats.
            if accept == OPENMETRICS {
                match (istio_samples(&text.body), istio_samples(&om.body)) {
                    (Ok(a), Ok(b)) if a != b => {
                        let only_text: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
                        let only_om: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
                        p.add(format!(
                            "{node}: istio_* samples differ between the formats; only in text: \
                             {only_text:?}; only in OpenMetrics: {only_om:?}"
                        ));
                    }
                    (Err(e), _) | (_, Err(e)) => p.add(format!("{node}: {e:#}")),
                    _ => {}
                }
            }
        }
        // Istio's path serves the same.
        match fetch(c, node, "/stats/prometheus", None) {
            Ok(r) => {
                if r.content_type != text.content_type {
                    p.add(format!(
                        "{node} /stats/prometheus content type {:?} differs from /metrics {:?}",
                        r.content_type, text.content_type
                    ));
                }
                if !r.body.contains("istio_tcp_received_bytes_total") {
                    p.add(format!("{node} /stats/prometheus has no istio_* series"));
                }
            }
            Err(e) => p.add(format!("{e:#}")),
        }
    }
    p
}

fn sorted(names: impl IntoIterator<Item = impl Into<String>>) -> Vec<String> {
    let mut v: Vec<String> = names.into_iter().map(Into::into).collect();
    v.sort();
    v
}

/// The exact label names a sample of `family` must have in the exposition.
fn expected_label_names(family: &str, sample: &str) -> Vec<String> {
    let mut names: Vec<String> = ISTIO_TRAFFIC_LABELS.iter().map(|s| s.to_string()).collect();
    if !family.starts_with("istio_tcp_") {
        names.extend(ISTIO_REQUEST_EXTRA_LABELS.iter().map(|s| s.to_string()));
    }
    if sample.ends_with("_bucket") {
        names.push("le".into());
    }
    sorted(names)
}

/// (c) Names, types and label sets, in the exposition and in Prometheus.
fn labels_match_istio_exactly(c: &Cluster) -> Problems {
    let mut p = Problems::default();
    // The sets written out above are the contract's: 23 traffic labels, 2 more on requests.
    assert_eq!(BTreeSet::from(ISTIO_TRAFFIC_LABELS).len(), 23);

    // node1 has all eight families (TCP as source, requests from its L7 proxy); node2 the
    // four TCP ones at least (the destination side of everything).
    for (node, must) in [("node1", 8), ("node2", 4)] {
        let text = match fetch(c, node, "/metrics", None) {
            Ok(r) => r.body,
            Err(e) => {
                p.add(format!("{e:#}"));
                continue;
            }
        };
        let families = match parse_exposition(&text) {
            Ok(f) => f,
            Err(e) => {
                p.add(format!("{node}: {e:#}"));
                continue;
            }
        };
        let istio: Vec<_> = families
            .iter()
            .filter(|f| f.name.starts_with("istio_"))
            .collect();
        let known: BTreeMap<&str, &str> = ISTIO_TEXT_FAMILIES.into_iter().collect();
        for f in &istio {
            match known.get(f.name.as_str()) {
                None => p.add(format!(
                    "{node}: unexpected family {} ({}); Istio's are {:?}",
                    f.name,
                    f.kind,
                    known.keys().collect::<Vec<_>>()
                )),
                Some(kind) if *kind != f.kind => p.add(format!(
                    "{node}: {} has type {}, expected {kind}",
                    f.name, f.kind
                )),
                _ => {}
            }
        }
        for (name, _) in ISTIO_TEXT_FAMILIES.iter().take(must) {
            let present = istio
                .iter()
                .any(|f| f.name == *name && !f.samples.is_empty());
            if !present {
                p.add(format!("{node}: no samples of {name}"));
            }
        }
        for f in &istio {
            let suffixes: &[&str] = if f.kind == "histogram" {
                &["_bucket", "_sum", "_count"]
            } else {
                &[""]
            };
            for s in &f.samples {
                let suffix = &s.name[f.name.len()..];
                if !suffixes.contains(&suffix) {
                    p.add(format!(
                        "{node}: sample {} in family {} ({})",
                        s.name, f.name, f.kind
                    ));
                    continue;
                }
                let got = sorted(s.label_names());
                let want = expected_label_names(&f.name, &s.name);
                if got != want {
                    let missing: Vec<_> = want.iter().filter(|n| !got.contains(n)).collect();
                    let extra: Vec<_> = got.iter().filter(|n| !want.contains(n)).collect();
                    p.add(format!(
                        "{node}: {} has labels missing {missing:?}, extra {extra:?}",
                        s.name
                    ));
                    break;
                }
                if got.len() != s.labels.len() {
                    p.add(format!("{node}: {} repeats a label", s.name));
                }
                // Non-gRPC requests: grpc_response_status is present and empty, like Istio.
                if s.label("request_protocol") == Some("http")
                    && s.label("grpc_response_status") != Some("")
                {
                    p.add(format!(
                        "{node}: {} of an HTTP request has grpc_response_status {:?}, expected \"\"",
                        s.name,
                        s.label("grpc_response_status")
                    ));
                }
                for (k, v) in &s.labels {
                    if v.is_empty() && k != "grpc_response_status" {
                        p.add(format!(
                            "{node}: {} has an empty {k} (Istio says \"unknown\")",
                            s.name
                        ));
                    }
                }
            }
        }
    }

    // What Prometheus stored: the same names plus job and instance; grpc_response_status is
    // gone for HTTP requests because Prometheus drops empty labels.
    match c.prom.series(r#"{__name__=~"istio_.*"}"#) {
        Ok(series) if series.is_empty() => p.add("Prometheus has no istio_* series"),
        Ok(series) => {
            for labels in series {
                let name = labels.get("__name__").cloned().unwrap_or_default();
                let family = ISTIO_TEXT_FAMILIES
                    .iter()
                    .map(|(f, _)| *f)
                    .find(|f| {
                        name == *f || name.strip_prefix(f).is_some_and(|s| s.starts_with('_'))
                    })
                    .unwrap_or("?");
                let mut want = expected_label_names(family, &name);
                want.extend(["__name__", "instance", "job"].map(String::from));
                if labels.get("request_protocol").map(String::as_str) != Some("grpc") {
                    want.retain(|n| n != "grpc_response_status");
                }
                let want = sorted(want);
                let got = sorted(labels.keys().cloned());
                if got != want {
                    p.add(format!(
                        "Prometheus series {name}: labels {got:?}, expected {want:?}"
                    ));
                }
            }
        }
        Err(e) => p.add(format!("{e:#}")),
    }
    match c.prom.metadata_types() {
        Ok(types) => {
            let istio: BTreeMap<_, _> = types
                .iter()
                .filter(|(k, _)| k.starts_with("istio_"))
                .collect();
            eprintln!("info: Prometheus metadata of istio_*: {istio:?}");
            for (name, kind) in ISTIO_TEXT_FAMILIES {
                // Prometheus names a counter family with or without `_total`, depending on
                // whether it scraped OpenMetrics or text.
                let got = types
                    .get(name)
                    .or_else(|| name.strip_suffix("_total").and_then(|n| types.get(n)));
                if got.map(String::as_str) != Some(kind) {
                    p.add(format!(
                        "Prometheus metadata: {name} has type {got:?}, expected {kind}"
                    ));
                }
            }
        }
        Err(e) => p.add(format!("{e:#}")),
    }
    p
}

/// (d) Every panel of the Grafana dashboard returns at least one series.
fn every_dashboard_panel_returns_data(c: &Cluster) -> Problems {
    let mut p = Problems::default();
    let path = dashboard::dashboard_path();
    let queries = match dashboard::panel_queries(&path) {
        Ok(q) if q.is_empty() => {
            p.add(format!("{}: no panel queries", path.display()));
            return p;
        }
        Ok(q) => q,
        Err(e) => {
            p.add(format!("{e:#}"));
            return p;
        }
    };
    // rate(...[1m]) needs two samples of each counter inside the window: scrapes are 1 s
    // apart and the counters were complete when step (a) saw them; 5 s more is plenty.
    std::thread::sleep(Duration::from_secs(5));
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let expr = dashboard::substitute(expr);
        match c.prom.query(&expr) {
            Ok(series) if series.is_empty() => empty.push(format!("{title:?}: `{expr}`")),
            Ok(_) => {}
            Err(e) => empty.push(format!("{title:?}: `{expr}`: {e:#}")),
        }
    }
    if !empty.is_empty() {
        p.add(format!(
            "{} of {} panel queries returned no series:\n  {}",
            empty.len(),
            queries.len(),
            empty.join("\n  ")
        ));
    }
    p
}

// ---------------------------------------------------------------------------------------------
// The harness alone.
// ---------------------------------------------------------------------------------------------

/// Prometheus in a simulated node's namespace scraping itself: ready, target up, queries,
/// series, metadata, and a wait that times out with the value it saw.
#[test]
fn prometheus_harness_scrapes_itself() {
    mesh_tests::sim::require_privileges().expect("needs root, cgroup v2 and BPF");
    let mut sim = Sim::new("prom-self").expect("sim");
    let node = sim.add_node("node1").expect("node");
    let placement = node.tools_placement();
    let port = prometheus::free_port_in(&placement.netns_path).expect("free port");
    let own = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut prom = Prometheus::start_on(&sim, &placement, port, &[own]).expect("start");
    prom.wait_until_ready(Duration::from_secs(30))
        .expect("ready");
    prom.wait_for_targets_up(1, Duration::from_secs(30))
        .expect("target up");
    prom.wait_for(r#"up{job="mesh-agent"}"#, 1.0, Duration::from_secs(10))
        .expect("up == 1");
    let up = prom.query(r#"up{job="mesh-agent"}"#).expect("query");
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].0["instance"], own.to_string());
    assert_eq!(
        prom.query_scalar_sum(r#"up{job="nope"}"#).expect("query"),
        None
    );
    let info = prom
        .query("prometheus_build_info")
        .expect("build info")
        .pop()
        .expect("one series");
    assert!(info.0["version"].starts_with("2."), "{info:?}");
    let series = prom.series(r#"{__name__="up"}"#).expect("series");
    assert!(
        series
            .iter()
            .any(|s| s.get("job").map(String::as_str) == Some("mesh-agent")),
        "{series:?}"
    );
    let types = prom.metadata_types().expect("metadata");
    assert_eq!(
        types
            .get("prometheus_http_requests_total")
            .map(String::as_str),
        Some("counter"),
        "{types:?}"
    );
    // A wait for a value that never comes reports the one it saw.
    let err = prom
        .wait_for(r#"up{job="mesh-agent"}"#, 2.0, Duration::from_millis(500))
        .unwrap_err();
    assert!(format!("{err:#}").contains("got 1"), "{err:#}");
    // The exposition fetch helper, both formats, from inside the namespace.
    let url = format!("http://{own}/metrics");
    let text = prometheus::http_get_in(&placement.netns_path, &url, None).expect("text");
    assert_eq!(text.status, 200);
    assert!(text.content_type.starts_with("text/plain"), "{text:?}");
    let families = parse_exposition(&text.body).expect("parse");
    assert!(families.iter().any(|f| f.name == "prometheus_build_info"));
    // (Prometheus 2.42 serves its own metrics as text only, whatever the Accept header.)
    let promtool = promtool_check_metrics(&text.body);
    eprintln!("promtool on Prometheus's own metrics: {promtool:?}");
    drop(prom);
}

/// The validators reject what they should, so their silence on the agent means something.
#[test]
fn promtool_and_openmetrics_checkers_catch_problems() {
    let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n";
    promtool_check_metrics(good).expect("clean exposition");
    let no_total = "# HELP a Things.\n# TYPE a counter\na 3\n";
    let err = promtool_check_metrics(no_total).unwrap_err();
    assert!(format!("{err:#}").contains("_total"), "{err:#}");
    let lint = r#"a counter metrics should have "_total" suffix"#;
    promtool_check_metrics_allowing(no_total, &[lint]).expect("allowed lint");
    assert!(promtool_check_metrics_allowing("a{x=\"1} 3\n", &[lint]).is_err());
    assert!(promtool_check_metrics("a{x=\"1} 3\n").is_err());

    let om = "# TYPE a counter\n# HELP a Things.\na_total{x=\"1\"} 3\n# EOF\n";
    let families = openmetrics_parse(om).expect("valid OpenMetrics");
    assert_eq!(families.len(), 1);
    assert_eq!(
        (families[0].name.as_str(), families[0].kind.as_str()),
        ("a", "counter")
    );
    assert_eq!(families[0].samples[0].0, "a_total");
    // No # EOF, and a Prometheus-text counter name: both rejected by the strict parser.
    assert!(openmetrics_parse("# TYPE a counter\na_total 3\n").is_err());
    assert!(openmetrics_parse("# TYPE a_total counter\na_total 3\n# EOF\n").is_err());
}
