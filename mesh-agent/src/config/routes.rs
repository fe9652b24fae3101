//! L7 configuration: service port protocols, load balancing, outlier detection, the `http:`
//! settings, and routes in the shape of Gateway API HTTPRoute / GRPCRoute specs (camelCase
//! keys, so that the `spec:` of a manifest can be pasted as it is).
//!
//! These are the validated, span-free public types. Parsing and checking live in the config
//! module's checker; the compiled, request-time form lives in `crate::l7`.

use std::time::Duration;

use serde::Serialize;

/// Default of `http.detection_timeout`: how long the agent waits for the client's first bytes
/// on a port whose protocol is not declared before treating the connection as opaque TCP.
pub const DEFAULT_DETECTION_TIMEOUT: Duration = Duration::from_millis(100);
/// Default of `http.max_header_bytes` (request line and headers together, like Envoy's 60 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 60 * 1024;
/// Default of `http.retry_budget.percent`.
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
/// Default of `http.retry_budget.min_retries_per_second`.
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;

/// The application protocol of a service port.
///
/// Written `tcp`, `http`, `http2` or `grpc` (any case) under `protocol:`; when absent, Istio's
/// port-name convention applies (`http`, `http-web`, `grpc-api`, `http2`, `tcp-db`, ...), and
/// when that says nothing either the protocol is detected per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque bytes: the L4 relay.
    Tcp,
    /// HTTP/1.1 to the backend (clients may speak HTTP/1.1 or h2c).
    Http,
    /// HTTP/2 cleartext (prior knowledge) to the backend.
    Http2,
    /// gRPC: HTTP/2 to the backend, GRPCRoute rules apply.
    Grpc,
}

/// How a port's protocol was decided, as shown on /config_dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    /// Declared with `protocol:` or by the port name.
    Declared(Protocol),
    /// Sniffed per connection: an HTTP/1.x request line or the HTTP/2 preface means HTTP,
    /// anything else (or silence for `http.detection_timeout`) means TCP.
    Detect,
}

/// Endpoint selection within a backend service (`load_balancer:` on a service).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// `round_robin` (default).
    #[default]
    RoundRobin,
    /// `least_request`: the less loaded of two random endpoints (power of two choices).
    LeastRequest,
}

/// Passive health checking of a service's endpoints (`outlier_detection:` on a service), after
/// Istio's DestinationRule outlierDetection. Absent means endpoints are never ejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses or connect failures that eject an endpoint (default 5;
    /// 0 disables this trigger).
    pub consecutive_5xx_errors: u32,
    /// Consecutive 502/503/504 responses or connect failures that eject an endpoint
    /// (default 0 = disabled).
    pub consecutive_gateway_errors: u32,
    /// The first ejection lasts this long; the n-th lasts n times as long (default 30s).
    #[serde(serialize_with = "super::serialize_duration")]
    pub base_ejection_time: Duration,
    /// At most this percentage of a service's endpoints is ejected at once (default 10); one
    /// endpoint may always be ejected, as in Envoy.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

/// The top-level `http:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpSettings {
    /// See [`DEFAULT_DETECTION_TIMEOUT`].
    #[serde(serialize_with = "super::serialize_duration")]
    pub detection_timeout: Duration,
    /// Larger request heads get 431.
    pub max_header_bytes: usize,
    pub retry_budget: RetryBudget,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            detection_timeout: DEFAULT_DETECTION_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            retry_budget: RetryBudget::default(),
        }
    }
}

/// Retries may add at most `percent` of the requests of the last 10 seconds, plus
/// `min_retries_per_second`, per backend service (Linkerd's retry budget), so that retries
/// cannot storm a struggling service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryBudget {
    pub percent: u32,
    pub min_retries_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: DEFAULT_RETRY_BUDGET_PERCENT,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
        }
    }
}

/// A Service a route attaches to (`parentRefs`); Gateway API's GAMMA (mesh) form: kind
/// Service, group "" (or "core").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentRef {
    pub name: String,
    /// Defaults to the route's namespace.
    pub namespace: String,
    /// `None`: every port of the service.
    pub port: Option<u16>,
}

/// A Service and port that requests are sent to (`backendRefs`, `requestMirror.backendRef`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendRef {
    pub name: String,
    /// Defaults to the route's namespace.
    pub namespace: String,
    /// A port of that service (required, as Gateway API requires it for Services).
    pub port: u16,
    /// Relative weight (default 1; 0 = never picked).
    pub weight: u32,
}

/// `Exact` (case-sensitive) or `RegularExpression` (Rust `regex` syntax, RE2-like, matched
/// against the whole value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum StringMatch {
    Exact(String),
    RegularExpression(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    Exact(String),
    /// Matches on `/`-separated segment boundaries: `/foo` matches `/foo` and `/foo/bar`, not
    /// `/foobar`. A trailing `/` in the value is ignored.
    PathPrefix(String),
    RegularExpression(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// Lower-cased (header names are case-insensitive).
    pub name: String,
    pub value: StringMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryParamMatch {
    /// Case-sensitive, as in Gateway API.
    pub name: String,
    pub value: StringMatch,
}

/// One entry of `matches`: every present condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRouteMatch {
    /// Absent in the file means `PathPrefix /`; the checker fills that in.
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query_params: Vec<QueryParamMatch>,
    /// Upper-case method name (GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH).
    pub method: Option<String>,
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`: names lower-cased.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Only valid on rules whose matches are all PathPrefix (Gateway API rule).
    ReplacePrefixMatch(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRedirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301, 302 (default, as in Gateway API), 303, 307 or 308.
    pub status_code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestMirror {
    /// `weight` is unused here.
    pub backend: BackendRef,
    /// Share of requests mirrored, as numerator / denominator: `percent: 10` is 10/100,
    /// `fraction: {numerator: 1, denominator: 1000}` is 1/1000; default 100/100.
    pub numerator: u32,
    pub denominator: u32,
}

/// Gateway API filters. GRPCRoute rules accept only the header modifiers and RequestMirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum HttpFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    #[serde(rename = "URLRewrite")]
    UrlRewrite(UrlRewrite),
    RequestRedirect(RequestRedirect),
    RequestMirror(RequestMirror),
}

/// `timeouts:` of a rule; `0s` in the file (Gateway API's "no timeout") becomes `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteTimeouts {
    /// The whole request including retries; on expiry the client gets 504.
    pub request: Option<Duration>,
    /// Each attempt to a backend (the per-try timeout).
    pub backend_request: Option<Duration>,
}

/// `retry:` of a rule (Gateway API GEP-1731 fields, plus two extensions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt (Gateway API `attempts`; default 1).
    pub attempts: u32,
    /// Base of the exponential backoff with full jitter between attempts (default 25ms); the
    /// n-th retry waits a random time in [0, backoff * 2^(n-1)], capped at 10 * backoff.
    #[serde(serialize_with = "super::serialize_duration")]
    pub backoff: Duration,
    /// Response codes (400-599) that are retried (default: none).
    pub codes: Vec<u16>,
    /// Extension `connectFailure` (default true): retry when no connection could be made.
    pub connect_failure: bool,
    /// Extension `reset` (default true): retry when the backend reset or closed the stream
    /// before responding.
    pub reset: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRouteRule {
    /// Gateway API's optional rule `name`.
    pub name: Option<String>,
    /// Never empty: an absent or empty `matches` is one `PathPrefix /` match.
    pub matches: Vec<HttpRouteMatch>,
    pub filters: Vec<HttpFilter>,
    /// Empty with no RequestRedirect filter: requests get 500 (Gateway API).
    pub backend_refs: Vec<BackendRef>,
    pub timeouts: RouteTimeouts,
    pub retry: Option<RetryPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRoute {
    pub name: String,
    pub namespace: String,
    pub parent_refs: Vec<ParentRef>,
    /// Lower-cased; `*.example.com` wildcards allowed; empty = any host.
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

/// GRPCRoute `method:`; at least one of service and method is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    pub regex: bool,
    pub service: Option<String>,
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcRouteMatch {
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcRouteRule {
    pub name: Option<String>,
    /// Empty matches every gRPC request.
    pub matches: Vec<GrpcRouteMatch>,
    pub filters: Vec<HttpFilter>,
    pub backend_refs: Vec<BackendRef>,
    /// Extensions (GRPCRoute has no timeouts or retry in Gateway API v1.2); same meaning as on
    /// HTTPRoute rules. Retry codes are HTTP status codes.
    pub timeouts: RouteTimeouts,
    pub retry: Option<RetryPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcRoute {
    pub name: String,
    pub namespace: String,
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<GrpcRouteRule>,
}
