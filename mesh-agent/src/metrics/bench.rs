//! `mesh-agent debug metrics-encode`: how long encoding the istio_* exposition takes with a
//! given number of series (used by `cargo xtask bench metrics`).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    labels::{Peer, Reporter, RequestProtocol, Security, ServiceRef, TrafficLabels, Value},
    registry::IstioMetrics,
    text,
};

#[derive(Debug, Serialize)]
pub struct EncodeRun {
    pub series: usize,
    pub format: &'static str,
    pub bytes: usize,
    pub rounds: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Fills a registry with `series` TCP series (a quarter as many label sets, each in the four
/// istio_tcp_* families), shaped like a busy node: 100 source workloads talking to services
/// of 10 namespaces.
pub fn populate(series: usize) -> IstioMetrics {
    let metrics = IstioMetrics::new();
    let label_sets = series.div_ceil(4);
    for i in 0..label_sets {
        let source = Peer {
            workload: Value::new(format!("client-{}", i % 100)),
            namespace: Value::new(format!("team-{}", i % 10)),
            principal: Value::new(format!(
                "spiffe://cluster.local/ns/team-{}/sa/client-{}",
                i % 10,
                i % 100
            )),
            canonical_service: Value::new(format!("client-{}", i % 100)),
            canonical_revision: Value::new("v1"),
            cluster: Value::new("Kubernetes"),
        };
        let destination = Peer {
            workload: Value::new(format!("server-{i}")),
            namespace: Value::new(format!("team-{}", i % 10)),
            canonical_service: Value::new(format!("server-{i}")),
            canonical_revision: Value::new("v2"),
            cluster: Value::new("Kubernetes"),
            ..Peer::default()
        };
        let service = ServiceRef::new(
            &format!("server-{i}"),
            &format!("team-{}", i % 10),
            "cluster.local",
        );
        let labels = TrafficLabels::new(
            if i % 2 == 0 {
                Reporter::Source
            } else {
                Reporter::Destination
            },
            &source,
            Some(&service),
            &destination,
            RequestProtocol::Tcp,
            Security::MutualTls,
        );
        let s = metrics.tcp(&labels);
        s.opened.inc_by(i as u64);
        s.closed.inc_by(i as u64);
        s.sent.inc_by(i as u64 * 1000);
        s.received.inc_by(i as u64 * 100);
    }
    metrics
}

/// Encodes `rounds` times and reports the times.
pub fn encode_run(series: usize, rounds: usize, openmetrics: bool) -> EncodeRun {
    let metrics = populate(series);
    let rounds = rounds.max(1);
    let mut times = Vec::with_capacity(rounds);
    let mut bytes = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let mut out = String::with_capacity(bytes.max(1024));
        let _ = metrics.encode(&mut out);
        out.push_str("# EOF\n");
        let out = if openmetrics {
            out
        } else {
            text::openmetrics_to_prometheus(&out)
        };
        times.push(started.elapsed());
        bytes = out.len();
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| ms(times[((times.len() - 1) as f64 * q).round() as usize]);
    EncodeRun {
        series: label_series(series),
        format: if openmetrics {
            "openmetrics"
        } else {
            "prometheus"
        },
        bytes,
        rounds,
        mean_ms: times.iter().map(|d| ms(*d)).sum::<f64>() / times.len() as f64,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
    }
}

fn label_series(series: usize) -> usize {
    series.div_ceil(4) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populate_makes_the_requested_series() {
        let m = populate(400);
        assert_eq!(m.series_count(), 100);
        let run = encode_run(400, 2, false);
        assert_eq!(run.series, 400);
        assert!(run.bytes > 400 * 500, "{run:?}");
    }
}
