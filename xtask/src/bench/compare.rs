//! `cargo xtask bench compare [SUITE...]`: reruns the data-path suites and prints each ratio
//! (mesh / direct) beside the committed baseline's, flagging every metric more than 20 %
//! worse; fails when one is. `--record` prints the same table and then writes the new results
//! into the baseline instead of failing.
//!
//! The baseline (`bench/baseline.json`) is a JSON array with one object per line: suite,
//! scenario, metric, unit, which direction is better, the ratio (or, for a mesh-only metric
//! such as agent CPU per request, the mesh value), the date and the machine it was measured on.
//! Ratios, not absolute values, are what carries over between runs on these shared machines.
//!
//! Tail latencies (`*_p99`) and metrics sampled once per round (`first_conn_cold`) are shown
//! but do not fail the comparison: on a shared 2-core VM they swing by more than 20 % from run
//! to run on their own. Mesh-only values (the agents'
//! CPU µs per request, CPU seconds per GB) are shown but do not fail it either: they are
//! absolute and move with the machine; their ratios to the same run's direct figures
//! (`*_cpu_vs_direct`) gate.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Options;

/// Metrics measured once per round: their median of three is as noisy as a tail latency (the
/// direct cold connect alone went from 441 to 911 µs between rounds of one run), so they are
/// shown but do not gate, like the p99s.
const ONE_SAMPLE_PER_ROUND: &[&str] = &["first_conn_cold"];

/// The suites that report mesh / direct ratios.
pub const SUITES: &[&str] = &["l4", "mtls", "http"];
/// How much worse than the baseline a metric may get before the comparison fails.
const WORSE_BY: f64 = 0.20;
const BASELINE: &str = "bench/baseline.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    /// Latencies and costs ("us", "ms", "cpu-s/GB") are better lower; rates better higher.
    fn of_unit(unit: &str) -> Better {
        match unit {
            "us" | "ms" | "s" => Better::Lower,
            u if u.starts_with("cpu") => Better::Lower,
            _ => Better::Higher,
        }
    }
}

/// One line of the baseline, or one result of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub suite: String,
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub better: Better,
    /// mesh / direct; absent for mesh-only metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The mesh value of a mesh-only metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<f64>,
    #[serde(default)]
    pub date: String,
    #[serde(default)]
    pub machine: String,
}

impl Entry {
    fn key(&self) -> (String, String, String) {
        (
            self.suite.clone(),
            self.scenario.clone(),
            self.metric.clone(),
        )
    }

    /// What is compared: the ratio, else the mesh value.
    fn value(&self) -> Option<f64> {
        self.ratio.or(self.mesh)
    }

    /// Whether getting worse fails the comparison: not for tail latencies (on a shared 2-core
    /// VM they swing by more than 20 % on their own) nor for mesh-only values (absolute times
    /// such as CPU µs per request move with the machine's speed; their same-run ratios, the
    /// `*_cpu_vs_direct` metrics, gate instead).
    fn gates(&self) -> bool {
        !self.metric.ends_with("_p99")
            && !ONE_SAMPLE_PER_ROUND.contains(&self.metric.as_str())
            && self.ratio.is_some()
    }
}

/// The comparable results among a suite's `--json` lines: rows with a metric and a ratio,
/// or a mesh-only value; counts are skipped (they say what ran, not how fast).
pub fn results_of(suite: &str, json_lines: &str, date: &str, machine: &str) -> Vec<Entry> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter_map(|v| {
            let metric = v["metric"].as_str()?.to_owned();
            let unit = v["unit"].as_str().unwrap_or("").to_owned();
            if unit == "count" {
                return None;
            }
            let ratio = v["ratio"].as_f64();
            let mesh = if ratio.is_none() {
                Some(v["mesh"].as_f64()?)
            } else {
                None
            };
            Some(Entry {
                suite: suite.to_owned(),
                scenario: v["scenario"].as_str().unwrap_or("mesh").to_owned(),
                better: Better::of_unit(&unit),
                metric,
                unit,
                ratio,
                mesh,
                date: date.to_owned(),
                machine: machine.to_owned(),
            })
        })
        .collect()
}

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Ok,
    /// Worse than the baseline by more than `WORSE_BY`.
    Worse,
    /// Worse by more than `WORSE_BY`, but the metric does not gate (tail latency).
    Noisy,
    New,
}

/// The relative change from `base` to `now`, positive when better.
fn improvement(better: Better, base: f64, now: f64) -> f64 {
    if base == 0.0 {
        return 0.0;
    }
    match better {
        Better::Higher => now / base - 1.0,
        Better::Lower => base / now.max(f64::MIN_POSITIVE) - 1.0,
    }
}

pub fn verdict(base: Option<&Entry>, now: &Entry) -> Verdict {
    let (Some(b), Some(n)) = (base.and_then(Entry::value), now.value()) else {
        return Verdict::New;
    };
    // More than 20 % worse: the new value is below 0.8x (higher-better) or above 1.2x
    // (lower-better) of the baseline's.
    let worse = match now.better {
        Better::Higher => n < b * (1.0 - WORSE_BY),
        Better::Lower => n > b * (1.0 + WORSE_BY),
    };
    match (worse, now.gates()) {
        (false, _) => Verdict::Ok,
        (true, true) => Verdict::Worse,
        (true, false) => Verdict::Noisy,
    }
}

/// The comparison table and whether any gating metric got worse.
pub fn compare(baseline: &[Entry], results: &[Entry]) -> (String, Vec<String>) {
    let base: BTreeMap<_, _> = baseline.iter().map(|e| (e.key(), e)).collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<12} {:<28} {:<7} {:>10} {:>10} {:>8}  verdict",
        "suite", "scenario", "metric", "unit", "baseline", "now", "change"
    );
    let mut worse = Vec::new();
    for now in results {
        let b = base.get(&now.key()).copied();
        let v = verdict(b, now);
        let shown = |e: Option<&Entry>| {
            e.and_then(Entry::value)
                .map_or_else(|| "-".to_owned(), |x| format!("{x:.3}"))
        };
        let change = match (b.and_then(Entry::value), now.value()) {
            (Some(b), Some(n)) => format!("{:+.0}%", improvement(now.better, b, n) * 100.0),
            _ => "-".to_owned(),
        };
        let what = if now.ratio.is_some() {
            "x".to_owned()
        } else {
            now.unit.clone()
        };
        let label = match v {
            Verdict::Ok => "ok",
            Verdict::Worse => "WORSE (more than 20 % below the baseline)",
            Verdict::Noisy if now.ratio.is_none() => "worse, absolute value (not gating)",
            Verdict::Noisy if ONE_SAMPLE_PER_ROUND.contains(&now.metric.as_str()) => {
                "worse, one sample per round (not gating)"
            }
            Verdict::Noisy => "worse, tail latency (not gating)",
            Verdict::New => "new (not in the baseline)",
        };
        let _ = writeln!(
            out,
            "{:<6} {:<12} {:<28} {:<7} {:>10} {:>10} {:>8}  {label}",
            now.suite,
            now.scenario,
            now.metric,
            what,
            shown(b),
            shown(Some(now)),
            change
        );
        if v == Verdict::Worse {
            worse.push(format!("{} {} {}", now.suite, now.scenario, now.metric));
        }
    }
    let measured: Vec<_> = results.iter().map(Entry::key).collect();
    let suites: Vec<&str> = results.iter().map(|e| e.suite.as_str()).collect();
    for b in baseline {
        if suites.contains(&b.suite.as_str()) && !measured.contains(&b.key()) {
            let _ = writeln!(
                out,
                "{:<6} {:<12} {:<28} not measured in this run (in the baseline)",
                b.suite, b.scenario, b.metric
            );
        }
    }
    let _ = writeln!(
        out,
        "change: + is better; ratios are mesh / direct (x), mesh-only metrics in their unit"
    );
    (out, worse)
}

fn baseline_path(workspace: &Path) -> PathBuf {
    workspace.join(BASELINE)
}

pub fn read_baseline(path: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (record one with --record)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// One object per line, so that a change of the baseline reads as a diff of the lines that
/// changed.
pub fn render_baseline(entries: &[Entry]) -> Result<String> {
    let mut out = String::from("[\n");
    for (i, e) in entries.iter().enumerate() {
        out += "  ";
        out += &serde_json::to_string(e)?;
        out += if i + 1 < entries.len() { ",\n" } else { "\n" };
    }
    out += "]\n";
    Ok(out)
}

/// `date -u +%F`.
fn today() -> String {
    Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The CPU model, core count and kernel: what makes a machine "like this one".
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {model}, Linux {}", kernel.trim())
}

/// Runs `cargo xtask bench SUITE --json` as a child (the suites print their results; a child
/// keeps their output apart from this table) and returns its results.
fn run_suite(suite: &str, options: &Options, date: &str, machine: &str) -> Result<Vec<Entry>> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", suite, "--json"]);
    if let Some(n) = options.rounds {
        cmd.args(["--rounds", &n.to_string()]);
    }
    // The agent this run measures (the build, or --agent), so the child measures the same.
    if let Some(agent) = std::env::var_os("MESH_AGENT_BIN") {
        cmd.arg("--agent").arg(agent);
    }
    eprintln!("bench compare: running {suite}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running bench {suite}"))?;
    ensure!(
        out.status.success(),
        "bench {suite} failed ({})",
        out.status
    );
    let results = results_of(suite, &String::from_utf8_lossy(&out.stdout), date, machine);
    ensure!(!results.is_empty(), "bench {suite} reported no ratio");
    Ok(results)
}

pub fn run(workspace: &Path, suites: &[String], options: &Options) -> Result<()> {
    let suites: Vec<&str> = if suites.is_empty() {
        SUITES.to_vec()
    } else {
        suites.iter().map(String::as_str).collect()
    };
    for s in &suites {
        ensure!(
            SUITES.contains(s),
            "bench compare knows {} (suites with mesh / direct ratios); not {s}",
            SUITES.join(", ")
        );
    }
    let path = baseline_path(workspace);
    let (date, machine) = (today(), machine());
    let mut results = Vec::new();
    for suite in &suites {
        results.extend(run_suite(suite, options, &date, &machine)?);
    }
    if options.record {
        let mut entries: Vec<Entry> = match path.exists() {
            true => read_baseline(&path)?,
            false => Vec::new(),
        };
        // What the recorded run changes, against the baseline it replaces (one run gives the
        // change's table and its new baseline).
        if !entries.is_empty() {
            let (table, _) = compare(&entries, &results);
            print!("{table}");
        }
        entries.retain(|e| !suites.contains(&e.suite.as_str()));
        entries.extend(results);
        entries.sort_by_key(Entry::key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, render_baseline(&entries)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "bench compare: recorded {} for {} in {}",
            suites.join(", "),
            machine,
            path.display()
        );
        return Ok(());
    }
    let baseline = read_baseline(&path)?;
    let (table, worse) = compare(&baseline, &results);
    print!("{table}");
    if !worse.is_empty() {
        bail!(
            "{} metric(s) more than 20 % worse than {}: {}",
            worse.len(),
            BASELINE,
            worse.join(", ")
        );
    }
    println!("bench compare: no metric more than 20 % worse than {BASELINE}");
    Ok(())
}

/// The guard's own test: `bench compare http` against `planted`, an agent build that burns CPU
/// on every request, must fail and name what got worse. A guard that lets a planted slowdown
/// through guards nothing.
pub fn planted_slowdown_is_flagged(planted: &Path) -> Result<()> {
    ensure!(
        planted.exists(),
        "{} not found (the workspace build makes it)",
        planted.display()
    );
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let out = Command::new(exe)
        .args(["bench", "compare", "http", "--rounds", "1", "--agent"])
        .arg(planted)
        .env("MESH_AGENT_PLANTED_DELAY_US", "1000")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running bench compare with the planted agent")?;
    let table = String::from_utf8_lossy(&out.stdout);
    print!("{table}");
    ensure!(
        !out.status.success(),
        "bench compare passed an agent that burns 1 ms per request"
    );
    ensure!(
        table.contains("WORSE"),
        "bench compare failed without flagging a metric ({}):\n{table}",
        out.status
    );
    println!("bench-guard: the planted slowdown was flagged");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(metric: &str, unit: &str, ratio: Option<f64>, mesh: Option<f64>) -> Entry {
        Entry {
            suite: "http".into(),
            scenario: "mesh".into(),
            metric: metric.into(),
            unit: unit.into(),
            better: Better::of_unit(unit),
            ratio,
            mesh,
            date: String::new(),
            machine: String::new(),
        }
    }

    #[test]
    fn results_come_from_the_json_lines() {
        let lines = r#"not json
{"suite":"http","metric":"h1_sat_rps","unit":"req/s","direct":100.0,"mesh":30.0,"ratio":0.3}
{"suite":"http","metric":"h1_sat_requests","unit":"count","direct":5,"mesh":2,"ratio":0.4}
{"suite":"http","metric":"h1_agent_cpu_per_req","unit":"us","direct":null,"mesh":90.0,"ratio":null}
{"scenario":"kernel","metric":"rr_p50","unit":"us","direct":10.0,"mesh":10.0,"ratio":1.0}"#;
        let r = results_of("http", lines, "2026-12-02", "m");
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(r[0].ratio, Some(0.3));
        assert_eq!(r[0].better, Better::Higher);
        assert_eq!(r[1].metric, "h1_agent_cpu_per_req");
        assert_eq!((r[1].ratio, r[1].mesh), (None, Some(90.0)));
        assert_eq!(r[1].better, Better::Lower);
        assert_eq!(r[2].scenario, "kernel");
    }

    #[test]
    fn more_than_20_percent_worse_is_flagged_in_either_direction() {
        let rps = |r| entry("h1_sat_rps", "req/s", Some(r), None);
        assert_eq!(verdict(Some(&rps(0.30)), &rps(0.25)), Verdict::Ok);
        assert_eq!(verdict(Some(&rps(0.30)), &rps(0.23)), Verdict::Worse);
        assert_eq!(verdict(Some(&rps(0.30)), &rps(0.60)), Verdict::Ok);
        let p50 = |r| entry("rr_p50", "us", Some(r), None);
        assert_eq!(verdict(Some(&p50(1.40)), &p50(1.60)), Verdict::Ok);
        assert_eq!(verdict(Some(&p50(1.40)), &p50(1.70)), Verdict::Worse);
        assert_eq!(verdict(Some(&p50(1.40)), &p50(1.00)), Verdict::Ok);
        // Absolute CPU times are shown, not gating; their same-run ratios gate.
        let cpu = |v| entry("h1_agent_cpu_per_req", "us", None, Some(v));
        assert_eq!(verdict(Some(&cpu(90.0)), &cpu(150.0)), Verdict::Noisy);
        assert_eq!(verdict(Some(&cpu(90.0)), &cpu(95.0)), Verdict::Ok);
        let cpu_gb = |v| entry("agent_cpu_per_gb", "cpu-s/GB", None, Some(v));
        assert_eq!(verdict(Some(&cpu_gb(1.9)), &cpu_gb(2.5)), Verdict::Noisy);
        let cpu_ratio = |r| entry("h1_agent_cpu_vs_direct", "cpu-us", Some(r), None);
        assert_eq!(cpu_ratio(1.0).better, Better::Lower);
        assert_eq!(verdict(Some(&cpu_ratio(4.0)), &cpu_ratio(4.5)), Verdict::Ok);
        assert_eq!(
            verdict(Some(&cpu_ratio(4.0)), &cpu_ratio(5.0)),
            Verdict::Worse
        );
        let p99 = |r| entry("rr_p99", "us", Some(r), None);
        assert_eq!(verdict(Some(&p99(1.0)), &p99(2.0)), Verdict::Noisy);
        let cold = |r| entry("first_conn_cold", "us", Some(r), None);
        assert_eq!(verdict(Some(&cold(1.0)), &cold(2.0)), Verdict::Noisy);
        assert_eq!(verdict(None, &rps(0.1)), Verdict::New);
    }

    #[test]
    fn the_table_names_what_got_worse() {
        let baseline = vec![
            entry("h1_sat_rps", "req/s", Some(0.30), None),
            entry("h2c_sat_rps", "req/s", Some(0.30), None),
            entry("gone", "req/s", Some(0.30), None),
        ];
        let results = vec![
            entry("h1_sat_rps", "req/s", Some(0.10), None),
            entry("h2c_sat_rps", "req/s", Some(0.31), None),
        ];
        let (table, worse) = compare(&baseline, &results);
        assert_eq!(worse, ["http mesh h1_sat_rps"]);
        assert!(table.contains("WORSE"), "{table}");
        assert!(table.contains("-67%"), "{table}");
        assert!(
            table.contains("gone") && table.contains("not measured"),
            "{table}"
        );
    }

    #[test]
    fn the_baseline_is_one_line_per_metric_and_reads_back() {
        let entries = vec![
            entry("a", "us", Some(1.5), None),
            entry("b", "us", None, Some(80.0)),
        ];
        let text = render_baseline(&entries).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baseline.json");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(read_baseline(&path).unwrap(), entries);
    }

    #[test]
    fn the_committed_baseline_parses_and_covers_every_compared_suite() {
        let path = baseline_path(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap());
        let entries = read_baseline(&path).unwrap();
        for suite in SUITES {
            assert!(
                entries.iter().any(|e| e.suite == *suite),
                "no {suite} line in {}",
                path.display()
            );
        }
        assert!(
            entries
                .iter()
                .all(|e| e.value().is_some() && !e.date.is_empty())
        );
    }
}
