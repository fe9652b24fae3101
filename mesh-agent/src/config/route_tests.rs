//! Tests of the L7 configuration: `http:`, port protocols, load balancing, outlier detection,
//! HTTPRoutes and GRPCRoutes. Every error class is checked with its exact position and
//! message.

use std::time::Duration;

use super::*;

/// Services that the routes below refer to, after a node whose paths are not checked.
const BASE: &str = "\
node:
  name: node1
  cgroup: /sys/fs/cgroup
services:
  - name: web
    ports:
      - {port: 80, name: http-web}
      - {port: 443}
  - name: web-v1
    ports: [{port: 80}]
  - name: web-v2
    ports: [{port: 80}]
  - name: web-shadow
    ports: [{port: 80}]
  - name: greeter
    ports: [{port: 50051, protocol: grpc}]
  - name: api
    namespace: prod
    ports: [{port: 8080}]
  - name: empty
";

fn base_lines() -> u64 {
    BASE.lines().count() as u64
}

fn parse_rest(rest: &str) -> Result<Config, ConfigErrors> {
    parse(&format!("{BASE}{rest}"), "test.yaml", PathChecks::Skipped)
}

/// Parses BASE + `rest`, which must be valid.
fn ok(rest: &str) -> Config {
    parse_rest(rest).unwrap_or_else(|e| panic!("{e}\n{rest}"))
}

fn error(rest: &str) -> ConfigErrors {
    match parse_rest(rest) {
        Ok(cfg) => panic!("expected an error, got {cfg:?}\n{rest}"),
        Err(e) => e,
    }
}

/// Expects the error `reason` at `line` (1-based, within `rest`) and `column`.
#[track_caller]
fn fails(rest: &str, line: u64, column: u64, reason: &str) {
    let e = error(rest);
    let line = line + base_lines();
    assert_eq!(
        e.to_string(),
        format!("test.yaml:{line}:{column}: {reason}"),
        "\n{rest}"
    );
}

/// Like `fails` for messages worded by serde (a prefix is enough).
#[track_caller]
fn fails_with_prefix(rest: &str, line: u64, column: u64, prefix: &str) {
    let e = error(rest);
    let shown = e.to_string();
    let expected = format!("test.yaml:{}:{column}: {prefix}", line + base_lines());
    assert!(shown.starts_with(&expected), "{shown}\nexpected {expected}");
}

/// An HTTPRoute on service web whose `rules:` list is `rules` (indented by 8). Line 6 of the
/// result is the first line of `rules`.
fn http(rules: &str) -> String {
    format!(
        "http_routes:\n  - name: r\n    spec:\n      parentRefs: [{{name: web}}]\n      rules:\n{rules}"
    )
}

/// Same for a GRPCRoute on service greeter.
fn grpc(rules: &str) -> String {
    format!(
        "grpc_routes:\n  - name: g\n    spec:\n      parentRefs: [{{name: greeter, port: 50051}}]\n      rules:\n{rules}"
    )
}

/// A route with one rule `body` (indented by 10, after `        - `). Line 6 of the result
/// is the first line of `body`.
fn rule(body: &str) -> String {
    http(&format!("        - {}", body.trim_start()))
}

fn grpc_rule(body: &str) -> String {
    grpc(&format!("        - {}", body.trim_start()))
}

fn first_http_rule(cfg: &Config) -> &HttpRouteRule {
    &cfg.http_routes[0].rules[0]
}

// ---------------------------------------------------------------------------
// Services: protocols, load balancing, outlier detection.

#[test]
fn port_protocols() {
    let svc = |ports: &str| format!("  - name: p\n    ports:\n{ports}");
    let cfg = ok(&svc("      - {port: 1, protocol: HTTP2}
      - {port: 2, name: http}
      - {port: 3, name: http-web}
      - {port: 4, name: HTTP2-x}
      - {port: 5, name: http2}
      - {port: 6, name: grpc-web}
      - {port: 7, name: Tcp-db}
      - {port: 8, name: https}
      - {port: 9, name: web}
      - {port: 10}
      - {port: 11, name: web, protocol: tcp}
      - {port: 12, name: grpc, protocol: Http}
      - {port: 13, name: http2x}
      - {port: 14, protocol: GRPC}
"));
    let protocols: Vec<PortProtocol> = cfg
        .services
        .last()
        .expect("service p")
        .ports
        .iter()
        .map(|p| p.protocol)
        .collect();
    use PortProtocol::{Declared, Detect};
    assert_eq!(
        protocols,
        [
            Declared(Protocol::Http2),
            Declared(Protocol::Http),
            Declared(Protocol::Http),
            Declared(Protocol::Http2),
            Declared(Protocol::Http2),
            Declared(Protocol::Grpc),
            Declared(Protocol::Tcp),
            Detect,
            Detect,
            Detect,
            Declared(Protocol::Tcp),
            Declared(Protocol::Http),
            Detect,
            Declared(Protocol::Grpc),
        ]
    );
    // BASE: `http-web` by name, 443 detected, greeter declared.
    assert_eq!(cfg.services[0].ports[0].protocol, Declared(Protocol::Http));
    assert_eq!(cfg.services[0].ports[1].protocol, Detect);

    fails(
        &svc("      - port: 80\n        protocol: udp\n"),
        4,
        19,
        "invalid protocol `udp`: expected tcp, http, http2 or grpc",
    );
}

#[test]
fn load_balancers() {
    let cfg = ok("  - name: lb\n    load_balancer: least_request\n");
    let lb = cfg.services.last().expect("lb");
    assert_eq!(lb.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(lb.outlier_detection, None);
    assert_eq!(cfg.services[0].load_balancer, LoadBalancer::RoundRobin);
    let cfg = ok("  - name: lb\n    load_balancer: round_robin\n");
    assert_eq!(
        cfg.services.last().expect("lb").load_balancer,
        LoadBalancer::RoundRobin
    );
    fails(
        "  - name: lb\n    load_balancer: random\n",
        2,
        20,
        "invalid load_balancer `random`: expected round_robin or least_request",
    );
}

#[test]
fn outlier_detection() {
    let od = |body: &str| format!("  - name: od\n    outlier_detection:{body}");
    let parsed = |body: &str| {
        ok(&od(body))
            .services
            .last()
            .expect("od")
            .outlier_detection
            .clone()
    };
    assert_eq!(parsed(" {}\n"), Some(OutlierDetection::default()));
    assert_eq!(
        parsed(
            "
      consecutive_5xx_errors: 3
      consecutive_gateway_errors: 0
      base_ejection_time: 2s
      max_ejection_percent: 50
"
        ),
        Some(OutlierDetection {
            consecutive_5xx_errors: 3,
            consecutive_gateway_errors: 0,
            base_ejection_time: Duration::from_secs(2),
            max_ejection_percent: 50,
        })
    );
    // Unset fields keep their defaults.
    assert_eq!(
        parsed(" {consecutive_gateway_errors: 2, base_ejection_time: 500ms}\n"),
        Some(OutlierDetection {
            consecutive_gateway_errors: 2,
            base_ejection_time: Duration::from_millis(500),
            ..OutlierDetection::default()
        })
    );

    fails(
        &od("\n"),
        2,
        22,
        "`outlier_detection` has no value: write `outlier_detection: {}` for the defaults, or remove the key to never eject endpoints",
    );
    fails(
        &od("\n      max_ejection_percent: 101\n"),
        3,
        29,
        "max_ejection_percent 101 is out of range 0..=100",
    );
    fails(
        &od("\n      consecutive_5xx_errors: -1\n"),
        3,
        31,
        "invalid consecutive_5xx_errors `-1`: expected a whole number in 0..=1000000",
    );
    fails(
        &od("\n      consecutive_gateway_errors: 1000001\n"),
        3,
        35,
        "consecutive_gateway_errors 1000001 is out of range 0..=1000000",
    );
    fails(
        &od("\n      base_ejection_time: 30\n"),
        3,
        27,
        "invalid base_ejection_time `30`: expected a whole number and a unit ms, s, m or h, such as 100ms or 2s",
    );
    fails(
        &od("\n      base_ejection_time: 0s\n"),
        3,
        27,
        "base_ejection_time 0s is out of range 1ms..=24h",
    );
    fails(
        &od("\n      base_ejection_time: 25h\n"),
        3,
        27,
        "base_ejection_time 25h is out of range 1ms..=24h",
    );
    fails_with_prefix(
        &od("\n      interval: 10s\n"),
        3,
        7,
        "unknown field `interval`, expected one of",
    );
}

// ---------------------------------------------------------------------------
// The `http:` section.

#[test]
fn http_settings() {
    assert_eq!(ok("").http, HttpSettings::default());
    assert_eq!(ok("http:\n").http, HttpSettings::default());
    let cfg = ok("http:
  detection_timeout: 250ms
  max_header_bytes: 1024
  retry_budget:
    percent: 1000
    min_retries_per_second: 0
");
    assert_eq!(
        cfg.http,
        HttpSettings {
            detection_timeout: Duration::from_millis(250),
            max_header_bytes: 1024,
            retry_budget: RetryBudget {
                percent: 1000,
                min_retries_per_second: 0,
            },
        }
    );
    let cfg = ok("http: {detection_timeout: 1m, retry_budget: {percent: 0}}\n");
    assert_eq!(cfg.http.detection_timeout, Duration::from_secs(60));
    assert_eq!(cfg.http.max_header_bytes, 61_440);
    assert_eq!(cfg.http.retry_budget.percent, 0);
    assert_eq!(cfg.http.retry_budget.min_retries_per_second, 10);
    let json = serde_json::to_value(&cfg).expect("serializable");
    assert_eq!(json["http"]["detection_timeout"], "1m");

    fails(
        "http:\n  detection_timeout: 0ms\n",
        2,
        22,
        "detection_timeout 0ms is out of range 1ms..=60s",
    );
    fails(
        "http:\n  detection_timeout: 61s\n",
        2,
        22,
        "detection_timeout 61s is out of range 1ms..=60s",
    );
    fails(
        "http:\n  detection_timeout: 99999999999999999999h\n",
        2,
        22,
        "detection_timeout 99999999999999999999h is out of range 1ms..=60s",
    );
    for bad in ["100", "1.5s", "1d", "ms", "-1s", "10 s", "1S"] {
        fails(
            &format!("http:\n  detection_timeout: '{bad}'\n"),
            2,
            22,
            &format!(
                "invalid detection_timeout `{bad}`: expected a whole number and a unit ms, s, m or h, such as 100ms or 2s"
            ),
        );
    }
    fails(
        "http:\n  max_header_bytes: 1023\n",
        2,
        21,
        "max_header_bytes 1023 is out of range 1024..=1048576",
    );
    fails(
        "http:\n  max_header_bytes: 64k\n",
        2,
        21,
        "invalid max_header_bytes `64k`: expected a whole number in 1024..=1048576",
    );
    fails(
        "http:\n  retry_budget: {percent: 1001}\n",
        2,
        27,
        "retry_budget.percent 1001 is out of range 0..=1000",
    );
    fails(
        "http:\n  retry_budget:\n    min_retries_per_second: 100001\n",
        3,
        29,
        "retry_budget.min_retries_per_second 100001 is out of range 0..=100000",
    );
    fails_with_prefix(
        "http:\n  idle_timeout: 1s\n",
        2,
        3,
        "unknown field `idle_timeout`, expected one of detection_timeout, max_header_bytes, retry_budget",
    );
}

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
fn grpc_route_matches() {
    let cfg = ok(&grpc(
        "        - matches:
            - method: {service: helloworld.Greeter}
            - method: {method: SayHello}
            - method: {type: RegularExpression, service: 'helloworld\\..*', method: 'Say.*'}
            - headers: [{name: X-Version, value: v2, type: RegularExpression}]
          filters:
            - type: ResponseHeaderModifier
              responseHeaderModifier: {set: [{name: x-a, value: b}]}
            - type: RequestMirror
              requestMirror: {backendRef: {name: greeter, port: 50051}, percent: 10}
        - backendRefs: [{name: greeter, port: 50051}]
",
    ));
    let rules = &cfg.grpc_routes[0].rules;
    let methods: Vec<Option<GrpcMethodMatch>> =
        rules[0].matches.iter().map(|m| m.method.clone()).collect();
    let method = |regex, service: Option<&str>, method: Option<&str>| {
        Some(GrpcMethodMatch {
            regex,
            service: service.map(str::to_owned),
            method: method.map(str::to_owned),
        })
    };
    assert_eq!(
        methods,
        [
            method(false, Some("helloworld.Greeter"), None),
            method(false, None, Some("SayHello")),
            method(true, Some("helloworld\\..*"), Some("Say.*")),
            None,
        ]
    );
    assert_eq!(
        rules[0].matches[3].headers,
        [HeaderMatch {
            name: "x-version".to_owned(),
            value: StringMatch::RegularExpression("v2".to_owned()),
        }]
    );
    assert_eq!(rules[0].filters.len(), 2);
    assert!(rules[1].matches.is_empty(), "empty matches every request");
    assert_eq!(rules[1].timeouts, RouteTimeouts::default());
}

#[test]
fn match_values() {
    let cfg = ok(&rule(
        "matches:
            - path: {type: RegularExpression, value: '/v[0-9]+/.*'}
              headers: [{type: RegularExpression, name: x-a, value: 'a|b'}]
              queryParams: [{name: v, value: '1'}, {name: V, value: '2'}]
              method: PATCH
            - path: {type: Exact, value: /a/b.c/..d/}
",
    ));
    let m = &first_http_rule(&cfg).matches;
    assert_eq!(
        m[0].path,
        PathMatch::RegularExpression("/v[0-9]+/.*".to_owned())
    );
    assert_eq!(
        m[0].headers[0].value,
        StringMatch::RegularExpression("a|b".to_owned())
    );
    let names: Vec<&str> = m[0].query_params.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(
        names,
        ["v", "V"],
        "query parameter names are case-sensitive"
    );
    assert_eq!(m[0].method.as_deref(), Some("PATCH"));
    assert_eq!(m[1].path, PathMatch::Exact("/a/b.c/..d/".to_owned()));
}

#[test]
fn timeouts_and_retries() {
    let cfg = ok(&rule("timeouts: {request: 0s, backendRequest: 1h}
          retry: {attempts: 0, backoff: 60s, codes: [500, 599, '502'], connectFailure: false, reset: false}
"));
    let r = first_http_rule(&cfg);
    assert_eq!(
        r.timeouts,
        RouteTimeouts {
            request: None,
            backend_request: Some(Duration::from_secs(3600)),
        }
    );
    assert_eq!(
        r.retry,
        Some(RetryPolicy {
            attempts: 0,
            backoff: Duration::from_secs(60),
            codes: vec![500, 599, 502],
            connect_failure: false,
            reset: false,
        })
    );
    let cfg = ok(&rule("timeouts: {request: 1s, backendRequest: 1000ms}\n"));
    assert_eq!(
        first_http_rule(&cfg).timeouts.backend_request,
        Some(Duration::from_secs(1))
    );
    let cfg = ok(&rule("timeouts: {request: 0ms, backendRequest: 0s}\n"));
    assert_eq!(first_http_rule(&cfg).timeouts, RouteTimeouts::default());
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
fn parent_refs() {
    let route = |spec: &str| format!("http_routes:\n  - name: r\n    spec:\n{spec}");
    fails(
        &route("      hostnames: []\n"),
        4,
        7,
        "`parentRefs` is required: attach the route to at least one Service",
    );
    fails(
        &route("      parentRefs: []\n"),
        4,
        19,
        "`parentRefs` is empty: attach the route to at least one Service",
    );
    fails(
        &route("      parentRefs:\n        - name: gw\n          kind: Gateway\n"),
        6,
        17,
        "invalid kind `Gateway`: only Service parents are supported (GAMMA)",
    );
    fails(
        &route(
            "      parentRefs:\n        - name: web\n          group: gateway.networking.k8s.io\n",
        ),
        6,
        18,
        "invalid group `gateway.networking.k8s.io`: only Service parents are supported (GAMMA)",
    );
    fails(
        &route("      parentRefs:\n        - name: nope\n"),
        5,
        17,
        "service `default/nope` is not defined under services",
    );
    fails(
        &route("      parentRefs:\n        - name: api\n"),
        5,
        17,
        "service `default/api` is not defined under services",
    );
    fails(
        &route("      parentRefs:\n        - {name: web, port: 8080}\n"),
        5,
        29,
        "port 8080 is not a port of service `default/web` (its ports: 80, 443)",
    );
    fails(
        &route("      parentRefs:\n        - {name: empty, port: 80}\n"),
        5,
        31,
        "port 80 is not a port of service `default/empty` (it has no ports)",
    );
    fails(
        &route("      parentRefs:\n        - {name: web, port: 0}\n"),
        5,
        29,
        "port 0 is out of range 1..=65535",
    );
    fails_with_prefix(
        &route("      parentRefs:\n        - {name: web, sectionName: http}\n"),
        5,
        23,
        "unknown field `sectionName`, expected one of name, namespace, kind, group, port",
    );
    fails_with_prefix(
        &route("      parentRefs:\n        - {port: 80}\n"),
        5,
        12,
        "missing field `name`",
    );
    let many: String = (0..33).map(|_| "        - name: web\n").collect();
    fails(
        &route(&format!("      parentRefs:\n{many}")),
        37,
        11,
        "too many parentRefs: at most 32 per route",
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
// Rules and matches.

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
fn path_matches() {
    let path = |p: &str| rule(&format!("matches: [{{path: {p}}}]\n"));
    fails(
        &path("{type: Prefix, value: /}"),
        6,
        35,
        "invalid path match type `Prefix`: expected Exact, PathPrefix or RegularExpression",
    );
    fails(
        &path("{value: api}"),
        6,
        36,
        "invalid path `api`: must start with '/'",
    );
    for (bad, why) in [
        ("/a//b", "must not contain '//'"),
        ("/a/./b", "must not contain '.' or '..' segments"),
        ("/a/../b", "must not contain '.' or '..' segments"),
        ("/a/.", "must not contain '.' or '..' segments"),
        ("/a/..", "must not contain '.' or '..' segments"),
        ("/a%2Fb", "must not contain an encoded '/' (%2f)"),
        ("/a%2fb", "must not contain an encoded '/' (%2f)"),
        ("/a#b", "must not contain '#'"),
        (
            "/a?b=1",
            "must not contain '?' (match query parameters with queryParams)",
        ),
        ("/a b", "must not contain spaces or control characters"),
    ] {
        fails(
            &path(&format!("{{type: Exact, value: '{bad}'}}")),
            6,
            49,
            &format!("invalid path `{bad}`: {why}"),
        );
    }
    fails(
        &path(&format!("{{value: /{}}}", "a".repeat(1024))),
        6,
        36,
        &format!(
            "invalid path `/{}`: must be at most 1024 characters",
            "a".repeat(1024)
        ),
    );
    fails(
        &path("{type: RegularExpression, value: '/(a'}"),
        6,
        61,
        "invalid regular expression `/(a`: unclosed group",
    );
    // Compiles only unanchored: the matcher anchors it as ^(?:...)$.
    fails(
        &path("{type: RegularExpression, value: 'a)|(b'}"),
        6,
        61,
        "invalid regular expression `a)|(b`: unopened group",
    );
    // Too big once compiled: an error, not a panic or a stall.
    let e = error(&path("{type: RegularExpression, value: '(a{1000}){1000}'}"));
    assert!(
        e.reason()
            .starts_with("invalid regular expression `(a{1000}){1000}`: "),
        "{e}"
    );
}

#[test]
fn header_and_query_matches() {
    let m = |body: &str| rule(&format!("matches:\n            - {body}\n"));
    fails(
        &m("headers: [{name: 'x y', value: a}]"),
        7,
        32,
        "invalid header name `x y`: use 1 or more HTTP token characters (letters, digits and !#$%&'*+-.^_`|~)",
    );
    fails(
        &m("headers: [{name: ':authority', value: a}]"),
        7,
        32,
        "invalid header name `:authority`: use 1 or more HTTP token characters (letters, digits and !#$%&'*+-.^_`|~)",
    );
    fails(
        &m("headers: [{name: X-A, value: a}, {name: x-a, value: b}]"),
        7,
        55,
        "duplicate header match `x-a` (header names are case-insensitive) (first at line 27)",
    );
    fails(
        &m("headers: [{type: Prefix, name: x-a, value: a}]"),
        7,
        32,
        "invalid header match type `Prefix`: expected Exact or RegularExpression",
    );
    fails(
        &m("headers: [{type: RegularExpression, name: x-a, value: '['}]"),
        7,
        69,
        "invalid regular expression `[`: unclosed character class",
    );
    fails(
        &m("headers: [{name: x-a, value: ''}]"),
        7,
        44,
        "the value of a header match must be 1 to 4096 characters",
    );
    fails_with_prefix(&m("headers: [{name: x-a}]"), 7, 26, "missing field `value`");
    let many: Vec<String> = (0..17)
        .map(|i| format!("{{name: h{i}, value: a}}"))
        .collect();
    fails(
        &m(&format!("headers: [{}]", many.join(", "))),
        7,
        383,
        "too many header matches: at most 16 per match",
    );
    fails(
        &m("queryParams: [{name: v, value: '1'}, {name: v, value: '2'}]"),
        7,
        59,
        "duplicate query parameter match `v` (first at line 27)",
    );
    fails(
        &m("queryParams: [{name: 'a=b', value: '1'}]"),
        7,
        36,
        "invalid query parameter name `a=b`: use 1 or more HTTP token characters (letters, digits and !#$%&'*+-.^_`|~)",
    );
    fails(
        &m("queryParams: [{type: RegularExpression, name: v, value: '*'}]"),
        7,
        71,
        "invalid regular expression `*`: repetition operator missing expression",
    );
    fails(
        &m("method: get"),
        7,
        23,
        "invalid method `get`: expected one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH",
    );
}

// ---------------------------------------------------------------------------
// Filters.

/// A rule with the given filters list items (each at indentation 12).
fn filters(items: &str) -> String {
    rule(&format!("filters:\n{items}"))
}

#[test]
fn filter_types() {
    fails(
        &filters("            - type: CORS\n"),
        7,
        21,
        "invalid filter type `CORS`: expected RequestHeaderModifier, ResponseHeaderModifier, URLRewrite, RequestRedirect or RequestMirror",
    );
    fails(
        &grpc_rule("filters:\n            - type: URLRewrite\n              urlRewrite: {}\n"),
        7,
        21,
        "filter type `URLRewrite` is not supported on GRPCRoute rules: expected RequestHeaderModifier, ResponseHeaderModifier or RequestMirror",
    );
    fails(
        &grpc_rule("filters: [{type: Redirect}]\n"),
        6,
        28,
        "invalid filter type `Redirect`: expected RequestHeaderModifier, ResponseHeaderModifier or RequestMirror",
    );
    fails(
        &filters("            - type: URLRewrite\n"),
        7,
        21,
        "a filter of type URLRewrite requires `urlRewrite`",
    );
    fails(
        &filters("            - type: URLRewrite\n              requestRedirect: {}\n"),
        7,
        21,
        "a filter of type URLRewrite requires `urlRewrite`",
    );
    fails(
        &filters(
            "            - type: RequestHeaderModifier\n              requestHeaderModifier: {}\n              responseHeaderModifier: {}\n",
        ),
        9,
        39,
        "`responseHeaderModifier` does not belong in a filter of type RequestHeaderModifier",
    );
    fails_with_prefix(
        &filters("            - requestHeaderModifier: {}\n"),
        7,
        15,
        "missing field `type`",
    );
    fails_with_prefix(
        &filters("            - type: ExtensionRef\n              extensionRef: {name: x}\n"),
        8,
        15,
        "unknown field `extensionRef`",
    );
    let many: String = (0..17)
        .map(|_| "            - {type: RequestMirror, requestMirror: {backendRef: {name: web, port: 80}}}\n")
        .collect();
    fails(
        &filters(&many),
        23,
        15,
        "too many filters: at most 16 per rule",
    );
}

#[test]
fn filters_once_per_rule() {
    for (kind, key) in [
        ("RequestHeaderModifier", "requestHeaderModifier"),
        ("ResponseHeaderModifier", "responseHeaderModifier"),
        ("URLRewrite", "urlRewrite"),
        ("RequestRedirect", "requestRedirect"),
    ] {
        let item = format!("            - {{type: {kind}, {key}: {{}}}}\n");
        fails(
            &filters(&format!("{item}{item}")),
            8,
            22,
            &format!("{kind} may be used at most once per rule (first at line 27)"),
        );
    }
    fails(
        &filters(
            "            - {type: URLRewrite, urlRewrite: {}}\n            - {type: RequestRedirect, requestRedirect: {}}\n",
        ),
        8,
        22,
        "a rule cannot have both URLRewrite and RequestRedirect filters (URLRewrite at line 27)",
    );
    fails(
        &filters(
            "            - {type: RequestRedirect, requestRedirect: {}}\n            - {type: URLRewrite, urlRewrite: {}}\n",
        ),
        8,
        22,
        "a rule cannot have both URLRewrite and RequestRedirect filters (RequestRedirect at line 27)",
    );
}

#[test]
fn header_modifiers() {
    let modifier = |body: &str| {
        filters(&format!(
            "            - type: RequestHeaderModifier\n              requestHeaderModifier: {body}\n"
        ))
    };
    fails(
        &modifier("{set: [{name: x-a, value: '1'}], remove: [X-A]}"),
        8,
        80,
        "header `x-a` appears more than once in requestHeaderModifier (set, add and remove together; first at line 28)",
    );
    fails(
        &modifier("{add: [{name: x-a, value: '1'}, {name: x-a, value: '2'}]}"),
        8,
        77,
        "header `x-a` appears more than once in requestHeaderModifier (set, add and remove together; first at line 28)",
    );
    fails(
        &modifier("{set: [{name: 'x:a', value: '1'}]}"),
        8,
        52,
        "invalid header name `x:a`: use 1 or more HTTP token characters (letters, digits and !#$%&'*+-.^_`|~)",
    );
    fails(
        &modifier("{remove: ['']}"),
        8,
        48,
        "invalid header name ``: use 1 or more HTTP token characters (letters, digits and !#$%&'*+-.^_`|~)",
    );
    let long = "v".repeat(4097);
    fails(
        &modifier(&format!("{{set: [{{name: x-a, value: {long}}}]}}")),
        8,
        64,
        &format!("invalid header value `{long}`: must be at most 4096 characters"),
    );
    // At the limit it is accepted.
    ok(&modifier(&format!(
        "{{set: [{{name: x-a, value: {}}}]}}",
        "v".repeat(4096)
    )));
    fails(
        &modifier("{set: [{name: x-a, value: \"a\\r\\nx-b: c\"}]}"),
        8,
        64,
        "invalid header value `a\\r\\nx-b: c`: must not contain control characters such as line breaks",
    );
    let many: Vec<String> = (0..17).map(|i| format!("h{i}")).collect();
    fails(
        &modifier(&format!("{{remove: [{}]}}", many.join(", "))),
        8,
        118,
        "too many headers in `remove`: at most 16 per requestHeaderModifier",
    );
    let many: Vec<String> = (0..17)
        .map(|i| format!("{{name: h{i}, value: v}}"))
        .collect();
    let e = error(&filters(&format!(
        "            - type: ResponseHeaderModifier\n              responseHeaderModifier: {{add: [{}]}}\n",
        many.join(", ")
    )));
    assert_eq!(
        e.reason(),
        "too many headers in `add`: at most 16 per responseHeaderModifier"
    );
}

#[test]
fn rewrites_and_redirects() {
    let rewrite = |matches: &str, path: &str| {
        rule(&format!(
            "matches: [{matches}]\n          filters:\n            - type: URLRewrite\n              urlRewrite: {{path: {path}}}\n"
        ))
    };
    fails(
        &rewrite(
            "{path: {value: /a}}, {path: {type: Exact, value: /b}}",
            "{type: ReplacePrefixMatch, replacePrefixMatch: /x}",
        ),
        9,
        41,
        "ReplacePrefixMatch is only allowed when every match of the rule is a PathPrefix match",
    );
    ok(&rewrite(
        "{path: {type: Exact, value: /b}}",
        "{type: ReplaceFullPath, replaceFullPath: /x}",
    ));
    ok(&rewrite(
        "{method: GET}",
        "{type: ReplacePrefixMatch, replacePrefixMatch: /}",
    ));
    fails(
        &rewrite("", "{type: ReplaceAll, replaceFullPath: /x}"),
        9,
        41,
        "invalid path modifier type `ReplaceAll`: expected ReplaceFullPath or ReplacePrefixMatch",
    );
    fails(
        &rewrite("", "{type: ReplaceFullPath, replacePrefixMatch: /x}"),
        9,
        41,
        "a path modifier of type ReplaceFullPath requires `replaceFullPath`",
    );
    fails(
        &rewrite(
            "",
            "{type: ReplaceFullPath, replaceFullPath: /x, replacePrefixMatch: /y}",
        ),
        9,
        99,
        "`replacePrefixMatch` does not belong in a path modifier of type ReplaceFullPath",
    );
    fails(
        &rewrite("", "{type: ReplaceFullPath, replaceFullPath: x}"),
        9,
        75,
        "invalid replaceFullPath `x`: must start with '/'",
    );
    fails(
        &filters("            - {type: URLRewrite, urlRewrite: {hostname: '*.example.com'}}\n"),
        7,
        57,
        "invalid hostname `*.example.com`: expected a DNS name such as web.example.com (no wildcard)",
    );
    let redirect = |body: &str| {
        filters(&format!(
            "            - type: RequestRedirect\n              requestRedirect: {body}\n"
        ))
    };
    fails(
        &redirect("{statusCode: 404}"),
        8,
        45,
        "invalid redirect statusCode `404`: expected 301, 302, 303, 307 or 308",
    );
    fails(
        &redirect("{scheme: ftp}"),
        8,
        41,
        "invalid scheme `ftp`: expected http or https",
    );
    fails(
        &redirect("{port: 0}"),
        8,
        39,
        "port 0 is out of range 1..=65535",
    );
    fails(
        &redirect("{path: {type: ReplacePrefixMatch, replacePrefixMatch: '/a?b'}}"),
        8,
        86,
        "invalid replacePrefixMatch `/a?b`: must not contain '?' (match query parameters with queryParams)",
    );
    let cfg = ok(&redirect("{scheme: HTTPS}"));
    assert_eq!(
        first_http_rule(&cfg).filters,
        [HttpFilter::RequestRedirect(RequestRedirect {
            scheme: Some("https".to_owned()),
            hostname: None,
            path: None,
            port: None,
            status_code: 302,
        })]
    );
    fails(
        &rule(
            "filters: [{type: RequestRedirect, requestRedirect: {}}]\n          backendRefs:\n            - {name: web, port: 80}\n",
        ),
        8,
        15,
        "backendRefs are never used on a rule with a RequestRedirect filter (the redirect answers every request); remove them",
    );
}

#[test]
fn mirrors() {
    let mirror = |body: &str| {
        filters(&format!(
            "            - type: RequestMirror\n              requestMirror: {body}\n"
        ))
    };
    fails(
        &mirror("{backendRef: {name: web, port: 80}, percent: 101}"),
        8,
        75,
        "percent 101 is out of range 0..=100",
    );
    fails(
        &mirror("{backendRef: {name: web, port: 80}, percent: 5, fraction: {numerator: 1}}"),
        8,
        88,
        "set either `percent` or `fraction` in requestMirror, not both",
    );
    fails(
        &mirror("{backendRef: {name: web, port: 80}, fraction: {numerator: 11, denominator: 10}}"),
        8,
        88,
        "fraction numerator 11 is larger than its denominator 10",
    );
    fails(
        &mirror("{backendRef: {name: web, port: 80}, fraction: {numerator: 0, denominator: 0}}"),
        8,
        104,
        "denominator 0 is out of range 1..=2147483647",
    );
    fails(
        &mirror("{backendRef: {name: web-shadow}}"),
        8,
        43,
        "port is required for Service backends",
    );
    fails(
        &mirror("{backendRef: {name: shadow, port: 80}}"),
        8,
        50,
        "service `default/shadow` is not defined under services",
    );
    fails(
        &mirror("{backendRef: {name: web, port: 81}}"),
        8,
        61,
        "port 81 is not a port of service `default/web` (its ports: 80, 443)",
    );
    fails(
        &mirror("{backendRef: {name: web, port: 80, kind: Pod}}"),
        8,
        71,
        "invalid kind `Pod`: only Service backends are supported",
    );
    fails_with_prefix(&mirror("{percent: 1}"), 8, 31, "missing field `backendRef`");
    let cfg = ok(&mirror(
        "{backendRef: {name: api, namespace: prod, port: 8080}, fraction: {numerator: 1, denominator: 1000}}",
    ));
    assert_eq!(
        first_http_rule(&cfg).filters,
        [HttpFilter::RequestMirror(RequestMirror {
            backend: BackendRef {
                name: "api".to_owned(),
                namespace: "prod".to_owned(),
                port: 8080,
                weight: 1,
            },
            numerator: 1,
            denominator: 1000,
        })]
    );
}

// ---------------------------------------------------------------------------
// Backends, timeouts, retries.

#[test]
fn backend_refs() {
    let backends = |items: &str| rule(&format!("backendRefs:\n{items}"));
    fails_with_prefix(
        &backends("            - {port: 80}\n"),
        7,
        16,
        "missing field `name`",
    );
    fails(
        &backends("            - {name: web, port: 80, kind: Deployment}\n"),
        7,
        43,
        "invalid kind `Deployment`: only Service backends are supported",
    );
    fails(
        &backends("            - {name: web, port: 80, group: apps}\n"),
        7,
        44,
        "invalid group `apps`: only Service backends are supported",
    );
    fails(
        &backends("            - {name: web, weight: 1}\n"),
        7,
        15,
        "port is required for Service backends",
    );
    fails(
        &backends("            - name: web-v3\n              port: 80\n"),
        7,
        21,
        "service `default/web-v3` is not defined under services",
    );
    fails(
        &backends("            - {name: api, port: 8080}\n"),
        7,
        22,
        "service `default/api` is not defined under services",
    );
    fails(
        &backends("            - {name: api, namespace: prod, port: 80}\n"),
        7,
        50,
        "port 80 is not a port of service `prod/api` (its ports: 8080)",
    );
    fails(
        &backends("            - {name: web, port: 80, weight: 1000001}\n"),
        7,
        45,
        "weight 1000001 is out of range 0..=1000000",
    );
    fails(
        &backends("            - {name: web, port: 80, weight: -1}\n"),
        7,
        45,
        "invalid weight `-1`: expected a whole number in 0..=1000000",
    );
    fails(
        &backends(
            "            - name: web\n              port: 80\n              filters:\n                - type: RequestHeaderModifier\n",
        ),
        10,
        17,
        "backendRefs[].filters are not supported; put filters on the rule",
    );
    // An empty list is harmless.
    ok(&backends(
        "            - {name: web, port: 80, filters: []}\n",
    ));
    let many: String = (0..17)
        .map(|_| "            - {name: web, port: 80}\n")
        .collect();
    fails(
        &backends(&many),
        23,
        15,
        "too many backendRefs: at most 16 per rule",
    );
}

#[test]
fn timeout_errors() {
    fails(
        &rule("timeouts: {request: 2s, backendRequest: 3s}\n"),
        6,
        51,
        "backendRequest 3s is longer than the request timeout 2s",
    );
    fails(
        &rule("timeouts: {request: 2}\n"),
        6,
        31,
        "invalid request `2`: expected a whole number and a unit ms, s, m or h, such as 100ms or 2s",
    );
    fails(
        &rule("timeouts: {backendRequest: 25h}\n"),
        6,
        38,
        "backendRequest 25h is out of range 1ms..=24h (0s means no timeout)",
    );
    fails(
        &grpc_rule("timeouts: {request: 1d}\n"),
        6,
        31,
        "invalid request `1d`: expected a whole number and a unit ms, s, m or h, such as 100ms or 2s",
    );
}

#[test]
fn retry_errors() {
    fails(
        &rule("retry: {attempts: 11}\n"),
        6,
        29,
        "attempts 11 is out of range 0..=10",
    );
    fails(
        &rule("retry: {backoff: 0ms}\n"),
        6,
        28,
        "backoff 0ms is out of range 1ms..=60s",
    );
    fails(
        &rule("retry: {backoff: 2m}\n"),
        6,
        28,
        "backoff 2m is out of range 1ms..=60s",
    );
    fails(
        &rule("retry: {codes: [503, 302]}\n"),
        6,
        32,
        "retry code 302 is out of range 400..=599",
    );
    fails(
        &rule("retry: {codes: [503, 5xx]}\n"),
        6,
        32,
        "invalid retry code `5xx`: expected a whole number in 400..=599",
    );
    fails(
        &grpc_rule("retry: {codes: [503, 504, 503]}\n"),
        6,
        37,
        "duplicate retry code 503",
    );
    fails_with_prefix(&rule("retry: {reset: maybe}\n"), 6, 26, "invalid");
}

// ---------------------------------------------------------------------------
// GRPCRoute matches.

#[test]
fn grpc_method_errors() {
    let method = |m: &str| grpc_rule(&format!("matches: [{{method: {m}}}]\n"));
    fails(
        &method("{type: Exact}"),
        6,
        30,
        "a gRPC method match needs `service`, `method` or both",
    );
    fails(
        &method("{type: Prefix, service: a}"),
        6,
        37,
        "invalid method match type `Prefix`: expected Exact or RegularExpression",
    );
    for bad in ["hello world", "1abc", "a..b", ".a", "a.", "a/b"] {
        fails(
            &method(&format!("{{service: '{bad}'}}")),
            6,
            40,
            &format!(
                "invalid gRPC service `{bad}`: expected identifiers ([A-Za-z_][A-Za-z0-9_]*) separated by '.', such as helloworld.Greeter"
            ),
        );
    }
    for bad in ["Say.Hello", "9x", "a-b", ""] {
        fails(
            &method(&format!("{{method: '{bad}'}}")),
            6,
            39,
            &format!(
                "invalid gRPC method `{bad}`: expected an identifier ([A-Za-z_][A-Za-z0-9_]*), such as SayHello"
            ),
        );
    }
    fails(
        &method("{type: RegularExpression, service: '(', method: x}"),
        6,
        65,
        "invalid regular expression `(`: unclosed group",
    );
    fails(
        &method("{type: RegularExpression, method: '+'}"),
        6,
        64,
        "invalid regular expression `+`: repetition operator missing expression",
    );
    fails(
        &grpc_rule("matches: [{headers: [{name: 'a b', value: c}]}]\n"),
        6,
        39,
        "invalid header name `a b`: use 1 or more HTTP token characters (letters, digits and !#$%&'*+-.^_`|~)",
    );
    fails(
        &grpc("        - backendRefs: [{name: greeter, port: 50052}]\n"),
        6,
        47,
        "port 50052 is not a port of service `default/greeter` (its ports: 50051)",
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
