//! `GET /status` and `mesh-agent status`: one summary of the running agent (node, readiness,
//! programs, workloads, certificates, counters) with a list of things that look wrong, in
//! plain sentences.

use std::{collections::BTreeMap, fmt::Write as _, sync::atomic::Ordering};

use serde_json::{Value, json};

use crate::{agent::Shared, identity::CertInfo};

/// What the problem checks look at, gathered from the running agent (a plain struct so that
/// the checks can be tested without one).
#[derive(Debug, Default, Clone)]
pub struct Health {
    pub ready: bool,
    /// Kernel counters by name (see mesh_common::stat::NAMES).
    pub kernel: BTreeMap<String, u64>,
    pub certificates: Vec<CertInfo>,
    /// The configured certificate lifetime, in seconds.
    pub cert_lifetime_seconds: u64,
    pub tls_handshake_failures: u64,
    pub authz_denied: u64,
}

/// Human sentences for what looks wrong; empty when all is well. Policy refusals are listed
/// as informational: policy at work, but worth a look when unexpected.
pub fn problems(h: &Health) -> Vec<String> {
    let mut out = Vec::new();
    if !h.ready {
        out.push("the agent is not ready (still starting or shutting down)".to_string());
    }
    let counter = |name: &str| h.kernel.get(name).copied().unwrap_or(0);
    let lost = counter("events_lost");
    if lost > 0 {
        out.push(format!(
            "{lost} connection events were lost (ring buffer full): closed connections are \
             missing from flows and metrics"
        ));
    }
    let evicted = counter("conns_evicted");
    if evicted > 0 {
        out.push(format!(
            "{evicted} connections closed after the connection map evicted their entry (the \
             node held more than {} connections): their bytes are missing from TCP metrics",
            mesh_common::capacity::CONNS
        ));
    }
    let threshold = h.cert_lifetime_seconds / 10;
    for c in &h.certificates {
        if c.expires_in_seconds <= 0 {
            out.push(format!(
                "the certificate of {} expired {} ago",
                c.spiffe_id,
                human_duration(c.expires_in_seconds.unsigned_abs())
            ));
        } else if (c.expires_in_seconds as u64) < threshold {
            out.push(format!(
                "the certificate of {} expires in {} (less than 10% of its {} lifetime): \
                 rotation is not happening",
                c.spiffe_id,
                human_duration(c.expires_in_seconds as u64),
                human_duration(h.cert_lifetime_seconds)
            ));
        }
    }
    if h.tls_handshake_failures > 0 {
        out.push(format!(
            "{} inbound tunnel TLS handshakes failed (peers with a wrong or missing \
             certificate, or not speaking TLS 1.3)",
            h.tls_handshake_failures
        ));
    }
    if h.authz_denied > 0 {
        out.push(format!(
            "{} inbound connections were refused by authorization policy (informational)",
            h.authz_denied
        ));
    }
    let connect_denied = counter("connect_denied");
    if connect_denied > 0 {
        out.push(format!(
            "{connect_denied} outbound connections were denied by egress policy \
             (informational)"
        ));
    }
    let ingress_denied = counter("ingress_denied") + counter("ingress_strict_denied");
    if ingress_denied > 0 {
        out.push(format!(
            "{ingress_denied} inbound connections were dropped by ingress policy or STRICT \
             mode (informational)"
        ));
    }
    out
}

/// "3d4h", "2h5m", "4m10s", "12s".
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// The /status document.
pub fn collect(shared: &Shared) -> Value {
    let state = shared.state();
    let ready = shared.ready.load(Ordering::Relaxed);
    let kernel: BTreeMap<String, u64> = shared
        .kernel_counters()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let certificates = shared.transport.identity.snapshot();
    let health = Health {
        ready,
        kernel: kernel.clone(),
        certificates: certificates.clone(),
        cert_lifetime_seconds: shared.transport.identity.lifetime().as_secs(),
        tls_handshake_failures: shared
            .transport
            .inbound_stats
            .tls_failed
            .load(Ordering::Relaxed),
        authz_denied: shared
            .transport
            .inbound_stats
            .authz_denied
            .load(Ordering::Relaxed),
    };
    let workloads: Vec<Value> = state
        .workloads
        .iter()
        .map(|w| {
            json!({
                "name": format!("{}/{}", w.namespace, w.name),
                "identity": w.identity.to_string(),
                "cgroup": w.cgroup,
                "cgroup_id": w.cgroup_id,
                "netns": w.netns,
                "ips": w.ips,
            })
        })
        .collect();
    json!({
        "node": state.node.name,
        "version": env!("CARGO_PKG_VERSION"),
        "ready": ready,
        "programs": shared.programs,
        "listeners": shared.listeners(),
        "workloads": workloads,
        "maps": shared.transport.maps.usage(),
        "kernel": kernel,
        "certificates": {
            "count": certificates.len(),
            "soonest_expiry_seconds": certificates.iter().map(|c| c.expires_in_seconds).min(),
            "lifetime_seconds": health.cert_lifetime_seconds,
        },
        "tunnel": shared.transport.tunnels.stats,
        "inbound": shared.transport.inbound_stats,
        "http": shared.http.stats,
        "flow_subscribers": shared.flow_events.subscribers(),
        "problems": problems(&health),
    })
}

/// True when `mesh-agent status` should exit 0: ready and no problems.
/// Ready and no problem other than informational ones (policy doing its job must not make a
/// probe built on `mesh-agent status` fail).
pub fn healthy(status: &Value) -> bool {
    status["ready"] == true
        && status["problems"].as_array().is_some_and(|p| {
            p.iter()
                .all(|x| x.as_str().is_some_and(|s| s.ends_with("(informational)")))
        })
}

/// `mesh-agent status` for people.
pub fn render(status: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let list =
        |v: &Value| -> Vec<String> { v.as_array().into_iter().flatten().map(text).collect() };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node:         {} (mesh-agent {})",
        text(&status["node"]),
        text(&status["version"])
    );
    let _ = writeln!(
        out,
        "ready:        {}",
        if status["ready"] == true { "yes" } else { "NO" }
    );
    let programs = list(&status["programs"]);
    let _ = writeln!(
        out,
        "programs:     {} attached ({})",
        programs.len(),
        programs.join(", ")
    );
    let listeners = status["listeners"].as_array().map_or(0, Vec::len);
    let _ = writeln!(out, "listeners:    {listeners} outbound");
    let workloads = status["workloads"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "workloads:    {}", workloads.len());
    for w in &workloads {
        let _ = writeln!(
            out,
            "  {:<28} {:<56} cgroup {}",
            text(&w["name"]),
            text(&w["identity"]),
            text(&w["cgroup_id"])
        );
    }
    let certs = &status["certificates"];
    let soonest = certs["soonest_expiry_seconds"]
        .as_i64()
        .map_or("-".to_string(), |s| {
            if s <= 0 {
                format!("expired {} ago", human_duration(s.unsigned_abs()))
            } else {
                format!("in {}", human_duration(s as u64))
            }
        });
    let _ = writeln!(
        out,
        "certificates: {} held, soonest expiry {soonest}",
        text(&certs["count"])
    );
    let maps = &status["maps"];
    let _ = writeln!(
        out,
        "connections:  {} live (kernel map)",
        text(&maps["live_connections"])
    );
    for (section, keys) in [
        (
            "kernel",
            &[
                "conns_opened",
                "conns_closed",
                "connect_redirected",
                "connect_denied",
                "ingress_denied",
                "events_lost",
            ][..],
        ),
        (
            "tunnel",
            &[
                "sessions_opened",
                "streams_opened",
                "session_failures",
                "streams_refused",
            ][..],
        ),
        (
            "inbound",
            &["tls_accepted", "tls_failed", "streams", "authz_denied"][..],
        ),
        (
            "http",
            &["requests", "responses_5xx", "local_replies", "retries"][..],
        ),
    ] {
        let values: Vec<String> = keys
            .iter()
            .filter(|k| !status[section][**k].is_null())
            .map(|k| format!("{k}={}", text(&status[section][*k])))
            .collect();
        if !values.is_empty() {
            let _ = writeln!(out, "{:<13} {}", format!("{section}:"), values.join(" "));
        }
    }
    let problems = list(&status["problems"]);
    if problems.is_empty() {
        let _ = writeln!(out, "problems:     none");
    } else {
        let _ = writeln!(out, "problems:     {}", problems.len());
        for p in problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(id: &str, expires_in: i64) -> CertInfo {
        CertInfo {
            spiffe_id: id.into(),
            serial: "01".into(),
            not_before: String::new(),
            not_after: String::new(),
            expires_in_seconds: expires_in,
            rotate_in_seconds: expires_in / 2,
        }
    }

    fn healthy_agent() -> Health {
        Health {
            ready: true,
            kernel: [("events_lost", 0), ("connect_denied", 0)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            certificates: vec![cert("spiffe://td/ns/default/sa/web", 80_000)],
            cert_lifetime_seconds: 86_400,
            tls_handshake_failures: 0,
            authz_denied: 0,
        }
    }

    #[test]
    fn a_healthy_agent_has_no_problems() {
        assert_eq!(problems(&healthy_agent()), Vec::<String>::new());
    }

    #[test]
    fn each_check_speaks_up() {
        let mut h = healthy_agent();
        h.ready = false;
        h.kernel.insert("events_lost".into(), 3);
        h.kernel.insert("conns_evicted".into(), 6);
        h.kernel.insert("connect_denied".into(), 2);
        h.kernel.insert("ingress_denied".into(), 1);
        h.kernel.insert("ingress_strict_denied".into(), 1);
        h.certificates = vec![
            cert("spiffe://td/ns/a/sa/ok", 50_000),
            cert("spiffe://td/ns/a/sa/soon", 8_000),
            cert("spiffe://td/ns/a/sa/gone", -65),
        ];
        h.tls_handshake_failures = 4;
        h.authz_denied = 5;
        let p = problems(&h);
        assert_eq!(p.len(), 9, "{p:#?}");
        assert!(p[0].contains("not ready"));
        assert!(p[1].starts_with("3 connection events were lost"));
        assert!(
            p[2].starts_with("6 connections closed after the connection map evicted"),
            "{}",
            p[2]
        );
        assert!(
            p[3].contains("spiffe://td/ns/a/sa/soon expires in 2h13m"),
            "{}",
            p[3]
        );
        assert!(p[3].contains("1d0h lifetime"), "{}", p[3]);
        assert!(
            p[4].contains("spiffe://td/ns/a/sa/gone expired 1m5s ago"),
            "{}",
            p[4]
        );
        assert!(p[5].starts_with("4 inbound tunnel TLS handshakes failed"));
        assert!(p[6].starts_with("5 inbound connections were refused by authorization"));
        assert!(p[7].starts_with("2 outbound connections were denied"));
        assert!(p[8].starts_with("2 inbound connections were dropped"));
        assert!(!p.iter().any(|s| s.contains("ok ")), "{p:#?}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m1s");
        assert_eq!(human_duration(3600 * 5 + 120), "5h2m");
        assert_eq!(human_duration(86_400 * 2 + 3600), "2d1h");
    }

    fn sample_status(problems: &[&str]) -> Value {
        json!({
            "node": "node1",
            "version": "0.1.0",
            "ready": true,
            "programs": ["connect4", "sockops"],
            "listeners": [{"address": "127.0.0.1:15001"}],
            "workloads": [{"name": "default/client", "identity": "spiffe://td/ns/default/sa/default", "cgroup_id": 42}],
            "maps": {"live_connections": 3},
            "kernel": {"conns_opened": 10, "events_lost": 0},
            "certificates": {"count": 2, "soonest_expiry_seconds": 7200, "lifetime_seconds": 86400},
            "tunnel": {},
            "inbound": {"tls_failed": 0},
            "http": {"requests": 4},
            "problems": problems,
        })
    }

    #[test]
    fn render_summarises_and_health_follows_problems() {
        let ok = sample_status(&[]);
        assert!(healthy(&ok));
        let text = render(&ok);
        assert!(
            text.contains("node:         node1 (mesh-agent 0.1.0)"),
            "{text}"
        );
        assert!(text.contains("ready:        yes"), "{text}");
        assert!(text.contains("2 attached (connect4, sockops)"), "{text}");
        assert!(text.contains("default/client"), "{text}");
        assert!(text.contains("2 held, soonest expiry in 2h0m"), "{text}");
        assert!(
            text.contains("kernel:       conns_opened=10 events_lost=0"),
            "{text}"
        );
        assert!(text.contains("problems:     none"), "{text}");

        let info = sample_status(&["3 connects were denied (informational)"]);
        assert!(healthy(&info));
        let bad = sample_status(&["something is off"]);
        assert!(!healthy(&bad));
        assert!(render(&bad).contains("  - something is off"));
        let mut not_ready = sample_status(&[]);
        not_ready["ready"] = json!(false);
        assert!(!healthy(&not_ready));
        assert!(render(&not_ready).contains("ready:        NO"));
    }
}
