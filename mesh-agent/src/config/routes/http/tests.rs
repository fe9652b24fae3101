//! Tests of the `http:` section.

use std::time::Duration;

use crate::config::routes::test_support::*;
use crate::config::*;

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
