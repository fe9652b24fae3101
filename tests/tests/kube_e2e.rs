//! The Kubernetes source end to end: real agents on simulated nodes, configured with a
//! `kubernetes:` section and reading the fake API server (bound in node1's netns, reached by
//! node2 over the bridge), pods laid out as kubelet does (pod cgroup at the systemd driver's
//! path under the node cgroup, own netns and IP).
//!
//! Objects added, updated and deleted in the API reach `/config_dump`, the kernel maps
//! (`bpftool map dump`) and the traffic (a VIP reaches its pod; an HTTPRoute picks the backend
//! by header; a DENY MeshAuthorizationPolicy refuses); a pod deleted while the Pod watch is
//! expired leaves the model and the maps after the re-list. Privileged: fails (never skips)
//! without root, cgroup v2 or BPF. No timing assertions: deadlines only bound waits.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use mesh_tests::fake_kube::{self, FakeApi};
use mesh_tests::kube_sim::{KubeMesh, wait_until};
use mesh_tests::mesh::Binaries;
use mesh_tests::sim::Proc;
use serde_json::{Value, json};

const PROBE: &str = env!("CARGO_BIN_EXE_mesh-probe");
const WAIT: Duration = Duration::from_secs(30);
const NS: &str = "demo";
const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 10);
const WEB_V1: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 11);
const WEB_V2: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 12);
/// web-v1 as a plain TCP service (appProtocol tcp): every connection is authorized anew at
/// the destination, while HTTP requests may ride an upstream connection opened earlier.
const WEB_TCP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 13);
const TCP_PORT: u16 = 9000;

fn kube_mesh(tag: &str) -> KubeMesh {
    let bins = Binaries::locate(PROBE).expect("locating binaries");
    KubeMesh::new(tag, bins).expect("simulated nodes (needs root, cgroup v2 and BPF)")
}

/// A Service on `vip:80` -> 8080 (appProtocol http) and its EndpointSlice of `pods`.
fn publish_service(km: &KubeMesh, name: &str, vip: Ipv4Addr, pods: &[&str]) {
    km.api.apply(fake_kube::service(
        NS,
        name,
        &[IpAddr::V4(vip)],
        &[fake_kube::service_port(Some("http"), 80, 8080).app_protocol("http")],
    ));
    publish_slice(km, name, pods);
}

fn publish_tcp_service(km: &KubeMesh, name: &str, vip: Ipv4Addr, pods: &[&str]) {
    km.api.apply(fake_kube::service(
        NS,
        name,
        &[IpAddr::V4(vip)],
        &[fake_kube::service_port(Some("tcp"), TCP_PORT, 8080).app_protocol("tcp")],
    ));
    let endpoints: Vec<_> = pods
        .iter()
        .map(|p| {
            let pod = km.pod(p);
            fake_kube::endpoint(IpAddr::V4(pod.ip), &pod.node, &pod.name)
        })
        .collect();
    km.api.apply(fake_kube::endpoint_slice(
        NS,
        &format!("{name}-slice"),
        name,
        &[(Some("tcp"), 8080)],
        &endpoints,
    ));
}

fn publish_slice(km: &KubeMesh, service: &str, pods: &[&str]) {
    let endpoints: Vec<_> = pods
        .iter()
        .map(|p| {
            let pod = km.pod(p);
            fake_kube::endpoint(IpAddr::V4(pod.ip), &pod.node, &pod.name)
        })
        .collect();
    km.api.apply(fake_kube::endpoint_slice(
        NS,
        &format!("{service}-slice"),
        service,
        &[(Some("http"), 8080)],
        &endpoints,
    ));
}

fn backend(km: &KubeMesh, pod: &str) -> Proc {
    km.serve_in_pod(
        pod,
        &["http-backend", "--listen", "0.0.0.0:8080", "--name", pod],
    )
    .unwrap_or_else(|e| panic!("http-backend in {pod}: {e:#}"))
}

/// curl from a pod to `vip:80`: (HTTP status, x-backend), status 0 when curl itself failed.
fn curl(km: &KubeMesh, from: &str, vip: Ipv4Addr, headers: &[&str]) -> (u16, String) {
    curl_port(km, from, vip, 80, headers)
}

fn curl_port(
    km: &KubeMesh,
    from: &str,
    vip: Ipv4Addr,
    port: u16,
    headers: &[&str],
) -> (u16, String) {
    let url = format!("http://{vip}:{port}/");
    let mut args = vec!["-sS", "-i", "-m", "5"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(&url);
    let out = km.run_in_pod(from, "curl", &args).expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let backend = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-backend")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, backend)
}

fn dump(km: &KubeMesh, node: &str) -> Value {
    km.config_dump(node)
        .unwrap_or_else(|e| panic!("/config_dump on {node}: {e:#}"))
}

fn named<'a>(dump: &'a Value, section: &str, name: &str) -> Option<&'a Value> {
    dump["config"][section]
        .as_array()?
        .iter()
        .find(|o| o["name"] == name)
}

/// Waits for `check` on the node's /config_dump; the error shows the last dump and logs.
fn dump_until(km: &KubeMesh, node: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let mut last = Value::Null;
    let result = wait_until(what, WAIT, || {
        last = km.config_dump(node)?;
        Ok(check(&last))
    });
    if let Err(e) = result {
        panic!(
            "{e:#}\n/config_dump of {node}: {last:#}\nagent log:\n{}\nAPI requests:\n{}",
            km.agent_logs(node),
            km.api.requests_text()
        );
    }
}

fn maps_until(km: &KubeMesh, what: &str, check: impl Fn() -> anyhow::Result<bool>) {
    wait_until(what, WAIT, check).unwrap_or_else(|e| {
        panic!(
            "{e:#}\nnode1 log:\n{}\nnode2 log:\n{}",
            km.agent_logs("node1"),
            km.agent_logs("node2")
        )
    });
}

fn policy_deny(principal: &str) -> Value {
    json!({
        "selector": {"matchLabels": {"app": "web"}},
        "action": "DENY",
        "rules": [{"from": [{"source": {"principals": [principal]}}]}],
    })
}

#[test]
fn objects_reach_model_maps_and_traffic() {
    let mut km = kube_mesh("kube-e2e");
    km.namespace(NS, true);
    km.add_pod(
        "node1",
        NS,
        "client",
        "Burstable",
        &[("app", "client")],
        Some("client"),
    )
    .expect("pod client");
    // Guaranteed pods sit one level higher (kubepods.slice/kubepods-pod<uid>.slice).
    for (v, qos) in [("web-v1", "BestEffort"), ("web-v2", "Guaranteed")] {
        km.add_pod(
            "node2",
            NS,
            v,
            qos,
            &[("app", "web"), ("version", v)],
            Some("web"),
        )
        .expect("pod");
    }
    let _v1 = backend(&km, "web-v1");
    let _v2 = backend(&km, "web-v2");
    for p in ["client", "web-v1", "web-v2"] {
        km.publish(p);
    }
    publish_service(&km, "web", WEB, &["web-v1", "web-v2"]);
    publish_service(&km, "web-v1", WEB_V1, &["web-v1"]);
    publish_service(&km, "web-v2", WEB_V2, &["web-v2"]);
    publish_tcp_service(&km, "web-tcp", WEB_TCP, &["web-v1"]);
    km.start_agent("node1").expect("agent node1");
    km.start_agent("node2").expect("agent node2");

    // The model: pods of each node as workloads at their kubelet cgroup, services with the
    // slices' endpoints, peer nodes from Node objects.
    let client = km.pod("client").clone();
    dump_until(&km, "node1", "node1 model", |d| {
        d["status"]["source"] == "kubernetes"
            && d["status"]["kubernetes_synced"] == true
            && named(d, "workloads", "client").is_some()
            && named(d, "services", "web")
                .is_some_and(|s| s["endpoints"].as_array().is_some_and(|e| e.len() == 2))
    });
    let d = dump(&km, "node1");
    let w = named(&d, "workloads", "client").unwrap();
    assert_eq!(w["cgroup"], client.cgroup.display().to_string(), "{w}");
    assert_eq!(w["namespace"], NS);
    assert_eq!(w["ips"], json!([client.ip.to_string()]));
    assert_eq!(w["service_account"], "client");
    // Found among the runtime's named namespaces by the pod IP, not through the pod's
    // processes (which would need ptrace access the DaemonSet does not have).
    let netns = w["netns"].as_str().unwrap_or_default();
    assert!(
        netns.starts_with("/var/run/netns/") || netns.starts_with("/run/netns/"),
        "{netns}"
    );
    assert!(
        named(&d, "nodes", "node2").is_some(),
        "{:#}",
        d["config"]["nodes"]
    );
    assert!(named(&d, "workloads", "web-v1").is_none(), "not on node1");
    dump_until(&km, "node2", "node2 model", |d| {
        named(d, "workloads", "web-v1").is_some() && named(d, "workloads", "web-v2").is_some()
    });

    // The kernel maps follow.
    maps_until(&km, "client and the VIPs in node1's maps", || {
        Ok(km.workload_in_maps("node1", &client)?
            && km.service_in_maps("node1", WEB, 80)?
            && km.service_in_maps("node1", WEB_V2, 80)?)
    });
    maps_until(&km, "web pods in node2's maps", || {
        Ok(km.workload_in_maps("node2", km.pod("web-v1"))?
            && km.workload_in_maps("node2", km.pod("web-v2"))?)
    });
    assert!(
        !km.workload_in_maps("node1", km.pod("web-v1")).unwrap(),
        "web-v1 is not node1's"
    );

    // Traffic: each VIP reaches its pod.
    assert_eq!(curl(&km, "client", WEB_V1, &[]), (200, "web-v1".into()));
    assert_eq!(curl(&km, "client", WEB_V2, &[]), (200, "web-v2".into()));
    assert_eq!(
        curl_port(&km, "client", WEB_TCP, TCP_PORT, &[]),
        (200, "web-v1".into())
    );

    // An HTTPRoute: `x-canary: 1` goes to web-v2, the rest to web-v1.
    km.api.apply(fake_kube::http_route(
        NS,
        "canary",
        "web",
        json!({"rules": [
            {"matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
             "backendRefs": [{"name": "web-v2", "port": 80}]},
            {"backendRefs": [{"name": "web-v1", "port": 80}]},
        ]}),
    ));
    dump_until(&km, "node1", "the route in node1's config", |d| {
        named(d, "http_routes", "canary").is_some()
    });
    for _ in 0..5 {
        assert_eq!(
            curl(&km, "client", WEB, &["x-canary: 1"]),
            (200, "web-v2".into())
        );
        assert_eq!(curl(&km, "client", WEB, &[]), (200, "web-v1".into()));
    }

    // Update the route: the canary header now goes to web-v1 as well.
    km.api.apply(fake_kube::http_route(
        NS,
        "canary",
        "web",
        json!({"rules": [
            {"matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
             "backendRefs": [{"name": "web-v1", "port": 80}]},
            {"backendRefs": [{"name": "web-v1", "port": 80}]},
        ]}),
    ));
    dump_until(&km, "node1", "the updated route", |d| {
        named(d, "http_routes", "canary").is_some_and(|r| !r.to_string().contains("web-v2"))
    });
    assert_eq!(
        curl(&km, "client", WEB, &["x-canary: 1"]),
        (200, "web-v1".into())
    );

    // Update a pod: new labels reach the workload.
    let relabelled = km.pod("client").builder().label("tier", "front");
    km.api.apply(relabelled);
    dump_until(&km, "node1", "client relabelled", |d| {
        named(d, "workloads", "client").is_some_and(|w| w["labels"]["tier"] == "front")
    });

    // A DENY policy for the client's identity: node2 refuses its next connection (L4: each
    // connection is authorized when the destination agent opens it to the pod).
    let denied_before = km.mesh.stat("node2", "inbound", "authz_denied").unwrap();
    km.api.apply(fake_kube::authorization_policy(
        NS,
        "deny-client",
        policy_deny("cluster.local/ns/demo/sa/client"),
    ));
    dump_until(&km, "node2", "the policy on node2", |d| {
        named(d, "authorization", "deny-client").is_some()
    });
    let (status, backend) = curl_port(&km, "client", WEB_TCP, TCP_PORT, &[]);
    assert!(
        status != 200 && backend.is_empty(),
        "refused, got {status} from {backend:?}"
    );
    assert!(km.mesh.stat("node2", "inbound", "authz_denied").unwrap() > denied_before);
    // HTTP too, although node1 pools its upstream streams to node2: node2 judges each
    // request by the policies in force.
    assert_eq!(
        curl(&km, "client", WEB_V1, &[]).0,
        403,
        "an HTTP request of the denied client"
    );

    // Update: the policy names someone else, the client is let in again.
    km.api.apply(fake_kube::authorization_policy(
        NS,
        "deny-client",
        policy_deny("cluster.local/ns/demo/sa/nobody"),
    ));
    dump_until(&km, "node2", "the updated policy", |d| {
        named(d, "authorization", "deny-client").is_some_and(|p| {
            p.to_string().contains("sa/nobody") && !p.to_string().contains("sa/client")
        })
    });
    assert_eq!(
        curl_port(&km, "client", WEB_TCP, TCP_PORT, &[]),
        (200, "web-v1".into())
    );

    // Update: web's slice loses web-v2.
    publish_slice(&km, "web", &["web-v1"]);
    dump_until(&km, "node1", "web with one endpoint", |d| {
        named(d, "services", "web")
            .is_some_and(|s| s["endpoints"].as_array().is_some_and(|e| e.len() == 1))
    });

    // Delete: the route, the policy, the web-v2 service, the web-v2 pod.
    assert!(km.workload_in_maps("node2", km.pod("web-v2")).unwrap());
    km.api.delete("HTTPRoute", NS, "canary");
    km.api.delete("MeshAuthorizationPolicy", NS, "deny-client");
    km.api.delete("EndpointSlice", NS, "web-v2-slice");
    km.api.delete("Service", NS, "web-v2");
    km.api.delete("Pod", NS, "web-v2");
    dump_until(&km, "node1", "deletions on node1", |d| {
        named(d, "http_routes", "canary").is_none() && named(d, "services", "web-v2").is_none()
    });
    dump_until(&km, "node2", "deletions on node2", |d| {
        named(d, "authorization", "deny-client").is_none()
            && named(d, "workloads", "web-v2").is_none()
    });
    maps_until(&km, "web-v2's VIP and pod out of the maps", || {
        Ok(!km.service_in_maps("node1", WEB_V2, 80)?
            && !km.workload_in_maps("node2", km.pod("web-v2"))?
            && km.workload_in_maps("node2", km.pod("web-v1"))?)
    });
    assert_eq!(curl(&km, "client", WEB, &["x-canary: 1"]).1, "web-v1");
    assert_eq!(
        curl(&km, "client", WEB_V2, &[]).0,
        0,
        "web-v2's VIP is gone"
    );
}

/// Gates the Pod watcher off the server (every Pod request answered 500) while `change`
/// runs, after breaking its watch with a 410 ERROR event and before compacting the history:
/// the change can only reach the agent through the re-list.
fn during_expired_pod_watch(api: &FakeApi, change: impl FnOnce()) {
    api.fail_next_requests("Pod", 1_000_000, 500);
    api.end_watches(true);
    change();
    api.compact();
    api.clear_failures();
}

#[test]
fn pod_deleted_during_expired_watch_leaves_the_maps() {
    let mut km = kube_mesh("kube-exp");
    km.namespace(NS, true);
    for p in ["keep", "gone"] {
        km.add_pod("node1", NS, p, "BestEffort", &[("app", p)], None)
            .expect("pod");
        km.publish(p);
    }
    km.start_agent("node1").expect("agent node1");
    let keep = km.pod("keep").clone();
    let gone = km.pod("gone").clone();
    dump_until(&km, "node1", "both pods", |d| {
        named(d, "workloads", "keep").is_some() && named(d, "workloads", "gone").is_some()
    });
    maps_until(&km, "both pods in the maps", || {
        Ok(km.workload_in_maps("node1", &keep)? && km.workload_in_maps("node1", &gone)?)
    });
    let lists = km.api.lists("Pod");

    during_expired_pod_watch(&km.api, || {
        km.api.delete("Pod", NS, "gone");
    });
    dump_until(&km, "node1", "gone left the model", |d| {
        named(d, "workloads", "gone").is_none() && named(d, "workloads", "keep").is_some()
    });
    maps_until(&km, "gone left the maps", || {
        Ok(!km.workload_in_maps("node1", &gone)? && km.workload_in_maps("node1", &keep)?)
    });
    assert!(
        km.api.lists("Pod") > lists,
        "a re-list: {}",
        km.api.requests_text()
    );
    let metrics = km
        .mesh
        .sim
        .run(
            &km.mesh.outside("node1"),
            "curl",
            ["-sS", "http://127.0.0.1:15020/metrics"],
        )
        .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.lines().any(|l| {
            l.starts_with("mesh_agent_kube_watch_restarts_total")
                && l.contains("kind=\"Pod\"")
                && l.contains("reason=\"expired\"")
        }),
        "{text}"
    );

    // A file change the agent refuses (node-level) must not block the cluster's updates.
    let path = km.mesh.sim.dir().join("node1.yaml");
    let tmp = km.mesh.sim.dir().join(".node1.yaml.new");
    let refused = km
        .render_config("node1")
        .replace("  fast_path: false\n", "  fast_path: true\n");
    std::fs::write(&tmp, refused).expect("write config");
    std::fs::rename(&tmp, &path).expect("rename config");
    dump_until(&km, "node1", "the refusal", |d| {
        d["status"]["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("restart the agent"))
    });
    km.add_pod("node1", NS, "late", "BestEffort", &[("app", "late")], None)
        .expect("pod");
    km.publish("late");
    dump_until(&km, "node1", "a pod added after the refused file", |d| {
        named(d, "workloads", "late").is_some() && d["config"]["node"]["fast_path"] == false
    });
}
