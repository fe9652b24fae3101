//! Kubernetes objects -> the agent's model (pure: no I/O; the pod cgroup lookup is passed in).
//!
//! Each object is translated on its own: a bad one is left out and reported as a
//! [`RejectedObject`], never failing the rest. Policies and routes go through the file's own
//! checker, so the file and the API accept exactly the same objects.

use std::{collections::BTreeSet, net::IpAddr, path::PathBuf, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service as KubeService},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{ResourceExt, core::DynamicObject};

use super::{ClusterModel, RejectedObject, gateway::ParentReference};
use crate::config::{
    self, AuthorizationPolicy, Endpoint, GrpcRoute, HttpRoute, KubernetesConfig, PeerAuthMode,
    PeerNode, PortProtocol, Protocol, Service, ServicePort, Workload,
};

/// The label EndpointSlices carry with the name of their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Namespace label value that meshes the namespace; pod label value that opts a pod out.
pub const ENABLED: &str = "enabled";
pub const DISABLED: &str = "disabled";

/// Everything the watchers hold at one moment.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub pods: Vec<Arc<Pod>>,
    pub nodes: Vec<Arc<Node>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub services: Vec<Arc<KubeService>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// MeshAuthorizationPolicies, read untyped so that one with an unknown field is rejected
    /// alone instead of failing the whole list.
    pub policies: Vec<Arc<DynamicObject>>,
    pub http_routes: Vec<Arc<DynamicObject>>,
    pub grpc_routes: Vec<Arc<DynamicObject>>,
}

/// Finds a pod's cgroup directory and network namespace file; `None` while they are not
/// there yet.
pub type Locate<'a> = &'a dyn Fn(&Pod) -> Option<(PathBuf, PathBuf)>;

/// Translates every object; see the module comment.
pub fn translate(settings: &KubernetesConfig, objects: &Objects, locate: Locate) -> ClusterModel {
    let mut model = ClusterModel::default();
    let enrolled = enrolled_namespaces(settings, &objects.namespaces);

    for node in &objects.nodes {
        if let Some(address) = node_address(node) {
            model.nodes.push(PeerNode {
                name: node.name_any(),
                address,
            });
        }
    }
    model.nodes.sort_by(|a, b| a.name.cmp(&b.name));

    for pod in &objects.pods {
        match pod_workload(settings, &enrolled, pod, locate) {
            PodOutcome::Workload(w) => model.workloads.push(w),
            PodOutcome::Skipped => {}
            PodOutcome::Pending => model.pending_pods.push(id(pod.as_ref())),
            PodOutcome::Rejected(reason) => {
                model.rejected.push(rejected("Pod", pod.as_ref(), reason))
            }
        }
    }
    model
        .workloads
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    for svc in &objects.services {
        match service(&enrolled, svc, &objects.endpoint_slices) {
            Ok(Some(s)) => model.services.push(s),
            Ok(None) => {}
            Err(reason) => model
                .rejected
                .push(rejected("Service", svc.as_ref(), reason)),
        }
    }
    model
        .services
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    for p in &objects.policies {
        match policy(settings, p) {
            Ok(p) => model.authorization.push(p),
            Err(reason) => {
                model
                    .rejected
                    .push(rejected("MeshAuthorizationPolicy", p.as_ref(), reason))
            }
        }
    }
    model
        .authorization
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    for r in &objects.http_routes {
        if let Some(raw) = route_json(r) {
            model.http_routes_raw.push(raw);
        }
    }
    for r in &objects.grpc_routes {
        if let Some(raw) = route_json(r) {
            model.grpc_routes_raw.push(raw);
        }
    }
    let (http, grpc, rejected) = check_routes(
        &model.http_routes_raw,
        &model.grpc_routes_raw,
        &model.services,
    );
    model.http_routes = http;
    model.grpc_routes = grpc;
    model.rejected.extend(rejected);
    model
        .rejected
        .sort_by(|a, b| (&a.kind, &a.namespace, &a.name).cmp(&(&b.kind, &b.namespace, &b.name)));
    model.pending_pods.sort();
    model
}

/// Namespaces labelled `<enrollment_label>: enabled`.
pub fn enrolled_namespaces(
    settings: &KubernetesConfig,
    namespaces: &[Arc<Namespace>],
) -> BTreeSet<String> {
    namespaces
        .iter()
        .filter(|ns| {
            ns.labels()
                .get(&settings.enrollment_label)
                .map(String::as_str)
                == Some(ENABLED)
        })
        .map(|ns| ns.name_any())
        .collect()
}

/// A node's first InternalIP.
fn node_address(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

enum PodOutcome {
    Workload(Workload),
    /// Not ours to mesh (other node, not enrolled, host network, finished, no IP yet).
    Skipped,
    /// Meshed, but its cgroup or process is not there yet.
    Pending,
    Rejected(String),
}

fn pod_workload(
    settings: &KubernetesConfig,
    enrolled: &BTreeSet<String>,
    pod: &Pod,
    locate: Locate,
) -> PodOutcome {
    let (Some(spec), Some(status)) = (&pod.spec, &pod.status) else {
        return PodOutcome::Skipped;
    };
    let namespace = pod.namespace().unwrap_or_default();
    let opted_out = pod
        .labels()
        .get(&settings.enrollment_label)
        .map(String::as_str)
        == Some(DISABLED);
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    if spec.node_name.as_deref() != Some(settings.node_name.as_str())
        || !enrolled.contains(&namespace)
        || spec.host_network == Some(true)
        || opted_out
        || finished
    {
        return PodOutcome::Skipped;
    }
    let mut texts: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    if texts.is_empty()
        && let Some(ip) = &status.pod_ip
    {
        texts.push(ip);
    }
    if texts.is_empty() {
        // No sandbox yet; the IP arrives with a status update.
        return PodOutcome::Skipped;
    }
    let mut ips = Vec::with_capacity(texts.len());
    for t in texts {
        match t.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => return PodOutcome::Rejected(format!("invalid pod IP `{t}`")),
        }
    }
    let Some((cgroup, netns)) = locate(pod) else {
        return PodOutcome::Pending;
    };
    PodOutcome::Workload(Workload {
        name: pod.name_any(),
        namespace,
        cgroup,
        netns: Some(netns),
        ips,
        egress: None,
        ingress: None,
        service_account: spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| config::DEFAULT_SERVICE_ACCOUNT.to_owned()),
        labels: pod.labels().clone(),
        mode: PeerAuthMode::Permissive,
    })
}

/// A Service with a cluster IP and its ready endpoints; `Ok(None)` for headless and
/// ExternalName services (nothing to redirect).
fn service(
    enrolled: &BTreeSet<String>,
    svc: &KubeService,
    slices: &[Arc<EndpointSlice>],
) -> Result<Option<Service>, String> {
    let Some(spec) = &svc.spec else {
        return Ok(None);
    };
    let name = svc.name_any();
    let namespace = svc.namespace().unwrap_or_default();
    let mut texts: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if texts.is_empty()
        && let Some(ip) = &spec.cluster_ip
    {
        texts.push(ip);
    }
    let mut vips = Vec::new();
    for t in texts {
        if t == "None" || t.is_empty() {
            continue;
        }
        let ip: IpAddr = t.parse().map_err(|_| format!("invalid cluster IP `{t}`"))?;
        if !vips.contains(&ip) {
            vips.push(ip);
        }
    }
    if vips.is_empty() {
        return Ok(None);
    }
    let own: Vec<&EndpointSlice> = slices
        .iter()
        .map(AsRef::as_ref)
        .filter(|s| {
            s.namespace().as_deref() == Some(namespace.as_str())
                && s.labels().get(SERVICE_NAME_LABEL) == Some(&name)
        })
        .collect();

    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        // The mesh carries TCP only.
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {} is out of range 1..=65535", p.port))?;
        let target_port = match &p.target_port {
            None => port,
            Some(IntOrString::Int(n)) => u16::try_from(*n)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("targetPort {n} is out of range 1..=65535"))?,
            // A named container port: the slices carry the number under the service
            // port's name. Until one does, the port is left out (a guess could be wrong).
            Some(IntOrString::String(_)) => {
                let resolved = own
                    .iter()
                    .flat_map(|s| s.ports.iter().flatten())
                    .find(|sp| sp.name == p.name)
                    .and_then(|sp| sp.port)
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n != 0);
                match resolved {
                    Some(n) => n,
                    None => continue,
                }
            }
        };
        ports.push(ServicePort {
            port,
            target_port,
            name: p.name.clone(),
            protocol: port_protocol(p.app_protocol.as_deref(), p.name.as_deref()),
        });
    }

    let mut endpoints: Vec<Endpoint> = Vec::new();
    for slice in &own {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        for e in &slice.endpoints {
            // `ready` unset means ready (API semantics).
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            let pod_ref = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"));
            let meshed = pod_ref.is_some_and(|r| {
                let ns = r.namespace.as_deref().unwrap_or(namespace.as_str());
                enrolled.contains(ns)
            });
            let node = if meshed { e.node_name.clone() } else { None };
            let workload = e.target_ref.as_ref().and_then(|r| r.name.clone());
            for a in &e.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                if endpoints.iter().any(|x| x.ip == ip) {
                    continue;
                }
                endpoints.push(Endpoint {
                    ip,
                    node: node.clone(),
                    workload: workload.clone(),
                });
            }
        }
    }
    endpoints.sort_by_key(|e| e.ip);
    Ok(Some(Service {
        name,
        namespace,
        vips,
        ports,
        endpoints,
        load_balancer: Default::default(),
        outlier_detection: None,
    }))
}

/// `appProtocol` (`http`, `kubernetes.io/h2c`, `grpc`, ...), else Istio's port-name
/// convention (`http-web`), else detection.
pub fn port_protocol(app_protocol: Option<&str>, name: Option<&str>) -> PortProtocol {
    let named = |n: &str| match n.to_ascii_lowercase().as_str() {
        "tcp" => Some(Protocol::Tcp),
        "http" | "kubernetes.io/ws" => Some(Protocol::Http),
        "http2" | "kubernetes.io/h2c" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        _ => None,
    };
    let by_app = app_protocol.and_then(named);
    let by_name = || name.and_then(|n| n.split('-').next()).and_then(named);
    by_app
        .or_else(by_name)
        .map_or(PortProtocol::Detect, PortProtocol::Declared)
}

/// A MeshAuthorizationPolicy through the file's checker. Policies in the configured root
/// namespace get the namespace the policy engine treats as mesh-wide.
fn policy(settings: &KubernetesConfig, obj: &DynamicObject) -> Result<AuthorizationPolicy, String> {
    let mut json = serde_json::Map::new();
    json.insert("name".into(), obj.name_any().into());
    json.insert(
        "namespace".into(),
        obj.namespace().unwrap_or_default().into(),
    );
    match obj.data.get("spec") {
        Some(serde_json::Value::Object(spec)) => {
            for (k, v) in spec {
                json.insert(k.clone(), v.clone());
            }
        }
        None | Some(serde_json::Value::Null) => {}
        Some(_) => return Err("spec is not an object".to_owned()),
    }
    let mut p = config::check_api_policy(&serde_json::Value::Object(json), &id(obj))
        .map_err(|e| e.reason().to_owned())?;
    if p.namespace == settings.root_namespace {
        p.namespace = crate::policy::authz::ROOT_NAMESPACE.to_owned();
    }
    Ok(p)
}

/// `{name, namespace, spec}` of a route with only its Service parents; `None` when no parent
/// is a Service (a route for a Gateway: not ours).
fn route_json(obj: &DynamicObject) -> Option<serde_json::Value> {
    let mut spec = obj.data.get("spec")?.as_object()?.clone();
    let parents: Vec<serde_json::Value> = spec
        .get("parentRefs")?
        .as_array()?
        .iter()
        .filter(|p| {
            serde_json::from_value::<ParentReference>((*p).clone()).is_ok_and(|p| p.is_service())
        })
        .cloned()
        .collect();
    if parents.is_empty() {
        return None;
    }
    spec.insert("parentRefs".into(), parents.into());
    Some(serde_json::json!({
        "name": obj.name_any(),
        "namespace": obj.namespace().unwrap_or_default(),
        "spec": spec,
    }))
}

/// Checks each raw route alone against `services`.
pub fn check_routes(
    http: &[serde_json::Value],
    grpc: &[serde_json::Value],
    services: &[Service],
) -> (Vec<HttpRoute>, Vec<GrpcRoute>, Vec<RejectedObject>) {
    let mut rejected = Vec::new();
    let mut http_out = Vec::new();
    let mut grpc_out = Vec::new();
    for raw in http {
        let (ns, name) = raw_id(raw);
        match config::check_api_http_route(raw, services, &format!("HTTPRoute {ns}/{name}")) {
            Ok(r) => http_out.push(r),
            Err(e) => rejected.push(RejectedObject {
                kind: "HTTPRoute".into(),
                namespace: ns,
                name,
                reason: e.reason().to_owned(),
            }),
        }
    }
    for raw in grpc {
        let (ns, name) = raw_id(raw);
        match config::check_api_grpc_route(raw, services, &format!("GRPCRoute {ns}/{name}")) {
            Ok(r) => grpc_out.push(r),
            Err(e) => rejected.push(RejectedObject {
                kind: "GRPCRoute".into(),
                namespace: ns,
                name,
                reason: e.reason().to_owned(),
            }),
        }
    }
    (http_out, grpc_out, rejected)
}

fn raw_id(raw: &serde_json::Value) -> (String, String) {
    let s = |k: &str| raw.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    (s("namespace"), s("name"))
}

fn id<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

fn rejected<K: ResourceExt>(kind: &str, obj: &K, reason: String) -> RejectedObject {
    RejectedObject {
        kind: kind.to_owned(),
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        reason,
    }
}

#[cfg(test)]
mod tests;
