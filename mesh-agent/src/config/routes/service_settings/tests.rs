//! Tests of the L7 keys of services: port protocols, load balancing, outlier detection.

use std::time::Duration;

use crate::config::routes::test_support::*;
use crate::config::*;

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
