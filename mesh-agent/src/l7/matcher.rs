//! Placeholder with the agreed API; replaced by the real matcher.
#![allow(dead_code, unused_variables)]
use crate::config::{Config, HttpFilter, RequestMirror, RequestRedirect, RetryPolicy, RouteTimeouts};
use crate::l7::BackendKey;

pub struct RequestHead<'a> {
    pub method: &'a http::Method,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub grpc: bool,
}
pub struct WeightedBackend {
    pub backend: BackendKey,
    pub weight: u32,
}
pub struct CompiledRule {
    pub route: String,
    pub rule_index: usize,
    pub filters: Vec<HttpFilter>,
    pub backends: Vec<WeightedBackend>,
    pub mirrors: Vec<RequestMirror>,
    pub timeouts: RouteTimeouts,
    pub retry: Option<RetryPolicy>,
}
impl CompiledRule {
    pub fn pick_backend(&self) -> Option<&BackendKey> {
        self.backends.first().map(|b| &b.backend)
    }
    pub fn redirect(&self) -> Option<&RequestRedirect> {
        None
    }
}
pub struct RouteMatch<'a> {
    pub rule: &'a CompiledRule,
    pub matched_prefix: Option<&'a str>,
}
pub struct RouteTable {
    rules: Vec<CompiledRule>,
}
impl RouteTable {
    pub fn build(config: &Config, namespace: &str, name: &str, port: u16) -> RouteTable {
        RouteTable {
            rules: vec![CompiledRule {
                route: "default".into(),
                rule_index: 0,
                filters: vec![],
                backends: vec![WeightedBackend {
                    backend: BackendKey { namespace: namespace.into(), name: name.into(), port },
                    weight: 1,
                }],
                mirrors: vec![],
                timeouts: RouteTimeouts::default(),
                retry: None,
            }],
        }
    }
    pub fn has_routes(&self) -> bool {
        false
    }
    pub fn find<'a>(&'a self, req: &RequestHead<'_>) -> Option<RouteMatch<'a>> {
        self.rules.first().map(|rule| RouteMatch { rule, matched_prefix: None })
    }
}
