//! Faults the mesh must survive, each with its expected outcome and counter:
//! - the agent of a peer node goes away (kill -9) and comes back: L4 connections through it
//!   are refused at once, HTTP requests to a service only it serves get 503 UF, a service with
//!   an endpoint elsewhere fails over (outlier ejection), and once the peer is back the
//!   tunnel pool opens a new session and the peer's endpoints serve again;
//! - the config file is deleted while the agent runs: the running config stays, the reload
//!   error says so, and the file's return is a normal reload.

mod common;
mod l7_support;

use std::time::{Duration, Instant};

use common::*;
use l7_support::*;
use mesh_tests::mesh::{MeshSpec, ServiceSpec};

const POOL_VIP: &str = "10.96.4.10";
const REMOTE_VIP: &str = "10.96.4.11";
const ECHO_REMOTE_VIP: &str = "10.96.4.12";
const ECONNRESET: i64 = 104;
const EPIPE: i64 = 32;

#[test]
fn a_peer_agent_down_fails_fast_ejects_and_fails_over_then_recovers() {
    let mut mesh = mesh("fault-peer");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node1", "local").expect("pod local");
    mesh.sim.add_pod("node2", "remote").expect("pod remote");
    mesh.sim.add_pod("node2", "echo").expect("pod echo");
    let _local = Backend::start(&mesh, "local", "local", &[]);
    let remote = Backend::start(&mesh, "remote", "remote", &[]);
    let _echo = mesh
        .serve("echo", &["echo-server", "--listen", "0.0.0.0:9000"])
        .expect("echo");
    let spec = MeshSpec {
        services: vec![
            // One endpoint behind each agent: when node2's is gone, node1's takes the load.
            http_service("pool", POOL_VIP, "http", &["remote", "local"]).outlier(
                "{consecutive_5xx_errors: 2, base_ejection_time: 2s, max_ejection_percent: 50}",
            ),
            http_service("remote-only", REMOTE_VIP, "http", &["remote"]),
            ServiceSpec::new(
                "echo",
                ECHO_REMOTE_VIP.parse().unwrap(),
                9000,
                9000,
                &["echo"],
            ),
        ],
        ..MeshSpec::default()
    };
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");
    let r = get(&mesh, "client", REMOTE_VIP, "/");
    assert_eq!((r.status, r.backend()), (200, "remote"), "{}", r.raw);
    let echo_target = format!("{ECHO_REMOTE_VIP}:9000");
    let echoed = mesh
        .probe(
            "client",
            &["connect", "--connect", &echo_target, "--send", "ping"],
        )
        .expect("probe");
    assert_eq!(echoed["reply"], "ping", "{echoed}");
    let sessions_before = mesh.stat("node1", "tunnel", "sessions_opened").unwrap();
    let failures_before = mesh.stat("node1", "tunnel", "session_failures").unwrap();

    // node2's agent crashes: its tunnel listener is gone.
    let status = mesh.kill_agent("node2").expect("kill -9 node2");
    assert!(!status.success());

    // L4: the client's connection is reset at once (node1 cannot reach the peer agent),
    // never left hanging.
    let started = Instant::now();
    let l4 = mesh
        .probe(
            "client",
            &[
                "connect",
                "--connect",
                &echo_target,
                "--send",
                "ping",
                "--timeout-ms",
                "8000",
            ],
        )
        .expect("probe");
    assert_eq!(l4["ok"], false, "{l4}");
    assert!(
        [Some(ECONNRESET), Some(EPIPE)].contains(&l4["errno"].as_i64()),
        "reset, not a clean end: {l4}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the connect was bounded by the agent, not by the client's timeout: {l4}"
    );

    // HTTP to a service only the peer serves: 503 with UF (upstream connection failure).
    let r = get(&mesh, "client", REMOTE_VIP, "/");
    assert_eq!(r.status, 503, "{}", r.raw);
    assert!(["UF", "UH"].contains(&r.flags()), "{}", r.raw);

    // HTTP to a service with another endpoint: at most two failures (the outlier threshold)
    // before the dead endpoint is ejected, then everything goes to the live one.
    let url = format!("http://{POOL_VIP}/");
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 20).collect();
    let replies = curl_many(&mesh, "client", &urls);
    assert_eq!(replies.len(), 20);
    let failed: Vec<_> = replies.iter().filter(|r| r.status != 200).collect();
    assert!(
        failed.len() <= 2,
        "more failures than the ejection threshold: {failed:#?}"
    );
    for r in &failed {
        assert_eq!((r.status, r.flags()), (503, "UF"), "{}", r.raw);
    }
    for r in &replies[10..] {
        assert_eq!((r.status, r.backend()), (200, "local"), "{}", r.raw);
    }
    assert!(wait_http_stat(&mesh, "node1", "ejections", 1) >= 1);
    assert!(
        mesh.stat("node1", "tunnel", "session_failures").unwrap() > failures_before,
        "the failed sessions are counted"
    );

    // The peer comes back: a new session, and its endpoints serve again (a deadline bounds
    // the wait; the ejection lasts 2 s).
    let remote_before = remote.requests();
    mesh.start_agent("node2", &spec).expect("agent node2 again");
    let r = get(&mesh, "client", REMOTE_VIP, "/");
    assert_eq!((r.status, r.backend()), (200, "remote"), "{}", r.raw);
    let echoed = mesh
        .probe(
            "client",
            &["connect", "--connect", &echo_target, "--send", "ping"],
        )
        .expect("probe");
    assert_eq!(echoed["reply"], "ping", "{echoed}");
    assert!(
        mesh.stat("node1", "tunnel", "sessions_opened").unwrap() > sessions_before,
        "the pool opened a new session to the returned peer"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(&mesh, "client", POOL_VIP, "/");
        assert_eq!(r.status, 200, "{}", r.raw);
        if r.backend() == "remote" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the returned endpoint never served the pool again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(remote.requests() > remote_before);
}

#[test]
fn a_deleted_config_file_keeps_the_running_config_until_it_is_back() {
    let mut mesh = mesh("fault-config");
    let spec = standard_topology(&mut mesh);
    let _echo = mesh
        .serve("echo", &["echo-server", "--listen", "0.0.0.0:9000"])
        .expect("echo");
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");
    let target = format!("{ECHO_VIP}:9000");
    let echo = || {
        mesh.probe(
            "client",
            &["connect", "--connect", &target, "--send", "ping"],
        )
        .expect("probe")
    };
    assert_eq!(echo()["reply"], "ping");
    let path = mesh.sim.dir().join("node1.yaml");
    let text = std::fs::read_to_string(&path).expect("config");
    let status = |mesh: &mesh_tests::mesh::Mesh| {
        mesh.admin("node1", "/config_dump").expect("config_dump")["status"].clone()
    };
    let failures = |mesh: &mesh_tests::mesh::Mesh| {
        status(mesh)["config_reload_failures"].as_u64().unwrap_or(0)
    };
    let before = failures(&mesh);

    std::fs::remove_file(&path).expect("delete the config");
    let deadline = Instant::now() + Duration::from_secs(5);
    while failures(&mesh) == before {
        assert!(Instant::now() < deadline, "the deletion was never noticed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let error = status(&mesh)["last_reload_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("node1.yaml") && error.contains("No such file"),
        "the reason names the file: {error}"
    );
    assert!(
        mesh.agent_logs("node1")
            .contains("config rejected; the running config stays")
    );
    // Nothing changed: the mesh still carries the service.
    assert_eq!(echo()["reply"], "ping", "served after the deletion");

    // The file comes back: an ordinary reload, the error cleared.
    let reloads = status(&mesh)["config_reloads"].as_u64().unwrap_or(0);
    let tmp = mesh.sim.dir().join(".node1.yaml.new");
    std::fs::write(&tmp, &text).expect("write config");
    std::fs::rename(&tmp, &path).expect("rename config");
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&mesh)["config_reloads"].as_u64().unwrap_or(0) == reloads {
        assert!(
            Instant::now() < deadline,
            "the returned file was never reloaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        status(&mesh)["last_reload_error"].is_null(),
        "{}",
        status(&mesh)
    );
    assert_eq!(echo()["reply"], "ping");
}

/// The ring buffer of connection-close events overflows while the agent does not read it
/// (stopped with SIGSTOP): the kernel counts every event it could not queue, and once the
/// agent runs again the loss is in /stats, in `mesh_agent_ringbuf_lost_events_total` and
/// among the problems `mesh-agent status` lists. Never silent.
#[test]
fn a_ring_buffer_overflow_is_counted_and_reported() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut mesh = mesh("fault-ring");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node1", "sink").expect("pod sink");
    // The client's ephemeral ports are in TIME_WAIT afterwards; another pod checks the end.
    mesh.sim.add_pod("node1", "client2").expect("pod client2");
    // Not a service: kernel-only connections, counted by sock_ops, one close event per end.
    let _sink = mesh
        .serve("sink", &["echo-server", "--listen", "0.0.0.0:7000"])
        .expect("echo");
    let spec = MeshSpec::default();
    mesh.start_agent("node1", &spec).expect("agent node1");
    let lost_before = mesh.kernel_counter("node1", "events_lost").unwrap();
    assert_eq!(lost_before, 0);
    let pid = Pid::from_raw(mesh.agent_pid("node1").expect("pid") as i32);
    let target = format!("{}:7000", mesh.workload("sink").ip);

    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    // 4 MiB of ring at about 128 bytes per event: some 32 000 events; each connection
    // makes two (client and server end). 25 000 connections stay below the client's
    // ephemeral port range (they linger in TIME_WAIT).
    let rate = mesh.probe(
        "client",
        &[
            "conn-rate",
            "--connect",
            &target,
            "--seconds",
            "30",
            "--count",
            "25000",
            "--concurrency",
            "4",
        ],
    );
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let rate = rate.expect("conn-rate");
    assert!(
        rate["connections"].as_u64().unwrap_or(0) >= 20_000,
        "not enough connections to fill the ring: {rate}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let lost = loop {
        let lost = mesh.kernel_counter("node1", "events_lost").unwrap();
        if lost > 0 || Instant::now() > deadline {
            break lost;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(lost > 0, "the overflow was not counted");
    eprintln!(
        "ring buffer: {} connections while the agent was stopped, {lost} events lost",
        rate["connections"]
    );
    let metrics = mesh
        .sim
        .run(
            &mesh.outside("node1"),
            "curl",
            ["-sS", "http://127.0.0.1:15020/metrics"],
        )
        .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.stdout);
    let exported: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("mesh_agent_ringbuf_lost_events_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no mesh_agent_ringbuf_lost_events_total in:\n{text}"));
    assert!(exported >= lost, "exported {exported}, counted {lost}");
    let status = mesh.admin("node1", "/status").expect("/status");
    assert!(
        status
            .to_string()
            .contains("connection events were lost (ring buffer full)"),
        "mesh-agent status names the loss: {status}"
    );
    // The agent is healthy again: new connections are counted and their events read.
    let opened = mesh.kernel_counter("node1", "conns_opened").unwrap();
    let again = mesh
        .probe(
            "client2",
            &["connect", "--connect", &target, "--send", "ping"],
        )
        .expect("probe");
    assert_eq!(again["reply"], "ping", "{again}");
    assert!(mesh.kernel_counter("node1", "conns_opened").unwrap() > opened);
}
