//! Per-connection counting: a 64 MiB transfer through the mesh arrives intact, and the kernel
//! counters the agent reports equal the payload exactly in each direction, on every hop.
//! Also the same-node fast path and the absence of redirect loops.

mod common;

use std::time::Duration;

use common::*;

const N: u64 = 64 * 1024 * 1024;

fn closed_flow_with_local(
    mesh: &mesh_tests::mesh::Mesh,
    node: &str,
    local: &str,
) -> serde_json::Value {
    mesh.wait_for_flow(node, Duration::from_secs(10), |f| {
        f["state"] == "closed" && f["local"] == local
    })
    .expect("closed flow")
}

#[test]
fn transfer_64mib_is_intact_and_kernel_counters_are_exact() {
    let mut mesh = mesh("count");
    let spec = standard_topology(&mut mesh);
    let _echo = mesh
        .serve("echo", &["echo-server", "--listen", "0.0.0.0:9000"])
        .expect("echo");
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");

    let target = format!("{ECHO_VIP}:9000");
    let r = mesh
        .probe(
            "client",
            &[
                "transfer",
                "--connect",
                &target,
                "--bytes",
                &N.to_string(),
                "--seed",
                "7",
            ],
        )
        .expect("transfer");
    assert_eq!(
        r["intact"],
        true,
        "data must be intact: {r}\n{}",
        mesh.agent_logs("node1")
    );
    assert_eq!(r["sent"].as_u64(), Some(N));
    assert_eq!(r["received"].as_u64(), Some(N));
    assert_eq!(s(&r, "peer"), target);

    // Hop 1: the client's own socket (pod netns, to the agent's in-pod listener).
    let client = closed_flow_with_local(&mesh, "node1", s(&r, "local"));
    assert_eq!(client["redirected"], true, "{client}");
    assert_eq!(client["workload"], "default/client", "{client}");
    assert_eq!(
        client["bytes_sent"].as_u64(),
        Some(N),
        "client sent: {client}"
    );
    assert_eq!(
        client["bytes_received"].as_u64(),
        Some(N),
        "client received: {client}"
    );

    // Hop 2: node1's agent carries the stream to node2 inside its mTLS tunnel session, which
    // stays open (pooled). Each end of that session moved more than N bytes (payload plus TLS
    // and HTTP/2 framing). A live record's received count is refreshed only when the socket's
    // own data is acknowledged, so each direction is checked at its sender.
    let tunnel_sent = |node: &str, matches: &dyn Fn(&serde_json::Value) -> bool| {
        let f = mesh
            .flows(node)
            .expect("flows")
            .into_iter()
            .find(|f| matches(f))
            .unwrap_or_else(|| panic!("tunnel session socket on {node}"));
        assert_eq!(f["redirected"], false, "{f}");
        f["bytes_sent"].as_u64().unwrap()
    };
    let up = tunnel_sent("node1", &|f| {
        f["direction"] == "outbound" && f["remote"] == "10.200.0.2:15008"
    });
    let down = tunnel_sent("node2", &|f| {
        f["direction"] == "inbound" && f["local"] == "10.200.0.2:15008"
    });
    assert!(up > N && down > N, "tunnel moved {up} up, {down} down");

    // Hop 3: node2's agent's connection to the echo pod, counted on node2 ...
    let echo_ip = mesh.workload("echo").ip.to_string();
    let upstream = mesh
        .wait_for_flow("node2", Duration::from_secs(10), |f| {
            f["state"] == "closed"
                && f["direction"] == "outbound"
                && f["remote"] == format!("{echo_ip}:9000")
        })
        .expect("upstream flow");
    assert_eq!(
        upstream["redirected"], false,
        "the agent's own connection is never redirected"
    );
    assert_eq!(upstream["bytes_sent"].as_u64(), Some(N), "{upstream}");
    assert_eq!(upstream["bytes_received"].as_u64(), Some(N), "{upstream}");

    // ... and the echo server's socket on node2 (inbound).
    let server = mesh
        .wait_for_flow("node2", Duration::from_secs(10), |f| {
            f["state"] == "closed"
                && f["direction"] == "inbound"
                && f["local"] == format!("{echo_ip}:9000")
        })
        .expect("server flow");
    assert_eq!(server["bytes_sent"].as_u64(), Some(N), "{server}");
    assert_eq!(server["bytes_received"].as_u64(), Some(N), "{server}");
}

#[test]
fn same_node_pair_uses_the_fast_path_and_counts_exactly() {
    let mut mesh = mesh("fast");
    let mut spec = standard_topology(&mut mesh);
    spec.fast_path = true;
    let reply = "x".repeat(100_000);
    let _web = mesh
        .serve(
            "web-local",
            &["http-server", "--listen", "0.0.0.0:8080", "--reply", &reply],
        )
        .expect("web-local");
    mesh.start_agent("node1", &spec).expect("agent node1");
    let before = mesh.kernel_counter("node1", "fast_path_msgs").unwrap();
    // curl (poll-driven, like most real clients): see the README on blocking reads.
    let url = format!("http://{WEB_LOCAL_VIP}/");
    let out = mesh
        .run_in(
            "client",
            "curl",
            &[
                "-sS",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{local_port} %{size_request} %{size_header} %{size_download}",
                &url,
            ],
        )
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (port, request, header, body) = (nums[0], nums[1], nums[2], nums[3]);
    assert_eq!(body, reply.len() as u64 + 1, "body intact");
    let after = mesh.kernel_counter("node1", "fast_path_msgs").unwrap();
    assert!(after > before, "fast path not used: {before} -> {after}");
    let client = closed_flow_with_local(&mesh, "node1", &format!("127.0.0.1:{port}"));
    assert_eq!(client["fast_path"], true, "{client}");
    assert_eq!(client["bytes_sent"].as_u64(), Some(request), "{client}");
    assert_eq!(
        client["bytes_received"].as_u64(),
        Some(header + body),
        "{client}"
    );
}

#[test]
fn fast_path_off_means_no_fast_path_messages() {
    let mut mesh = mesh("nofast");
    let spec = standard_topology(&mut mesh);
    assert!(!spec.fast_path, "off by default");
    let _echo = mesh
        .serve("echo-local", &["echo-server", "--listen", "0.0.0.0:9000"])
        .expect("echo");
    mesh.start_agent("node1", &spec).expect("agent node1");
    let bytes = 4 * 1024 * 1024u64;
    let r = mesh
        .probe(
            "client",
            &[
                "transfer",
                "--connect",
                &format!("{ECHO_LOCAL_VIP}:9000"),
                "--bytes",
                &bytes.to_string(),
            ],
        )
        .expect("transfer");
    assert_eq!(r["intact"], true, "{r}");
    assert_eq!(mesh.kernel_counter("node1", "fast_path_msgs").unwrap(), 0);
    let client = closed_flow_with_local(&mesh, "node1", s(&r, "local"));
    assert_eq!(client["fast_path"], false, "{client}");
    assert_eq!(client["bytes_sent"].as_u64(), Some(bytes), "{client}");
    assert_eq!(client["bytes_received"].as_u64(), Some(bytes), "{client}");
}

/// A same-node bulk stream through the agent's plain relay (fast path off): both directions
/// grow past the userspace buffer and switch to splice; 64 MiB checksummed each way arrive
/// intact and the kernel's byte counts of the client's socket stay exact.
#[test]
fn same_node_bulk_relay_switches_to_splice_and_is_intact() {
    let mut mesh = mesh("splice");
    let spec = standard_topology(&mut mesh);
    let _echo = mesh
        .serve("echo-local", &["echo-server", "--listen", "0.0.0.0:9000"])
        .expect("echo");
    mesh.start_agent("node1", &spec).expect("agent node1");
    let before = mesh.admin("node1", "/stats").expect("stats")["proxy"]["spliced"]
        .as_u64()
        .expect("proxy.spliced");
    let r = mesh
        .probe(
            "client",
            &[
                "transfer",
                "--connect",
                &format!("{ECHO_LOCAL_VIP}:9000"),
                "--bytes",
                &N.to_string(),
                "--seed",
                "11",
            ],
        )
        .expect("transfer");
    assert_eq!(r["intact"], true, "{r}\n{}", mesh.agent_logs("node1"));
    assert_eq!(r["received"].as_u64(), Some(N), "{r}");
    let client = closed_flow_with_local(&mesh, "node1", s(&r, "local"));
    assert_eq!(client["bytes_sent"].as_u64(), Some(N), "{client}");
    assert_eq!(client["bytes_received"].as_u64(), Some(N), "{client}");
    let stats = mesh.admin("node1", "/stats").expect("stats");
    let spliced = stats["proxy"]["spliced"].as_u64().unwrap();
    assert_eq!(spliced - before, 2, "both directions spliced: {stats:#}");
    assert_eq!(
        stats["proxy"]["bytes_up"].as_u64(),
        Some(N),
        "every byte counted through the splice: {stats:#}"
    );
}

#[test]
fn the_agents_own_upstream_connections_are_not_redirected() {
    let mut mesh = mesh("loop");
    let spec = standard_topology(&mut mesh);
    // The agent of node1 runs inside node1's mesh cgroup (agent/ is a child of it), so only the
    // cgroup-id exemption keeps its upstream connects to the (meshed) endpoint address from
    // being redirected back to itself.
    // `forwarded` counts L4 relays: this service is declared tcp (undeclared, the probe's
    // HTTP/1.0 request would be detected and served by the L7 path).
    let mut spec = spec;
    for service in &mut spec.services {
        *service = service.clone().protocol("tcp");
    }
    let agent_cgroup = mesh.sim.node("node1").agent_cgroup.clone();
    assert!(agent_cgroup.starts_with(&mesh.sim.node("node1").cgroup));
    let _web = mesh
        .serve(
            "web-local",
            &["http-server", "--listen", "0.0.0.0:8080", "--reply", "ok"],
        )
        .expect("web");
    mesh.start_agent("node1", &spec).expect("agent");
    let requests = 5;
    for _ in 0..requests {
        let r = mesh
            .probe(
                "client",
                &[
                    "connect",
                    "--connect",
                    &format!("{WEB_LOCAL_VIP}:80"),
                    "--send",
                    "GET / HTTP/1.0\r\n\r\n",
                ],
            )
            .expect("probe");
        assert_eq!(r["ok"], true, "{r}");
    }
    let stats = mesh.admin("node1", "/stats").expect("stats");
    assert_eq!(
        stats["proxy"]["accepted"].as_u64(),
        Some(requests),
        "{stats:#}"
    );
    assert_eq!(
        stats["proxy"]["forwarded"].as_u64(),
        Some(requests),
        "{stats:#}"
    );
    assert_eq!(
        stats["kernel"]["connect_redirected"].as_u64(),
        Some(requests),
        "{stats:#}"
    );
}
