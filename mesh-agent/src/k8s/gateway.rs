//! Minimal views of Gateway API HTTPRoute and GRPCRoute (gateway.networking.k8s.io/v1).
//!
//! Only `parentRefs` is typed (the agent selects routes attached to Services). The rest of
//! the spec stays JSON and goes through the same checker as the file's `http_routes:` and
//! `grpc_routes:` entries, so the file and the API accept exactly the same routes. We never
//! install these CRDs (the Gateway API project ships them), so no schema is generated.
//! The `gateway-api` crate is not used: it pins an older kube and k8s-openapi.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// spec of an HTTPRoute: parentRefs typed, everything else as written.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    plural = "httproutes",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// The remaining fields (`hostnames`, `rules`, ...), checked by the route checker.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// spec of a GRPCRoute: parentRefs typed, everything else as written.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    plural = "grpcroutes",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// A route's parent. The agent uses routes whose parent is a Service (`group: ""` or
/// absent with `kind: Service`), the GAMMA pattern Istio ambient and Linkerd follow.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

impl ParentReference {
    /// Whether this parent is a core Service (GAMMA), the only parent the agent serves.
    pub fn is_service(&self) -> bool {
        let core_group = self.group.as_deref().is_none_or(str::is_empty);
        core_group && self.kind.as_deref() == Some("Service")
    }
}
