//! Faults the mesh must survive, each with its expected outcome and counter:
//! - the agent of a peer node goes away (kill -9) and comes back: L4 connections through it
//!   are refused at once, HTTP requests to a service only it serves get 503 UF, a service with
//!   an endpoint elsewhere fails over (outlier ejection), and once the peer is back the
//!   tunnel pool opens a new session and the peer's endpoints serve again;
//! - the config file is deleted while the agent runs: the running config stays, the reload
//!   error says so, and the file's return is a normal reload;
//! - the ring buffer of close events overflows: the loss is counted, exported and reported;
//! - the connection map (LRU) is full: live entries are evicted, every connection that closes
//!   without its entry is counted, exported and reported, and policy (never kept in an LRU
//!   map) holds.

mod common;
mod l7_support;

use std::time::{Duration, Instant};

use common::*;
use l7_support::*;
use mesh_tests::mesh::{MeshSpec, PolicySpec, ServiceSpec};

const POOL_VIP: &str = "10.96.4.10";
const REMOTE_VIP: &str = "10.96.4.11";
const ECHO_REMOTE_VIP: &str = "10.96.4.12";
const ECONNRESET: i64 = 104;
const EPIPE: i64 = 32;
/// A reset that arrived before the probe's first send (the send then finds no connection).
const ENOTCONN: i64 = 107;

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
        [Some(ECONNRESET), Some(EPIPE), Some(ENOTCONN)].contains(&l4["errno"].as_i64()),
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

/// A key no socket of the node can have (netns cookies start at 1 and count up), numbered.
fn filler_key(n: u64) -> mesh_common::SockKey {
    let mut local_ip = [0u8; 16];
    local_ip[..8].copy_from_slice(&n.to_be_bytes());
    mesh_common::SockKey {
        netns_cookie: u64::MAX,
        local_ip,
        remote_ip: [0; 16],
        local_port: 0,
        remote_port: 0,
        _pad: 0,
    }
}

/// The connection map of 262 144 entries is full (the test writes entries through the pin,
/// as a node holding that many connections would) and the entries of connections still open
/// are evicted. Each of them that then closes is counted by the kernel (`conns_evicted`),
/// exported as `mesh_agent_connection_map_evictions_total` and named by `mesh-agent
/// status`; connections opened into the full map are tracked, and policy (hash and LPM maps,
/// never evicted) holds: a denied connect still gets EPERM, a meshed one is still redirected
/// and answered.
#[test]
fn a_full_connection_map_counts_every_eviction_and_policy_holds() {
    use aya::maps::{HashMap, Map, MapData};
    use mesh_common::{ConnStats, SockKey, capacity, map_names};
    const HELD: usize = 16;
    const EPERM: i64 = 1;
    const LRU_ECHO_VIP: &str = "10.96.4.20";
    let mut mesh = mesh("fault-lru");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node1", "sink").expect("pod sink");
    let _sink = mesh
        .serve("sink", &["echo-server", "--listen", "0.0.0.0:7000"])
        .expect("echo");
    let sink = mesh.workload("sink").ip;
    let mut spec = MeshSpec {
        services: vec![ServiceSpec {
            protocol: Some("tcp".into()),
            ..service("echo", LRU_ECHO_VIP, 80, 7000, &["sink"])
        }],
        ..MeshSpec::default()
    };
    // client may reach the echo service and the sink pod directly (kernel path), nothing else.
    spec.policies.insert(
        "client".into(),
        PolicySpec {
            egress: Some(vec![
                (format!("{LRU_ECHO_VIP}/32"), vec![80]),
                (format!("{sink}/32"), vec![7000]),
            ]),
            ingress: None,
        },
    );
    mesh.start_agent("node1", &spec).expect("agent node1");
    assert_eq!(mesh.kernel_counter("node1", "conns_evicted").unwrap(), 0);
    let direct = format!("{sink}:7000");

    // Connections that stay open while the map fills (kernel path: both ends on node1).
    let mut hold = mesh
        .spawn_probe(
            "client",
            &[
                "hold",
                "--connect",
                &direct,
                "--count",
                &HELD.to_string(),
                "--seconds",
                "300",
            ],
        )
        .expect("hold");
    let line = hold
        .wait_for_stdout("established", Duration::from_secs(30))
        .expect("held connections");
    assert!(line.contains(&format!("\"established\":{HELD}")), "{line}");

    let pin = mesh.pin_dir("node1").join(map_names::CONNS);
    let data = MapData::from_pin(&pin).expect("open the pinned connection map");
    let mut conns: HashMap<MapData, SockKey, ConnStats> =
        HashMap::try_from(Map::LruHashMap(data)).expect("connection map");
    let is_held =
        |k: &SockKey| k.netns_cookie != u64::MAX && (k.local_port == 7000 || k.remote_port == 7000);
    let held_entries = |conns: &HashMap<MapData, SockKey, ConnStats>| {
        conns.keys().flatten().filter(is_held).count()
    };
    assert_eq!(
        held_entries(&conns),
        2 * HELD,
        "both ends of each held connection are tracked"
    );
    // Fill the map to its capacity: every further entry now evicts one.
    let filler = ConnStats::default();
    for n in 0..u64::from(capacity::CONNS) {
        conns
            .insert(filler_key(n), filler, 0)
            .expect("insert into a full LRU map evicts, never fails");
    }
    let written = capacity::CONNS;
    let entries = conns.keys().flatten().count();
    // (The kernel keeps up to 128 free entries per CPU aside, so "full" evicts a little early.)
    assert!(
        entries as u32 >= capacity::CONNS / 100 * 99,
        "the map is full: {entries} entries"
    );
    // Which entries go is the kernel's choice: its LRU keeps entries that programs have
    // referenced (the held connections' entries, looked up by sock_ops as they were set up)
    // on an active list and evicts never-referenced ones (the fillers) first, so at this size
    // the fillers would evict each other. The test plays the LRU's part for the held
    // connections and takes their entries out, as a node with 262 144 busy connections would.
    let held: Vec<SockKey> = conns.keys().flatten().filter(is_held).collect();
    for key in &held {
        conns.remove(key).expect("evict a held connection's entry");
    }
    assert_eq!(
        held_entries(&conns),
        0,
        "the held connections' entries are gone"
    );
    eprintln!(
        "connection map: {written} filler entries written, {} held entries evicted",
        held.len()
    );

    // Policy while the map is full: denied still EPERM, meshed still redirected and answered.
    let denied = mesh
        .probe(
            "client",
            &[
                "connect",
                "--connect",
                &format!("{sink}:7001"),
                "--timeout-ms",
                "3000",
            ],
        )
        .expect("probe");
    assert_eq!(denied["errno"].as_i64(), Some(EPERM), "{denied}");
    let closed_before = mesh.kernel_counter("node1", "conns_closed").unwrap();
    let meshed = mesh
        .probe(
            "client",
            &[
                "connect",
                "--connect",
                &format!("{LRU_ECHO_VIP}:80"),
                "--send",
                "ping",
            ],
        )
        .expect("probe");
    assert_eq!(meshed["ok"].as_bool(), Some(true), "{meshed}");
    assert_eq!(meshed["reply"].as_str(), Some("ping"), "{meshed}");
    // A connection opened into the full map is tracked to its close (its entry pushed out a
    // filler): the client's and the server's end of the kernel-path connection.
    let evicted_before = mesh.kernel_counter("node1", "conns_evicted").unwrap();
    let fresh = mesh
        .probe(
            "client",
            &["connect", "--connect", &direct, "--send", "ping"],
        )
        .expect("probe");
    assert_eq!(fresh["ok"].as_bool(), Some(true), "{fresh}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while mesh.kernel_counter("node1", "conns_closed").unwrap() < closed_before + 2
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        mesh.kernel_counter("node1", "conns_closed").unwrap() >= closed_before + 2,
        "connections opened into the full map are tracked to their close"
    );
    assert_eq!(
        mesh.kernel_counter("node1", "conns_evicted").unwrap(),
        evicted_before,
        "new connections push out the least recently used entries, not each other"
    );

    // The held connections close: each end is counted as evicted.
    hold.kill().expect("close the held connections");
    let deadline = Instant::now() + Duration::from_secs(10);
    let evicted = loop {
        let n = mesh.kernel_counter("node1", "conns_evicted").unwrap();
        if n >= (2 * HELD) as u64 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        evicted >= (2 * HELD) as u64,
        "{evicted} evicted closes counted, {} expected",
        2 * HELD
    );
    eprintln!("connection map: {evicted} closes without their entry counted");
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
        .find_map(|l| l.strip_prefix("mesh_agent_connection_map_evictions_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no mesh_agent_connection_map_evictions_total in:\n{text}"));
    assert!(
        exported >= evicted,
        "exported {exported}, counted {evicted}"
    );
    let status = mesh.admin("node1", "/status").expect("/status");
    assert!(
        status
            .to_string()
            .contains("connections closed after the connection map evicted their entry"),
        "mesh-agent status names the evictions: {status}"
    );
}

/// bpffs where the agent pins is not mounted (a host without systemd's mount, a container
/// without /sys/fs/bpf): the agent mounts it, enforces policy from it, leaves the policy in
/// place when it stops, and the next agent adopts the pins there. A bpffs the agent cannot
/// write (mounted read-only) stops it at start with the path and the reason.
#[test]
fn a_missing_bpffs_is_mounted_and_an_unwritable_one_is_named() {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    const EPERM: i64 = 1;
    let mut mesh = mesh("fault-bpffs");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim.add_pod("node1", "sink").expect("pod sink");
    let _sink = mesh
        .serve("sink", &["echo-server", "--listen", "0.0.0.0:7000"])
        .expect("echo");
    let sink = mesh.workload("sink").ip;
    let mut spec = MeshSpec::default();
    spec.policies.insert(
        "client".into(),
        PolicySpec {
            egress: Some(vec![(format!("{sink}/32"), vec![7000])]),
            ingress: None,
        },
    );
    let connect = |mesh: &mesh_tests::mesh::Mesh, port: u16| {
        mesh.probe(
            "client",
            &[
                "connect",
                "--connect",
                &format!("{sink}:{port}"),
                "--timeout-ms",
                "3000",
            ],
        )
        .expect("probe")
    };
    let is_bpffs = |dir: &std::path::Path| {
        nix::sys::statfs::statfs(dir)
            .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
            .unwrap_or(false)
    };

    let bpffs = mesh.sim.dir().join("bpffs");
    assert!(!bpffs.exists());
    mesh.use_bpffs(bpffs.clone());
    mesh.start_agent("node1", &spec).expect("agent node1");
    assert!(
        is_bpffs(&bpffs),
        "the agent mounted bpffs at {}",
        bpffs.display()
    );
    let logs = mesh.agent_logs("node1");
    assert!(
        logs.contains("bpffs was not mounted: mounted it"),
        "the agent says it mounted bpffs: {logs}"
    );
    assert!(
        mesh.pin_dir("node1")
            .join(mesh_common::map_names::CONNS)
            .exists(),
        "maps pinned on the new mount"
    );
    assert_eq!(connect(&mesh, 7001)["errno"].as_i64(), Some(EPERM));
    assert_eq!(connect(&mesh, 7000)["ok"].as_bool(), Some(true));

    // Stopped: the policy stays on that mount; the next agent adopts its pins.
    mesh.stop_agent("node1").expect("SIGTERM");
    assert_eq!(connect(&mesh, 7001)["errno"].as_i64(), Some(EPERM));
    mesh.start_agent("node1", &spec).expect("agent node1 again");
    let logs = mesh.agent_logs("node1");
    assert!(
        logs.contains("replaced=6") && !logs.contains("bpffs was not mounted"),
        "the second agent found the mount and adopted the pinned links: {logs}"
    );
    assert_eq!(connect(&mesh, 7001)["errno"].as_i64(), Some(EPERM));
    assert_eq!(connect(&mesh, 7000)["ok"].as_bool(), Some(true));

    // A read-only bpffs: refused at start, naming the place and the reason.
    let read_only = mesh.sim.dir().join("bpffs-ro");
    std::fs::create_dir_all(&read_only).expect("mount point");
    mount(
        Some("bpf"),
        &read_only,
        Some("bpf"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .expect("mount a read-only bpffs");
    mesh.use_bpffs(read_only.clone());
    let refused = mesh.start_agent_expecting_failure("node2", &spec);
    mesh.use_bpffs(bpffs);
    let _ = umount2(&read_only, MntFlags::MNT_DETACH);
    let (status, logs) = refused.expect("node2 refused");
    assert!(!status.success());
    assert!(
        logs.contains(&read_only.join("node2").display().to_string())
            && logs.contains("Read-only file system"),
        "the error names the pin directory and why: {logs}"
    );
}

/// The CA can no longer issue (its own certificate expired: the agent signs with the CA it
/// loaded, so this is how issuance fails) and the workload certificates run out: the agent
/// says so in its log on every attempt, `mesh-agent status` names each expired certificate,
/// readiness fails with the reason, `mesh_agent_certificate_expiration_timestamp_seconds`
/// is in the past (MeshAgentCertificateNearExpiry fires, see alerts_test.yaml), and a
/// workload that needs a new certificate cannot open a tunnel session: refused at once.
#[test]
fn certificates_that_expire_while_the_ca_cannot_issue_are_reported() {
    use mesh_tests::pki;
    const CA_SECONDS: i64 = 15;
    const SHORT_VIP: &str = "10.96.4.30";
    const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/default";
    let mut mesh = mesh("fault-ca");
    mesh.sim.add_pod("node1", "client").expect("pod client");
    mesh.sim
        .add_pod("node1", "latecomer")
        .expect("pod latecomer");
    mesh.sim.add_pod("node2", "echo").expect("pod echo");
    let _echo = mesh
        .serve("echo", &["echo-server", "--listen", "0.0.0.0:7000"])
        .expect("echo");
    let ca_expires = Instant::now() + Duration::from_secs(CA_SECONDS as u64);
    let ca = pki::ca_valid(
        "short-lived mesh CA",
        pki::Validity {
            from: time::Duration::hours(-1),
            to: time::Duration::seconds(CA_SECONDS),
        },
    )
    .expect("CA");
    let files = ca.write(mesh.sim.dir(), "short-ca").expect("CA files");
    let mut spec = MeshSpec {
        services: vec![ServiceSpec {
            protocol: Some("tcp".into()),
            ..service("echo", SHORT_VIP, 80, 7000, &["echo"])
        }],
        ..MeshSpec::default()
    };
    spec.identities.insert(
        "latecomer".into(),
        mesh_tests::mesh::IdentitySpec {
            service_account: Some("latecomer".into()),
            ..Default::default()
        },
    );
    spec.identity_yaml = Some(format!(
        "  ca:\n    cert: {}\n    key: {}\n",
        files.cert.display(),
        files.key.display()
    ));
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");
    let target = format!("{SHORT_VIP}:80");
    let ping = |mesh: &mesh_tests::mesh::Mesh, pod: &str| {
        mesh.probe(
            pod,
            &[
                "connect",
                "--connect",
                &target,
                "--send",
                "ping",
                "--timeout-ms",
                "3000",
            ],
        )
        .expect("probe")
    };
    let before = ping(&mesh, "client");
    assert_eq!(before["reply"], "ping", "{before}");

    std::thread::sleep(
        ca_expires.saturating_duration_since(Instant::now()) + Duration::from_secs(2),
    );

    let logs = mesh.agent_logs("node1");
    assert!(
        logs.contains("certificate expired and could not be rotated")
            && logs.contains("the CA certificate expired at"),
        "the log says why the certificate was not renewed: {logs}"
    );
    let status = mesh.admin("node1", "/status").expect("/status").to_string();
    assert!(
        status.contains(&format!("the certificate of {CLIENT_ID} expired")),
        "mesh-agent status names the expired certificate: {status}"
    );
    let outside = mesh.outside("node1");
    let ready = mesh
        .sim
        .run(
            &outside,
            "curl",
            [
                "-sS",
                "-w",
                "\\n%{http_code}",
                "http://127.0.0.1:15021/healthz/ready",
            ],
        )
        .expect("readiness");
    let ready = String::from_utf8_lossy(&ready.stdout).to_string();
    assert!(
        ready.ends_with("503") && ready.contains("has expired"),
        "readiness fails with the reason: {ready}"
    );
    let metrics = mesh
        .sim
        .run(&outside, "curl", ["-sS", "http://127.0.0.1:15020/metrics"])
        .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.stdout);
    let prefix = format!(
        "mesh_agent_certificate_expiration_timestamp_seconds{{spiffe_id=\"{CLIENT_ID}\"}} "
    );
    let expiry = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry < now,
        "the exported expiry {expiry} is in the past (now {now})"
    );

    // A workload without a certificate yet cannot get one: its connection is refused at
    // once instead of hanging.
    let started = Instant::now();
    let late = ping(&mesh, "latecomer");
    eprintln!(
        "latecomer after the CA expired: {late} in {:?}",
        started.elapsed()
    );
    assert_ne!(late["reply"], "ping", "{late}");
    assert!(started.elapsed() < Duration::from_secs(3), "{late}");
}
