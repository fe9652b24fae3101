//! The agent's own health metrics (mesh_agent_*), read from their sources at each scrape:
//! the kernel's per-CPU counters and program statistics, map usage, certificates, and the
//! userspace counters. Built into a fresh registry per scrape: they are few, and nothing has
//! to be kept in sync between scrapes.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use mesh_common::capacity;
use prometheus_client::{
    encoding::text::encode_registry,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::agent::Shared;

type Labels = Vec<(&'static str, String)>;

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

/// A counter family with one series per row: the label values in the order of `names`.
fn counters_by<const N: usize, V: Into<String>>(
    names: [&'static str; N],
    rows: impl IntoIterator<Item = ([V; N], u64)>,
) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for (values, n) in rows {
        let labels: Labels = names.iter().copied().zip(values.map(Into::into)).collect();
        family.get_or_create(&labels).inc_by(n);
    }
    family
}

fn gauge(value: i64) -> Gauge {
    let g = Gauge::default();
    g.set(value);
    g
}

fn f64_gauge(value: f64) -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    g.set(value);
    g
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn rfc3339_to_unix(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Appends the mesh_agent_* families (OpenMetrics, without `# EOF`).
pub fn encode(shared: &Shared, out: &mut String) -> std::fmt::Result {
    let mut r = Registry::with_prefix("mesh_agent");

    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())])
        .set(1);
    r.register(
        "build_info",
        "Version of the running agent (always 1)",
        build,
    );
    r.register(
        "ready",
        "1 when the programs are attached, certificates are loaded and config is applied",
        gauge(i64::from(shared.ready.load(Ordering::Relaxed))),
    );

    let runs = Family::<Labels, Counter>::default();
    let run_seconds = Family::<Labels, Counter<f64, AtomicU64>>::default();
    for p in shared.program_stats.read() {
        let labels = vec![("program", p.program)];
        runs.get_or_create(&labels).inc_by(p.runs);
        run_seconds
            .get_or_create(&labels)
            .inc_by(p.run_time.as_secs_f64());
    }
    r.register(
        "program_runs",
        "Runs of each eBPF program (counted while program statistics are enabled)",
        runs,
    );
    r.register(
        "program_run_seconds",
        "Time spent in each eBPF program (counted while program statistics are enabled)",
        run_seconds,
    );

    let usage = shared.transport.maps.usage();
    let entries = Family::<Labels, Gauge>::default();
    let capacities = Family::<Labels, Gauge>::default();
    let maps: [(&str, usize, u32); 8] = [
        ("services", usage.services, capacity::SERVICES),
        ("workloads", usage.workloads, capacity::WORKLOADS),
        ("listeners", usage.listeners, capacity::LISTENERS),
        ("egress_policy", usage.egress_rules, capacity::POLICY),
        ("ingress_policy", usage.ingress_rules, capacity::POLICY),
        ("connections", usage.live_connections, capacity::CONNS),
        (
            "agent_origins",
            usage.agent_origins,
            capacity::AGENT_ORIGINS,
        ),
        (
            "pending_origins",
            usage.pending_origins,
            capacity::PENDING_ORIGINS,
        ),
    ];
    for (map, used, cap) in maps {
        let labels = vec![("map", map.to_owned())];
        entries.get_or_create(&labels).set(used as i64);
        capacities.get_or_create(&labels).set(i64::from(cap));
    }
    r.register("map_entries", "Entries in each kernel map", entries);
    r.register(
        "map_capacity",
        "Maximum entries of each kernel map",
        capacities,
    );

    let kernel = shared.kernel_counters();
    let k = |name: &str| kernel.get(name).copied().unwrap_or(0);
    r.register(
        "policy_drops",
        "Connections refused in the kernel: outbound connect() denied with EPERM, inbound SYN dropped",
        counters_by(
            ["direction", "reason"],
            [
                (["outbound", "policy"], k("connect_denied")),
                (["inbound", "policy"], k("ingress_denied")),
                (["inbound", "strict"], k("ingress_strict_denied")),
            ],
        ),
    );
    let fail_open = k("connect_fail_open");
    r.register(
        "connections_without_agent",
        "connect() calls to meshed destinations while no agent listened (stopped, crashed, \
         upgrading): refused, or sent direct with node.fail_mode open; the kernel counts them \
         while the agent is away",
        counters_by(
            ["outcome"],
            [
                (["refused"], k("connect_no_agent").saturating_sub(fail_open)),
                (["direct"], fail_open),
            ],
        ),
    );
    let plain: [(&str, &str, u64); 8] = [
        (
            "ringbuf_lost_events",
            "Connection-close events the kernel could not queue (ring buffer full)",
            k("events_lost"),
        ),
        (
            "access_log_dropped",
            "Access-log records dropped because the log writer fell behind (its queue of telemetry.access_log_buffer records was full)",
            shared.telemetry.access_log.dropped(),
        ),
        (
            "access_log_written",
            "Access-log lines written",
            shared.telemetry.access_log.written(),
        ),
        (
            "connections_redirected",
            "connect() calls redirected to the agent",
            k("connect_redirected"),
        ),
        (
            "kernel_connections_opened",
            "TCP connections established in the meshed cgroup (kernel count)",
            k("conns_opened"),
        ),
        (
            "kernel_connections_closed",
            "TCP connections closed in the meshed cgroup (kernel count)",
            k("conns_closed"),
        ),
        (
            "orig_dst_missing",
            "Redirected connections whose original destination was not found",
            k("orig_dst_missing"),
        ),
        (
            "connection_map_evictions",
            "Connections that closed after the kernel's connection map (LRU) had evicted their entry because it was full: their byte counts and close events are lost",
            k("conns_evicted"),
        ),
    ];
    for (name, help, value) in plain {
        r.register(name, help, counter(value));
    }

    let reloads = &shared.config_reloads;
    r.register(
        "config_reloads",
        "Config loads by result (the initial load counts as a success)",
        counters_by(
            ["result"],
            [
                (["success"], reloads.success.load(Ordering::Relaxed)),
                (["failure"], reloads.failure.load(Ordering::Relaxed)),
            ],
        ),
    );
    if let Some(kube) = shared.kube.get() {
        r.register(
            "kube_events",
            "Watch events received from the Kubernetes API, by kind and type (init, init_apply, init_done, apply, delete)",
            counters_by(
                ["kind", "type"],
                kube.stats
                    .events()
                    .into_iter()
                    .map(|((kind, event), n)| ([kind, event], n)),
            ),
        );
        r.register(
            "kube_watch_restarts",
            "Watches of the Kubernetes API that failed and were resumed, by kind and reason (expired: 410, error: anything else)",
            counters_by(
                ["kind", "reason"],
                kube.stats
                    .restarts()
                    .into_iter()
                    .map(|((kind, reason), n)| ([kind, reason], n)),
            ),
        );
        r.register(
            "kube_rejected_objects",
            "Kubernetes objects left out of the running model",
            gauge(kube.rejected().len() as i64),
        );
    }

    let now = unix_now();
    let expiry = Family::<Labels, Gauge>::default();
    for cert in shared.transport.identity.snapshot() {
        expiry
            .get_or_create(&vec![("spiffe_id", cert.spiffe_id)])
            .set(now + cert.expires_in_seconds);
    }
    r.register(
        "certificate_expiration_timestamp_seconds",
        "When each held workload certificate expires (Unix time)",
        expiry,
    );
    if let Some(earliest) = shared
        .transport
        .identity
        .bundle_info()
        .iter()
        .filter_map(|root| rfc3339_to_unix(&root.not_after))
        .min()
    {
        r.register(
            "ca_expiration_timestamp_seconds",
            "When the earliest root of the trust bundle expires (Unix time)",
            gauge(earliest),
        );
    }

    let inbound = &shared.transport.inbound_stats;
    r.register(
        "tunnel_handshake_failures",
        "Inbound tunnel connections refused during the TLS handshake (wrong, missing or untrusted certificate, not TLS 1.3)",
        counter(inbound.tls_failed.load(Ordering::Relaxed)),
    );
    r.register(
        "authz_denied",
        "Inbound connections refused by authorization policy",
        counters_by(
            ["reporter"],
            [(
                ["destination"],
                inbound.authz_denied.load(Ordering::Relaxed),
            )],
        ),
    );
    r.register(
        "istio_series",
        "Label sets of the istio_* metrics held in memory",
        gauge(shared.telemetry.istio.series_count() as i64),
    );
    r.register(
        "tracked_connections",
        "Connections whose bytes are being counted for the istio_tcp_* metrics",
        gauge(shared.telemetry.tcp.tracked() as i64),
    );
    r.register(
        "uptime_seconds",
        "Seconds since the agent started",
        f64_gauge(shared.started.elapsed().as_secs_f64()),
    );
    encode_registry(out, &r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_to_unix_time() {
        assert_eq!(rfc3339_to_unix("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(rfc3339_to_unix("not a time"), None);
    }
}
