//! The Kubernetes configuration source: watches the API and feeds the same model as the
//! file (workloads, services, endpoints, policies, routes).
//!
//! [`start`] runs one watcher per kind and publishes a [`ClusterModel`] after every change
//! (coalesced for 100 ms); [`merge`] adds it to the file's config, which then goes through
//! the agent handle (`reload::Agent`) like a file reload.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use serde::Serialize;

pub mod apply;
pub mod crd;
pub mod fuzzing;
pub mod gateway;
pub mod netns_scan;
pub mod podcgroup;
pub mod translate;
mod watch;

pub use crate::config::kubernetes::{CgroupDriver, KubernetesConfig};
use crate::config::{
    AuthorizationPolicy, Config, GrpcRoute, HttpRoute, PeerNode, Service, Workload,
};
pub use watch::{SourceHandle, SourceStats, start};

/// What the cluster contributes to the model (file sections node/identity/http/telemetry
/// stay from the file).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterModel {
    pub nodes: Vec<PeerNode>,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub authorization: Vec<AuthorizationPolicy>,
    /// Routes that pass the checker against the cluster's services alone; [`merge`] checks
    /// the raw routes again against file and cluster services, and that result is used.
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    /// `{name, namespace, spec}` of each route with a Service parent (other parents removed).
    pub http_routes_raw: Vec<serde_json::Value>,
    pub grpc_routes_raw: Vec<serde_json::Value>,
    pub rejected: Vec<RejectedObject>,
    /// `namespace/name` of meshed pods on this node whose cgroup or process is not there yet.
    pub pending_pods: Vec<String>,
}

/// An object left out of the model, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedObject {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// The file config with the cluster's objects added. Routes are checked here against all
/// services; cluster objects that clash with file objects (same name, cgroup, IP, VIP and
/// port) are left out. Returns every rejection: the model's, the routes', the clashes.
pub fn merge(file: &Config, cluster: &ClusterModel) -> (Config, Vec<RejectedObject>) {
    let mut cfg = file.clone();
    let mut rejected: Vec<RejectedObject> = cluster
        .rejected
        .iter()
        .filter(|r| r.kind != "HTTPRoute" && r.kind != "GRPCRoute")
        .cloned()
        .collect();
    let reject = |kind: &str, namespace: &str, name: &str, reason: String| RejectedObject {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        reason,
    };
    let this_node = file
        .kubernetes
        .as_ref()
        .map_or(file.node.name.as_str(), |k| k.node_name.as_str());

    // Nodes: this node is the file's `node` section; a name or address the file already uses
    // for something else stays the file's.
    for n in &cluster.nodes {
        if n.name == this_node || n.name == file.node.name {
            continue;
        }
        if let Some(f) = file.nodes.iter().find(|f| f.name == n.name) {
            if f.address != n.address {
                rejected.push(reject(
                    "Node",
                    "",
                    &n.name,
                    format!("the file lists node {} with address {}", n.name, f.address),
                ));
            }
            continue;
        }
        let used = file.node.address == Some(n.address)
            || cfg.nodes.iter().any(|o| o.address == n.address);
        if used {
            rejected.push(reject(
                "Node",
                "",
                &n.name,
                format!("address {} is already used by another node", n.address),
            ));
            continue;
        }
        cfg.nodes.push(n.clone());
    }

    // Workloads: name, cgroup and IPs must be unique.
    let mut names: HashSet<(String, String)> = file
        .workloads
        .iter()
        .map(|w| (w.namespace.clone(), w.name.clone()))
        .collect();
    let mut cgroups: HashSet<std::path::PathBuf> =
        file.workloads.iter().map(|w| w.cgroup.clone()).collect();
    let mut ips: HashSet<IpAddr> = file.workloads.iter().flat_map(|w| w.ips.clone()).collect();
    for w in &cluster.workloads {
        let why = if names.contains(&(w.namespace.clone(), w.name.clone())) {
            Some("a workload of that name is defined in the file".to_owned())
        } else if cgroups.contains(&w.cgroup) {
            Some(format!(
                "cgroup {} is already used by a workload of the file",
                w.cgroup.display()
            ))
        } else {
            w.ips
                .iter()
                .find(|ip| ips.contains(ip))
                .map(|ip| format!("IP {ip} is already assigned to another workload"))
        };
        if let Some(why) = why {
            rejected.push(reject("Pod", &w.namespace, &w.name, why));
            continue;
        }
        names.insert((w.namespace.clone(), w.name.clone()));
        cgroups.insert(w.cgroup.clone());
        ips.extend(w.ips.iter().copied());
        cfg.workloads.push(w.clone());
    }

    // Services: endpoints on this node name the file's node; endpoints on unknown nodes are
    // reached as plain TCP until their Node shows up (never guess an address).
    let mut names: HashSet<(String, String)> = file
        .services
        .iter()
        .map(|s| (s.namespace.clone(), s.name.clone()))
        .collect();
    let mut frontends: HashMap<(IpAddr, u16), String> = HashMap::new();
    for s in &file.services {
        for vip in &s.vips {
            for p in &s.ports {
                frontends.insert((*vip, p.port), format!("{}/{}", s.namespace, s.name));
            }
        }
    }
    for s in &cluster.services {
        let id = format!("{}/{}", s.namespace, s.name);
        if names.contains(&(s.namespace.clone(), s.name.clone())) {
            rejected.push(reject(
                "Service",
                &s.namespace,
                &s.name,
                "a service of that name is defined in the file".to_owned(),
            ));
            continue;
        }
        let clash = s.vips.iter().find_map(|vip| {
            s.ports.iter().find_map(|p| {
                frontends.get(&(*vip, p.port)).map(|other| {
                    format!(
                        "VIP {vip} port {} is already used by service {other}",
                        p.port
                    )
                })
            })
        });
        if let Some(why) = clash {
            rejected.push(reject("Service", &s.namespace, &s.name, why));
            continue;
        }
        let mut s = s.clone();
        for e in &mut s.endpoints {
            e.node = match e.node.take() {
                Some(n) if n == this_node => Some(file.node.name.clone()),
                Some(n) if cfg.nodes.iter().any(|p| p.name == n) => Some(n),
                _ => None,
            };
        }
        for vip in &s.vips {
            for p in &s.ports {
                frontends.insert((*vip, p.port), id.clone());
            }
        }
        names.insert((s.namespace.clone(), s.name.clone()));
        cfg.services.push(s);
    }

    let policy_names: HashSet<(String, String)> = file
        .authorization
        .iter()
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    for p in &cluster.authorization {
        if policy_names.contains(&(p.namespace.clone(), p.name.clone())) {
            rejected.push(reject(
                "MeshAuthorizationPolicy",
                &p.namespace,
                &p.name,
                "an authorization policy of that name is defined in the file".to_owned(),
            ));
            continue;
        }
        cfg.authorization.push(p.clone());
    }

    let (http, grpc, route_rejections) = translate::check_routes(
        &cluster.http_routes_raw,
        &cluster.grpc_routes_raw,
        &cfg.services,
    );
    rejected.extend(route_rejections);
    for r in http {
        if file
            .http_routes
            .iter()
            .any(|f| f.namespace == r.namespace && f.name == r.name)
        {
            rejected.push(reject(
                "HTTPRoute",
                &r.namespace,
                &r.name,
                "an HTTPRoute of that name is defined in the file".to_owned(),
            ));
        } else {
            cfg.http_routes.push(r);
        }
    }
    for r in grpc {
        if file
            .grpc_routes
            .iter()
            .any(|f| f.namespace == r.namespace && f.name == r.name)
        {
            rejected.push(reject(
                "GRPCRoute",
                &r.namespace,
                &r.name,
                "a GRPCRoute of that name is defined in the file".to_owned(),
            ));
        } else {
            cfg.grpc_routes.push(r);
        }
    }
    rejected
        .sort_by(|a, b| (&a.kind, &a.namespace, &a.name).cmp(&(&b.kind, &b.namespace, &b.name)));
    (cfg, rejected)
}

#[cfg(test)]
mod merge_tests;
#[cfg(test)]
mod watch_tests;
