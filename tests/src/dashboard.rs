//! The Grafana dashboard in deploy/grafana: its panel queries, the substitution of its template
//! variables, and a small PromQL scanner that finds the metric names a query reads.
//!
//! Used by the CI check of the observability assets (tests/tests/observability_assets.rs) and by
//! the end-to-end test that runs every panel query against a real Prometheus.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Template variables a dashboard query may use.
pub const KNOWN_VARIABLES: [&str; 5] = [
    "instance",
    "namespace",
    "service",
    "__rate_interval",
    "datasource",
];

/// Variables that select series; substituted with `.*` (their "All" value).
pub const SELECTOR_VARIABLES: [&str; 3] = ["instance", "namespace", "service"];

/// Every metric the agent exports (the issue 5 contract), as Prometheus sees it: counters with
/// their `_total` suffix, histograms as `_bucket`/`_sum`/`_count`; and Prometheus' own `up`.
pub const CONTRACT_METRICS: &[&str] = &[
    "up",
    // Istio standard metrics.
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
    "istio_requests_total",
    "istio_request_duration_milliseconds_bucket",
    "istio_request_duration_milliseconds_sum",
    "istio_request_duration_milliseconds_count",
    "istio_request_bytes_bucket",
    "istio_request_bytes_sum",
    "istio_request_bytes_count",
    "istio_response_bytes_bucket",
    "istio_response_bytes_sum",
    "istio_response_bytes_count",
    // The agent's health.
    "mesh_agent_build_info",
    "mesh_agent_ready",
    "mesh_agent_program_runs_total",
    "mesh_agent_program_run_seconds_total",
    "mesh_agent_map_entries",
    "mesh_agent_map_capacity",
    "mesh_agent_policy_drops_total",
    "mesh_agent_ringbuf_lost_events_total",
    "mesh_agent_connection_map_evictions_total",
    "mesh_agent_access_log_dropped_total",
    "mesh_agent_access_log_written_total",
    "mesh_agent_connections_redirected_total",
    "mesh_agent_connections_without_agent_total",
    "mesh_agent_config_reloads_total",
    "mesh_agent_certificate_expiration_timestamp_seconds",
    "mesh_agent_ca_expiration_timestamp_seconds",
    "mesh_agent_tunnel_handshake_failures_total",
    "mesh_agent_authz_denied_total",
];

/// Whether `name` is a metric the agent (or Prometheus, for `up`) exports.
pub fn is_contract_metric(name: &str) -> bool {
    CONTRACT_METRICS.contains(&name)
}

/// The workspace's root directory (the parent of the tests crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

/// deploy/grafana/mesh-agent-dashboard.json in the workspace.
pub fn dashboard_path() -> PathBuf {
    workspace_root().join("deploy/grafana/mesh-agent-dashboard.json")
}

/// Reads and parses a dashboard JSON file.
pub fn load(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every panel of the dashboard that is not a row, including the panels nested in collapsed
/// rows, in dashboard order.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            if panel["type"] == "row" {
                walk(&panel["panels"], out);
            } else {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `(panel title, expr)` for every target of every panel of the dashboard at `path` that has a
/// non-empty `expr`, in dashboard order. The expressions still contain the template variables;
/// see [`substitute`].
pub fn panel_queries(path: &Path) -> Result<Vec<(String, String)>> {
    let dashboard = load(path)?;
    if !dashboard["panels"].is_array() {
        bail!("{}: no \"panels\" array", path.display());
    }
    let mut out = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str()
                && !expr.trim().is_empty()
            {
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    Ok(out)
}

/// The expression Grafana sends when every selector variable is "All" and the rate interval is
/// one minute: `$instance`, `$namespace`, `$service` (also written `${...}`) become `.*` and
/// `$__rate_interval` becomes `1m`.
pub fn substitute(expr: &str) -> String {
    let mut out = expr
        .replace("${__rate_interval}", "1m")
        .replace("$__rate_interval", "1m");
    for var in SELECTOR_VARIABLES {
        out = out
            .replace(&format!("${{{var}}}"), ".*")
            .replace(&format!("${var}"), ".*");
    }
    out
}

/// Names of the template variables `expr` refers to (`$name` or `${name}`).
pub fn variables(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let braced = bytes.get(i + 1) == Some(&b'{');
            let start = if braced { i + 2 } else { i + 1 };
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            out.insert(expr[start..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Words of PromQL that are neither metric names nor followed by `(`.
const KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
];
/// Aggregation operators: followed by `(` or by a `by (...)` / `without (...)` clause.
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
/// Modifiers followed by a parenthesised list of label names.
const LABEL_LIST_MODIFIERS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: the bare identifiers that are not functions,
/// aggregations, keywords or label names (label matchers, range selectors and string literals
/// are skipped). A selector written only with braces (`{__name__="x"}`) is not seen; the
/// dashboard does not use that form.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    // Blank out string literals and the insides of `{...}` and `[...]`.
    let mut cleaned = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    let mut depth_brace = 0usize;
    let mut depth_bracket = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let quote = c;
                while let Some(d) = chars.next() {
                    if d == '\\' && quote != '`' {
                        chars.next();
                    } else if d == quote {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '{' => {
                depth_brace += 1;
                cleaned.push(' ');
            }
            '}' => {
                depth_brace = depth_brace.saturating_sub(1);
                cleaned.push(' ');
            }
            '[' => {
                depth_bracket += 1;
                cleaned.push(' ');
            }
            ']' => {
                depth_bracket = depth_bracket.saturating_sub(1);
                cleaned.push(' ');
            }
            _ if depth_brace > 0 || depth_bracket > 0 => cleaned.push(' '),
            // Comments run to the end of the line.
            '#' => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            _ => cleaned.push(c),
        }
    }

    let bytes = cleaned.as_bytes();
    let next_non_space = |mut j: usize| {
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            // Numbers and durations (1m, 0.5, 1e3, 0x1f).
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &cleaned[start..i];
            let lower = word.to_ascii_lowercase();
            let after = next_non_space(i);
            if LABEL_LIST_MODIFIERS.contains(&lower.as_str()) {
                if bytes.get(after) == Some(&b'(') {
                    i = after;
                    while i < bytes.len() && bytes[i] != b')' {
                        i += 1;
                    }
                }
            } else if KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
                || bytes.get(after) == Some(&b'(')
            {
                // A keyword, an aggregation or a function call.
            } else {
                out.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn metric_names_skip_functions_labels_and_ranges() {
        assert_eq!(
            names(
                r#"sum by (destination_service, le) (rate(istio_request_duration_milliseconds_bucket{reporter="source", instance=~"$instance"}[$__rate_interval]))"#
            ),
            ["istio_request_duration_milliseconds_bucket"]
        );
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum without (pod) (rate(a_bucket[5m] offset 1h))) / on (x) group_left (y) b and c unless d > bool 1e3"#
            ),
            ["a_bucket", "b", "c", "d"]
        );
        assert_eq!(
            names("min by (spiffe_id) (m{x=\"a}b\"}) - time() < 6 * 3600"),
            ["m"]
        );
        assert_eq!(names("sum(rate(x[1m])) by (job) > Inf"), ["x"]);
        assert_eq!(names("absent(up{job=~\"mesh-agent.*\"})"), ["up"]);
        assert_eq!(names("vector(1)"), Vec::<String>::new());
    }

    #[test]
    fn variables_found_in_both_spellings() {
        let vars = variables(r#"x{a=~"$instance", b=~"${service}"}[$__rate_interval]"#);
        assert_eq!(
            vars.into_iter().collect::<Vec<_>>(),
            ["__rate_interval", "instance", "service"]
        );
    }

    #[test]
    fn substitute_gives_all_values_and_one_minute() {
        assert_eq!(
            substitute(
                r#"rate(x{instance=~"$instance", ns=~"${namespace}", s=~"$service"}[$__rate_interval])"#
            ),
            r#"rate(x{instance=~".*", ns=~".*", s=~".*"}[1m])"#
        );
    }

    #[test]
    fn contract_metrics_are_known() {
        assert!(is_contract_metric("istio_requests_total"));
        assert!(is_contract_metric("mesh_agent_ready"));
        assert!(is_contract_metric("up"));
        assert!(!is_contract_metric("istio_requests"));
        assert!(!is_contract_metric("istio_request_duration_milliseconds"));
        assert!(!is_contract_metric("node_cpu_seconds_total"));
    }
}
