//! Hostnames of requests and routes: splitting `host:port`, and Gateway API `hostnames`
//! matching with its precedence (exact before wildcard, longer before shorter).

/// How specifically a route's `hostnames` match a request's host; greater wins.
///
/// The derived order compares the variant first (a route without hostnames loses to any
/// route with a matching wildcard, which loses to any route with a matching exact name), then
/// the number of characters of the matching hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostScore {
    /// The route has no hostnames: it applies to every host.
    AnyHost,
    /// A `*.suffix` hostname matched; its length in characters.
    Wildcard(usize),
    /// An exact hostname matched; its length in characters.
    Exact(usize),
}

/// The best score of `hostnames` for `host`, or `None` when the route does not apply to
/// this host (it has hostnames and none matches, or the request has no host).
pub fn route_host_score(hostnames: &[String], host: Option<&str>) -> Option<HostScore> {
    if hostnames.is_empty() {
        return Some(HostScore::AnyHost);
    }
    let host = trim_root_dot(host?);
    hostnames
        .iter()
        .filter_map(|pattern| hostname_score(pattern, host))
        .max()
}

/// The score of one route hostname against a request host, if it matches.
///
/// Comparison ignores ASCII case (the checker lower-cases route hostnames, but the request's
/// host can be in any case). `*.example.com` matches `a.example.com` and `a.b.example.com`
/// (Gateway API: the wildcard covers one or more labels) but not `example.com`.
pub fn hostname_score(pattern: &str, host: &str) -> Option<HostScore> {
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            let matches = host.len() > suffix.len()
                && host.as_bytes()[host.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes());
            matches.then_some(HostScore::Wildcard(pattern.len()))
        }
        None => pattern
            .eq_ignore_ascii_case(host)
            .then_some(HostScore::Exact(pattern.len())),
    }
}

/// `example.com.` (fully qualified, with the root label) names the same host as
/// `example.com`; route hostnames never carry the dot.
fn trim_root_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// Splits an authority or `Host` value into host and port text: `[::1]:80` gives `[::1]` and
/// `80`, `example.com` gives no port. The port is only split off when it is all digits, so
/// that garbage stays in the host (where it matches no route) instead of being dropped.
pub fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let (host, rest) = authority.split_at(end + 1);
                (host, rest.strip_prefix(':'))
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port))
            if !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (host, Some(port))
        }
        _ => (authority, None),
    }
}

/// The host a request is addressed to, without port: the URI authority (absolute-form
/// HTTP/1 requests and HTTP/2 `:authority`, which take precedence per RFC 9112 §3.2.2), else
/// the `Host` header. `None` when neither is present or the header is not visible ASCII.
pub fn request_host(parts: &http::request::Parts) -> Option<&str> {
    request_authority(parts).map(|(host, _)| host)
}

/// Host and port of the request's authority (see [`request_host`]); the port is `None` when
/// absent or not a valid port number.
pub fn request_authority(parts: &http::request::Parts) -> Option<(&str, Option<u16>)> {
    if let Some(authority) = parts.uri.authority() {
        return Some((authority.host(), authority.port_u16()));
    }
    let value = parts.headers.get(http::header::HOST)?.to_str().ok()?;
    let (host, port) = split_host_port(value);
    if host.is_empty() {
        return None;
    }
    Some((host, port.and_then(|p| p.parse().ok())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_hostnames() {
        let cases = [
            ("example.com", "example.com", Some(HostScore::Exact(11))),
            ("example.com", "EXAMPLE.com", Some(HostScore::Exact(11))),
            ("example.com", "a.example.com", None),
            (
                "*.example.com",
                "a.example.com",
                Some(HostScore::Wildcard(13)),
            ),
            (
                "*.example.com",
                "a.b.example.com",
                Some(HostScore::Wildcard(13)),
            ),
            (
                "*.example.com",
                "A.Example.COM",
                Some(HostScore::Wildcard(13)),
            ),
            ("*.example.com", "example.com", None),
            ("*.example.com", "aexample.com", None),
            ("*.example.com", ".example.com", None),
        ];
        for (pattern, host, expected) in cases {
            assert_eq!(
                hostname_score(pattern, host),
                expected,
                "{pattern} vs {host}"
            );
        }
    }

    #[test]
    fn route_score_takes_the_best_matching_hostname() {
        let names = vec!["*.example.com".to_string(), "a.example.com".to_string()];
        assert_eq!(
            route_host_score(&names, Some("a.example.com")),
            Some(HostScore::Exact(13))
        );
        assert_eq!(
            route_host_score(&names, Some("b.example.com.")),
            Some(HostScore::Wildcard(13))
        );
        assert_eq!(route_host_score(&names, Some("example.org")), None);
        assert_eq!(route_host_score(&names, None), None);
        assert_eq!(route_host_score(&[], None), Some(HostScore::AnyHost));
        assert!(HostScore::Exact(1) > HostScore::Wildcard(100));
        assert!(HostScore::Wildcard(1) > HostScore::AnyHost);
        assert!(HostScore::Exact(12) > HostScore::Exact(11));
    }

    #[test]
    fn splits_host_and_port() {
        let cases = [
            ("example.com", ("example.com", None)),
            ("example.com:8080", ("example.com", Some("8080"))),
            ("[::1]:80", ("[::1]", Some("80"))),
            ("[::1]", ("[::1]", None)),
            ("[::1", ("[::1", None)),
            ("::1", ("::1", None)),
            ("host:", ("host:", None)),
            ("host:x1", ("host:x1", None)),
        ];
        for (input, expected) in cases {
            assert_eq!(split_host_port(input), expected, "{input}");
        }
    }

    #[test]
    fn request_host_prefers_the_uri_authority() {
        let (mut parts, ()) = http::Request::builder()
            .uri("http://a.example.com:81/x")
            .header("host", "b.example.com")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(request_authority(&parts), Some(("a.example.com", Some(81))));
        parts.uri = "/x".parse().unwrap();
        assert_eq!(request_authority(&parts), Some(("b.example.com", None)));
        parts.headers.insert("host", "[::1]:8080".parse().unwrap());
        assert_eq!(request_authority(&parts), Some(("[::1]", Some(8080))));
        parts.headers.remove("host");
        assert_eq!(request_host(&parts), None);
    }
}
