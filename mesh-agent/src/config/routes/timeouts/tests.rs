//! Tests of the timeouts and retries of rules.

use std::time::Duration;

use crate::config::routes::test_support::*;
use crate::config::*;

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
