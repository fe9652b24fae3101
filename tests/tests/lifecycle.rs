//! Start and stop: after the agent stops nothing of ours stays attached (bpftool shows it);
//! bad input is refused with file, line and reason; not root gives a clear error.

mod common;

use std::process::Command;

use common::*;
use mesh_tests::mesh::Binaries;

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

#[test]
fn nothing_stays_attached_after_the_agent_stops() {
    let mut mesh = mesh("detach");
    let spec = standard_topology(&mut mesh);
    let cgroup = mesh.sim.node("node1").cgroup.clone();
    let before_start = our_programs().len();
    mesh.start_agent("node1", &spec).expect("agent");
    let attached = bpftool_cgroup(&cgroup);
    for attach in [
        "connect4",
        "connect6",
        "getpeername4",
        "getpeername6",
        "sock_ops",
        "ingress",
    ] {
        assert!(
            attached.contains(attach),
            "{attach} not attached: {attached}"
        );
    }
    assert!(our_programs().len() >= before_start + 7, "programs loaded");
    let status = mesh.stop_agent("node1").expect("stop");
    assert!(status.success(), "agent exit status {status}");
    let after = bpftool_cgroup(&cgroup);
    assert!(
        after
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("ID"))
            .count()
            == 0,
        "still attached: {after}"
    );
    assert_eq!(
        our_programs().len(),
        before_start,
        "programs still loaded: {:?}",
        our_programs()
    );
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
