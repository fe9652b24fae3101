//! The label set of Istio's standard metrics, as ztunnel emits it (without locality labels,
//! which the agent does not know), and how workloads, services and identities fill it.
//!
//! Every label is always present; a value nobody knows is "unknown", like ztunnel's
//! `DefaultedUnknown`, so that dashboards which group by a label keep a stable series.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

// Who a workload is (its label values) belongs to the model; the metrics encode it.
pub use crate::state::peers::{
    Peer, ServiceRef, UNKNOWN, Value, canonical_revision, canonical_service, principal_value,
};

impl EncodeLabelValue for Value {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// `reporter`: which side reports (the data path knows).
pub use crate::l7::meter::Reporter;

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum RequestProtocol {
    #[default]
    Tcp,
    Http,
    Grpc,
}

impl RequestProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Tcp => "tcp",
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
        }
    }
}

impl EncodeLabelValue for RequestProtocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// `connection_security_policy`: ztunnel's two values (the data path decides which).
pub use crate::transport::sink::Security;

impl EncodeLabelValue for Security {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// The labels of the TCP metrics (ztunnel's `CommonTrafficLabels` without locality).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: Reporter,
    pub source_workload: Value,
    pub source_canonical_service: Value,
    pub source_canonical_revision: Value,
    pub source_workload_namespace: Value,
    pub source_principal: Value,
    pub source_app: Value,
    pub source_version: Value,
    pub source_cluster: Value,
    pub destination_service: Value,
    pub destination_service_namespace: Value,
    pub destination_service_name: Value,
    pub destination_workload: Value,
    pub destination_canonical_service: Value,
    pub destination_canonical_revision: Value,
    pub destination_workload_namespace: Value,
    pub destination_principal: Value,
    pub destination_app: Value,
    pub destination_version: Value,
    pub destination_cluster: Value,
    pub request_protocol: RequestProtocol,
    pub response_flags: Flags,
    pub connection_security_policy: Security,
}

/// `response_flags`: "-" when none, else Envoy's flag names.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flags(pub Option<&'static str>);

impl Flags {
    pub fn as_str(&self) -> &'static str {
        self.0.unwrap_or("-")
    }
}

impl EncodeLabelValue for Flags {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

impl TrafficLabels {
    pub fn new(
        reporter: Reporter,
        source: &Peer,
        service: Option<&ServiceRef>,
        destination: &Peer,
        protocol: RequestProtocol,
        security: Security,
    ) -> TrafficLabels {
        let service = service.cloned().unwrap_or_default();
        TrafficLabels {
            reporter,
            source_workload: source.workload.clone(),
            source_canonical_service: source.canonical_service.clone(),
            source_canonical_revision: source.canonical_revision.clone(),
            source_workload_namespace: source.namespace.clone(),
            source_principal: source.principal.clone(),
            // ztunnel reports the canonical service and revision as app and version.
            source_app: source.canonical_service.clone(),
            source_version: source.canonical_revision.clone(),
            source_cluster: source.cluster.clone(),
            destination_service: service.host,
            destination_service_namespace: service.namespace,
            destination_service_name: service.name,
            destination_workload: destination.workload.clone(),
            destination_canonical_service: destination.canonical_service.clone(),
            destination_canonical_revision: destination.canonical_revision.clone(),
            destination_workload_namespace: destination.namespace.clone(),
            destination_principal: destination.principal.clone(),
            destination_app: destination.canonical_service.clone(),
            destination_version: destination.canonical_revision.clone(),
            destination_cluster: destination.cluster.clone(),
            request_protocol: protocol,
            response_flags: Flags::default(),
            connection_security_policy: security,
        }
    }

    /// True when either end is the workload `namespace/name` (for dropping the series of a
    /// workload that is gone).
    pub fn mentions(&self, namespace: &str, name: &str) -> bool {
        (self.source_workload.as_str() == name
            && self.source_workload_namespace.as_str() == namespace)
            || (self.destination_workload.as_str() == name
                && self.destination_workload_namespace.as_str() == namespace)
    }
}

/// The labels of the request metrics: the traffic labels plus the outcome.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    pub response_code: u16,
    /// The gRPC status code for gRPC requests; empty for others, as Istio does (Prometheus
    /// treats an empty label as absent).
    pub grpc_response_status: GrpcStatus,
}

#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct GrpcStatus(pub Option<u32>);

impl EncodeLabelValue for GrpcStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        match self.0 {
            Some(code) => write!(encoder, "{code}"),
            None => Ok(()),
        }
    }
}

/// The label names of Istio's TCP metrics, in the order the agent emits them (a test checks
/// them against the encoded output and against Istio's documented list).
pub const TRAFFIC_LABEL_NAMES: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn canonical_names_follow_istio_precedence() {
        let none = labels(&[]);
        assert_eq!(canonical_service("web", &none), "web");
        assert_eq!(canonical_revision(&none), "latest");
        let app = labels(&[("app", "shop"), ("version", "v2")]);
        assert_eq!(canonical_service("web", &app), "shop");
        assert_eq!(canonical_revision(&app), "v2");
        let k8s = labels(&[
            ("app", "shop"),
            ("app.kubernetes.io/name", "shop-k8s"),
            ("version", "v2"),
            ("app.kubernetes.io/version", "2.0"),
        ]);
        assert_eq!(canonical_service("web", &k8s), "shop-k8s");
        assert_eq!(canonical_revision(&k8s), "2.0");
        let istio = labels(&[
            ("app", "shop"),
            ("service.istio.io/canonical-name", "shop-canonical"),
            ("service.istio.io/canonical-revision", "rev3"),
            ("version", "v2"),
        ]);
        assert_eq!(canonical_service("web", &istio), "shop-canonical");
        assert_eq!(canonical_revision(&istio), "rev3");
    }

    #[test]
    fn unknown_values_encode_as_unknown() {
        assert_eq!(Value::new("").as_str(), "unknown");
        assert_eq!(Value::unknown().to_string(), "unknown");
        assert_eq!(Value::new("x").as_str(), "x");
        assert_eq!(Flags::default().as_str(), "-");
    }

    #[test]
    fn service_host_uses_the_cluster_domain() {
        let s = ServiceRef::new("web", "shop", "cluster.local");
        assert_eq!(s.host.as_str(), "web.shop.svc.cluster.local");
        assert_eq!(s.name.as_str(), "web");
        assert_eq!(s.namespace.as_str(), "shop");
    }
}
