//! Istio's standard metric families and their encoding.
//!
//! Each label set is looked up once per event: the four TCP metrics of a label set (and the
//! four request metrics of a request label set) are kept together in a series map, whose
//! handles share their values with the families that prometheus-client encodes. The series
//! maps also remember every label set ever created, so that the series of a workload that is
//! gone can be removed from the families (which offer no iteration).

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use prometheus_client::{
    encoding::text::encode_registry,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::labels::{RequestLabels, TrafficLabels};

/// Istio's default buckets for istio_request_duration_milliseconds.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's default buckets for istio_request_bytes / istio_response_bytes (1 to 10^9, x10).
pub const SIZE_BUCKETS: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

/// The TCP metrics of one label set.
#[derive(Clone)]
pub struct TcpSeries {
    pub opened: Counter,
    pub closed: Counter,
    /// Server -> client bytes.
    pub sent: Counter,
    /// Client -> server bytes.
    pub received: Counter,
}

/// The request metrics of one label set.
#[derive(Clone)]
pub struct RequestSeries {
    pub requests: Counter,
    pub duration_ms: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
}

impl RequestSeries {
    pub fn record(&self, duration: Duration, request_bytes: u64, response_bytes: u64) {
        self.requests.inc();
        self.duration_ms.observe(duration.as_secs_f64() * 1000.0);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }
}

pub struct IstioMetrics {
    registry: Registry,
    tcp_opened: Family<TrafficLabels, Counter>,
    tcp_closed: Family<TrafficLabels, Counter>,
    tcp_sent: Family<TrafficLabels, Counter>,
    tcp_received: Family<TrafficLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    tcp_series: Mutex<HashMap<TrafficLabels, TcpSeries>>,
    request_series: Mutex<HashMap<RequestLabels, RequestSeries>>,
}

impl Default for IstioMetrics {
    fn default() -> Self {
        IstioMetrics::new()
    }
}

impl IstioMetrics {
    pub fn new() -> IstioMetrics {
        let mut registry = Registry::with_prefix("istio");
        let tcp_opened = Family::<TrafficLabels, Counter>::default();
        let tcp_closed = Family::<TrafficLabels, Counter>::default();
        let tcp_sent = Family::<TrafficLabels, Counter>::default();
        let tcp_received = Family::<TrafficLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = HistogramFamily::new_with_constructor(duration_histogram as fn() -> _);
        let request_bytes = HistogramFamily::new_with_constructor(size_histogram as fn() -> _);
        let response_bytes = HistogramFamily::new_with_constructor(size_histogram as fn() -> _);
        // Help texts are Istio's own.
        registry.register(
            "tcp_sent_bytes",
            "Size of total bytes sent during response in case of a TCP connection",
            tcp_sent.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "Size of total bytes received during request in case of a TCP connection",
            tcp_received.clone(),
        );
        registry.register(
            "tcp_connections_opened",
            "Total number of TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "Total number of TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "requests",
            "Total number of requests handled by the agent's L7 path",
            requests.clone(),
        );
        registry.register(
            "request_duration_milliseconds",
            "Duration of requests, until the last byte of the response",
            duration.clone(),
        );
        registry.register(
            "request_bytes",
            "Size of request bodies",
            request_bytes.clone(),
        );
        registry.register(
            "response_bytes",
            "Size of response bodies",
            response_bytes.clone(),
        );
        IstioMetrics {
            registry,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_series: Mutex::default(),
            request_series: Mutex::default(),
        }
    }

    /// The TCP series of `labels`, created on first use.
    pub fn tcp(&self, labels: &TrafficLabels) -> TcpSeries {
        let mut series = self.tcp_series.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = series.get(labels) {
            return s.clone();
        }
        let s = TcpSeries {
            opened: self.tcp_opened.get_or_create(labels).clone(),
            closed: self.tcp_closed.get_or_create(labels).clone(),
            sent: self.tcp_sent.get_or_create(labels).clone(),
            received: self.tcp_received.get_or_create(labels).clone(),
        };
        series.insert(labels.clone(), s.clone());
        s
    }

    /// The request series of `labels`, created on first use. Callers keep it (see
    /// `series_cache`) so that the label set is hashed once, not per request.
    pub fn request_series(&self, labels: &RequestLabels) -> RequestSeries {
        let mut series = self
            .request_series
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(s) = series.get(labels) {
            return s.clone();
        }
        let s = RequestSeries {
            requests: self.requests.get_or_create(labels).clone(),
            duration_ms: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        };
        series.insert(labels.clone(), s.clone());
        s
    }

    /// Counts one finished request.
    pub fn record_request(
        &self,
        labels: &RequestLabels,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        self.request_series(labels)
            .record(duration, request_bytes, response_bytes);
    }

    /// Drops every series naming one of `departed` (namespace, name) as source or
    /// destination workload.
    pub fn forget_workloads(&self, departed: &HashSet<(String, String)>) -> usize {
        let gone = |l: &TrafficLabels| {
            let missing = |ns: &str, name: &str, known: bool| {
                known && departed.contains(&(ns.to_owned(), name.to_owned()))
            };
            missing(
                l.source_workload_namespace.as_str(),
                l.source_workload.as_str(),
                l.source_workload.is_known(),
            ) || missing(
                l.destination_workload_namespace.as_str(),
                l.destination_workload.as_str(),
                l.destination_workload.is_known(),
            )
        };
        let mut removed = 0;
        {
            let mut series = self.tcp_series.lock().unwrap_or_else(|p| p.into_inner());
            series.retain(|labels, _| {
                if !gone(labels) {
                    return true;
                }
                self.tcp_opened.remove(labels);
                self.tcp_closed.remove(labels);
                self.tcp_sent.remove(labels);
                self.tcp_received.remove(labels);
                removed += 1;
                false
            });
        }
        let mut series = self
            .request_series
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        series.retain(|labels, _| {
            if !gone(&labels.traffic) {
                return true;
            }
            self.requests.remove(labels);
            self.duration.remove(labels);
            self.request_bytes.remove(labels);
            self.response_bytes.remove(labels);
            removed += 1;
            false
        });
        removed
    }

    /// Number of label sets (each is 4 metrics; a histogram is many samples).
    pub fn series_count(&self) -> usize {
        let tcp = self.tcp_series.lock().map(|s| s.len()).unwrap_or(0);
        let requests = self.request_series.lock().map(|s| s.len()).unwrap_or(0);
        tcp + requests
    }

    /// The OpenMetrics text of the istio_* families (without the final `# EOF`).
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        encode_registry(out, &self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::labels::{Peer, Reporter, RequestProtocol, Security, ServiceRef, Value};

    fn labels(source: &str, destination: &str) -> TrafficLabels {
        let peer = |name: &str| Peer {
            workload: Value::new(name),
            namespace: Value::new("shop"),
            ..Peer::default()
        };
        TrafficLabels::new(
            Reporter::Destination,
            &peer(source),
            Some(&ServiceRef::new("web", "shop", "cluster.local")),
            &peer(destination),
            RequestProtocol::Tcp,
            Security::MutualTls,
        )
    }

    #[test]
    fn tcp_series_share_values_with_the_families() {
        let m = IstioMetrics::new();
        let l = labels("client", "server");
        m.tcp(&l).opened.inc();
        m.tcp(&l).received.inc_by(100);
        let mut text = String::new();
        m.encode(&mut text).unwrap();
        assert!(text.contains("# TYPE istio_tcp_connections_opened counter"));
        let opened = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .expect("opened series");
        assert!(opened.ends_with(" 1"), "{opened}");
        assert!(opened.contains("reporter=\"destination\""));
        assert!(opened.contains("source_workload=\"client\""));
        assert!(opened.contains("destination_principal=\"unknown\""));
        assert!(opened.contains("destination_service=\"web.shop.svc.cluster.local\""));
        assert!(opened.contains("connection_security_policy=\"mutual_tls\""));
        assert!(opened.contains("response_flags=\"-\""));
        let received = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_received_bytes_total{"))
            .unwrap();
        assert!(received.ends_with(" 100"), "{received}");
    }

    #[test]
    fn label_names_are_exactly_istios_in_order() {
        let m = IstioMetrics::new();
        m.tcp(&labels("a", "b")).opened.inc();
        let mut text = String::new();
        m.encode(&mut text).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .unwrap();
        let inside = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
        let names: Vec<&str> = inside
            .split("\",")
            .map(|kv| kv.split('=').next().unwrap())
            .collect();
        assert_eq!(names, crate::metrics::labels::TRAFFIC_LABEL_NAMES);
    }

    #[test]
    fn requests_record_count_duration_and_sizes() {
        let m = IstioMetrics::new();
        let l = RequestLabels {
            traffic: labels("a", "b"),
            response_code: 200,
            grpc_response_status: Default::default(),
        };
        m.record_request(&l, Duration::from_millis(3), 10, 2000);
        m.record_request(&l, Duration::from_millis(7), 10, 2000);
        let mut text = String::new();
        m.encode(&mut text).unwrap();
        let find = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix} missing in\n{text}"))
                .to_owned()
        };
        assert!(find("istio_requests_total{").ends_with(" 2"));
        assert!(find("istio_requests_total{").contains("response_code=\"200\""));
        assert!(find("istio_requests_total{").contains("grpc_response_status=\"\""));
        assert!(find("istio_request_bytes_sum{").ends_with(" 20.0"));
        assert!(find("istio_response_bytes_sum{").ends_with(" 4000.0"));
        assert!(find("istio_request_duration_milliseconds_count{").ends_with(" 2"));
        assert!(find("istio_request_duration_milliseconds_sum{").ends_with(" 10.0"));
    }

    #[test]
    fn series_of_departed_workloads_are_dropped_and_others_kept() {
        let m = IstioMetrics::new();
        m.tcp(&labels("a", "b")).opened.inc();
        m.tcp(&labels("c", "b")).opened.inc();
        let unknown = TrafficLabels::default();
        m.tcp(&unknown).opened.inc();
        let departed: HashSet<(String, String)> = [("shop", "a"), ("shop", "z")]
            .iter()
            .map(|(n, w)| (n.to_string(), w.to_string()))
            .collect();
        assert_eq!(m.forget_workloads(&departed), 1);
        assert_eq!(m.series_count(), 2);
        let mut text = String::new();
        m.encode(&mut text).unwrap();
        assert!(!text.contains("source_workload=\"a\""));
        assert!(text.contains("source_workload=\"c\""));
    }
}
