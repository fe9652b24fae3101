//! Privileged smoke test of the node simulation: two nodes, a pod on each and
//! a host workload, plain routing (no mesh). Fails, never skips, when the
//! machine cannot run it.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use mesh_tests::sim::{self, CGROUP_ROOT, Proc, Sim, WorkloadHandle};
use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_mesh-probe");
const REPLY: &str = "hello-from-pod2";

#[test]
fn pods_and_host_workload_reach_a_pod_on_another_node() {
    sim::require_privileges().expect("privileged test prerequisites");
    let mut sim = Sim::new("smoke").expect("creating sim");
    let prefix = sim.prefix().to_string();
    let mut server = None;
    let result = exercise(&mut sim, &mut server);
    if let Err(e) = &result {
        if let Some(server) = &server {
            eprintln!("{}", server.logs());
        }
        panic!("smoke test failed: {e:#}");
    }

    // Dropping the sim must kill what runs in it, even processes whose Proc
    // handle is still alive, and remove every netns and cgroup.
    drop(sim);
    let mut server = server.expect("server was started");
    assert_exits_soon(&mut server);
    let leftovers: Vec<String> = sim::list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(leftovers.is_empty(), "netns left behind: {leftovers:?}");
    let cgroup = Path::new(CGROUP_ROOT).join(&prefix);
    assert!(!cgroup.exists(), "cgroup left behind: {}", cgroup.display());
}

fn exercise(sim: &mut Sim, server_slot: &mut Option<Proc>) -> Result<()> {
    sim.add_node("node1")?;
    sim.add_node("node2")?;
    let pod1 = sim.add_pod("node1", "pod1")?;
    let pod2 = sim.add_pod("node2", "pod2")?;
    let host1 = sim.add_host_workload("node1", "host1")?;
    ensure!(pod2.ip.to_string() == "10.1.2.2", "pod2 ip {}", pod2.ip);
    ensure!(
        host1.ip == sim.node("node1").ip,
        "host workload uses node ip"
    );

    let count_file = sim.dir().join("pod2-accepts");
    let server = server_slot.insert(sim.spawn(
        &pod2.placement(),
        PROBE,
        [
            "http-server",
            "--listen",
            "0.0.0.0:8080",
            "--reply",
            REPLY,
            "--accept-count-file",
            count_file.to_str().context("non-UTF-8 temp dir")?,
        ],
    )?);
    server.wait_for_stdout("listening", Duration::from_secs(10))?;
    assert_placed(server, &pod2, sim.prefix())?;
    let addr = SocketAddr::new(pod2.ip.into(), 8080);
    sim.wait_for_tcp(&pod2.placement(), addr, Duration::from_secs(10))?;

    for client in [&pod1, &host1] {
        let reply =
            http_get(sim, client, addr).with_context(|| format!("GET from {}", client.name))?;
        ensure!(
            reply["reply"].as_str().unwrap_or("").contains(REPLY),
            "unexpected reply to {}: {reply}",
            client.name
        );
        let local: SocketAddr = reply["local"].as_str().unwrap_or("").parse()?;
        ensure!(
            local.ip() == IpAddr::from(client.ip),
            "{} connected from {local}, expected its own ip {}",
            client.name,
            client.ip
        );
    }
    // One accept for wait_for_tcp plus one per client.
    let accepts = std::fs::read_to_string(&count_file)?;
    ensure!(accepts == "3", "accept count {accepts:?}, expected 3");
    Ok(())
}

fn http_get(sim: &Sim, client: &WorkloadHandle, addr: SocketAddr) -> Result<Value> {
    let out = sim.run(
        &client.placement(),
        PROBE,
        [
            "connect",
            "--connect",
            &addr.to_string(),
            "--send",
            "GET / HTTP/1.1\r\nHost: pod2\r\n\r\n",
        ],
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "mesh-probe connect failed ({}): {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).with_context(|| format!("parsing {stdout:?}"))
}

/// The server must be in the pod's cgroup and netns, not just reachable.
fn assert_placed(server: &Proc, pod: &WorkloadHandle, prefix: &str) -> Result<()> {
    let pid = server.pid();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let expected = format!("0::/{prefix}/node2/pods/{}", pod.name);
    ensure!(
        cgroup.lines().any(|l| l == expected),
        "server cgroup {cgroup:?}, expected {expected}"
    );
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
    let pod_ns = std::fs::metadata(&pod.netns_path)?.ino();
    ensure!(ns == pod_ns, "server not in the pod netns");
    Ok(())
}

fn assert_exits_soon(proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if proc.try_wait().expect("try_wait").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("process {} survived Sim drop", proc.pid());
}
