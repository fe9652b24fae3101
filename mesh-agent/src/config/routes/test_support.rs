//! Helpers of the routes tests: a base configuration with the services that routes refer
//! to, a parser that expects an error at an exact position, and builders of routes and rules
//! whose lines are known.

use crate::config::load::{PathChecks, parse};
use crate::config::{Config, ConfigErrors, HttpRouteRule};

/// Services that the routes of the tests refer to, after a node whose paths are not checked.
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

pub(super) fn base_lines() -> u64 {
    BASE.lines().count() as u64
}

pub(super) fn parse_rest(rest: &str) -> Result<Config, ConfigErrors> {
    parse(&format!("{BASE}{rest}"), "test.yaml", PathChecks::Skipped)
}

/// Parses BASE + `rest`, which must be valid.
pub(super) fn ok(rest: &str) -> Config {
    parse_rest(rest).unwrap_or_else(|e| panic!("{e}\n{rest}"))
}

pub(super) fn error(rest: &str) -> ConfigErrors {
    match parse_rest(rest) {
        Ok(cfg) => panic!("expected an error, got {cfg:?}\n{rest}"),
        Err(e) => e,
    }
}

/// Expects the error `reason` at `line` (1-based, within `rest`) and `column`.
#[track_caller]
pub(super) fn fails(rest: &str, line: u64, column: u64, reason: &str) {
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
pub(super) fn fails_with_prefix(rest: &str, line: u64, column: u64, prefix: &str) {
    let e = error(rest);
    let shown = e.to_string();
    let expected = format!("test.yaml:{}:{column}: {prefix}", line + base_lines());
    assert!(shown.starts_with(&expected), "{shown}\nexpected {expected}");
}

/// An HTTPRoute on service web whose `rules:` list is `rules` (indented by 8). Line 6 of the
/// result is the first line of `rules`.
pub(super) fn http(rules: &str) -> String {
    format!(
        "http_routes:\n  - name: r\n    spec:\n      parentRefs: [{{name: web}}]\n      rules:\n{rules}"
    )
}

/// Same for a GRPCRoute on service greeter.
pub(super) fn grpc(rules: &str) -> String {
    format!(
        "grpc_routes:\n  - name: g\n    spec:\n      parentRefs: [{{name: greeter, port: 50051}}]\n      rules:\n{rules}"
    )
}

/// A route with one rule `body` (indented by 10, after `        - `). Line 6 of the result
/// is the first line of `body`.
pub(super) fn rule(body: &str) -> String {
    http(&format!("        - {}", body.trim_start()))
}

pub(super) fn grpc_rule(body: &str) -> String {
    grpc(&format!("        - {}", body.trim_start()))
}

pub(super) fn first_http_rule(cfg: &Config) -> &HttpRouteRule {
    &cfg.http_routes[0].rules[0]
}
