//! Istio request metrics with `reporter="destination"` end to end: the agent that delivers a
//! request to its workload reports it (what Flagger, Kiali and Istio's dashboards query). Cross
//! node, the destination agent serves tunnel streams to declared HTTP ports as HTTP; on one
//! node, the source agent delivers in process and reports both sides. Counts are exact: every
//! request is counted once per reporter, no more, no less.

mod common;
mod l7_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use l7_support::*;
use mesh_tests::mesh::{Mesh, MeshSpec, ServiceSpec};

const WEB_VIP: &str = "10.96.3.10";
const H2_VIP: &str = "10.96.3.11";
const GRPC_VIP: &str = "10.96.3.12";
const LOCAL_VIP: &str = "10.96.3.13";

/// One sample of the node's /metrics text: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text (label values here never contain `"`, `,` or `}`).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let labels = labels
            .split("\",")
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim_matches('"').to_string()))
            .collect();
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

fn metrics(mesh: &Mesh, node: &str) -> Vec<Sample> {
    let out = mesh
        .sim
        .exec_in_node(
            node,
            "curl",
            ["-sS", "-m", "5", "http://127.0.0.1:15020/metrics"],
        )
        .expect("curl /metrics");
    assert!(
        out.status.success(),
        "GET /metrics on {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_metrics(&String::from_utf8_lossy(&out.stdout))
}

/// Sum of `name` over the samples whose labels include every pair of `want`.
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Requests are recorded when their response body ends, just after the client has it: polls
/// up to 5 s until `istio_requests_total` matching `want` reaches `n`, then returns the node's
/// samples (the caller asserts exact values).
fn wait_requests(mesh: &Mesh, node: &str, want: &[(&str, &str)], n: f64) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let samples = metrics(mesh, node);
        if sum(&samples, "istio_requests_total", want) >= n || Instant::now() > deadline {
            return samples;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_agents(mesh: &mut Mesh, spec: &MeshSpec) {
    mesh.start_agent("node1", spec).expect("agent node1");
    mesh.start_agent("node2", spec).expect("agent node2");
}

fn show(samples: &[Sample]) -> String {
    samples
        .iter()
        .filter(|s| s.name == "istio_requests_total")
        .map(|s| format!("{:?} {}\n", s.labels, s.value))
        .collect()
}

/// HTTP/1.1 cross node: 4 curl runs of 5 POSTs each (keep-alive on one connection) from
/// node1's client to `web` (declared `http`, its endpoint on node2). node2 reports exactly 20
/// requests as the destination with the right workloads, and exact body sizes; node1 still
/// reports them as the source, and neither reports the other side. An HTTP/1.1 upgrade
/// through the destination's HTTP server still works, and a workload that drops the
/// connection is a 502 UC on both sides.
#[test]
fn cross_node_http_is_reported_by_the_destination() {
    let mut mesh = mesh("dm-http");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "web").expect("pod web");
    let web = Backend::start(&mesh, "web", "web", &[]);
    let spec = MeshSpec {
        services: vec![http_service("web", WEB_VIP, "http", &["web"])],
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);

    let body = "x".repeat(100);
    let urls: Vec<String> = (0..5).map(|i| format!("http://{WEB_VIP}/r{i}")).collect();
    let mut response_bytes = 0usize;
    for _ in 0..4 {
        let mut args = vec!["--data-binary", body.as_str()];
        args.extend(urls.iter().map(String::as_str));
        let replies = curl_many(&mesh, "client", &args);
        assert_eq!(replies.len(), 5);
        for r in &replies {
            assert_eq!((r.status, r.backend()), (200, "web"), "{}", r.raw);
            response_bytes += r.body.len();
        }
    }
    assert_eq!(web.requests(), 20);
    assert_eq!(response_bytes, 20 * "web\n".len());

    let destination = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("source_workload_namespace", "default"),
        ("destination_workload", "web"),
        ("destination_service", "web.default.svc.cluster.local"),
        ("destination_service_name", "web"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
        ("grpc_response_status", ""),
    ];
    let node2 = wait_requests(&mesh, "node2", &destination, 20.0);
    assert_eq!(
        sum(&node2, "istio_requests_total", &destination),
        20.0,
        "{}",
        show(&node2)
    );
    assert_eq!(sum(&node2, "istio_request_bytes_sum", &destination), 2000.0);
    assert_eq!(sum(&node2, "istio_request_bytes_count", &destination), 20.0);
    assert_eq!(
        sum(&node2, "istio_response_bytes_sum", &destination),
        response_bytes as f64
    );
    assert_eq!(
        sum(
            &node2,
            "istio_request_duration_milliseconds_count",
            &destination
        ),
        20.0
    );
    assert_eq!(
        sum(&node2, "istio_requests_total", &[("reporter", "source")]),
        0.0,
        "{}",
        show(&node2)
    );

    let source = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("destination_workload", "web"),
        ("destination_service", "web.default.svc.cluster.local"),
        ("response_code", "200"),
    ];
    let node1 = wait_requests(&mesh, "node1", &source, 20.0);
    assert_eq!(
        sum(&node1, "istio_requests_total", &source),
        20.0,
        "{}",
        show(&node1)
    );
    assert_eq!(sum(&node1, "istio_request_bytes_sum", &source), 2000.0);
    assert_eq!(
        sum(&node1, "istio_response_bytes_sum", &source),
        response_bytes as f64
    );
    assert_eq!(
        sum(
            &node1,
            "istio_requests_total",
            &[("reporter", "destination")]
        ),
        0.0,
        "{}",
        show(&node1)
    );
    assert!(mesh.stat("node2", "inbound", "http_streams").expect("stat") >= 1);

    // An HTTP/1.1 upgrade on the declared port: the 101 comes back with its headers, then the
    // bytes after the request head travel the upgraded connection both ways.
    let v = mesh
        .probe(
            "client",
            &[
                "connect",
                "--connect",
                &format!("{WEB_VIP}:80"),
                "--send",
                "GET /upgrade HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: mesh-echo\r\n\r\nping over the upgrade",
                "--timeout-ms",
                "5000",
            ],
        )
        .expect("upgrade client");
    assert_eq!(v["ok"], true, "{v}\n{}", mesh.agent_logs("node2"));
    let reply = v["reply"].as_str().unwrap_or_default().to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 101"), "{v}");
    assert!(reply.contains("upgrade: mesh-echo"), "{v}");
    assert!(
        reply.ends_with("upgraded web: ping over the upgrade"),
        "{v}\n{}",
        mesh.agent_logs("node2")
    );
    let switched = [("reporter", "destination"), ("response_code", "101")];
    let node2 = wait_requests(&mesh, "node2", &switched, 1.0);
    assert_eq!(sum(&node2, "istio_requests_total", &switched), 1.0);

    // The workload drops the connection without answering: the client gets the source
    // agent's 502 UC (as without the destination's HTTP server) and the destination reports
    // the request as 502 UC; the next request is fine.
    let r = curl(&mesh, "client", &[&format!("http://{WEB_VIP}/reset")]);
    assert_eq!((r.status, r.flags()), (502, "UC"), "{}", r.raw);
    let r = curl(&mesh, "client", &[&format!("http://{WEB_VIP}/after")]);
    assert_eq!((r.status, r.backend()), (200, "web"), "{}", r.raw);
    let broken = [
        ("reporter", "destination"),
        ("destination_workload", "web"),
        ("response_code", "502"),
        ("response_flags", "UC"),
    ];
    let node2 = wait_requests(&mesh, "node2", &broken, 1.0);
    assert_eq!(
        sum(&node2, "istio_requests_total", &broken),
        1.0,
        "{}",
        show(&node2)
    );
    let broken_source = [
        ("reporter", "source"),
        ("response_code", "502"),
        ("response_flags", "UC"),
    ];
    let node1 = wait_requests(&mesh, "node1", &broken_source, 1.0);
    assert_eq!(sum(&node1, "istio_requests_total", &broken_source), 1.0);
    assert_eq!(web.answered("reset"), 1);
    assert_no_panics(&mesh);
}

/// h2c cross node: h2load's 200 requests (2 connections, 10 streams each) to an `http2`
/// service are exactly 200 requests at the destination.
#[test]
fn cross_node_h2c_is_reported_by_the_destination() {
    let mut mesh = mesh("dm-h2");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "web-h2").expect("pod web-h2");
    let web = Backend::start(&mesh, "web-h2", "web-h2", &[]);
    let spec = MeshSpec {
        services: vec![http_service("web-h2", H2_VIP, "http2", &["web-h2"])],
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);

    let (ok, failed, errored, out) = h2load(
        &mesh,
        "client",
        &[
            "-n",
            "200",
            "-c",
            "2",
            "-m",
            "10",
            &format!("http://{H2_VIP}/"),
        ],
    );
    assert_eq!((ok, failed, errored), (200, 0, 0), "{out}");
    assert_eq!(web.requests(), 200);
    let destination = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("destination_workload", "web-h2"),
        ("destination_service_name", "web-h2"),
        ("request_protocol", "http"),
        ("response_code", "200"),
    ];
    let node2 = wait_requests(&mesh, "node2", &destination, 200.0);
    assert_eq!(
        sum(&node2, "istio_requests_total", &destination),
        200.0,
        "{}",
        show(&node2)
    );
    assert_eq!(
        sum(&node2, "istio_response_bytes_sum", &destination),
        200.0 * "web-h2\n".len() as f64
    );
    let source = [("reporter", "source"), ("destination_workload", "web-h2")];
    let node1 = wait_requests(&mesh, "node1", &source, 200.0);
    assert_eq!(sum(&node1, "istio_requests_total", &source), 200.0);
    assert_no_panics(&mesh);
}

/// One workload port that two services declare differently (`http` on one VIP, `http2` on
/// the other): either protocol may come on a tunnel stream, and the destination picks its
/// pass from the stream's first bytes. HTTP/1.1 and h2c requests are all answered and all
/// counted at the destination, exactly.
#[test]
fn a_port_declared_http_and_http2_is_reported_for_both() {
    let mut mesh = mesh("dm-either");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "web").expect("pod web");
    let web = Backend::start(&mesh, "web", "web", &[]);
    let spec = MeshSpec {
        services: vec![
            http_service("web", WEB_VIP, "http", &["web"]),
            http_service("web-h2", H2_VIP, "http2", &["web"]),
        ],
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);

    let urls: Vec<String> = (0..3).map(|i| format!("http://{WEB_VIP}/r{i}")).collect();
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();
    let replies = curl_many(&mesh, "client", &args);
    assert_eq!(replies.len(), 3);
    for r in &replies {
        assert_eq!((r.status, r.backend()), (200, "web"), "{}", r.raw);
    }
    let (ok, failed, errored, out) = h2load(
        &mesh,
        "client",
        &[
            "-n",
            "50",
            "-c",
            "1",
            "-m",
            "5",
            &format!("http://{H2_VIP}/"),
        ],
    );
    assert_eq!((ok, failed, errored), (50, 0, 0), "{out}");
    assert_eq!(web.requests(), 53);
    let at_web = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("destination_workload", "web"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    let node2 = wait_requests(&mesh, "node2", &at_web, 53.0);
    assert_eq!(
        sum(&node2, "istio_requests_total", &at_web),
        53.0,
        "{}",
        show(&node2)
    );
    assert_eq!(
        sum(&node2, "istio_response_bytes_sum", &at_web),
        53.0 * "web\n".len() as f64
    );
    assert!(mesh.stat("node2", "inbound", "http_streams").expect("stat") >= 2);
    assert_no_panics(&mesh);
}

/// Every service account of `default` is refused: an ALLOW policy without rules allows
/// nothing.
const LOCKDOWN: &str = "\n  - name: lockdown\n    namespace: default\n    action: ALLOW\n";

/// A policy tightened while the source agent pools a tunnel stream to the workload: the next
/// request on that stream is judged by the destination (403 RBAC, reported there), never
/// reaches the workload, and the stream ends, so the request after it opens a new stream,
/// which the tunnel refuses (403 RBAC from the source agent). For `http` ports (HTTP/1.1
/// framing pass) and `http2` ports (HTTP/2 frames, where the refusal is a header-only answer
/// and a GOAWAY).
#[test]
fn a_tightened_policy_refuses_the_next_request_on_a_pooled_stream() {
    for (tag, protocol, vip) in [
        ("dm-deny-h1", "http", WEB_VIP),
        ("dm-deny-h2", "http2", H2_VIP),
    ] {
        let mut mesh = mesh(tag);
        mesh.sim.add_pod("node1", "client").expect("pod client");
        mesh.sim.add_pod("node2", "web").expect("pod web");
        let web = Backend::start(&mesh, "web", "web", &[]);
        let open = MeshSpec {
            services: vec![http_service("web", vip, protocol, &["web"])],
            ..MeshSpec::default()
        };
        start_agents(&mut mesh, &open);
        let url = format!("http://{vip}/");
        let answer = || status_and_flags(&mesh, "client", &url);
        assert_eq!(answer(), "200", "{protocol}: {}", mesh.agent_logs("node2"));

        let reloads = || {
            mesh.admin("node2", "/config_dump").expect("config_dump")["status"]["config_reloads"]
                .as_u64()
                .unwrap_or(0)
        };
        let before = reloads();
        let locked = MeshSpec {
            authorization_yaml: Some(LOCKDOWN.into()),
            ..open.clone()
        };
        let path = mesh.sim.dir().join("node2.yaml");
        let tmp = mesh.sim.dir().join(".node2.yaml.new");
        std::fs::write(&tmp, mesh.render_config("node2", &locked)).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads() == before {
            assert!(
                Instant::now() < deadline,
                "{protocol}: node2 did not reload"
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        assert_eq!(
            answer(),
            "403 RBAC",
            "{protocol}: pooled stream, judged at the destination"
        );
        assert_eq!(
            answer(),
            "403 RBAC",
            "{protocol}: new stream, refused by the tunnel"
        );
        assert_eq!(
            web.requests(),
            1,
            "{protocol}: only the first request reached web"
        );
        let denied = [
            ("reporter", "destination"),
            ("destination_workload", "web"),
            ("response_code", "403"),
            ("response_flags", "RBAC"),
        ];
        let node2 = wait_requests(&mesh, "node2", &denied, 1.0);
        assert_eq!(
            sum(&node2, "istio_requests_total", &denied),
            1.0,
            "{protocol}: {}",
            show(&node2)
        );
        // The reload kept the series of the remote client (it names no workload of node2
        // that left).
        let served = [("reporter", "destination"), ("response_code", "200")];
        assert_eq!(
            sum(&node2, "istio_requests_total", &served),
            1.0,
            "{protocol}: {}",
            show(&node2)
        );
        assert!(mesh.stat("node2", "inbound", "authz_denied").expect("stat") >= 2);
        assert_no_panics(&mesh);
    }
}

/// gRPC cross node: OK calls are reported at the destination with grpc_response_status="0"
/// (read from the trailers), failing ones with 14 (UNAVAILABLE).
#[test]
fn cross_node_grpc_status_is_reported_by_the_destination() {
    let mut mesh = mesh("dm-grpc");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "greeter").expect("pod greeter");
    let (_backend, _stats) = grpc_backend(&mesh, "greeter", "greeter");
    let spec = MeshSpec {
        services: vec![
            ServiceSpec::new("greeter", vip(GRPC_VIP), GRPC_PORT, GRPC_PORT, &["greeter"])
                .protocol("grpc"),
        ],
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);
    let target = format!("{GRPC_VIP}:{GRPC_PORT}");

    let ok = grpc_call(&mesh, "client", &target, "/mesh.test.Echo/Say", 7, &[]);
    assert_eq!(ok["by_status"], serde_json::json!({"OK": 7}), "{ok}");
    let fail = grpc_call(&mesh, "client", &target, "/mesh.test.Echo/Fail", 3, &[]);
    assert_eq!(
        fail["by_status"],
        serde_json::json!({"UNAVAILABLE": 3}),
        "{fail}"
    );
    let base = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("destination_workload", "greeter"),
        ("request_protocol", "grpc"),
        ("response_code", "200"),
    ];
    let with = |status: &'static str| {
        let mut w = base.to_vec();
        w.push(("grpc_response_status", status));
        w
    };
    let node2 = wait_requests(&mesh, "node2", &base, 10.0);
    assert_eq!(
        sum(&node2, "istio_requests_total", &with("0")),
        7.0,
        "{}",
        show(&node2)
    );
    assert_eq!(
        sum(&node2, "istio_requests_total", &with("14")),
        3.0,
        "{}",
        show(&node2)
    );
    assert_no_panics(&mesh);
}

/// Same node: the client and the endpoint are on node1, so node1's agent delivers in process
/// and reports each request twice, once per reporter; node2 sees nothing.
#[test]
fn same_node_requests_are_reported_by_both_sides() {
    let mut mesh = mesh("dm-local");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim
        .add_pod("node1", "web-local")
        .expect("pod web-local");
    let web = Backend::start(&mesh, "web-local", "web-local", &[]);
    let spec = MeshSpec {
        services: vec![http_service("web-local", LOCAL_VIP, "http", &["web-local"])],
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);

    let urls: Vec<String> = (0..5).map(|i| format!("http://{LOCAL_VIP}/l{i}")).collect();
    for _ in 0..3 {
        let args: Vec<&str> = urls.iter().map(String::as_str).collect();
        for r in curl_many(&mesh, "client", &args) {
            assert_eq!((r.status, r.backend()), (200, "web-local"), "{}", r.raw);
        }
    }
    assert_eq!(web.requests(), 15);
    let common = [
        ("source_workload", "client"),
        ("destination_workload", "web-local"),
        ("destination_service", "web-local.default.svc.cluster.local"),
        ("response_code", "200"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let with = |reporter: &'static str| {
        let mut w = common.to_vec();
        w.push(("reporter", reporter));
        w
    };
    let node1 = wait_requests(&mesh, "node1", &with("destination"), 15.0);
    let node1 = if sum(&node1, "istio_requests_total", &with("source")) < 15.0 {
        wait_requests(&mesh, "node1", &with("source"), 15.0)
    } else {
        node1
    };
    assert_eq!(
        sum(&node1, "istio_requests_total", &with("source")),
        15.0,
        "{}",
        show(&node1)
    );
    assert_eq!(
        sum(&node1, "istio_requests_total", &with("destination")),
        15.0,
        "{}",
        show(&node1)
    );
    assert_eq!(
        sum(&node1, "istio_response_bytes_sum", &with("destination")),
        15.0 * "web-local\n".len() as f64
    );
    let node2 = metrics(&mesh, "node2");
    assert_eq!(
        sum(&node2, "istio_requests_total", &[]),
        0.0,
        "{}",
        show(&node2)
    );
    assert_no_panics(&mesh);
}

/// A pooled keep-alive connection from the source agent that idles longer than hyper's default
/// header-read timeout (30 s) is still open at the destination and carries the next request:
/// no new upstream connection, no new tunnel stream, no error.
#[test]
fn idle_keep_alive_connections_stay_open() {
    let mut mesh = mesh("dm-idle");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "web").expect("pod web");
    let _web = Backend::start(&mesh, "web", "web", &[]);
    let spec = MeshSpec {
        services: vec![http_service("web", WEB_VIP, "http", &["web"])],
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);
    let r = get(&mesh, "client", WEB_VIP, "/first");
    assert_eq!((r.status, r.backend()), (200, "web"), "{}", r.raw);
    let opened = || {
        (
            mesh.stat("node1", "http_upstream", "connections_opened")
                .expect("stat"),
            mesh.stat("node2", "inbound", "http_streams").expect("stat"),
        )
    };
    assert_eq!(opened(), (1, 1));
    std::thread::sleep(Duration::from_secs(35));
    let r = get(&mesh, "client", WEB_VIP, "/second");
    assert_eq!((r.status, r.backend()), (200, "web"), "{}", r.raw);
    assert_eq!(opened(), (1, 1), "the idle connection was closed");
    let ok = [("reporter", "destination"), ("response_code", "200")];
    let node2 = wait_requests(&mesh, "node2", &ok, 2.0);
    assert_eq!(sum(&node2, "istio_requests_total", &ok), 2.0);
}

#[test]
fn metrics_text_is_parsed() {
    let text = "# HELP x y\nistio_requests_total{reporter=\"destination\",grpc_response_status=\"\",source_workload=\"a\"} 3\nplain 1.5\n";
    let s = parse_metrics(text);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].labels["reporter"], "destination");
    assert_eq!(s[0].labels["grpc_response_status"], "");
    assert_eq!(s[0].labels["source_workload"], "a");
    assert_eq!(
        sum(&s, "istio_requests_total", &[("reporter", "destination")]),
        3.0
    );
    assert_eq!(s[1].value, 1.5);
}
