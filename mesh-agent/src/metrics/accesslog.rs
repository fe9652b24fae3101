//! The access log: one line per closed connection and per HTTP request.
//!
//! Lines are tracing events at INFO with target `access`, so the process log filter decides
//! whether they appear (`info,access=off` drops them) and `--log-format` whether they are text
//! or JSON. Field names are fixed (dotted names group the two ends); label values that nobody
//! knows are "unknown", absent optional values are "-".
//!
//! The request path never formats or writes a line: it hands the record to [`AccessLog`],
//! whose one writer thread emits the event (see `writer`).

mod writer;

use std::net::SocketAddr;

/// Records waiting for the writer by default; the `telemetry:` section's default of
/// `access_log_buffer`, defined there because the configuration does not depend on this module.
pub use crate::config::telemetry::DEFAULT_ACCESS_LOG_BUFFER as DEFAULT_BUFFER;
pub use writer::AccessLog;

use crate::metrics::records::{ConnectionRecord, RequestRecord};

/// The tracing target of access-log lines.
pub const TARGET: &str = "access";

/// Field names of a connection line, in the order they are written.
pub const CONNECTION_FIELDS: [&str; 16] = [
    "reporter",
    "direction",
    "src.addr",
    "dst.addr",
    "src.workload",
    "src.namespace",
    "src.identity",
    "dst.service",
    "dst.workload",
    "dst.namespace",
    "dst.identity",
    "request_bytes",
    "response_bytes",
    "duration_ms",
    "security",
    "redirected",
];

/// Field names of a request line, in the order they are written.
pub const REQUEST_FIELDS: [&str; 20] = [
    "method",
    "authority",
    "path",
    "protocol",
    "response_code",
    "grpc_status",
    "response_flags",
    "src.addr",
    "src.workload",
    "src.namespace",
    "src.identity",
    "dst.service",
    "dst.workload",
    "dst.namespace",
    "dst.identity",
    "duration_ms",
    "request_bytes",
    "response_bytes",
    "upstream",
    "attempts",
];

/// Source and destination addresses of a connection seen from one of its ends: the client
/// end ("outbound") is the source, the server end ("inbound") the destination.
fn ends(direction: &str, local: SocketAddr, remote: SocketAddr) -> (SocketAddr, SocketAddr) {
    if direction == "inbound" {
        (remote, local)
    } else {
        (local, remote)
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One line for a connection that closed.
pub fn connection(record: &ConnectionRecord) {
    let l = &record.labels;
    let (src, dst) = ends(record.direction, record.local, record.remote);
    tracing::info!(
        target: TARGET,
        reporter = %l.reporter.as_str(),
        direction = %record.direction,
        src.addr = %src,
        dst.addr = %dst,
        src.workload = %l.source_workload.as_str(),
        src.namespace = %l.source_workload_namespace.as_str(),
        src.identity = %l.source_principal.as_str(),
        dst.service = %l.destination_service.as_str(),
        dst.workload = %l.destination_workload.as_str(),
        dst.namespace = %l.destination_workload_namespace.as_str(),
        dst.identity = %l.destination_principal.as_str(),
        request_bytes = record.request_bytes,
        response_bytes = record.response_bytes,
        duration_ms = millis(record.duration),
        security = %l.connection_security_policy.as_str(),
        redirected = record.redirected,
        "connection complete"
    );
}

/// One line for an HTTP request once its response is done.
pub fn request(record: &RequestRecord) {
    let l = &record.labels.traffic;
    let grpc_status = record
        .labels
        .grpc_response_status
        .0
        .map_or_else(|| "-".to_string(), |code| code.to_string());
    let upstream = record
        .upstream
        .map_or_else(|| "-".to_string(), |a| a.to_string());
    tracing::info!(
        target: TARGET,
        method = %record.target.method(),
        authority = %record.target.authority(),
        path = %record.target.path(),
        protocol = %record.protocol,
        response_code = record.labels.response_code,
        grpc_status = %grpc_status.as_str(),
        response_flags = %l.response_flags.as_str(),
        src.addr = %record.client,
        src.workload = %l.source_workload.as_str(),
        src.namespace = %l.source_workload_namespace.as_str(),
        src.identity = %l.source_principal.as_str(),
        dst.service = %l.destination_service.as_str(),
        dst.workload = %l.destination_workload.as_str(),
        dst.namespace = %l.destination_workload_namespace.as_str(),
        dst.identity = %l.destination_principal.as_str(),
        duration_ms = millis(record.duration),
        request_bytes = record.request_bytes,
        response_bytes = record.response_bytes,
        upstream = %upstream.as_str(),
        attempts = record.attempts,
        "request complete"
    );
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc, time::Duration};

    use serde_json::Value;

    use super::*;
    use crate::{
        identity::SpiffeId,
        logging::{Capture, LogFormat, build},
        metrics::{
            labels::{
                GrpcStatus, Peer, Reporter, RequestLabels, RequestProtocol, Security, ServiceRef,
                TrafficLabels,
            },
            records::RequestTarget,
        },
    };

    fn traffic(reporter: Reporter) -> TrafficLabels {
        let td = "cluster.local";
        let client_id = SpiffeId::new(td, "default", "client");
        let web_id = SpiffeId::new(td, "shop", "web");
        let source = Peer::workload(
            "client",
            "default",
            &BTreeMap::new(),
            Some(&client_id),
            "Kubernetes",
        );
        let destination = Peer::workload("web", "shop", &BTreeMap::new(), Some(&web_id), "");
        TrafficLabels::new(
            reporter,
            &source,
            Some(&ServiceRef::new("web", "shop", "cluster.local")),
            &destination,
            RequestProtocol::Tcp,
            Security::MutualTls,
        )
    }

    /// Runs `emit` under a JSON subscriber and returns the one line it wrote.
    fn json_line(format: LogFormat, emit: impl FnOnce()) -> String {
        let out = Capture::default();
        let (dispatch, _, _) = build("info", format, out.clone(), false);
        tracing::dispatcher::with_default(&dispatch, emit);
        let text = out.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        text
    }

    fn keys(line: &Value) -> Vec<String> {
        let mut keys: Vec<String> = line.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    fn expected(fields: &[&str]) -> Vec<String> {
        let mut keys: Vec<String> = fields
            .iter()
            .chain(&["timestamp", "level", "target", "message"])
            .map(|s| s.to_string())
            .collect();
        keys.sort();
        keys
    }

    fn connection_record(labels: &TrafficLabels, direction: &'static str) -> ConnectionRecord {
        ConnectionRecord {
            labels: Arc::new(labels.clone()),
            direction,
            local: "10.1.1.2:41000".parse().unwrap(),
            remote: "10.96.0.10:80".parse().unwrap(),
            request_bytes: 78,
            response_bytes: 1024,
            duration: Duration::from_micros(12_345),
            redirected: true,
        }
    }

    #[test]
    fn connection_line_has_exactly_the_documented_fields() {
        let labels = traffic(Reporter::Source);
        let record = connection_record(&labels, "outbound");
        let text = json_line(LogFormat::Json, || connection(&record));
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(keys(&line), expected(&CONNECTION_FIELDS), "{text}");
        assert_eq!(line["target"], "access");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "connection complete");
        assert_eq!(line["reporter"], "source");
        assert_eq!(line["direction"], "outbound");
        assert_eq!(line["src.addr"], "10.1.1.2:41000");
        assert_eq!(line["dst.addr"], "10.96.0.10:80");
        assert_eq!(line["src.workload"], "client");
        assert_eq!(line["src.namespace"], "default");
        assert_eq!(
            line["src.identity"],
            "spiffe://cluster.local/ns/default/sa/client"
        );
        assert_eq!(line["dst.service"], "web.shop.svc.cluster.local");
        assert_eq!(line["dst.workload"], "web");
        assert_eq!(line["dst.namespace"], "shop");
        assert_eq!(
            line["dst.identity"],
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(line["request_bytes"], 78);
        assert_eq!(line["response_bytes"], 1024);
        assert_eq!(line["duration_ms"], 12);
        assert_eq!(line["security"], "mutual_tls");
        assert_eq!(line["redirected"], true);
    }

    #[test]
    fn the_server_end_of_a_connection_reports_the_peer_as_source() {
        let labels = traffic(Reporter::Destination);
        let record = connection_record(&labels, "inbound");
        let text = json_line(LogFormat::Json, || connection(&record));
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["reporter"], "destination");
        assert_eq!(line["src.addr"], "10.96.0.10:80");
        assert_eq!(line["dst.addr"], "10.1.1.2:41000");
    }

    #[test]
    fn unknown_labels_print_as_unknown() {
        let labels = TrafficLabels::default();
        let record = connection_record(&labels, "outbound");
        let text = json_line(LogFormat::Json, || connection(&record));
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        for field in [
            "src.workload",
            "src.identity",
            "dst.service",
            "dst.workload",
            "dst.identity",
        ] {
            assert_eq!(line[field], "unknown", "{field}: {text}");
        }
        assert_eq!(line["security"], "unknown");
    }

    fn request_labels(grpc: Option<u32>) -> RequestLabels {
        let mut traffic = traffic(Reporter::Source);
        traffic.request_protocol = RequestProtocol::Http;
        RequestLabels {
            traffic,
            response_code: 503,
            grpc_response_status: GrpcStatus(grpc),
        }
    }

    fn request_record(labels: &RequestLabels, upstream: Option<SocketAddr>) -> RequestRecord {
        let (parts, ()) = http::Request::get("/api/items?page=2")
            .header("host", "web.shop:80")
            .body(())
            .unwrap()
            .into_parts();
        RequestRecord {
            labels: Arc::new(labels.clone()),
            client: "10.1.1.2:41000".parse().unwrap(),
            target: RequestTarget::of(&parts),
            protocol: "HTTP/1.1",
            duration: Duration::from_millis(250),
            request_bytes: 0,
            response_bytes: 19,
            upstream,
            attempts: 2,
        }
    }

    #[test]
    fn request_line_has_exactly_the_documented_fields() {
        let mut labels = request_labels(None);
        labels.traffic.response_flags.0 = Some("UF");
        let record = request_record(&labels, Some("10.1.2.3:8080".parse().unwrap()));
        let text = json_line(LogFormat::Json, || request(&record));
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(keys(&line), expected(&REQUEST_FIELDS), "{text}");
        assert_eq!(line["target"], "access");
        assert_eq!(line["message"], "request complete");
        assert_eq!(line["src.addr"], "10.1.1.2:41000");
        assert_eq!(line["src.workload"], "client");
        assert_eq!(line["dst.service"], "web.shop.svc.cluster.local");
        assert_eq!(
            line["dst.identity"],
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(line["method"], "GET");
        assert_eq!(line["authority"], "web.shop:80");
        assert_eq!(line["path"], "/api/items?page=2");
        assert_eq!(line["protocol"], "HTTP/1.1");
        assert_eq!(line["response_code"], 503);
        assert_eq!(line["grpc_status"], "-");
        assert_eq!(line["response_flags"], "UF");
        assert_eq!(line["duration_ms"], 250);
        assert_eq!(line["request_bytes"], 0);
        assert_eq!(line["response_bytes"], 19);
        assert_eq!(line["upstream"], "10.1.2.3:8080");
        assert_eq!(line["attempts"], 2);
    }

    #[test]
    fn request_without_upstream_and_with_grpc_status() {
        let labels = request_labels(Some(14));
        let record = request_record(&labels, None);
        let text = json_line(LogFormat::Json, || request(&record));
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["upstream"], "-");
        assert_eq!(line["grpc_status"], "14");
        assert_eq!(line["response_flags"], "-");
    }

    #[test]
    fn text_lines_carry_the_message_and_fields() {
        let labels = traffic(Reporter::Source);
        let record = connection_record(&labels, "outbound");
        let text = json_line(LogFormat::Text, || connection(&record));
        assert!(
            text.contains(" INFO access: connection complete "),
            "{text}"
        );
        assert!(text.contains("src.addr=10.1.1.2:41000"), "{text}");
        assert!(text.contains("request_bytes=78"), "{text}");
        assert!(text.contains("redirected=true"), "{text}");

        let labels = request_labels(None);
        let record = request_record(&labels, None);
        let text = json_line(LogFormat::Text, || request(&record));
        assert!(text.contains(" INFO access: request complete "), "{text}");
        assert!(text.contains("method=GET"), "{text}");
    }

    #[test]
    fn the_access_target_can_be_filtered_out() {
        let out = Capture::default();
        let (dispatch, _, _) = build("info,access=off", LogFormat::Json, out.clone(), false);
        let labels = traffic(Reporter::Source);
        let record = connection_record(&labels, "outbound");
        tracing::dispatcher::with_default(&dispatch, || connection(&record));
        assert_eq!(out.text(), "");
    }
}
