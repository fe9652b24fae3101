//! Tests of routes as a whole: the example of the contract, defaults, names and duplicates,
//! the structure of a route, hostnames, rules, and that every error of a route is reported.
//! Every error class of the L7 configuration is checked with its exact position and message,
//! here or in the tests of the module that checks it.

use std::time::Duration;

use crate::config::load::{PathChecks, parse};
use crate::config::routes::test_support::*;
use crate::config::*;

// ---------------------------------------------------------------------------
// Positive route tests.

/// The example of the contract, split so that each rule is valid: one rule cannot both
/// rewrite and redirect, and a redirecting rule has no backends.
#[test]
fn contract_example() {
    let yaml = "\
node:
  name: node1
  cgroup: /sys/fs/cgroup
http:
  detection_timeout: 100ms
  max_header_bytes: 61440
  retry_budget:
    percent: 20
    min_retries_per_second: 10
services:
  - name: web
    namespace: default
    vips: [10.96.0.10]
    ports:
      - port: 80
        target_port: 8080
        name: http-web
        protocol: http
    load_balancer: least_request
    outlier_detection:
      consecutive_5xx_errors: 3
      consecutive_gateway_errors: 0
      base_ejection_time: 2s
      max_ejection_percent: 50
    endpoints: [{ip: 10.1.0.1}]
  - {name: web-v1, ports: [{port: 80}]}
  - {name: web-v2, ports: [{port: 80}]}
  - {name: web-shadow, ports: [{port: 80}]}
  - {name: greeter, ports: [{port: 50051, name: grpc}]}
  - {name: greeter-v2, ports: [{port: 50051}]}
http_routes:
  - name: web-split
    namespace: default
    spec:
      parentRefs:
        - name: web
          port: 80
      hostnames: [\"web.default.svc.cluster.local\", \"*.example.com\"]
      rules:
        - name: canary
          matches:
            - path: {type: PathPrefix, value: /api}
              headers: [{type: Exact, name: x-canary, value: \"1\"}]
              queryParams: [{type: Exact, name: v, value: \"2\"}]
              method: GET
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: x-a, value: b}], add: [{name: X-Added, value: c}], remove: [x-c]}
            - type: ResponseHeaderModifier
              responseHeaderModifier: {remove: [server]}
            - type: URLRewrite
              urlRewrite: {hostname: h, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
            - type: RequestMirror
              requestMirror: {backendRef: {name: web-shadow, port: 80}, percent: 50}
          backendRefs:
            - {name: web-v1, port: 80, weight: 90}
            - {name: web-v2, port: 80, weight: 10}
          timeouts: {request: 2s, backendRequest: 500ms}
          retry: {attempts: 2, backoff: 25ms, codes: [503], connectFailure: true, reset: true}
        - name: moved
          matches: [{path: {type: Exact, value: /old}}]
          filters:
            - type: RequestRedirect
              requestRedirect: {scheme: https, hostname: h, port: 8443, path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 302}
            - type: RequestMirror
              requestMirror: {backendRef: {name: web-shadow, port: 80}, fraction: {numerator: 1, denominator: 10}}
grpc_routes:
  - name: greeter
    namespace: default
    spec:
      parentRefs: [{name: greeter, port: 50051}]
      hostnames: []
      rules:
        - matches:
            - method: {type: Exact, service: helloworld.Greeter, method: SayHello}
              headers: [{name: x-version, value: v2}]
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: x-route, value: greeter}]}
          backendRefs: [{name: greeter-v2, port: 50051}]
          timeouts: {request: 0s}
          retry: {codes: [503]}
";
    let cfg = parse(yaml, "contract.yaml", PathChecks::Skipped).unwrap_or_else(|e| panic!("{e}"));
    let s = |v: &str| v.to_owned();

    assert_eq!(cfg.http, HttpSettings::default());
    let web = &cfg.services[0];
    assert_eq!(
        web.ports[0].protocol,
        PortProtocol::Declared(Protocol::Http)
    );
    assert_eq!(web.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(
        web.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx_errors: 3,
            consecutive_gateway_errors: 0,
            base_ejection_time: Duration::from_secs(2),
            max_ejection_percent: 50,
        })
    );
    assert_eq!(
        cfg.services[4].ports[0].protocol,
        PortProtocol::Declared(Protocol::Grpc)
    );

    let route = &cfg.http_routes[0];
    assert_eq!(
        (route.name.as_str(), route.namespace.as_str()),
        ("web-split", "default")
    );
    assert_eq!(
        route.parent_refs,
        [ParentRef {
            name: s("web"),
            namespace: s("default"),
            port: Some(80),
        }]
    );
    assert_eq!(
        route.hostnames,
        ["web.default.svc.cluster.local", "*.example.com"]
    );
    let canary = &route.rules[0];
    assert_eq!(canary.name.as_deref(), Some("canary"));
    assert_eq!(
        canary.matches,
        [HttpRouteMatch {
            path: PathMatch::PathPrefix(s("/api")),
            headers: vec![HeaderMatch {
                name: s("x-canary"),
                value: StringMatch::Exact(s("1")),
            }],
            query_params: vec![QueryParamMatch {
                name: s("v"),
                value: StringMatch::Exact(s("2")),
            }],
            method: Some(s("GET")),
        }]
    );
    assert_eq!(
        canary.filters,
        [
            HttpFilter::RequestHeaderModifier(HeaderModifier {
                set: vec![(s("x-a"), s("b"))],
                add: vec![(s("x-added"), s("c"))],
                remove: vec![s("x-c")],
            }),
            HttpFilter::ResponseHeaderModifier(HeaderModifier {
                remove: vec![s("server")],
                ..HeaderModifier::default()
            }),
            HttpFilter::UrlRewrite(UrlRewrite {
                hostname: Some(s("h")),
                path: Some(PathModifier::ReplacePrefixMatch(s("/v2"))),
            }),
            HttpFilter::RequestMirror(RequestMirror {
                backend: BackendRef {
                    name: s("web-shadow"),
                    namespace: s("default"),
                    port: 80,
                    weight: 1,
                },
                numerator: 50,
                denominator: 100,
            }),
        ]
    );
    let backend = |name: &str, weight| BackendRef {
        name: s(name),
        namespace: s("default"),
        port: 80,
        weight,
    };
    assert_eq!(
        canary.backend_refs,
        [backend("web-v1", 90), backend("web-v2", 10)]
    );
    assert_eq!(
        canary.timeouts,
        RouteTimeouts {
            request: Some(Duration::from_secs(2)),
            backend_request: Some(Duration::from_millis(500)),
        }
    );
    assert_eq!(
        canary.retry,
        Some(RetryPolicy {
            attempts: 2,
            backoff: Duration::from_millis(25),
            codes: vec![503],
            connect_failure: true,
            reset: true,
        })
    );
    let moved = &route.rules[1];
    assert_eq!(moved.matches[0].path, PathMatch::Exact(s("/old")));
    assert_eq!(
        moved.filters[0],
        HttpFilter::RequestRedirect(RequestRedirect {
            scheme: Some(s("https")),
            hostname: Some(s("h")),
            path: Some(PathModifier::ReplaceFullPath(s("/new"))),
            port: Some(8443),
            status_code: 302,
        })
    );
    let HttpFilter::RequestMirror(mirror) = &moved.filters[1] else {
        panic!("mirror expected: {:?}", moved.filters[1]);
    };
    assert_eq!((mirror.numerator, mirror.denominator), (1, 10));
    assert!(moved.backend_refs.is_empty());
    assert_eq!(moved.timeouts, RouteTimeouts::default());
    assert_eq!(moved.retry, None);

    let greeter = &cfg.grpc_routes[0];
    assert_eq!(greeter.name, "greeter");
    assert_eq!(greeter.parent_refs[0].port, Some(50051));
    assert!(greeter.hostnames.is_empty());
    let g = &greeter.rules[0];
    assert_eq!(
        g.matches,
        [GrpcRouteMatch {
            method: Some(GrpcMethodMatch {
                regex: false,
                service: Some(s("helloworld.Greeter")),
                method: Some(s("SayHello")),
            }),
            headers: vec![HeaderMatch {
                name: s("x-version"),
                value: StringMatch::Exact(s("v2")),
            }],
        }]
    );
    assert_eq!(g.filters.len(), 1);
    assert_eq!(
        g.backend_refs,
        [BackendRef {
            name: s("greeter-v2"),
            namespace: s("default"),
            port: 50051,
            weight: 1,
        }]
    );
    assert_eq!(g.timeouts.request, None, "0s is no timeout");
    assert_eq!(
        g.retry,
        Some(RetryPolicy {
            attempts: 1,
            backoff: Duration::from_millis(25),
            codes: vec![503],
            connect_failure: true,
            reset: true,
        })
    );

    let json = serde_json::to_value(&cfg).expect("serializable");
    assert_eq!(
        json["http_routes"][0]["rules"][0]["filters"][2]["type"],
        "URLRewrite"
    );
    assert_eq!(
        json["http_routes"][0]["rules"][0]["retry"]["backoff"],
        "25ms"
    );
    assert_eq!(json["services"][0]["load_balancer"], "least_request");
}

#[test]
fn route_defaults() {
    let cfg = ok("http_routes:
  - name: r
    spec:
      parentRefs: [{name: web}]
      rules:
        - backendRefs: [{name: web, port: 80}]
        - matches: [{headers: [{name: X-Canary, value: '1'}]}, {path: {value: /a}}, {path: {type: Exact}}]
          filters:
            - type: RequestMirror
              requestMirror: {backendRef: {name: web-shadow, port: 80}}
            - type: RequestMirror
              requestMirror: {backendRef: {name: web-shadow, port: 80}, fraction: {numerator: 3}}
          retry: {}
          timeouts: {}
  - name: empty
    namespace: other
    spec:
      parentRefs: [{name: web, namespace: default}]
  - name: r
    namespace: other
    spec:
      parentRefs: [{name: api, namespace: prod, group: core, kind: Service}]
      hostnames: [WEB.Example.COM, '*.Example.com']
      rules: [{backendRefs: [{name: web, namespace: default, port: 443, weight: 0, group: ''}]}]
");
    let route = &cfg.http_routes[0];
    assert_eq!(route.namespace, "default");
    assert!(route.hostnames.is_empty());
    assert_eq!(route.parent_refs[0].port, None, "every port");
    let first = &route.rules[0];
    assert_eq!(first.name, None);
    assert_eq!(
        first.matches,
        [HttpRouteMatch {
            path: PathMatch::PathPrefix("/".to_owned()),
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
        }]
    );
    assert!(first.filters.is_empty());
    assert_eq!(first.backend_refs[0].weight, 1);
    assert_eq!(first.timeouts, RouteTimeouts::default());
    assert_eq!(first.retry, None);

    let second = &route.rules[1];
    assert_eq!(
        second.matches[0].path,
        PathMatch::PathPrefix("/".to_owned())
    );
    assert_eq!(second.matches[0].headers[0].name, "x-canary");
    assert_eq!(
        second.matches[1].path,
        PathMatch::PathPrefix("/a".to_owned())
    );
    assert_eq!(second.matches[2].path, PathMatch::Exact("/".to_owned()));
    let mirrors: Vec<(u32, u32)> = second
        .filters
        .iter()
        .filter_map(|f| match f {
            HttpFilter::RequestMirror(m) => Some((m.numerator, m.denominator)),
            _ => None,
        })
        .collect();
    assert_eq!(mirrors, [(100, 100), (3, 100)]);
    assert!(second.backend_refs.is_empty());
    assert_eq!(
        second.retry,
        Some(RetryPolicy {
            attempts: 1,
            backoff: Duration::from_millis(25),
            codes: Vec::new(),
            connect_failure: true,
            reset: true,
        })
    );

    assert!(cfg.http_routes[1].rules.is_empty());
    let other = &cfg.http_routes[2];
    assert_eq!(other.namespace, "other");
    assert_eq!(other.parent_refs[0].namespace, "prod");
    assert_eq!(other.hostnames, ["web.example.com", "*.example.com"]);
    let backend = &other.rules[0].backend_refs[0];
    assert_eq!(
        (backend.namespace.as_str(), backend.port, backend.weight),
        ("default", 443, 0)
    );
}

#[test]
fn many_routes_and_limits_at_the_edge() {
    // Exactly at every limit is fine.
    let hostnames: Vec<String> = (0..16).map(|i| format!("h{i}.example.com")).collect();
    let matches: String = (0..64)
        .map(|i| format!("            - path: {{value: /p{i}}}\n"))
        .collect();
    let backends: String = (0..16)
        .map(|_| "            - {name: web-v1, port: 80}\n".to_owned())
        .collect();
    let cfg = ok(&format!(
        "http_routes:
  - name: r
    spec:
      parentRefs: [{{name: web}}]
      hostnames: [{}]
      rules:
        - matches:
{matches}          backendRefs:
{backends}",
        hostnames.join(", ")
    ));
    let route = &cfg.http_routes[0];
    assert_eq!(route.hostnames.len(), 16);
    assert_eq!(route.rules[0].matches.len(), 64);
    assert_eq!(route.rules[0].backend_refs.len(), 16);
}

// ---------------------------------------------------------------------------
// Route-level errors.

#[test]
fn route_names_and_duplicates() {
    fails(
        "http_routes:\n  - name: Web\n    spec: {parentRefs: [{name: web}]}\n",
        2,
        11,
        "invalid HTTPRoute name `Web`: use 1 to 253 characters among a-z, 0-9, '-' and '.', starting and ending with a letter or digit",
    );
    for bad in ["-a", "a-", "a..b", "a_b", "''"] {
        let e = error(&format!(
            "grpc_routes:\n  - name: {bad}\n    spec: {{parentRefs: [{{name: web}}]}}\n"
        ));
        assert!(e.reason().starts_with("invalid GRPCRoute name"), "{e}");
    }
    ok(&format!(
        "http_routes:\n  - name: {}\n    spec: {{parentRefs: [{{name: web}}]}}\n",
        "a.b-c".repeat(50)
    ));
    fails(
        "http_routes:\n  - name: r\n    namespace: a/b\n    spec: {parentRefs: [{name: web}]}\n",
        3,
        16,
        "invalid namespace `a/b`: must be non-empty without '/', spaces or control characters",
    );
    fails(
        "http_routes:
  - name: r
    spec: {parentRefs: [{name: web}]}
  - name: r
    namespace: default
    spec: {parentRefs: [{name: web}]}
",
        4,
        11,
        "duplicate HTTPRoute `default/r` (first defined at line 22)",
    );
    fails(
        "grpc_routes:
  - name: r
    spec: {parentRefs: [{name: web}]}
  - name: r
    spec: {parentRefs: [{name: web}]}
",
        4,
        11,
        "duplicate GRPCRoute `default/r` (first defined at line 22)",
    );
    // Per kind and per namespace.
    ok("http_routes:
  - name: r
    spec: {parentRefs: [{name: web}]}
  - name: r
    namespace: other
    spec: {parentRefs: [{name: web, namespace: default}]}
grpc_routes:
  - name: r
    spec: {parentRefs: [{name: web}]}
");
}

#[test]
fn route_structure_errors() {
    fails_with_prefix(
        "http_routes:\n  - name: r\n    namespace: default\n",
        3,
        5,
        "missing field `spec`",
    );
    fails_with_prefix(
        "http_routes:\n  - name: r\n    spec: {parentRefs: [{name: web}]}\n    labels: {}\n",
        4,
        5,
        "unknown field `labels`, expected one of name, namespace, spec",
    );
    // Gateway API fields are camelCase; a typo names the field.
    fails_with_prefix(
        "http_routes:\n  - name: r\n    spec:\n      parentRef: [{name: web}]\n",
        4,
        7,
        "unknown field `parentRef`, expected one of parentRefs, hostnames, rules",
    );
    fails_with_prefix(
        &rule("backendRef: [{name: web, port: 80}]\n"),
        6,
        11,
        "unknown field `backendRef`, expected one of name, matches, filters, backendRefs, timeouts, retry",
    );
    fails_with_prefix(
        &rule("sessionPersistence: {}\n"),
        6,
        11,
        "unknown field `sessionPersistence`",
    );
    fails_with_prefix(
        &rule("matches: [{path: {type: Exact, value: /, extra: 1}}]\n"),
        6,
        52,
        "unknown field `extra`, expected one of type, value",
    );
    fails_with_prefix(
        &rule("matches: [{header: []}]\n"),
        6,
        22,
        "unknown field `header`, expected one of path, headers, queryParams, method",
    );
    fails_with_prefix(
        &rule(
            "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web, port: 80, weight: 1}}}]\n",
        ),
        6,
        93,
        "unknown field `weight`, expected one of name, namespace, kind, group, port",
    );
    fails_with_prefix(
        &rule("timeouts: {requests: 1s}\n"),
        6,
        22,
        "unknown field `requests`, expected one of request, backendRequest",
    );
    fails_with_prefix(
        &rule("retry: {attempt: 1}\n"),
        6,
        19,
        "unknown field `attempt`",
    );
    fails_with_prefix(
        &grpc_rule("matches: [{method: {service: a, method: b, kind: c}}]\n"),
        6,
        54,
        "unknown field `kind`, expected one of type, service, method",
    );
}

#[test]
fn hostnames() {
    let route = |hosts: &str| {
        format!(
            "http_routes:\n  - name: r\n    spec:\n      parentRefs: [{{name: web}}]\n      hostnames: [{hosts}]\n"
        )
    };
    fails(
        &route("ok.example.com, bad_host.example.com"),
        5,
        35,
        "invalid hostname `bad_host.example.com`: expected a DNS name such as web.example.com, optionally starting with `*.`",
    );
    for bad in [
        "'*'",
        "'*.'",
        "'a.*.com'",
        "'-a.com'",
        "'a..com'",
        "'a.com.'",
        "'**.a.com'",
    ] {
        let e = error(&route(bad));
        assert!(e.reason().starts_with("invalid hostname"), "{bad}: {e}");
    }
    let long_label = format!("{}.com", "a".repeat(64));
    let e = error(&route(&long_label));
    assert!(e.reason().starts_with("invalid hostname"), "{e}");
    let too_many: Vec<String> = (0..17).map(|i| format!("h{i}.com")).collect();
    fails(
        &route(&too_many.join(", ")),
        5,
        153,
        "too many hostnames: at most 16 per route",
    );
}

// ---------------------------------------------------------------------------
// Rules.

#[test]
fn rule_errors() {
    let rules: String = (0..17).map(|_| "        - backendRefs: []\n").collect();
    fails(
        &http(&rules),
        22,
        11,
        "too many rules: at most 16 per route",
    );
    fails(
        &rule("name: Canary\n"),
        6,
        17,
        "invalid rule name `Canary`: use 1 to 253 characters among a-z, 0-9, '-' and '.', starting and ending with a letter or digit",
    );
    fails(
        &http("        - name: a\n        - name: b\n        - name: a\n"),
        8,
        17,
        "duplicate rule name `a` (first defined at line 26)",
    );
    let matches: String = (0..65).map(|_| "            - method: GET\n").collect();
    fails(
        &rule(&format!("matches:\n{matches}")),
        71,
        15,
        "too many matches: at most 64 per rule",
    );
}

#[test]
fn route_garbage_never_panics() {
    let inputs = [
        "http_routes: 5\n",
        "http_routes: [5]\n",
        "http_routes: [{name: r, spec: []}]\n",
        "http_routes: [{name: r, spec: {parentRefs: {}}}]\n",
        "http_routes: [{name: r, spec: {parentRefs: [[]]}}]\n",
        "http_routes: [{name: r, spec: {parentRefs: [{name: web}], rules: [{matches: [{path: 1}]}]}}]\n",
        "http_routes: [{name: r, spec: {parentRefs: [{name: web}], rules: [{filters: [{type: ~}]}]}}]\n",
        "http_routes: [{name: r, spec: {parentRefs: [{name: web}], rules: [{backendRefs: [{name: web, port: 99999999999999999999999}]}]}}]\n",
        "http_routes: [{name: r, spec: {parentRefs: [{name: web}], rules: [{timeouts: {request: 99999999999999999999999ms}}]}}]\n",
        "http_routes: [{name: r, spec: {parentRefs: [{name: web}], rules: [{retry: {attempts: 99999999999999999999999}}]}}]\n",
        "grpc_routes: [{name: g, spec: {parentRefs: [{name: web}], rules: [{matches: [{method: {service: \"\\u00e9\"}}]}]}}]\n",
        "http_routes: [{name: \"\\u00e9\", spec: {parentRefs: [{name: web}], hostnames: [\"\\u00c9.com\"]}}]\n",
        "http_routes: [{name: r, spec: {parentRefs: [{name: web}], rules: [{matches: [{path: {type: RegularExpression, value: \"\\\\p{Nonexistent}\"}}]}]}}]\n",
    ];
    for input in inputs {
        assert!(parse_rest(input).is_err(), "{input:?} should fail");
    }
}

/// Every bad part of a route is reported, each once, in file order; the rest of the
/// route's rules are still checked.
#[test]
fn route_errors_are_all_reported() {
    let rest = "\
http_routes:
  - name: Bad_Name
    spec:
      parentRefs: [{name: web, port: 81}]
      hostnames: ['*.*.example.com']
      rules:
        - matches: [{path: {type: Exact, value: 'no-slash'}}]
          backendRefs: [{name: web-v1, port: 80, weight: -1}]
          timeouts: {request: 5 s}
        - backendRefs: [{name: missing, port: 80}]
grpc_routes:
  - name: g
    spec:
      parentRefs: [{name: greeter}]
      rules:
        - matches: [{method: {service: 'a b'}}]
";
    let shown = error(rest).to_string();
    let lines: Vec<&str> = shown.lines().collect();
    let at: Vec<String> = lines
        .iter()
        .map(|l| l.split(": ").next().unwrap_or_default().to_owned())
        .collect();
    let b = base_lines();
    let expected: Vec<String> = [
        (2, 11),
        (4, 38),
        (5, 19),
        (7, 49),
        (8, 58),
        (9, 31),
        (10, 32),
        (16, 40),
    ]
    .iter()
    .map(|(line, col)| format!("test.yaml:{}:{col}", line + b))
    .collect();
    assert_eq!(at, expected, "\n{shown}");
}
