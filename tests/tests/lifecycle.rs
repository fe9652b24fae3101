//! Start and stop: a stopped or killed agent leaves its programs attached and the node's
//! policy enforced until the next agent adopts them, and `mesh-agent uninstall` removes them
//! (bpftool shows both); bad input is refused with file, line and reason; not root gives a
//! clear error.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use mesh_tests::mesh::{Binaries, IdentitySpec, Mesh, MeshSpec, PolicySpec};

fn bpftool_cgroup(path: &std::path::Path) -> String {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(path)
        .output()
        .expect("bpftool must be installed (cargo xtask setup)");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn our_programs() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" name mesh_"))
        .map(str::to_string)
        .collect()
}

/// Our attach types on the cgroup, as bpftool lists them.
const ATTACH_TYPES: [&str; 6] = [
    "connect4",
    "connect6",
    "getpeername4",
    "getpeername6",
    "sock_ops",
    "ingress",
];

fn attached_lines(cgroup: &std::path::Path) -> Vec<String> {
    bpftool_cgroup(cgroup)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("ID"))
        .map(str::to_string)
        .collect()
}

fn assert_all_attached(cgroup: &std::path::Path, when: &str) {
    let attached = bpftool_cgroup(cgroup);
    for attach in ATTACH_TYPES {
        assert!(
            attached.contains(attach),
            "{when}: {attach} not attached to {}: {attached}",
            cgroup.display()
        );
    }
    assert_eq!(
        attached_lines(cgroup).len(),
        ATTACH_TYPES.len(),
        "{when}: one program per attach type: {attached}"
    );
}

const EPERM: i64 = 1;
const ECONNREFUSED: i64 = 111;

/// A connect from a workload: (ok, errno, how long it took).
fn connect_from(mesh: &Mesh, pod: &str, target: &str) -> (bool, Option<i64>, Duration) {
    let started = Instant::now();
    let r = mesh
        .probe(
            pod,
            &["connect", "--connect", target, "--timeout-ms", "3000"],
        )
        .expect("probe");
    (
        r["ok"].as_bool().unwrap_or(false),
        r["errno"].as_i64(),
        started.elapsed(),
    )
}

/// Plaintext HTTP from a process on node1 outside the mesh (not redirected by any agent) to
/// a pod of node2; whether it got the pod's reply.
fn plain_get(mesh: &Mesh, ip: std::net::Ipv4Addr) -> bool {
    let out = mesh
        .sim
        .run(
            &mesh.outside("node1"),
            "curl",
            ["-sS", "-m", "2", &format!("http://{ip}:8080/")],
        )
        .expect("curl");
    out.status.success()
}

fn accepts(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The contract of a stopped or crashed agent: the programs stay attached and every policy
/// holds (egress EPERM, ingress drop, STRICT), meshed connects fail at once (fail closed),
/// the counters of what happened meanwhile are there when the agent returns; `mesh-agent
/// uninstall` then removes everything.
#[test]
fn policy_outlives_a_stopped_or_killed_agent_and_uninstall_removes_it() {
    let mut mesh = mesh("outlive");
    mesh.sim.add_pod("node1", "client").expect("pod");
    mesh.sim.add_pod("node1", "web-local").expect("pod");
    for pod in ["guarded", "strict", "plain"] {
        mesh.sim.add_pod("node2", pod).expect("pod");
    }
    let mut spec = MeshSpec {
        services: vec![
            service("web-local", WEB_LOCAL_VIP, 80, 8080, &["web-local"]),
            service("guarded", WEB_REMOTE_VIP, 80, 8080, &["guarded"]),
        ],
        ..MeshSpec::default()
    };
    // client may only reach web-local; guarded takes port 8080 from an address nobody has.
    spec.policies.insert(
        "client".into(),
        PolicySpec {
            egress: Some(vec![(format!("{WEB_LOCAL_VIP}/32"), vec![80])]),
            ingress: None,
        },
    );
    spec.policies.insert(
        "guarded".into(),
        PolicySpec {
            egress: None,
            ingress: Some(vec![("10.99.99.99/32".into(), vec![8080])]),
        },
    );
    spec.identities.insert(
        "strict".into(),
        IdentitySpec {
            strict: true,
            ..IdentitySpec::default()
        },
    );
    let mut servers = Vec::new();
    let mut accept_files = std::collections::BTreeMap::new();
    for pod in ["web-local", "guarded", "strict", "plain"] {
        let file = mesh.sim.dir().join(format!("{pod}-accepts"));
        servers.push(
            mesh.serve(
                pod,
                &[
                    "http-server",
                    "--listen",
                    "0.0.0.0:8080",
                    "--reply",
                    pod,
                    "--accept-count-file",
                    &file.display().to_string(),
                ],
            )
            .expect("server"),
        );
        accept_files.insert(pod, file);
    }
    let ip = |pod: &str| mesh.workload(pod).ip;
    let (guarded_ip, strict_ip, plain_ip) = (ip("guarded"), ip("strict"), ip("plain"));
    let cgroups: Vec<_> = ["node1", "node2"]
        .iter()
        .map(|n| mesh.sim.node(n).cgroup.clone())
        .collect();
    let programs_before = our_programs().len();

    for crash in [false, true] {
        let how = if crash { "kill -9" } else { "SIGTERM" };
        mesh.start_agent("node1", &spec).expect("agent node1");
        mesh.start_agent("node2", &spec).expect("agent node2");
        for cgroup in &cgroups {
            assert_all_attached(cgroup, "agent running");
        }
        let (ok, _, _) = connect_from(&mesh, "client", &format!("{WEB_LOCAL_VIP}:80"));
        assert!(ok, "meshed connect with the agents up");
        let counter = |mesh: &Mesh, node: &str, name: &str| {
            mesh.kernel_counter(node, name).expect("kernel counter")
        };
        let denied_before = counter(&mesh, "node1", "connect_denied");
        let no_agent_before = counter(&mesh, "node1", "connect_no_agent");
        let ingress_before = counter(&mesh, "node2", "ingress_denied");
        let strict_before = counter(&mesh, "node2", "ingress_strict_denied");
        let local_accepts = accepts(&accept_files["web-local"]);

        for node in ["node1", "node2"] {
            let status = if crash {
                mesh.kill_agent(node).expect("kill -9")
            } else {
                mesh.stop_agent(node).expect("stop")
            };
            assert_eq!(
                status.success(),
                !crash,
                "{how} of {node}: exit status {status}"
            );
        }
        // The programs stay: one of each, still on the node cgroups.
        for cgroup in &cgroups {
            assert_all_attached(cgroup, &format!("after {how}"));
        }
        assert!(
            our_programs().len() >= programs_before + ATTACH_TYPES.len(),
            "after {how} the programs are still loaded: {:?}",
            our_programs()
        );

        // Egress policy: EPERM at once.
        let (ok, errno, took) = connect_from(&mesh, "client", &format!("{WEB_REMOTE_VIP}:80"));
        assert!(
            !ok && errno == Some(EPERM),
            "after {how}: denied connect gave {errno:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "after {how}: EPERM took {took:?}"
        );
        // Allowed and meshed, but no agent to carry it: refused at once (fail closed).
        let (ok, errno, took) = connect_from(&mesh, "client", &format!("{WEB_LOCAL_VIP}:80"));
        assert!(
            !ok && errno == Some(ECONNREFUSED),
            "after {how}: a meshed connect without an agent gave ok={ok} errno={errno:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "after {how}: refusal took {took:?}"
        );
        assert_eq!(
            accepts(&accept_files["web-local"]),
            local_accepts,
            "after {how}: a meshed connect went direct"
        );
        // Ingress policy and STRICT: plaintext from outside the mesh never arrives; a pod
        // without either still answers it (the network works, the policy drops).
        assert!(
            !plain_get(&mesh, guarded_ip),
            "after {how}: ingress policy not enforced"
        );
        assert!(
            !plain_get(&mesh, strict_ip),
            "after {how}: STRICT not enforced"
        );
        assert!(
            plain_get(&mesh, plain_ip),
            "after {how}: the unguarded pod must answer"
        );
        assert_eq!(accepts(&accept_files["guarded"]), "0");
        assert_eq!(accepts(&accept_files["strict"]), "0");

        // The agents come back: they adopt the programs and maps, the counters continue
        // with what the kernel counted meanwhile, and meshed traffic flows again.
        mesh.start_agent("node1", &spec).expect("agent node1 again");
        mesh.start_agent("node2", &spec).expect("agent node2 again");
        for cgroup in &cgroups {
            assert_all_attached(cgroup, &format!("restart after {how}"));
        }
        let logs = mesh.agent_logs("node1");
        assert!(
            logs.contains("replaced=6"),
            "the restarted agent replaced the programs of its pinned links: {logs}"
        );
        assert!(counter(&mesh, "node1", "connect_denied") > denied_before);
        assert!(counter(&mesh, "node1", "connect_no_agent") > no_agent_before);
        assert!(counter(&mesh, "node2", "ingress_denied") > ingress_before);
        assert!(counter(&mesh, "node2", "ingress_strict_denied") > strict_before);
        let (ok, _, _) = connect_from(&mesh, "client", &format!("{WEB_LOCAL_VIP}:80"));
        assert!(ok, "after {how} and a restart, meshed traffic flows");
        for node in ["node1", "node2"] {
            mesh.stop_agent(node).expect("stop");
        }
    }

    // Uninstall: nothing of ours stays attached or loaded, the pins are gone.
    for (node, cgroup) in ["node1", "node2"].iter().zip(&cgroups) {
        let out = mesh.uninstall(node).expect("uninstall");
        assert!(out.contains("detached 6 program links"), "{out}");
        assert!(
            attached_lines(cgroup).is_empty(),
            "still attached after uninstall: {:?}",
            attached_lines(cgroup)
        );
        assert!(!mesh.pin_dir(node).exists(), "pins left after uninstall");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while our_programs().len() > programs_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        our_programs().len(),
        programs_before,
        "programs still loaded after uninstall: {:?}",
        our_programs()
    );
    // Without agents or programs, a connect to the former VIP is just a connect.
    let (_, errno, _) = connect_from(&mesh, "client", &format!("{WEB_REMOTE_VIP}:80"));
    assert_ne!(errno, Some(EPERM), "policy must be gone after uninstall");
}

/// Pins written by an agent with another map layout are never adopted: the agent refuses to
/// start, says why and how to proceed, and leaves the node as it was (programs attached).
#[test]
fn pins_of_another_layout_version_are_refused_and_left_alone() {
    let mut mesh = mesh("layout");
    let spec = standard_topology(&mut mesh);
    let cgroup = mesh.sim.node("node1").cgroup.clone();
    mesh.start_agent("node1", &spec).expect("agent");
    mesh.stop_agent("node1").expect("stop");
    // The config entry as a future agent would leave it: layout version 99 (at byte 24).
    let config = mesh.pin_dir("node1").join("MESH_CONFIG");
    let mut value = vec!["0".to_string(); 32];
    value[24] = "99".into();
    let out = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&config)
        .args(["key", "0", "0", "0", "0", "value"])
        .args(&value)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool map update: {out:?}");

    let (status, logs) = mesh
        .start_agent_expecting_failure("node1", &spec)
        .expect("the agent must refuse");
    assert!(!status.success());
    for needle in [
        "pinned layout version 99, this agent's is",
        "another map layout",
        "mesh-agent uninstall --pin-dir",
    ] {
        assert!(logs.contains(needle), "expected {needle:?} in:\n{logs}");
    }
    assert_all_attached(&cgroup, "after the refusal the old programs still hold");

    let out = mesh.uninstall("node1").expect("uninstall");
    assert!(out.contains("detached 6 program links"), "{out}");
    mesh.start_agent("node1", &spec)
        .expect("a fresh start after uninstall");
    assert_all_attached(&cgroup, "fresh start");
}

fn agent() -> std::path::PathBuf {
    Binaries::locate(PROBE).expect("binaries").agent
}

fn config_error(yaml: &str) -> (i32, String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("mesh-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("bad-{}.yaml", yaml.len()));
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(agent())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path,
    )
}

#[test]
fn bad_config_is_refused_with_file_line_and_reason() {
    let cgroup = "/sys/fs/cgroup/unified";
    let cases = [
        (
            format!("node:\n  name: n1\n  cgroup: {cgroup}\n  cgrop: /x\n"),
            4,
            "unknown field",
        ),
        (
            format!(
                "node:\n  name: n1\n  cgroup: {cgroup}\nworkloads:\n  - name: w\n    cgroup: {cgroup}\n    egress:\n      - to: 10.0.0.0/33\n"
            ),
            8,
            "33",
        ),
        (
            format!("node:\n  name: n1\n  cgroup: {cgroup}/no-such-cgroup-here\n"),
            3,
            "does not exist",
        ),
    ];
    for (yaml, line, reason) in cases {
        let (code, stderr, path) = config_error(&yaml);
        assert_ne!(code, 0, "must fail: {yaml}");
        let location = format!("{}:{line}:", path.display());
        assert!(
            stderr.contains(&location),
            "expected {location} in: {stderr}"
        );
        assert!(stderr.contains(reason), "expected '{reason}' in: {stderr}");
        // `config check` reports the same error.
        let out = Command::new(agent())
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(&location));
    }
}

#[test]
fn not_root_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("mesh-nonroot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ok.yaml");
    std::fs::write(
        &path,
        "node:\n  name: n1\n  cgroup: /sys/fs/cgroup/unified\n  bpffs: /sys/fs/bpf/mesh-nonroot\n",
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(agent())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail as non-root: {stderr}");
    assert!(
        stderr.contains("must run as root"),
        "unclear error: {stderr}"
    );
}
