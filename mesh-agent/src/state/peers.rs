//! Who is who: the workloads of this node (by cgroup and address), the workloads behind
//! service endpoints (by address), and the service of each endpoint address, as the values
//! Istio's labels and the access log name them ([`Peer`], [`ServiceRef`]). Built with the
//! model, so a lookup per connection is a hash probe; the metrics encode these values, the
//! data path carries them (a connection's client, the baggage header on the tunnel).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{
    config::Config,
    identity::SpiffeId,
    state::{WorkloadState, canonical_ip},
};

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

#[derive(Debug, Default)]
pub struct PeerIndex {
    by_cgroup: HashMap<u64, Peer>,
    by_ip: HashMap<IpAddr, Peer>,
    /// Endpoint address (ip, target port) -> its service.
    services_by_endpoint: HashMap<SocketAddr, ServiceRef>,
    /// (namespace, name) of every workload the labels may name.
    workloads: HashSet<(String, String)>,
    cluster: String,
    cluster_domain: String,
}

impl PeerIndex {
    pub fn build(config: &Config, workloads: &[WorkloadState]) -> PeerIndex {
        let cluster = config.telemetry.cluster_id.clone();
        let domain = config.telemetry.cluster_domain.clone();
        let mut index = PeerIndex {
            cluster: cluster.clone(),
            cluster_domain: domain.clone(),
            ..PeerIndex::default()
        };
        let no_labels = BTreeMap::new();
        // Endpoints first, so that a local workload's richer entry (labels, identity) wins.
        for s in &config.services {
            let service = ServiceRef::new(&s.name, &s.namespace, &domain);
            for e in &s.endpoints {
                let ip = canonical_ip(e.ip);
                if let Some(name) = &e.workload {
                    index.workloads.insert((s.namespace.clone(), name.clone()));
                    index.by_ip.entry(ip).or_insert_with(|| {
                        Peer::workload(name, &s.namespace, &no_labels, None, &cluster)
                    });
                }
                for p in &s.ports {
                    index
                        .services_by_endpoint
                        .entry(SocketAddr::new(ip, p.target_port))
                        .or_insert_with(|| service.clone());
                }
            }
        }
        for w in workloads {
            let peer = Peer::workload(
                &w.name,
                &w.namespace,
                &w.labels,
                Some(&w.identity),
                &cluster,
            );
            index
                .workloads
                .insert((w.namespace.clone(), w.name.clone()));
            for ip in &w.ips {
                index.by_ip.insert(canonical_ip(*ip), peer.clone());
            }
            index.by_cgroup.insert(w.cgroup_id, peer);
        }
        index
    }

    pub fn by_cgroup(&self, cgroup_id: u64) -> Option<&Peer> {
        self.by_cgroup.get(&cgroup_id)
    }

    pub fn by_ip(&self, ip: IpAddr) -> Option<&Peer> {
        self.by_ip.get(&canonical_ip(ip))
    }

    /// The workload behind an endpoint: a workload of this node, else what the endpoint's
    /// agent said about it, else the endpoint's declared workload name.
    /// `remote` is what the endpoint's agent said about it (the tunnel's baggage), asked only
    /// when this node does not know the workload.
    pub fn endpoint_workload(
        &self,
        ip: IpAddr,
        remote: impl FnOnce(IpAddr) -> Option<Baggage>,
    ) -> Option<Peer> {
        let local = self.by_ip(ip).filter(|p| p.principal.is_known());
        if let Some(p) = local {
            return Some(p.clone());
        }
        remote(ip)
            .and_then(|b| self.from_destination_baggage(&b))
            .or_else(|| self.by_ip(ip).cloned())
    }

    pub fn service_of_endpoint(&self, addr: SocketAddr) -> Option<&ServiceRef> {
        self.services_by_endpoint
            .get(&SocketAddr::new(canonical_ip(addr.ip()), addr.port()))
    }

    pub fn service(&self, name: &str, namespace: &str) -> ServiceRef {
        ServiceRef::new(name, namespace, &self.cluster_domain)
    }

    /// A client known by its certificate: the local workload with that identity when there is
    /// exactly one, else the identity alone.
    pub fn by_identity(&self, id: &SpiffeId) -> Peer {
        let principal = principal_value(id);
        let mut matches = self.by_cgroup.values().filter(|p| p.principal == principal);
        match (matches.next(), matches.next()) {
            (Some(only), None) => only.clone(),
            _ => Peer::identity(id, &self.cluster),
        }
    }

    /// A peer from the workload metadata a source agent sent along (the `baggage` of the
    /// tunnel request), trusted only for the namespace its certificate proves.
    pub fn from_baggage(&self, id: &SpiffeId, baggage: &Baggage) -> Peer {
        let mut peer = Peer::identity(id, &self.cluster);
        if baggage.namespace.as_deref() != Some(id.namespace.as_str()) {
            return peer;
        }
        if let Some(name) = &baggage.workload {
            peer.workload = Value::new(name);
            peer.canonical_service = Value::new(baggage.service.as_deref().unwrap_or(name));
            peer.canonical_revision = Value::new(baggage.version.as_deref().unwrap_or("latest"));
        }
        peer
    }

    /// The workload behind an endpoint of another node, as that node's agent described it.
    pub fn from_destination_baggage(&self, baggage: &Baggage) -> Option<Peer> {
        let name = baggage.workload.as_deref()?;
        let v = |o: &Option<String>| Value::new(o.as_deref().unwrap_or(""));
        Some(Peer {
            workload: Value::new(name),
            namespace: v(&baggage.namespace),
            principal: v(&baggage.principal),
            canonical_service: Value::new(baggage.service.as_deref().unwrap_or(name)),
            canonical_revision: Value::new(baggage.version.as_deref().unwrap_or("latest")),
            cluster: Value::new(&self.cluster),
        })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn workloads(&self) -> &HashSet<(String, String)> {
        &self.workloads
    }
}

/// Workload metadata carried from the source agent to the destination agent in the tunnel
/// request's `baggage` header (W3C baggage syntax, the keys ztunnel uses).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Baggage {
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub service: Option<String>,
    pub version: Option<String>,
    /// The workload's SPIFFE ID: used from a destination agent's answer only (a client's own
    /// identity is its certificate's).
    pub principal: Option<String>,
}

impl Baggage {
    pub fn of(peer: &Peer) -> Option<String> {
        if !peer.workload.is_known() {
            return None;
        }
        let mut text = format!(
            "k8s.namespace.name={},k8s.workload.name={},service.name={},service.version={}",
            peer.namespace, peer.workload, peer.canonical_service, peer.canonical_revision
        );
        if peer.principal.is_known() {
            text.push_str(",spiffe.id=");
            text.push_str(peer.principal.as_str());
        }
        Some(text)
    }

    pub fn parse(header: &str) -> Baggage {
        let mut b = Baggage::default();
        for member in header.split(',') {
            let Some((key, value)) = member.split_once('=') else {
                continue;
            };
            // Properties (";k=v") are not used here.
            let value = value.split(';').next().unwrap_or("").trim();
            if value.is_empty() || value.len() > 253 {
                continue;
            }
            let slot = match key.trim() {
                "k8s.namespace.name" => &mut b.namespace,
                "k8s.workload.name" | "k8s.deployment.name" => &mut b.workload,
                "service.name" => &mut b.service,
                "service.version" => &mut b.version,
                "spiffe.id" => &mut b.principal,
                _ => continue,
            };
            *slot = Some(value.to_owned());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baggage_round_trips_and_is_bounded_by_the_certificate_namespace() {
        let peer = Peer {
            workload: Value::new("client"),
            namespace: Value::new("shop"),
            canonical_service: Value::new("client-app"),
            canonical_revision: Value::new("v3"),
            ..Peer::default()
        };
        let header = Baggage::of(&peer).unwrap();
        let parsed = Baggage::parse(&header);
        assert_eq!(parsed.workload.as_deref(), Some("client"));
        assert_eq!(parsed.version.as_deref(), Some("v3"));
        let index = PeerIndex::default();
        let id = |ns: &str| SpiffeId {
            trust_domain: "cluster.local".into(),
            namespace: ns.into(),
            service_account: "sa".into(),
        };
        let trusted = index.from_baggage(&id("shop"), &parsed);
        assert_eq!(trusted.workload.as_str(), "client");
        assert_eq!(trusted.canonical_service.as_str(), "client-app");
        assert_eq!(
            trusted.principal.as_str(),
            "spiffe://cluster.local/ns/shop/sa/sa"
        );
        // A certificate of another namespace cannot claim a workload of "shop".
        let spoofed = index.from_baggage(&id("other"), &parsed);
        assert_eq!(spoofed.workload.as_str(), "unknown");
        assert_eq!(spoofed.namespace.as_str(), "other");
        assert!(Baggage::of(&Peer::default()).is_none());
        // A destination agent's answer carries the workload's identity too.
        let server = Peer {
            principal: Value::new("spiffe://cluster.local/ns/shop/sa/web"),
            ..peer.clone()
        };
        let answer = Baggage::parse(&Baggage::of(&server).unwrap());
        let labelled = index.from_destination_baggage(&answer).unwrap();
        assert_eq!(
            labelled.principal.as_str(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(labelled.canonical_service.as_str(), "client-app");
        assert_eq!(labelled.canonical_revision.as_str(), "v3");
        // ... but a client cannot claim an identity through it.
        assert_eq!(
            index.from_baggage(&id("shop"), &answer).principal.as_str(),
            "spiffe://cluster.local/ns/shop/sa/sa"
        );
        assert_eq!(
            Baggage::parse("garbage,,=;k8s.workload.name="),
            Baggage::default()
        );
    }
}
