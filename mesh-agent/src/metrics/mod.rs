//! Telemetry: Istio's standard metrics (TCP from the kernel's per-connection counters, HTTP
//! from the L7 path) and the records the access log prints. How they are exposed (the
//! /metrics and readiness endpoints, the agent's own health metrics gathered at scrape time)
//! is the `exporter`'s.

pub mod accesslog;
pub mod bench;
pub mod http;
pub mod labels;
pub mod records;
pub mod registry;
pub mod series_cache;
pub mod tcp;
pub mod text;

use std::sync::atomic::{AtomicBool, Ordering};

use mesh_common::SockKey;

use crate::{
    config::TelemetrySettings,
    transport::sink::{Annotation, ConnectionSink},
};

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

/// Everything telemetry records into: the data path reports to it through the sinks it
/// implements (`transport::sink::ConnectionSink`, `l7::meter::RequestSink`).
pub struct Telemetry {
    /// Whether istio_* and the access log are recorded.
    pub switches: Switches,
    /// Which series each kernel-counted connection belongs to.
    pub tcp: tcp::TcpAccounting,
    /// Istio's standard metrics (istio_*).
    pub istio: registry::IstioMetrics,
    /// Where access-log records go (a bounded queue to the writer thread).
    pub access_log: accesslog::AccessLog,
}

impl Telemetry {
    /// Starts the access-log writer; `agent_cgroup_id` tells the agent's own connections.
    pub fn start(settings: &TelemetrySettings, agent_cgroup_id: u64) -> anyhow::Result<Telemetry> {
        Ok(Telemetry {
            switches: Switches::new(settings),
            tcp: tcp::TcpAccounting::new(agent_cgroup_id),
            istio: Default::default(),
            access_log: accesslog::AccessLog::start(settings.access_log_buffer)?,
        })
    }

    /// Accounts a connection-close event from the kernel: istio_tcp_* and the access log.
    pub fn connection_closed(&self, state: &crate::state::State, event: &mesh_common::ConnEvent) {
        let istio_on = self.switches.istio_enabled();
        let access =
            self.switches.connection_log_enabled() && accesslog::AccessLog::filter_allows();
        if !istio_on && !access {
            return;
        }
        self.tcp.close(&self.istio, state, event, |record| {
            if access {
                self.access_log.connection(record);
            }
        });
    }
}

impl ConnectionSink for Telemetry {
    fn own_socket(&self, cookie: u64) {
        self.tcp.own_socket(cookie);
    }

    fn annotate(&self, key: SockKey, annotation: Annotation) {
        self.tcp.annotate(key, annotation);
    }

    fn follows_destination_requests(&self) -> bool {
        self.switches.destination_requests_enabled()
    }
}
