//! Shared set-up of the end-to-end tests: the standard two-node topology.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use mesh_tests::mesh::{Binaries, Mesh, MeshSpec, ServiceSpec};

pub const PROBE: &str = env!("CARGO_BIN_EXE_mesh-probe");
pub const WEB_LOCAL_VIP: &str = "10.96.0.10";
pub const WEB_REMOTE_VIP: &str = "10.96.0.20";
pub const ECHO_VIP: &str = "10.96.0.30";
pub const ECHO_LOCAL_VIP: &str = "10.96.0.40";

/// Privileged tests FAIL (never skip) when root, cgroup v2 or BPF is missing.
pub fn mesh(tag: &str) -> Mesh {
    let bins = Binaries::locate(PROBE).expect("locating binaries");
    Mesh::new(tag, bins).expect("simulated nodes (needs root, cgroup v2 and BPF)")
}

pub fn service(
    name: &str,
    vip: &str,
    port: u16,
    target_port: u16,
    endpoints: &[&str],
) -> ServiceSpec {
    ServiceSpec::new(
        name,
        vip.parse::<Ipv4Addr>().expect("vip"),
        port,
        target_port,
        endpoints,
    )
}

/// node1: pod "client", host workload "hclient", pods "web-local" and "echo-local";
/// node2: pods "web" and "echo". Services for all four servers.
pub fn standard_topology(mesh: &mut Mesh) -> MeshSpec {
    mesh.sim.add_pod("node1", "client").expect("pod");
    mesh.sim
        .add_host_workload("node1", "hclient")
        .expect("host workload");
    mesh.sim.add_pod("node1", "web-local").expect("pod");
    mesh.sim.add_pod("node1", "echo-local").expect("pod");
    mesh.sim.add_pod("node2", "web").expect("pod");
    mesh.sim.add_pod("node2", "echo").expect("pod");
    MeshSpec {
        services: vec![
            service("web-local", WEB_LOCAL_VIP, 80, 8080, &["web-local"]),
            service("web", WEB_REMOTE_VIP, 80, 8080, &["web"]),
            service("echo", ECHO_VIP, 9000, 9000, &["echo"]),
            service("echo-local", ECHO_LOCAL_VIP, 9000, 9000, &["echo-local"]),
        ],
        ..MeshSpec::default()
    }
}

pub fn s<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// What `curl` from `pod` gets for `url`: the status and the agent's response flag, as
/// "403 RBAC" ("200" when no flag was set).
pub fn status_and_flags(mesh: &Mesh, pod: &str, url: &str) -> String {
    let out = mesh
        .run_in(
            pod,
            "curl",
            &[
                "-sS",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %header{x-mesh-response-flags}",
                url,
            ],
        )
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
