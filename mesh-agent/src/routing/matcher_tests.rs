//! Table-driven tests of the matcher and filters. Most tables reproduce the cases of the
//! Gateway API conformance suite (kubernetes-sigs/gateway-api, conformance/tests/ and
//! conformance/tests/mesh/), with each route attached to service `ns/echo` instead of a
//! Gateway; the test names say which conformance test a table comes from.

use super::*;
use crate::config::{GrpcRouteRule, HeaderModifier, HttpRouteRule, PathModifier, UrlRewrite};
use crate::l7::filters::{apply_request_filters, apply_response_filters, redirect_response};

const NS: &str = "ns";
const GRPC_SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

// ---------------------------------------------------------------------------------------
// Building routes from the config types.

fn parent() -> ParentRef {
    ParentRef {
        name: "echo".into(),
        namespace: NS.into(),
        port: None,
    }
}

fn backend(name: &str) -> BackendRef {
    BackendRef {
        name: name.into(),
        namespace: NS.into(),
        port: 8080,
        weight: 1,
    }
}

fn matching(path: PathMatch) -> HttpRouteMatch {
    HttpRouteMatch {
        path,
        headers: Vec::new(),
        query_params: Vec::new(),
        method: None,
    }
}

fn any_path() -> HttpRouteMatch {
    prefix("/")
}

fn prefix(value: &str) -> HttpRouteMatch {
    matching(PathMatch::PathPrefix(value.into()))
}

fn exact(value: &str) -> HttpRouteMatch {
    matching(PathMatch::Exact(value.into()))
}

fn path_regex(value: &str) -> HttpRouteMatch {
    matching(PathMatch::RegularExpression(value.into()))
}

fn header_matches(pairs: &[(&str, &str)]) -> Vec<HeaderMatch> {
    pairs
        .iter()
        .map(|(n, v)| HeaderMatch {
            name: n.to_string(),
            value: StringMatch::Exact(v.to_string()),
        })
        .collect()
}

fn headers(mut m: HttpRouteMatch, pairs: &[(&str, &str)]) -> HttpRouteMatch {
    m.headers.extend(header_matches(pairs));
    m
}

fn header_regex(mut m: HttpRouteMatch, name: &str, re: &str) -> HttpRouteMatch {
    m.headers.push(HeaderMatch {
        name: name.into(),
        value: StringMatch::RegularExpression(re.into()),
    });
    m
}

fn query(mut m: HttpRouteMatch, pairs: &[(&str, &str)]) -> HttpRouteMatch {
    m.query_params
        .extend(pairs.iter().map(|(n, v)| QueryParamMatch {
            name: n.to_string(),
            value: StringMatch::Exact(v.to_string()),
        }));
    m
}

fn query_regex(mut m: HttpRouteMatch, name: &str, re: &str) -> HttpRouteMatch {
    m.query_params.push(QueryParamMatch {
        name: name.into(),
        value: StringMatch::RegularExpression(re.into()),
    });
    m
}

fn method(mut m: HttpRouteMatch, method: &str) -> HttpRouteMatch {
    m.method = Some(method.into());
    m
}

fn rule(matches: Vec<HttpRouteMatch>, backend_name: &str) -> HttpRouteRule {
    rule_with(matches, Vec::new(), vec![backend(backend_name)])
}

fn rule_with(
    matches: Vec<HttpRouteMatch>,
    filters: Vec<HttpFilter>,
    backend_refs: Vec<BackendRef>,
) -> HttpRouteRule {
    HttpRouteRule {
        name: None,
        matches,
        filters,
        backend_refs,
        timeouts: RouteTimeouts::default(),
        retry: None,
    }
}

fn route(name: &str, hostnames: &[&str], rules: Vec<HttpRouteRule>) -> HttpRoute {
    HttpRoute {
        name: name.into(),
        namespace: NS.into(),
        parent_refs: vec![parent()],
        hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
        rules,
    }
}

fn grpc_method(service: Option<&str>, method: Option<&str>, regex: bool) -> GrpcRouteMatch {
    GrpcRouteMatch {
        method: Some(GrpcMethodMatch {
            regex,
            service: service.map(str::to_string),
            method: method.map(str::to_string),
        }),
        headers: Vec::new(),
    }
}

fn grpc_headers(pairs: &[(&str, &str)]) -> GrpcRouteMatch {
    GrpcRouteMatch {
        method: None,
        headers: header_matches(pairs),
    }
}

fn grpc_rule(matches: Vec<GrpcRouteMatch>, backend_name: &str) -> GrpcRouteRule {
    GrpcRouteRule {
        name: None,
        matches,
        filters: Vec::new(),
        backend_refs: vec![backend(backend_name)],
        timeouts: RouteTimeouts::default(),
        retry: None,
    }
}

fn grpc_route(name: &str, hostnames: &[&str], rules: Vec<GrpcRouteRule>) -> GrpcRoute {
    GrpcRoute {
        name: name.into(),
        namespace: NS.into(),
        parent_refs: vec![parent()],
        hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
        rules,
    }
}

fn http_table(routes: Vec<HttpRoute>) -> RouteTable {
    RouteTable::from_routes(&routes, &[], NS, "echo", 80)
}

fn grpc_table(routes: Vec<GrpcRoute>) -> RouteTable {
    RouteTable::from_routes(&[], &routes, NS, "echo", 80)
}

fn redirect_filter(
    scheme: Option<&str>,
    hostname: Option<&str>,
    port: Option<u16>,
    path: Option<PathModifier>,
    status_code: u16,
) -> HttpFilter {
    HttpFilter::RequestRedirect(RequestRedirect {
        scheme: scheme.map(str::to_string),
        hostname: hostname.map(str::to_string),
        path,
        port,
        status_code,
    })
}

fn redirect_rule(path_prefix: &str, filter: HttpFilter) -> HttpRouteRule {
    rule_with(vec![prefix(path_prefix)], vec![filter], Vec::new())
}

// ---------------------------------------------------------------------------------------
// Requests and checks.

#[derive(Clone)]
struct Req {
    method: &'static str,
    target: &'static str,
    host: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    grpc: bool,
}

fn get(target: &'static str) -> Req {
    Req {
        method: "GET",
        target,
        host: Some("echo"),
        headers: Vec::new(),
        grpc: false,
    }
}

/// A gRPC call of `method` of the conformance echo service.
fn grpc_call(method: &'static str) -> Req {
    let target = match method {
        "Echo" => "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo",
        "EchoTwo" => "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/EchoTwo",
        "EchoThree" => "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/EchoThree",
        other => other,
    };
    Req {
        method: "POST",
        grpc: true,
        ..get(target)
    }
}

impl Req {
    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    fn host(mut self, host: &'static str) -> Self {
        self.host = Some(host);
        self
    }

    fn no_host(mut self) -> Self {
        self.host = None;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    fn parts(&self) -> http::request::Parts {
        let mut builder = http::Request::builder()
            .method(self.method)
            .uri(self.target);
        if let Some(host) = self.host {
            builder = builder.header("host", host);
        }
        if self.grpc {
            builder = builder.header("content-type", "application/grpc");
        }
        for (name, value) in &self.headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn describe(&self) -> String {
        format!(
            "{} {} host={:?} headers={:?} grpc={}",
            self.method, self.target, self.host, self.headers, self.grpc
        )
    }
}

/// The backend name a request goes to, or None for 404.
fn routed_backend(table: &RouteTable, req: &Req) -> Option<String> {
    let parts = req.parts();
    let found = table.find(&RequestHead::from_parts(&parts))?;
    Some(
        found
            .rule
            .pick_backend()
            .map_or("<none>".to_string(), |b| b.name.clone()),
    )
}

/// Checks every case and reports all failures at once.
fn check(table: &RouteTable, cases: &[(Req, Option<&str>)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(req, expected)| {
            let got = routed_backend(table, req);
            (got.as_deref() != *expected)
                .then(|| format!("{}: expected {expected:?}, got {got:?}", req.describe()))
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The request as forwarded after the rule's filters.
fn forwarded(table: &RouteTable, req: &Req) -> http::request::Parts {
    let mut parts = req.parts();
    let found = table
        .find(&RequestHead::from_parts(&parts))
        .unwrap_or_else(|| panic!("no route for {}", req.describe()));
    let (rule, prefix) = (found.rule, found.matched_prefix.map(str::to_string));
    apply_request_filters(rule, prefix.as_deref(), &mut parts);
    parts
}

/// Status and Location of the redirect a request gets.
fn redirected(table: &RouteTable, req: &Req) -> (u16, String) {
    let parts = req.parts();
    let found = table
        .find(&RequestHead::from_parts(&parts))
        .unwrap_or_else(|| panic!("no route for {}", req.describe()));
    let redirect = found.rule.redirect().expect("a redirect rule");
    let response = redirect_response(redirect, found.matched_prefix, &parts);
    let location = response.headers()[http::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    (response.status().as_u16(), location)
}

fn check_redirects(table: &RouteTable, cases: &[(Req, u16, &str)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(req, status, location)| {
            let got = redirected(table, req);
            (got != (*status, location.to_string())).then(|| {
                format!(
                    "{}: expected {status} {location}, got {got:?}",
                    req.describe()
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// HTTPRoute matching: conformance tables.

/// conformance/tests/httproute-matching (and mesh/httproute-matching).
#[test]
fn conformance_httproute_matching() {
    let table = http_table(vec![route(
        "matching",
        &[],
        vec![
            rule(
                vec![prefix("/"), headers(any_path(), &[("version", "one")])],
                "v1",
            ),
            rule(
                vec![prefix("/v2"), headers(any_path(), &[("version", "two")])],
                "v2",
            ),
        ],
    )]);
    check(
        &table,
        &[
            (get("/"), Some("v1")),
            (get("/example"), Some("v1")),
            (get("/").header("Version", "one"), Some("v1")),
            (get("/v2"), Some("v2")),
            (get("/v2/example"), Some("v2")),
            (get("/").header("Version", "two"), Some("v2")),
            (get("/v2/"), Some("v2")),
            // Not a path segment prefix, so it does not match /v2.
            (get("/v2example"), Some("v1")),
            (get("/foo/v2/example"), Some("v1")),
        ],
    );
}

/// conformance/tests/httproute-matching-across-routes.
#[test]
fn conformance_httproute_matching_across_routes() {
    let table = http_table(vec![
        route(
            "matching-part1",
            &["example.com", "example.net"],
            vec![rule(
                vec![prefix("/"), headers(any_path(), &[("version", "one")])],
                "v1",
            )],
        ),
        route(
            "matching-part2",
            &["example.com"],
            vec![rule(
                vec![prefix("/v2"), headers(any_path(), &[("version", "two")])],
                "v2",
            )],
        ),
    ]);
    check(
        &table,
        &[
            (get("/").host("example.com"), Some("v1")),
            (get("/example").host("example.com"), Some("v1")),
            (get("/example").host("example.net"), Some("v1")),
            (
                get("/example").host("example.com").header("Version", "one"),
                Some("v1"),
            ),
            (get("/v2").host("example.com"), Some("v2")),
            // v2 matches are limited to example.com.
            (get("/v2").host("example.net"), Some("v1")),
            (get("/v2/example").host("example.com"), Some("v2")),
            (
                get("/").host("example.com").header("Version", "two"),
                Some("v2"),
            ),
            // Extra: no route has this hostname, or the request has no host at all.
            (get("/").host("example.org"), None),
            (get("/").no_host(), None),
        ],
    );
}

/// conformance/tests/httproute-path-match-order.
#[test]
fn conformance_httproute_path_match_order() {
    let table = http_table(vec![route(
        "path-matching-order",
        &[],
        vec![
            rule(vec![exact("/match")], "v1"),
            rule(vec![exact("/match/exact")], "v2"),
            rule(vec![exact("/match/exact/one")], "v3"),
            rule(vec![prefix("/match/")], "v3"),
            rule(vec![prefix("/match/prefix/")], "v1"),
            rule(vec![prefix("/match/prefix/one")], "v2"),
        ],
    )]);
    check(
        &table,
        &[
            (get("/match/exact/one"), Some("v3")),
            (get("/match/exact"), Some("v2")),
            (get("/match"), Some("v1")),
            (get("/match/prefix/one/any"), Some("v2")),
            (get("/match/prefix/any"), Some("v1")),
            (get("/match/any"), Some("v3")),
        ],
    );
}

/// conformance/tests/httproute-exact-path-matching.
#[test]
fn conformance_httproute_exact_path_matching() {
    let table = http_table(vec![route(
        "exact-matching",
        &[],
        vec![
            rule(vec![exact("/one")], "v1"),
            rule(vec![exact("/two")], "v2"),
        ],
    )]);
    check(
        &table,
        &[
            (get("/one"), Some("v1")),
            (get("/two"), Some("v2")),
            (get("/"), None),
            (get("/one/example"), None),
            (get("/two/"), None),
            (get("/Two"), None),
        ],
    );
}

/// conformance/tests/httproute-header-matching.
#[test]
fn conformance_httproute_header_matching() {
    let table = http_table(vec![route(
        "header-matching",
        &[],
        vec![
            rule(vec![headers(any_path(), &[("version", "one")])], "v1"),
            rule(vec![headers(any_path(), &[("version", "two")])], "v2"),
            rule(
                vec![headers(
                    any_path(),
                    &[("version", "two"), ("color", "orange")],
                )],
                "v1",
            ),
            rule(
                vec![
                    headers(any_path(), &[("color", "blue")]),
                    headers(any_path(), &[("color", "green")]),
                ],
                "v1",
            ),
            rule(
                vec![
                    headers(any_path(), &[("color", "red")]),
                    headers(any_path(), &[("color", "yellow")]),
                ],
                "v2",
            ),
        ],
    )]);
    check(
        &table,
        &[
            (get("/").header("Version", "one"), Some("v1")),
            (get("/").header("Version", "two"), Some("v2")),
            (
                get("/").header("Version", "two").header("Color", "orange"),
                Some("v1"),
            ),
            (
                get("/").header("Version", "two").header("Color", "blue"),
                Some("v2"),
            ),
            (get("/").header("Color", "orange"), None),
            (get("/").header("Some-Other-Header", "one"), None),
            (get("/").header("Color", "blue"), Some("v1")),
            (get("/").header("Color", "green"), Some("v1")),
            (get("/").header("Color", "red"), Some("v2")),
            (get("/").header("Color", "yellow"), Some("v2")),
            (get("/").header("Color", "purple"), None),
            // Extra: values are case-sensitive; a repeated header matches by any value.
            (get("/").header("Version", "ONE"), None),
            (
                get("/").header("Color", "purple").header("Color", "red"),
                Some("v2"),
            ),
        ],
    );
}

/// conformance/tests/httproute-query-param-matching (and the mesh variant).
#[test]
fn conformance_httproute_query_param_matching() {
    let table = http_table(vec![route(
        "query-param-matching",
        &[],
        vec![
            rule(vec![query(any_path(), &[("animal", "whale")])], "v1"),
            rule(vec![query(any_path(), &[("animal", "dolphin")])], "v2"),
            rule(
                vec![
                    query(any_path(), &[("animal", "dolphin"), ("color", "blue")]),
                    query(any_path(), &[("ANIMAL", "Whale")]),
                ],
                "v3",
            ),
            // Combinations with core match types.
            rule(vec![query(prefix("/path1"), &[("animal", "whale")])], "v1"),
            rule(
                vec![query(
                    headers(any_path(), &[("version", "one")]),
                    &[("animal", "whale")],
                )],
                "v2",
            ),
            rule(
                vec![query(
                    headers(prefix("/path2"), &[("version", "two")]),
                    &[("animal", "whale")],
                )],
                "v3",
            ),
            // (cond1 AND cond2) OR (cond3 AND cond4 AND cond5).
            rule(
                vec![
                    query(prefix("/path3"), &[("animal", "shark")]),
                    query(
                        headers(prefix("/path4"), &[("version", "three")]),
                        &[("animal", "kraken")],
                    ),
                ],
                "v1",
            ),
            // Precedence.
            rule(vec![prefix("/path5")], "v1"),
            rule(vec![query(any_path(), &[("animal", "hydra")])], "v2"),
            rule(vec![headers(any_path(), &[("version", "four")])], "v3"),
        ],
    )]);
    check(
        &table,
        &[
            (get("/?animal=whale"), Some("v1")),
            (get("/?animal=dolphin"), Some("v2")),
            (get("/?animal=dolphin&color=blue"), Some("v3")),
            (get("/?ANIMAL=Whale"), Some("v3")),
            (get("/?animal=whale&otherparam=irrelevant"), Some("v1")),
            (get("/?animal=dolphin&color=yellow"), Some("v2")),
            (get("/?color=blue"), None),
            (get("/?animal=dog"), None),
            (get("/?animal=whaledolphin"), None),
            (get("/"), None),
            (get("/path1?animal=whale"), Some("v1")),
            (get("/?animal=whale").header("version", "one"), Some("v2")),
            (
                get("/path2?animal=whale").header("version", "two"),
                Some("v3"),
            ),
            (get("/path3?animal=shark"), Some("v1")),
            (
                get("/path4?animal=kraken").header("version", "three"),
                Some("v1"),
            ),
            (get("/?animal=shark"), None),
            (get("/path4?animal=kraken"), None),
            (get("/path5?animal=hydra"), Some("v1")),
            (get("/?animal=hydra").header("version", "four"), Some("v3")),
            // Extra: values are percent-decoded; the first of repeated parameters counts.
            (get("/?animal=%77hale"), Some("v1")),
            (get("/?animal=whale&animal=dolphin"), Some("v1")),
            (get("/?animal=dolphin&animal=whale"), Some("v2")),
        ],
    );
}

/// conformance/tests/httproute-method-matching.
#[test]
fn conformance_httproute_method_matching() {
    let table = http_table(vec![route(
        "method-matching",
        &[],
        vec![
            rule(vec![method(any_path(), "POST")], "v1"),
            rule(vec![method(any_path(), "GET")], "v2"),
            // Combinations with core match types.
            rule(vec![method(prefix("/path1"), "GET")], "v1"),
            rule(
                vec![method(headers(any_path(), &[("version", "one")]), "PUT")],
                "v2",
            ),
            rule(
                vec![method(
                    headers(prefix("/path2"), &[("version", "two")]),
                    "POST",
                )],
                "v3",
            ),
            // (cond1 AND cond2) OR (cond3 AND cond4 AND cond5).
            rule(
                vec![
                    method(prefix("/path3"), "PATCH"),
                    method(headers(prefix("/path4"), &[("version", "three")]), "DELETE"),
                ],
                "v1",
            ),
            // Precedence.
            rule(vec![prefix("/path5")], "v1"),
            rule(vec![method(any_path(), "PATCH")], "v2"),
            rule(vec![headers(any_path(), &[("version", "four")])], "v3"),
        ],
    )]);
    check(
        &table,
        &[
            (get("/").method("POST"), Some("v1")),
            (get("/").method("GET"), Some("v2")),
            (get("/").method("HEAD"), None),
            (get("/path1").method("GET"), Some("v1")),
            (get("/").method("PUT").header("version", "one"), Some("v2")),
            (
                get("/path2").method("POST").header("version", "two"),
                Some("v3"),
            ),
            (get("/path3").method("PATCH"), Some("v1")),
            (
                get("/path4").method("DELETE").header("version", "three"),
                Some("v1"),
            ),
            (get("/").method("PUT"), None),
            (get("/path4").method("DELETE"), None),
            (get("/path5").method("PATCH"), Some("v1")),
            (
                get("/").method("PATCH").header("version", "four"),
                Some("v2"),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// HTTPRoute matching: our own cases for the rest of the precedence rules.

#[test]
fn prefix_matches_on_segment_boundaries() {
    let table = http_table(vec![route(
        "r",
        &[],
        vec![
            rule(vec![prefix("/foo")], "foo"),
            rule(vec![prefix("/bar/")], "bar"),
        ],
    )]);
    check(
        &table,
        &[
            (get("/foo"), Some("foo")),
            (get("/foo/"), Some("foo")),
            (get("/foo/bar"), Some("foo")),
            (get("/foo?x=1"), Some("foo")),
            (get("/foobar"), None),
            (get("/fo"), None),
            (get("/bar"), Some("bar")),
            (get("/bar/x"), Some("bar")),
            (get("/barx"), None),
            // Paths are compared as received: no decoding, no normalization.
            (get("/foo%2Fbar"), None),
            (get("/Foo"), None),
            (get("/foo/../bar"), Some("foo")),
        ],
    );
}

#[test]
fn exact_beats_prefix_and_longest_prefix_wins_across_routes() {
    let table = http_table(vec![
        route("a", &[], vec![rule(vec![prefix("/api")], "prefix-api")]),
        route(
            "b",
            &[],
            vec![rule(vec![prefix("/api/v1")], "prefix-api-v1")],
        ),
        route("c", &[], vec![rule(vec![exact("/api/v1/x")], "exact")]),
        route("d", &[], vec![rule(vec![path_regex("/api/.*")], "regex")]),
    ]);
    check(
        &table,
        &[
            (get("/api/v1/x"), Some("exact")),
            (get("/api/v1/y"), Some("prefix-api-v1")),
            (get("/api/v2"), Some("prefix-api")),
            (get("/api"), Some("prefix-api")),
            (get("/other"), None),
        ],
    );
}

#[test]
fn method_then_headers_then_query_then_route_order() {
    let table = http_table(vec![
        // Older route: wins ties only.
        route(
            "old",
            &[],
            vec![rule(vec![headers(prefix("/p"), &[("a", "1")])], "old")],
        ),
        route(
            "new",
            &[],
            vec![
                rule(
                    vec![query(headers(prefix("/p"), &[("a", "1")]), &[("q", "1")])],
                    "query",
                ),
                rule(
                    vec![headers(prefix("/p"), &[("a", "1"), ("b", "1")])],
                    "two-headers",
                ),
                rule(vec![method(prefix("/p"), "GET")], "method"),
                rule(vec![prefix("/p")], "plain"),
                rule(vec![headers(prefix("/p"), &[("a", "1")])], "same-as-old"),
            ],
        ),
    ]);
    check(
        &table,
        &[
            (get("/p").header("a", "1").header("b", "1"), Some("method")),
            (
                get("/p").method("POST").header("a", "1").header("b", "1"),
                Some("two-headers"),
            ),
            (get("/p?q=1").method("POST").header("a", "1"), Some("query")),
            (get("/p").method("POST").header("a", "1"), Some("old")),
            (get("/p").method("POST"), Some("plain")),
        ],
    );
}

#[test]
fn rule_order_then_match_order_within_a_route() {
    let table = http_table(vec![route(
        "r",
        &[],
        vec![
            rule(vec![prefix("/x"), prefix("/a")], "first"),
            rule(vec![prefix("/a")], "second"),
        ],
    )]);
    check(&table, &[(get("/a"), Some("first"))]);
    let found_parts = get("/a").parts();
    let found = table.find(&RequestHead::from_parts(&found_parts)).unwrap();
    assert_eq!(
        (found.rule.route.as_str(), found.rule.rule_index),
        ("ns/r", 0)
    );
    assert_eq!(found.matched_prefix, Some("/a"));
}

#[test]
fn regular_expressions_match_whole_values() {
    let table = http_table(vec![route(
        "regex",
        &[],
        vec![
            rule(vec![path_regex("/users/[0-9]+")], "path"),
            rule(
                vec![header_regex(prefix("/h"), "x-version", "v[0-9]+")],
                "header",
            ),
            rule(vec![query_regex(prefix("/q"), "id", "[a-f]{3}")], "query"),
            rule(vec![path_regex("/alt|/other")], "alternation"),
        ],
    )]);
    check(
        &table,
        &[
            (get("/users/42"), Some("path")),
            (get("/users/42/x"), None),
            (get("/x/users/42"), None),
            (get("/users/"), None),
            (get("/h").header("x-version", "v12"), Some("header")),
            (get("/h").header("x-version", "v12-beta"), None),
            (get("/h").header("x-version", "xv1"), None),
            (
                get("/h")
                    .header("x-version", "bad")
                    .header("x-version", "v3"),
                Some("header"),
            ),
            (get("/q?id=abc"), Some("query")),
            (get("/q?id=abcd"), None),
            (get("/q?id=%61bc"), Some("query")),
            // Anchoring wraps the whole expression, alternation included.
            (get("/alt"), Some("alternation")),
            (get("/other"), Some("alternation")),
            (get("/altx"), None),
            (get("/xother"), None),
        ],
    );
}

#[test]
fn regex_paths_rank_after_prefixes() {
    let table = http_table(vec![
        route("a", &[], vec![rule(vec![path_regex("/a/.*")], "regex")]),
        route("b", &[], vec![rule(vec![prefix("/")], "root")]),
    ]);
    check(&table, &[(get("/a/b"), Some("root"))]);
}

#[test]
fn hostname_precedence_across_routes() {
    let table = http_table(vec![
        route("any", &[], vec![rule(vec![exact("/x")], "any-host")]),
        route(
            "wild",
            &["*.example.com"],
            vec![rule(vec![prefix("/")], "wildcard")],
        ),
        route(
            "wild-longer",
            &["*.foo.example.com"],
            vec![rule(vec![prefix("/")], "wildcard-longer")],
        ),
        route(
            "exact",
            &["a.example.com"],
            vec![rule(vec![prefix("/")], "exact")],
        ),
        route(
            "exact-longer",
            &["ab.example.com", "*.ab.example.com"],
            vec![rule(vec![prefix("/y")], "exact-longer")],
        ),
    ]);
    check(
        &table,
        &[
            // A route with a matching hostname beats one without, even with a better path.
            (get("/x").host("b.example.com"), Some("wildcard")),
            (get("/x").host("a.example.com"), Some("exact")),
            (get("/x").host("A.EXAMPLE.COM"), Some("exact")),
            (get("/x").host("a.example.com:8080"), Some("exact")),
            (get("/x").host("x.foo.example.com"), Some("wildcard-longer")),
            (get("/x").host("example.com"), Some("any-host")),
            (get("/z").host("example.com"), None),
            (get("/y").host("ab.example.com"), Some("exact-longer")),
            (get("/y").host("c.ab.example.com"), Some("exact-longer")),
            // No match in the best hostname class: the next class is tried.
            (get("/z").host("ab.example.com"), Some("wildcard")),
            (get("/x").no_host(), Some("any-host")),
        ],
    );
}

#[test]
fn duplicate_match_names_only_count_once() {
    let table = http_table(vec![route(
        "r",
        &[],
        vec![
            rule(
                vec![headers(any_path(), &[("a", "1"), ("a", "2")])],
                "dup-headers",
            ),
            rule(
                vec![query(any_path(), &[("q", "1"), ("q", "2")])],
                "dup-query",
            ),
        ],
    )]);
    check(
        &table,
        &[
            (get("/").header("a", "1"), Some("dup-headers")),
            (get("/").header("a", "2"), None),
            (get("/?q=1"), Some("dup-query")),
            (get("/?q=2"), None),
        ],
    );
}

#[test]
fn parent_refs_select_the_service_and_port() {
    let mut other_port = route("other-port", &[], vec![rule(vec![prefix("/")], "port-81")]);
    other_port.parent_refs[0].port = Some(81);
    let mut this_port = route("this-port", &[], vec![rule(vec![prefix("/p")], "port-80")]);
    this_port.parent_refs[0].port = Some(80);
    let mut other_ns = route("other-ns", &[], vec![rule(vec![prefix("/")], "other-ns")]);
    other_ns.parent_refs[0].namespace = "elsewhere".into();
    let all_ports = route(
        "all-ports",
        &[],
        vec![rule(vec![prefix("/a")], "all-ports")],
    );
    let table = http_table(vec![other_port, this_port, other_ns, all_ports]);
    assert!(table.has_routes());
    check(
        &table,
        &[
            (get("/p"), Some("port-80")),
            (get("/a"), Some("all-ports")),
            (get("/"), None),
        ],
    );
}

#[test]
fn a_port_without_routes_goes_to_its_service() {
    let mut elsewhere = route("r", &[], vec![rule(vec![prefix("/")], "x")]);
    elsewhere.parent_refs[0].name = "other".into();
    let table = RouteTable::from_routes(&[elsewhere], &[], NS, "echo", 80);
    assert!(!table.has_routes());
    for req in [get("/anything?x"), get("/").no_host(), grpc_call("Echo")] {
        let parts = req.parts();
        let found = table.find(&RequestHead::from_parts(&parts)).unwrap();
        assert_eq!(found.rule.route, "default");
        let expected = BackendKey {
            namespace: NS.into(),
            name: "echo".into(),
            port: 80,
        };
        assert_eq!(found.rule.pick_backend(), Some(&expected));
    }
}

#[test]
fn empty_matches_mean_any_path() {
    let table = http_table(vec![route("r", &[], vec![rule(Vec::new(), "all")])]);
    check(
        &table,
        &[(get("/x/y"), Some("all")), (get("/"), Some("all"))],
    );
}

#[test]
fn invalid_regex_drops_only_that_match() {
    let table = http_table(vec![route(
        "r",
        &[],
        vec![
            rule(vec![path_regex("(unclosed"), prefix("/ok")], "ok"),
            rule(vec![header_regex(any_path(), "x", "[")], "never"),
        ],
    )]);
    check(
        &table,
        &[
            (get("/ok"), Some("ok")),
            (get("/(unclosed"), None),
            (get("/").header("x", "["), None),
        ],
    );
}

#[test]
fn rules_without_backends_have_no_pick() {
    let table = http_table(vec![route(
        "r",
        &[],
        vec![rule_with(
            vec![any_path()],
            Vec::new(),
            vec![BackendRef {
                weight: 0,
                ..backend("zero")
            }],
        )],
    )]);
    check(&table, &[(get("/"), Some("<none>"))]);
}

// ---------------------------------------------------------------------------------------
// GRPCRoute matching.

/// conformance/tests/grpcroute-exact-method-matching.
#[test]
fn conformance_grpcroute_exact_method_matching() {
    let table = grpc_table(vec![grpc_route(
        "exact-matching",
        &[],
        vec![
            grpc_rule(
                vec![grpc_method(Some(GRPC_SERVICE), Some("Echo"), false)],
                "v1",
            ),
            grpc_rule(
                vec![grpc_method(Some(GRPC_SERVICE), Some("EchoTwo"), false)],
                "v2",
            ),
        ],
    )]);
    check(
        &table,
        &[
            (grpc_call("Echo"), Some("v1")),
            (grpc_call("EchoTwo"), Some("v2")),
            (grpc_call("EchoThree"), None),
            // Extra: a GRPCRoute does not route plain HTTP requests.
            (
                get("/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo"),
                None,
            ),
        ],
    );
}

/// conformance/tests/grpcroute-header-matching.
#[test]
fn conformance_grpcroute_header_matching() {
    let table = grpc_table(vec![grpc_route(
        "grpc-header-matching",
        &[],
        vec![
            grpc_rule(vec![grpc_headers(&[("version", "one")])], "v1"),
            grpc_rule(vec![grpc_headers(&[("version", "two")])], "v2"),
            grpc_rule(
                vec![grpc_headers(&[("version", "two"), ("color", "orange")])],
                "v1",
            ),
            grpc_rule(
                vec![
                    grpc_headers(&[("color", "blue")]),
                    grpc_headers(&[("color", "green")]),
                ],
                "v1",
            ),
            grpc_rule(
                vec![
                    grpc_headers(&[("color", "red")]),
                    grpc_headers(&[("color", "yellow")]),
                ],
                "v2",
            ),
        ],
    )]);
    let call = || grpc_call("Echo");
    check(
        &table,
        &[
            (call().header("Version", "one"), Some("v1")),
            (call().header("Version", "two"), Some("v2")),
            (
                call().header("Version", "two").header("Color", "orange"),
                Some("v1"),
            ),
            (
                call().header("Version", "two").header("Color", "blue"),
                Some("v2"),
            ),
            (call().header("Color", "orange"), None),
            (call().header("Some-Other-Header", "one"), None),
            (call().header("Color", "blue"), Some("v1")),
            (call().header("Color", "green"), Some("v1")),
            (call().header("Color", "red"), Some("v2")),
            (call().header("Color", "yellow"), Some("v2")),
            (call().header("Color", "purple"), None),
        ],
    );
}

/// conformance/tests/grpcroute-listener-hostname-matching, with the listener hostnames as
/// route hostnames (a mesh has no listeners).
#[test]
fn conformance_grpcroute_hostname_matching() {
    let all = || vec![grpc_rule(Vec::new(), "")];
    let mut routes = vec![
        grpc_route("backend-v1", &["bar.com"], all()),
        grpc_route("backend-v2", &["foo.bar.com"], all()),
        grpc_route("backend-v3", &["*.bar.com", "*.foo.com"], all()),
    ];
    for (route, name) in routes.iter_mut().zip(["v1", "v2", "v3"]) {
        route.rules[0].backend_refs = vec![backend(name)];
    }
    let table = grpc_table(routes);
    let call = |host| grpc_call("Echo").host(host);
    check(
        &table,
        &[
            (call("bar.com"), Some("v1")),
            (call("foo.bar.com"), Some("v2")),
            (call("baz.bar.com"), Some("v3")),
            (call("boo.bar.com"), Some("v3")),
            (call("multiple.prefixes.bar.com"), Some("v3")),
            (call("multiple.prefixes.foo.com"), Some("v3")),
            (call("foo.com"), None),
            (call("no.matching.host"), None),
        ],
    );
}

#[test]
fn grpc_service_and_method_matching() {
    let table = grpc_table(vec![grpc_route(
        "g",
        &[],
        vec![
            grpc_rule(
                vec![grpc_method(Some("pkg.Svc"), None, false)],
                "service-only",
            ),
            grpc_rule(vec![grpc_method(None, Some("Get"), false)], "method-only"),
            grpc_rule(
                vec![grpc_method(Some("pkg.Svc"), Some("Get"), false)],
                "both",
            ),
            grpc_rule(
                vec![grpc_method(Some("re\\.[A-Z][a-z]+"), Some("L.*"), true)],
                "regex",
            ),
            grpc_rule(vec![grpc_method(None, Some("Del.*"), true)], "method-regex"),
        ],
    )]);
    check(
        &table,
        &[
            (grpc_call("/pkg.Svc/Get"), Some("both")),
            (grpc_call("/pkg.Svc/Put"), Some("service-only")),
            (grpc_call("/other.Svc/Get"), Some("method-only")),
            (grpc_call("/re.Abc/List"), Some("regex")),
            (grpc_call("/re.Abc/Get"), Some("method-only")),
            (grpc_call("/re.AbcX/List"), None),
            (grpc_call("/xre.Abc/List"), None),
            (grpc_call("/any.Svc/Delete"), Some("method-regex")),
            // The service name is the whole first segment, the method the whole second.
            (grpc_call("/pkg.Svc/Get/extra"), None),
            (grpc_call("/pkg.Svc"), None),
            (grpc_call("/pkg.Svc/"), None),
            (grpc_call("/pkg.SvcX/Put"), None),
        ],
    );
}

#[test]
fn grpc_precedence_service_then_method_then_headers() {
    let table = grpc_table(vec![
        grpc_route(
            "old",
            &[],
            vec![GrpcRouteRule {
                matches: vec![GrpcRouteMatch {
                    headers: header_matches(&[("h", "1"), ("i", "1")]),
                    ..grpc_method(None, Some("LongMethodName"), false)
                }],
                ..grpc_rule(Vec::new(), "method-headers")
            }],
        ),
        grpc_route(
            "new",
            &[],
            vec![
                grpc_rule(
                    vec![grpc_method(Some("a.LongerService"), None, false)],
                    "longer-service",
                ),
                grpc_rule(
                    vec![grpc_method(Some("a.S"), Some("M"), false)],
                    "short-service",
                ),
                grpc_rule(vec![grpc_headers(&[("h", "1")])], "header"),
            ],
        ),
    ]);
    check(
        &table,
        &[
            (
                grpc_call("/a.LongerService/LongMethodName")
                    .header("h", "1")
                    .header("i", "1"),
                Some("longer-service"),
            ),
            (grpc_call("/a.S/M"), Some("short-service")),
            (
                grpc_call("/x.Y/LongMethodName")
                    .header("h", "1")
                    .header("i", "1"),
                Some("method-headers"),
            ),
            (
                grpc_call("/x.Y/LongMethodName").header("h", "1"),
                Some("header"),
            ),
        ],
    );
}

#[test]
fn grpc_requests_fall_back_to_http_routes() {
    let table = RouteTable::from_routes(
        &[route(
            "h",
            &[],
            vec![rule(vec![prefix("/pkg.Svc")], "http")],
        )],
        &[grpc_route(
            "g",
            &[],
            vec![grpc_rule(
                vec![grpc_method(None, Some("Get"), false)],
                "grpc",
            )],
        )],
        NS,
        "echo",
        80,
    );
    check(
        &table,
        &[
            (grpc_call("/pkg.Svc/Get"), Some("grpc")),
            (grpc_call("/pkg.Svc/Put"), Some("http")),
            (get("/pkg.Svc/Get"), Some("http")),
            (get("/other"), None),
        ],
    );
    let parts = grpc_call("/pkg.Svc/Get").parts();
    assert_eq!(
        table
            .find(&RequestHead::from_parts(&parts))
            .unwrap()
            .matched_prefix,
        None
    );
}

// ---------------------------------------------------------------------------------------
// Weighted backends.

#[test]
fn weighted_pick_follows_weights() {
    let table = http_table(vec![route(
        "split",
        &[],
        vec![rule_with(
            vec![any_path()],
            Vec::new(),
            vec![
                BackendRef {
                    weight: 90,
                    ..backend("v1")
                },
                BackendRef {
                    weight: 0,
                    ..backend("never")
                },
                BackendRef {
                    weight: 10,
                    ..backend("v2")
                },
            ],
        )],
    )]);
    let rule = &table.rules()[0];
    let (mut v1, mut v2) = (0u32, 0u32);
    const PICKS: u32 = 100_000;
    for _ in 0..PICKS {
        match rule.pick_backend().map(|b| b.name.as_str()) {
            Some("v1") => v1 += 1,
            Some("v2") => v2 += 1,
            other => panic!("picked {other:?}"),
        }
    }
    let share = f64::from(v1) / f64::from(PICKS);
    assert!((share - 0.9).abs() < 0.015, "v1 share {share}, v2 {v2}");
    // Every point of the weight line belongs to a weighted backend.
    assert_eq!(rule.backend_at(0).unwrap().name, "v1");
    assert_eq!(rule.backend_at(89).unwrap().name, "v1");
    assert_eq!(rule.backend_at(90).unwrap().name, "v2");
    assert_eq!(rule.backend_at(99).unwrap().name, "v2");
    assert!(rule.backend_at(100).is_none());
}

// ---------------------------------------------------------------------------------------
// Filters.

fn modifier(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderModifier {
    let pairs = |p: &[(&str, &str)]| {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    HeaderModifier {
        set: pairs(set),
        add: pairs(add),
        remove: remove.iter().map(|r| r.to_string()).collect(),
    }
}

fn rewrite(hostname: Option<&str>, path: Option<PathModifier>) -> HttpFilter {
    HttpFilter::UrlRewrite(UrlRewrite {
        hostname: hostname.map(str::to_string),
        path,
    })
}

fn replace_prefix(value: &str) -> Option<PathModifier> {
    Some(PathModifier::ReplacePrefixMatch(value.into()))
}

fn replace_full(value: &str) -> Option<PathModifier> {
    Some(PathModifier::ReplaceFullPath(value.into()))
}

fn header_values(parts: &http::request::Parts, name: &str) -> Vec<String> {
    parts
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// conformance/tests/mesh/httproute-rewrite-path.
#[test]
fn conformance_httproute_rewrite_path() {
    let header_mod = || {
        HttpFilter::RequestHeaderModifier(modifier(
            &[("x-header-set", "set-overwrites-values")],
            &[
                ("x-header-add", "header-val-1"),
                ("x-header-add-append", "header-val-2"),
            ],
            &["x-header-remove"],
        ))
    };
    let rewriting = |path_prefix: &str, filters: Vec<HttpFilter>| {
        rule_with(vec![prefix(path_prefix)], filters, vec![backend("echo-v1")])
    };
    let table = http_table(vec![route(
        "mesh-rewrite-path",
        &[],
        vec![
            rewriting("/prefix/one", vec![rewrite(None, replace_prefix("/one"))]),
            rewriting("/strip-prefix", vec![rewrite(None, replace_prefix("/"))]),
            rewriting("/full/one", vec![rewrite(None, replace_full("/one"))]),
            rewriting(
                "/full/rewrite-path-and-modify-headers",
                vec![rewrite(None, replace_full("/test")), header_mod()],
            ),
            rewriting(
                "/prefix/rewrite-path-and-modify-headers",
                vec![rewrite(None, replace_prefix("/prefix")), header_mod()],
            ),
        ],
    )]);
    let cases = [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
        // Extra: the query string is kept.
        ("/prefix/one/two?a=1&b", "/one/two?a=1&b"),
        ("/full/one/two?a=1", "/one?a=1"),
    ];
    for (target, expected) in cases {
        let parts = forwarded(&table, &get(target));
        assert_eq!(parts.uri.to_string(), expected, "{target}");
    }
    for target in [
        "/full/rewrite-path-and-modify-headers/test",
        "/prefix/rewrite-path-and-modify-headers/one",
    ] {
        let req = get(target)
            .header("X-Header-Remove", "remove-val")
            .header("X-Header-Add-Append", "append-val-1")
            .header("X-Header-Set", "set-val");
        let parts = forwarded(&table, &req);
        assert_eq!(header_values(&parts, "x-header-add"), ["header-val-1"]);
        assert_eq!(
            header_values(&parts, "x-header-add-append"),
            ["append-val-1", "header-val-2"]
        );
        assert_eq!(
            header_values(&parts, "x-header-set"),
            ["set-overwrites-values"]
        );
        assert!(header_values(&parts, "x-header-remove").is_empty());
    }
}

/// conformance/tests/httproute-request-header-modifier (set/add/remove) and
/// httproute-response-header-modifier.
#[test]
fn header_modifiers_set_add_remove() {
    let mut headers = http::HeaderMap::new();
    headers.append("x-set", "old-1".parse().unwrap());
    headers.append("x-set", "old-2".parse().unwrap());
    headers.append("x-add", "old".parse().unwrap());
    headers.append("x-remove", "a".parse().unwrap());
    headers.append("x-remove", "b".parse().unwrap());
    headers.append("x-keep", "k".parse().unwrap());
    let m = modifier(
        &[("x-set", "new"), ("x-set-new", "n")],
        &[("x-add", "more"), ("x-add-new", "fresh")],
        &["x-remove", "x-absent"],
    );
    crate::l7::filters::modify_headers(&m, &mut headers);
    let values = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(values("x-set"), ["new"]);
    assert_eq!(values("x-set-new"), ["n"]);
    assert_eq!(values("x-add"), ["old", "more"]);
    assert_eq!(values("x-add-new"), ["fresh"]);
    assert!(values("x-remove").is_empty());
    assert_eq!(values("x-keep"), ["k"]);
}

#[test]
fn invalid_modifier_entries_are_skipped() {
    let mut headers = http::HeaderMap::new();
    let m = modifier(
        &[("bad name", "v"), ("x-ok", "v")],
        &[("x-bad-value", "a\nb")],
        &["bad name"],
    );
    crate::l7::filters::modify_headers(&m, &mut headers);
    assert_eq!(headers.len(), 1);
    assert_eq!(headers["x-ok"], "v");
}

#[test]
fn request_and_response_filters_apply_in_order() {
    let table = http_table(vec![route(
        "r",
        &[],
        vec![rule_with(
            vec![prefix("/")],
            vec![
                HttpFilter::RequestHeaderModifier(modifier(&[("x-a", "1")], &[], &[])),
                HttpFilter::ResponseHeaderModifier(modifier(
                    &[("x-resp", "r")],
                    &[("x-multi", "2")],
                    &["server"],
                )),
                // The second request modifier sees the first one's header.
                HttpFilter::RequestHeaderModifier(modifier(&[], &[("x-a", "2")], &[])),
                HttpFilter::RequestMirror(RequestMirror {
                    backend: backend("shadow"),
                    numerator: 1,
                    denominator: 2,
                }),
            ],
            vec![backend("main")],
        )],
    )]);
    let parts = forwarded(&table, &get("/"));
    assert_eq!(header_values(&parts, "x-a"), ["1", "2"]);
    let rule = &table.rules()[0];
    assert_eq!(rule.mirrors.len(), 1);
    assert_eq!(rule.mirrors[0].backend.name, "shadow");
    assert!(rule.redirect().is_none());
    let mut response = http::HeaderMap::new();
    response.insert("server", "s".parse().unwrap());
    response.insert("x-multi", "1".parse().unwrap());
    apply_response_filters(rule, &mut response);
    assert_eq!(response["x-resp"], "r");
    assert_eq!(response.get_all("x-multi").iter().count(), 2);
    assert!(!response.contains_key("server"));
}

/// conformance/tests/httproute-rewrite-host, plus the ports and HTTP/2 authority.
#[test]
fn rewrite_hostname_keeps_the_port() {
    let table = http_table(vec![route(
        "rewrite-host",
        &[],
        vec![rule_with(
            vec![prefix("/one")],
            vec![rewrite(Some("one.example.org"), None)],
            vec![backend("v1")],
        )],
    )]);
    let parts = forwarded(&table, &get("/one").host("rewrite.example"));
    assert_eq!(parts.headers["host"], "one.example.org");
    assert_eq!(parts.uri, "/one");

    let parts = forwarded(&table, &get("/one").host("rewrite.example:8080"));
    assert_eq!(parts.headers["host"], "one.example.org:8080");

    // HTTP/2: the authority lives in the URI; no Host header is added.
    let mut parts = get("/one?x=1").no_host().parts();
    parts.uri = "http://rewrite.example:8080/one?x=1".parse().unwrap();
    parts.version = http::Version::HTTP_2;
    let found = table.find(&RequestHead::from_parts(&parts)).unwrap();
    let rule = found.rule;
    apply_request_filters(rule, Some("/one"), &mut parts);
    assert_eq!(parts.uri, "http://one.example.org:8080/one?x=1");
    assert!(!parts.headers.contains_key("host"));

    // HTTP/1.0 without Host: one is added.
    let mut parts = get("/one").no_host().parts();
    parts.version = http::Version::HTTP_10;
    apply_request_filters(rule, Some("/one"), &mut parts);
    assert_eq!(parts.headers["host"], "one.example.org");
}

// ---------------------------------------------------------------------------------------
// Redirects.

/// conformance/tests/mesh/httproute-redirect-path.
#[test]
fn conformance_httproute_redirect_path() {
    let table = http_table(vec![route(
        "mesh-redirect-path",
        &[],
        vec![
            redirect_rule(
                "/original-prefix",
                redirect_filter(None, None, None, replace_prefix("/replacement-prefix"), 302),
            ),
            redirect_rule(
                "/full",
                redirect_filter(
                    None,
                    None,
                    None,
                    replace_full("/full-path-replacement"),
                    302,
                ),
            ),
            redirect_rule(
                "/path-and-host",
                redirect_filter(
                    None,
                    Some("example.org"),
                    None,
                    replace_prefix("/replacement-prefix"),
                    302,
                ),
            ),
            redirect_rule(
                "/path-and-status",
                redirect_filter(None, None, None, replace_prefix("/replacement-prefix"), 301),
            ),
            redirect_rule(
                "/full-path-and-host",
                redirect_filter(
                    None,
                    Some("example.org"),
                    None,
                    replace_full("/replacement-full"),
                    302,
                ),
            ),
            redirect_rule(
                "/full-path-and-status",
                redirect_filter(None, None, None, replace_full("/replacement-full"), 301),
            ),
        ],
    )]);
    check_redirects(
        &table,
        &[
            (
                get("/original-prefix/lemon"),
                302,
                "http://echo/replacement-prefix/lemon",
            ),
            (
                get("/full/path/original"),
                302,
                "http://echo/full-path-replacement",
            ),
            (
                get("/path-and-host"),
                302,
                "http://example.org/replacement-prefix",
            ),
            (
                get("/path-and-status"),
                301,
                "http://echo/replacement-prefix",
            ),
            (
                get("/full-path-and-host"),
                302,
                "http://example.org/replacement-full",
            ),
            (
                get("/full-path-and-status"),
                301,
                "http://echo/replacement-full",
            ),
            // Extra: the query is kept; a port in the request is kept.
            (
                get("/original-prefix/lemon?x=1&y"),
                302,
                "http://echo/replacement-prefix/lemon?x=1&y",
            ),
            (
                get("/full/a?q").host("echo:8080"),
                302,
                "http://echo:8080/full-path-replacement?q",
            ),
        ],
    );
}

/// conformance/tests/mesh/httproute-redirect-port, -redirect-scheme and
/// -redirect-host-and-status.
#[test]
fn conformance_httproute_redirect_port_scheme_host_status() {
    let org = Some("example.org");
    let https = Some("https");
    let table = http_table(vec![route(
        "mesh-redirect",
        &[],
        vec![
            redirect_rule("/port", redirect_filter(None, None, Some(8083), None, 302)),
            redirect_rule(
                "/port-and-host",
                redirect_filter(None, org, Some(8083), None, 302),
            ),
            redirect_rule(
                "/port-and-status",
                redirect_filter(None, None, Some(8083), None, 301),
            ),
            redirect_rule(
                "/port-and-host-and-status",
                redirect_filter(None, org, Some(8083), None, 302),
            ),
            redirect_rule("/scheme", redirect_filter(https, None, None, None, 302)),
            redirect_rule(
                "/scheme-and-host",
                redirect_filter(https, org, None, None, 302),
            ),
            redirect_rule(
                "/scheme-and-status",
                redirect_filter(https, None, None, None, 301),
            ),
            redirect_rule(
                "/scheme-and-host-and-status",
                redirect_filter(https, org, None, None, 302),
            ),
            redirect_rule(
                "/hostname-redirect",
                redirect_filter(None, org, None, None, 302),
            ),
            redirect_rule(
                "/host-and-status",
                redirect_filter(None, org, None, None, 301),
            ),
        ],
    )]);
    check_redirects(
        &table,
        &[
            (get("/port"), 302, "http://echo:8083/port"),
            (
                get("/port-and-host"),
                302,
                "http://example.org:8083/port-and-host",
            ),
            (
                get("/port-and-status"),
                301,
                "http://echo:8083/port-and-status",
            ),
            (
                get("/port-and-host-and-status"),
                302,
                "http://example.org:8083/port-and-host-and-status",
            ),
            (get("/scheme"), 302, "https://echo/scheme"),
            (
                get("/scheme-and-host"),
                302,
                "https://example.org/scheme-and-host",
            ),
            (
                get("/scheme-and-status"),
                301,
                "https://echo/scheme-and-status",
            ),
            (
                get("/scheme-and-host-and-status"),
                302,
                "https://example.org/scheme-and-host-and-status",
            ),
            (
                get("/hostname-redirect"),
                302,
                "http://example.org/hostname-redirect",
            ),
            (
                get("/host-and-status"),
                301,
                "http://example.org/host-and-status",
            ),
            // Extra: the scheme's well-known port replaces the request's port.
            (get("/scheme").host("echo:8080"), 302, "https://echo/scheme"),
            (
                get("/hostname-redirect").host("echo:8080"),
                302,
                "http://example.org:8080/hostname-redirect",
            ),
        ],
    );
}

/// conformance/tests/httproute-redirect-port-and-scheme: the listener port is the port the
/// request was addressed to (`Host: example.org:8080`), the listener protocol its scheme
/// (an absolute `https://` URI stands for the HTTPS listener).
#[test]
fn conformance_httproute_redirect_port_and_scheme() {
    let org = Some("example.org");
    let rules = |cases: &[(&str, Option<&str>, Option<u16>)]| {
        cases
            .iter()
            .map(|(path, scheme, port)| {
                redirect_rule(path, redirect_filter(*scheme, org, *port, None, 302))
            })
            .collect()
    };
    let table = http_table(vec![route(
        "redirect-port-and-scheme",
        &[],
        rules(&[
            ("/scheme-nil-and-port-nil", None, None),
            ("/scheme-nil-and-port-80", None, Some(80)),
            ("/scheme-nil-and-port-8080", None, Some(8080)),
            ("/scheme-nil-and-port-443", None, Some(443)),
            ("/scheme-nil-and-port-8443", None, Some(8443)),
            ("/scheme-https-and-port-nil", Some("https"), None),
            ("/scheme-https-and-port-443", Some("https"), Some(443)),
            ("/scheme-https-and-port-8443", Some("https"), Some(8443)),
            ("/scheme-http-and-port-nil", Some("http"), None),
            ("/scheme-http-and-port-80", Some("http"), Some(80)),
            ("/scheme-http-and-port-8080", Some("http"), Some(8080)),
        ]),
    )]);
    let https = |target: &'static str| get(target).no_host();
    check_redirects(
        &table,
        &[
            // Listener on port 80, HTTP.
            (
                get("/scheme-nil-and-port-nil"),
                302,
                "http://example.org/scheme-nil-and-port-nil",
            ),
            (
                get("/scheme-nil-and-port-80"),
                302,
                "http://example.org/scheme-nil-and-port-80",
            ),
            (
                get("/scheme-nil-and-port-8080"),
                302,
                "http://example.org:8080/scheme-nil-and-port-8080",
            ),
            (
                get("/scheme-https-and-port-nil"),
                302,
                "https://example.org/scheme-https-and-port-nil",
            ),
            (
                get("/scheme-https-and-port-443"),
                302,
                "https://example.org/scheme-https-and-port-443",
            ),
            (
                get("/scheme-https-and-port-8443"),
                302,
                "https://example.org:8443/scheme-https-and-port-8443",
            ),
            // Listener on port 8080, HTTP.
            (
                get("/scheme-nil-and-port-nil").host("example.org:8080"),
                302,
                "http://example.org:8080/scheme-nil-and-port-nil",
            ),
            (
                get("/scheme-nil-and-port-80").host("example.org:8080"),
                302,
                "http://example.org/scheme-nil-and-port-80",
            ),
            (
                get("/scheme-https-and-port-nil").host("example.org:8080"),
                302,
                "https://example.org/scheme-https-and-port-nil",
            ),
            // Listener on port 443, HTTPS.
            (
                https("https://example.org/scheme-nil-and-port-nil"),
                302,
                "https://example.org/scheme-nil-and-port-nil",
            ),
            (
                https("https://example.org/scheme-nil-and-port-443"),
                302,
                "https://example.org/scheme-nil-and-port-443",
            ),
            (
                https("https://example.org/scheme-nil-and-port-8443"),
                302,
                "https://example.org:8443/scheme-nil-and-port-8443",
            ),
            (
                https("https://example.org/scheme-http-and-port-nil"),
                302,
                "http://example.org/scheme-http-and-port-nil",
            ),
            (
                https("https://example.org/scheme-http-and-port-80"),
                302,
                "http://example.org/scheme-http-and-port-80",
            ),
            (
                https("https://example.org/scheme-http-and-port-8080"),
                302,
                "http://example.org:8080/scheme-http-and-port-8080",
            ),
        ],
    );
}

#[test]
fn redirect_edge_cases() {
    let redirect = |status: u16| RequestRedirect {
        scheme: None,
        hostname: None,
        path: None,
        port: None,
        status_code: status,
    };
    // No host anywhere: a relative Location.
    let parts = get("/a?b").no_host().parts();
    let response = redirect_response(&redirect(307), None, &parts);
    assert_eq!(response.status(), 307);
    assert_eq!(response.headers()["location"], "/a?b");
    // A status that is not a redirect cannot come from the checker; 302 is used.
    let response = redirect_response(&redirect(200), None, &parts);
    assert_eq!(response.status(), 302);
    // IPv6 hosts keep their brackets.
    let parts = get("/a").host("[::1]:8080").parts();
    let response = redirect_response(&redirect(308), None, &parts);
    assert_eq!(response.headers()["location"], "http://[::1]:8080/a");
}

// ---------------------------------------------------------------------------------------
// The fuzz target's logic on deterministic inputs.
