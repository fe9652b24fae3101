//! A real Prometheus server (Debian's `/usr/bin/prometheus`) inside a network namespace of the
//! simulated cluster, scraping the agents' `/metrics`, and the checks the observability tests
//! run on what it sees: PromQL queries through its HTTP API, `promtool check metrics` on an
//! exposition, Python's strict OpenMetrics parser, and a small parser of the Prometheus text
//! format for exact label-set checks.
//!
//! Processes follow the simulation's conventions: Prometheus is started with [`Sim::spawn`]
//! (its own cgroup under the sim's, logs under `<sim dir>/logs`), killed when the
//! [`Prometheus`] value drops, and in any case by the sim's teardown, which kills its whole
//! cgroup subtree. Its TSDB lives under the sim's directory, which is kept when a test fails.
//!
//! Queries and plain HTTP GETs run `curl` under `nsenter --net=<netns>`, in the test process's
//! own cgroup: outside every node cgroup, so no mesh program sees them (like
//! `Sim::wait_for_tcp`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::sim::{Placement, Proc, Sim};

/// Debian's Prometheus server and its promtool (package `prometheus`; `cargo xtask setup`
/// installs it).
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
pub const PROMTOOL_BIN: &str = "/usr/bin/promtool";
/// Debian's interpreter, which has python3-prometheus-client (the one on PATH may be another).
pub const PYTHON: &str = "/usr/bin/python3";
/// The scrape job of the generated configuration.
pub const JOB: &str = "mesh-agent";
/// `scrape_interval` (and `scrape_timeout`) of the generated configuration.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// One PromQL result: the series' labels (`__name__` included when the expression keeps it)
/// and its value.
pub type QuerySample = (BTreeMap<String, String>, f64);

/// A running Prometheus server. Dropping it stops the server (SIGTERM, then SIGKILL).
pub struct Prometheus {
    proc: Proc,
    /// `127.0.0.1:<port>` inside `netns_path`.
    pub listen: SocketAddr,
    pub netns_path: PathBuf,
    pub targets: Vec<SocketAddr>,
    /// The generated prometheus.yml.
    pub config_path: PathBuf,
    pub storage: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `placement` (cgroup and netns; use one outside every node cgroup,
    /// e.g. `Mesh::outside`, so its own scrapes are not mesh traffic) with one job
    /// ([`JOB`]) scraping `http://<target>/metrics` every second. It listens on 127.0.0.1 on a
    /// port that is free in that namespace. Returns at once; see [`Prometheus::wait_until_ready`].
    pub fn start(sim: &Sim, placement: &Placement, targets: &[SocketAddr]) -> Result<Prometheus> {
        let port = free_port_in(&placement.netns_path)?;
        Prometheus::start_on(sim, placement, port, targets)
    }

    /// Like [`Prometheus::start`] on a given port (to scrape itself, say).
    pub fn start_on(
        sim: &Sim,
        placement: &Placement,
        port: u16,
        targets: &[SocketAddr],
    ) -> Result<Prometheus> {
        ensure!(
            Path::new(PROMETHEUS_BIN).exists(),
            "{PROMETHEUS_BIN} not found: install Debian's prometheus package (`cargo xtask setup`)"
        );
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = sim.dir().join(format!("prometheus-{n}"));
        let storage = dir.join("data");
        std::fs::create_dir_all(&storage)
            .with_context(|| format!("creating {}", storage.display()))?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, render_config(targets))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let args = [
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", storage.display()),
            format!("--web.listen-address={listen}"),
            // Nothing outlives the test; keep the TSDB small and quiet.
            "--storage.tsdb.retention.time=1h".to_string(),
            "--log.level=warn".to_string(),
        ];
        let proc = sim
            .spawn(placement, PROMETHEUS_BIN, &args)
            .context("starting prometheus")?;
        Ok(Prometheus {
            proc,
            listen,
            netns_path: placement.netns_path.clone(),
            targets: targets.to_vec(),
            config_path,
            storage,
        })
    }

    /// `http://127.0.0.1:<port>`, reachable from inside [`Prometheus::netns_path`] only.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Prometheus's stdout and stderr, labelled.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    fn exited(&mut self) -> Result<()> {
        if let Some(status) = self.proc.try_wait()? {
            bail!("prometheus exited with {status}\n{}", self.logs());
        }
        Ok(())
    }

    /// Polls `/-/ready` until it answers 200 (the TSDB is open and the web API serves).
    pub fn wait_until_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/-/ready", self.url());
        loop {
            self.exited()?;
            let last = match http_get_in(&self.netns_path, &url, None) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("status {}: {}", r.status, r.body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready after {timeout:?} (last: {last})\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The job's active targets as (scrape URL, health, last error).
    pub fn targets_health(&self) -> Result<Vec<(String, String, String)>> {
        let data = self.api("/api/v1/targets", &[("state", "active")])?;
        let targets = data["activeTargets"]
            .as_array()
            .with_context(|| format!("no activeTargets in {data}"))?;
        Ok(targets
            .iter()
            .filter(|t| t["labels"]["job"] == JOB)
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                (s("scrapeUrl"), s("health"), s("lastError"))
            })
            .collect())
    }

    /// Waits until exactly `n` targets of the job are up (scraped successfully at least
    /// once); on timeout the error lists every target with its health and last error.
    pub fn wait_for_targets_up(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.exited()?;
            let targets = self.targets_health()?;
            let up = targets.iter().filter(|t| t.1 == "up").count();
            if up == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                let list: Vec<String> = targets
                    .iter()
                    .map(|(url, health, err)| format!("{url}: {health} {err}"))
                    .collect();
                bail!(
                    "{up} of the expected {n} targets up after {timeout:?}: [{}]",
                    list.join("; ")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GET an API path with query parameters; returns `data` of a successful answer.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let url = format!("{}{path}", self.url());
        let mut args: Vec<String> = vec!["-G".into()];
        for (k, v) in params {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        let reply = curl_in(&self.netns_path, &url, &args)?;
        let v: Value = serde_json::from_str(&reply.body).with_context(|| {
            format!(
                "GET {path} {params:?}: status {}, not JSON: {}",
                reply.status, reply.body
            )
        })?;
        ensure!(
            v["status"] == "success",
            "GET {path} {params:?}: {} {}: {}",
            v["errorType"].as_str().unwrap_or_default(),
            v["error"].as_str().unwrap_or_default(),
            reply.body
        );
        Ok(v["data"].clone())
    }

    /// An instant query (`/api/v1/query`) at the current time. A scalar result is one sample
    /// without labels; strings and range vectors are errors.
    pub fn query(&self, expr: &str) -> Result<Vec<QuerySample>> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        parse_query_data(&data).with_context(|| format!("query {expr}"))
    }

    /// The sum of every value of `query(expr)`; `None` when no series matched.
    pub fn query_scalar_sum(&self, expr: &str) -> Result<Option<f64>> {
        let samples = self.query(expr)?;
        if samples.is_empty() {
            return Ok(None);
        }
        Ok(Some(samples.iter().map(|(_, v)| v).sum()))
    }

    /// Polls `expr` (every 200 ms) until the sum of its result equals `expected` exactly.
    /// On timeout the error says what the last answer was ("no series" included), and the
    /// series seen then.
    pub fn wait_for(&self, expr: &str, expected: f64, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let samples = self.query(expr)?;
            let sum: Option<f64> =
                (!samples.is_empty()).then(|| samples.iter().map(|(_, v)| v).sum());
            if sum == Some(expected) {
                return Ok(expected);
            }
            if Instant::now() > deadline {
                let got = match sum {
                    Some(v) => v.to_string(),
                    None => "no series".to_string(),
                };
                let mut shown = String::new();
                for (labels, v) in samples.iter().take(20) {
                    let _ = writeln!(shown, "    {v} {}", show_labels(labels));
                }
                bail!("`{expr}`: expected {expected}, got {got} after {timeout:?}\n{shown}",);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Label sets of every series matching the selector (`/api/v1/series`), over the last
    /// five minutes.
    pub fn series(&self, selector: &str) -> Result<Vec<BTreeMap<String, String>>> {
        let start = (std::time::SystemTime::now() - Duration::from_secs(300))
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default();
        let data = self.api(
            "/api/v1/series",
            &[("match[]", selector), ("start", &start)],
        )?;
        let list = data
            .as_array()
            .with_context(|| format!("series {selector}: not a list: {data}"))?;
        list.iter()
            .map(|s| {
                s.as_object()
                    .with_context(|| format!("series {selector}: not an object: {s}"))
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
            })
            .collect()
    }

    /// The metadata Prometheus learnt from the targets' `# TYPE` lines: name -> type.
    pub fn metadata_types(&self) -> Result<BTreeMap<String, String>> {
        let data = self.api("/api/v1/metadata", &[])?;
        let map = data
            .as_object()
            .with_context(|| format!("metadata: not an object: {data}"))?;
        Ok(map
            .iter()
            .filter_map(|(name, entries)| {
                let kind = entries.as_array()?.first()?["type"].as_str()?;
                Some((name.clone(), kind.to_string()))
            })
            .collect())
    }
}

/// `{a="1", b="2"}` for messages.
pub fn show_labels(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// The generated prometheus.yml: one job, static targets, 1 s scrapes.
pub fn render_config(targets: &[SocketAddr]) -> String {
    let secs = SCRAPE_INTERVAL.as_secs();
    let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\n  \
         evaluation_interval: {secs}s\nscrape_configs:\n  - job_name: {JOB}\n    \
         metrics_path: /metrics\n    static_configs:\n      - targets: [{}]\n",
        list.join(", ")
    )
}

/// `data` of a query answer as samples.
pub fn parse_query_data(data: &Value) -> Result<Vec<QuerySample>> {
    let value_of = |pair: &Value| -> Result<f64> {
        let text = pair[1]
            .as_str()
            .with_context(|| format!("no value in {pair}"))?;
        text.parse::<f64>()
            .with_context(|| format!("bad sample value {text:?}"))
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .with_context(|| format!("no result list in {data}"))?
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((labels, value_of(&s["value"])?))
            })
            .collect(),
        Some("scalar") => Ok(vec![(BTreeMap::new(), value_of(&data["result"])?)]),
        other => bail!("unsupported result type {other:?}: {data}"),
    }
}

/// A port nobody listens on at 127.0.0.1 inside the namespace (bound and released by a
/// thread that joins the namespace; nothing else runs in it).
pub fn free_port_in(netns_path: &Path) -> Result<u16> {
    use nix::sched::{CloneFlags, setns};
    let ns = File::open(netns_path)
        .with_context(|| format!("opening netns {}", netns_path.display()))?;
    std::thread::Builder::new()
        .name("free-port".into())
        .spawn(move || -> Result<u16> {
            setns(&ns, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
            Ok(l.local_addr()?.port())
        })
        .context("spawning free-port thread")?
        .join()
        .map_err(|_| anyhow!("free-port thread panicked"))?
}

/// Status, content type and body of an HTTP response.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// Marks the end of the body in curl's output; the status and content type follow it.
const TRAILER: &str = "\n--mesh-curl-trailer-- ";

/// `curl ARGS URL` run under `nsenter --net=NETNS`; a transport failure is an error, any
/// HTTP status is a reply.
pub fn curl_in(netns_path: &Path, url: &str, args: &[String]) -> Result<HttpReply> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns_path.display()))
        .args(["--", "curl", "-sS", "-m", "10"])
        .args(args)
        .args(["-w", &format!("{TRAILER}%{{http_code}} %{{content_type}}")])
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running curl {url} in {}", netns_path.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "curl {url} in {}: {} {}",
        netns_path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let (body, trailer) = stdout
        .rsplit_once(TRAILER)
        .with_context(|| format!("curl {url}: no status in output {stdout:?}"))?;
    let (status, content_type) = trailer.split_once(' ').unwrap_or((trailer, ""));
    Ok(HttpReply {
        status: status
            .trim()
            .parse()
            .with_context(|| format!("curl {url}: bad status {status:?}"))?,
        content_type: content_type.trim().to_string(),
        body: body.to_string(),
    })
}

/// GET `url` from inside the namespace, with an `Accept` header when given.
pub fn http_get_in(netns_path: &Path, url: &str, accept: Option<&str>) -> Result<HttpReply> {
    let mut args = Vec::new();
    if let Some(accept) = accept {
        args.push("-H".to_string());
        args.push(format!("Accept: {accept}"));
    }
    curl_in(netns_path, url, &args)
}

/// `promtool check metrics` on an exposition (fed on stdin): an error, with promtool's
/// output, if it exits non-zero or prints anything (each lint problem is one line).
pub fn promtool_check_metrics(text: &str) -> Result<()> {
    promtool_check_metrics_allowing(text, &[])
}

/// Like [`promtool_check_metrics`], but the problem lines listed in `allowed` (exactly as
/// promtool prints them) are tolerated: for names a compatibility contract fixes although
/// promtool's lint dislikes them (Istio's `istio_request_duration_milliseconds`). Any other
/// line, or a failure to parse, is an error.
pub fn promtool_check_metrics_allowing(text: &str, allowed: &[&str]) -> Result<()> {
    let (status, stdout, stderr) = run_with_stdin(PROMTOOL_BIN, &["check", "metrics"], text)?;
    let printed: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let problems: Vec<&str> = printed
        .iter()
        .copied()
        .filter(|l| !allowed.contains(l))
        .collect();
    // promtool exits 3 for lint problems only, 1 when it cannot parse the input.
    let status_ok = status == Some(0) || (status == Some(3) && !printed.is_empty());
    ensure!(
        status_ok && problems.is_empty(),
        "promtool check metrics: exit {status:?}, {} problem line(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
    Ok(())
}

/// What Python's strict OpenMetrics parser (`prometheus_client.openmetrics.parser`) made of
/// an exposition: one entry per family.
#[derive(Debug, Clone, PartialEq)]
pub struct OmFamily {
    pub name: String,
    pub kind: String,
    /// (sample name, labels, value) in exposition order.
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

const OPENMETRICS_SCRIPT: &str = r#"
import json, math, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = sys.stdin.read()
out = []
for f in text_string_to_metric_families(text):
    out.append({"name": f.name, "type": f.type, "samples": [
        [s.name, s.labels, None if math.isnan(s.value) else s.value] for s in f.samples]})
print(json.dumps(out))
"#;

/// Parses an OpenMetrics exposition with Python's strict parser (Debian's
/// python3-prometheus-client); an error with the parser's message if it rejects it (the
/// parser also insists on the final `# EOF`).
pub fn openmetrics_parse(text: &str) -> Result<Vec<OmFamily>> {
    let (status, stdout, stderr) = run_with_stdin(PYTHON, &["-c", OPENMETRICS_SCRIPT], text)?;
    ensure!(
        status == Some(0),
        "the strict OpenMetrics parser rejected the exposition (exit {status:?}):\n{}",
        stderr.trim()
    );
    let v: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("parser output is not JSON: {stdout}"))?;
    let families = v.as_array().context("parser output is not a list")?;
    families
        .iter()
        .map(|f| {
            let samples = f["samples"]
                .as_array()
                .context("no samples")?
                .iter()
                .map(|s| {
                    let labels = s[1]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| {
                                    (k.clone(), v.as_str().unwrap_or_default().to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        s[0].as_str().unwrap_or_default().to_string(),
                        labels,
                        s[2].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect();
            Ok(OmFamily {
                name: f["name"].as_str().unwrap_or_default().to_string(),
                kind: f["type"].as_str().unwrap_or_default().to_string(),
                samples,
            })
        })
        .collect()
}

/// Runs `program args` with `input` on stdin; (exit code, stdout, stderr).
fn run_with_stdin(
    program: &str,
    args: &[&str],
    input: &str,
) -> Result<(Option<i32>, String, String)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_string();
    // Written from a thread: a child that prints a lot before reading all of its input
    // would otherwise deadlock against us.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    let _ = writer.join();
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// One metric family of a Prometheus text exposition (format 0.0.4).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Family {
    pub name: String,
    /// From `# TYPE`; "untyped" when absent.
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// One sample line; labels in the order they appear.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn label_names(&self) -> Vec<&str> {
        self.labels.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Parses the Prometheus text format (and the sample lines of OpenMetrics, which share the
/// syntax; `# EOF`, `# UNIT` and exemplars are skipped). Samples belong to the family of the
/// last `# TYPE`/`# HELP` whose name is a prefix of theirs (`_bucket`, `_sum`, ...), else to a
/// family of their own.
pub fn parse_exposition(text: &str) -> Result<Vec<Family>> {
    let mut families: Vec<Family> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let context = || format!("line {}: {line:?}", i + 1);
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let keyword = words.next().unwrap_or_default();
            let name = words.next().unwrap_or_default().to_string();
            let rest = words.next().unwrap_or_default().to_string();
            if keyword != "TYPE" && keyword != "HELP" {
                continue;
            }
            if families.last().is_none_or(|f| f.name != name) {
                families.push(Family {
                    name: name.clone(),
                    kind: "untyped".into(),
                    ..Family::default()
                });
            }
            let family = families.last_mut().expect("pushed");
            if keyword == "TYPE" {
                family.kind = rest;
            } else {
                family.help = Some(rest);
            }
            continue;
        }
        let sample = parse_sample(line).with_context(context)?;
        let belongs = families.last().is_some_and(|f| {
            sample.name == f.name
                || sample
                    .name
                    .strip_prefix(f.name.as_str())
                    .is_some_and(|suffix| suffix.starts_with('_'))
        });
        if !belongs {
            families.push(Family {
                name: sample.name.clone(),
                kind: "untyped".into(),
                ..Family::default()
            });
        }
        families.last_mut().expect("pushed").samples.push(sample);
    }
    Ok(families)
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line.find(['{', ' ']).context("no value")?;
    let name = line[..name_end].to_string();
    ensure!(!name.is_empty(), "empty metric name");
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end;
        loop {
            // Skip separators.
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(&(start, c)) = chars.peek() else {
                bail!("unterminated label set");
            };
            if c == '}' {
                end = start + 1;
                break;
            }
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            ensure!(chars.next().map(|x| x.1) == Some('='), "no '=' after {key}");
            ensure!(
                chars.next().map(|x| x.1) == Some('"'),
                "label {key}: no opening quote"
            );
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, '\\')) => value.push('\\'),
                        other => bail!("label {key}: bad escape {other:?}"),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => bail!("label {key}: unterminated value"),
                }
            }
            labels.push((key.trim().to_string(), value));
        }
        rest = &body[end..];
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .context("no value after the labels")?;
    let value = value_text
        .parse::<f64>()
        .with_context(|| format!("bad value {value_text:?}"))?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_has_one_job_with_static_targets() {
        let c = render_config(&[
            "10.200.0.1:15020".parse().unwrap(),
            "10.200.0.2:15020".parse().unwrap(),
        ]);
        assert!(c.contains("scrape_interval: 1s"), "{c}");
        assert!(c.contains("scrape_timeout: 1s"), "{c}");
        assert!(c.contains("- job_name: mesh-agent"), "{c}");
        assert!(
            c.contains("targets: ['10.200.0.1:15020', '10.200.0.2:15020']"),
            "{c}"
        );
    }

    #[test]
    fn query_answers_are_parsed() {
        let data = json!({"resultType": "vector", "result": [
            {"metric": {"__name__": "up", "job": "mesh-agent"}, "value": [1.5, "1"]},
            {"metric": {}, "value": [1.5, "NaN"]},
            {"metric": {"a": "b"}, "value": [1.5, "+Inf"]},
        ]});
        let s = parse_query_data(&data).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].0["job"], "mesh-agent");
        assert_eq!(s[0].1, 1.0);
        assert!(s[1].1.is_nan());
        assert_eq!(s[2].1, f64::INFINITY);
        let scalar = json!({"resultType": "scalar", "result": [1.5, "42"]});
        assert_eq!(
            parse_query_data(&scalar).unwrap(),
            vec![(BTreeMap::new(), 42.0)]
        );
        assert!(parse_query_data(&json!({"resultType": "matrix", "result": []})).is_err());
    }

    #[test]
    fn exposition_is_parsed_with_label_order_and_escapes() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\n\
                    a_total{x=\"1\",y=\"q\\\"uo\\\\te\\n\",z=\"\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                    h_sum 0.7\nh_count 2\nloose 1.5e3\n# EOF\n";
        let f = parse_exposition(text).unwrap();
        assert_eq!(f.len(), 3, "{f:#?}");
        assert_eq!(
            (f[0].name.as_str(), f[0].kind.as_str()),
            ("a_total", "counter")
        );
        assert_eq!(f[0].help.as_deref(), Some("Things."));
        let s = &f[0].samples[0];
        assert_eq!(s.label_names(), ["x", "y", "z"]);
        assert_eq!(s.label("y"), Some("q\"uo\\te\n"));
        assert_eq!(s.label("z"), Some(""));
        assert_eq!(s.value, 3.0);
        assert_eq!(f[1].samples.len(), 4);
        assert_eq!(f[1].samples[1].value, 2.0);
        assert_eq!(f[1].samples[1].label("le"), Some("+Inf"));
        assert_eq!(
            (f[2].name.as_str(), f[2].kind.as_str()),
            ("loose", "untyped")
        );
        assert_eq!(f[2].samples[0].value, 1500.0);
        assert!(parse_exposition("a{x=\"1} 2\n").is_err());
        assert!(parse_exposition("a{x=\"1\"}\n").is_err());
    }
}
