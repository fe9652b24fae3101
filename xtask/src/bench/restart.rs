//! `cargo xtask bench restart`: what restarting the agents costs the traffic they carry.
//!
//! Two nodes; on node1 a client pod, on node2 an http-backend (an `http2` service, through
//! the L7 path) and an echo server (a `tcp` service). While a steady h2load (h2c, fixed rate),
//! a long bulk transfer (checksummed both ways), an HTTP/2 connection with a request every
//! 20 ms and a loop of new connections run, the agents are replaced ten times, node2 and
//! node1 in turn, each time by a new agent started beside the running one (the handover).
//! Reported: failed requests and connections, resets, and the longest stall of any stream
//! (the slowest HTTP/2 request, and the longest pause of the bulk stream); goal: 0 failures,
//! 0 resets, p99 stall under 50 ms. There is no direct run to compare with: the numbers are
//! absolute counts, and the stalls absolute times on a shared machine.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use mesh_tests::mesh::{Mesh, MeshSpec, ServiceSpec, parse_last_json};
use mesh_tests::sim::Proc;
use serde_json::{Value, json};

use super::{median, release_binaries};

const RESTARTS: usize = 10;
/// errno of a connection reset by the peer (Linux).
const ECONNRESET: i64 = 104;
const WEB_VIP: &str = "10.96.9.10";
const ECHO_VIP: &str = "10.96.9.30";
/// Long enough to outlast the ten restarts (about 3.5 s per GiB alone; slower under the
/// other load and the restarts).
const BULK_BYTES: u64 = 16 << 30;
/// h2load: 4 connections at 50 requests/s each.
const H2LOAD_CLIENTS: &str = "4";
const H2LOAD_RPS: &str = "50";
/// Seconds of each h2load run of the chain.
const H2LOAD_RUN: u64 = 3;

struct Restart {
    node: &'static str,
    /// From starting the new agent to its "ready" line.
    ready_ms: f64,
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Waits for a replaced agent to drain and exit; whether it drained (not timed out).
fn wait_drained(old: &mut Proc, limit: Duration) -> Result<bool> {
    let logs = mesh_tests::mesh::wait_replaced_exit(old, limit)?;
    Ok(logs.contains("drained: every connection ended"))
}

pub fn run(json_out: bool) -> Result<()> {
    let bins = release_binaries()?;
    let mut mesh = Mesh::new("bench-restart", bins)?;
    mesh.sim.add_pod("node1", "client")?;
    mesh.sim.add_pod("node2", "web")?;
    mesh.sim.add_pod("node2", "echo")?;
    let spec = MeshSpec {
        services: vec![
            ServiceSpec::new("web", WEB_VIP.parse()?, 80, 8080, &["web"]).protocol("http2"),
            ServiceSpec::new("echo", ECHO_VIP.parse()?, 9000, 9000, &["echo"]),
        ],
        // The replaced agents must finish the bulk stream, not cut it.
        drain_timeout: Some("10m".into()),
        ..MeshSpec::default()
    };
    let _web = mesh.serve(
        "web",
        &["http-backend", "--listen", "0.0.0.0:8080", "--name", "web"],
    )?;
    let _echo = mesh.serve("echo", &["echo-server", "--listen", "0.0.0.0:9000"])?;
    mesh.start_agent("node1", &spec)?;
    mesh.start_agent("node2", &spec)?;
    eprintln!("restart bench: {RESTARTS} agent replacements under load");

    let seconds = (RESTARTS as u64 * 2 + 6).to_string();
    let client = mesh.placement("client");
    // h2load ends a connection on GOAWAY instead of opening another (a replaced node1 agent
    // sends one), so the steady load is a chain of short h2load runs, each counted.
    let script = format!(
        "end=$(( $(date +%s) + {seconds} )); while [ $(date +%s) -lt $end ]; do \
         h2load -D {H2LOAD_RUN} -c {H2LOAD_CLIENTS} --rps {H2LOAD_RPS} http://{WEB_VIP}/echo; done"
    );
    let mut h2load = mesh.sim.spawn(&client, "sh", ["-c", script.as_str()])?;
    let mut bulk = mesh.spawn_probe(
        "client",
        &[
            "transfer",
            "--connect",
            &format!("{ECHO_VIP}:9000"),
            "--bytes",
            &BULK_BYTES.to_string(),
            "--idle-timeout-ms",
            "30000",
        ],
    )?;
    let mut h2 = mesh.spawn_probe(
        "client",
        &[
            "h2-loop",
            "--connect",
            &format!("{WEB_VIP}:80"),
            "--authority",
            "web",
            "--seconds",
            seconds.as_str(),
            "--interval-ms",
            "20",
        ],
    )?;
    let mut dials = mesh.spawn_probe(
        "client",
        &[
            "dial-loop",
            "--connect",
            &format!("{ECHO_VIP}:9000"),
            "--seconds",
            seconds.as_str(),
            "--interval-ms",
            "20",
            "--timeout-ms",
            "3000",
        ],
    )?;

    std::thread::sleep(Duration::from_secs(3));
    let mut restarts = Vec::new();
    let mut olds = Vec::new();
    for i in 0..RESTARTS {
        let node = if i % 2 == 0 { "node2" } else { "node1" };
        let started = Instant::now();
        let old = mesh
            .take_over(node, &spec, None)
            .with_context(|| format!("replacing the agent of {node} (restart {})", i + 1))?;
        restarts.push(Restart {
            node,
            ready_ms: started.elapsed().as_secs_f64() * 1000.0,
        });
        olds.push(old);
        std::thread::sleep(Duration::from_secs(1));
    }
    let bulk_running_at_end = bulk.try_wait()?.is_none();

    h2load.wait()?;
    let h2load_out = h2load.stdout();
    let (mut requests, mut statuses) = (
        std::collections::BTreeMap::<String, u64>::new(),
        std::collections::BTreeMap::<String, u64>::new(),
    );
    let mut h2load_runs = 0;
    for line in h2load_out.lines().map(str::trim) {
        // "requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout"
        if let Some(fields) = line.strip_prefix("requests:") {
            h2load_runs += 1;
            for (k, v) in super::http::counts(fields)? {
                *requests.entry(k).or_default() += v;
            }
        // "status codes: 10 2xx, 0 3xx, 0 4xx, 0 5xx"
        } else if let Some(fields) = line.strip_prefix("status codes:") {
            for (k, v) in super::http::counts(fields)? {
                *statuses.entry(k).or_default() += v;
            }
        }
    }
    ensure!(
        h2load_runs > 0,
        "no h2load run finished:\n{}",
        h2load.logs()
    );
    let count = |map: &std::collections::BTreeMap<String, u64>, key: &str| {
        map.get(key).copied().unwrap_or(0)
    };
    h2.wait()?;
    let h2_lines = mesh_tests::mesh::json_lines(&h2.stdout());
    let h2_summary = h2_lines
        .iter()
        .find(|l| l["summary"] == true)
        .cloned()
        .with_context(|| format!("no h2-loop summary:\n{}", h2.logs()))?;
    let h2_ms: Vec<f64> = h2_lines.iter().filter_map(|l| l["ms"].as_f64()).collect();
    dials.wait()?;
    let dial_lines = mesh_tests::mesh::json_lines(&dials.stdout());
    let dial_ms: Vec<f64> = dial_lines.iter().filter_map(|l| l["ms"].as_f64()).collect();
    let dials_failed = dial_lines.iter().filter(|l| l["ok"] != true).count();
    for failed in dial_lines.iter().filter(|l| l["ok"] != true) {
        eprintln!("restart bench: a new connection failed: {failed}");
    }
    for failed in h2_lines.iter().filter(|l| l["ok"] == false) {
        eprintln!("restart bench: an HTTP/2 request failed: {failed}");
    }
    let dial_resets = dial_lines
        .iter()
        .filter(|l| l["errno"].as_i64() == Some(ECONNRESET))
        .count();
    bulk.wait()?;
    let bulk_result = parse_last_json(bulk.stdout().as_bytes())
        .with_context(|| format!("bulk transfer:\n{}", bulk.logs()))?;
    let mut drained = 0;
    for old in &mut olds {
        if wait_drained(old, Duration::from_secs(120))? {
            drained += 1;
        }
    }

    let ready: Vec<f64> = restarts.iter().map(|r| r.ready_ms).collect();
    let results = [
        json!({"metric": "restarts", "unit": "count", "value": restarts.len()}),
        json!({"metric": "replaced agents that drained (no timeout)", "unit": "count", "value": drained}),
        json!({"metric": "new agent ready, median", "unit": "ms", "value": median(&ready)}),
        json!({"metric": "h2load runs", "unit": "count", "value": h2load_runs}),
        json!({"metric": "h2load requests done", "unit": "count", "value": count(&requests, "done")}),
        json!({"metric": "h2load requests failed", "unit": "count", "value": count(&requests, "failed")}),
        json!({"metric": "h2load requests errored", "unit": "count", "value": count(&requests, "errored")}),
        json!({"metric": "h2load requests timed out", "unit": "count", "value": count(&requests, "timeout")}),
        json!({"metric": "h2load non-2xx responses", "unit": "count", "value": count(&statuses, "3xx") + count(&statuses, "4xx") + count(&statuses, "5xx")}),
        json!({"metric": "HTTP/2 loop requests", "unit": "count", "value": h2_summary["requests"]}),
        json!({"metric": "HTTP/2 loop failed", "unit": "count", "value": h2_summary["failed"]}),
        json!({"metric": "HTTP/2 loop connections (GOAWAY moves it)", "unit": "count", "value": h2_summary["connections"]}),
        json!({"metric": "HTTP/2 loop request p50", "unit": "ms", "value": percentile(&h2_ms, 50.0)}),
        json!({"metric": "HTTP/2 loop request p99 (stall)", "unit": "ms", "value": percentile(&h2_ms, 99.0)}),
        json!({"metric": "HTTP/2 loop request max (stall)", "unit": "ms", "value": percentile(&h2_ms, 100.0)}),
        json!({"metric": "new connections", "unit": "count", "value": dial_lines.len()}),
        json!({"metric": "new connections failed", "unit": "count", "value": dials_failed}),
        json!({"metric": "new connections reset", "unit": "count", "value": dial_resets}),
        json!({"metric": "new connection p99", "unit": "ms", "value": percentile(&dial_ms, 99.0)}),
        json!({"metric": "bulk bytes echoed intact", "unit": "bytes", "value": if bulk_result["intact"] == true { bulk_result["received"].clone() } else { json!(0) }}),
        json!({"metric": "bulk still running after the last restart", "unit": "bool", "value": bulk_running_at_end}),
        json!({"metric": "bulk longest stall", "unit": "ms", "value": bulk_result["longest_stall_ms"]}),
    ];
    if json_out {
        for r in &results {
            let mut line = r.clone();
            line["scenario"] = json!("restart");
            println!("{line}");
        }
    } else {
        println!(
            "restart bench: {RESTARTS} handovers ({}), h2load runs of {H2LOAD_RUN} s, -c {H2LOAD_CLIENTS} --rps {H2LOAD_RPS} (h2c), one {} GiB bulk stream, an HTTP/2 request and a new connection every 20 ms",
            restarts
                .iter()
                .map(|r| r.node)
                .collect::<Vec<_>>()
                .join(","),
            BULK_BYTES >> 30
        );
        for r in &results {
            let value = match &r["value"] {
                Value::Number(n) if n.is_f64() => format!("{:.1}", n.as_f64().unwrap_or(0.0)),
                other => other.to_string(),
            };
            println!(
                "  {:<48} {:>14} {}",
                r["metric"].as_str().unwrap_or(""),
                value,
                r["unit"].as_str().unwrap_or("")
            );
        }
    }
    ensure!(
        bulk_result["intact"] == true,
        "the bulk stream broke: {bulk_result}"
    );
    Ok(())
}
