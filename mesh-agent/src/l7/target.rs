//! What a request asked for (method, authority, path), as the access log prints it.

use http::{
    HeaderValue, Method,
    request::Parts,
    uri::{Authority, PathAndQuery},
};

/// Method, authority and path of a request, kept as the request's own values: cloning them
/// shares the buffers hyper parsed them into instead of copying the text.
#[derive(Debug, Clone)]
pub struct RequestTarget {
    method: Method,
    authority: Option<AuthorityText>,
    path: Option<PathAndQuery>,
}

#[derive(Debug, Clone)]
enum AuthorityText {
    /// HTTP/2's `:authority`, or an absolute-form HTTP/1.1 target.
    Uri(Authority),
    /// HTTP/1.1's Host header.
    Host(HeaderValue),
}

impl RequestTarget {
    pub fn of(parts: &Parts) -> RequestTarget {
        let authority = match parts.uri.authority() {
            Some(a) => Some(AuthorityText::Uri(a.clone())),
            None => parts
                .headers
                .get(http::header::HOST)
                .cloned()
                .map(AuthorityText::Host),
        };
        RequestTarget {
            method: parts.method.clone(),
            authority,
            path: parts.uri.path_and_query().cloned(),
        }
    }

    /// From the pieces of an HTTP/1.x request head (the destination's framing pass).
    pub fn from_h1(
        method: Method,
        path: Option<PathAndQuery>,
        host: Option<HeaderValue>,
    ) -> RequestTarget {
        RequestTarget {
            method,
            authority: host.map(AuthorityText::Host),
            path,
        }
    }

    pub fn method(&self) -> &str {
        self.method.as_str()
    }

    /// The authority the client asked for; empty when it sent none (or a Host header that is
    /// not text).
    pub fn authority(&self) -> &str {
        match &self.authority {
            Some(AuthorityText::Uri(a)) => a.as_str(),
            Some(AuthorityText::Host(h)) => h.to_str().unwrap_or(""),
            None => "",
        }
    }

    pub fn path(&self) -> &str {
        self.path.as_ref().map_or("/", PathAndQuery::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(request: http::Request<()>) -> Parts {
        request.into_parts().0
    }

    #[test]
    fn target_of_an_http1_request_uses_the_host_header() {
        let p = parts(
            http::Request::get("/api/items?page=2")
                .header("host", "web.shop:80")
                .body(())
                .unwrap(),
        );
        let t = RequestTarget::of(&p);
        assert_eq!(t.method(), "GET");
        assert_eq!(t.authority(), "web.shop:80");
        assert_eq!(t.path(), "/api/items?page=2");
    }

    #[test]
    fn target_of_an_http2_request_uses_the_authority() {
        let p = parts(
            http::Request::post("http://web.shop/x")
                .header("host", "ignored")
                .body(())
                .unwrap(),
        );
        let t = RequestTarget::of(&p);
        assert_eq!(t.method(), "POST");
        assert_eq!(t.authority(), "web.shop");
        assert_eq!(t.path(), "/x");
    }

    #[test]
    fn missing_parts_read_as_empty_authority_and_root_path() {
        let mut p = parts(http::Request::get("*").body(()).unwrap());
        p.uri = http::Uri::default();
        let t = RequestTarget::of(&p);
        assert_eq!(t.authority(), "");
        assert_eq!(t.path(), "/");
    }
}
