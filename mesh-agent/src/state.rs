//! The one in-memory model of the node: workloads (with their cgroup ids), services and the
//! meshed destinations they expose. Built from the config; the kernel maps and the proxy both
//! read it.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    cgroup,
    config::{Config, EgressRule, IngressRule, NodeConfig, PeerAuthMode, PortProtocol},
    identity::SpiffeId,
    routing::{BackendKey, backend::Backend, matcher::RouteTable},
};
// Where endpoints are and how they are reached belongs to routing; the model's users name it
// from here too.
pub use crate::routing::{Upstream, Via};

mod kernel;
pub mod peers;
use peers::PeerIndex;

#[derive(Debug, Serialize)]
pub struct WorkloadState {
    /// 1-based, stable for one config.
    pub id: u32,
    pub name: String,
    pub namespace: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub netns: Option<PathBuf>,
    pub ips: Vec<IpAddr>,
    pub egress: Option<Vec<EgressRule>>,
    pub ingress: Option<Vec<IngressRule>>,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub mode: PeerAuthMode,
    /// The SPIFFE ID its certificate carries.
    #[serde(serialize_with = "crate::state::display")]
    pub identity: SpiffeId,
}

pub(crate) fn display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// What a meshed (address, port) means.
#[derive(Debug)]
pub struct Destination {
    pub service_id: u32,
    pub service: String,
    /// Upstreams to pick from: all endpoints for a VIP, the endpoint itself otherwise.
    pub upstreams: Vec<Upstream>,
    next: AtomicUsize,
    /// The service port behind a VIP, for the L7 path. `None` for an endpoint dialled
    /// directly: that connection asked for one specific pod, so it is relayed as TCP.
    pub l7: Option<L7Port>,
}

/// A service port as the L7 path sees it.
pub struct L7Port {
    pub service: BackendKey,
    pub protocol: PortProtocol,
    pub routes: Arc<RouteTable>,
}

impl std::fmt::Debug for L7Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L7Port")
            .field("service", &self.service)
            .field("protocol", &self.protocol)
            .field("has_routes", &self.routes.has_routes())
            .finish()
    }
}

impl Destination {
    /// Round robin over the upstreams.
    pub fn pick(&self) -> Option<&Upstream> {
        if self.upstreams.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len();
        Some(&self.upstreams[i])
    }
}

pub struct State {
    pub node: NodeConfig,
    pub workloads: Vec<WorkloadState>,
    pub destinations: HashMap<SocketAddr, Destination>,
    /// Every service port as an L7 backend (endpoints, load balancer, outlier detection,
    /// retry budget).
    pub backends: HashMap<BackendKey, Arc<Backend>>,
    /// Workloads and services as the metric labels name them.
    pub peers: PeerIndex,
    pub config: Config,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("node", &self.node)
            .field("workloads", &self.workloads)
            .field("destinations", &self.destinations)
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// IPv4-mapped IPv6 addresses are the same destination as their IPv4 form.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

impl State {
    /// Builds the model of `config`. `previous` is the running model, if any: backends whose
    /// service did not change are kept, and changed ones keep their endpoints' health
    /// ([`Backend::following`]).
    pub fn build(config: Config, previous: Option<&State>) -> Result<State> {
        let trust_domain = &config.identity.trust_domain;
        let mut workloads = Vec::new();
        for (i, w) in config.workloads.iter().enumerate() {
            let cgroup_id = cgroup::cgroup_id(&w.cgroup)
                .with_context(|| format!("workload {}/{}", w.namespace, w.name))?;
            workloads.push(WorkloadState {
                id: i as u32 + 1,
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                cgroup: w.cgroup.clone(),
                cgroup_id,
                netns: w.netns.clone(),
                ips: w.ips.clone(),
                egress: w.egress.clone(),
                ingress: w.ingress.clone(),
                service_account: w.service_account.clone(),
                labels: w.labels.clone(),
                mode: w.mode,
                identity: SpiffeId {
                    trust_domain: trust_domain.clone(),
                    namespace: w.namespace.clone(),
                    service_account: w.service_account.clone(),
                },
            });
        }
        let tunnel_of = |node: &Option<String>| -> Via {
            match node {
                None => Via::Direct,
                Some(name) if *name == config.node.name => Via::Local,
                Some(name) => match config.nodes.iter().find(|n| &n.name == name) {
                    Some(peer) => Via::Tunnel {
                        node: name.clone(),
                        tunnel: SocketAddr::new(peer.address, config.node.tunnel_port),
                    },
                    // The config checker rejects unknown nodes; never guess an address.
                    None => Via::Direct,
                },
            }
        };
        let mut destinations = HashMap::new();
        let mut backends = HashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            let service_id = i as u32 + 1;
            let label = format!("{}.{}", s.name, s.namespace);
            for p in &s.ports {
                let upstreams: Vec<Upstream> = s
                    .endpoints
                    .iter()
                    .map(|e| Upstream {
                        addr: SocketAddr::new(canonical_ip(e.ip), p.target_port),
                        via: tunnel_of(&e.node),
                    })
                    .collect();
                let key = BackendKey {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    port: p.port,
                };
                backends.insert(
                    key.clone(),
                    Backend::following(
                        previous.and_then(|p| p.backends.get(&key)),
                        key.clone(),
                        upstreams.clone(),
                        s.load_balancer,
                        s.outlier_detection.clone(),
                        &config.http.retry_budget,
                    ),
                );
                let routes = Arc::new(RouteTable::build(&config, &s.namespace, &s.name, p.port));
                for vip in &s.vips {
                    destinations.insert(
                        SocketAddr::new(canonical_ip(*vip), p.port),
                        Destination {
                            service_id,
                            service: label.clone(),
                            upstreams: upstreams.clone(),
                            next: AtomicUsize::new(0),
                            l7: Some(L7Port {
                                service: key.clone(),
                                protocol: p.protocol,
                                routes: routes.clone(),
                            }),
                        },
                    );
                }
                // Dialling an endpoint directly is meshed too (it still gets the agent hop).
                for upstream in upstreams {
                    destinations
                        .entry(upstream.addr)
                        .or_insert_with(|| Destination {
                            service_id,
                            service: label.clone(),
                            upstreams: vec![upstream],
                            next: AtomicUsize::new(0),
                            l7: None,
                        });
                }
            }
        }
        let peers = PeerIndex::build(&config, &workloads);
        Ok(State {
            node: config.node.clone(),
            workloads,
            destinations,
            backends,
            peers,
            config,
        })
    }

    pub fn destination(&self, addr: SocketAddr) -> Option<&Destination> {
        self.destinations.get(&canonical(addr))
    }

    pub fn workload_by_cgroup(&self, cgroup_id: u64) -> Option<&WorkloadState> {
        self.workloads.iter().find(|w| w.cgroup_id == cgroup_id)
    }

    /// The local workload that owns `ip` (the target of an inbound tunnel request).
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&WorkloadState> {
        let ip = canonical_ip(ip);
        self.workloads
            .iter()
            .find(|w| w.ips.iter().any(|own| canonical_ip(*own) == ip))
    }

    /// The identity a node agent presents; also used for processes of the node that are not
    /// declared workloads.
    pub fn agent_identity(&self) -> SpiffeId {
        crate::identity::agent_id(&self.config.identity.trust_domain)
    }

    /// Every identity this node speaks as: the agent's own and each local workload's.
    pub fn local_identities(&self) -> Vec<SpiffeId> {
        let mut ids = vec![self.agent_identity()];
        ids.extend(self.workloads.iter().map(|w| w.identity.clone()));
        ids
    }

    /// The address reported as the original client of a connection from `source`: the
    /// workload's own address of the destination's family, else this node's address.
    pub fn origin_address(&self, source: Option<&WorkloadState>, v6: bool) -> IpAddr {
        let same_family = |ip: &&IpAddr| canonical_ip(**ip).is_ipv6() == v6;
        source
            .and_then(|w| w.ips.iter().find(same_family).copied())
            .or(self
                .node
                .address
                .filter(|a| canonical_ip(*a).is_ipv6() == v6))
            .unwrap_or(if v6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            })
    }
}
