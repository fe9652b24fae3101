//! The `route_request` cargo-fuzz target's harness (and its unit tests): serves the fuzzer's
//! bytes as one HTTP/1.1 connection with hyper's server, as the proxy does, and routes every
//! request hyper parses through a fixed table with prefix, exact, regex, header, query,
//! method, hostname and gRPC rules, then applies the filters or builds the redirect. It lives
//! in the data path because it drives the route table (`routing::matcher`) the way the proxy
//! does, filters included.

use std::convert::Infallible;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{
    BackendRef, GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, HeaderMatch, HeaderModifier,
    HttpFilter, HttpRoute, HttpRouteMatch, HttpRouteRule, ParentRef, PathMatch, PathModifier,
    QueryParamMatch, RequestRedirect, RouteTimeouts, StringMatch, UrlRewrite,
};
use crate::l7::filters;
use crate::routing::matcher::*;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    table: RouteTable,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn run(data: &[u8]) -> Vec<u8> {
    let fixture = FIXTURE.get_or_init(|| Fixture {
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime"),
        table: table(),
    });
    fixture.runtime.block_on(serve(&fixture.table, data))
}

/// One connection: the client half writes `data` then closes its write side, and drains
/// responses concurrently so that pipelined responses cannot fill the pipe and stall.
async fn serve(table: &'static RouteTable, data: &[u8]) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(16 * 1024);
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (parts, _body) = req.into_parts();
        std::future::ready(Ok::<_, Infallible>(route(table, parts)))
    });
    // half_close: the client's EOF comes right after its last request; without it hyper
    // would drop the connection before writing the responses the test looks at.
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = async move {
        let _ = wr.write_all(data).await;
        let _ = wr.shutdown().await;
    };
    let read = async move {
        let mut received = Vec::new();
        let _ = rd.read_to_end(&mut received).await;
        received
    };
    // The connection future owns the server half: when it ends, the reader sees EOF.
    let server = async move {
        let _ = conn.await;
    };
    tokio::join!(server, write, read).2
}

/// What the proxy does with a request head, minus the forwarding.
fn route(table: &RouteTable, mut parts: http::request::Parts) -> http::Response<Empty<Bytes>> {
    let Some(found) = table.find(&RequestHead::from_parts(&parts)) else {
        return status(http::StatusCode::NOT_FOUND);
    };
    if let Some(prefix) = found.matched_prefix {
        let trimmed = prefix.trim_end_matches('/');
        assert!(
            prefix_matches(trimmed, parts.uri.path()),
            "{prefix} {}",
            parts.uri
        );
    }
    if let Some(redirect) = found.rule.redirect() {
        let (head, ()) =
            filters::redirect_response(redirect, found.matched_prefix, &parts).into_parts();
        return http::Response::from_parts(head, Empty::new());
    }
    filters::apply_request_filters(found.rule, found.matched_prefix, &mut parts);
    // The rewritten URI must survive serialization to the backend.
    let reparsed: Result<http::Uri, _> = parts.uri.to_string().parse();
    assert!(
        reparsed.is_ok(),
        "rewritten URI {} does not parse",
        parts.uri
    );
    if found.rule.pick_backend().is_none() {
        return status(http::StatusCode::INTERNAL_SERVER_ERROR);
    }
    let mut response = http::Response::new(Empty::new());
    filters::apply_response_filters(found.rule, response.headers_mut());
    response
}

fn status(code: http::StatusCode) -> http::Response<Empty<Bytes>> {
    let mut response = http::Response::new(Empty::new());
    *response.status_mut() = code;
    response
}

fn backend(name: &str, weight: u32) -> BackendRef {
    BackendRef {
        name: name.into(),
        namespace: "fuzz".into(),
        port: 80,
        weight,
    }
}

fn path(path: PathMatch) -> HttpRouteMatch {
    HttpRouteMatch {
        path,
        headers: Vec::new(),
        query_params: Vec::new(),
        method: None,
    }
}

fn rule(matches: Vec<HttpRouteMatch>, filters: Vec<HttpFilter>) -> HttpRouteRule {
    HttpRouteRule {
        name: None,
        matches,
        filters,
        backend_refs: vec![backend("v1", 90), backend("v2", 10), backend("off", 0)],
        timeouts: RouteTimeouts::default(),
        retry: None,
    }
}

fn regex(value: &str) -> StringMatch {
    StringMatch::RegularExpression(value.into())
}

fn http_rules() -> Vec<HttpRouteRule> {
    let prefix = |v: &str| path(PathMatch::PathPrefix(v.into()));
    let headers = HeaderModifier {
        set: vec![("x-set".into(), "1".into())],
        add: vec![("x-add".into(), "2".into())],
        remove: vec!["x-remove".into()],
    };
    let redirect = |scheme: Option<&str>, port, path| {
        HttpFilter::RequestRedirect(RequestRedirect {
            scheme: scheme.map(str::to_string),
            hostname: None,
            path,
            port,
            status_code: 302,
        })
    };
    vec![
        rule(vec![path(PathMatch::Exact("/exact".into()))], Vec::new()),
        rule(
            vec![HttpRouteMatch {
                headers: vec![HeaderMatch {
                    name: "x-v".into(),
                    value: regex("v[0-9]+"),
                }],
                query_params: vec![QueryParamMatch {
                    name: "q".into(),
                    value: regex("[a-z]*"),
                }],
                method: Some("GET".into()),
                ..prefix("/api/")
            }],
            vec![HttpFilter::RequestHeaderModifier(headers.clone())],
        ),
        rule(
            vec![path(PathMatch::RegularExpression("/re/[^/]+/.*".into()))],
            Vec::new(),
        ),
        rule(
            vec![prefix("/rewrite")],
            vec![HttpFilter::UrlRewrite(UrlRewrite {
                hostname: Some("rewritten.example".into()),
                path: Some(PathModifier::ReplacePrefixMatch("/".into())),
            })],
        ),
        rule(
            vec![prefix("/full")],
            vec![HttpFilter::UrlRewrite(UrlRewrite {
                hostname: None,
                path: Some(PathModifier::ReplaceFullPath("/replaced".into())),
            })],
        ),
        rule(
            vec![prefix("/redirect")],
            vec![redirect(
                Some("https"),
                Some(8443),
                Some(PathModifier::ReplacePrefixMatch("/new".into())),
            )],
        ),
        rule(vec![prefix("/moved/")], vec![redirect(None, None, None)]),
        rule(
            vec![prefix("/")],
            vec![HttpFilter::ResponseHeaderModifier(headers.clone())],
        ),
    ]
}

fn table() -> RouteTable {
    let parent = ParentRef {
        name: "svc".into(),
        namespace: "fuzz".into(),
        port: None,
    };
    let http_route = |name: &str, hostnames: &[&str]| HttpRoute {
        name: name.into(),
        namespace: "fuzz".into(),
        parent_refs: vec![parent.clone()],
        hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
        rules: http_rules(),
    };
    let grpc = GrpcRoute {
        name: "grpc".into(),
        namespace: "fuzz".into(),
        parent_refs: vec![parent.clone()],
        hostnames: Vec::new(),
        rules: vec![crate::config::GrpcRouteRule {
            name: None,
            matches: vec![GrpcRouteMatch {
                method: Some(GrpcMethodMatch {
                    regex: true,
                    service: Some("pkg\\.[A-Za-z]+".into()),
                    method: Some("Get|List".into()),
                }),
                headers: Vec::new(),
            }],
            filters: Vec::new(),
            backend_refs: vec![backend("grpc", 1)],
            timeouts: RouteTimeouts::default(),
            retry: None,
        }],
    };
    let routes = [
        http_route("exact-host", &["a.example.com"]),
        http_route("wildcard-host", &["*.example.com"]),
        http_route("any-host", &[]),
    ];
    RouteTable::from_routes(&routes, &[grpc], "fuzz", "svc", 80)
}

/// Fuzzing entry point: serves `data` and routes what hyper parses of it. Panics only when an
/// invariant breaks (a bug).
pub fn fuzz_one(data: &[u8]) {
    let _ = run(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a deterministic generator, so that a failure reproduces.
    struct Rng64(u64);

    impl Rng64 {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    const FUZZ_SEEDS: &[&str] = &[
        "GET /exact HTTP/1.1\r\nHost: a.example.com\r\n\r\n",
        "GET /api/x?q=abc HTTP/1.1\r\nHost: b.example.com:8080\r\nx-v: v12\r\nx-remove: 1\r\n\r\n",
        "GET /re/a/b HTTP/1.1\r\nHost: other\r\n\r\n",
        "POST /rewrite/deep/path?x=1 HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 3\r\n\r\nabc",
        "GET /rewrite HTTP/1.1\r\nHost: A.EXAMPLE.COM.\r\n\r\nGET /full/x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /redirect/a?b=c HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        "GET /moved/here HTTP/1.1\r\nHost: example.com:81\r\n\r\n",
        "GET http://a.example.com:9/redirect HTTP/1.1\r\nHost: ignored\r\n\r\n",
        "POST /pkg.Svc/Get HTTP/1.1\r\nHost: g\r\ncontent-type: application/grpc\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT a.example.com:443 HTTP/1.1\r\nHost: a.example.com:443\r\n\r\n",
        "GET /%2e%2e/api//x?q=%ZZ&q=b HTTP/1.0\r\n\r\n",
    ];

    /// A copy of `input` with a few random edits: byte flips, inserted interesting bytes,
    /// deletions, duplicated chunks and truncation.
    fn mutate(rng: &mut Rng64, input: &[u8]) -> Vec<u8> {
        const INTERESTING: &[u8] = b"/?&=%:.*[]\r\n \t\0\xff#";
        let mut out = input.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(out.len() + 1);
            match rng.below(5) {
                0 if at < out.len() => out[at] ^= 1 << rng.below(8),
                1 => out.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                2 if at < out.len() => {
                    out.remove(at);
                }
                3 => {
                    let end = (at + rng.below(16)).min(out.len());
                    let chunk = out[at..end].to_vec();
                    out.splice(at..at, chunk);
                }
                _ => out.truncate(at.max(out.len() / 2)),
            }
        }
        out
    }

    #[test]
    fn fuzz_one_survives_seeds_mutations_and_noise() {
        let mut rng = Rng64(0x9e37_79b9_7f4a_7c15);
        for seed in FUZZ_SEEDS {
            fuzz_one(seed.as_bytes());
        }
        for _ in 0..300 {
            let seed = FUZZ_SEEDS[rng.below(FUZZ_SEEDS.len())].as_bytes();
            fuzz_one(&mutate(&mut rng, seed));
        }
        for _ in 0..100 {
            let len = rng.below(256);
            let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            fuzz_one(&noise);
        }
        // Everything pipelined on one connection.
        fuzz_one(FUZZ_SEEDS.concat().as_bytes());
    }

    #[test]
    fn fuzz_harness_routes_through_the_table() {
        let exchange =
            |request: &str| String::from_utf8_lossy(&run(request.as_bytes())).into_owned();
        let response = exchange(FUZZ_SEEDS[5]);
        assert!(response.starts_with("HTTP/1.1 302"), "{response}");
        assert!(
            response.contains("location: https://[::1]:8443/new/a?b=c"),
            "{response}"
        );
        let response = exchange(FUZZ_SEEDS[1]);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let response =
            exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(response.matches("x-set: 1").count(), 2, "{response}");
        let response = exchange("GET /x HTTP/1.1\r\nHost: a\r\nbroken\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    }
}
