//! The routing model: what the config's routes and services compile to, shared by the
//! kernel-facing model (`state` holds one route table per service port and one backend per
//! service port) and the data path that uses them (`l7` matches requests and picks endpoints;
//! `proxy` reaches the endpoints).
//!
//! - [`matcher`]: Gateway API HTTPRoute/GRPCRoute matching for one service port
//!   ([`matcher::RouteTable`]), with [`hostname`] scoring.
//! - [`backend`]: a service port's endpoints, load balancing and outlier detection.
//! - [`budget`]: a backend's retry budget and the retry backoff.

pub mod backend;
pub mod budget;
pub mod hostname;
pub mod matcher;

use std::net::SocketAddr;

use serde::Serialize;

/// A service port that requests can be sent to: the unit of load balancing, outlier
/// detection and retry budgets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BackendKey {
    pub namespace: String,
    pub name: String,
    /// The service port (endpoints are reached on its target port).
    pub port: u16,
}

impl std::fmt::Display for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}:{}", self.name, self.namespace, self.port)
    }
}

/// How the agent reaches an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The endpoint runs on this node: the in-process inbound path (authorization, then a
    /// local connection), no tunnel.
    Local,
    /// The endpoint runs on another node: the mTLS tunnel to that node's agent.
    Tunnel { node: String, tunnel: SocketAddr },
    /// The endpoint is outside the mesh: plain TCP.
    Direct,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub via: Via,
}
