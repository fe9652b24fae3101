//! Gateway API (v1.2, GAMMA) route matching for one service port: which HTTPRoute or
//! GRPCRoute rule a request goes to.
//!
//! [`RouteTable::build`] compiles the routes attached to a service port once (regular
//! expressions included) into two lists of match entries, one for GRPCRoutes and one for
//! HTTPRoutes, each sorted by the Gateway API precedence that depends only on the config.
//! Hostname precedence depends on the request, so [`RouteTable::find`] scores each route's
//! hostnames first and then takes, among the most specific hostname class that has a match,
//! the first matching entry of the sorted list.
//!
//! Matching semantics and the decisions Gateway API leaves to implementations:
//! - Hostnames come first: a route whose matching hostname is exact (longer first), then
//!   wildcard (longer first), then a route without hostnames; path, method, header and
//!   query precedence only order matches within the same hostname class.
//! - gRPC requests (content type `application/grpc*`) try the GRPCRoute rules first and the
//!   HTTPRoute rules when none matches; other requests only see HTTPRoute rules.
//! - Paths are compared as received: no percent-decoding, no dot-segment or slash
//!   normalization. `/a%2Fb` does not match `PathPrefix /a`, and `/a/../b` matches
//!   `PathPrefix /a`; the backend sees the same bytes the route saw.
//! - Regular expressions (Rust `regex` syntax) must match the whole value.
//! - RegularExpression paths rank after every Exact and PathPrefix match.
//! - A header repeated in the request matches when any one of its values matches.
//! - Query parameters are percent-decoded (`form_urlencoded`, so `+` is a space); a repeated
//!   parameter is matched by its first value.
//! - When a match lists the same header (case-insensitively) or query parameter twice, only the
//!   first entry counts, for matching and for precedence.
//! - Route age is config order: the earlier route in the file is the older one. That order is
//!   total, so the `namespace/name` tie-break of the spec never has to apply.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::cmp::Reverse;

use http::HeaderName;
use rand::Rng;

use crate::config::{
    BackendRef, Config, GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, HeaderMatch, HttpFilter,
    HttpRoute, HttpRouteMatch, ParentRef, PathMatch, QueryParamMatch, RequestMirror,
    RequestRedirect, RetryPolicy, RouteTimeouts, StringMatch,
};
use crate::routing::{
    BackendKey,
    hostname::{self, HostScore, route_host_score},
};

#[cfg(test)]
#[path = "matcher_tests.rs"]
mod tests;

/// What the matcher needs of a request.
pub struct RequestHead<'a> {
    pub method: &'a http::Method,
    /// Host without port, any case (from :authority or Host); None if absent.
    pub host: Option<&'a str>,
    /// Path without the query, as received (not percent-decoded).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// content-type starts with "application/grpc": GRPCRoute rules are considered (before
    /// HTTPRoute rules).
    pub grpc: bool,
}

impl<'a> RequestHead<'a> {
    /// The head of a request as the proxy receives it (host from the URI authority or the
    /// `Host` header, gRPC from the content type).
    pub fn from_parts(parts: &'a http::request::Parts) -> RequestHead<'a> {
        RequestHead {
            method: &parts.method,
            host: hostname::request_host(parts),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            grpc: is_grpc(&parts.headers),
        }
    }
}

/// Whether the request's content type is gRPC's (`application/grpc`, `application/grpc+proto`,
/// ...).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedBackend {
    pub backend: BackendKey,
    pub weight: u32,
}

/// One compiled rule of a route.
#[derive(Debug)]
pub struct CompiledRule {
    /// "namespace/name" of the route, or "default" for the implicit route of a port without
    /// routes.
    pub route: String,
    pub rule_index: usize,
    pub filters: Vec<HttpFilter>,
    pub backends: Vec<WeightedBackend>,
    /// The RequestMirror filters, also left in `filters`.
    pub mirrors: Vec<RequestMirror>,
    pub timeouts: RouteTimeouts,
    pub retry: Option<RetryPolicy>,
    /// Sum of the backends' weights, computed once for [`CompiledRule::pick_backend`].
    total_weight: u64,
}

impl CompiledRule {
    fn new(
        route: String,
        rule_index: usize,
        filters: &[HttpFilter],
        backend_refs: &[BackendRef],
        timeouts: &RouteTimeouts,
        retry: &Option<RetryPolicy>,
    ) -> CompiledRule {
        let backends: Vec<WeightedBackend> = backend_refs
            .iter()
            .map(|b| WeightedBackend {
                backend: backend_key(b),
                weight: b.weight,
            })
            .collect();
        let mirrors = filters
            .iter()
            .filter_map(|f| match f {
                HttpFilter::RequestMirror(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        CompiledRule {
            route,
            rule_index,
            filters: filters.to_vec(),
            total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
            backends,
            mirrors,
            timeouts: timeouts.clone(),
            retry: retry.clone(),
        }
    }

    /// Weighted random choice among backends with weight > 0; None if there are none (=> 500).
    pub fn pick_backend(&self) -> Option<&BackendKey> {
        if self.total_weight == 0 {
            return None;
        }
        self.backend_at(rand::rng().random_range(0..self.total_weight))
    }

    /// The backend owning `point` when the weights are laid end to end (weight-0 backends
    /// own no point, so they are never chosen).
    fn backend_at(&self, mut point: u64) -> Option<&BackendKey> {
        for b in &self.backends {
            let weight = u64::from(b.weight);
            if point < weight {
                return Some(&b.backend);
            }
            point -= weight;
        }
        None
    }

    /// The RequestRedirect filter, if any.
    pub fn redirect(&self) -> Option<&RequestRedirect> {
        self.filters.iter().find_map(|f| match f {
            HttpFilter::RequestRedirect(r) => Some(r),
            _ => None,
        })
    }
}

fn backend_key(b: &BackendRef) -> BackendKey {
    BackendKey {
        namespace: b.namespace.clone(),
        name: b.name.clone(),
        port: b.port,
    }
}

/// The rule a request goes to.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    pub rule: &'a CompiledRule,
    /// The PathPrefix value of the match that selected the rule (for ReplacePrefixMatch), else
    /// None.
    pub matched_prefix: Option<&'a str>,
}

/// The routes of one service port.
#[derive(Debug)]
pub struct RouteTable {
    rules: Vec<CompiledRule>,
    /// Hostnames of each route, indexed by the `route` of the entries.
    route_hostnames: Vec<Vec<String>>,
    /// HTTPRoute matches, best first (ignoring hostnames).
    http: Vec<Entry<HttpMatcher>>,
    /// GRPCRoute matches, best first (ignoring hostnames).
    grpc: Vec<Entry<GrpcMatcher>>,
    has_routes: bool,
}

/// One match of one rule.
#[derive(Debug)]
struct Entry<M> {
    /// Index in `RouteTable::route_hostnames`.
    route: usize,
    /// Index in `RouteTable::rules`.
    rule: usize,
    matcher: M,
}

impl RouteTable {
    /// Compiles the HTTPRoutes and GRPCRoutes of `config` whose parentRefs name service
    /// (namespace, name) with this port or no port. With none attached, the table has one
    /// implicit catch-all rule whose only backend is BackendKey{namespace, name, port}
    /// (weight 1) and `has_routes()` is false.
    pub fn build(config: &Config, namespace: &str, name: &str, port: u16) -> RouteTable {
        Self::from_routes(
            &config.http_routes,
            &config.grpc_routes,
            namespace,
            name,
            port,
        )
    }

    /// [`RouteTable::build`] from route lists rather than a whole config.
    pub fn from_routes(
        http_routes: &[HttpRoute],
        grpc_routes: &[GrpcRoute],
        namespace: &str,
        name: &str,
        port: u16,
    ) -> RouteTable {
        let mut table = RouteTable {
            rules: Vec::new(),
            route_hostnames: Vec::new(),
            http: Vec::new(),
            grpc: Vec::new(),
            has_routes: false,
        };
        let attached = |refs: &[ParentRef]| attaches(refs, namespace, name, port);
        let mut http_keys = Vec::new();
        for (order, route) in http_routes.iter().enumerate() {
            if attached(&route.parent_refs) {
                table.add_http_route(route, order, &mut http_keys);
            }
        }
        let mut grpc_keys = Vec::new();
        for (order, route) in grpc_routes.iter().enumerate() {
            if attached(&route.parent_refs) {
                table.add_grpc_route(route, order, &mut grpc_keys);
            }
        }
        table.http = sorted_by_key(std::mem::take(&mut table.http), http_keys);
        table.grpc = sorted_by_key(std::mem::take(&mut table.grpc), grpc_keys);
        table.has_routes = !table.route_hostnames.is_empty();
        if !table.has_routes {
            table.add_implicit_route(namespace, name, port);
        }
        table
    }

    /// Whether routes are attached (else the table is the implicit route to the service).
    pub fn has_routes(&self) -> bool {
        self.has_routes
    }

    /// Every compiled rule, in config order (for example to list the backends it may use).
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// The winning rule per Gateway API precedence, or None (=> 404 NR).
    pub fn find<'a>(&'a self, req: &RequestHead<'_>) -> Option<RouteMatch<'a>> {
        let scores: Vec<Option<HostScore>> = self
            .route_hostnames
            .iter()
            .map(|names| route_host_score(names, req.host))
            .collect();
        let query = LazyQuery::new(req.query);
        if req.grpc
            && let Some(entry) = best_entry(&self.grpc, &scores, |m| m.matches(req))
        {
            return Some(self.route_match(entry.rule, None));
        }
        let entry = best_entry(&self.http, &scores, |m| m.matches(req, &query))?;
        Some(self.route_match(entry.rule, entry.matcher.prefix()))
    }

    fn route_match<'a>(&'a self, rule: usize, matched_prefix: Option<&'a str>) -> RouteMatch<'a> {
        RouteMatch {
            rule: &self.rules[rule],
            matched_prefix,
        }
    }

    fn add_route(&mut self, hostnames: &[String]) -> usize {
        self.route_hostnames.push(hostnames.to_vec());
        self.route_hostnames.len() - 1
    }

    fn add_http_route(&mut self, route: &HttpRoute, order: usize, keys: &mut Vec<HttpKey>) {
        let route_slot = self.add_route(&route.hostnames);
        let full_name = format!("{}/{}", route.namespace, route.name);
        for (rule_index, rule) in route.rules.iter().enumerate() {
            let rule_slot = self.rules.len();
            self.rules.push(CompiledRule::new(
                full_name.clone(),
                rule_index,
                &rule.filters,
                &rule.backend_refs,
                &rule.timeouts,
                &rule.retry,
            ));
            let catch_all = [catch_all_match()];
            let matches = match rule.matches.is_empty() {
                true => &catch_all[..],
                false => &rule.matches[..],
            };
            for (match_index, m) in matches.iter().enumerate() {
                let Some(matcher) = HttpMatcher::compile(m, &full_name, rule_index) else {
                    continue;
                };
                keys.push(matcher.precedence_key(order, rule_index, match_index));
                self.http.push(Entry {
                    route: route_slot,
                    rule: rule_slot,
                    matcher,
                });
            }
        }
    }

    fn add_grpc_route(&mut self, route: &GrpcRoute, order: usize, keys: &mut Vec<GrpcKey>) {
        let route_slot = self.add_route(&route.hostnames);
        let full_name = format!("{}/{}", route.namespace, route.name);
        for (rule_index, rule) in route.rules.iter().enumerate() {
            let rule_slot = self.rules.len();
            self.rules.push(CompiledRule::new(
                full_name.clone(),
                rule_index,
                &rule.filters,
                &rule.backend_refs,
                &rule.timeouts,
                &rule.retry,
            ));
            // GRPCRoute: a rule without matches matches every gRPC request.
            let any = [GrpcRouteMatch {
                method: None,
                headers: Vec::new(),
            }];
            let matches = match rule.matches.is_empty() {
                true => &any[..],
                false => &rule.matches[..],
            };
            for (match_index, m) in matches.iter().enumerate() {
                let Some(matcher) = GrpcMatcher::compile(m, &full_name, rule_index) else {
                    continue;
                };
                keys.push(matcher.precedence_key(order, rule_index, match_index));
                self.grpc.push(Entry {
                    route: route_slot,
                    rule: rule_slot,
                    matcher,
                });
            }
        }
    }

    /// A port without routes sends every request, gRPC or not, to its own service.
    fn add_implicit_route(&mut self, namespace: &str, name: &str, port: u16) {
        let route_slot = self.add_route(&[]);
        let service = BackendRef {
            name: name.to_string(),
            namespace: namespace.to_string(),
            port,
            weight: 1,
        };
        self.rules.push(CompiledRule::new(
            "default".to_string(),
            0,
            &[],
            &[service],
            &RouteTimeouts::default(),
            &None,
        ));
        if let Some(matcher) = HttpMatcher::compile(&catch_all_match(), "default", 0) {
            self.http.push(Entry {
                route: route_slot,
                rule: self.rules.len() - 1,
                matcher,
            });
        }
    }
}

/// Whether a route with these parentRefs is attached to the service port.
fn attaches(refs: &[ParentRef], namespace: &str, name: &str, port: u16) -> bool {
    refs.iter()
        .any(|r| r.namespace == namespace && r.name == name && r.port.is_none_or(|p| p == port))
}

/// What an absent `matches` means for an HTTPRoute rule.
fn catch_all_match() -> HttpRouteMatch {
    HttpRouteMatch {
        path: PathMatch::PathPrefix("/".to_string()),
        headers: Vec::new(),
        query_params: Vec::new(),
        method: None,
    }
}

/// Reorders `entries` by their keys (`keys[i]` is the key of `entries[i]`; both have the same
/// length). Keys end in (route order, rule index, match index), so they are unique.
fn sorted_by_key<M, K: Ord>(entries: Vec<Entry<M>>, keys: Vec<K>) -> Vec<Entry<M>> {
    let mut keyed: Vec<(K, Entry<M>)> = keys.into_iter().zip(entries).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// The first matching entry of the most specific hostname class. `entries` is sorted by the
/// config-only precedence, so within one class the first match wins; a later match only
/// wins if its route's hostname is strictly more specific.
fn best_entry<'e, M>(
    entries: &'e [Entry<M>],
    scores: &[Option<HostScore>],
    matches: impl Fn(&M) -> bool,
) -> Option<&'e Entry<M>> {
    let top = scores.iter().flatten().max()?;
    let mut best: Option<(HostScore, &Entry<M>)> = None;
    for entry in entries {
        let Some(score) = scores.get(entry.route).copied().flatten() else {
            continue;
        };
        if best.is_some_and(|(b, _)| score <= b) || !matches(&entry.matcher) {
            continue;
        }
        best = Some((score, entry));
        if score == *top {
            break;
        }
    }
    best.map(|(_, e)| e)
}

/// Config-only precedence of an HTTPRoute match, smallest first: path kind (Exact, PathPrefix,
/// RegularExpression), longer prefix, with method, more headers, more query params, older
/// route, rule index, match index.
type HttpKey = (
    u8,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    usize,
    usize,
    usize,
);

/// Config-only precedence of a GRPCRoute match, smallest first: more characters of an exact
/// service, of an exact method, more headers, older route, rule index, match index.
type GrpcKey = (
    Reverse<usize>,
    Reverse<usize>,
    Reverse<usize>,
    usize,
    usize,
    usize,
);

/// The request's query parameters, decoded at most once per request and only if a match
/// looks at them.
struct LazyQuery<'q> {
    raw: Option<&'q str>,
    parsed: OnceCell<Vec<(Cow<'q, str>, Cow<'q, str>)>>,
}

impl<'q> LazyQuery<'q> {
    fn new(raw: Option<&'q str>) -> Self {
        LazyQuery {
            raw,
            parsed: OnceCell::new(),
        }
    }

    /// The first value of parameter `name` (Gateway API recommends the first).
    fn first(&self, name: &str) -> Option<&str> {
        let params = self.parsed.get_or_init(|| match self.raw {
            Some(raw) => form_urlencoded::parse(raw.as_bytes()).collect(),
            None => Vec::new(),
        });
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// A regular expression that must match the whole value.
fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

fn compile_regex(pattern: &str, route: &str, rule: usize) -> Option<regex::Regex> {
    regex::Regex::new(&anchored(pattern))
        .inspect_err(|e| warn_skipped(route, rule, e))
        .ok()
}

fn compile_bytes_regex(pattern: &str, route: &str, rule: usize) -> Option<regex::bytes::Regex> {
    regex::bytes::Regex::new(&anchored(pattern))
        .inspect_err(|e| warn_skipped(route, rule, e))
        .ok()
}

/// The checker validates every match, so this only fires on a checker bug; the match is
/// dropped rather than widened.
fn warn_skipped(route: &str, rule: usize, error: &dyn std::fmt::Display) {
    tracing::warn!(route, rule, %error, "skipping a route match that does not compile");
}

/// A string condition on a query parameter or a gRPC service or method.
#[derive(Debug)]
enum TextMatcher {
    Exact(String),
    Regex(regex::Regex),
}

impl TextMatcher {
    fn compile(m: &StringMatch, route: &str, rule: usize) -> Option<TextMatcher> {
        match m {
            StringMatch::Exact(v) => Some(TextMatcher::Exact(v.clone())),
            StringMatch::RegularExpression(re) => {
                compile_regex(re, route, rule).map(TextMatcher::Regex)
            }
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            TextMatcher::Exact(v) => v == value,
            TextMatcher::Regex(re) => re.is_match(value),
        }
    }
}

/// A header condition. Values are bytes (a header value need not be UTF-8), so the regex is a
/// bytes regex.
#[derive(Debug)]
struct HeaderMatcher {
    name: HeaderName,
    value: HeaderValueMatcher,
}

#[derive(Debug)]
enum HeaderValueMatcher {
    Exact(String),
    Regex(regex::bytes::Regex),
}

impl HeaderMatcher {
    /// Compiles `headers`, keeping only the first entry of each name (Gateway API: later
    /// entries with an equivalent name are ignored).
    fn compile_all(headers: &[HeaderMatch], route: &str, rule: usize) -> Option<Vec<Self>> {
        let mut compiled: Vec<HeaderMatcher> = Vec::with_capacity(headers.len());
        for h in headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .inspect_err(|e| warn_skipped(route, rule, e))
                .ok()?;
            if compiled.iter().any(|c| c.name == name) {
                continue;
            }
            let value = match &h.value {
                StringMatch::Exact(v) => HeaderValueMatcher::Exact(v.clone()),
                StringMatch::RegularExpression(re) => {
                    HeaderValueMatcher::Regex(compile_bytes_regex(re, route, rule)?)
                }
            };
            compiled.push(HeaderMatcher { name, value });
        }
        Some(compiled)
    }

    /// Any value of a repeated header may satisfy the condition.
    fn matches(&self, headers: &http::HeaderMap) -> bool {
        headers
            .get_all(&self.name)
            .iter()
            .any(|v| match &self.value {
                HeaderValueMatcher::Exact(expected) => v.as_bytes() == expected.as_bytes(),
                HeaderValueMatcher::Regex(re) => re.is_match(v.as_bytes()),
            })
    }
}

fn all_headers_match(matchers: &[HeaderMatcher], headers: &http::HeaderMap) -> bool {
    matchers.iter().all(|m| m.matches(headers))
}

#[derive(Debug)]
struct QueryMatcher {
    name: String,
    value: TextMatcher,
}

impl QueryMatcher {
    /// Compiles `params`, keeping only the first entry of each name (Gateway API).
    fn compile_all(params: &[QueryParamMatch], route: &str, rule: usize) -> Option<Vec<Self>> {
        let mut compiled: Vec<QueryMatcher> = Vec::with_capacity(params.len());
        for p in params {
            if compiled.iter().any(|c| c.name == p.name) {
                continue;
            }
            compiled.push(QueryMatcher {
                name: p.name.clone(),
                value: TextMatcher::compile(&p.value, route, rule)?,
            });
        }
        Some(compiled)
    }

    fn matches(&self, query: &LazyQuery<'_>) -> bool {
        query
            .first(&self.name)
            .is_some_and(|v| self.value.matches(v))
    }
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// `value` as configured (returned as the matched prefix); `trimmed` without the trailing
    /// `/`, so `/` becomes the empty string that every path extends.
    Prefix {
        value: String,
        trimmed: String,
    },
    Regex(regex::Regex),
}

impl PathMatcher {
    fn compile(m: &PathMatch, route: &str, rule: usize) -> Option<PathMatcher> {
        Some(match m {
            PathMatch::Exact(v) => PathMatcher::Exact(v.clone()),
            PathMatch::PathPrefix(v) => PathMatcher::Prefix {
                value: v.clone(),
                trimmed: v.trim_end_matches('/').to_string(),
            },
            PathMatch::RegularExpression(re) => PathMatcher::Regex(compile_regex(re, route, rule)?),
        })
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(v) => v == path,
            PathMatcher::Prefix { trimmed, .. } => prefix_matches(trimmed, path),
            PathMatcher::Regex(re) => re.is_match(path),
        }
    }
}

/// Whether `path` starts with `prefix` (without trailing `/`) on a segment boundary: `/foo`
/// matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`. The empty prefix (from `/`)
/// matches every path, even `*` of `OPTIONS *`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One compiled HTTPRoute match: every present condition must hold.
#[derive(Debug)]
struct HttpMatcher {
    path: PathMatcher,
    method: Option<String>,
    headers: Vec<HeaderMatcher>,
    query: Vec<QueryMatcher>,
}

impl HttpMatcher {
    fn compile(m: &HttpRouteMatch, route: &str, rule: usize) -> Option<HttpMatcher> {
        Some(HttpMatcher {
            path: PathMatcher::compile(&m.path, route, rule)?,
            method: m.method.clone(),
            headers: HeaderMatcher::compile_all(&m.headers, route, rule)?,
            query: QueryMatcher::compile_all(&m.query_params, route, rule)?,
        })
    }

    fn precedence_key(&self, order: usize, rule: usize, index: usize) -> HttpKey {
        let (kind, prefix_len) = match &self.path {
            PathMatcher::Exact(v) => (0, v.len()),
            PathMatcher::Prefix { trimmed, .. } => (1, trimmed.len()),
            PathMatcher::Regex(_) => (2, 0),
        };
        (
            kind,
            Reverse(prefix_len),
            Reverse(self.method.is_some()),
            Reverse(self.headers.len()),
            Reverse(self.query.len()),
            order,
            rule,
            index,
        )
    }

    /// Cheapest conditions first; the query is only decoded if the rest matched.
    fn matches(&self, req: &RequestHead<'_>, query: &LazyQuery<'_>) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m == req.method.as_str())
            && self.path.matches(req.path)
            && all_headers_match(&self.headers, req.headers)
            && self.query.iter().all(|q| q.matches(query))
    }

    fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatcher::Prefix { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// The service and method of a gRPC path `/<service>/<method>`, if it has that shape.
pub fn grpc_service_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let valid = !service.is_empty() && !method.is_empty() && !method.contains('/');
    valid.then_some((service, method))
}

/// Conditions on the service and on the method of a gRPC path (absent: any).
type ServiceMethod = (Option<TextMatcher>, Option<TextMatcher>);

/// One compiled GRPCRoute match.
#[derive(Debug)]
struct GrpcMatcher {
    service: Option<TextMatcher>,
    method: Option<TextMatcher>,
    headers: Vec<HeaderMatcher>,
}

impl GrpcMatcher {
    fn compile(m: &GrpcRouteMatch, route: &str, rule: usize) -> Option<GrpcMatcher> {
        let (service, method) = match &m.method {
            Some(method) => Self::compile_method(method, route, rule)?,
            None => (None, None),
        };
        Some(GrpcMatcher {
            service,
            method,
            headers: HeaderMatcher::compile_all(&m.headers, route, rule)?,
        })
    }

    /// The service and method conditions; `None` if one does not compile.
    fn compile_method(m: &GrpcMethodMatch, route: &str, rule: usize) -> Option<ServiceMethod> {
        let text = |value: &Option<String>| -> Option<Option<TextMatcher>> {
            let Some(value) = value else {
                return Some(None);
            };
            let m = match m.regex {
                true => StringMatch::RegularExpression(value.clone()),
                false => StringMatch::Exact(value.clone()),
            };
            TextMatcher::compile(&m, route, rule).map(Some)
        };
        Some((text(&m.service)?, text(&m.method)?))
    }

    fn precedence_key(&self, order: usize, rule: usize, index: usize) -> GrpcKey {
        let exact_len = |m: &Option<TextMatcher>| match m {
            Some(TextMatcher::Exact(v)) => v.len(),
            _ => 0,
        };
        (
            Reverse(exact_len(&self.service)),
            Reverse(exact_len(&self.method)),
            Reverse(self.headers.len()),
            order,
            rule,
            index,
        )
    }

    fn matches(&self, req: &RequestHead<'_>) -> bool {
        self.method_matches(req.path) && all_headers_match(&self.headers, req.headers)
    }

    /// A service or method condition needs a well-formed `/<service>/<method>` path.
    fn method_matches(&self, path: &str) -> bool {
        if self.service.is_none() && self.method.is_none() {
            return true;
        }
        let Some((service, method)) = grpc_service_method(path) else {
            return false;
        };
        let holds =
            |m: &Option<TextMatcher>, value: &str| m.as_ref().is_none_or(|m| m.matches(value));
        holds(&self.service, service) && holds(&self.method, method)
    }
}
