//! The label set of Istio's standard metrics, as ztunnel emits it (without locality labels,
//! which the agent does not know), and how workloads, services and identities fill it.
//!
//! Every label is always present; a value nobody knows is "unknown", like ztunnel's
//! `DefaultedUnknown`, so that dashboards which group by a label keep a stable series.

use std::{collections::BTreeMap, sync::Arc};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::identity::SpiffeId;

/// A label value that encodes as "unknown" when absent. Values are shared (`Arc<str>`) because
/// the same workload names appear in many series and in every per-connection record.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Value(Option<Arc<str>>);

pub const UNKNOWN: &str = "unknown";

impl Value {
    pub fn new(text: impl AsRef<str>) -> Value {
        let text = text.as_ref();
        if text.is_empty() {
            Value(None)
        } else {
            Value(Some(Arc::from(text)))
        }
    }

    pub fn unknown() -> Value {
        Value(None)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or(UNKNOWN)
    }

    pub fn is_known(&self) -> bool {
        self.0.is_some()
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Value {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reporter {
    #[default]
    Source,
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

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

/// `connection_security_policy`: ztunnel's two values. "mutual_tls" when the agent carried
/// the connection with verified identities on both ends (the mTLS tunnel, or the in-process
/// path between two workloads of this node, whose identities the kernel's cgroups vouch
/// for); "unknown" otherwise.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Security {
    #[default]
    Unknown,
    MutualTls,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Unknown => "unknown",
            Security::MutualTls => "mutual_tls",
        }
    }
}

impl EncodeLabelValue for Security {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// What the labels say about one end of a connection.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub workload: Value,
    pub namespace: Value,
    pub principal: Value,
    pub canonical_service: Value,
    pub canonical_revision: Value,
    pub cluster: Value,
}

impl Peer {
    /// A workload the agent knows by name and labels (a workload of this node, or an endpoint
    /// with a declared workload).
    pub fn workload(
        name: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        principal: Option<&SpiffeId>,
        cluster: &str,
    ) -> Peer {
        Peer {
            workload: Value::new(name),
            namespace: Value::new(namespace),
            principal: principal.map(principal_value).unwrap_or_default(),
            canonical_service: Value::new(canonical_service(name, labels)),
            canonical_revision: Value::new(canonical_revision(labels)),
            cluster: Value::new(cluster),
        }
    }

    /// A peer known only by its certificate (a client on another node that sent no
    /// workload metadata).
    pub fn identity(id: &SpiffeId, cluster: &str) -> Peer {
        Peer {
            namespace: Value::new(&id.namespace),
            principal: principal_value(id),
            cluster: Value::new(cluster),
            ..Peer::default()
        }
    }

    pub fn is_known(&self) -> bool {
        self.workload.is_known()
    }
}

pub fn principal_value(id: &SpiffeId) -> Value {
    Value::new(id.to_string())
}

/// Istio's canonical service: the canonical-name label, else the Kubernetes recommended name
/// label, else `app`, else the workload name.
pub fn canonical_service<'a>(name: &'a str, labels: &'a BTreeMap<String, String>) -> &'a str {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
    .map(String::as_str)
    .unwrap_or(name)
}

/// Istio's canonical revision: the canonical-revision label, else the Kubernetes recommended
/// version label, else `version`, else "latest".
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> &str {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
    .map(String::as_str)
    .unwrap_or("latest")
}

/// The destination service of a connection or request.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceRef {
    /// `<name>.<namespace>.svc.<cluster_domain>`
    pub host: Value,
    pub name: Value,
    pub namespace: Value,
}

impl ServiceRef {
    pub fn new(name: &str, namespace: &str, cluster_domain: &str) -> ServiceRef {
        ServiceRef {
            host: Value::new(format!("{name}.{namespace}.svc.{cluster_domain}")),
            name: Value::new(name),
            namespace: Value::new(namespace),
        }
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
