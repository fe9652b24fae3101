//! The access log under overload: its writer is off the request path. With room for a single
//! record in its queue, a flood of requests through the L7 path loses none of its requests,
//! not one of them goes uncounted in the Istio metrics, and the lines the writer could not
//! keep up with are dropped and counted (mesh_agent_access_log_dropped_total) rather than
//! waited for. Every line the agent says it wrote is in its log.

mod common;
mod l7_support;

use std::time::{Duration, Instant};

use common::*;
use l7_support::*;
use mesh_tests::mesh::MeshSpec;

const WEB_VIP: &str = "10.96.5.10";
const REQUESTS: u64 = 20_000;

/// One sample value of the node's /metrics (Prometheus text) whose line starts with `prefix`
/// (summed over the lines that match).
fn metric(mesh: &mesh_tests::mesh::Mesh, node: &str, prefix: &str) -> f64 {
    let out = mesh
        .sim
        .exec_in_node(
            node,
            "curl",
            ["-sS", "-m", "5", "http://127.0.0.1:15020/metrics"],
        )
        .expect("curl /metrics");
    assert!(out.status.success(), "GET /metrics on {node}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn access_lines(logs: &str, message: &str) -> u64 {
    logs.lines()
        .filter(|l| l.contains(" INFO access: ") && l.contains(message))
        .count() as u64
}

#[test]
fn a_flood_with_a_tiny_access_log_buffer_drops_lines_not_requests() {
    let mut mesh = mesh("alog");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "web").expect("pod web");
    let web = Backend::start(&mesh, "web", "web", &[]);
    let spec = MeshSpec {
        services: vec![http_service("web", WEB_VIP, "http", &["web"])],
        telemetry_yaml: Some("{access_log: all, access_log_buffer: 1}".to_string()),
        ..MeshSpec::default()
    };
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");

    let n = REQUESTS.to_string();
    let (ok, failed, errored, out) = h2load(
        &mesh,
        "client",
        &["--h1", "-n", &n, "-c", "16", &format!("http://{WEB_VIP}/")],
    );
    // Requests unaffected: every one answered by the workload.
    assert_eq!((ok, failed, errored), (REQUESTS, 0, 0), "{out}");
    assert_eq!(web.requests(), REQUESTS);

    // ...and every one counted by the source agent, although its access log fell behind.
    let requests = r#"istio_requests_total{reporter="source""#;
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&mesh, "node1", requests) < REQUESTS as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&mesh, "node1", requests), REQUESTS as f64);

    let dropped = metric(&mesh, "node1", "mesh_agent_access_log_dropped_total ");
    assert!(
        dropped > 0.0,
        "a queue of one record kept up with {REQUESTS} requests: nothing was dropped"
    );
    // Every line the writer reports is in the log (it may still be writing the last ones).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (written, in_log) = loop {
        let written = metric(&mesh, "node1", "mesh_agent_access_log_written_total ") as u64;
        let logs = mesh.agent_logs("node1");
        let in_log =
            access_lines(&logs, "request complete") + access_lines(&logs, "connection complete");
        if written == in_log || Instant::now() > deadline {
            break (written, in_log);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        written, in_log,
        "lines counted as written vs lines in the log"
    );
    let request_lines = access_lines(&mesh.agent_logs("node1"), "request complete");
    assert!(
        request_lines > 0 && request_lines < REQUESTS,
        "{request_lines} request lines for {REQUESTS} requests with {dropped} dropped"
    );
    assert_no_panics(&mesh);
}
