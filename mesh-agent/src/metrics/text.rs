//! The Prometheus text format 0.0.4, for scrapers that do not ask for OpenMetrics.
//!
//! prometheus-client encodes OpenMetrics only. The two formats differ, for what the agent
//! emits, in three places: a counter family is named without `_total` in OpenMetrics and with
//! it in Prometheus text; OpenMetrics has `# UNIT` and `# EOF` lines that Prometheus text does
//! not; OpenMetrics types `unknown`/`info`/`stateset`/`gaugehistogram` have no Prometheus
//! spelling and become untyped/gauge/histogram. Exemplars are dropped.

/// Content type of OpenMetrics 1.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's Accept header asks for OpenMetrics (Prometheus sends
/// `application/openmetrics-text;version=1.0.0,...;q=0.5,text/plain;version=0.0.4;q=0.4,...`).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut best: Option<(f32, bool)> = None;
    for part in accept.split(',') {
        let mut fields = part.split(';').map(str::trim);
        let media = fields.next().unwrap_or("").to_ascii_lowercase();
        let q = fields
            .find_map(|f| f.strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let openmetrics = match media.as_str() {
            "application/openmetrics-text" => true,
            "text/plain" | "*/*" | "text/*" => false,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, openmetrics));
        }
    }
    best.is_some_and(|(_, om)| om)
}

/// Rewrites OpenMetrics text (as prometheus-client writes it) into Prometheus text 0.0.4.
pub fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // Held back: its name depends on the type line that follows.
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (family, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_owned(), "gauge"),
                "gaugehistogram" => (name.to_owned(), "histogram"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            if let Some((help_name, text)) = help.take()
                && help_name == name
            {
                out.push_str("# HELP ");
                out.push_str(&family);
                out.push(' ');
                out.push_str(text);
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(&family);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        // A sample; an exemplar follows " # " after the value.
        let sample = match line.find(" # {") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_name_and_eof_goes() {
        let om = "# HELP istio_requests Total requests.\n# TYPE istio_requests counter\nistio_requests_total{a=\"b\"} 3\n# HELP up_time Up.\n# TYPE up_time gauge\n# UNIT up_time seconds\nup_time 1\n# EOF\n";
        let text = openmetrics_to_prometheus(om);
        assert_eq!(
            text,
            "# HELP istio_requests_total Total requests.\n# TYPE istio_requests_total counter\nistio_requests_total{a=\"b\"} 3\n# HELP up_time Up.\n# TYPE up_time gauge\nup_time 1\n"
        );
    }

    #[test]
    fn histograms_pass_unchanged_and_exemplars_are_dropped() {
        let om = "# HELP d Duration.\n# TYPE d histogram\nd_sum 1.0\nd_count 1\nd_bucket{le=\"1.0\"} 1 # {trace_id=\"x\"} 0.5\nd_bucket{le=\"+Inf\"} 1\n# EOF\n";
        let text = openmetrics_to_prometheus(om);
        assert!(text.contains("# TYPE d histogram\n"));
        assert!(text.contains("d_bucket{le=\"1.0\"} 1\n"));
        assert!(!text.contains("trace_id"));
    }

    #[test]
    fn accept_header_negotiation() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some(
            "text/plain;q=0.9,application/openmetrics-text;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
    }
}
