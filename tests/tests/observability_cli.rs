//! The operator's view of a running agent through the CLI: `mesh-agent flows --follow` sees a
//! connection open and close with its exact byte counts, `mesh-agent status` summarises the
//! node, `mesh-agent log-level` and `/logging` change the log filter at run time, and
//! `--log-format json` makes every log line a JSON object.

mod common;

use std::{
    process::Output,
    time::{Duration, Instant},
};

use common::*;
use mesh_tests::{mesh::Mesh, sim::Proc};
use serde_json::Value;

const ADMIN: &str = "http://127.0.0.1:15000";

/// Runs `mesh-agent <args>` in the node's namespace (outside the mesh, like an operator on
/// the node).
fn cli(mesh: &Mesh, node: &str, args: &[&str]) -> Output {
    mesh.sim
        .exec_in_node(node, &mesh.bins.agent, args)
        .expect("running mesh-agent")
}

/// Starts a long-running `mesh-agent <args>` in the node's namespace.
fn cli_spawn(mesh: &Mesh, node: &str, args: &[&str]) -> Proc {
    let placement = mesh.sim.node(node).tools_placement();
    mesh.sim
        .spawn(&placement, &mesh.bins.agent, args)
        .expect("starting mesh-agent")
}

/// curl in the node's namespace: (HTTP status, body).
fn curl(mesh: &Mesh, node: &str, method: &str, path: &str) -> (u16, String) {
    let url = format!("{ADMIN}{path}");
    let out = mesh
        .sim
        .exec_in_node(
            node,
            "curl",
            [
                "-sS",
                "-m",
                "5",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
                url.as_str(),
            ],
        )
        .expect("curl");
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status code"), body.to_string())
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn subscribers(mesh: &Mesh, node: &str) -> u64 {
    mesh.admin(node, "/status").expect("/status")["flow_subscribers"]
        .as_u64()
        .expect("flow_subscribers")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn flows_follow_status_and_log_level() {
    let mut mesh = mesh("obscli");
    let mut spec = standard_topology(&mut mesh);
    for service in &mut spec.services {
        *service = service.clone().protocol("tcp");
    }
    let _web = mesh
        .serve(
            "web-local",
            &[
                "http-backend",
                "--listen",
                "0.0.0.0:8080",
                "--name",
                "web-local",
            ],
        )
        .expect("web-local");
    mesh.start_agent("node1", &spec).expect("agent node1");

    // (a) Two followers, JSON and table; the stream is live once the agent counts them.
    assert_eq!(subscribers(&mesh, "node1"), 0);
    let mut json_follow = cli_spawn(&mesh, "node1", &["flows", "--follow", "--json"]);
    let mut table_follow = cli_spawn(&mesh, "node1", &["flows", "--follow"]);
    wait_until(
        "two /flows/stream subscribers",
        Duration::from_secs(10),
        || subscribers(&mesh, "node1") == 2,
    );

    // A connection that stays open for 1.5 s (longer than the 500 ms open poll).
    let url = format!("http://{WEB_LOCAL_VIP}/delay/1500");
    let out = mesh
        .run_in(
            "client",
            "curl",
            &[
                "-sS",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{local_port} %{size_request} %{size_header} %{size_download}",
                &url,
            ],
        )
        .expect("curl");
    assert!(out.status.success(), "{out:?}");
    let nums: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (port, request, header, body) = (nums[0], nums[1], nums[2], nums[3]);
    assert!(body > 0, "delayed reply has a body");
    let local = format!("127.0.0.1:{port}");
    let is_client = |e: &Value| {
        e["local"] == local.as_str()
            && e["workload"] == "default/client"
            && e["direction"] == "outbound"
    };

    let mut events: Vec<Value> = Vec::new();
    wait_until(
        "open and close events of the client",
        Duration::from_secs(10),
        || {
            events = json_follow
                .stdout()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            events.iter().any(|e| is_client(e) && e["event"] == "close")
        },
    );
    let open = events
        .iter()
        .find(|e| is_client(e) && e["event"] == "open")
        .unwrap_or_else(|| panic!("no open event for {local}: {events:#?}"));
    let close = events
        .iter()
        .find(|e| is_client(e) && e["event"] == "close")
        .unwrap();
    assert_eq!(open["state"], "open", "{open}");
    assert_eq!(open["remote"], close["remote"], "{open}\n{close}");
    assert_eq!(open["cookie"], close["cookie"], "{open}\n{close}");
    assert_eq!(open["redirected"], true, "{open}");
    assert_eq!(close["state"], "closed", "{close}");
    assert_eq!(close["bytes_sent"].as_u64(), Some(request), "{close}");
    assert_eq!(
        close["bytes_received"].as_u64(),
        Some(header + body),
        "{close}"
    );
    assert!(close["duration_ms"].as_u64().unwrap() >= 1500, "{close}");
    for e in [open, close] {
        let time = e["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    }
    let open_pos = events.iter().position(|e| std::ptr::eq(e, open)).unwrap();
    let close_pos = events.iter().position(|e| std::ptr::eq(e, close)).unwrap();
    assert!(open_pos < close_pos, "open comes first: {events:#?}");

    // The table follower printed its header once and a close line for the same socket (it
    // may print it a moment after the JSON follower: wait for it).
    wait_until(
        "the table follower's close line",
        Duration::from_secs(10),
        || {
            table_follow
                .stdout()
                .lines()
                .any(|l| l.contains(" close ") && l.contains(&local))
        },
    );
    let table = table_follow.stdout();
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with("TIME") && header.contains("EVENT"),
        "{table}"
    );
    assert!(!lines.clone().any(|l| l.starts_with("TIME")), "{table}");
    assert!(
        lines.any(|l| l.contains(" close ") && l.contains(&local)),
        "{table}"
    );

    // A follower that goes away is forgotten by the agent.
    json_follow.kill().expect("stop follower");
    wait_until("one subscriber left", Duration::from_secs(10), || {
        subscribers(&mesh, "node1") == 1
    });

    // (b) status: ready, this node's workloads, no problems, exit 0.
    let out = cli(&mesh, "node1", &["status", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "status --json: {stdout}\n{stderr}");
    let status: Value = serde_json::from_str(&stdout).expect("status JSON");
    assert_eq!(status["ready"], true, "{status:#}");
    assert_eq!(status["node"], "node1", "{status:#}");
    assert_eq!(status["problems"], serde_json::json!([]), "{status:#}");
    let mut names: Vec<&str> = status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "default/client",
            "default/echo-local",
            "default/hclient",
            "default/web-local"
        ],
        "{status:#}"
    );
    let client = &status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "default/client")
        .unwrap();
    assert_eq!(
        client["identity"], "spiffe://cluster.local/ns/default/sa/default",
        "{client}"
    );
    assert!(client["cgroup_id"].as_u64().unwrap() > 0, "{client}");
    assert!(!status["programs"].as_array().unwrap().is_empty());
    // The agent's own identity and default/default (every workload here uses it).
    assert_eq!(status["certificates"]["count"], 2, "{status:#}");
    assert!(
        status["certificates"]["soonest_expiry_seconds"]
            .as_i64()
            .unwrap()
            > 3600
    );
    assert!(status["kernel"]["conns_closed"].as_u64().unwrap() > 0);

    let out = cli(&mesh, "node1", &["status"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "status: {stdout}\n{stderr}");
    assert!(stdout.contains("node:         node1"), "{stdout}");
    assert!(stdout.contains("ready:        yes"), "{stdout}");
    assert!(stdout.contains("default/web-local"), "{stdout}");
    assert!(stdout.contains("problems:     none"), "{stdout}");

    // (c) the log filter, through the endpoint and through the CLI.
    let initial = mesh.admin("node1", "/logging").expect("/logging")["filter"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!initial.is_empty());
    let out = cli(&mesh, "node1", &["log-level"]);
    assert_eq!(text(&out).0.trim(), initial);

    let (code, body) = curl(&mesh, "node1", "POST", "/logging?level=debug");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["filter"],
        "debug"
    );
    assert_eq!(mesh.admin("node1", "/logging").unwrap()["filter"], "debug");
    assert!(mesh.agent_logs("node1").contains("log filter changed"));

    // Invalid: 400 with the parse error; the filter stays.
    let (code, body) = curl(
        &mesh,
        "node1",
        "POST",
        "/logging?level=info%2Cfoo%3Dnotalevel",
    );
    assert_eq!(code, 400, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("invalid log filter"),
        "{answer}"
    );
    assert_eq!(mesh.admin("node1", "/logging").unwrap()["filter"], "debug");
    let (code, _) = curl(&mesh, "node1", "POST", "/logging");
    assert_eq!(code, 400, "no level");
    let (code, _) = curl(&mesh, "node1", "DELETE", "/logging");
    assert_eq!(code, 405);

    // The CLI sets a filter with characters that need URL encoding; at "warn" the agent no
    // longer logs its INFO line about the change.
    let changes = || {
        mesh.agent_logs("node1")
            .matches("log filter changed")
            .count()
    };
    let before = changes();
    let out = cli(
        &mesh,
        "node1",
        &["log-level", "warn,mesh_agent::admin=warn"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out).0.trim(), "warn,mesh_agent::admin=warn");
    assert_eq!(changes(), before, "INFO lines are filtered at warn");
    let out = cli(&mesh, "node1", &["log-level", "info,x=bogus"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("invalid log filter"), "{stderr}");
    assert_eq!(
        mesh.admin("node1", "/logging").unwrap()["filter"],
        "warn,mesh_agent::admin=warn"
    );
    let out = cli(&mesh, "node1", &["log-level", &initial]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        changes(),
        before + 1,
        "back at {initial}, the change is logged"
    );

    // The agent goes away: the table follower ends with an error message.
    mesh.stop_agent("node1").expect("stop agent");
    wait_until("the follower to exit", Duration::from_secs(10), || {
        table_follow.try_wait().unwrap().is_some()
    });
    let status = table_follow.try_wait().unwrap().unwrap();
    assert!(!status.success(), "follower exit: {status}");
    let stderr = table_follow.stderr();
    assert!(
        stderr.contains("flow stream") && stderr.contains("mesh-agent: error:"),
        "{stderr}"
    );
}

#[test]
fn json_log_format_makes_every_line_an_object() {
    // Without a mesh: an invalid --log is reported through the logger, as JSON when asked
    // through the environment.
    let bins = mesh_tests::mesh::Binaries::locate(PROBE).expect("binaries");
    let out = std::process::Command::new(&bins.agent)
        .env("MESH_LOG_FORMAT", "json")
        .args(["--log", "x=bogus", "config", "default"])
        .output()
        .expect("mesh-agent config default");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line: Value = serde_json::from_str(stderr.lines().next().expect("a warning"))
        .unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(line["level"], "WARN", "{line}");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("invalid log filter"),
        "{line}"
    );

    let mut mesh = mesh("objson");
    let spec = standard_topology(&mut mesh);
    let _echo = mesh
        .serve("echo-local", &["echo-server", "--listen", "0.0.0.0:9000"])
        .expect("echo");
    let config = mesh.sim.dir().join("node1-json.yaml");
    std::fs::write(&config, mesh.render_config("node1", &spec)).expect("config");
    let placement = mesh.sim.node("node1").agent_placement();
    let config = config.display().to_string();
    let mut agent = mesh
        .sim
        .spawn(
            &placement,
            &mesh.bins.agent,
            [
                "--log-format",
                "json",
                "--log",
                "info,mesh_agent=debug",
                "run",
                "--config",
                config.as_str(),
            ],
        )
        .expect("agent");
    wait_until("the agent to be ready", Duration::from_secs(20), || {
        assert!(agent.try_wait().unwrap().is_none(), "{}", agent.logs());
        agent.stderr().contains("mesh-agent ready")
    });
    // Some per-connection debug lines.
    let r = mesh
        .probe(
            "client",
            &[
                "transfer",
                "--connect",
                &format!("{ECHO_LOCAL_VIP}:9000"),
                "--bytes",
                "1000",
            ],
        )
        .expect("transfer");
    assert_eq!(r["intact"], true, "{r}");
    std::thread::sleep(Duration::from_millis(500));
    agent.kill().expect("stop agent");

    let stderr = agent.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{stderr}");
    let mut levels = std::collections::BTreeSet::new();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {l}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(obj.contains_key(key), "{key} missing: {l}");
        }
        assert!(
            !obj.contains_key("span") && !obj.contains_key("spans"),
            "{l}"
        );
        levels.insert(v["level"].as_str().unwrap().to_string());
    }
    let ready: Value = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["message"] == "mesh-agent ready")
        .expect("ready line");
    assert_eq!(ready["node"], "node1", "{ready}");
    assert_eq!(ready["level"], "INFO");
    assert!(levels.contains("DEBUG"), "{levels:?}\n{stderr}");

    // The access log: the 1000-byte echo through the in-process path is one closed connection
    // at each end, both with exact bytes, the workloads and the identity.
    let access: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["target"] == "access" && v["message"] == "connection complete")
        .collect();
    let end = |reporter: &str| {
        access
            .iter()
            .find(|v| v["reporter"] == reporter && v["dst.workload"] == "echo-local")
            .unwrap_or_else(|| panic!("no {reporter} access line for echo-local in {access:#?}"))
    };
    for reporter in ["source", "destination"] {
        let line = end(reporter);
        assert_eq!(line["src.workload"], "client", "{line}");
        assert_eq!(line["src.namespace"], "default", "{line}");
        assert_eq!(
            line["src.identity"], "spiffe://cluster.local/ns/default/sa/default",
            "{line}"
        );
        assert_eq!(
            line["dst.service"], "echo-local.default.svc.cluster.local",
            "{line}"
        );
        assert_eq!(line["request_bytes"], 1000, "{line}");
        assert_eq!(line["response_bytes"], 1000, "{line}");
        assert_eq!(line["security"], "mutual_tls", "{line}");
    }
    assert_eq!(end("source")["direction"], "outbound");
    assert_eq!(end("destination")["direction"], "inbound");
}
