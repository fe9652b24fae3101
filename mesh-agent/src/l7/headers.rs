//! Header handling between the client and the upstream: hop-by-hop headers (RFC 9110
//! section 7.6.1) stay on their hop, and the request target is rewritten for the upstream's
//! HTTP version. Everything else, trace context included (traceparent, tracestate, b3,
//! x-b3-*), passes untouched.

use http::{
    HeaderMap, HeaderValue, Uri, Version,
    header::{self, HeaderName},
    uri::{Authority, PathAndQuery, Scheme},
};

/// Headers that describe one connection, never the message (RFC 9110 7.6.1, plus the
/// non-standard Proxy-Connection and Keep-Alive that HTTP/1.0 era clients still send).
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes hop-by-hop headers, including those the Connection header names. `TE: trailers`
/// survives because gRPC needs it end to end (and HTTP/2 allows exactly that value).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        if *name != header::TE {
            headers.remove(name);
        }
    }
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` plus `Upgrade`),
/// e.g. `websocket`. `h2c` is not passed on: the agent already speaks HTTP/2 to backends where
/// the port says so, and the upgrade would bypass routing.
pub fn upgrade_protocol(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = parts.headers.get(header::UPGRADE)?;
    let h2c = protocol
        .to_str()
        .is_ok_and(|p| p.trim().eq_ignore_ascii_case("h2c"));
    (asks && !h2c).then(|| protocol.clone())
}

/// Shapes the request target for the upstream's HTTP version. HTTP/1.1: origin-form URI and a
/// Host header. HTTP/2: absolute URI (for :scheme and :authority) and no Host header. The
/// authority is the one the client used, so virtual hosting at the backend keeps working;
/// `fallback` (the endpoint address) is used only when the client sent none.
pub fn set_upstream_target(
    uri: &mut Uri,
    headers: &mut HeaderMap,
    version: &mut Version,
    upstream_h2: bool,
    fallback: &str,
) {
    let authority: Option<String> = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    let authority = authority.unwrap_or_else(|| fallback.to_owned());
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if upstream_h2 {
        headers.remove(header::HOST);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Authority::try_from(authority.as_str())
            .or_else(|_| Authority::try_from(fallback))
            .ok();
        parts.path_and_query = Some(path);
        if let Ok(u) = Uri::from_parts(parts) {
            *uri = u;
        }
        *version = Version::HTTP_2;
    } else {
        if let Ok(host) = HeaderValue::from_str(&authority) {
            headers.insert(header::HOST, host);
        }
        *uri = Uri::from(path);
        *version = Version::HTTP_11;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_and_trace_headers_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("te", HeaderValue::from_static("gzip, trailers"));
        h.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        h.insert("tracestate", HeaderValue::from_static("a=b"));
        h.insert("b3", HeaderValue::from_static("1-2-1"));
        h.insert("x-b3-traceid", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        for gone in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "x-private",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["traceparent"], "00-abc-def-01");
        assert_eq!(h["tracestate"], "a=b");
        assert_eq!(h["b3"], "1-2-1");
        assert_eq!(h["x-b3-traceid"], "1");
    }

    #[test]
    fn upgrades_are_recognised_except_h2c() {
        let parts = |connection: &str, upgrade: &str, version| {
            let mut r = http::Request::new(());
            *r.version_mut() = version;
            r.headers_mut()
                .insert("connection", HeaderValue::from_str(connection).unwrap());
            r.headers_mut()
                .insert("upgrade", HeaderValue::from_str(upgrade).unwrap());
            r.into_parts().0
        };
        let p = parts("keep-alive, Upgrade", "websocket", Version::HTTP_11);
        assert_eq!(upgrade_protocol(&p).unwrap(), "websocket");
        assert!(upgrade_protocol(&parts("Upgrade", "h2c", Version::HTTP_11)).is_none());
        assert!(upgrade_protocol(&parts("keep-alive", "websocket", Version::HTTP_11)).is_none());
        assert!(upgrade_protocol(&parts("upgrade", "websocket", Version::HTTP_10)).is_none());
    }

    #[test]
    fn te_without_trailers_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn upstream_target_per_version() {
        let mut uri: Uri = "/a?b=1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("web:80"));
        let mut v = Version::HTTP_11;
        set_upstream_target(&mut uri, &mut h, &mut v, true, "10.0.0.1:8080");
        assert_eq!(uri.to_string(), "http://web:80/a?b=1");
        assert!(!h.contains_key("host"));
        assert_eq!(v, Version::HTTP_2);

        let mut uri: Uri = "http://web/a".parse().unwrap();
        let mut h = HeaderMap::new();
        let mut v = Version::HTTP_2;
        set_upstream_target(&mut uri, &mut h, &mut v, false, "10.0.0.1:8080");
        assert_eq!(uri.to_string(), "/a");
        assert_eq!(h["host"], "web");
        assert_eq!(v, Version::HTTP_11);

        let mut uri: Uri = "/".parse().unwrap();
        let mut h = HeaderMap::new();
        set_upstream_target(&mut uri, &mut h, &mut v, false, "10.0.0.1:8080");
        assert_eq!(h["host"], "10.0.0.1:8080");
    }
}
