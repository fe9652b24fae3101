//! Kubernetes cgroup layout: a pod's processes run in container cgroups below the pod cgroup,
//! which is the cgroup the workload declares (and which holds no process). The kernel programs
//! must find the workload from a container's cgroup: redirect, egress policy (EPERM), ingress
//! policy, and the attribution of flows and metrics to the pod, at the Guaranteed depth
//! (`kubepods/pod<uid>`) and the Burstable/BestEffort depth (`kubepods/<qos>/pod<uid>`), and
//! for a workload cgroup nested in another workload's cgroup (the nearest one wins).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use mesh_tests::mesh::{Mesh, MeshSpec, PolicySpec};

const EPERM: i64 = 1;

/// kubelet's cgroupfs-driver paths relative to the node cgroup (the sim's kubepods root).
const CLIENT_BURSTABLE: &str = "kubepods/burstable/pod0f6c1f9e-5d2a-4c61-9a51-2b8e7d3c4a10";
const CLIENT_GUARANTEED: &str = "kubepods/pod7d2e4b1a-9c3f-4e8d-b6a5-1f0e9d8c7b61";
const WEB_LOCAL_BESTEFFORT: &str = "kubepods/besteffort/pod3a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c62";
const WEB_BURSTABLE: &str = "kubepods/burstable/pod5e4d3c2b-1a0f-4e9d-8c7b-6a5f4e3d2c13";

fn allow(cidr: &str, port: u16) -> (String, Vec<u16>) {
    (cidr.to_string(), vec![port])
}

fn egress(rules: Vec<(String, Vec<u16>)>) -> PolicySpec {
    PolicySpec {
        egress: Some(rules),
        ingress: None,
    }
}

/// node1: pods "client" (Burstable depth) and "gclient" (Guaranteed depth), server pod
/// "web-local" (BestEffort depth); node2: server pod "web" (Burstable depth) that accepts
/// port 8080 only from the two client pods (judged by the original client address that
/// node2's agent records for its upstream connection). Services "web-local" and "web". Every process runs
/// in the pod's container cgroup.
fn kubelet_topology(mesh: &mut Mesh) -> MeshSpec {
    for (node, name, cgroup) in [
        ("node1", "client", CLIENT_BURSTABLE),
        ("node1", "gclient", CLIENT_GUARANTEED),
        ("node1", "web-local", WEB_LOCAL_BESTEFFORT),
        ("node2", "web", WEB_BURSTABLE),
    ] {
        mesh.sim
            .add_pod_with_cgroup(node, name, Path::new(cgroup))
            .expect("pod");
    }
    let mut spec = MeshSpec {
        services: vec![
            service("web-local", WEB_LOCAL_VIP, 80, 8080, &["web-local"]),
            service("web", WEB_REMOTE_VIP, 80, 8080, &["web"]),
        ],
        ..MeshSpec::default()
    };
    let vip = |v: &str| format!("{v}/32");
    spec.policies.insert(
        "client".into(),
        egress(vec![
            allow(&vip(WEB_REMOTE_VIP), 80),
            allow(&vip(WEB_LOCAL_VIP), 80),
        ]),
    );
    spec.policies.insert(
        "gclient".into(),
        egress(vec![allow(&vip(WEB_REMOTE_VIP), 80)]),
    );
    spec.policies.insert(
        "web".into(),
        PolicySpec {
            egress: None,
            ingress: Some(
                ["client", "gclient"]
                    .iter()
                    .map(|w| allow(&format!("{}/32", mesh.workload(w).ip), 8080))
                    .collect(),
            ),
        },
    );
    spec
}

fn serve_web(mesh: &Mesh, workload: &str, reply: &str, accepts: &str) -> mesh_tests::sim::Proc {
    mesh.serve_at(
        &mesh.container(workload),
        &[
            "http-server",
            "--listen",
            "0.0.0.0:8080",
            "--reply",
            reply,
            "--accept-count-file",
            accepts,
        ],
    )
    .unwrap_or_else(|e| panic!("{workload} server: {e:#}"))
}

/// A request from `workload`'s container cgroup to `target`; returns the probe's JSON.
fn request_from_container(mesh: &Mesh, workload: &str, target: &str) -> serde_json::Value {
    mesh.probe_at(
        &mesh.container(workload),
        &[
            "connect",
            "--connect",
            target,
            "--timeout-ms",
            "5000",
            "--send",
            "GET / HTTP/1.0\r\n\r\n",
        ],
    )
    .unwrap_or_else(|e| panic!("probe from {workload}/ctr to {target}: {e:#}"))
}

fn assert_reaches(mesh: &Mesh, workload: &str, target: &str, reply: &str) -> serde_json::Value {
    let r = request_from_container(mesh, workload, target);
    assert_eq!(
        r["ok"],
        true,
        "{workload}/ctr -> {target}: {r}\n{}",
        mesh.agent_logs("node1")
    );
    assert!(
        s(&r, "reply").contains(reply),
        "{workload}/ctr -> {target}: {r}"
    );
    // getpeername shows the VIP: the connection went through the agent's redirect.
    assert_eq!(s(&r, "peer"), target, "{workload}/ctr -> {target}: {r}");
    r
}

fn assert_eperm(mesh: &Mesh, workload: &str, target: &str) {
    let started = Instant::now();
    let r = request_from_container(mesh, workload, target);
    assert_eq!(
        r["ok"], false,
        "{workload}/ctr -> {target} must be denied: {r}"
    );
    assert_eq!(
        r["errno"].as_i64(),
        Some(EPERM),
        "{workload}/ctr -> {target}: {r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "EPERM must be immediate"
    );
}

/// The client-side flow of a finished request on node1 carries the pod's workload.
fn assert_flow_attributed(mesh: &Mesh, r: &serde_json::Value, workload: &str) {
    let local = s(r, "local").to_string();
    let flow = mesh
        .wait_for_flow("node1", Duration::from_secs(10), |f| {
            f["state"] == "closed" && f["local"] == local.as_str()
        })
        .expect("closed client flow");
    assert_eq!(flow["redirected"], true, "{flow}");
    assert_eq!(flow["workload"], format!("default/{workload}"), "{flow}");
}

/// A node's /metrics text.
fn metrics(mesh: &Mesh, node: &str) -> String {
    let url = format!("http://{}:15020/metrics", mesh.sim.node(node).ip);
    let out = mesh
        .sim
        .exec_in_node(node, "curl", ["-sS", "-m", "5", url.as_str()])
        .expect("curl /metrics");
    assert!(
        out.status.success(),
        "GET {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until node1 reports an outbound TCP connection from `workload` to `service`
/// (reporter="source"): the metrics name the pod, not "unknown".
fn assert_metrics_name_source(mesh: &Mesh, workload: &str, service: &str) {
    let wanted = [
        "reporter=\"source\"".to_string(),
        format!("source_workload=\"{workload}\""),
        format!("destination_service_name=\"{service}\""),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(mesh, "node1");
        let found = text.lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && wanted.iter().all(|w| l.contains(w.as_str()))
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no istio_tcp_connections_opened_total with {wanted:?} on node1:\n{}",
            text.lines()
                .filter(|l| l.starts_with("istio_tcp_connections_opened_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn container_processes_are_redirected_policed_and_attributed_to_their_pod() {
    let mut mesh = mesh("ctr");
    let spec = kubelet_topology(&mut mesh);
    let web_accepts = mesh.sim.dir().join("web-accepts").display().to_string();
    let local_accepts = mesh.sim.dir().join("local-accepts").display().to_string();
    let _web = serve_web(&mesh, "web", "web-remote", &web_accepts);
    let _local = serve_web(&mesh, "web-local", "web-local", &local_accepts);
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");

    // Inbound to web's container from an address its ingress rule does not allow: a process
    // on node2 dials the pod; node2's agent connects from node2's address and the kernel drops
    // that SYN at the listener in web/ctr (found through its pod cgroup).
    let web_ip = mesh.workload("web").ip.to_string();
    let out = mesh
        .sim
        .run(
            &mesh.sim.node("node2").tools_placement(),
            &mesh.bins.probe,
            [
                "connect",
                "--connect",
                &format!("{web_ip}:8080"),
                "--timeout-ms",
                "1500",
                "--send",
                "GET / HTTP/1.0\r\n\r\n",
            ],
        )
        .expect("probe from node2");
    let r = mesh_tests::mesh::parse_last_json(&out.stdout).expect("json");
    assert_eq!(r["ok"], false, "inbound from node2 must get no answer: {r}");
    assert_eq!(
        std::fs::read_to_string(&web_accepts).unwrap().trim(),
        "0",
        "denied inbound reached the workload"
    );
    assert!(mesh.kernel_counter("node2", "ingress_denied").unwrap() >= 1);

    // Both clients reach the remote service through the redirect (allowed by their egress
    // rules, and by web's ingress rule for their pod addresses), from container cgroups at
    // both pod depths.
    let burstable = assert_reaches(
        &mesh,
        "client",
        &format!("{WEB_REMOTE_VIP}:80"),
        "web-remote",
    );
    let guaranteed = assert_reaches(
        &mesh,
        "gclient",
        &format!("{WEB_REMOTE_VIP}:80"),
        "web-remote",
    );
    assert_eq!(std::fs::read_to_string(&web_accepts).unwrap().trim(), "2");
    let same_node = assert_reaches(&mesh, "client", &format!("{WEB_LOCAL_VIP}:80"), "web-local");

    // Each pod's own egress rules apply to its containers.
    let before = mesh.kernel_counter("node1", "connect_denied").unwrap();
    assert_eperm(&mesh, "client", &format!("{web_ip}:8080"));
    assert_eperm(&mesh, "client", &format!("{WEB_LOCAL_VIP}:81"));
    assert_eperm(&mesh, "gclient", &format!("{WEB_LOCAL_VIP}:80"));
    assert_eq!(
        mesh.kernel_counter("node1", "connect_denied").unwrap(),
        before + 3
    );

    // Flows and metrics name the pod, not "unknown".
    assert_flow_attributed(&mesh, &burstable, "client");
    assert_flow_attributed(&mesh, &guaranteed, "gclient");
    assert_flow_attributed(&mesh, &same_node, "client");
    assert_metrics_name_source(&mesh, "client", "web");
    assert_metrics_name_source(&mesh, "gclient", "web");
    assert_metrics_name_source(&mesh, "client", "web-local");

    // A passthrough connection (not meshed, no egress rules on web-local): sock_ops records
    // the pod of the connecting container too.
    let node1 = mesh.sim.node("node1");
    let plain = format!("{}:7000", node1.ip);
    let mut plain_server = mesh
        .sim
        .spawn(
            &node1.tools_placement(),
            &mesh.bins.probe,
            [
                "http-server",
                "--listen",
                plain.as_str(),
                "--reply",
                "plain",
            ],
        )
        .expect("plain server");
    plain_server
        .wait_for_stdout("listening", Duration::from_secs(20))
        .expect("plain server listening");
    let r = request_from_container(&mesh, "web-local", &plain);
    assert_eq!(r["ok"], true, "web-local/ctr -> {plain}: {r}");
    let local = s(&r, "local").to_string();
    let flow = mesh
        .wait_for_flow("node1", Duration::from_secs(10), |f| {
            f["state"] == "closed" && f["local"] == local.as_str()
        })
        .expect("closed passthrough flow");
    assert_eq!(flow["redirected"], false, "{flow}");
    assert_eq!(flow["workload"], "default/web-local", "{flow}");
}

/// A workload cgroup inside another workload's cgroup: processes below the inner one belong
/// to the inner workload (the nearest enclosing workload), the others to the outer one.
#[test]
fn nested_workload_cgroup_takes_its_own_processes() {
    let mut mesh = mesh("ctrnest");
    mesh.sim
        .add_pod_with_cgroup("node1", "outer", Path::new("pods/outer"))
        .expect("pod outer");
    mesh.sim
        .add_pod_with_cgroup("node1", "inner", Path::new("pods/outer/inner"))
        .expect("pod inner");
    mesh.sim
        .add_pod_with_cgroup("node1", "web-local", Path::new(WEB_LOCAL_BESTEFFORT))
        .expect("pod web-local");
    mesh.sim.add_pod("node2", "web").expect("pod web");
    let mut spec = MeshSpec {
        services: vec![
            service("web-local", WEB_LOCAL_VIP, 80, 8080, &["web-local"]),
            service("web", WEB_REMOTE_VIP, 80, 8080, &["web"]),
        ],
        ..MeshSpec::default()
    };
    spec.policies.insert(
        "outer".into(),
        egress(vec![allow(&format!("{WEB_REMOTE_VIP}/32"), 80)]),
    );
    spec.policies.insert(
        "inner".into(),
        egress(vec![allow(&format!("{WEB_LOCAL_VIP}/32"), 80)]),
    );
    let web_accepts = mesh.sim.dir().join("web-accepts").display().to_string();
    let local_accepts = mesh.sim.dir().join("local-accepts").display().to_string();
    let _web = serve_web(&mesh, "web", "web-remote", &web_accepts);
    let _local = serve_web(&mesh, "web-local", "web-local", &local_accepts);
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");

    let outer = assert_reaches(
        &mesh,
        "outer",
        &format!("{WEB_REMOTE_VIP}:80"),
        "web-remote",
    );
    assert_eperm(&mesh, "outer", &format!("{WEB_LOCAL_VIP}:80"));
    let inner = assert_reaches(&mesh, "inner", &format!("{WEB_LOCAL_VIP}:80"), "web-local");
    assert_eperm(&mesh, "inner", &format!("{WEB_REMOTE_VIP}:80"));
    assert_flow_attributed(&mesh, &outer, "outer");
    assert_flow_attributed(&mesh, &inner, "inner");
}
