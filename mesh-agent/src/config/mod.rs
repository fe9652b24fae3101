//! The agent's YAML configuration: parsing and validation.
//!
//! Parsing happens in two layers. Private `Raw*` structs mirror the YAML and
//! keep `serde_saphyr::Spanned` wrappers on every value that is validated
//! after deserialization (paths that must exist, duplicates, addresses), so
//! that every error can name the exact line and column of the offending
//! value. The raw tree is then checked and converted into the plain public
//! types, which carry no span information and can be serialized as JSON.
//!
//! Scalars such as ports, IPs and CIDRs are deserialized as strings and parsed
//! here rather than through their serde impls: that gives one consistent,
//! readable message per kind of mistake (for example "prefix length 33 is
//! longer than 32" instead of "invalid IP address syntax"), and lets a bare IP
//! stand for a host route in `to:` / `from:`.
//!
//! There is one module per section of the file, each with the section's public types, its
//! `Raw*` structs, the checks that convert them, and its tests: `node`, `nodes`, `identity`,
//! `workloads`, `services`, `authorization`, `routes` (the `http:`, `http_routes:` and
//! `grpc_routes:` sections and the L7 keys of services), `telemetry` and `kubernetes`. `load`
//! reads a file and collects the errors of every section; `raw` and `scalars` hold what the
//! sections share. This module holds the whole file: [`Config`] and the order in which its
//! sections are checked.

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

mod authorization;
mod checker;
#[cfg(test)]
mod fixture;
pub mod fuzzing;
mod identity;
pub mod kubernetes;
mod load;
mod node;
mod nodes;
mod raw;
pub mod routes;
mod scalars;
mod services;
pub mod telemetry;
#[cfg(test)]
mod tests;
mod workloads;

pub use authorization::{AuthorizationPolicy, AuthzAction, AuthzOperation, AuthzRule, AuthzSource};
pub use checker::{ConfigError, ConfigErrors};
pub use identity::{
    CaSource, DEFAULT_CA_DIR, DEFAULT_CERT_LIFETIME, DEFAULT_TRUST_DOMAIN, IdentityConfig,
};
pub use kubernetes::check_api_policy;
pub use kubernetes::{CgroupDriver, KubernetesConfig};
pub use load::{check_file, embedded_default, load_file, parse_str};
pub use node::{
    DEFAULT_ADMIN, DEFAULT_BPFFS, DEFAULT_DRAIN_TIMEOUT, DEFAULT_OUTBOUND_PORT, DEFAULT_STATE_DIR,
    DEFAULT_TUNNEL_PORT, FailMode, NodeConfig,
};
pub use nodes::PeerNode;
pub use routes::{
    BackendRef, GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, GrpcRouteRule, HeaderMatch,
    HeaderModifier, HttpFilter, HttpRoute, HttpRouteMatch, HttpRouteRule, HttpSettings,
    LoadBalancer, OutlierDetection, ParentRef, PathMatch, PathModifier, PortProtocol, Protocol,
    QueryParamMatch, RequestMirror, RequestRedirect, RetryBudget, RetryPolicy, RouteTimeouts,
    StringMatch, UrlRewrite,
};
pub use routes::{check_api_grpc_route, check_api_http_route};
pub use scalars::DEFAULT_NAMESPACE;
pub use services::{Endpoint, Service, ServicePort};
pub use telemetry::TelemetrySettings;
pub use workloads::{DEFAULT_SERVICE_ACCOUNT, EgressRule, IngressRule, PeerAuthMode, Workload};

use authorization::RawPolicy;
use checker::Checker;
use identity::RawIdentity;
use node::RawNode;
use nodes::RawPeerNode;
use raw::{null_as_empty, present};
use routes::{RawGrpcRoute, RawHttp, RawHttpRoute};
use services::RawService;
use telemetry::RawTelemetry;
use workloads::RawWorkload;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub node: NodeConfig,
    pub nodes: Vec<PeerNode>,
    pub identity: IdentityConfig,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub authorization: Vec<AuthorizationPolicy>,
    /// The `http:` section (protocol detection, header limit, retry budget).
    pub http: HttpSettings,
    /// Gateway API HTTPRoutes attached to services (`http_routes:`).
    pub http_routes: Vec<HttpRoute>,
    /// Gateway API GRPCRoutes attached to services (`grpc_routes:`).
    pub grpc_routes: Vec<GrpcRoute>,
    /// The `telemetry:` section (metrics and readiness endpoints, access log, label names).
    pub telemetry: TelemetrySettings,
    /// The `kubernetes:` section; `None`: the file is the only source.
    pub kubernetes: Option<KubernetesConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default, deserialize_with = "null_as_empty")]
    nodes: Vec<RawPeerNode>,
    #[serde(default)]
    identity: Option<RawIdentity>,
    #[serde(default, deserialize_with = "null_as_empty")]
    workloads: Vec<RawWorkload>,
    #[serde(default, deserialize_with = "null_as_empty")]
    services: Vec<RawService>,
    #[serde(default, deserialize_with = "null_as_empty")]
    authorization: Vec<RawPolicy>,
    /// `null` is the defaults, like an absent section.
    #[serde(default)]
    http: Option<RawHttp>,
    #[serde(default, deserialize_with = "null_as_empty")]
    http_routes: Vec<Spanned<RawHttpRoute>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    grpc_routes: Vec<Spanned<RawGrpcRoute>>,
    /// `null` is the defaults, like an absent section.
    #[serde(default)]
    telemetry: Option<RawTelemetry>,
    /// Present (even null) = the Kubernetes source is on.
    #[serde(default, deserialize_with = "present")]
    kubernetes: Option<Spanned<Option<kubernetes::RawKubernetes>>>,
}

impl Checker<'_> {
    /// Checks every section. Sections are independent except where noted, so
    /// an error in one does not stop the others from being checked.
    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let before = self.errors_so_far();
        let node = self.node(raw.node)?;
        // Comparisons with this node's ports and address mean nothing when
        // `node:` itself is wrong.
        let node_ok = self.errors_so_far() == before;
        // Endpoints may name any listed node, even one with an error of its own.
        let node_names: Vec<String> = std::iter::once(node.name.clone())
            .chain(raw.nodes.iter().map(|n| n.name.value.clone()))
            .collect();
        let nodes = self.peer_nodes(raw.nodes, node_ok.then_some(&node))?;
        let identity = match raw.identity {
            Some(identity) => self.keep(self.identity(identity)),
            None => Some(IdentityConfig::default()),
        };
        let workloads = self.workloads(raw.workloads)?;
        let services = self.services(raw.services, &node_names)?;
        let authorization = self.policies(raw.authorization)?;
        let http = match &raw.http {
            Some(http) => self.keep(self.http_settings(http)),
            None => Some(HttpSettings::default()),
        };
        let http_routes = self.http_routes(&raw.http_routes, &services)?;
        let grpc_routes = self.grpc_routes(&raw.grpc_routes, &services)?;
        let telemetry = match &raw.telemetry {
            Some(t) => self.keep(self.telemetry(t, node_ok.then_some(&node))),
            None => Some(TelemetrySettings::default()),
        };
        let kubernetes = match &raw.kubernetes {
            Some(k) => self.keep(self.kubernetes(k, &node.name)).map(Some),
            None => Some(None),
        };
        let (Some(identity), Some(http), Some(telemetry), Some(kubernetes)) =
            (identity, http, telemetry, kubernetes)
        else {
            return Err(self.reported());
        };
        Ok(Config {
            node,
            nodes,
            identity,
            workloads,
            services,
            authorization,
            http,
            http_routes,
            grpc_routes,
            telemetry,
            kubernetes,
        })
    }
}
