//! kill -9 of an agent under load: while it is gone, connects to meshed destinations follow
//! `node.fail_mode` (closed: refused at once; open: direct), STRICT workloads stay closed,
//! nothing hangs; after the restart traffic flows again and the kernel's counters carry on
//! with what happened meanwhile.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use mesh_tests::mesh::{IdentitySpec, Mesh, MeshSpec};
use serde_json::Value;

const ECONNREFUSED: i64 = 111;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// One attempt of `mesh-probe dial-loop`.
struct Attempt {
    start_ms: u64,
    ms: f64,
    ok: bool,
    errno: Option<i64>,
    line: String,
}

fn attempts(stdout: &str) -> Vec<Attempt> {
    stdout
        .lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            Some(Attempt {
                start_ms: v["start_ms"].as_u64()?,
                ms: v["ms"].as_f64()?,
                ok: v["ok"] == true,
                errno: v["errno"].as_i64(),
                line: l.to_string(),
            })
        })
        .collect()
}

fn failed<'a>(xs: &[&'a Attempt]) -> Vec<&'a Attempt> {
    xs.iter().copied().filter(|a| !a.ok).collect()
}

fn counter(mesh: &Mesh, name: &str) -> u64 {
    mesh.kernel_counter("node1", name).expect("kernel counter")
}

fn kill_9_under_load(fail_mode: &str) {
    let mut mesh = mesh(&format!("crash-{fail_mode}"));
    mesh.sim.add_pod("node1", "client").expect("pod");
    mesh.sim.add_pod("node1", "sclient").expect("pod");
    mesh.sim.add_pod("node2", "echo").expect("pod");
    let mut spec = MeshSpec {
        services: vec![service("echo", ECHO_VIP, 9000, 9000, &["echo"])],
        fail_mode: Some(fail_mode.into()),
        ..MeshSpec::default()
    };
    spec.identities.insert(
        "sclient".into(),
        IdentitySpec {
            strict: true,
            ..IdentitySpec::default()
        },
    );
    let _echo = mesh
        .serve("echo", &["echo-server", "--listen", "0.0.0.0:9000"])
        .expect("echo");
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");
    // The pod address is meshed (an endpoint), and, unlike the VIP, reachable without the
    // mesh: what fail-open sends direct.
    let target = format!("{}:9000", mesh.workload("echo").ip);
    let redirected_before = counter(&mesh, "connect_redirected");
    let no_agent_before = counter(&mesh, "connect_no_agent");
    let fail_open_before = counter(&mesh, "connect_fail_open");

    let mut dialer = mesh
        .spawn_probe(
            "client",
            &[
                "dial-loop",
                "--connect",
                &target,
                "--seconds",
                "9",
                "--interval-ms",
                "20",
                "--timeout-ms",
                "3000",
            ],
        )
        .expect("dial-loop");
    std::thread::sleep(Duration::from_secs(2));
    let kill_at = now_ms();
    let status = mesh.kill_agent("node1").expect("kill -9");
    assert!(!status.success(), "kill -9: {status}");
    let killed_at = now_ms();
    std::thread::sleep(Duration::from_secs(1));
    // A STRICT workload never goes out unencrypted, whatever the mode.
    let strict = mesh
        .probe(
            "sclient",
            &["connect", "--connect", &format!("{ECHO_VIP}:9000")],
        )
        .expect("probe");
    assert_eq!(
        strict["errno"].as_i64(),
        Some(ECONNREFUSED),
        "STRICT workload without an agent ({fail_mode}): {strict}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let restart_at = now_ms();
    mesh.start_agent("node1", &spec).expect("agent node1 again");
    let ready_at = now_ms();
    let _ = dialer.wait();
    let all = attempts(&dialer.stdout());
    let show = |xs: &[&Attempt]| {
        xs.iter()
            .map(|a| a.line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Nothing hangs: every attempt ended (well) within a second, whatever its outcome.
    let slow: Vec<&Attempt> = all.iter().filter(|a| a.ms >= 1000.0).collect();
    assert!(slow.is_empty(), "attempts that hung:\n{}", show(&slow));
    let before: Vec<&Attempt> = all.iter().filter(|a| a.start_ms + 5 < kill_at).collect();
    let during: Vec<&Attempt> = all
        .iter()
        .filter(|a| a.start_ms > killed_at && a.start_ms + (a.ms as u64) + 5 < restart_at)
        .collect();
    let after: Vec<&Attempt> = all.iter().filter(|a| a.start_ms > ready_at).collect();
    assert!(
        before.len() >= 20 && during.len() >= 30 && after.len() >= 20,
        "attempts before/during/after: {}/{}/{} of {}",
        before.len(),
        during.len(),
        after.len(),
        all.len()
    );
    assert!(
        failed(&before).is_empty(),
        "before the kill:\n{}",
        show(&failed(&before))
    );
    assert!(
        failed(&after).is_empty(),
        "after the restart:\n{}",
        show(&failed(&after))
    );
    match fail_mode {
        "closed" => {
            let other: Vec<&Attempt> = during
                .iter()
                .copied()
                .filter(|a| a.ok || a.errno != Some(ECONNREFUSED))
                .collect();
            assert!(
                other.is_empty(),
                "fail closed: every connect refused at once; not so:\n{}",
                show(&other)
            );
        }
        _ => {
            assert!(
                failed(&during).is_empty(),
                "fail open: every connect goes direct; failed:\n{}",
                show(&failed(&during))
            );
        }
    }

    // The counters carried on: the kernel counted the outage, the restarted agent reads it.
    let no_agent = counter(&mesh, "connect_no_agent") - no_agent_before;
    let fail_open = counter(&mesh, "connect_fail_open") - fail_open_before;
    let outage = during.len() as u64;
    assert!(
        no_agent > outage,
        "connect_no_agent grew by {no_agent}, the outage saw {outage} attempts and the STRICT one"
    );
    if fail_mode == "open" {
        assert!(fail_open >= outage, "connect_fail_open grew by {fail_open}");
        assert!(
            no_agent > fail_open,
            "the STRICT connect was refused, not sent direct"
        );
    } else {
        assert_eq!(fail_open, 0, "fail closed sends nothing direct");
    }
    assert!(
        counter(&mesh, "connect_redirected") >= redirected_before + (after.len() as u64),
        "connect_redirected carried on"
    );
}

#[test]
fn kill_9_under_load_fails_closed_and_recovers() {
    kill_9_under_load("closed");
}

#[test]
fn kill_9_under_load_fails_open_and_recovers() {
    kill_9_under_load("open");
}
