//! The L7 part of the configuration: the `http:` section, service port protocols, load
//! balancing, outlier detection, and Gateway API HTTPRoute / GRPCRoute specs under
//! `http_routes:` and `grpc_routes:`.
//!
//! Like the rest of the config module, the YAML is first read into private `Raw*` structs that
//! keep the position of every value, then checked and converted by [`Checker`] methods into
//! the span-free types of [`super::routes`]. Agent-native keys are snake_case; inside a route's
//! `spec:` keys are Gateway API camelCase, so that a manifest's spec can be pasted as it is.
//! Unknown keys are errors everywhere, which also catches misspelt Gateway API fields and the
//! Gateway API features the agent does not implement (e.g. `sessionPersistence`).

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::{Location, Spanned};

use super::routes::{
    BackendRef, GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, GrpcRouteRule, HeaderMatch,
    HeaderModifier, HttpFilter, HttpRoute, HttpRouteMatch, HttpRouteRule, HttpSettings,
    LoadBalancer, OutlierDetection, ParentRef, PathMatch, PathModifier, PortProtocol, Protocol,
    QueryParamMatch, RequestMirror, RequestRedirect, RetryBudget, RetryPolicy, RouteTimeouts,
    StringMatch, UrlRewrite,
};
use super::{
    Checker, ConfigError, DurationText, Service, Text, clean, line_of, null_as_empty,
    parse_duration, quote,
};

// ---------------------------------------------------------------------------
// Limits, mostly Gateway API's (they keep matching cheap and configs readable).

const MAX_PARENT_REFS: usize = 32;
const MAX_HOSTNAMES: usize = 16;
const MAX_RULES: usize = 16;
const MAX_MATCHES: usize = 64;
const MAX_VALUE_MATCHES: usize = 16;
const MAX_FILTERS: usize = 16;
const MAX_BACKEND_REFS: usize = 16;
const MAX_MODIFIED_HEADERS: usize = 16;
const MAX_PATH_LEN: usize = 1024;
const MAX_HEADER_VALUE_LEN: usize = 4096;
const MAX_RETRY_ATTEMPTS: u64 = 10;
const MAX_WEIGHT: u64 = 1_000_000;
/// Gateway API's fraction fields are int32.
const MAX_FRACTION: u64 = 2_147_483_647;

/// Units of the L7 durations (`100ms`, `2s`, `5m`, `1h`), in milliseconds.
const DURATION_UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)];
const MS: Duration = Duration::from_millis(1);
const MAX_DETECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Route timeouts and ejection times: beyond a day they are a mistake rather than a policy
/// (`0s` disables a route timeout).
const MAX_LONG_DURATION: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

// ---------------------------------------------------------------------------
// Raw, span-carrying mirror of the YAML.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    #[serde(default)]
    detection_timeout: Option<Text>,
    #[serde(default)]
    max_header_bytes: Option<Text>,
    #[serde(default)]
    retry_budget: Option<RawRetryBudget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetryBudget {
    #[serde(default)]
    percent: Option<Text>,
    #[serde(default)]
    min_retries_per_second: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlierDetection {
    #[serde(default)]
    consecutive_5xx_errors: Option<Text>,
    #[serde(default)]
    consecutive_gateway_errors: Option<Text>,
    #[serde(default)]
    base_ejection_time: Option<Text>,
    #[serde(default)]
    max_ejection_percent: Option<Text>,
}

/// An entry of `http_routes:` or `grpc_routes:`; `M` is the kind's match.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "M: Deserialize<'de>"))]
pub(super) struct RawRoute<M> {
    name: Text,
    #[serde(default)]
    namespace: Option<Text>,
    spec: Spanned<RawSpec<M>>,
}

pub(super) type RawHttpRoute = RawRoute<RawHttpMatch>;
pub(super) type RawGrpcRoute = RawRoute<RawGrpcMatch>;

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    bound(deserialize = "M: Deserialize<'de>")
)]
pub(super) struct RawSpec<M> {
    #[serde(default)]
    parent_refs: Option<Spanned<Vec<Spanned<RawParentRef>>>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    hostnames: Vec<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    rules: Vec<Spanned<RawRule<M>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawParentRef {
    name: Text,
    #[serde(default)]
    namespace: Option<Text>,
    #[serde(default)]
    kind: Option<Text>,
    #[serde(default)]
    group: Option<Text>,
    #[serde(default)]
    port: Option<Text>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    bound(deserialize = "M: Deserialize<'de>")
)]
pub(super) struct RawRule<M> {
    #[serde(default)]
    name: Option<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    matches: Vec<Spanned<M>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    filters: Vec<Spanned<RawFilter>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    backend_refs: Vec<Spanned<RawBackendRef>>,
    #[serde(default)]
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    retry: Option<RawRetry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawHttpMatch {
    #[serde(default)]
    path: Option<Spanned<RawPathMatch>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    headers: Vec<Spanned<RawValueMatch>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    query_params: Vec<Spanned<RawValueMatch>>,
    #[serde(default)]
    method: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPathMatch {
    #[serde(default, rename = "type")]
    kind: Option<Text>,
    #[serde(default)]
    value: Option<Text>,
}

/// A header or query parameter match.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawValueMatch {
    #[serde(default, rename = "type")]
    kind: Option<Text>,
    name: Text,
    value: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrpcMatch {
    #[serde(default)]
    method: Option<Spanned<RawGrpcMethod>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    headers: Vec<Spanned<RawValueMatch>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrpcMethod {
    #[serde(default, rename = "type")]
    kind: Option<Text>,
    #[serde(default)]
    service: Option<Text>,
    #[serde(default)]
    method: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawFilter {
    #[serde(rename = "type")]
    kind: Text,
    #[serde(default)]
    request_header_modifier: Option<Spanned<RawHeaderModifier>>,
    #[serde(default)]
    response_header_modifier: Option<Spanned<RawHeaderModifier>>,
    #[serde(default)]
    url_rewrite: Option<Spanned<RawUrlRewrite>>,
    #[serde(default)]
    request_redirect: Option<Spanned<RawRedirect>>,
    #[serde(default)]
    request_mirror: Option<Spanned<RawMirror>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderModifier {
    #[serde(default, deserialize_with = "null_as_empty")]
    set: Vec<Spanned<RawHeaderValue>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    add: Vec<Spanned<RawHeaderValue>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    remove: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderValue {
    name: Text,
    value: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUrlRewrite {
    #[serde(default)]
    hostname: Option<Text>,
    #[serde(default)]
    path: Option<Spanned<RawPathModifier>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPathModifier {
    #[serde(rename = "type")]
    kind: Text,
    #[serde(default)]
    replace_full_path: Option<Text>,
    #[serde(default)]
    replace_prefix_match: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRedirect {
    #[serde(default)]
    scheme: Option<Text>,
    #[serde(default)]
    hostname: Option<Text>,
    #[serde(default)]
    path: Option<Spanned<RawPathModifier>>,
    #[serde(default)]
    port: Option<Text>,
    #[serde(default)]
    status_code: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawMirror {
    backend_ref: Spanned<RawObjectRef>,
    #[serde(default)]
    percent: Option<Text>,
    #[serde(default)]
    fraction: Option<Spanned<RawFraction>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFraction {
    numerator: Text,
    #[serde(default)]
    denominator: Option<Text>,
}

/// Gateway API's BackendObjectReference (the mirror's `backendRef`: no weight).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObjectRef {
    name: Text,
    #[serde(default)]
    namespace: Option<Text>,
    #[serde(default)]
    kind: Option<Text>,
    #[serde(default)]
    group: Option<Text>,
    #[serde(default)]
    port: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendRef {
    name: Text,
    #[serde(default)]
    namespace: Option<Text>,
    #[serde(default)]
    kind: Option<Text>,
    #[serde(default)]
    group: Option<Text>,
    #[serde(default)]
    port: Option<Text>,
    #[serde(default)]
    weight: Option<Text>,
    /// Accepted by the schema so that the message can say where filters go instead.
    #[serde(default)]
    filters: Option<Spanned<Vec<IgnoredAny>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTimeouts {
    #[serde(default)]
    request: Option<Text>,
    #[serde(default)]
    backend_request: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRetry {
    #[serde(default)]
    attempts: Option<Text>,
    #[serde(default)]
    backoff: Option<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    codes: Vec<Text>,
    #[serde(default)]
    connect_failure: Option<bool>,
    #[serde(default)]
    reset: Option<bool>,
}

// ---------------------------------------------------------------------------
// Routes read from the Kubernetes API.

/// Checks one HTTPRoute read from the API, given as JSON `{name, namespace, spec}` (spec in
/// Gateway API camelCase, as the API returns it, apiserver defaults included), against
/// `services`, with exactly the rules of the file's `http_routes:` entries. `origin` names
/// the object in the error; only the error's reason is meaningful (positions are in a JSON
/// rendering of the object).
pub fn check_api_http_route(
    route: &serde_json::Value,
    services: &[Service],
    origin: &str,
) -> Result<HttpRoute, ConfigError> {
    let raw: Spanned<RawHttpRoute> = super::kubernetes::from_json(route, origin)?;
    let checker = Checker::new(origin, super::PathChecks::Skipped);
    let routes = checker.http_routes(std::slice::from_ref(&raw), services);
    let mut routes = checker
        .finish(routes)
        .map_err(super::ConfigErrors::into_first)?;
    routes.pop().ok_or_else(|| ConfigError::Unlocated {
        file: origin.to_owned(),
        reason: "no route".to_owned(),
    })
}

/// As [`check_api_http_route`], for a GRPCRoute.
pub fn check_api_grpc_route(
    route: &serde_json::Value,
    services: &[Service],
    origin: &str,
) -> Result<GrpcRoute, ConfigError> {
    let raw: Spanned<RawGrpcRoute> = super::kubernetes::from_json(route, origin)?;
    let checker = Checker::new(origin, super::PathChecks::Skipped);
    let routes = checker.grpc_routes(std::slice::from_ref(&raw), services);
    let mut routes = checker
        .finish(routes)
        .map_err(super::ConfigErrors::into_first)?;
    routes.pop().ok_or_else(|| ConfigError::Unlocated {
        file: origin.to_owned(),
        reason: "no route".to_owned(),
    })
}

// ---------------------------------------------------------------------------
// Validation and conversion.

/// Which kind of route a rule belongs to, for the messages and the filters it accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// The filter types, with the key that holds each one's configuration.
const FILTER_TYPES: [(&str, &str); 5] = [
    ("RequestHeaderModifier", "requestHeaderModifier"),
    ("ResponseHeaderModifier", "responseHeaderModifier"),
    ("URLRewrite", "urlRewrite"),
    ("RequestRedirect", "requestRedirect"),
    ("RequestMirror", "requestMirror"),
];
const URL_REWRITE: usize = 2;
const REQUEST_REDIRECT: usize = 3;
const REQUEST_MIRROR: usize = 4;

/// Where a rule's `backendRefs` and mirrors may point.
struct Scope<'s> {
    /// The route's namespace, the default of references.
    namespace: &'s str,
    services: &'s [Service],
}

impl Checker<'_> {
    /// `protocol:`, else Istio's port-name convention, else detection.
    pub(super) fn port_protocol(
        &self,
        raw: Option<&Text>,
        name: Option<&str>,
    ) -> Result<PortProtocol, ConfigError> {
        if let Some(raw) = raw {
            return match protocol_named(&raw.value) {
                Some(p) => Ok(PortProtocol::Declared(p)),
                None => Err(self.err(
                    raw.referenced,
                    format!(
                        "invalid protocol {}: expected tcp, http, http2 or grpc",
                        quote(&raw.value)
                    ),
                )),
            };
        }
        // `http-web`, `grpc`, `tcp-db`: the part before the first '-'.
        let by_name = name
            .and_then(|n| n.split('-').next())
            .and_then(protocol_named);
        Ok(by_name.map_or(PortProtocol::Detect, PortProtocol::Declared))
    }

    pub(super) fn load_balancer(&self, raw: &Text) -> Result<LoadBalancer, ConfigError> {
        let v = raw.value.as_str();
        if v.eq_ignore_ascii_case("round_robin") {
            Ok(LoadBalancer::RoundRobin)
        } else if v.eq_ignore_ascii_case("least_request") {
            Ok(LoadBalancer::LeastRequest)
        } else {
            Err(self.err(
                raw.referenced,
                format!(
                    "invalid load_balancer {}: expected round_robin or least_request",
                    quote(v)
                ),
            ))
        }
    }

    pub(super) fn outlier_detection(
        &self,
        raw: &Spanned<Option<RawOutlierDetection>>,
    ) -> Result<OutlierDetection, ConfigError> {
        // Like `egress:`, a key with no value is ambiguous: defaults, or off?
        let Some(raw) = &raw.value else {
            return Err(self.err(
                raw.referenced,
                "`outlier_detection` has no value: write `outlier_detection: {}` for the defaults, or remove the key to never eject endpoints".to_owned(),
            ));
        };
        let defaults = OutlierDetection::default();
        let consecutive_5xx_errors = self.keep(self.opt_u32(
            raw.consecutive_5xx_errors.as_ref(),
            "consecutive_5xx_errors",
            1_000_000,
            defaults.consecutive_5xx_errors,
        ));
        let consecutive_gateway_errors = self.keep(self.opt_u32(
            raw.consecutive_gateway_errors.as_ref(),
            "consecutive_gateway_errors",
            1_000_000,
            defaults.consecutive_gateway_errors,
        ));
        let base_ejection_time = match &raw.base_ejection_time {
            Some(t) => self.keep(self.duration(t, "base_ejection_time", MS, MAX_LONG_DURATION)),
            None => Some(defaults.base_ejection_time),
        };
        let max_ejection_percent = self.keep(self.opt_u32(
            raw.max_ejection_percent.as_ref(),
            "max_ejection_percent",
            100,
            defaults.max_ejection_percent,
        ));
        match (
            consecutive_5xx_errors,
            consecutive_gateway_errors,
            base_ejection_time,
            max_ejection_percent,
        ) {
            (
                Some(consecutive_5xx_errors),
                Some(consecutive_gateway_errors),
                Some(base_ejection_time),
                Some(max_ejection_percent),
            ) => Ok(OutlierDetection {
                consecutive_5xx_errors,
                consecutive_gateway_errors,
                base_ejection_time,
                max_ejection_percent,
            }),
            _ => Err(self.reported()),
        }
    }

    pub(super) fn http_settings(&self, raw: &RawHttp) -> Result<HttpSettings, ConfigError> {
        let defaults = HttpSettings::default();
        let detection_timeout = match &raw.detection_timeout {
            Some(t) => self.keep(self.duration(t, "detection_timeout", MS, MAX_DETECTION_TIMEOUT)),
            None => Some(defaults.detection_timeout),
        };
        let max_header_bytes = match &raw.max_header_bytes {
            Some(n) => self.keep(self.number(n, "max_header_bytes", 1024, 1_048_576)),
            None => Some(defaults.max_header_bytes as u64),
        };
        let (percent, min_retries_per_second) = match &raw.retry_budget {
            Some(b) => (
                self.keep(self.opt_u32(
                    b.percent.as_ref(),
                    "retry_budget.percent",
                    1000,
                    defaults.retry_budget.percent,
                )),
                self.keep(self.opt_u32(
                    b.min_retries_per_second.as_ref(),
                    "retry_budget.min_retries_per_second",
                    100_000,
                    defaults.retry_budget.min_retries_per_second,
                )),
            ),
            None => (
                Some(defaults.retry_budget.percent),
                Some(defaults.retry_budget.min_retries_per_second),
            ),
        };
        match (
            detection_timeout,
            max_header_bytes,
            percent,
            min_retries_per_second,
        ) {
            (
                Some(detection_timeout),
                Some(max_header_bytes),
                Some(percent),
                Some(min_retries_per_second),
            ) => Ok(HttpSettings {
                detection_timeout,
                max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
                retry_budget: RetryBudget {
                    percent,
                    min_retries_per_second,
                },
            }),
            _ => Err(self.reported()),
        }
    }

    /// Each route is checked on its own: errors are recorded in the checker
    /// and the valid routes returned.
    pub(super) fn http_routes(
        &self,
        raws: &[Spanned<RawHttpRoute>],
        services: &[Service],
    ) -> Result<Vec<HttpRoute>, ConfigError> {
        let mut seen = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let head = self.keep(self.route_head(RouteKind::Http, &raw.value, &mut seen, services));
            // The rules are checked even when the head has an error, in the
            // route's namespace if that one is valid (backendRefs resolve there).
            let Ok(namespace) = self.namespace(raw.value.namespace.as_ref()) else {
                continue;
            };
            let scope = Scope {
                namespace: &namespace,
                services,
            };
            let rules =
                self.keep(self.route_rules(&raw.value.spec, |rule| self.http_rule(rule, &scope)));
            if let (Some(head), Some(rules)) = (head, rules) {
                out.push(HttpRoute {
                    name: head.name,
                    namespace: head.namespace,
                    parent_refs: head.parent_refs,
                    hostnames: head.hostnames,
                    rules,
                });
            }
        }
        Ok(out)
    }

    /// Like [`Checker::http_routes`].
    pub(super) fn grpc_routes(
        &self,
        raws: &[Spanned<RawGrpcRoute>],
        services: &[Service],
    ) -> Result<Vec<GrpcRoute>, ConfigError> {
        let mut seen = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let head = self.keep(self.route_head(RouteKind::Grpc, &raw.value, &mut seen, services));
            let Ok(namespace) = self.namespace(raw.value.namespace.as_ref()) else {
                continue;
            };
            let scope = Scope {
                namespace: &namespace,
                services,
            };
            let rules =
                self.keep(self.route_rules(&raw.value.spec, |rule| self.grpc_rule(rule, &scope)));
            if let (Some(head), Some(rules)) = (head, rules) {
                out.push(GrpcRoute {
                    name: head.name,
                    namespace: head.namespace,
                    parent_refs: head.parent_refs,
                    hostnames: head.hostnames,
                    rules,
                });
            }
        }
        Ok(out)
    }

    /// The parts HTTPRoute and GRPCRoute share: name, namespace, parents, hostnames.
    fn route_head<M>(
        &self,
        kind: RouteKind,
        raw: &RawRoute<M>,
        seen: &mut HashMap<(String, String), u64>,
        services: &[Service],
    ) -> Result<RouteHead, ConfigError> {
        let before = self.errors_so_far();
        let name = raw.name.value.clone();
        if !is_dns_subdomain(&name, 253) {
            self.keep::<()>(Err(self.err(
                raw.name.referenced,
                format!(
                    "invalid {} name {}: use 1 to 253 characters among a-z, 0-9, '-' and '.', starting and ending with a letter or digit",
                    kind.name(),
                    quote(&name)
                ),
            )));
        }
        let namespace = self.namespace(raw.namespace.as_ref())?;
        if self.errors_so_far() == before
            && let Some(first) = seen.insert((namespace.clone(), name.clone()), line_of(&raw.name))
        {
            self.keep::<()>(Err(self.err(
                raw.name.referenced,
                format!(
                    "duplicate {} {} (first defined at line {first})",
                    kind.name(),
                    quote(&format!("{namespace}/{name}"))
                ),
            )));
        }
        let spec = &raw.spec.value;
        // Parents and hostnames are independent: both are checked.
        let parent_refs = match &spec.parent_refs {
            None => Err(self.err(
                raw.spec.referenced,
                "`parentRefs` is required: attach the route to at least one Service".to_owned(),
            )),
            Some(parents) if parents.value.is_empty() => Err(self.err(
                parents.referenced,
                "`parentRefs` is empty: attach the route to at least one Service".to_owned(),
            )),
            Some(parents) => self
                .at_most(&parents.value, MAX_PARENT_REFS, "parentRefs", "route")
                .and_then(|()| {
                    self.each(
                        parents
                            .value
                            .iter()
                            .map(|p| self.parent_ref(p, &namespace, services)),
                    )
                }),
        };
        let hostnames = self
            .at_most(&spec.hostnames, MAX_HOSTNAMES, "hostnames", "route")
            .and_then(|()| self.each(spec.hostnames.iter().map(|h| self.hostname(h, true))));
        let (parent_refs, hostnames) = (self.keep(parent_refs), self.keep(hostnames));
        if self.errors_so_far() != before {
            return Err(self.reported());
        }
        match (parent_refs, hostnames) {
            (Some(parent_refs), Some(hostnames)) => Ok(RouteHead {
                name,
                namespace,
                parent_refs,
                hostnames,
            }),
            _ => Err(self.reported()),
        }
    }

    /// Checks the rule count and rule names, and converts every rule with `rule`.
    fn route_rules<M, R>(
        &self,
        spec: &Spanned<RawSpec<M>>,
        rule: impl Fn(&Spanned<RawRule<M>>) -> Result<R, ConfigError>,
    ) -> Result<Vec<R>, ConfigError> {
        let rules = &spec.value.rules;
        self.at_most(rules, MAX_RULES, "rules", "route")?;
        let mut names: HashMap<&str, u64> = HashMap::new();
        let named = self.each(rules.iter().filter_map(|raw| raw.value.name.as_ref()).map(
            |name| {
                if !is_dns_subdomain(&name.value, 253) {
                    return Err(self.err(
                        name.referenced,
                        format!(
                            "invalid rule name {}: use 1 to 253 characters among a-z, 0-9, '-' and '.', starting and ending with a letter or digit",
                            quote(&name.value)
                        ),
                    ));
                }
                if let Some(first) = names.insert(&name.value, line_of(name)) {
                    return Err(self.err(
                        name.referenced,
                        format!(
                            "duplicate rule name {} (first defined at line {first})",
                            quote(&name.value)
                        ),
                    ));
                }
                Ok(())
            },
        ));
        let converted = self.each(rules.iter().map(rule));
        let (named, converted) = (self.keep(named), self.keep(converted));
        match (named, converted) {
            (Some(_), Some(converted)) => Ok(converted),
            _ => Err(self.reported()),
        }
    }

    /// A rule's matches, filters, backends, timeouts and retry are each checked.
    fn http_rule(
        &self,
        raw: &Spanned<RawRule<RawHttpMatch>>,
        scope: &Scope,
    ) -> Result<HttpRouteRule, ConfigError> {
        let rule = &raw.value;
        let matches = self
            .at_most(&rule.matches, MAX_MATCHES, "matches", "rule")
            .and_then(|()| self.each(rule.matches.iter().map(|m| self.http_match(m))));
        let matches = self.keep(matches).map(|mut matches| {
            if matches.is_empty() {
                matches.push(HttpRouteMatch {
                    path: PathMatch::PathPrefix("/".to_owned()),
                    headers: Vec::new(),
                    query_params: Vec::new(),
                    method: None,
                });
            }
            matches
        });
        // A broken match counts as a prefix one: the filter checks that
        // depend on it then say nothing more.
        let all_prefix = matches.as_ref().is_none_or(|matches| {
            matches
                .iter()
                .all(|m| matches!(m.path, PathMatch::PathPrefix(_)))
        });
        let filters = self.keep(self.filters(&rule.filters, RouteKind::Http, all_prefix, scope));
        let backend_refs = self.keep(self.backend_refs(&rule.backend_refs, scope));
        if let Some((_, true)) = filters
            && let Some(first) = rule.backend_refs.first()
        {
            self.keep::<()>(Err(self.err(
                first.referenced,
                "backendRefs are never used on a rule with a RequestRedirect filter (the redirect answers every request); remove them".to_owned(),
            )));
            return Err(self.reported());
        }
        let timeouts = self.keep(self.timeouts(rule.timeouts.as_ref()));
        let retry = self.keep(self.retry(rule.retry.as_ref()));
        match (matches, filters, backend_refs, timeouts, retry) {
            (
                Some(matches),
                Some((filters, _)),
                Some(backend_refs),
                Some(timeouts),
                Some(retry),
            ) => Ok(HttpRouteRule {
                name: rule.name.as_ref().map(|n| n.value.clone()),
                matches,
                filters,
                backend_refs,
                timeouts,
                retry,
            }),
            _ => Err(self.reported()),
        }
    }

    fn grpc_rule(
        &self,
        raw: &Spanned<RawRule<RawGrpcMatch>>,
        scope: &Scope,
    ) -> Result<GrpcRouteRule, ConfigError> {
        let rule = &raw.value;
        let matches = self
            .at_most(&rule.matches, MAX_MATCHES, "matches", "rule")
            .and_then(|()| {
                self.each(rule.matches.iter().map(|m| {
                    let method = match &m.value.method {
                        Some(method) => self.keep(self.grpc_method(method)).map(Some),
                        None => Some(None),
                    };
                    let headers = self.keep(self.header_matches(&m.value.headers));
                    match (method, headers) {
                        (Some(method), Some(headers)) => Ok(GrpcRouteMatch { method, headers }),
                        _ => Err(self.reported()),
                    }
                }))
            });
        let matches = self.keep(matches);
        let filters = self.keep(self.filters(&rule.filters, RouteKind::Grpc, true, scope));
        let backend_refs = self.keep(self.backend_refs(&rule.backend_refs, scope));
        let timeouts = self.keep(self.timeouts(rule.timeouts.as_ref()));
        let retry = self.keep(self.retry(rule.retry.as_ref()));
        match (matches, filters, backend_refs, timeouts, retry) {
            (
                Some(matches),
                Some((filters, _)),
                Some(backend_refs),
                Some(timeouts),
                Some(retry),
            ) => Ok(GrpcRouteRule {
                name: rule.name.as_ref().map(|n| n.value.clone()),
                matches,
                filters,
                backend_refs,
                timeouts,
                retry,
            }),
            _ => Err(self.reported()),
        }
    }

    fn http_match(&self, raw: &Spanned<RawHttpMatch>) -> Result<HttpRouteMatch, ConfigError> {
        let m = &raw.value;
        let path = match &m.path {
            Some(p) => self.path_match(p)?,
            None => PathMatch::PathPrefix("/".to_owned()),
        };
        let headers = self.header_matches(&m.headers)?;
        let query_params = self
            .value_matches(&m.query_params, ValueKind::QueryParam)?
            .into_iter()
            .map(|(name, value)| QueryParamMatch { name, value })
            .collect();
        let method = match &m.method {
            Some(raw) if METHODS.contains(&raw.value.as_str()) => Some(raw.value.clone()),
            Some(raw) => {
                return Err(self.err(
                    raw.referenced,
                    format!(
                        "invalid method {}: expected one of {}",
                        quote(&raw.value),
                        METHODS.join(", ")
                    ),
                ));
            }
            None => None,
        };
        Ok(HttpRouteMatch {
            path,
            headers,
            query_params,
            method,
        })
    }

    fn path_match(&self, raw: &Spanned<RawPathMatch>) -> Result<PathMatch, ConfigError> {
        let (value, at) = match &raw.value.value {
            Some(v) => (v.value.clone(), v.referenced),
            None => ("/".to_owned(), raw.referenced),
        };
        let kind = raw.value.kind.as_ref();
        match kind.map(|k| k.value.as_str()) {
            None | Some("PathPrefix") | Some("Exact") => {
                if let Some(why) = path_problem(&value) {
                    return Err(self.err(at, format!("invalid path {}: {why}", quote(&value))));
                }
                Ok(if kind.is_some_and(|k| k.value == "Exact") {
                    PathMatch::Exact(value)
                } else {
                    PathMatch::PathPrefix(value)
                })
            }
            Some("RegularExpression") => {
                self.regex(&value, at, MAX_PATH_LEN)?;
                Ok(PathMatch::RegularExpression(value))
            }
            Some(other) => Err(self.err(
                kind.map_or(raw.referenced, |k| k.referenced),
                format!(
                    "invalid path match type {}: expected Exact, PathPrefix or RegularExpression",
                    quote(other)
                ),
            )),
        }
    }

    fn header_matches(
        &self,
        raws: &[Spanned<RawValueMatch>],
    ) -> Result<Vec<HeaderMatch>, ConfigError> {
        Ok(self
            .value_matches(raws, ValueKind::Header)?
            .into_iter()
            .map(|(name, value)| HeaderMatch { name, value })
            .collect())
    }

    /// Header or query parameter matches: names, types, values, no duplicate names.
    fn value_matches(
        &self,
        raws: &[Spanned<RawValueMatch>],
        what: ValueKind,
    ) -> Result<Vec<(String, StringMatch)>, ConfigError> {
        let (list, noun) = match what {
            ValueKind::Header => ("header matches", "header"),
            ValueKind::QueryParam => ("query parameter matches", "query parameter"),
        };
        self.at_most(raws, MAX_VALUE_MATCHES, list, "match")?;
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let m = &raw.value;
            let name = match what {
                ValueKind::Header => self.header_name(&m.name)?,
                ValueKind::QueryParam => {
                    if !is_token(&m.name.value) {
                        return Err(self.err(
                            m.name.referenced,
                            format!(
                                "invalid query parameter name {}: {TOKEN_RULE}",
                                quote(&m.name.value)
                            ),
                        ));
                    }
                    m.name.value.clone()
                }
            };
            if let Some(first) = seen.insert(name.clone(), line_of(&m.name)) {
                let case = match what {
                    ValueKind::Header => " (header names are case-insensitive)",
                    ValueKind::QueryParam => "",
                };
                return Err(self.err(
                    m.name.referenced,
                    format!(
                        "duplicate {noun} match {}{case} (first at line {first})",
                        quote(&name)
                    ),
                ));
            }
            let value = &m.value.value;
            if !(1..=MAX_HEADER_VALUE_LEN).contains(&value.len()) {
                return Err(self.err(
                    m.value.referenced,
                    format!(
                        "the value of a {noun} match must be 1 to {MAX_HEADER_VALUE_LEN} characters"
                    ),
                ));
            }
            let value = match m.kind.as_ref().map(|k| (k, k.value.as_str())) {
                None | Some((_, "Exact")) => StringMatch::Exact(value.clone()),
                Some((_, "RegularExpression")) => {
                    self.regex(value, m.value.referenced, MAX_HEADER_VALUE_LEN)?;
                    StringMatch::RegularExpression(value.clone())
                }
                Some((k, other)) => {
                    return Err(self.err(
                        k.referenced,
                        format!(
                            "invalid {noun} match type {}: expected Exact or RegularExpression",
                            quote(other)
                        ),
                    ));
                }
            };
            out.push((name, value));
        }
        Ok(out)
    }

    fn grpc_method(&self, raw: &Spanned<RawGrpcMethod>) -> Result<GrpcMethodMatch, ConfigError> {
        let m = &raw.value;
        let regex = match m.kind.as_ref().map(|k| (k, k.value.as_str())) {
            None | Some((_, "Exact")) => false,
            Some((_, "RegularExpression")) => true,
            Some((k, other)) => {
                return Err(self.err(
                    k.referenced,
                    format!(
                        "invalid method match type {}: expected Exact or RegularExpression",
                        quote(other)
                    ),
                ));
            }
        };
        if m.service.is_none() && m.method.is_none() {
            return Err(self.err(
                raw.referenced,
                "a gRPC method match needs `service`, `method` or both".to_owned(),
            ));
        }
        if let Some(service) = &m.service {
            if regex {
                self.regex(&service.value, service.referenced, MAX_PATH_LEN)?;
            } else if !is_grpc_service(&service.value) {
                return Err(self.err(
                    service.referenced,
                    format!(
                        "invalid gRPC service {}: expected identifiers ([A-Za-z_][A-Za-z0-9_]*) separated by '.', such as helloworld.Greeter",
                        quote(&service.value)
                    ),
                ));
            }
        }
        if let Some(method) = &m.method {
            if regex {
                self.regex(&method.value, method.referenced, MAX_PATH_LEN)?;
            } else if !is_identifier(&method.value) {
                return Err(self.err(
                    method.referenced,
                    format!(
                        "invalid gRPC method {}: expected an identifier ([A-Za-z_][A-Za-z0-9_]*), such as SayHello",
                        quote(&method.value)
                    ),
                ));
            }
        }
        Ok(GrpcMethodMatch {
            regex,
            service: m.service.as_ref().map(|s| s.value.clone()),
            method: m.method.as_ref().map(|s| s.value.clone()),
        })
    }

    /// A rule's filters, and whether one of them is a RequestRedirect. `all_prefix`: every
    /// match of the rule is a PathPrefix match (ReplacePrefixMatch needs it).
    fn filters(
        &self,
        raws: &[Spanned<RawFilter>],
        kind: RouteKind,
        all_prefix: bool,
        scope: &Scope,
    ) -> Result<(Vec<HttpFilter>, bool), ConfigError> {
        self.at_most(raws, MAX_FILTERS, "filters", "rule")?;
        // Line of the first filter of each type, for "at most once" and exclusions.
        let mut first: [Option<u64>; 5] = [None; 5];
        let allowed: &[usize] = match kind {
            RouteKind::Http => &[0, 1, URL_REWRITE, REQUEST_REDIRECT, REQUEST_MIRROR],
            RouteKind::Grpc => &[0, 1, REQUEST_MIRROR],
        };
        let list = |indices: &[usize]| {
            let names: Vec<&str> = indices
                .iter()
                .filter_map(|&i| FILTER_TYPES.get(i).map(|t| t.0))
                .collect();
            match names.split_last() {
                Some((last, rest)) if !rest.is_empty() => {
                    format!("{} or {last}", rest.join(", "))
                }
                _ => names.join(""),
            }
        };
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let f = &raw.value;
            let index = FILTER_TYPES.iter().position(|(t, _)| *t == f.kind.value);
            let index = match index {
                Some(i) if allowed.contains(&i) => i,
                Some(_) => {
                    return Err(self.err(
                        f.kind.referenced,
                        format!(
                            "filter type {} is not supported on {} rules: expected {}",
                            quote(&f.kind.value),
                            kind.name(),
                            list(allowed)
                        ),
                    ));
                }
                None => {
                    return Err(self.err(
                        f.kind.referenced,
                        format!(
                            "invalid filter type {}: expected {}",
                            quote(&f.kind.value),
                            list(allowed)
                        ),
                    ));
                }
            };
            let (type_name, key) = FILTER_TYPES[index];
            let configs: [Option<Location>; 5] = [
                f.request_header_modifier.as_ref().map(|c| c.referenced),
                f.response_header_modifier.as_ref().map(|c| c.referenced),
                f.url_rewrite.as_ref().map(|c| c.referenced),
                f.request_redirect.as_ref().map(|c| c.referenced),
                f.request_mirror.as_ref().map(|c| c.referenced),
            ];
            if configs[index].is_none() {
                return Err(self.err(
                    f.kind.referenced,
                    format!("a filter of type {type_name} requires `{key}`"),
                ));
            }
            for (i, config) in configs.iter().enumerate() {
                if let Some(at) = config
                    && i != index
                {
                    return Err(self.err(
                        *at,
                        format!(
                            "`{}` does not belong in a filter of type {type_name}",
                            FILTER_TYPES[i].1
                        ),
                    ));
                }
            }
            if index != REQUEST_MIRROR
                && let Some(line) = first[index]
            {
                return Err(self.err(
                    f.kind.referenced,
                    format!("{type_name} may be used at most once per rule (first at line {line})"),
                ));
            }
            let other = match index {
                URL_REWRITE => Some(REQUEST_REDIRECT),
                REQUEST_REDIRECT => Some(URL_REWRITE),
                _ => None,
            };
            if let Some(other) = other
                && let Some(line) = first[other]
            {
                return Err(self.err(
                    f.kind.referenced,
                    format!(
                        "a rule cannot have both URLRewrite and RequestRedirect filters ({} at line {line})",
                        FILTER_TYPES[other].0
                    ),
                ));
            }
            if first[index].is_none() {
                first[index] = Some(line_of(&f.kind));
            }

            // Present, as checked above; the error keeps this free of panics.
            let missing = || {
                self.err(
                    f.kind.referenced,
                    format!("a filter of type {type_name} requires `{key}`"),
                )
            };
            let filter = match index {
                0 => HttpFilter::RequestHeaderModifier(self.header_modifier(
                    f.request_header_modifier.as_ref().ok_or_else(missing)?,
                    key,
                )?),
                1 => HttpFilter::ResponseHeaderModifier(self.header_modifier(
                    f.response_header_modifier.as_ref().ok_or_else(missing)?,
                    key,
                )?),
                URL_REWRITE => HttpFilter::UrlRewrite(self.url_rewrite(
                    &f.url_rewrite.as_ref().ok_or_else(missing)?.value,
                    all_prefix,
                )?),
                REQUEST_REDIRECT => HttpFilter::RequestRedirect(self.redirect(
                    &f.request_redirect.as_ref().ok_or_else(missing)?.value,
                    all_prefix,
                )?),
                _ => HttpFilter::RequestMirror(
                    self.mirror(&f.request_mirror.as_ref().ok_or_else(missing)?.value, scope)?,
                ),
            };
            out.push(filter);
        }
        Ok((out, first[REQUEST_REDIRECT].is_some()))
    }

    fn header_modifier(
        &self,
        raw: &Spanned<RawHeaderModifier>,
        key: &str,
    ) -> Result<HeaderModifier, ConfigError> {
        let m = &raw.value;
        self.at_most(&m.set, MAX_MODIFIED_HEADERS, "headers in `set`", key)?;
        self.at_most(&m.add, MAX_MODIFIED_HEADERS, "headers in `add`", key)?;
        self.at_most(&m.remove, MAX_MODIFIED_HEADERS, "headers in `remove`", key)?;
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut check = |raw: &Text| -> Result<String, ConfigError> {
            let name = self.header_name(raw)?;
            if let Some(first) = seen.insert(name.clone(), line_of(raw)) {
                return Err(self.err(
                    raw.referenced,
                    format!(
                        "header {} appears more than once in {key} (set, add and remove together; first at line {first})",
                        quote(&name)
                    ),
                ));
            }
            Ok(name)
        };
        let mut pairs = |list: &[Spanned<RawHeaderValue>]| {
            list.iter()
                .map(|h| {
                    let name = check(&h.value.name)?;
                    Ok((name, self.header_value(&h.value.value)?))
                })
                .collect::<Result<Vec<_>, ConfigError>>()
        };
        let set = pairs(&m.set)?;
        let add = pairs(&m.add)?;
        let remove = m
            .remove
            .iter()
            .map(&mut check)
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(HeaderModifier { set, add, remove })
    }

    fn url_rewrite(
        &self,
        raw: &RawUrlRewrite,
        all_prefix: bool,
    ) -> Result<UrlRewrite, ConfigError> {
        Ok(UrlRewrite {
            hostname: match &raw.hostname {
                Some(h) => Some(self.hostname(h, false)?),
                None => None,
            },
            path: match &raw.path {
                Some(p) => Some(self.path_modifier(p, all_prefix)?),
                None => None,
            },
        })
    }

    fn redirect(
        &self,
        raw: &RawRedirect,
        all_prefix: bool,
    ) -> Result<RequestRedirect, ConfigError> {
        let scheme = match &raw.scheme {
            Some(s) => {
                let lower = s.value.to_ascii_lowercase();
                if lower != "http" && lower != "https" {
                    return Err(self.err(
                        s.referenced,
                        format!("invalid scheme {}: expected http or https", quote(&s.value)),
                    ));
                }
                Some(lower)
            }
            None => None,
        };
        let status_code = match &raw.status_code {
            Some(c) => {
                let code = c.value.trim().parse::<u16>().ok();
                match code.filter(|c| REDIRECT_CODES.contains(c)) {
                    Some(code) => code,
                    None => {
                        return Err(self.err(
                            c.referenced,
                            format!(
                                "invalid redirect statusCode {}: expected 301, 302, 303, 307 or 308",
                                quote(&c.value)
                            ),
                        ));
                    }
                }
            }
            None => 302,
        };
        Ok(RequestRedirect {
            scheme,
            hostname: match &raw.hostname {
                Some(h) => Some(self.hostname(h, false)?),
                None => None,
            },
            path: match &raw.path {
                Some(p) => Some(self.path_modifier(p, all_prefix)?),
                None => None,
            },
            port: match &raw.port {
                Some(p) => Some(self.port(p)?),
                None => None,
            },
            status_code,
        })
    }

    fn path_modifier(
        &self,
        raw: &Spanned<RawPathModifier>,
        all_prefix: bool,
    ) -> Result<PathModifier, ConfigError> {
        let m = &raw.value;
        let (full, prefix) = (&m.replace_full_path, &m.replace_prefix_match);
        let (value, misplaced, key) = match m.kind.value.as_str() {
            "ReplaceFullPath" => (full, prefix, "replaceFullPath"),
            "ReplacePrefixMatch" => (prefix, full, "replacePrefixMatch"),
            other => {
                return Err(self.err(
                    m.kind.referenced,
                    format!(
                        "invalid path modifier type {}: expected ReplaceFullPath or ReplacePrefixMatch",
                        quote(other)
                    ),
                ));
            }
        };
        let kind = &m.kind.value;
        let Some(value) = value else {
            return Err(self.err(
                m.kind.referenced,
                format!("a path modifier of type {kind} requires `{key}`"),
            ));
        };
        if let Some(other) = misplaced {
            let other_key = if key == "replaceFullPath" {
                "replacePrefixMatch"
            } else {
                "replaceFullPath"
            };
            return Err(self.err(
                other.referenced,
                format!("`{other_key}` does not belong in a path modifier of type {kind}"),
            ));
        }
        if let Some(why) = path_problem(&value.value) {
            return Err(self.err(
                value.referenced,
                format!("invalid {key} {}: {why}", quote(&value.value)),
            ));
        }
        if key == "replaceFullPath" {
            return Ok(PathModifier::ReplaceFullPath(value.value.clone()));
        }
        if !all_prefix {
            return Err(self.err(
                m.kind.referenced,
                "ReplacePrefixMatch is only allowed when every match of the rule is a PathPrefix match".to_owned(),
            ));
        }
        Ok(PathModifier::ReplacePrefixMatch(value.value.clone()))
    }

    fn mirror(&self, raw: &RawMirror, scope: &Scope) -> Result<RequestMirror, ConfigError> {
        let r = &raw.backend_ref;
        let backend = self.backend(
            &BackendFields {
                at: r.referenced,
                name: &r.value.name,
                namespace: r.value.namespace.as_ref(),
                kind: r.value.kind.as_ref(),
                group: r.value.group.as_ref(),
                port: r.value.port.as_ref(),
            },
            1,
            scope,
        )?;
        let (numerator, denominator) = match (&raw.percent, &raw.fraction) {
            (Some(_), Some(f)) => {
                return Err(self.err(
                    f.referenced,
                    "set either `percent` or `fraction` in requestMirror, not both".to_owned(),
                ));
            }
            (Some(p), None) => (self.number(p, "percent", 0, 100)?, 100),
            (None, Some(f)) => {
                let max = MAX_FRACTION;
                let numerator = self.number(&f.value.numerator, "numerator", 0, max)?;
                let denominator = match &f.value.denominator {
                    Some(d) => self.number(d, "denominator", 1, max)?,
                    None => 100,
                };
                if numerator > denominator {
                    return Err(self.err(
                        f.value.numerator.referenced,
                        format!(
                            "fraction numerator {numerator} is larger than its denominator {denominator}"
                        ),
                    ));
                }
                (numerator, denominator)
            }
            (None, None) => (100, 100),
        };
        Ok(RequestMirror {
            backend,
            numerator: u32::try_from(numerator).unwrap_or(u32::MAX),
            denominator: u32::try_from(denominator).unwrap_or(u32::MAX),
        })
    }

    fn backend_refs(
        &self,
        raws: &[Spanned<RawBackendRef>],
        scope: &Scope,
    ) -> Result<Vec<BackendRef>, ConfigError> {
        self.at_most(raws, MAX_BACKEND_REFS, "backendRefs", "rule")?;
        self.each(raws.iter().map(|raw| {
            let r = &raw.value;
            if let Some(filters) = &r.filters
                && !filters.value.is_empty()
            {
                return Err(self.err(
                    filters.referenced,
                    "backendRefs[].filters are not supported; put filters on the rule".to_owned(),
                ));
            }
            let weight = match &r.weight {
                Some(w) => self.number(w, "weight", 0, MAX_WEIGHT)?,
                None => 1,
            };
            self.backend(
                &BackendFields {
                    at: raw.referenced,
                    name: &r.name,
                    namespace: r.namespace.as_ref(),
                    kind: r.kind.as_ref(),
                    group: r.group.as_ref(),
                    port: r.port.as_ref(),
                },
                u32::try_from(weight).unwrap_or(u32::MAX),
                scope,
            )
        }))
    }

    /// A Service and port requests are sent to; it must exist.
    fn backend(
        &self,
        raw: &BackendFields,
        weight: u32,
        scope: &Scope,
    ) -> Result<BackendRef, ConfigError> {
        self.service_kind(raw.kind, raw.group, "only Service backends are supported")?;
        let Some(port) = raw.port else {
            return Err(self.err(raw.at, "port is required for Service backends".to_owned()));
        };
        let namespace = match raw.namespace {
            Some(ns) => self.namespace(Some(ns))?,
            None => scope.namespace.to_owned(),
        };
        let port = self.service_port(&namespace, raw.name, Some(port), scope.services)?;
        Ok(BackendRef {
            name: raw.name.value.clone(),
            namespace,
            port: port.unwrap_or_default(),
            weight,
        })
    }

    fn parent_ref(
        &self,
        raw: &Spanned<RawParentRef>,
        route_namespace: &str,
        services: &[Service],
    ) -> Result<ParentRef, ConfigError> {
        let p = &raw.value;
        self.service_kind(
            p.kind.as_ref(),
            p.group.as_ref(),
            "only Service parents are supported (GAMMA)",
        )?;
        let namespace = match &p.namespace {
            Some(ns) => self.namespace(Some(ns))?,
            None => route_namespace.to_owned(),
        };
        let port = self.service_port(&namespace, &p.name, p.port.as_ref(), services)?;
        Ok(ParentRef {
            name: p.name.value.clone(),
            namespace,
            port,
        })
    }

    /// `kind` absent or Service, `group` absent, "" or "core".
    fn service_kind(
        &self,
        kind: Option<&Text>,
        group: Option<&Text>,
        why: &str,
    ) -> Result<(), ConfigError> {
        if let Some(kind) = kind
            && kind.value != "Service"
        {
            return Err(self.err(
                kind.referenced,
                format!("invalid kind {}: {why}", quote(&kind.value)),
            ));
        }
        if let Some(group) = group
            && !matches!(group.value.as_str(), "" | "core")
        {
            return Err(self.err(
                group.referenced,
                format!("invalid group {}: {why}", quote(&group.value)),
            ));
        }
        Ok(())
    }

    /// The service `namespace/name` must exist and `port`, if given, be one of its ports.
    fn service_port(
        &self,
        namespace: &str,
        name: &Text,
        port: Option<&Text>,
        services: &[Service],
    ) -> Result<Option<u16>, ConfigError> {
        let id = format!("{namespace}/{}", name.value);
        let Some(service) = services
            .iter()
            .find(|s| s.name == name.value && s.namespace == namespace)
        else {
            // Defined, but with an error of its own, already reported.
            if self.broken_services.borrow().contains(&id) {
                return Err(self.reported());
            }
            return Err(self.err(
                name.referenced,
                format!("service {} is not defined under services", quote(&id)),
            ));
        };
        let Some(raw_port) = port else {
            return Ok(None);
        };
        let port = self.port(raw_port)?;
        if service.ports.iter().any(|p| p.port == port) {
            return Ok(Some(port));
        }
        let ports = if service.ports.is_empty() {
            "it has no ports".to_owned()
        } else {
            let list: Vec<String> = service.ports.iter().map(|p| p.port.to_string()).collect();
            format!("its ports: {}", list.join(", "))
        };
        Err(self.err(
            raw_port.referenced,
            format!(
                "port {port} is not a port of service {} ({ports})",
                quote(&id)
            ),
        ))
    }

    fn timeouts(&self, raw: Option<&RawTimeouts>) -> Result<RouteTimeouts, ConfigError> {
        let Some(raw) = raw else {
            return Ok(RouteTimeouts::default());
        };
        let timeout = |t: &Option<Text>, key: &str| match t {
            Some(t) => {
                let d = self.duration_or_zero(t, key)?;
                Ok::<_, ConfigError>(Some(d).filter(|d| !d.is_zero()))
            }
            None => Ok(None),
        };
        let request = timeout(&raw.request, "request")?;
        let backend_request = timeout(&raw.backend_request, "backendRequest")?;
        if let (Some(r), Some(b), Some(raw_b)) = (request, backend_request, &raw.backend_request)
            && b > r
        {
            return Err(self.err(
                raw_b.referenced,
                format!(
                    "backendRequest {} is longer than the request timeout {}",
                    show_duration(b),
                    show_duration(r)
                ),
            ));
        }
        Ok(RouteTimeouts {
            request,
            backend_request,
        })
    }

    fn retry(&self, raw: Option<&RawRetry>) -> Result<Option<RetryPolicy>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let attempts = self.opt_u32(raw.attempts.as_ref(), "attempts", MAX_RETRY_ATTEMPTS, 1)?;
        let backoff = match &raw.backoff {
            Some(b) => self.duration(b, "backoff", MS, MAX_BACKOFF)?,
            None => DEFAULT_BACKOFF,
        };
        let mut codes: Vec<u16> = Vec::with_capacity(raw.codes.len());
        for raw_code in &raw.codes {
            let code = self.number(raw_code, "retry code", 400, 599)?;
            let code = u16::try_from(code).unwrap_or(u16::MAX);
            if codes.contains(&code) {
                return Err(self.err(raw_code.referenced, format!("duplicate retry code {code}")));
            }
            codes.push(code);
        }
        Ok(Some(RetryPolicy {
            attempts,
            backoff,
            codes,
            connect_failure: raw.connect_failure.unwrap_or(true),
            reset: raw.reset.unwrap_or(true),
        }))
    }

    // -- Scalars ------------------------------------------------------------

    /// A lower-cased DNS name; `wildcard` allows a leading `*.`.
    fn hostname(&self, raw: &Text, wildcard: bool) -> Result<String, ConfigError> {
        let host = raw.value.to_ascii_lowercase();
        let name = if wildcard {
            host.strip_prefix("*.").unwrap_or(&host)
        } else {
            &host
        };
        if host.len() <= 253 && is_dns_subdomain(name, 63) {
            return Ok(host);
        }
        let shape = if wildcard {
            "a DNS name such as web.example.com, optionally starting with `*.`"
        } else {
            "a DNS name such as web.example.com (no wildcard)"
        };
        Err(self.err(
            raw.referenced,
            format!("invalid hostname {}: expected {shape}", quote(&raw.value)),
        ))
    }

    /// A header name of HTTP token characters, lower-cased.
    fn header_name(&self, raw: &Text) -> Result<String, ConfigError> {
        if is_token(&raw.value) {
            Ok(raw.value.to_ascii_lowercase())
        } else {
            Err(self.err(
                raw.referenced,
                format!("invalid header name {}: {TOKEN_RULE}", quote(&raw.value)),
            ))
        }
    }

    /// A header value the agent can send: no control characters other than tab.
    fn header_value(&self, raw: &Text) -> Result<String, ConfigError> {
        let v = &raw.value;
        let why = if v.len() > MAX_HEADER_VALUE_LEN {
            Some("must be at most 4096 characters")
        } else if v.chars().any(|c| c.is_control() && c != '\t') {
            Some("must not contain control characters such as line breaks")
        } else {
            None
        };
        match why {
            Some(why) => Err(self.err(
                raw.referenced,
                format!("invalid header value {}: {why}", quote(v)),
            )),
            None => Ok(v.clone()),
        }
    }

    /// A regular expression that must compile, anchored as the matcher anchors it.
    fn regex(&self, re: &str, at: Location, max_len: usize) -> Result<(), ConfigError> {
        let why = if re.len() > max_len {
            Some(format!("must be at most {max_len} characters"))
        } else {
            regex::Regex::new(re)
                .and_then(|_| regex::Regex::new(&format!("^(?:{re})$")))
                .err()
                .map(|e| {
                    // Syntax errors span several lines (the pattern, a caret, the reason);
                    // the reason is the last one.
                    let text = e.to_string();
                    let last = text.lines().last().unwrap_or_default().trim();
                    last.strip_prefix("error: ").unwrap_or(last).to_owned()
                })
        };
        match why {
            Some(why) => Err(self.err(
                at,
                format!("invalid regular expression {}: {}", quote(re), clean(&why)),
            )),
            None => Ok(()),
        }
    }

    /// A whole number in `min..=max`.
    pub(super) fn number(
        &self,
        raw: &Text,
        key: &str,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let text = raw.value.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.err(
                raw.referenced,
                format!(
                    "invalid {key} {}: expected a whole number in {min}..={max}",
                    quote(&raw.value)
                ),
            ));
        }
        match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.err(
                raw.referenced,
                format!("{key} {} is out of range {min}..={max}", clean(text)),
            )),
        }
    }

    /// An optional whole number in `0..=max` (at most `u32::MAX`), else `default`.
    fn opt_u32(
        &self,
        raw: Option<&Text>,
        key: &str,
        max: u64,
        default: u32,
    ) -> Result<u32, ConfigError> {
        match raw {
            Some(raw) => Ok(u32::try_from(self.number(raw, key, 0, max)?).unwrap_or(u32::MAX)),
            None => Ok(default),
        }
    }

    /// A duration in `min..=max`: a whole number and a unit ms, s, m or h.
    fn duration(
        &self,
        raw: &Text,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration_text(raw, key)?;
        match d {
            Some(d) if d >= min && d <= max => Ok(d),
            _ => Err(self.err(
                raw.referenced,
                format!(
                    "{key} {} is out of range {}..={}",
                    clean(raw.value.trim()),
                    show_duration(min),
                    show_duration(max)
                ),
            )),
        }
    }

    /// A route timeout: 1ms..=24h, or zero for none.
    fn duration_or_zero(&self, raw: &Text, key: &str) -> Result<Duration, ConfigError> {
        match self.duration_text(raw, key)? {
            Some(d) if d.is_zero() || (MS..=MAX_LONG_DURATION).contains(&d) => Ok(d),
            _ => Err(self.err(
                raw.referenced,
                format!(
                    "{key} {} is out of range {}..={} (0s means no timeout)",
                    clean(raw.value.trim()),
                    show_duration(MS),
                    show_duration(MAX_LONG_DURATION)
                ),
            )),
        }
    }

    /// The duration written in `raw`; `None` when too large for any integer.
    fn duration_text(&self, raw: &Text, key: &str) -> Result<Option<Duration>, ConfigError> {
        match parse_duration(raw.value.trim(), DURATION_UNITS) {
            DurationText::Valid(d) => Ok(Some(d)),
            DurationText::TooLarge => Ok(None),
            DurationText::Invalid => Err(self.err(
                raw.referenced,
                format!(
                    "invalid {key} {}: expected a whole number and a unit ms, s, m or h, such as 100ms or 2s",
                    quote(&raw.value)
                ),
            )),
        }
    }

    /// Lists are limited; the first item over the limit is reported.
    fn at_most<T>(
        &self,
        items: &[Spanned<T>],
        max: usize,
        what: &str,
        per: &str,
    ) -> Result<(), ConfigError> {
        match items.get(max) {
            Some(extra) => Err(self.err(
                extra.referenced,
                format!("too many {what}: at most {max} per {per}"),
            )),
            None => Ok(()),
        }
    }
}

struct RouteHead {
    name: String,
    namespace: String,
    parent_refs: Vec<ParentRef>,
    hostnames: Vec<String>,
}

/// The fields backendRefs and the mirror's backendRef share; `at` is the reference itself.
struct BackendFields<'r> {
    at: Location,
    name: &'r Text,
    namespace: Option<&'r Text>,
    kind: Option<&'r Text>,
    group: Option<&'r Text>,
    port: Option<&'r Text>,
}

#[derive(Clone, Copy)]
enum ValueKind {
    Header,
    QueryParam,
}

fn protocol_named(name: &str) -> Option<Protocol> {
    let known = [
        ("tcp", Protocol::Tcp),
        ("http", Protocol::Http),
        ("http2", Protocol::Http2),
        ("grpc", Protocol::Grpc),
    ];
    known
        .into_iter()
        .find(|(n, _)| name.eq_ignore_ascii_case(n))
        .map(|(_, p)| p)
}

/// Lower-case RFC 1123 labels (a-z, 0-9 and '-', starting and ending with a letter or digit,
/// at most `label_max` long) separated by '.', 253 characters at most.
fn is_dns_subdomain(name: &str, label_max: usize) -> bool {
    let label = |l: &str| {
        let b = l.as_bytes();
        (1..=label_max).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b.first().is_some_and(|c| *c != b'-')
            && b.last().is_some_and(|c| *c != b'-')
    };
    (1..=253).contains(&name.len()) && name.split('.').all(label)
}

const TOKEN_RULE: &str =
    "use 1 or more HTTP token characters (letters, digits and !#$%&'*+-.^_`|~)";

/// An HTTP token (RFC 9110): header names, and query parameter names by Gateway API's rule.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_identifier(name: &str) -> bool {
    let b = name.as_bytes();
    b.first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn is_grpc_service(name: &str) -> bool {
    name.split('.').all(is_identifier)
}

/// Why `path` is not a path Gateway API accepts in a match or as a replacement, if it is not.
fn path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("must start with '/'")
    } else if path.len() > MAX_PATH_LEN {
        Some("must be at most 1024 characters")
    } else if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain spaces or control characters")
    } else if path.contains("//") {
        Some("must not contain '//'")
    } else if path.contains("/./")
        || path.contains("/../")
        || path.ends_with("/.")
        || path.ends_with("/..")
    {
        Some("must not contain '.' or '..' segments")
    } else if path.to_ascii_lowercase().contains("%2f") {
        Some("must not contain an encoded '/' (%2f)")
    } else if path.contains('#') {
        Some("must not contain '#'")
    } else if path.contains('?') {
        Some("must not contain '?' (match query parameters with queryParams)")
    } else {
        None
    }
}

/// A duration as the bounds in messages show it: `1ms`, `60s`, `24h`.
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms <= 60_000 || !ms.is_multiple_of(60_000) {
        format!("{}s", ms / 1000)
    } else if ms <= 3_600_000 || !ms.is_multiple_of(3_600_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}h", ms / 3_600_000)
    }
}
