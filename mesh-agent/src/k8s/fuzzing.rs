//! Fuzzing entry point of the Kubernetes source's translation: arbitrary bytes as the JSON of
//! API objects (one object or an array), each read as its kind's type as the watchers read
//! them (Pods, Nodes, Namespaces, Services, EndpointSlices typed; MeshAuthorizationPolicies and
//! routes untyped), translated into the cluster's model and merged with a file config, as
//! the agent does on every change. An object the agent cannot use must be rejected with a
//! reason, never panic the translation.

use std::{path::PathBuf, sync::Arc, sync::OnceLock};

use kube::core::DynamicObject;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    ClusterModel, merge,
    translate::{Objects, translate},
};
use crate::config::Config;

/// The file config the cluster's objects are merged into: the example node with the
/// `kubernetes:` section on.
fn file_config() -> &'static Config {
    static FILE: OnceLock<Config> = OnceLock::new();
    FILE.get_or_init(|| {
        let text = format!(
            "{}\nkubernetes:\n  node_name: node1\n",
            include_str!("../../fuzz/seeds/config_load/node.yaml")
        );
        crate::config::fuzzing::model(&text)
    })
}

fn push<T: DeserializeOwned>(into: &mut Vec<Arc<T>>, item: Value) {
    if let Ok(object) = serde_json::from_value::<T>(item) {
        into.push(Arc::new(object));
    }
}

/// Translates `data` as API objects. Panics only when an invariant breaks (a bug).
pub fn fuzz_one(data: &[u8]) {
    let _ = translate_and_merge(data);
}

/// The cluster model of `data` and the merged config; `None` when `data` is not JSON.
fn translate_and_merge(data: &[u8]) -> Option<(ClusterModel, Config)> {
    let value = serde_json::from_slice::<Value>(data).ok()?;
    let items = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    let mut objects = Objects::default();
    for item in items {
        let kind = item["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Pod" => push(&mut objects.pods, item),
            "Node" => push(&mut objects.nodes, item),
            "Namespace" => push(&mut objects.namespaces, item),
            "Service" => push(&mut objects.services, item),
            "EndpointSlice" => push(&mut objects.endpoint_slices, item),
            "MeshAuthorizationPolicy" => push::<DynamicObject>(&mut objects.policies, item),
            "HTTPRoute" => push::<DynamicObject>(&mut objects.http_routes, item),
            "GRPCRoute" => push::<DynamicObject>(&mut objects.grpc_routes, item),
            _ => {}
        }
    }
    let file = file_config();
    let Some(settings) = &file.kubernetes else {
        panic!("the fuzz file config has no kubernetes section");
    };
    // Every pod is found at once (no file system lookups: what is fuzzed is the translation).
    let locate = |_: &k8s_openapi::api::core::v1::Pod| {
        Some((
            PathBuf::from("/fuzz/kubepods/pod"),
            PathBuf::from("/fuzz/netns/pod"),
        ))
    };
    let model = translate(settings, &objects, &locate);
    for rejected in &model.rejected {
        assert!(
            !rejected.reason.is_empty(),
            "rejected without a reason: {rejected:?}"
        );
    }
    let (config, rejected) = merge(file, &model);
    for r in &rejected {
        assert!(!r.reason.is_empty(), "rejected without a reason: {r:?}");
    }
    let _ = serde_json::to_string(&config);
    Some((model, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_translates_into_workloads_services_and_policies() {
        let seed = include_bytes!("../../fuzz/seeds/k8s_translate/shop.json");
        let (model, config) = translate_and_merge(seed).unwrap();
        assert!(model.rejected.is_empty(), "{:?}", model.rejected);
        let names = |v: Vec<&str>| v.join(",");
        assert_eq!(
            names(model.workloads.iter().map(|w| w.name.as_str()).collect()),
            "web-1"
        );
        assert_eq!(
            names(model.services.iter().map(|s| s.name.as_str()).collect()),
            "web"
        );
        assert_eq!(model.authorization.len(), 1);
        assert_eq!(
            (model.http_routes_raw.len(), model.grpc_routes_raw.len()),
            (1, 1)
        );
        assert!(config.services.iter().any(|s| s.name == "web"));
    }

    #[test]
    fn mutations_of_the_seed_translate_or_are_rejected_cleanly() {
        let seed: Vec<Value> =
            serde_json::from_slice(include_bytes!("../../fuzz/seeds/k8s_translate/shop.json"))
                .unwrap();
        let odd = [
            Value::Null,
            Value::from(-1),
            Value::from("x"),
            Value::from(u64::MAX),
            serde_json::json!([]),
            serde_json::json!({}),
            serde_json::json!({"name": "", "port": 70000}),
        ];
        // Replace each leaf of each object in turn with each odd value.
        for (i, item) in seed.iter().enumerate() {
            let mut paths = Vec::new();
            leaves(item, &mut Vec::new(), &mut paths);
            for path in &paths {
                for v in &odd {
                    let mut items = seed.clone();
                    *pointer_mut(&mut items[i], path) = v.clone();
                    fuzz_one(&serde_json::to_vec(&items).unwrap());
                }
            }
        }
    }

    fn leaves(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    at.push(k.clone());
                    leaves(v, at, out);
                    at.pop();
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    at.push(i.to_string());
                    leaves(v, at, out);
                    at.pop();
                }
            }
            _ => out.push(at.clone()),
        }
    }

    fn pointer_mut<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
        path.iter().fold(v, |v, k| match v {
            Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            other => &mut other[k.as_str()],
        })
    }
}
