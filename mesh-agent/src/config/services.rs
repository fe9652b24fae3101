//! The `services:` section: load-balanced services, with their virtual IPs, their ports (and
//! the endpoint port each maps to) and their endpoints (and the node hosting each one). The L7
//! keys of a service (port protocols, `load_balancer`, `outlier_detection`) are checked with
//! the rest of the L7 configuration, in `routes`.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::checker::{Checker, ConfigError};
use super::raw::{Text, null_as_empty, present};
use super::routes::{LoadBalancer, OutlierDetection, PortProtocol, RawOutlierDetection};
use super::scalars::{DEFAULT_NAMESPACE, line_of, quote};

/// A load-balanced service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Virtual IPs; may be empty for endpoint-only meshing.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
    /// Endpoint selection for L7 requests (L4 connections are round robin).
    pub load_balancer: LoadBalancer,
    /// `None`: endpoints are never ejected.
    pub outlier_detection: Option<OutlierDetection>,
}

/// A service port and the endpoint port it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub port: u16,
    /// Defaults to `port`.
    pub target_port: u16,
    pub name: Option<String>,
    pub protocol: PortProtocol,
}

/// A backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// The node hosting the endpoint: `Some` is this node's name or a name
    /// listed under `nodes` (reached through that node's mTLS tunnel, or
    /// in process for this node); `None` means the endpoint is outside the
    /// mesh and is reached over plain TCP.
    pub node: Option<String>,
    /// Informational: the workload backing the endpoint.
    pub workload: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    name: Text,
    #[serde(default)]
    namespace: Option<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    vips: Vec<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    ports: Vec<RawServicePort>,
    #[serde(default, deserialize_with = "null_as_empty")]
    endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    load_balancer: Option<Text>,
    /// `Some(value: None)` is a key present with a null value, which is refused as ambiguous.
    #[serde(default, deserialize_with = "present")]
    outlier_detection: Option<Spanned<Option<RawOutlierDetection>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServicePort {
    port: Text,
    #[serde(default)]
    target_port: Option<Text>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    protocol: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    ip: Text,
    #[serde(default)]
    node: Option<Text>,
    #[serde(default)]
    workload: Option<String>,
}

impl Checker<'_> {
    /// Each service is checked on its own; the valid ones are returned, and
    /// the ids of the others are remembered so that routes referring to them
    /// do not report them again as undefined. `node_names` are this node
    /// and every node listed under `nodes`.
    pub(super) fn services(
        &self,
        raws: Vec<RawService>,
        node_names: &[String],
    ) -> Result<Vec<Service>, ConfigError> {
        let mut names: HashMap<(String, String), u64> = HashMap::new();
        let mut frontends: HashMap<(IpAddr, u16), (String, u64)> = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let namespace = raw
                .namespace
                .as_ref()
                .map_or(DEFAULT_NAMESPACE, |n| n.value.as_str());
            let id = format!("{namespace}/{}", raw.name.value);
            // A duplicate is the second definition's mistake; the first one
            // stays valid for the routes that refer to it.
            if let Some(first) = names.get(&(namespace.to_owned(), raw.name.value.clone())) {
                self.keep::<()>(Err(self.err(
                    raw.name.referenced,
                    format!(
                        "duplicate service {} (first defined at line {first})",
                        quote(&id)
                    ),
                )));
                continue;
            }
            names.insert(
                (namespace.to_owned(), raw.name.value.clone()),
                line_of(&raw.name),
            );
            match self.service(&raw, node_names, &mut frontends) {
                Ok(service) => out.push(service),
                Err(e) => {
                    self.keep::<()>(Err(e));
                    self.broken_services.borrow_mut().insert(id);
                }
            }
        }
        Ok(out)
    }

    /// One service; its ports, VIPs, endpoints and settings are each checked.
    fn service(
        &self,
        raw: &RawService,
        node_names: &[String],
        frontends: &mut HashMap<(IpAddr, u16), (String, u64)>,
    ) -> Result<Service, ConfigError> {
        let before = self.errors_so_far();
        let name = self.keep(self.object_name(&raw.name, "service name"));
        let namespace = self.keep(self.namespace(raw.namespace.as_ref()));
        let id = format!(
            "{}/{}",
            namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            raw.name.value
        );

        let mut ports: Vec<ServicePort> = Vec::with_capacity(raw.ports.len());
        let mut port_lines: HashMap<u16, u64> = HashMap::new();
        for raw_port in &raw.ports {
            let port = self.keep(self.port(&raw_port.port));
            if let Some(port) = port
                && let Some(first) = port_lines.insert(port, line_of(&raw_port.port))
            {
                self.keep::<()>(Err(self.err(
                    raw_port.port.referenced,
                    format!("duplicate service port {port} (first defined at line {first})"),
                )));
                continue;
            }
            let target_port = match &raw_port.target_port {
                Some(t) => self.keep(self.port(t)),
                None => port,
            };
            let protocol =
                self.keep(self.port_protocol(raw_port.protocol.as_ref(), raw_port.name.as_deref()));
            if let (Some(port), Some(target_port), Some(protocol)) = (port, target_port, protocol) {
                ports.push(ServicePort {
                    port,
                    target_port,
                    name: raw_port.name.clone(),
                    protocol,
                });
            }
        }

        let mut vips = Vec::with_capacity(raw.vips.len());
        for raw_vip in &raw.vips {
            let Some(vip) = self.keep(self.ip(raw_vip)) else {
                continue;
            };
            // A (VIP, port) frontend maps to exactly one backend set in
            // the datapath; two services cannot share it.
            let taken = ports
                .iter()
                .find_map(|port| Some(port.port).zip(frontends.get(&(vip, port.port))));
            if let Some((port, (other, line))) = taken {
                self.keep::<()>(Err(self.err(
                    raw_vip.referenced,
                    format!(
                        "VIP {vip} port {port} is already used by service {} (line {line})",
                        quote(other)
                    ),
                )));
                continue;
            }
            for port in &ports {
                frontends.insert((vip, port.port), (id.clone(), line_of(raw_vip)));
            }
            vips.push(vip);
        }

        let endpoints = self.each(raw.endpoints.iter().map(|e| {
            let ip = self.keep(self.ip(&e.ip));
            let node = match &e.node {
                Some(n) => self.keep(self.endpoint_node(n, node_names)).map(Some),
                None => Some(None),
            };
            match (ip, node) {
                (Some(ip), Some(node)) => Ok(Endpoint {
                    ip,
                    node,
                    workload: e.workload.clone(),
                }),
                _ => Err(self.reported()),
            }
        }));
        let endpoints = self.keep(endpoints);
        let load_balancer = match &raw.load_balancer {
            Some(lb) => self.keep(self.load_balancer(lb)),
            None => Some(LoadBalancer::default()),
        };
        let outlier_detection = match &raw.outlier_detection {
            Some(od) => self.keep(self.outlier_detection(od)).map(Some),
            None => Some(None),
        };

        if self.errors_so_far() != before {
            return Err(self.reported());
        }
        match (name, namespace, endpoints, load_balancer, outlier_detection) {
            (
                Some(name),
                Some(namespace),
                Some(endpoints),
                Some(load_balancer),
                Some(outlier_detection),
            ) => Ok(Service {
                name,
                namespace,
                vips,
                ports,
                endpoints,
                load_balancer,
                outlier_detection,
            }),
            _ => Err(self.reported()),
        }
    }

    /// The node of an endpoint decides how it is reached (in process or
    /// through that node's tunnel), so a name the agent cannot resolve to an
    /// address is an error rather than a silent plain-TCP fallback.
    /// `node_names[0]` is this node.
    fn endpoint_node(&self, raw: &Text, node_names: &[String]) -> Result<String, ConfigError> {
        let name = &raw.value;
        if node_names.contains(name) {
            return Ok(name.clone());
        }
        Err(self.err(
            raw.referenced,
            format!(
                "endpoint node {} is neither this node ({}) nor listed under nodes",
                quote(name),
                quote(node_names.first().map_or("", String::as_str))
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::fixture::{Fixture, with_node};

    #[test]
    fn unknown_endpoint_node() {
        let fx = Fixture::new();
        let e = fx.fails(
            &with_node(
                "nodes:\n  - name: node2\n    address: 10.0.0.2\nservices:\n  - name: s\n    endpoints:\n      - ip: 10.1.0.1\n        node: node3\n",
            ),
            11,
            "endpoint node `node3` is neither this node (`node1`) nor listed under nodes",
        );
        assert_eq!(e.column(), Some(15));
    }
}
