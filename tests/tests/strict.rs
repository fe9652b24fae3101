//! STRICT mode: a workload in STRICT mode takes connections only from the mesh. Meshed traffic
//! (through node2's agent, which tells the kernel who the real client is) works; plaintext from
//! a process outside the mesh is dropped by the kernel before the workload sees it, while a
//! PERMISSIVE neighbour on the same node stays reachable the same way.

mod common;

use common::*;
use mesh_tests::mesh::{IdentitySpec, Mesh, MeshSpec};

fn plain_curl(mesh: &Mesh, url: &str) -> std::process::Output {
    mesh.sim
        .run(&mesh.outside("node1"), "curl", ["-sS", "-m", "3", url])
        .expect("curl")
}

fn http_server(mesh: &Mesh, pod: &str, reply: &str, accepts: &str) -> mesh_tests::sim::Proc {
    mesh.serve(
        pod,
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
    .expect("http server")
}

#[test]
fn strict_workload_refuses_plaintext_but_not_the_mesh() {
    let mut mesh = mesh("strict");
    mesh.sim.add_pod("node1", "client").expect("pod");
    mesh.sim.add_pod("node2", "web").expect("pod");
    mesh.sim.add_pod("node2", "plain").expect("pod");
    let mut spec = MeshSpec {
        services: vec![service("web", WEB_REMOTE_VIP, 80, 8080, &["web"])],
        ..MeshSpec::default()
    };
    spec.identities.insert(
        "web".into(),
        IdentitySpec {
            strict: true,
            ..IdentitySpec::default()
        },
    );
    let web_accepts = mesh.sim.dir().join("web-accepts");
    let plain_accepts = mesh.sim.dir().join("plain-accepts");
    let _web = http_server(
        &mesh,
        "web",
        "strict-web",
        &web_accepts.display().to_string(),
    );
    let _plain = http_server(
        &mesh,
        "plain",
        "permissive-plain",
        &plain_accepts.display().to_string(),
    );
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");
    let web_accepted = || {
        std::fs::read_to_string(&web_accepts)
            .unwrap()
            .trim()
            .to_string()
    };

    // Through the mesh: works, and node2's kernel saw the agent's connection for the client.
    let url = format!("http://{WEB_REMOTE_VIP}/");
    let out = mesh
        .run_in("client", "curl", &["-sS", "-m", "5", &url])
        .expect("curl");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("strict-web"),
        "meshed curl to the STRICT workload: {out:?}\n{}",
        mesh.agent_logs("node2")
    );
    assert_eq!(web_accepted(), "1");
    assert!(mesh.kernel_counter("node2", "ingress_via_agent").unwrap() >= 1);

    // Plaintext from outside the mesh to the pod address: dropped, never accepted.
    let web_ip = mesh.workload("web").ip;
    let denied_before = mesh
        .kernel_counter("node2", "ingress_strict_denied")
        .unwrap();
    let out = plain_curl(&mesh, &format!("http://{web_ip}:8080/"));
    assert!(
        !out.status.success(),
        "plaintext reached the STRICT workload: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(web_accepted(), "1", "plaintext connection was accepted");
    assert!(
        mesh.kernel_counter("node2", "ingress_strict_denied")
            .unwrap()
            > denied_before
    );

    // Control: the same plaintext request to a PERMISSIVE pod on node2 gets through.
    let plain_ip = mesh.workload("plain").ip;
    let out = plain_curl(&mesh, &format!("http://{plain_ip}:8080/"));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("permissive-plain"),
        "plaintext to a PERMISSIVE pod must work: {out:?}"
    );
    assert_eq!(std::fs::read_to_string(&plain_accepts).unwrap().trim(), "1");
}
