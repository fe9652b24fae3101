//! Tests of the parentRefs and backendRefs of routes.

use crate::config::routes::test_support::*;

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

// ---------------------------------------------------------------------------
// Backends.

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
