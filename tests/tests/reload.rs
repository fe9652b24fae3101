//! Hot reload of the config file: while a transfer runs, a new file that adds a service and
//! tightens a policy takes effect for new connections within a second, and the transfer
//! finishes intact; a broken file changes nothing and is reported (log, /config_dump,
//! mesh_agent_config_reloads_total); SIGHUP reloads too.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mesh_tests::mesh::{Mesh, MeshSpec, PolicySpec};

const EPERM: i64 = 1;
const ECONNREFUSED: i64 = 111;
/// Big enough to be still running when the new config lands (several seconds here).
const TRANSFER_BYTES: u64 = 3 * 1024 * 1024 * 1024;

fn connect(mesh: &Mesh, target: &str) -> serde_json::Value {
    mesh.probe(
        "client",
        &[
            "connect",
            "--connect",
            target,
            "--timeout-ms",
            "300",
            "--send",
            "ping",
        ],
    )
    .expect("probe connect")
}

/// Polls `check` until it holds; returns how long that took, or panics after `limit`.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if check() {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_config(mesh: &Mesh, node: &str, text: &str) {
    let path = mesh.sim.dir().join(format!("{node}.yaml"));
    // Written next to it and renamed over it, as editors and ConfigMap updates do.
    let tmp = mesh.sim.dir().join(format!(".{node}.yaml.new"));
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, &path).expect("rename config");
}

fn reloads(mesh: &Mesh, node: &str) -> (u64, u64, serde_json::Value) {
    let dump = mesh.admin(node, "/config_dump").expect("config_dump");
    let status = &dump["status"];
    (
        status["config_reloads"].as_u64().unwrap_or(0),
        status["config_reload_failures"].as_u64().unwrap_or(0),
        status["last_reload_error"].clone(),
    )
}

#[test]
fn reload_adds_a_service_and_tightens_policy_without_touching_a_running_transfer() {
    let mut mesh = mesh("reload");
    let full = standard_topology(&mut mesh);
    let _echo = mesh
        .serve("echo", &["echo-server", "--listen", "0.0.0.0:9000"])
        .expect("echo");
    let _echo_local = mesh
        .serve("echo-local", &["echo-server", "--listen", "0.0.0.0:9000"])
        .expect("echo-local");
    let _web_local = mesh
        .serve("web-local", &["echo-server", "--listen", "0.0.0.0:8080"])
        .expect("web-local");
    // Before: no `echo` service on node1, and the client may connect anywhere.
    let before = MeshSpec {
        services: full
            .services
            .iter()
            .filter(|s| s.name != "echo")
            .cloned()
            .collect(),
        ..full.clone()
    };
    mesh.start_agent("node1", &before).expect("agent node1");
    mesh.start_agent("node2", &full).expect("agent node2");
    let echo = format!("{ECHO_VIP}:9000");
    let web_local = format!("{WEB_LOCAL_VIP}:80");
    assert_eq!(
        connect(&mesh, &echo)["ok"],
        false,
        "echo is not a service yet"
    );
    assert_eq!(connect(&mesh, &web_local)["reply"], "ping");

    // A long transfer through the mesh, running across the reload.
    let transfer_target = format!("{ECHO_LOCAL_VIP}:9000");
    let transfer = mesh
        .spawn_probe(
            "client",
            &[
                "transfer",
                "--connect",
                &transfer_target,
                "--bytes",
                &TRANSFER_BYTES.to_string(),
                "--seed",
                "11",
            ],
        )
        .expect("transfer");
    std::thread::sleep(Duration::from_millis(300));

    // After: the echo service, and the client may only reach the two echo services.
    let mut after = full.clone();
    after.policies.insert(
        "client".into(),
        PolicySpec {
            egress: Some(vec![
                (format!("{ECHO_VIP}/32"), vec![9000]),
                (format!("{ECHO_LOCAL_VIP}/32"), vec![9000]),
            ]),
            ingress: None,
        },
    );
    write_config(&mesh, "node1", &mesh.render_config("node1", &after));
    let took = within(Duration::from_secs(1), "the new service", || {
        connect(&mesh, &echo)["reply"] == "ping"
    });
    eprintln!("new service reachable {took:?} after the file was replaced");
    let denied = connect(&mesh, &web_local);
    assert_eq!(denied["errno"].as_i64(), Some(EPERM), "{denied}");
    let mut transfer = transfer;
    assert!(
        transfer.try_wait().expect("transfer status").is_none(),
        "the transfer must still be running during the reload (make it longer)"
    );
    transfer.wait().expect("transfer");
    let r = mesh_tests::mesh::parse_last_json(transfer.stdout().as_bytes())
        .unwrap_or_else(|e| panic!("{e:#}: {}", transfer.logs()));
    assert_eq!(r["intact"], true, "{r}\n{}", mesh.agent_logs("node1"));
    assert_eq!(r["received"].as_u64(), Some(TRANSFER_BYTES), "{r}");
    let (ok, failed, error) = reloads(&mesh, "node1");
    assert_eq!((ok, failed), (2, 0), "start + one reload");
    assert!(error.is_null(), "{error}");

    // A broken file: nothing changes; the log, /config_dump and the metrics say why.
    write_config(
        &mesh,
        "node1",
        &mesh
            .render_config("node1", &before)
            .replace("services:", "servicez:"),
    );
    within(Duration::from_secs(2), "the rejection", || {
        reloads(&mesh, "node1").1 == 1
    });
    let (_, _, error) = reloads(&mesh, "node1");
    let error = error.as_str().expect("last_reload_error").to_string();
    assert!(error.contains("unknown field `servicez`"), "{error}");
    assert!(error.contains("node1.yaml:"), "line and column: {error}");
    assert!(mesh.agent_logs("node1").contains("config rejected"));
    assert_eq!(connect(&mesh, &echo)["reply"], "ping", "echo still served");
    assert_eq!(
        connect(&mesh, &web_local)["errno"].as_i64(),
        Some(EPERM),
        "policy still tight"
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
    assert!(
        text.contains("mesh_agent_config_reloads_total{result=\"failure\"} 1"),
        "{text}"
    );

    // A change the agent cannot apply while running is refused with the reason.
    let fast_path = mesh
        .render_config("node1", &after)
        .replace("  fast_path: false\n", "  fast_path: true\n");
    assert!(fast_path.contains("fast_path: true"), "{fast_path}");
    write_config(&mesh, "node1", &fast_path);
    within(Duration::from_secs(2), "the node change refusal", || {
        reloads(&mesh, "node1").1 == 2
    });
    let (_, _, error) = reloads(&mesh, "node1");
    assert!(
        error
            .as_str()
            .unwrap_or("")
            .contains("the `node` section changed; restart the agent"),
        "{error}"
    );

    // SIGHUP reloads the (restored) file.
    std::fs::write(
        mesh.sim.dir().join("node1.yaml"),
        mesh.render_config("node1", &full),
    )
    .expect("restore");
    within(Duration::from_secs(2), "the restored file", || {
        reloads(&mesh, "node1").2.is_null()
    });
    let (ok_before, _, _) = reloads(&mesh, "node1");
    let pid = mesh.agent_pid("node1").expect("agent pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    within(Duration::from_secs(2), "the SIGHUP reload", || {
        reloads(&mesh, "node1").0 == ok_before + 1
    });
    // `full` has no egress rules: web-local is reachable again.
    assert_eq!(connect(&mesh, &web_local)["reply"], "ping");

    // A pod that leaves the model: its outbound listener closes (the socket would otherwise
    // pin its network namespace); it comes back with the pod.
    let web_local_ns = mesh.workload("web-local").netns_path.clone();
    let has_listener = |mesh: &Mesh| {
        let stats = mesh.admin("node1", "/stats").expect("stats");
        stats["listeners"]
            .as_array()
            .expect("listeners")
            .iter()
            .any(|l| l["netns"].as_str() == web_local_ns.to_str())
    };
    assert!(has_listener(&mesh), "web-local has an outbound listener");
    let gone = MeshSpec {
        services: full
            .services
            .iter()
            .filter(|s| s.name != "web-local")
            .cloned()
            .collect(),
        absent_workloads: vec!["web-local".into()],
        ..full.clone()
    };
    write_config(&mesh, "node1", &mesh.render_config("node1", &gone));
    within(Duration::from_secs(2), "the listener closing", || {
        !has_listener(&mesh)
    });
    let refused = mesh
        .probe(
            "web-local",
            &[
                "connect",
                "--connect",
                "127.0.0.1:15001",
                "--timeout-ms",
                "300",
            ],
        )
        .expect("probe connect");
    assert_eq!(refused["errno"].as_i64(), Some(ECONNREFUSED), "{refused}");
    write_config(&mesh, "node1", &mesh.render_config("node1", &full));
    within(Duration::from_secs(2), "the listener reopening", || {
        has_listener(&mesh)
    });
    assert_eq!(connect(&mesh, &web_local)["reply"], "ping");

    // A mounted ConfigMap: node1.yaml -> ..data/node1.yaml, ..data -> ..v1; the kubelet
    // updates it by renaming a new ..data link over the old one.
    let dir = mesh.sim.dir();
    let version = |name: &str, spec: &MeshSpec| {
        std::fs::create_dir_all(dir.join(name)).expect("version dir");
        std::fs::write(
            dir.join(name).join("node1.yaml"),
            mesh.render_config("node1", spec),
        )
        .expect("version file");
    };
    let swap_data_link = |target: &str| {
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).expect("symlink");
        std::fs::rename(&tmp, dir.join("..data")).expect("rename ..data");
    };
    version("..v1", &full);
    swap_data_link("..v1");
    let link = dir.join(".node1.yaml.link");
    std::os::unix::fs::symlink("..data/node1.yaml", &link).expect("symlink");
    let (ok_before, _, _) = reloads(&mesh, "node1");
    std::fs::rename(&link, dir.join("node1.yaml")).expect("rename link");
    within(
        Duration::from_secs(2),
        "the reload of the linked file",
        || reloads(&mesh, "node1").0 > ok_before,
    );
    let (ok_before, _, _) = reloads(&mesh, "node1");
    version("..v2", &after);
    swap_data_link("..v2");
    within(
        Duration::from_secs(2),
        "the reload after the ..data swap",
        || reloads(&mesh, "node1").0 > ok_before,
    );
    assert_eq!(
        connect(&mesh, &web_local)["errno"].as_i64(),
        Some(EPERM),
        "the ConfigMap's new version (tight policy) is in force"
    );
}
