//! Transparent redirect: curl to a service VIP that no interface owns gets the service's
//! answer through the agent, and the client's getpeername shows the VIP. From a pod and from a
//! host workload, to a backend on the same node and on the other node.

mod common;

use common::*;

#[test]
fn curl_to_vip_reaches_service_from_pod_and_host_on_both_nodes() {
    let mut mesh = mesh("redir");
    let spec = standard_topology(&mut mesh);
    let accepts = mesh.sim.dir().join("web-accepts");
    let accepts = accepts.display().to_string();
    let _local = mesh
        .serve(
            "web-local",
            &[
                "http-server",
                "--listen",
                "0.0.0.0:8080",
                "--reply",
                "web-local-says-hi",
            ],
        )
        .expect("web-local");
    let _remote = mesh
        .serve(
            "web",
            &[
                "http-server",
                "--listen",
                "0.0.0.0:8080",
                "--reply",
                "web-remote-says-hi",
                "--accept-count-file",
                &accepts,
            ],
        )
        .expect("web");
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");

    for client in ["client", "hclient"] {
        for (vip, reply) in [
            (WEB_LOCAL_VIP, "web-local-says-hi"),
            (WEB_REMOTE_VIP, "web-remote-says-hi"),
        ] {
            let url = format!("http://{vip}/");
            let out = mesh
                .run_in(
                    client,
                    "curl",
                    &[
                        "-sS",
                        "-m",
                        "5",
                        "-w",
                        "\n%{remote_ip}:%{remote_port}",
                        &url,
                    ],
                )
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains(reply),
                "curl {url} from {client}: {text} {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                mesh.agent_logs("node1")
            );
            // curl reports the peer address from getpeername(): the VIP, not 127.0.0.1:15001.
            assert!(
                text.trim_end().ends_with(&format!("{vip}:80")),
                "curl saw peer {text}"
            );

            // The same with an explicit getpeername() by mesh-probe.
            let addr = format!("{vip}:80");
            let r = mesh
                .probe(
                    client,
                    &[
                        "connect",
                        "--connect",
                        &addr,
                        "--send",
                        "GET / HTTP/1.0\r\n\r\n",
                    ],
                )
                .expect("probe connect");
            assert_eq!(r["ok"], true, "{r}");
            assert_eq!(s(&r, "peer"), addr, "getpeername must show the VIP: {r}");
            assert!(s(&r, "reply").contains(reply), "{r}");
        }
    }

    // Every connection to the remote service went through node1's agent (none bypassed it).
    let flows = mesh.flows("node1").expect("flows");
    let redirected = flows.iter().filter(|f| f["redirected"] == true).count();
    assert!(
        redirected >= 8,
        "expected 8 redirected client connections, got {redirected}: {flows:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(mesh.sim.dir().join("web-accepts"))
            .unwrap()
            .trim(),
        "4"
    );
}
