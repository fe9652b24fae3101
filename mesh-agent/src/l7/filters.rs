//! Gateway API filters applied to a matched request: header modifiers, URL rewrites and
//! redirects. (RequestMirror is the proxy's business: see `CompiledRule::mirrors`.)
//!
//! Config values were validated by the checker; should one still not make a valid header or
//! URI, the change is skipped with a warning rather than failing the request.

use http::header::{HOST, LOCATION};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Uri, Version};

use crate::config::{HeaderModifier, HttpFilter, PathModifier, RequestRedirect, UrlRewrite};
use crate::routing::hostname::{request_authority, split_host_port};
use crate::routing::matcher::CompiledRule;

/// Applies RequestHeaderModifier then URLRewrite (in filter order) to a request about to go
/// to a backend. `matched_prefix` comes from `RouteMatch`.
///
/// URLRewrite `hostname` replaces the host of the `Host` header (always set for HTTP/1) and
/// of the URI authority when there is one, keeping their ports: the hostname names a host,
/// and the backend is still reached on the same port. `ReplacePrefixMatch` replaces the
/// matched prefix on a segment boundary; the query string is kept.
pub fn apply_request_filters(
    rule: &CompiledRule,
    matched_prefix: Option<&str>,
    parts: &mut http::request::Parts,
) {
    for filter in &rule.filters {
        match filter {
            HttpFilter::RequestHeaderModifier(m) => modify_headers(m, &mut parts.headers),
            HttpFilter::UrlRewrite(r) => rewrite_url(r, matched_prefix, parts),
            _ => {}
        }
    }
}

/// Applies ResponseHeaderModifier filters to a response from a backend.
pub fn apply_response_filters(rule: &CompiledRule, headers: &mut HeaderMap) {
    for filter in &rule.filters {
        if let HttpFilter::ResponseHeaderModifier(m) = filter {
            modify_headers(m, headers);
        }
    }
}

/// Header modifier semantics (Gateway API): `set` replaces all values of a header, `add`
/// appends a value (the header then has one more value), `remove` deletes every value.
/// Applied in that order.
pub fn modify_headers(modifier: &HeaderModifier, headers: &mut HeaderMap) {
    for (name, value) in &modifier.set {
        if let Some((name, value)) = header(name, value) {
            // Only fails past HeaderMap's capacity of 32768 entries.
            if headers.try_insert(name, value).is_err() {
                tracing::warn!("header map full; RequestHeaderModifier set skipped");
            }
        }
    }
    for (name, value) in &modifier.add {
        if let Some((name, value)) = header(name, value)
            && headers.try_append(name, value).is_err()
        {
            tracing::warn!("header map full; RequestHeaderModifier add skipped");
        }
    }
    for name in &modifier.remove {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => {
                headers.remove(name);
            }
            Err(_) => warn_invalid("header name", name),
        }
    }
}

fn header(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
        warn_invalid("header name", name);
        return None;
    };
    let Ok(value) = HeaderValue::from_str(value) else {
        warn_invalid("header value", value);
        return None;
    };
    Some((name, value))
}

fn warn_invalid(what: &str, value: &str) {
    tracing::warn!(what, value, "filter produces an invalid value; skipped");
}

fn rewrite_url(
    rewrite: &UrlRewrite,
    matched_prefix: Option<&str>,
    parts: &mut http::request::Parts,
) {
    if let Some(hostname) = &rewrite.hostname {
        rewrite_host(hostname, parts);
    }
    if let Some(modifier) = &rewrite.path {
        let path = modified_path(modifier, matched_prefix, parts.uri.path());
        match with_path(&parts.uri, &path) {
            Some(uri) => parts.uri = uri,
            None => warn_invalid("path", &path),
        }
    }
}

fn rewrite_host(hostname: &str, parts: &mut http::request::Parts) {
    let old_header_port = parts
        .headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| split_host_port(v).1.map(str::to_owned));
    // HTTP/2 requests carry the authority in the URI and need no Host header.
    let wants_header = parts.headers.contains_key(HOST) || parts.version <= Version::HTTP_11;
    if wants_header {
        let value = with_port(hostname, old_header_port.as_deref());
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                parts.headers.insert(HOST, v);
            }
            Err(_) => warn_invalid("host", &value),
        }
    }
    if let Some(authority) = parts.uri.authority() {
        let value = with_port(hostname, authority.port().as_ref().map(|p| p.as_str()));
        match with_authority(&parts.uri, &value) {
            Some(uri) => parts.uri = uri,
            None => warn_invalid("authority", &value),
        }
    }
}

fn with_port(host: &str, port: Option<&str>) -> String {
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// `uri` with another authority (the scheme, path and query kept).
fn with_authority(uri: &Uri, authority: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(Authority::try_from(authority).ok()?);
    Uri::from_parts(parts).ok()
}

/// `uri` with another path (the scheme, authority and query kept).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

/// The path after a ReplaceFullPath or ReplacePrefixMatch modifier.
pub fn modified_path(modifier: &PathModifier, matched_prefix: Option<&str>, path: &str) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(full) => full.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            // The checker only allows ReplacePrefixMatch on PathPrefix matches; without one
            // the rule matched as `PathPrefix /`.
            let prefix = matched_prefix.unwrap_or("/");
            replace_prefix(path, prefix, replacement).unwrap_or_else(|| path.to_string())
        }
    }
}

/// Replaces `prefix` at the start of `path` by `replacement` on a segment boundary, trailing
/// slashes of both ignored (Gateway API's table: `/foo/bar` with prefix `/foo` and
/// replacement `/xyz` or `/xyz/` gives `/xyz/bar`; `/foo/` gives `/xyz/`; replacing by `/`
/// or the empty string gives `/bar`, and `/` for `/foo`). `None` when `prefix` does not
/// match `path` on a segment boundary.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> Option<String> {
    let prefix = prefix.trim_end_matches('/');
    let rest = match prefix.is_empty() {
        // `/` matches every path; a path not starting with `/` (`*`) keeps its text.
        true => path,
        false => path
            .strip_prefix(prefix)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))?,
    };
    let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
    out.push_str(replacement.trim_end_matches('/'));
    if !rest.is_empty() && !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// The redirect response (no body) for a RequestRedirect, per Gateway API:
/// - scheme: the filter's, else the request's (`http` unless the URI is absolute);
/// - hostname: the filter's, else the request's host;
/// - port: the filter's; else the scheme's well-known port when the filter sets a scheme;
///   else the port the request was addressed to (the mesh's "listener port"); omitted when
///   it is the well-known port of the scheme (80 for http, 443 for https);
/// - path: ReplaceFullPath / ReplacePrefixMatch, else the request's; the query is kept.
///
/// A request without any host gets a relative Location (the path and query only) unless the
/// filter sets a hostname.
pub fn redirect_response(
    redirect: &RequestRedirect,
    matched_prefix: Option<&str>,
    parts: &http::request::Parts,
) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(redirect.status_code)
        .ok()
        .filter(StatusCode::is_redirection)
        .unwrap_or(StatusCode::FOUND);
    let location = redirect_location(redirect, matched_prefix, parts);
    match HeaderValue::try_from(&location) {
        Ok(v) => {
            response.headers_mut().insert(LOCATION, v);
        }
        Err(_) => warn_invalid("location", &location),
    }
    response
}

/// The `Location` of [`redirect_response`].
pub fn redirect_location(
    redirect: &RequestRedirect,
    matched_prefix: Option<&str>,
    parts: &http::request::Parts,
) -> String {
    let path = match &redirect.path {
        Some(modifier) => modified_path(modifier, matched_prefix, parts.uri.path()),
        None => parts.uri.path().to_string(),
    };
    let mut location = String::new();
    let authority = request_authority(parts);
    let host = redirect.hostname.as_deref().or(authority.map(|(h, _)| h));
    if let Some(host) = host {
        let scheme = redirect
            .scheme
            .as_deref()
            .or(parts.uri.scheme_str())
            .unwrap_or("http")
            .to_ascii_lowercase();
        let port = match (redirect.port, &redirect.scheme) {
            (Some(port), _) => Some(port),
            (None, Some(_)) => None,
            (None, None) => authority.and_then(|(_, p)| p),
        };
        location.push_str(&scheme);
        location.push_str("://");
        location.push_str(host);
        if let Some(port) = port.filter(|p| Some(*p) != well_known_port(&scheme)) {
            location.push(':');
            location.push_str(&port.to_string());
        }
    }
    location.push_str(&path);
    if let Some(query) = parts.uri.query() {
        location.push('?');
        location.push_str(query);
    }
    location
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_prefix_follows_the_gateway_api_table() {
        // (request path, prefix match, replacement, expected)
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/foo/x", "/foo", "/", "/x"),
            ("/x/y", "/", "/bar", "/bar/x/y"),
            ("/", "/", "/bar", "/bar/"),
            ("*", "/", "/bar", "/bar/*"),
        ];
        for (path, prefix, replacement, expected) in cases {
            assert_eq!(
                replace_prefix(path, prefix, replacement).as_deref(),
                Some(expected),
                "{path} {prefix} {replacement}"
            );
        }
        assert_eq!(replace_prefix("/foobar", "/foo", "/x"), None);
        assert_eq!(replace_prefix("/bar", "/foo", "/x"), None);
    }
}
