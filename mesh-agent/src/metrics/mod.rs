//! Telemetry: Istio's standard metrics (TCP from the kernel's per-connection counters, HTTP
//! from the L7 path), the agent's own health metrics, readiness, and the records the access
//! log prints.

pub mod bench;
pub mod health;
pub mod http;
pub mod labels;
pub mod records;
pub mod registry;
pub mod series_cache;
pub mod server;
pub mod tcp;
pub mod text;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{config::TelemetrySettings, runtime::Shared};

/// The switches of the `telemetry:` section that the data path reads per event.
#[derive(Debug, Default)]
pub struct Switches {
    istio: AtomicBool,
    access_connections: AtomicBool,
    access_requests: AtomicBool,
    destination_requests: AtomicBool,
}

impl Switches {
    pub fn new(settings: &TelemetrySettings) -> Switches {
        let s = Switches::default();
        s.apply(settings);
        s
    }

    pub fn apply(&self, settings: &TelemetrySettings) {
        self.istio.store(settings.istio_metrics, Ordering::Relaxed);
        self.access_connections
            .store(settings.access_log.connections(), Ordering::Relaxed);
        self.access_requests
            .store(settings.access_log.requests(), Ordering::Relaxed);
        self.destination_requests
            .store(settings.destination_requests, Ordering::Relaxed);
    }

    pub fn istio_enabled(&self) -> bool {
        self.istio.load(Ordering::Relaxed)
    }

    /// Whether closed connections get an access-log line.
    pub fn connection_log_enabled(&self) -> bool {
        self.access_connections.load(Ordering::Relaxed)
    }

    /// Whether HTTP requests get an access-log line.
    pub fn request_log_enabled(&self) -> bool {
        self.access_requests.load(Ordering::Relaxed)
    }

    /// Whether the destination agent parses HTTP on declared ports to report requests: only
    /// when asked to and when something records them.
    pub fn destination_requests_enabled(&self) -> bool {
        self.destination_requests.load(Ordering::Relaxed)
            && (self.istio_enabled() || self.request_log_enabled())
    }
}

/// Brings the TCP byte counts of live connections up to date.
pub fn refresh(shared: &Shared) {
    if !shared.telemetry.istio_enabled() {
        return;
    }
    let live = shared.maps.live_connections();
    let state = shared.state();
    shared.tcp_accounting.refresh(&shared.istio, &state, &live);
}

/// Accounts a connection-close event from the kernel: istio_tcp_* and the access log.
pub fn connection_closed(shared: &Shared, event: &mesh_common::ConnEvent) {
    let istio = shared.telemetry.istio_enabled();
    let access =
        shared.telemetry.connection_log_enabled() && crate::accesslog::AccessLog::filter_allows();
    if !istio && !access {
        return;
    }
    let state = shared.state();
    shared
        .tcp_accounting
        .close(&shared.istio, &state, event, |record| {
            if access {
                shared.access_log.connection(record);
            }
        });
}

/// The whole exposition: istio_* then mesh_agent_*, as OpenMetrics or Prometheus text.
pub fn encode(shared: &Shared, openmetrics: bool) -> Result<String, std::fmt::Error> {
    refresh(shared);
    let mut out = String::with_capacity(64 * 1024);
    if shared.telemetry.istio_enabled() {
        shared.istio.encode(&mut out)?;
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
    let held = shared.identity.snapshot();
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
