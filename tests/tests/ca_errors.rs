//! A broken operator-provided CA stops the agent at start with a message naming the file and
//! the reason, and leaves nothing attached to the node's cgroup. A good CA pair in the same
//! place starts fine (so the failures are about the files, nothing else).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use mesh_tests::mesh::MeshSpec;
use mesh_tests::pki;

fn ca_yaml(cert: &Path, key: &Path) -> String {
    format!(
        "  ca:\n    cert: {}\n    key: {}\n",
        cert.display(),
        key.display()
    )
}

/// What bpftool lists as attached to the cgroup, header lines dropped.
fn attached(cgroup: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool must be installed (cargo xtask setup)");
    assert!(out.status.success(), "bpftool: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("ID"))
        .map(str::to_string)
        .collect()
}

#[test]
fn bad_ca_files_fail_start_with_path_and_reason_and_attach_nothing() {
    let mut mesh = mesh("ca-err");
    mesh.sim.add_pod("node1", "client").expect("pod");
    let dir = mesh.sim.dir().to_path_buf();
    let cgroup = mesh.sim.node("node1").cgroup.clone();
    // None of these names contains a reason word, so a reason can't be "found" in the path.
    let one = pki::self_signed_ca("CA one")
        .unwrap()
        .write(&dir, "one")
        .unwrap();
    let two = pki::self_signed_ca("CA two")
        .unwrap()
        .write(&dir, "two")
        .unwrap();
    let missing = dir.join("nowhere.crt");
    let folder = dir.join("folder.crt");
    std::fs::create_dir(&folder).unwrap();
    let junk = dir.join("junk.crt");
    std::fs::write(&junk, "this is not a certificate\n").unwrap();

    // (case, cert, key, paths of which the message must name one, reason words: any one will do)
    let cases = [
        (
            "missing cert",
            &missing,
            &one.key,
            vec![&missing],
            &["no such file", "does not exist", "not found", "missing"][..],
        ),
        (
            "directory as cert",
            &folder,
            &one.key,
            vec![&folder],
            &["directory"][..],
        ),
        (
            "cert not PEM",
            &junk,
            &one.key,
            vec![&junk],
            &["pem", "no certificate", "parse"][..],
        ),
        (
            "key of another CA",
            &one.cert,
            &two.key,
            vec![&one.cert, &two.key],
            &["match", "belong", "pair"][..],
        ),
    ];
    for (case, cert, key, named, reasons) in cases {
        let spec = MeshSpec {
            identity_yaml: Some(ca_yaml(cert, key)),
            ..MeshSpec::default()
        };
        let (status, logs) = mesh
            .start_agent_expecting_failure("node1", &spec)
            .unwrap_or_else(|e| panic!("{case}: {e:#}"));
        assert!(!status.success(), "{case}: exit status {status}");
        assert!(
            named
                .iter()
                .any(|p| logs.contains(&p.display().to_string())),
            "{case}: the message must name {named:?}:\n{logs}"
        );
        let reason_text = logs
            .replace(&cert.display().to_string(), "")
            .replace(&key.display().to_string(), "")
            .to_lowercase();
        assert!(
            reasons.iter().any(|r| reason_text.contains(r)),
            "{case}: the message must say why (one of {reasons:?}):\n{logs}"
        );
        let left = attached(&cgroup);
        assert!(left.is_empty(), "{case}: still attached: {left:?}");
    }

    // Control: the matching pair starts.
    let spec = MeshSpec {
        identity_yaml: Some(ca_yaml(&one.cert, &one.key)),
        ..MeshSpec::default()
    };
    mesh.start_agent("node1", &spec)
        .expect("agent with a good CA pair");
    let certs = mesh.admin("node1", "/certs").expect("/certs");
    assert!(
        certs["trust_bundle"].to_string().contains("CA one"),
        "trust bundle must be the provided CA: {certs:#}"
    );
}
