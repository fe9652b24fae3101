//! The L7 part of the configuration: the `http:` section, the L7 keys of services (port
//! protocols, load balancing, outlier detection), and routes in the shape of Gateway API
//! HTTPRoute / GRPCRoute specs under `http_routes:` and `grpc_routes:`.
//!
//! Like the rest of the config module, the YAML is first read into private `Raw*` structs that
//! keep the position of every value, then checked and converted by `Checker` methods into the
//! validated, span-free public types; the compiled, request-time form lives in `crate::l7`.
//! Agent-native keys are snake_case; inside a route's `spec:` keys are Gateway API camelCase,
//! so that a manifest's spec can be pasted as it is. Unknown keys are errors everywhere, which
//! also catches misspelt Gateway API fields and the Gateway API features the agent does not
//! implement (e.g. `sessionPersistence`).
//!
//! This module holds a route as a whole (name, namespace, parents, hostnames, rules); the parts
//! of a rule have their own modules (`matches`, `filters`, `backends`, `timeouts` with
//! `retry`), as do the `http:` section (`http`) and the L7 keys of services
//! (`service_settings`); `scalars` holds the values they share.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::Service;
use super::checker::{Checker, ConfigError, PathChecks};
use super::raw::{Text, null_as_empty};
use super::scalars::{line_of, quote};

mod backends;
mod filters;
mod http;
mod matches;
mod scalars;
mod service_settings;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod timeouts;

pub use backends::{BackendRef, ParentRef};
pub use filters::{
    HeaderModifier, HttpFilter, PathModifier, RequestMirror, RequestRedirect, UrlRewrite,
};
pub use http::{
    DEFAULT_DETECTION_TIMEOUT, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MIN_RETRIES_PER_SECOND,
    DEFAULT_RETRY_BUDGET_PERCENT, HttpSettings, RetryBudget,
};
pub use matches::{
    GrpcMethodMatch, GrpcRouteMatch, HeaderMatch, HttpRouteMatch, PathMatch, QueryParamMatch,
    StringMatch,
};
pub use service_settings::{LoadBalancer, OutlierDetection, PortProtocol, Protocol};
pub use timeouts::{RetryPolicy, RouteTimeouts};

pub(super) use http::RawHttp;
pub(super) use service_settings::RawOutlierDetection;

use backends::{RawBackendRef, RawParentRef};
use filters::RawFilter;
use matches::{RawGrpcMatch, RawHttpMatch};
use scalars::is_dns_subdomain;
use timeouts::{RawRetry, RawTimeouts};

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

// ---------------------------------------------------------------------------
// Raw, span-carrying mirror of the YAML.

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
    let checker = Checker::new(origin, PathChecks::Skipped);
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
    let checker = Checker::new(origin, PathChecks::Skipped);
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

/// Where a rule's `backendRefs` and mirrors may point.
struct Scope<'s> {
    /// The route's namespace, the default of references.
    namespace: &'s str,
    services: &'s [Service],
}

impl Checker<'_> {
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
}

struct RouteHead {
    name: String,
    namespace: String,
    parent_refs: Vec<ParentRef>,
    hostnames: Vec<String>,
}
