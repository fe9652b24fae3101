//! Checks of the deployment files in deploy/: the Kustomize base and overlays render and every
//! object passes `kubernetes-validate --strict` for the oldest and newest supported Kubernetes
//! (1.33, 1.37); the DaemonSet, RBAC and ConfigMap say what the issue asks; the committed CRD is
//! the agent's own (`mesh-agent crds`) and its schema rejects policies with a typo
//! (tests/k8s/crd_strict.py); `systemd-analyze verify` accepts the systemd unit; the
//! Containerfile has its stages.
//!
//! No root needed. Tools (a missing one FAILS the test with how to get it, never skips):
//! `kubectl` (its built-in kustomize; env KUBECTL overrides), the venv that `cargo xtask setup`
//! creates at target/tools/venv with kubernetes-validate, jsonschema and pyyaml (env
//! MESH_TOOLS_VENV overrides), `systemd-analyze`, and the agent binary (MESH_AGENT_BIN or the
//! workspace's target directory).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use mesh_tests::dashboard::workspace_root;
use mesh_tests::mesh::Binaries;
use serde_json::Value;

const BASE: &str = "deploy/kubernetes/base";
/// Every overlay, with the cgroup driver its config pins.
const OVERLAYS: &[(&str, &str)] = &[
    ("deploy/kubernetes/overlays/systemd-driver", "systemd"),
    ("deploy/kubernetes/overlays/cgroupfs-driver", "cgroupfs"),
    ("deploy/kubernetes/overlays/production", "systemd"),
];
const CRD_FILE: &str = "deploy/kubernetes/base/crds/meshauthorizationpolicies.yaml";
const UNIT_FILE: &str = "deploy/systemd/mesh-agent.service";
const CONTAINERFILE: &str = "deploy/container/Containerfile";
/// Kinds we define: the only ones kubernetes-validate may warn about (it has no schema for
/// custom resources; tests/k8s/crd_strict.py checks those).
const OUR_CUSTOM_KINDS: &[&str] = &["MeshAuthorizationPolicy"];
/// The capabilities the issue grants the agent, and no others.
const CAPABILITIES: &[&str] = &["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"];
const READ_ONLY_VERBS: &[&str] = &["get", "list", "watch"];

fn root() -> PathBuf {
    workspace_root()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn scratch(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mesh-deploy-{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// Runs a tool; a tool that cannot be started FAILS the test with `how` (how to get it).
fn run(program: &Path, args: &[&str], stdin: Option<&str>, how: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): {how}", program.display()));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("writing to the tool's stdin");
    }
    child.wait_with_output().expect("waiting for the tool")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kubectl() -> PathBuf {
    std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

const KUBECTL_HOW: &str = "kubectl is needed for `kubectl kustomize` (install it from \
    https://kubernetes.io/docs/tasks/tools/; Debian's kubernetes-client is too old), or set \
    KUBECTL to its path";

/// The venv `cargo xtask setup` creates (kubernetes-validate, jsonschema, pyyaml).
fn venv_bin(tool: &str) -> PathBuf {
    let venv = std::env::var_os("MESH_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/tools/venv"));
    let bin = venv.join("bin").join(tool);
    assert!(
        bin.exists(),
        "{} missing: run `cargo xtask setup` (it creates the venv with kubernetes-validate \
         1.37.0), or set MESH_TOOLS_VENV to a venv that has it",
        bin.display()
    );
    bin
}

const VENV_HOW: &str = "run `cargo xtask setup`";

/// `kubectl kustomize DIR`, which must succeed.
fn kustomize(dir: &str) -> String {
    let out = run(&kubectl(), &["kustomize", dir], None, KUBECTL_HOW);
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every document of a YAML stream as JSON, parsed by PyYAML (the venv's) so that the test
/// reads the manifests with a real YAML parser.
fn yaml_docs(yaml: &str) -> Vec<Value> {
    let script = "import sys, json, yaml\n\
                  json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], \
                  sys.stdout)";
    let out = run(&venv_bin("python"), &["-c", script], Some(yaml), VENV_HOW);
    assert!(
        out.status.success(),
        "parsing YAML failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("PyYAML's JSON")
}

/// kubernetes-validate --strict for 1.33 and 1.37 on `file`; returns its output lines. Fails on
/// a non-zero exit, an ERROR line, or a WARN about anything but our own custom kinds.
fn validate(file: &Path) -> Vec<String> {
    let path = file.to_str().expect("utf-8 path");
    let out = run(
        &venv_bin("kubernetes-validate"),
        &["--strict", "-k", "1.33", "-k", "1.37", path],
        None,
        VENV_HOW,
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate --strict failed for {path}:\n{stdout}{stderr}"
    );
    let lines: Vec<String> = stdout
        .lines()
        .chain(stderr.lines())
        .map(str::to_string)
        .collect();
    for line in &lines {
        assert!(!line.starts_with("ERROR"), "{path}: {line}");
        if line.starts_with("WARN") {
            assert!(
                OUR_CUSTOM_KINDS
                    .iter()
                    .any(|kind| line.contains(&format!("schema for kind {kind} "))),
                "{path}: a warning about something else than our custom resources: {line}"
            );
        }
    }
    lines
}

fn kinds(docs: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut by_kind: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for doc in docs {
        let kind = doc["kind"].as_str().expect("every object has a kind");
        by_kind.entry(kind.to_string()).or_default().push(doc);
    }
    by_kind
}

fn one<'a>(by_kind: &'a BTreeMap<String, Vec<&'a Value>>, kind: &str) -> &'a Value {
    let objects = by_kind
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"));
    assert_eq!(objects.len(), 1, "exactly one {kind}");
    objects[0]
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, got {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string"))
        .collect()
}

fn set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
    items.into_iter().collect()
}

/// Renders `dir`, validates every object, and checks the objects' content; returns the parsed
/// objects.
fn check_rendering(dir: &str) -> Vec<Value> {
    let rendered = kustomize(dir);
    let scratch = scratch("render");
    let file = scratch.join("rendered.yaml");
    std::fs::write(&file, &rendered).expect("writing the rendered manifests");
    let report = validate(&file);
    let docs = yaml_docs(&rendered);
    let passed = report.iter().filter(|l| l.starts_with("INFO")).count();
    // One "passed" line per object and version: nothing was silently left out.
    assert_eq!(
        passed,
        docs.len() * 2,
        "{dir}: expected every object validated for 1.33 and 1.37:\n{}",
        report.join("\n")
    );
    println!(
        "{dir}: {} objects pass kubernetes-validate --strict (1.33, 1.37)",
        docs.len()
    );

    let by_kind = kinds(&docs);
    assert_eq!(
        by_kind.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        set([
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "DaemonSet",
            "Namespace",
            "ServiceAccount",
        ]),
        "{dir}: rendered kinds"
    );
    for doc in &docs {
        let namespaced = !matches!(
            doc["kind"].as_str(),
            Some("Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition")
        );
        if namespaced {
            assert_eq!(
                doc["metadata"]["namespace"], "mesh-system",
                "{dir}: {} in mesh-system",
                doc["metadata"]["name"]
            );
        }
    }
    check_rbac(dir, &by_kind);
    check_daemonset(dir, &by_kind);
    docs
}

fn check_rbac(dir: &str, by_kind: &BTreeMap<String, Vec<&Value>>) {
    let read_only = set(READ_ONLY_VERBS.iter().copied());
    let mut granted: BTreeSet<(String, String)> = BTreeSet::new();
    let cluster_role = one(by_kind, "ClusterRole");
    for rule in cluster_role["rules"].as_array().expect("rules") {
        let verbs = set(strings(&rule["verbs"]));
        assert!(
            verbs.is_subset(&read_only),
            "{dir}: ClusterRole grants {verbs:?}; only get/list/watch allowed"
        );
        assert!(
            rule.get("nonResourceURLs").is_none() && rule.get("resourceNames").is_none(),
            "{dir}: unexpected ClusterRole rule {rule}"
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                granted.insert((group.to_string(), resource.to_string()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("", "pods"),
        ("", "services"),
        ("", "namespaces"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
        ("mesh.example.io", "meshauthorizationpolicies"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("gateway.networking.k8s.io", "grpcroutes"),
    ]
    .into_iter()
    .map(|(g, r)| (g.to_string(), r.to_string()))
    .collect();
    assert_eq!(granted, expected, "{dir}: ClusterRole resources");

    // No access to Secrets at all: the CA comes from the mesh-ca Secret mounted as a volume.
    assert!(
        !by_kind.contains_key("Role") && !by_kind.contains_key("RoleBinding"),
        "{dir}: no namespaced Role needed"
    );

    let account = one(by_kind, "ServiceAccount");
    let binding = one(by_kind, "ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"]["kind"], "ClusterRole",
        "{dir}: {binding}"
    );
    assert_eq!(
        binding["roleRef"]["name"], cluster_role["metadata"]["name"],
        "{dir}: {binding}"
    );
    let subjects = binding["subjects"].as_array().expect("subjects");
    assert_eq!(subjects.len(), 1, "{dir}: {binding}");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], account["metadata"]["name"]);
    assert_eq!(subjects[0]["namespace"], account["metadata"]["namespace"]);
}

fn check_daemonset(dir: &str, by_kind: &BTreeMap<String, Vec<&Value>>) {
    let ds = one(by_kind, "DaemonSet");
    let template = &ds["spec"]["template"];
    let pod = &template["spec"];
    let ctx = format!("{dir}: DaemonSet");
    assert_eq!(pod["hostNetwork"], true, "{ctx}: hostNetwork");
    assert!(pod.get("hostPID").is_none(), "{ctx}: no hostPID needed");
    assert_eq!(
        pod["dnsPolicy"], "ClusterFirstWithHostNet",
        "{ctx}: dnsPolicy"
    );
    assert_eq!(pod["priorityClassName"], "system-node-critical", "{ctx}");
    assert!(
        pod["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "{ctx}: a toleration of every taint"
    );
    // Hitless rolling update: the new pod starts beside the old one (which needs no host
    // ports on the pod), and the old one gets longer than the default drain_timeout (60 s).
    let rolling = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(
        ds["spec"]["updateStrategy"]["type"], "RollingUpdate",
        "{ctx}"
    );
    assert_eq!(rolling["maxSurge"], 1, "{ctx}: maxSurge");
    assert_eq!(rolling["maxUnavailable"], 0, "{ctx}: maxUnavailable");
    assert!(
        pod["terminationGracePeriodSeconds"]
            .as_u64()
            .is_some_and(|s| s > 60),
        "{ctx}: terminationGracePeriodSeconds must outlast node.drain_timeout"
    );
    assert!(
        pod["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .all(|c| c.get("ports").is_none()),
        "{ctx}: no container ports (host ports would keep the surge pod off the node)"
    );
    assert_eq!(
        pod["serviceAccountName"],
        one(by_kind, "ServiceAccount")["metadata"]["name"],
        "{ctx}: service account"
    );
    // deploy/prometheus/scrape-config.yaml keeps the pods with this label.
    assert_eq!(
        template["metadata"]["labels"]["app.kubernetes.io/name"], "mesh-agent",
        "{ctx}: pod label"
    );
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{ctx}");
    assert_eq!(annotations["prometheus.io/port"], "15020", "{ctx}");
    assert_eq!(
        annotations["prometheus.io/path"], "/stats/prometheus",
        "{ctx}"
    );

    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{ctx}: one container");
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false, "{ctx}: privileged");
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "{ctx}: readOnlyRootFilesystem"
    );
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{ctx}: drop");
    let added = strings(&sc["capabilities"]["add"]);
    assert_eq!(
        set(added.iter().copied()),
        set(CAPABILITIES.iter().copied()),
        "{ctx}: capabilities added"
    );
    assert_eq!(
        added.len(),
        CAPABILITIES.len(),
        "{ctx}: duplicate capability"
    );

    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(probe["port"], 15021, "{ctx}: readiness port");
    assert_eq!(probe["path"], "/healthz/ready", "{ctx}: readiness path");
    let resources = &c["resources"];
    assert!(
        resources["requests"]["cpu"].is_string(),
        "{ctx}: cpu request"
    );
    assert!(
        resources["requests"]["memory"].is_string(),
        "{ctx}: memory request"
    );
    assert!(
        resources["limits"]["memory"].is_string(),
        "{ctx}: memory limit"
    );
    assert!(
        c["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "{ctx}: NODE_NAME from spec.nodeName"
    );

    // Volumes by name -> (hostPath path | configMap name | secret name), mounts by path.
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| (v["name"].as_str().expect("volume name"), v))
        .collect();
    let mounts: BTreeMap<&str, &Value> = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| (m["mountPath"].as_str().expect("mountPath"), m))
        .collect();
    let volume_at = |path: &str| -> &Value {
        let mount = mounts
            .get(path)
            .unwrap_or_else(|| panic!("{ctx}: nothing mounted at {path}"));
        volumes[mount["name"].as_str().expect("mount name")]
    };
    assert_eq!(
        volume_at("/sys/fs/bpf")["hostPath"]["path"],
        "/sys/fs/bpf",
        "{ctx}"
    );
    assert_eq!(
        volume_at("/var/run/netns")["hostPath"]["path"],
        "/var/run/netns",
        "{ctx}: the runtime's pod namespaces"
    );
    assert_eq!(
        mounts["/var/run/netns"]["mountPropagation"], "HostToContainer",
        "{ctx}: namespaces of later pods must appear"
    );
    assert_eq!(
        volume_at("/run/mesh-agent")["hostPath"]["path"],
        "/run/mesh-agent",
        "{ctx}: node.state_dir on the host, shared by the old and the new pod"
    );
    let cgroup_mount = mounts
        .iter()
        .find(|(_, m)| volumes[m["name"].as_str().unwrap()]["hostPath"]["path"] == "/sys/fs/cgroup")
        .map(|(path, _)| *path)
        .unwrap_or_else(|| panic!("{ctx}: the host's /sys/fs/cgroup is not mounted"));

    // The ConfigMap the DaemonSet mounts at /etc/mesh-agent holds the config file the agent is
    // started with, and that file is the overlay's (or base's) config.yaml.
    let config_volume = volume_at("/etc/mesh-agent");
    let config_map = one(by_kind, "ConfigMap");
    assert_eq!(
        config_volume["configMap"]["name"], config_map["metadata"]["name"],
        "{ctx}: mounts the rendered ConfigMap"
    );
    assert_eq!(
        strings(&c["args"]),
        ["--config", "/etc/mesh-agent/config.yaml"],
        "{ctx}: args"
    );
    let config = config_map["data"]["config.yaml"]
        .as_str()
        .unwrap_or_else(|| panic!("{dir}: ConfigMap has no config.yaml"));
    // An overlay without a config.yaml of its own (production) takes systemd-driver's.
    let own = if root().join(dir).join("config.yaml").exists() {
        format!("{dir}/config.yaml")
    } else {
        format!("{}/config.yaml", OVERLAYS[0].0)
    };
    assert_eq!(config, read(&own), "{dir}: ConfigMap config.yaml is {own}");

    // The paths the config names are where the DaemonSet mounts things.
    let parsed = &yaml_docs(config)[0];
    assert_eq!(parsed["node"]["cgroup"], cgroup_mount, "{dir}: node.cgroup");
    assert_eq!(
        parsed["kubernetes"]["kubepods_root"], cgroup_mount,
        "{dir}: kubepods_root"
    );
    for key in ["cert", "key"] {
        let file = parsed["identity"]["ca"][key]
            .as_str()
            .expect("identity.ca file");
        let parent = Path::new(file).parent().unwrap().to_str().unwrap();
        assert_eq!(
            volume_at(parent)["secret"]["secretName"],
            "mesh-ca",
            "{dir}: identity.ca.{key} comes from the Secret mesh-ca"
        );
    }
    assert!(
        parsed["node"]["bpffs"]
            .as_str()
            .is_some_and(|p| p.starts_with("/sys/fs/bpf/")),
        "{dir}: node.bpffs below the bpffs mount"
    );
    assert_eq!(
        parsed["telemetry"]["metrics_address"], "0.0.0.0:15020",
        "{dir}"
    );
    assert_eq!(
        parsed["telemetry"]["readiness_address"], "0.0.0.0:15021",
        "{dir}"
    );
}

#[test]
fn base_renders_and_validates() {
    let docs = check_rendering(BASE);
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["config.yaml"].as_str())
        .expect("ConfigMap config.yaml");
    assert_eq!(yaml_docs(config)[0]["kubernetes"]["cgroup_driver"], "auto");
    // The CRD object is the committed file (kustomize only adds our labels).
    let crd = docs
        .iter()
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .expect("CRD");
    let committed = &yaml_docs(&read(CRD_FILE))[0];
    assert_eq!(crd["spec"], committed["spec"]);
    assert_eq!(crd["metadata"]["name"], committed["metadata"]["name"]);
}

#[test]
fn overlays_render_and_validate() {
    let base_config = read(&format!("{BASE}/config.yaml"));
    for (dir, driver) in OVERLAYS {
        let docs = check_rendering(dir);
        let config = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .and_then(|d| d["data"]["config.yaml"].as_str())
            .expect("ConfigMap config.yaml");
        assert_eq!(
            yaml_docs(config)[0]["kubernetes"]["cgroup_driver"],
            *driver,
            "{dir}: cgroup_driver"
        );
        // An overlay's config differs from the base's only in the driver (and its comment),
        // so the copies cannot drift apart.
        let strip = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .map(|l| {
                    if l.trim_start().starts_with("cgroup_driver:") {
                        "cgroup_driver: <driver>".to_string()
                    } else {
                        l.to_string()
                    }
                })
                .collect()
        };
        assert_eq!(
            strip(config),
            strip(&base_config),
            "{dir}: config drifted from the base"
        );
    }
    // The production example overrides the image and the resources.
    let docs = yaml_docs(&kustomize(OVERLAYS[2].0));
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.example.com/mesh/mesh-agent:0.1.0");
    assert_eq!(c["resources"]["requests"]["cpu"], "500m");
    assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
}

#[test]
fn committed_crd_is_the_agents() {
    let bins = Binaries::locate(env!("CARGO_BIN_EXE_mesh-probe")).expect("locating mesh-agent");
    let out = run(
        &bins.agent,
        &["crds"],
        None,
        "build mesh-agent or set MESH_AGENT_BIN",
    );
    assert!(
        out.status.success(),
        "mesh-agent crds: {}",
        text(&out.stderr)
    );
    assert_eq!(
        read(CRD_FILE),
        text(&out.stdout),
        "{CRD_FILE} is stale: regenerate it with `mesh-agent crds > {CRD_FILE}`"
    );
}

/// Runs tests/k8s/crd_strict.py with the committed CRD on `files`.
fn crd_strict(files: &[PathBuf]) -> Output {
    let mut args = vec!["tests/k8s/crd_strict.py".to_string(), CRD_FILE.to_string()];
    args.extend(files.iter().map(|f| f.to_str().unwrap().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&venv_bin("python"), &args, None, VENV_HOW)
}

fn yaml_files(rel: &str) -> Vec<PathBuf> {
    let dir = root().join(rel);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no sample policies in {}", dir.display());
    files
}

#[test]
fn crd_schema_accepts_valid_policies() {
    let files = yaml_files("tests/k8s/policies/valid");
    let out = crd_strict(&files);
    let stdout = text(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "valid policies rejected:\n{stdout}{}",
        text(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        files.len()
    );
    // kubernetes-validate has no schema for them: a WARN about our kind, nothing else.
    for file in &files {
        let lines = validate(file);
        assert!(
            lines.iter().any(|l| l.starts_with("WARN")),
            "{}: kubernetes-validate was expected to say it has no schema: {lines:?}",
            file.display()
        );
    }
}

#[test]
fn crd_schema_rejects_each_typo() {
    let files = yaml_files("tests/k8s/policies/invalid");
    let names: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for case in [
        "form-typo",
        "principal-typo",
        "notport-typo",
        "matchlabel-typo",
        "selecter-typo",
        "action-allowed",
        "ports-as-int",
        "empty-source",
    ] {
        assert!(names.contains(case), "missing invalid sample {case}.yaml");
    }
    for file in &files {
        let body = std::fs::read_to_string(file).expect("reading a sample");
        let expect = body
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: no `# expect: ` line", file.display()));
        let out = crd_strict(std::slice::from_ref(file));
        let stdout = text(&out.stdout);
        print!("{stdout}");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: expected a rejection:\n{stdout}{}",
            file.display(),
            text(&out.stderr)
        );
        let errors: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("ok ")).collect();
        assert_eq!(
            errors.len(),
            1,
            "{}: one error expected: {errors:?}",
            file.display()
        );
        assert!(
            errors[0].contains(expect),
            "{}: expected `{expect}`, got `{}`",
            file.display(),
            errors[0]
        );
    }
}

#[test]
fn systemd_unit_verifies() {
    let bins = Binaries::locate(env!("CARGO_BIN_EXE_mesh-probe")).expect("locating mesh-agent");
    let agent = std::fs::canonicalize(&bins.agent)
        .unwrap_or_else(|e| panic!("{}: {e}", bins.agent.display()));
    let unit = read(UNIT_FILE);
    for line in [
        "ExecStart=/usr/local/bin/mesh-agent run --config /etc/mesh-agent/config.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN CAP_PERFMON CAP_SYS_RESOURCE",
        // node.state_dir's default: the handover socket, kept across restarts.
        "RuntimeDirectory=mesh-agent",
        "RuntimeDirectoryPreserve=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "{UNIT_FILE}: no `{line}`");
    }
    // verify insists that ExecStart's binary exists and is executable: point it at the built
    // agent in a copy (the installed path is /usr/local/bin/mesh-agent).
    let copy = unit.replace(
        "ExecStart=/usr/local/bin/mesh-agent ",
        &format!("ExecStart={} ", agent.display()),
    );
    assert_ne!(copy, unit);
    let dir = scratch("systemd");
    let path = dir.join("mesh-agent.service");
    std::fs::write(&path, copy).expect("writing the unit copy");
    let how = "systemd-analyze comes with systemd: apt-get install systemd";
    let analyze = Path::new("systemd-analyze");
    let out = run(analyze, &["verify", path.to_str().unwrap()], None, how);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{}{stderr}",
        out.status,
        text(&out.stdout)
    );
    // The exposure score, for the record (not a gate: it depends on systemd's version).
    let out = run(
        analyze,
        &["security", "--offline=yes", path.to_str().unwrap()],
        None,
        how,
    );
    println!("{}{}", text(&out.stdout), text(&out.stderr));
}

#[test]
fn containerfile_has_build_and_runtime_stages() {
    let file = read(CONTAINERFILE);
    // Instructions with continuation lines joined, comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in file.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let word = |i: &str| i.split_whitespace().next().unwrap_or("").to_uppercase();
    let froms: Vec<&String> = instructions.iter().filter(|i| word(i) == "FROM").collect();
    assert_eq!(froms.len(), 2, "{CONTAINERFILE}: two stages: {froms:?}");
    assert!(
        froms[0].ends_with(" AS build"),
        "{CONTAINERFILE}: first stage is `build`: {}",
        froms[0]
    );
    assert!(
        froms[1].contains("debian:bookworm-slim"),
        "{CONTAINERFILE}: runtime on debian:bookworm-slim: {}",
        froms[1]
    );
    let build_end = instructions
        .iter()
        .position(|i| std::ptr::eq(i, froms[1]))
        .unwrap();
    let (build, runtime) = instructions.split_at(build_end);
    assert!(
        build
            .iter()
            .any(|i| word(i) == "ENV" && i.contains("DEBIAN_FRONTEND=noninteractive")),
        "{CONTAINERFILE}: the build never prompts"
    );
    assert!(
        build
            .iter()
            .any(|i| word(i) == "RUN" && i.contains("cargo xtask build --agent-only")),
        "{CONTAINERFILE}: the build stage builds with `cargo xtask build --agent-only`"
    );
    // Every workspace member (and the cargo alias for xtask) is copied into the build stage.
    let manifest = read("Cargo.toml");
    let members = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .expect("workspace members");
    let members: Vec<&str> = members
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .collect();
    let copied: BTreeSet<&str> = build
        .iter()
        .filter(|i| word(i) == "COPY")
        .flat_map(|i| i.split_whitespace().skip(1))
        .collect();
    for needed in members
        .iter()
        .copied()
        .chain(["Cargo.toml", "Cargo.lock", ".cargo"])
    {
        assert!(
            copied.contains(needed),
            "{CONTAINERFILE}: `{needed}` is not copied"
        );
    }
    assert!(
        runtime
            .iter()
            .any(|i| i.starts_with("COPY --from=build ")
                && i.ends_with(" /usr/local/bin/mesh-agent")),
        "{CONTAINERFILE}: the runtime stage takes the agent from the build stage"
    );
    let entrypoint = runtime
        .iter()
        .find(|i| word(i) == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    let exec: Vec<String> =
        serde_json::from_str(entrypoint["ENTRYPOINT".len()..].trim()).expect("exec form");
    assert_eq!(exec, ["/usr/local/bin/mesh-agent", "run"]);
}
