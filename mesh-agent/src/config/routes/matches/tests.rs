//! Tests of the matches of HTTPRoute and GRPCRoute rules.

use crate::config::routes::test_support::*;
use crate::config::*;

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

// ---------------------------------------------------------------------------
// Path, header and query parameter matches.

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
