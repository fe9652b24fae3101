//! L7 routing end to end (the contract in the L7 issue): real agents on two simulated nodes,
//! real clients (curl, h2load, Python gRPC) in a pod on node1, `mesh-probe http-backend` and
//! the Python gRPC backend in pods on node2. Each test builds its own mesh, asserts exact
//! outcomes (who answered, status, `x-mesh-response-flags`) and reads node1's /stats `http`
//! counters (the outbound side, where routing happens). No timing assertions: deadlines only
//! bound waits for something that must happen.

mod common;
mod l7_support;

use common::*;
use l7_support::*;
use mesh_tests::mesh::{Mesh, MeshSpec, ServiceSpec};

const WEB_VIP: &str = "10.96.1.10";
const WEB_V1_VIP: &str = "10.96.1.11";
const WEB_V2_VIP: &str = "10.96.1.12";

/// node1: pod "client"; node2: pods "web-v1" and "web-v2" running http-backend (names
/// "web-v1", "web-v2"). Services web (both pods), web-v1 and web-v2, all on :80 with
/// `protocol` for web. Backends are started before the agents.
fn web_topology(mesh: &mut Mesh, web_protocol: &str) -> (Backend, Backend, Vec<ServiceSpec>) {
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "web-v1").expect("pod web-v1");
    mesh.sim.add_pod("node2", "web-v2").expect("pod web-v2");
    let v1 = Backend::start(mesh, "web-v1", "web-v1", &[]);
    let v2 = Backend::start(mesh, "web-v2", "web-v2", &[]);
    let services = vec![
        http_service("web", WEB_VIP, web_protocol, &["web-v1", "web-v2"]),
        http_service("web-v1", WEB_V1_VIP, web_protocol, &["web-v1"]),
        http_service("web-v2", WEB_V2_VIP, web_protocol, &["web-v2"]),
    ];
    (v1, v2, services)
}

fn start_agents(mesh: &mut Mesh, spec: &MeshSpec) {
    mesh.start_agent("node1", spec).expect("agent node1");
    mesh.start_agent("node2", spec).expect("agent node2");
}

/// Sanity check that needs no L7: http-backend behind a `protocol: tcp` service answers
/// HTTP/1.1 and h2c through the mesh, and receives exactly the requests sent (L4 relays bytes,
/// so the backend sees every request exactly once).
#[test]
fn l4_http_backend_through_the_mesh() {
    let mut mesh = mesh("l7-l4");
    let (v1, _v2, services) = web_topology(&mut mesh, "tcp");
    let spec = MeshSpec {
        services,
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);

    let r = get(&mesh, "client", WEB_V1_VIP, "/echo");
    assert_eq!((r.status, r.backend()), (200, "web-v1"), "{}", r.raw);
    assert_eq!(r.echo()["version"], "HTTP/1.1");
    let r = curl(
        &mesh,
        "client",
        &[
            "--http2-prior-knowledge",
            &format!("http://{WEB_V1_VIP}/echo"),
        ],
    );
    assert_eq!((r.status, r.backend()), (200, "web-v1"), "{}", r.raw);
    assert_eq!(r.echo()["version"], "HTTP/2.0");
    let (ok, failed, errored, out) = h2load(
        &mesh,
        "client",
        &[
            "-n",
            "100",
            "-c",
            "2",
            "-m",
            "5",
            &format!("http://{WEB_V1_VIP}/"),
        ],
    );
    assert_eq!((ok, failed, errored), (100, 0, 0), "{out}");
    assert_eq!(v1.requests(), 102);
    assert_eq!(v1.answered("200"), 102);
}

/// HTTPRoute header match: `x-canary: 1` goes to web-v2, everything else to web-v1 (HTTP/1.1
/// with curl). /echo shows what web-v1 received: trace headers untouched, the route's
/// RequestHeaderModifier `set` applied (replacing the client's value), and no hop-by-hop
/// headers (Connection, the headers it names, Keep-Alive, Proxy-Connection) and no `via`.
#[test]
fn header_match_routes_canary_and_headers_are_forwarded_correctly() {
    let mut mesh = mesh("l7-hdr");
    let (v1, v2, services) = web_topology(&mut mesh, "http");
    let spec = MeshSpec {
        services,
        routes_yaml: Some(
            r#"
http_routes:
  - name: web-canary
    spec:
      parentRefs: [{name: web, port: 80}]
      rules:
        - matches:
            - headers: [{name: x-canary, value: "1"}]
          backendRefs: [{name: web-v2, port: 80}]
        - filters:
            - type: RequestHeaderModifier
              requestHeaderModifier:
                set: [{name: x-mesh-test, value: set-by-route}]
          backendRefs: [{name: web-v1, port: 80}]
"#
            .into(),
        ),
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);

    for i in 0..10 {
        let r = curl(
            &mesh,
            "client",
            &["-H", "x-canary: 1", &format!("http://{WEB_VIP}/c{i}")],
        );
        assert_eq!((r.status, r.backend()), (200, "web-v2"), "{}", r.raw);
        assert!(r.body.starts_with("web-v2"), "{}", r.raw);
        let r = get(&mesh, "client", WEB_VIP, &format!("/p{i}"));
        assert_eq!((r.status, r.backend()), (200, "web-v1"), "{}", r.raw);
        // A header that only looks like the canary one does not match (Exact).
        let r = curl(
            &mesh,
            "client",
            &["-H", "x-canary: 10", &format!("http://{WEB_VIP}/n{i}")],
        );
        assert_eq!((r.status, r.backend()), (200, "web-v1"), "{}", r.raw);
    }
    assert_eq!((v1.requests(), v2.requests()), (20, 10));

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
    let headers = [
        format!("traceparent: {traceparent}"),
        format!("tracestate: {tracestate}"),
        format!("b3: {b3}"),
        "x-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7".to_string(),
        "x-b3-spanid: e457b5a2e4d86bd1".to_string(),
        "x-b3-sampled: 1".to_string(),
        "x-mesh-test: from-client".to_string(),
        "Connection: keep-alive, x-hop".to_string(),
        "x-hop: must-not-pass".to_string(),
        "Keep-Alive: timeout=5".to_string(),
        "Proxy-Connection: keep-alive".to_string(),
    ];
    let mut args: Vec<String> = headers
        .iter()
        .flat_map(|h| ["-H".to_string(), h.clone()])
        .collect();
    args.push(format!("http://{WEB_VIP}/echo"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = curl(&mesh, "client", &args);
    assert_eq!((r.status, r.backend()), (200, "web-v1"), "{}", r.raw);
    let echo = r.echo();
    let got = &echo["headers"];
    for (name, value) in [
        ("traceparent", traceparent),
        ("tracestate", tracestate),
        ("b3", b3),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
        ("x-mesh-test", "set-by-route"),
    ] {
        assert_eq!(got[name], serde_json::json!([value]), "{name}: {echo:#}");
    }
    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "x-hop",
        "via",
    ] {
        assert!(
            got.get(hop).is_none(),
            "{hop} reached the backend: {echo:#}"
        );
    }
    assert_eq!(echo["uri"], "/echo", "{echo:#}");

    // 31 requests, all answered 2xx by a backend.
    assert_eq!(wait_http_stat(&mesh, "node1", "responses_2xx", 31), 31);
    assert_eq!(http_stat(&mesh, "node1", "requests"), 31);
    assert_eq!(http_stat(&mesh, "node1", "local_replies"), 0);
}

/// HTTPRoute 90/10 weights over 1000 h2c requests (h2load, 4 connections, 10 streams each):
/// every request succeeds and web-v2 gets 10% ± 4 points.
///
/// If each request independently goes to v2 with p = 0.1, the v2 count over n = 1000 is
/// binomial: σ = sqrt(n p (1 - p)) ≈ 9.5 requests ≈ 0.95 percentage points, so ±4 points is
/// about 4σ (a correct weighted picker fails this with probability ~1e-4; a deterministic
/// weighted round robin lands on 10% exactly). Weights ignored (50/50) or inverted fail by
/// far.
#[test]
fn weighted_split_90_10_over_h2c() {
    let mut mesh = mesh("l7-split");
    let (v1, v2, services) = web_topology(&mut mesh, "http2");
    let spec = MeshSpec {
        services,
        routes_yaml: Some(
            r#"
http_routes:
  - name: web-split
    spec:
      parentRefs: [{name: web, port: 80}]
      rules:
        - backendRefs:
            - {name: web-v1, port: 80, weight: 90}
            - {name: web-v2, port: 80, weight: 10}
"#
            .into(),
        ),
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);

    let url = format!("http://{WEB_VIP}/");
    let (ok, failed, errored, out) = h2load(
        &mesh,
        "client",
        &["-n", "1000", "-c", "4", "-m", "10", &url],
    );
    assert_eq!((ok, failed, errored), (1000, 0, 0), "{out}");
    let (n1, n2) = (v1.requests(), v2.requests());
    assert_eq!(
        n1 + n2,
        1000,
        "each request reaches exactly one backend once"
    );
    let share = n2 as f64 / 1000.0 * 100.0;
    assert!(
        (6.0..=14.0).contains(&share),
        "web-v2 got {share:.1}% ({n2} of 1000), want 10 ± 4"
    );
    assert_eq!(wait_http_stat(&mesh, "node1", "responses_2xx", 1000), 1000);
    assert_eq!(http_stat(&mesh, "node1", "requests"), 1000);
    assert_eq!(http_stat(&mesh, "node1", "responses_5xx"), 0);
}

const GREETER_VIP: &str = "10.96.1.30";
const GRPC_V1_VIP: &str = "10.96.1.31";
const GRPC_V2_VIP: &str = "10.96.1.32";

/// GRPCRoute: /mesh.test.Echo/Say with metadata `x-version: v2` goes to grpc-v2, everything
/// else (other metadata, other methods) to grpc-v1; all OK. /mesh.test.Echo/Fail's
/// UNAVAILABLE comes back end to end (grpc-status travels in the trailers, which the proxy
/// must forward).
#[test]
fn grpc_route_by_method_and_metadata() {
    let mut mesh = mesh("l7-grpc");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "grpc-v1").expect("pod grpc-v1");
    mesh.sim.add_pod("node2", "grpc-v2").expect("pod grpc-v2");
    let (_g1, g1_stats) = grpc_backend(&mesh, "grpc-v1", "grpc-v1");
    let (_g2, g2_stats) = grpc_backend(&mesh, "grpc-v2", "grpc-v2");
    let grpc = |name: &str, vip_text: &str, endpoints: &[&str]| {
        ServiceSpec::new(name, vip(vip_text), GRPC_PORT, GRPC_PORT, endpoints).protocol("grpc")
    };
    let spec = MeshSpec {
        services: vec![
            grpc("greeter", GREETER_VIP, &["grpc-v1", "grpc-v2"]),
            grpc("grpc-v1", GRPC_V1_VIP, &["grpc-v1"]),
            grpc("grpc-v2", GRPC_V2_VIP, &["grpc-v2"]),
        ],
        routes_yaml: Some(
            r#"
grpc_routes:
  - name: echo-version
    spec:
      parentRefs: [{name: greeter, port: 50051}]
      rules:
        - matches:
            - method: {type: Exact, service: mesh.test.Echo, method: Say}
              headers: [{name: x-version, value: v2}]
          backendRefs: [{name: grpc-v2, port: 50051}]
        - backendRefs: [{name: grpc-v1, port: 50051}]
"#
            .into(),
        ),
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);
    let target = format!("{GREETER_VIP}:{GRPC_PORT}");
    let say = "/mesh.test.Echo/Say";

    let v2 = grpc_call(&mesh, "client", &target, say, 10, &["x-version=v2"]);
    assert_eq!(v2["by_backend"], serde_json::json!({"grpc-v2": 10}), "{v2}");
    assert_eq!(v2["by_status"], serde_json::json!({"OK": 10}), "{v2}");
    assert_eq!(
        v2["last_ok"]["metadata"]["x-version"],
        serde_json::json!(["v2"]),
        "metadata reaches the backend: {v2}"
    );
    let plain = grpc_call(&mesh, "client", &target, say, 10, &[]);
    assert_eq!(
        plain["by_backend"],
        serde_json::json!({"grpc-v1": 10}),
        "{plain}"
    );
    assert_eq!(plain["by_status"], serde_json::json!({"OK": 10}), "{plain}");
    let other = grpc_call(&mesh, "client", &target, say, 5, &["x-version=v3"]);
    assert_eq!(
        other["by_backend"],
        serde_json::json!({"grpc-v1": 5}),
        "{other}"
    );
    let ping = grpc_call(
        &mesh,
        "client",
        &target,
        "/mesh.test.Other/Ping",
        5,
        &["x-version=v2"],
    );
    assert_eq!(
        ping["by_backend"],
        serde_json::json!({"grpc-v1": 5}),
        "{ping}"
    );
    assert_eq!(ping["by_status"], serde_json::json!({"OK": 5}), "{ping}");

    let fail = grpc_call(&mesh, "client", &target, "/mesh.test.Echo/Fail", 3, &[]);
    assert_eq!(
        fail["by_status"],
        serde_json::json!({"UNAVAILABLE": 3}),
        "{fail}"
    );
    assert_eq!(
        fail["by_backend"],
        serde_json::json!({"grpc-v1": 3}),
        "{fail}"
    );
    assert!(
        fail["details"][0]
            .as_str()
            .unwrap_or_default()
            .contains("fails on purpose"),
        "the backend's status message must pass: {fail}"
    );

    let stats = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).expect("grpc stats")).expect("json")
    };
    assert_eq!(stats(&g2_stats)["requests"], 10);
    assert_eq!(stats(&g1_stats)["requests"], 23);
    // gRPC errors are HTTP 200 responses with grpc-status in the trailers.
    assert_eq!(wait_http_stat(&mesh, "node1", "requests", 33), 33);
    assert_eq!(http_stat(&mesh, "node1", "responses_2xx"), 33);
}

const FLAKY_VIP: &str = "10.96.1.40";
const FLAKY2_VIP: &str = "10.96.1.41";

/// Retry on 503: a backend failing every 2nd request behind `retry: {attempts: 2, codes:
/// [503]}` answers all 20 sequential requests with 200 (the backend sees 1 + 19 × 2 = 39
/// requests, 19 of them 503); the same kind of backend behind a route without retry lets
/// exactly every 2nd request fail, passed through as the backend's own answer.
#[test]
fn retry_turns_flaky_503_into_200() {
    let mut mesh = mesh("l7-retry");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "flaky").expect("pod flaky");
    mesh.sim.add_pod("node2", "flaky2").expect("pod flaky2");
    let flaky = Backend::start(&mesh, "flaky", "flaky", &["--fail-every", "2"]);
    let flaky2 = Backend::start(&mesh, "flaky2", "flaky2", &["--fail-every", "2"]);
    let spec = MeshSpec {
        services: vec![
            http_service("flaky", FLAKY_VIP, "http", &["flaky"]),
            http_service("flaky2", FLAKY2_VIP, "http", &["flaky2"]),
        ],
        // A generous budget: this test is about retries, not about the budget.
        routes_yaml: Some(
            r#"
http:
  retry_budget: {percent: 1000, min_retries_per_second: 1000}
http_routes:
  - name: flaky-retry
    spec:
      parentRefs: [{name: flaky, port: 80}]
      rules:
        - backendRefs: [{name: flaky, port: 80}]
          retry: {attempts: 2, backoff: 1ms, codes: [503]}
  - name: flaky2-plain
    spec:
      parentRefs: [{name: flaky2, port: 80}]
      rules:
        - backendRefs: [{name: flaky2, port: 80}]
"#
            .into(),
        ),
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);

    for i in 0..20 {
        let r = get(&mesh, "client", FLAKY_VIP, &format!("/r{i}"));
        assert_eq!(
            (r.status, r.backend()),
            (200, "flaky"),
            "request {i}: {}",
            r.raw
        );
    }
    assert_eq!(flaky.requests(), 39, "{}", flaky.stats());
    assert_eq!(flaky.answered("503"), 19, "{}", flaky.stats());
    assert!(
        wait_http_stat(&mesh, "node1", "retries", 19) >= 19,
        "retries {}",
        http_stat(&mesh, "node1", "retries")
    );

    let mut statuses = Vec::new();
    for i in 0..20 {
        let r = get(&mesh, "client", FLAKY2_VIP, &format!("/n{i}"));
        assert_eq!(r.backend(), "flaky2", "{}", r.raw);
        statuses.push(r.status);
    }
    let failed = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(
        failed, 10,
        "without retry every 2nd request fails: {statuses:?}"
    );
    assert_eq!(flaky2.requests(), 20);
}

const SLOW_VIP: &str = "10.96.1.50";

/// `timeouts: {request: 500ms}`: a backend that needs 3 s gets the client a 504 with
/// `x-mesh-response-flags: UT`; a quick request on the same route is fine.
#[test]
fn request_timeout_gives_504_ut() {
    let mut mesh = mesh("l7-timeout");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "slow").expect("pod slow");
    let slow = Backend::start(&mesh, "slow", "slow", &[]);
    let spec = MeshSpec {
        services: vec![http_service("slow", SLOW_VIP, "http", &["slow"])],
        routes_yaml: Some(
            r#"
http_routes:
  - name: slow-timeout
    spec:
      parentRefs: [{name: slow, port: 80}]
      rules:
        - backendRefs: [{name: slow, port: 80}]
          timeouts: {request: 500ms}
"#
            .into(),
        ),
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);

    let r = get(&mesh, "client", SLOW_VIP, "/delay/10");
    assert_eq!((r.status, r.backend()), (200, "slow"), "{}", r.raw);
    let r = get(&mesh, "client", SLOW_VIP, "/delay/3000");
    assert_eq!((r.status, r.flags()), (504, "UT"), "{}", r.raw);
    assert_eq!(r.backend(), "", "a local reply: {}", r.raw);
    assert_eq!(slow.requests(), 2);
    assert!(wait_http_stat(&mesh, "node1", "timeouts", 1) >= 1);
    assert!(http_stat(&mesh, "node1", "local_replies") >= 1);
    assert!(http_stat(&mesh, "node1", "responses_5xx") >= 1);
}

const POOL_VIP: &str = "10.96.1.60";

/// Outlier detection: with endpoints "good" and "bad" (503 while a flag file exists) and
/// `consecutive_5xx_errors: 3`, bad is ejected after its 3rd 503; while ejected, 30 requests
/// all go to good; once the file is gone and the ejection time is over, bad serves again.
#[test]
fn outlier_detection_ejects_and_readmits() {
    let mut mesh = mesh("l7-outlier");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "good").expect("pod good");
    mesh.sim.add_pod("node2", "bad").expect("pod bad");
    let flag = mesh.sim.dir().join("bad-fails");
    std::fs::write(&flag, "").expect("flag file");
    let flag_arg = flag.display().to_string();
    let good = Backend::start(&mesh, "good", "good", &[]);
    let bad = Backend::start(&mesh, "bad", "bad", &["--fail-while-exists", &flag_arg]);
    // 3 s of ejection: the 30 requests below go over one connection in well under that.
    let spec = MeshSpec {
        services: vec![
            http_service("pool", POOL_VIP, "http", &["good", "bad"]).outlier(
                "{consecutive_5xx_errors: 3, base_ejection_time: 3s, max_ejection_percent: 50}",
            ),
        ],
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);

    // Until bad has failed 3 times (round robin: about every 2nd request).
    let mut sent = 0;
    while bad.answered("503") < 3 {
        assert!(sent < 40, "bad never failed 3 times: {}", bad.stats());
        let r = get(&mesh, "client", POOL_VIP, "/");
        sent += 1;
        match r.backend() {
            "good" => assert_eq!(r.status, 200, "{}", r.raw),
            "bad" => assert_eq!(r.status, 503, "the backend's own 503 passes: {}", r.raw),
            other => panic!("unexpected answer from {other:?}: {}", r.raw),
        }
    }
    let bad_before = bad.requests();
    let good_before = good.requests();
    let url = format!("http://{POOL_VIP}/");
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 30).collect();
    let replies = curl_many(&mesh, "client", &urls);
    assert_eq!(replies.len(), 30);
    for r in &replies {
        assert_eq!((r.status, r.backend()), (200, "good"), "{}", r.raw);
    }
    assert_eq!(
        bad.requests(),
        bad_before,
        "an ejected endpoint got requests"
    );
    assert_eq!(good.requests(), good_before + 30);
    assert!(wait_http_stat(&mesh, "node1", "ejections", 1) >= 1);

    // Healthy again: after the ejection time bad is back in rotation. Not a timing
    // assertion: the deadline only bounds the wait.
    std::fs::remove_file(&flag).expect("remove flag");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while bad.requests() == bad_before {
        assert!(
            std::time::Instant::now() < deadline,
            "bad never came back: {}\n{}",
            bad.stats(),
            mesh.agent_logs("node1")
        );
        let r = get(&mesh, "client", POOL_VIP, "/");
        assert_eq!(r.status, 200, "{}", r.raw);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(bad.answered("200") >= 1, "{}", bad.stats());
}

const API_VIP: &str = "10.96.1.70";
const EMPTY_VIP: &str = "10.96.1.71";
const DEAD_VIP: &str = "10.96.1.72";
const PLAIN_VIP: &str = "10.96.1.73";

/// Bad input and broken upstreams get the contract's answers, and the agent survives all of
/// it: malformed request 400, 100 KiB header 431, no matching rule 404 NR, no endpoints 503
/// UH, nothing listening at the endpoint 503 UF (or UH), upstream reset 502 UC (or 503).
#[test]
fn bad_requests_and_broken_upstreams_get_local_replies() {
    let mut mesh = mesh("l7-bad");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "web-v1").expect("pod web-v1");
    // A pod where nothing listens.
    mesh.sim.add_pod("node2", "idle").expect("pod idle");
    let web = Backend::start(&mesh, "web-v1", "web-v1", &[]);
    let spec = MeshSpec {
        services: vec![
            http_service("api", API_VIP, "http", &["web-v1"]),
            http_service("empty", EMPTY_VIP, "http", &[]),
            http_service("dead", DEAD_VIP, "http", &["idle"]),
            http_service("plain", PLAIN_VIP, "http", &["web-v1"]),
        ],
        routes_yaml: Some(
            r#"
http_routes:
  - name: api-only
    spec:
      parentRefs: [{name: api, port: 80}]
      rules:
        - matches: [{path: {type: PathPrefix, value: /api}}]
          backendRefs: [{name: api, port: 80}]
"#
            .into(),
        ),
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);
    let api = format!("{API_VIP}:80");

    // Route attached, matching path: fine; other path: 404 NR.
    let r = get(&mesh, "client", API_VIP, "/api/x");
    assert_eq!((r.status, r.backend()), (200, "web-v1"), "{}", r.raw);
    let r = get(&mesh, "client", API_VIP, "/other");
    assert_eq!((r.status, r.flags()), (404, "NR"), "{}", r.raw);

    // Malformed request line / header: hyper's 400.
    let v = raw_http(
        &mesh,
        "client",
        &[
            "--connect",
            &api,
            "--send",
            r"GET /api/x HTTP/1.1\r\nHost: api\r\nthis line has no colon\r\n\r\n",
        ],
    );
    assert_eq!(v["status"], 400, "{v}");
    // A 100 KiB header (over the default max_header_bytes): 431.
    let big = mesh.sim.dir().join("big-request");
    let mut request = b"GET /api/x HTTP/1.1\r\nHost: api\r\nx-big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 100 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    std::fs::write(&big, request).expect("write request");
    let big_arg = big.display().to_string();
    let v = raw_http(
        &mesh,
        "client",
        &["--connect", &api, "--send-file", &big_arg],
    );
    assert_eq!(v["status"], 431, "{v}");

    // No endpoints at all: 503 UH.
    let r = get(&mesh, "client", EMPTY_VIP, "/");
    assert_eq!((r.status, r.flags()), (503, "UH"), "{}", r.raw);
    // An endpoint where nothing listens: 503 UF (UH if it was ejected already).
    let r = get(&mesh, "client", DEAD_VIP, "/");
    assert_eq!(r.status, 503, "{}", r.raw);
    assert!(["UF", "UH"].contains(&r.flags()), "{}", r.raw);
    // The backend closes the connection without answering: 502 UC (or 503).
    let r = get(&mesh, "client", PLAIN_VIP, "/reset");
    assert!(
        (r.status, r.flags()) == (502, "UC") || r.status == 503,
        "{}",
        r.raw
    );
    assert_eq!(web.answered("reset"), 1, "{}", web.stats());

    // Still alive and serving, and nothing panicked.
    let r = get(&mesh, "client", PLAIN_VIP, "/");
    assert_eq!((r.status, r.backend()), (200, "web-v1"), "{}", r.raw);
    let r = get(&mesh, "client", API_VIP, "/api/again");
    assert_eq!((r.status, r.backend()), (200, "web-v1"), "{}", r.raw);
    assert_no_panics(&mesh);
    // 404, 503, 503, 502 at least (400 and 431 may be counted by hyper only).
    assert!(wait_http_stat(&mesh, "node1", "local_replies", 4) >= 4);
    assert!(http_stat(&mesh, "node1", "responses_4xx") >= 1);
    assert!(http_stat(&mesh, "node1", "responses_5xx") >= 3);
}

const DETECT_VIP: &str = "10.96.1.80";
const BANNER_VIP: &str = "10.96.1.81";
const BANNER_PORT: u16 = 2525;

/// Ports without `protocol` (and without a telling port name) are protocol-detected: curl's
/// request is seen as HTTP (and routed as such), a server-first protocol (the client sends
/// nothing until the banner) falls back to TCP after the detection timeout and works.
#[test]
fn protocol_detection_on_undeclared_ports() {
    let mut mesh = mesh("l7-detect");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node2", "web-v1").expect("pod web-v1");
    mesh.sim.add_pod("node2", "smtp").expect("pod smtp");
    let web = Backend::start(&mesh, "web-v1", "web-v1", &[]);
    let listen = format!("0.0.0.0:{BANNER_PORT}");
    let _banner = mesh
        .serve(
            "smtp",
            &[
                "banner-server",
                "--listen",
                &listen,
                "--banner",
                "220 mesh-banner",
            ],
        )
        .expect("banner server");
    let spec = MeshSpec {
        services: vec![
            ServiceSpec::new("detect", vip(DETECT_VIP), 8000, BACKEND_PORT, &["web-v1"]),
            ServiceSpec::new("smtp", vip(BANNER_VIP), BANNER_PORT, BANNER_PORT, &["smtp"]),
        ],
        ..MeshSpec::default()
    };
    start_agents(&mut mesh, &spec);

    for i in 0..3 {
        let r = curl(
            &mesh,
            "client",
            &[&format!("http://{DETECT_VIP}:8000/d{i}")],
        );
        assert_eq!((r.status, r.backend()), (200, "web-v1"), "{}", r.raw);
    }
    assert_eq!(web.requests(), 3);
    assert!(wait_http_stat(&mesh, "node1", "detected_http", 1) >= 1);
    assert!(wait_http_stat(&mesh, "node1", "requests", 3) >= 3);

    let target = format!("{BANNER_VIP}:{BANNER_PORT}");
    let v = mesh
        .probe(
            "client",
            &[
                "connect",
                "--connect",
                &target,
                "--read-first",
                "--send",
                "hello mesh\n",
                "--timeout-ms",
                "5000",
            ],
        )
        .expect("banner client");
    assert_eq!(v["ok"], true, "{v}\n{}", mesh.agent_logs("node1"));
    assert_eq!(v["banner"], "220 mesh-banner\r\n", "{v}");
    assert_eq!(v["reply"], "hello mesh\n", "{v}");
    assert!(wait_http_stat(&mesh, "node1", "detected_tcp", 1) >= 1);

    // An HTTP/1.1 upgrade (what WebSocket does) on the detected HTTP port: the 101 arrives
    // with its Upgrade and Connection headers, then the bytes sent after the request head
    // travel the upgraded connection both ways.
    let target = format!("{DETECT_VIP}:8000");
    let v = mesh
        .probe(
            "client",
            &[
                "connect",
                "--connect",
                &target,
                "--send",
                "GET /upgrade HTTP/1.1\r\nHost: detect\r\nConnection: Upgrade\r\nUpgrade: mesh-echo\r\n\r\nping over the upgrade",
                "--timeout-ms",
                "5000",
            ],
        )
        .expect("upgrade client");
    assert_eq!(v["ok"], true, "{v}\n{}", mesh.agent_logs("node1"));
    let reply = v["reply"].as_str().unwrap_or_default().to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 101"), "{v}");
    assert!(reply.contains("upgrade: mesh-echo"), "{v}");
    assert!(reply.contains("connection: upgrade"), "{v}");
    assert!(
        reply.ends_with("upgraded web-v1: ping over the upgrade"),
        "{v}\n{}",
        mesh.agent_logs("node1")
    );
}
