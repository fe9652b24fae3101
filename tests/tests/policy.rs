//! L4 allow policy: a connect that policy denies fails at once with EPERM, an allowed one
//! works; inbound from a source that is not allowed never reaches the workload.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mesh_tests::mesh::PolicySpec;

const EPERM: i64 = 1;

#[test]
fn denied_connect_is_eperm_and_denied_inbound_never_reaches_the_workload() {
    let mut mesh = mesh("policy");
    let mut spec = standard_topology(&mut mesh);
    let web_ip = mesh.workload("web").ip.to_string();
    let node1_ip = mesh.sim.node("node1").ip.to_string();
    // client may only reach the web-local VIP on port 80.
    spec.policies.insert(
        "client".into(),
        PolicySpec {
            egress: Some(vec![(format!("{WEB_LOCAL_VIP}/32"), vec![80])]),
            ingress: None,
        },
    );
    // web (node2) accepts port 8080 only from node1's address (where node1's agent connects from).
    spec.policies.insert(
        "web".into(),
        PolicySpec {
            egress: None,
            ingress: Some(vec![(format!("{node1_ip}/32"), vec![8080])]),
        },
    );
    let web_accepts = mesh.sim.dir().join("web-accepts").display().to_string();
    let _web = mesh
        .serve(
            "web",
            &[
                "http-server",
                "--listen",
                "0.0.0.0:8080",
                "--reply",
                "web",
                "--accept-count-file",
                &web_accepts,
            ],
        )
        .expect("web");
    let _local = mesh
        .serve(
            "web-local",
            &[
                "http-server",
                "--listen",
                "0.0.0.0:8080",
                "--reply",
                "local",
            ],
        )
        .expect("web-local");
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");

    // Denied: the other VIP and a pod IP. EPERM, immediately (no SYN ever leaves).
    for target in [
        format!("{WEB_REMOTE_VIP}:80"),
        format!("{web_ip}:8080"),
        format!("{WEB_LOCAL_VIP}:81"),
    ] {
        let started = Instant::now();
        let r = mesh
            .probe(
                "client",
                &["connect", "--connect", &target, "--timeout-ms", "5000"],
            )
            .expect("probe");
        assert_eq!(r["ok"], false, "{target} must be denied: {r}");
        assert_eq!(r["errno"].as_i64(), Some(EPERM), "{target}: {r}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "EPERM must be immediate"
        );
    }
    // Allowed.
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
    assert_eq!(r["ok"], true, "allowed connect: {r}");
    assert!(s(&r, "reply").contains("local"), "{r}");
    assert!(mesh.kernel_counter("node1", "connect_denied").unwrap() >= 3);

    // Inbound to web from an address the policy does not allow: a process on node2 dials the
    // pod. It is redirected to node2's agent, whose upstream SYN comes from node2's address,
    // which the rule does not allow: the kernel drops it, no reply ever comes back.
    let node2_tools = mesh.sim.node("node2").tools_placement();
    let out = mesh
        .sim
        .run(
            &node2_tools,
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
    assert!(!s(&r, "reply").contains("web"), "{r}");
    assert_eq!(
        std::fs::read_to_string(&web_accepts).unwrap().trim(),
        "0",
        "denied inbound reached the workload"
    );
    assert!(mesh.kernel_counter("node2", "ingress_denied").unwrap() >= 1);

    // Allowed inbound: client -> agent on node1 -> web from node1's address.
    let r = mesh
        .probe(
            "hclient",
            &[
                "connect",
                "--connect",
                &format!("{WEB_REMOTE_VIP}:80"),
                "--send",
                "GET / HTTP/1.0\r\n\r\n",
            ],
        )
        .expect("probe");
    assert_eq!(r["ok"], true, "{r}\n{}", mesh.agent_logs("node1"));
    assert!(s(&r, "reply").contains("web"), "{r}");
    assert_eq!(std::fs::read_to_string(&web_accepts).unwrap().trim(), "1");
}
