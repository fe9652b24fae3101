//! Tests of the filters of HTTPRoute and GRPCRoute rules.

use crate::config::routes::test_support::*;
use crate::config::*;

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
