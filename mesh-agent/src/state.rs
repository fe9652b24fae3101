//! The one in-memory model of the node: workloads (with their cgroup ids), services and the
//! meshed destinations they expose. Built from the config; the kernel maps and the proxy both
//! read it.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    cgroup,
    config::{Config, EgressRule, IngressRule, NodeConfig},
};

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
}

/// What a meshed (address, port) means.
#[derive(Debug)]
pub struct Destination {
    pub service_id: u32,
    pub service: String,
    /// Upstream addresses to pick from: all endpoints for a VIP, the endpoint itself otherwise.
    pub upstreams: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Destination {
    /// Round robin over the upstreams.
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.upstreams.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len();
        Some(self.upstreams[i])
    }
}

#[derive(Debug)]
pub struct State {
    pub node: NodeConfig,
    pub workloads: Vec<WorkloadState>,
    pub destinations: HashMap<SocketAddr, Destination>,
    pub config: Config,
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
    pub fn build(config: Config) -> Result<State> {
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
            });
        }
        let mut destinations = HashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            let service_id = i as u32 + 1;
            let label = format!("{}.{}", s.name, s.namespace);
            for p in &s.ports {
                let upstreams: Vec<SocketAddr> = s
                    .endpoints
                    .iter()
                    .map(|e| SocketAddr::new(canonical_ip(e.ip), p.target_port))
                    .collect();
                for vip in &s.vips {
                    destinations.insert(
                        SocketAddr::new(canonical_ip(*vip), p.port),
                        Destination {
                            service_id,
                            service: label.clone(),
                            upstreams: upstreams.clone(),
                            next: AtomicUsize::new(0),
                        },
                    );
                }
                // Dialling an endpoint directly is meshed too (it still gets the agent hop).
                for upstream in upstreams {
                    destinations.entry(upstream).or_insert_with(|| Destination {
                        service_id,
                        service: label.clone(),
                        upstreams: vec![upstream],
                        next: AtomicUsize::new(0),
                    });
                }
            }
        }
        Ok(State {
            node: config.node.clone(),
            workloads,
            destinations,
            config,
        })
    }

    pub fn destination(&self, addr: SocketAddr) -> Option<&Destination> {
        self.destinations.get(&canonical(addr))
    }

    pub fn workload_by_cgroup(&self, cgroup_id: u64) -> Option<&WorkloadState> {
        self.workloads.iter().find(|w| w.cgroup_id == cgroup_id)
    }
}
