//! Identity-based authorization at the destination agent: an ALLOW policy on web lets only
//! service account "a" in; "b" is refused by node2 (403 to the CONNECT) and never reaches web.
//! Then a DENY policy beats an ALLOW that names the same principal.

mod common;

use common::*;
use mesh_tests::mesh::{IdentitySpec, Mesh, MeshSpec};
use mesh_tests::sim::Proc;

const POLICY_ONLY_A: &str = r#"
  - name: only-a
    namespace: default
    selector: {matchLabels: {app: web}}
    action: ALLOW
    rules:
      - from:
          - source:
              principals: ["cluster.local/ns/default/sa/a"]
"#;

/// ALLOW names both a and b, DENY names b: deny wins.
const POLICY_DENY_B: &str = r#"
  - name: a-and-b
    namespace: default
    selector: {matchLabels: {app: web}}
    action: ALLOW
    rules:
      - from:
          - source:
              principals: ["cluster.local/ns/default/sa/a", "cluster.local/ns/default/sa/b"]
  - name: not-b
    namespace: default
    selector: {matchLabels: {app: web}}
    action: DENY
    rules:
      - from:
          - source:
              principals: ["cluster.local/ns/default/sa/b"]
"#;

fn identity(sa: Option<&str>, labels: &[(&str, &str)]) -> IdentitySpec {
    IdentitySpec {
        service_account: sa.map(str::to_string),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        strict: false,
    }
}

/// curl from a pod to the web VIP; Some(HTTP status) on success, None when it failed.
fn curl_web(mesh: &Mesh, from: &str) -> Option<String> {
    let url = format!("http://{WEB_REMOTE_VIP}/");
    let out = mesh
        .run_in(
            from,
            "curl",
            &[
                "-sS",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ],
        )
        .expect("curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Restarts both agents with the spec (fresh counters, same CA).
fn restart(mesh: &mut Mesh, spec: &MeshSpec) {
    for node in ["node1", "node2"] {
        mesh.stop_agent(node).expect("stop");
    }
    for node in ["node1", "node2"] {
        mesh.start_agent(node, spec).expect("start");
    }
}

/// Pods a and b (service accounts a and b) on node1, web (app=web) on node2 behind a VIP whose
/// port has `protocol`, policy ONLY_A; both agents started. Returns the mesh, its spec, the
/// web server and the file where it counts accepted connections.
fn authz_mesh(tag: &str, protocol: &str) -> (Mesh, MeshSpec, Proc, std::path::PathBuf) {
    let mut mesh = mesh(tag);
    mesh.sim.add_pod("node1", "a").expect("pod a");
    mesh.sim.add_pod("node1", "b").expect("pod b");
    mesh.sim.add_pod("node2", "web").expect("pod web");
    let mut spec = MeshSpec {
        services: vec![service("web", WEB_REMOTE_VIP, 80, 8080, &["web"]).protocol(protocol)],
        authorization_yaml: Some(POLICY_ONLY_A.into()),
        ..MeshSpec::default()
    };
    spec.identities.insert("a".into(), identity(Some("a"), &[]));
    spec.identities.insert("b".into(), identity(Some("b"), &[]));
    spec.identities
        .insert("web".into(), identity(None, &[("app", "web")]));
    let accepts = mesh.sim.dir().join("web-accepts");
    let accepts_arg = accepts.display().to_string();
    let web = mesh
        .serve(
            "web",
            &[
                "http-server",
                "--listen",
                "0.0.0.0:8080",
                "--reply",
                "web",
                "--accept-count-file",
                &accepts_arg,
            ],
        )
        .expect("web");
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");
    (mesh, spec, web, accepts)
}

#[test]
fn only_allowed_principals_reach_the_workload_and_deny_wins() {
    // Declared tcp: this is the L4 behaviour (a refused connection is reset). The HTTP answer
    // to a refusal is the next test.
    let (mut mesh, mut spec, _web, accepts) = authz_mesh("authz", "tcp");
    let accepted = || {
        std::fs::read_to_string(&accepts)
            .unwrap()
            .trim()
            .to_string()
    };

    assert_eq!(
        curl_web(&mesh, "a").as_deref(),
        Some("200"),
        "a is allowed\n{}",
        mesh.agent_logs("node2")
    );
    assert_eq!(curl_web(&mesh, "b"), None, "b must be refused");
    assert_eq!(accepted(), "1", "only a's request may reach web");
    assert_eq!(
        mesh.stat("node2", "inbound", "authz_allowed")
            .expect("stat"),
        1
    );
    assert_eq!(
        mesh.stat("node2", "inbound", "authz_denied").expect("stat"),
        1
    );
    assert_eq!(
        mesh.stat("node1", "tunnel", "streams_refused")
            .expect("stat"),
        1
    );

    // DENY b on top of an ALLOW for a and b.
    spec.authorization_yaml = Some(POLICY_DENY_B.into());
    restart(&mut mesh, &spec);
    assert_eq!(
        curl_web(&mesh, "a").as_deref(),
        Some("200"),
        "a still allowed"
    );
    assert_eq!(curl_web(&mesh, "b"), None, "DENY must win over ALLOW for b");
    assert_eq!(accepted(), "2", "b's request reached web");
    assert_eq!(
        mesh.stat("node2", "inbound", "authz_allowed")
            .expect("stat"),
        1
    );
    assert_eq!(
        mesh.stat("node2", "inbound", "authz_denied").expect("stat"),
        1
    );
}

/// On an HTTP port the same refusal is an HTTP answer: 403 with the RBAC response flag, and
/// the refused request never reaches the workload.
#[test]
fn refusal_on_an_http_port_is_403_with_the_rbac_flag() {
    let (mesh, _spec, _web, accepts) = authz_mesh("authz-http", "http");
    let url = format!("http://{WEB_REMOTE_VIP}:80/");
    let answer = |pod: &str| status_and_flags(&mesh, pod, &url);
    assert_eq!(answer("a"), "200", "{}", mesh.agent_logs("node1"));
    assert_eq!(answer("b"), "403 RBAC", "{}", mesh.agent_logs("node1"));
    let accepted = std::fs::read_to_string(&accepts).unwrap_or_default();
    assert_eq!(accepted.trim(), "1", "only a's request may reach web");
    assert_eq!(
        mesh.stat("node2", "inbound", "authz_denied").expect("stat"),
        1
    );
    assert_eq!(
        mesh.stat("node1", "http", "local_replies").expect("stat"),
        1
    );
}
