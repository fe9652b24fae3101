//! The Prometheus endpoint and readiness: what a scrape gathers from every part of the running
//! agent (Istio's series from `metrics`, the agent's own health metrics from the data path,
//! the kernel, the config sources and the certificates) and how it is served.

pub mod health;
pub mod server;

use std::sync::atomic::Ordering;

use crate::{agent::Shared, metrics::text};

/// Brings the TCP byte counts of live connections up to date.
pub fn refresh(shared: &Shared) {
    if !shared.telemetry.switches.istio_enabled() {
        return;
    }
    let live = shared.transport.maps.live_connections();
    let state = shared.state();
    shared
        .telemetry
        .tcp
        .refresh(&shared.telemetry.istio, &state, &live);
}

/// The whole exposition: istio_* then mesh_agent_*, as OpenMetrics or Prometheus text.
pub fn encode(shared: &Shared, openmetrics: bool) -> Result<String, std::fmt::Error> {
    refresh(shared);
    let mut out = String::with_capacity(64 * 1024);
    if shared.telemetry.switches.istio_enabled() {
        shared.telemetry.istio.encode(&mut out)?;
    }
    health::encode(shared, &mut out)?;
    out.push_str("# EOF\n");
    Ok(if openmetrics {
        out
    } else {
        text::openmetrics_to_prometheus(&out)
    })
}

/// Why the agent is not ready; empty when it is: programs attached and config applied (the
/// start sequence sets `ready` last), and a valid certificate for every identity it holds.
pub fn readiness_problems(shared: &Shared) -> Vec<String> {
    let mut problems = Vec::new();
    if !shared.ready.load(Ordering::Relaxed) {
        problems.push("programs not attached or config not applied yet".to_owned());
    }
    if let Some(kube) = shared.kube.get()
        && !kube.applied()
    {
        problems.push("the Kubernetes source has not been synced and applied yet".to_owned());
    }
    let wanted = shared.state().local_identities();
    let held = shared.transport.identity.snapshot();
    for id in wanted {
        let id = id.to_string();
        match held.iter().find(|c| c.spiffe_id == id) {
            None => problems.push(format!("no certificate for {id}")),
            Some(c) if c.expires_in_seconds <= 0 => {
                problems.push(format!("the certificate of {id} has expired"))
            }
            Some(_) => {}
        }
    }
    problems
}
