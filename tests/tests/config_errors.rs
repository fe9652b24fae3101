//! `mesh-agent config check FILE` on bad input (no root needed): every semantic error is
//! printed as `FILE:LINE:COLUMN: reason`, in file order, with exit status 1; a structural
//! error (YAML syntax, invalid UTF-8) stops checking and says so; an unreadable file is
//! reported with the OS error; a valid file prints `ok` and exits 0.

use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_tests::mesh::Binaries;

const PROBE: &str = env!("CARGO_BIN_EXE_mesh-probe");

/// A scratch directory holding the config files and the directories they name as cgroups
/// (the checker only needs them to exist). Removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("mesh-config-errors-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["node", "web", "api"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create scratch dirs");
        }
        Self { dir }
    }

    /// Writes `text` (with `$D` replaced by the scratch directory) to `name`.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text.replace("$D", &self.dir.display().to_string()))
            .expect("write config");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn check(path: &Path) -> Checked {
    let agent = Binaries::locate(PROBE).expect("locate mesh-agent").agent;
    let out = Command::new(&agent)
        .args(["config", "check"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", agent.display()));
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn every_error_is_printed_with_position_in_file_order() {
    let s = Scratch::new("many");
    // Ten independent mistakes across the sections, some on one line, one per class.
    let path = s.file(
        "bad.yaml",
        "\
node:
  name: Node1
  cgroup: $D/node
  admin: 0.0.0.0:15000
workloads:
  - name: web
    cgroup: $D/missing
    ips: [10.0.0.300]
    egress: [{to: 10.0.0.0/33, ports: [80, 0]}]
  - name: web
    cgroup: $D/api
services:
  - name: db
    ports: [{port: 5432, protocol: postgres}]
    load_balancer: random
http_routes:
  - name: r
    spec:
      parentRefs: [{name: nowhere}]
authorization:
  - name: p
    action: MAYBE
",
    );
    let f = path.display().to_string();
    let d = s.dir.display().to_string();
    let out = check(&path);
    assert_eq!(out.code, Some(1), "exit status; stderr:\n{}", out.stderr);
    assert_eq!(out.stdout, "", "nothing on stdout for a bad file");
    let expected = [
        format!(
            "{f}:2:9: invalid node name `Node1`: use 1 to 63 characters among a-z, 0-9 and '-'"
        ),
        format!(
            "{f}:4:10: admin address 0.0.0.0:15000 is not a loopback address (use 127.0.0.1 or ::1)"
        ),
        format!("{f}:7:13: cgroup path {d}/missing does not exist"),
        format!("{f}:8:11: invalid IP address `10.0.0.300`"),
        format!("{f}:9:19: invalid CIDR `10.0.0.0/33`: prefix length 33 is longer than 32"),
        format!("{f}:9:44: port 0 is out of range 1..=65535"),
        format!("{f}:10:11: duplicate workload `default/web` (first defined at line 6)"),
        format!("{f}:14:36: invalid protocol `postgres`: expected tcp, http, http2 or grpc"),
        format!("{f}:15:20: invalid load_balancer `random`: expected round_robin or least_request"),
        format!("{f}:19:27: service `default/nowhere` is not defined under services"),
        format!("{f}:22:13: invalid action `MAYBE`: expected ALLOW or DENY"),
        format!("mesh-agent: {f}: 11 errors"),
    ];
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines, expected, "stderr:\n{}", out.stderr);
}

#[test]
fn a_valid_file_is_ok() {
    let s = Scratch::new("ok");
    let path = s.file(
        "ok.yaml",
        "node:\n  name: n1\n  cgroup: $D/node\nworkloads:\n  - name: web\n    cgroup: $D/web\nservices:\n  - name: web\n    vips: [10.96.0.10]\n    ports: [{port: 80}]\n",
    );
    let out = check(&path);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!(
            "{}: ok (node n1, 1 workloads, 1 services)\n",
            path.display()
        )
    );
    assert_eq!(out.stderr, "");
}

#[test]
fn a_yaml_syntax_error_stops_checking_and_says_so() {
    let s = Scratch::new("syntax");
    // The bad node name on line 2 is never reached: the document cannot be read.
    let path = s.file("syntax.yaml", "node:\n  name: Node1\n  cgroup: [$D/node\n");
    let f = path.display().to_string();
    let out = check(&path);
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "stderr:\n{}", out.stderr);
    assert!(
        lines[0] == format!("{f}:3:11: unclosed bracket '['"),
        "stderr:\n{}",
        out.stderr
    );
    assert_eq!(
        lines[1],
        "mesh-agent: checking stopped at this error; fix it and run `config check` again to see any others"
    );
}

#[test]
fn an_unknown_key_stops_checking() {
    let s = Scratch::new("unknown");
    let path = s.file(
        "unknown.yaml",
        "node:\n  name: n1\n  cgroup: $D/node\n  cgrop: /x\n",
    );
    let f = path.display().to_string();
    let out = check(&path);
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines[0].starts_with(&format!("{f}:4:3: unknown field `cgrop`, expected one of ")),
        "stderr:\n{}",
        out.stderr
    );
    assert!(
        lines[1].contains("checking stopped at this error"),
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn an_unreadable_file_is_reported() {
    let s = Scratch::new("unreadable");
    // Deterministic whoever runs the test (root reads a mode-000 file): a missing file and
    // a directory.
    for path in [s.dir.join("missing.yaml"), s.dir.join("node")] {
        let out = check(&path);
        assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr:\n{}", out.stderr);
        let prefix = format!("{}: cannot read: ", path.display());
        assert!(lines[0].starts_with(&prefix), "stderr:\n{}", out.stderr);
    }
    let out = check(&s.dir.join("missing.yaml"));
    assert!(
        out.stderr.contains("No such file or directory"),
        "{}",
        out.stderr
    );
    let out = check(&s.dir.join("node"));
    assert!(out.stderr.contains("Is a directory"), "{}", out.stderr);
}

#[test]
fn a_non_utf8_file_is_reported_where_it_breaks() {
    let s = Scratch::new("utf8");
    let path = s.dir.join("latin1.yaml");
    // "café" in Latin-1 on line 2: the byte 0xE9 is column 12.
    std::fs::write(&path, b"node:\n  name: caf\xe9-node\n  cgroup: /x\n").expect("write");
    let out = check(&path);
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{}:2:12: the file is not valid UTF-8", path.display()).as_str(),
            "mesh-agent: checking stopped at this error; fix it and run `config check` again to see any others",
        ],
        "stderr:\n{}",
        out.stderr
    );
}
