//! CI check of the observability assets in deploy/: the Prometheus scrape configuration and
//! alert rules (with promtool, and the Kubernetes job's relabelling with a real Prometheus
//! server), and the Grafana dashboard (structure, variables, metric names, PromQL syntax).
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`, installed by
//! `cargo xtask setup`); the tests FAIL when they are missing. `PROMTOOL` and `PROMETHEUS`
//! override the binaries' paths. No root needed.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use mesh_tests::dashboard::{
    self, KNOWN_VARIABLES, SELECTOR_VARIABLES, is_contract_metric, metric_names, panel_queries,
    substitute, variables,
};
use serde_json::{Value, json};

const PROMETHEUS_DIR: &str = "deploy/prometheus";
const BARE_HOST_BEGIN: &str = "# BEGIN bare-host example";
const BARE_HOST_END: &str = "# END bare-host example";

fn root() -> PathBuf {
    dashboard::workspace_root()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A fresh scratch directory for one test.
fn scratch(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mesh-obs-assets-{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

fn binary(env: &str, name: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| name.to_string())
}

/// Runs promtool; panics (the test FAILS) when it cannot be started.
fn promtool(args: &[&str], cwd: &Path) -> Output {
    let bin = binary("PROMTOOL", "promtool");
    Command::new(&bin)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{bin}` ({e}): promtool is required by this check; install the \
                 Debian package `prometheus` (`cargo xtask setup` does) or set PROMTOOL"
            )
        })
}

fn promtool_ok(args: &[&str], cwd: &Path) -> String {
    let out = promtool(args, cwd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} (in {}) failed:\n{text}",
        args.join(" "),
        cwd.display()
    );
    text
}

// ---------------------------------------------------------------------------------------------
// Prometheus configuration

/// scrape-config.yaml with the bare-host example uncommented.
fn uncomment_bare_host(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut seen = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed == BARE_HOST_BEGIN {
            inside = true;
            seen = true;
        } else if trimmed == BARE_HOST_END {
            inside = false;
        } else if inside {
            let indent = &line[..line.len() - trimmed.len()];
            let rest = trimmed
                .strip_prefix("# ")
                .or_else(|| trimmed.strip_prefix('#'))
                .unwrap_or_else(|| panic!("uncommented line in the bare-host example: {line}"));
            out.push_str(indent);
            out.push_str(rest);
            out.push('\n');
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(seen, "scrape-config.yaml has no `{BARE_HOST_BEGIN}` block");
    assert!(!inside, "scrape-config.yaml: `{BARE_HOST_END}` missing");
    out
}

/// The bare-host example block alone, uncommented.
fn bare_host_block(text: &str) -> String {
    let uncommented = uncomment_bare_host(text);
    let begin = text
        .lines()
        .position(|l| l.trim_start() == BARE_HOST_BEGIN)
        .unwrap();
    let end = text
        .lines()
        .position(|l| l.trim_start() == BARE_HOST_END)
        .unwrap();
    // The markers are removed by uncomment_bare_host: the block starts where BEGIN was.
    uncommented
        .lines()
        .skip(begin)
        .take(end - begin - 1)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// scrape-config.yaml with the Kubernetes discovery replaced by file discovery of `targets`:
/// the Debian build of Prometheus has no Kubernetes discovery, and file discovery lets a test
/// hand the relabelling the `__meta_kubernetes_*` labels Kubernetes discovery would produce.
fn kubernetes_via_file_sd(text: &str, targets: &Path) -> String {
    let mut out = String::new();
    let mut skipping = false;
    let mut replaced = 0;
    for line in text.lines() {
        if line == "    kubernetes_sd_configs:" {
            skipping = true;
            replaced += 1;
            out.push_str(&format!(
                "    file_sd_configs:\n      - files: ['{}']\n",
                targets.display()
            ));
            continue;
        }
        if skipping {
            if line.starts_with("      ") || line.trim().is_empty() {
                continue;
            }
            skipping = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert_eq!(
        replaced, 1,
        "scrape-config.yaml: expected one `    kubernetes_sd_configs:` block"
    );
    out
}

#[test]
fn example_prometheus_yml_is_valid() {
    let dir = root().join(PROMETHEUS_DIR);
    let out = promtool_ok(&["check", "config", "prometheus.yml"], &dir);
    assert!(out.contains("1 rule files found"), "{out}");
    // Also from the workspace root, as the README says.
    promtool_ok(
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        &root(),
    );
}

#[test]
fn example_prometheus_yml_has_the_bare_host_job_of_scrape_config() {
    let block = bare_host_block(&read("deploy/prometheus/scrape-config.yaml"));
    assert!(block.contains("job_name: mesh-agent\n"), "{block}");
    let example = read("deploy/prometheus/prometheus.yml");
    assert!(
        example.contains(&block),
        "prometheus.yml must contain the bare-host job of scrape-config.yaml verbatim:\n{block}"
    );
    assert!(example.contains("rule_files:\n  - alerts.yaml\n"));
}

#[test]
fn scrape_config_is_valid() {
    let text = read("deploy/prometheus/scrape-config.yaml");
    let dir = scratch("scrape");
    let targets = dir.join("targets.json");
    std::fs::write(&targets, "[]").unwrap();

    // As shipped. A Prometheus built without Kubernetes discovery (Debian's) rejects only the
    // `kubernetes_sd_configs` field; anything else is an error.
    let shipped = root().join("deploy/prometheus/scrape-config.yaml");
    let out = promtool(&["check", "config", shipped.to_str().unwrap()], &dir);
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        assert!(
            msg.contains("field kubernetes_sd_configs not found"),
            "promtool check config scrape-config.yaml:\n{msg}"
        );
        eprintln!(
            "note: this promtool has no Kubernetes discovery; the Kubernetes job is checked \
             with file discovery in its place"
        );
    }

    // Kubernetes discovery swapped for file discovery (everything else as shipped).
    let k8s = dir.join("kubernetes.yml");
    std::fs::write(&k8s, kubernetes_via_file_sd(&text, &targets)).unwrap();
    promtool_ok(&["check", "config", "kubernetes.yml"], &dir);

    // And with the bare-host example uncommented.
    let both = dir.join("both.yml");
    std::fs::write(
        &both,
        kubernetes_via_file_sd(&uncomment_bare_host(&text), &targets),
    )
    .unwrap();
    let out = promtool_ok(&["check", "config", "both.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Prometheus server on a free loopback port, killed on drop.
struct PrometheusServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl PrometheusServer {
    fn start(config: &Path, dir: &Path) -> PrometheusServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let bin = binary("PROMETHEUS", "prometheus");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `{bin}` ({e}): the Prometheus server is required by this check; \
                     install the Debian package `prometheus` (`cargo xtask setup` does) or set \
                     PROMETHEUS"
                )
            });
        let server = PrometheusServer {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.get("/-/ready").is_none() {
            assert!(
                Instant::now() < deadline,
                "Prometheus did not become ready:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The body of a 200 response, None on any failure.
    fn get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_string())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One discovered container port of a pod, as Kubernetes pod discovery labels it.
fn pod_target(
    address: &str,
    namespace: &str,
    name: &str,
    app: &str,
    phase: &str,
    init: bool,
    annotations: &[(&str, &str)],
) -> Value {
    let mut labels = json!({
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_node_name": format!("node-{name}"),
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_container_init": init.to_string(),
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
        "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name": "true",
    });
    for (key, value) in annotations {
        let key = key.replace(['.', '/'], "_");
        labels[format!("__meta_kubernetes_pod_annotation_{key}")] = json!(value);
        labels[format!("__meta_kubernetes_pod_annotationpresent_{key}")] = json!("true");
    }
    json!({"targets": [address], "labels": labels})
}

#[test]
fn kubernetes_job_relabelling() {
    let dir = scratch("relabel");
    let ns = "mesh-system";
    let app = "mesh-agent";
    let groups = json!([
        // The agent's pod with two declared ports: one target after relabelling.
        pod_target("10.0.0.1:15020", ns, "a", app, "Running", false, &[]),
        pod_target("10.0.0.1:15021", ns, "a", app, "Running", false, &[]),
        // A container without declared ports (address without a port).
        pod_target("10.0.0.2", ns, "b", app, "Running", false, &[]),
        // Annotations override port and path.
        pod_target(
            "10.0.0.3:15020",
            ns,
            "c",
            app,
            "Running",
            false,
            &[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "9102"),
                ("prometheus.io/path", "/stats/prometheus"),
            ],
        ),
        // IPv6 pod address.
        pod_target("[fd00::4]:15020", ns, "d", app, "Running", false, &[]),
        // Not scraped: opted out, another app, another namespace, not running, init container.
        pod_target(
            "10.0.1.1:15020",
            ns,
            "optout",
            app,
            "Running",
            false,
            &[("prometheus.io/scrape", "false")],
        ),
        pod_target(
            "10.0.1.2:15020",
            ns,
            "other",
            "other",
            "Running",
            false,
            &[]
        ),
        pod_target(
            "10.0.1.3:15020",
            "default",
            "elsewhere",
            app,
            "Running",
            false,
            &[]
        ),
        pod_target("10.0.1.4:15020", ns, "pending", app, "Pending", false, &[]),
        pod_target("10.0.1.5:15020", ns, "init", app, "Running", true, &[]),
    ]);
    let targets = dir.join("targets.json");
    std::fs::write(&targets, serde_json::to_string_pretty(&groups).unwrap()).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        kubernetes_via_file_sd(&read("deploy/prometheus/scrape-config.yaml"), &targets),
    )
    .unwrap();
    let server = PrometheusServer::start(&config, &dir);

    // Discovery reaches the scrape manager after its 5 s update throttle.
    let deadline = Instant::now() + Duration::from_secs(45);
    let (active, dropped) = loop {
        let body = server.get("/api/v1/targets").unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let active = v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let dropped = v["data"]["droppedTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !active.is_empty() || !dropped.is_empty() {
            break (active, dropped);
        }
        assert!(
            Instant::now() < deadline,
            "no targets discovered:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };

    let mut got: Vec<(String, String, String, String, String)> = active
        .iter()
        .map(|t| {
            let l = &t["labels"];
            assert_eq!(l["job"], "mesh-agent-kubernetes", "{t}");
            let keys: BTreeSet<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                BTreeSet::from(["instance", "job", "node", "pod"]),
                "{t}"
            );
            (
                l["pod"].as_str().unwrap().to_string(),
                l["node"].as_str().unwrap().to_string(),
                l["instance"].as_str().unwrap().to_string(),
                t["scrapeUrl"].as_str().unwrap().to_string(),
                t["scrapePool"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, String, String, String, String)> = [
        ("a", "10.0.0.1:15020", "http://10.0.0.1:15020/metrics"),
        ("b", "10.0.0.2:15020", "http://10.0.0.2:15020/metrics"),
        (
            "c",
            "10.0.0.3:9102",
            "http://10.0.0.3:9102/stats/prometheus",
        ),
        ("d", "[fd00::4]:15020", "http://[fd00::4]:15020/metrics"),
    ]
    .into_iter()
    .map(|(pod, instance, url)| {
        (
            pod.to_string(),
            format!("node-{pod}"),
            instance.to_string(),
            url.to_string(),
            "mesh-agent-kubernetes".to_string(),
        )
    })
    .collect();
    assert_eq!(got, want, "active targets");

    let mut dropped_pods: Vec<&str> = dropped
        .iter()
        .map(|t| {
            t["discoveredLabels"]["__meta_kubernetes_pod_name"]
                .as_str()
                .unwrap_or("?")
        })
        .collect();
    dropped_pods.sort();
    assert_eq!(
        dropped_pods,
        ["elsewhere", "init", "optout", "other", "pending"],
        "dropped targets"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Alert rules

/// The `expr` of every rule in a rules file (single-line or `|` block), without a YAML parser.
fn rule_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == "|-" || rest == ">" || rest == ">-" {
                let indent = line.len() - trimmed.len();
                let mut expr = String::new();
                i += 1;
                while i < lines.len() {
                    let l = lines[i];
                    let ind = l.len() - l.trim_start().len();
                    if !l.trim().is_empty() && ind <= indent {
                        break;
                    }
                    expr.push_str(l.trim());
                    expr.push('\n');
                    i += 1;
                }
                out.push(expr);
                continue;
            }
            out.push(rest.to_string());
        }
        i += 1;
    }
    out
}

#[test]
fn alert_rules_are_valid() {
    let dir = root().join(PROMETHEUS_DIR);
    let out = promtool_ok(&["check", "rules", "alerts.yaml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rules_unit_tests_pass() {
    let dir = root().join(PROMETHEUS_DIR);
    let out = promtool_ok(&["test", "rules", "alerts_test.yaml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rules_use_contract_metrics_and_are_all_tested() {
    let rules = read("deploy/prometheus/alerts.yaml");
    let exprs = rule_exprs(&rules);
    assert!(exprs.len() >= 8, "{exprs:?}");
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in alert expression {expr}");
        for name in names {
            assert!(
                is_contract_metric(&name),
                "alert expression uses `{name}`, not a metric of the contract: {expr}"
            );
        }
    }
    // Every alert has a firing and a not-firing case in the unit tests.
    let tests = read("deploy/prometheus/alerts_test.yaml");
    let alerts: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    for name in [
        "MeshAgentDown",
        "MeshAgentNotReady",
        "MeshAgentPolicyDropsRising",
        "MeshAgentCertificateNearExpiry",
        "MeshAgentCANearExpiry",
        "MeshAgentRingBufferLoss",
        "MeshAgentConfigReloadFailing",
        "MeshAgentMapNearlyFull",
    ] {
        assert!(alerts.contains(name), "alerts.yaml has no {name}");
    }
    for alert in alerts {
        let lines: Vec<&str> = tests.lines().collect();
        let cases: Vec<bool> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.trim() == format!("alertname: {alert}"))
            .map(|(i, _)| {
                lines
                    .get(i + 1)
                    .is_some_and(|n| n.trim() != "exp_alerts: []")
            })
            .collect();
        assert!(
            cases.contains(&true),
            "alerts_test.yaml: no firing case for {alert}"
        );
        assert!(
            cases.contains(&false),
            "alerts_test.yaml: no not-firing case for {alert}"
        );
    }
    for block in rules.split("- alert:").skip(1) {
        let name = block.lines().next().unwrap_or_default().trim();
        for needle in ["severity:", "summary:", "description:"] {
            assert!(block.contains(needle), "alert {name} has no {needle}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard

const PANEL_TYPES: [&str; 4] = ["timeseries", "stat", "gauge", "table"];

#[test]
fn dashboard_structure() {
    let d = dashboard::load(&dashboard::dashboard_path()).unwrap();
    assert_eq!(d["uid"], "mesh-agent");
    assert_eq!(d["schemaVersion"], 39);
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");

    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let by_name = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let ds = by_name("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for (name, query) in [
        ("instance", "label_values(mesh_agent_build_info, instance)"),
        (
            "namespace",
            "label_values(istio_tcp_connections_opened_total, destination_service_namespace)",
        ),
        (
            "service",
            "label_values(istio_tcp_connections_opened_total{destination_service_namespace=~\"$namespace\"}, destination_service_name)",
        ),
    ] {
        let v = by_name(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["definition"], query, "{name}");
        assert_eq!(v["query"]["query"], query, "{name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
    }
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["includeAll"], true, "{}: includeAll", v["name"]);
        assert_eq!(v["allValue"], ".*", "{}: allValue", v["name"]);
        // Metric names of the variable queries are the contract's too.
        let q = v["definition"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(m, _)| m)
            .unwrap_or_else(|| panic!("{}: not label_values(metric, label)", v["name"]));
        for name in metric_names(inner) {
            assert!(is_contract_metric(&name), "variable query uses {name}");
        }
    }
    let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(
        names.len(),
        names.iter().collect::<BTreeSet<_>>().len(),
        "duplicate variable names"
    );

    // Panels: known types, unique ids, a grid position, the datasource variable.
    let mut ids = BTreeSet::new();
    let top = d["panels"].as_array().expect("panels");
    for p in top {
        assert!(
            p["id"].as_u64().is_some_and(|id| ids.insert(id)),
            "panel id {p}"
        );
        if p["type"] == "row" {
            for nested in p["panels"].as_array().into_iter().flatten() {
                assert!(
                    nested["id"].as_u64().is_some_and(|id| ids.insert(id)),
                    "panel id {nested}"
                );
            }
        }
    }
    let panels = dashboard::panels(&d);
    assert!(panels.len() >= 15, "only {} panels", panels.len());
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "panel without a title: {p}");
        let kind = p["type"].as_str().unwrap_or_default();
        assert!(PANEL_TYPES.contains(&kind), "{title}: panel type {kind}");
        for key in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        let w = p["gridPos"]["w"].as_u64().unwrap();
        let x = p["gridPos"]["x"].as_u64().unwrap();
        assert!(w > 0 && x + w <= 24, "{title}: gridPos {}", p["gridPos"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(
            targets
                .iter()
                .any(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())),
            "{title}: no target with an expr"
        );
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: target");
            assert!(
                t["refId"]
                    .as_str()
                    .is_some_and(|r| refs.insert(r.to_string())),
                "{title}: refId {}",
                t["refId"]
            );
        }
    }
    // The rows the dashboard promises.
    let rows: Vec<&str> = top
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        rows,
        ["Node health", "Services: TCP", "Services: HTTP and gRPC"]
    );
}

#[test]
fn dashboard_queries_use_known_variables_and_metrics() {
    let queries = panel_queries(&dashboard::dashboard_path()).unwrap();
    assert!(!queries.is_empty());
    let mut used_metrics = BTreeSet::new();
    for (title, expr) in &queries {
        for var in variables(expr) {
            assert!(
                KNOWN_VARIABLES.contains(&var.as_str()),
                "{title}: unknown variable ${var} in {expr}"
            );
        }
        // Selector variables only as whole regex matches: `label=~"$var"`.
        for var in SELECTOR_VARIABLES {
            for spelling in [format!("${var}"), format!("${{{var}}}")] {
                for (at, _) in expr.match_indices(&spelling) {
                    let before = &expr[..at];
                    let after = &expr[at + spelling.len()..];
                    assert!(
                        before.ends_with("=~\"") && after.starts_with('"'),
                        "{title}: ${var} must be used as label=~\"${var}\": {expr}"
                    );
                }
            }
        }
        // Ranges only `[$__rate_interval]`.
        for (at, _) in expr.match_indices('[') {
            assert!(
                expr[at..].starts_with("[$__rate_interval]"),
                "{title}: ranges must be [$__rate_interval]: {expr}"
            );
        }
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in names {
            assert!(
                is_contract_metric(&name),
                "{title}: `{name}` is not a metric of the contract: {expr}"
            );
            used_metrics.insert(name);
        }
        let substituted = substitute(expr);
        assert!(
            !substituted.contains('$'),
            "{title}: variables left after substitution: {substituted}"
        );
    }
    // The dashboard covers both families.
    assert!(used_metrics.iter().any(|m| m.starts_with("istio_")));
    assert!(used_metrics.iter().any(|m| m.starts_with("mesh_agent_")));
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool parses the expression of every recording rule: one rule per panel query, with
    // the variables substituted as Grafana would for "All" and a one-minute rate interval.
    let queries = panel_queries(&dashboard::dashboard_path()).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      # {}\n      - record: dashboard:query_{i}\n        expr: {}\n",
            title.replace('\n', " "),
            serde_json::to_string(&substitute(expr)).unwrap()
        ));
    }
    let dir = scratch("promql");
    std::fs::write(dir.join("dashboard_rules.yaml"), &rules).unwrap();
    let out = promtool_ok(&["check", "rules", "dashboard_rules.yaml"], &dir);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
