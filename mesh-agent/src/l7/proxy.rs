//! The L7 path of one client connection: hyper serves HTTP/1.1 and h2c on it, and every
//! request is routed on its own (route match, filters, backend choice, attempts with
//! timeouts and budgeted retries, outlier detection) and sent over pooled upstream
//! connections.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response, Version, request::Parts};
use http_body_util::BodyExt;
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpStream;

use super::{
    HttpPlane,
    body::{ClientBody, Counted, Prepared, ReqBody, RespBody, boxed, empty},
    filters,
    flags::{self, ResponseFlag, local_reply},
    headers,
    meter::{RequestMeter, RequestRecorder},
    stats::HttpStats,
    upstream::{SendError, Source},
};
use crate::{
    config::RequestMirror,
    identity::SpiffeId,
    routing::{
        BackendKey,
        backend::{Backend, Outcome, Pick},
        budget,
        matcher::{CompiledRule, RequestHead, is_grpc},
    },
    state::State,
    state::peers::Peer,
    transport::linger::LingeringClose,
};

/// hyper refuses HTTP/1 read buffers below 8 KiB; smaller `max_header_bytes` still caps the
/// header count through `max_headers`.
const MIN_H1_BUFFER: usize = 8192;

/// What is known about a client connection when its first request arrives.
pub struct Connection {
    pub http: Arc<HttpPlane>,
    /// The client workload, as the metric labels name it.
    pub source: Arc<Peer>,
    /// The identity requests are sent as (the source workload's).
    pub identity: SpiffeId,
    pub origin: IpAddr,
    /// The address the client dialled (VIP:port), which selects the routes.
    pub original: SocketAddr,
    pub peer: SocketAddr,
    /// HTTP/2 to the backends (`Some(true)`: http2/grpc ports), HTTP/1.1 (`Some(false)`:
    /// http ports) or the client's own version (detected ports).
    pub upstream_h2: Option<bool>,
    /// Where this connection's requests are recorded.
    pub requests: Arc<dyn RequestRecorder>,
}

/// Serves the client connection until it closes.
pub async fn serve(client: TcpStream, conn: Connection) {
    let conn = Arc::new(conn);
    HttpStats::bump(&conn.http.stats.connections);
    let settings = conn.http.transport.state().config.http.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A client may shut down its write side once its request is sent (nc -N, HTTP/1.0
        // tools); the response is still owed.
        .half_close(true)
        .max_buf_size(settings.max_header_bytes.max(MIN_H1_BUFFER));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    if conn.upstream_h2 == Some(true) {
        builder = builder.http2_only();
    }
    let peer = conn.peer;
    let http = conn.http.clone();
    let service = service_fn(move |request| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&conn, request).await) }
    });
    let drain = http.transport.drain.clone();
    // Closed lingering: a client whose next request (or WINDOW_UPDATE) races our GOAWAY or
    // Connection: close would otherwise get RST and lose the responses it had not read.
    let client = LingeringClose::new(client, drain.clone(), "closing HTTP connection");
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(client), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = drain.started() => {
            // A newer agent took over: HTTP/2 clients get GOAWAY, an idle HTTP/1.1
            // connection closes; requests in flight finish here.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

async fn handle(conn: &Connection, request: Request<Incoming>) -> Response<RespBody> {
    crate::planted::spin();
    let stats = &conn.http.stats;
    HttpStats::bump(&stats.requests);
    let grpc = is_grpc(request.headers());
    let (parts, body) = request.into_parts();
    // Routing names the service (one lookup of the destination per request).
    let mut meter = RequestMeter::new(&parts, grpc, conn.peer, None);
    let request = Request::from_parts(parts, Counted::new(body, meter.request_bytes.clone()));
    let mut response = route(conn, request, grpc, &mut meter).await;
    // A 101 must keep its Upgrade and Connection headers: they are the answer.
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        headers::strip_hop_by_hop(response.headers_mut());
    }
    stats.count_status(response.status().as_u16());
    meter.finish(conn.requests.clone(), response)
}

fn reply(conn: &Connection, flag: ResponseFlag, grpc: bool) -> Response<RespBody> {
    HttpStats::bump(&conn.http.stats.local_replies);
    local_reply(flag, grpc)
}

async fn route(
    conn: &Connection,
    request: Request<ClientBody>,
    grpc: bool,
    meter: &mut RequestMeter,
) -> Response<RespBody> {
    let state = conn.http.transport.state();
    let Some(port) = state.destination(conn.original).and_then(|d| d.l7.as_ref()) else {
        return reply(conn, ResponseFlag::NoRoute, grpc);
    };
    meter.service = Some(port.service.clone());
    let (mut parts, body) = request.into_parts();
    if parts.method == http::Method::CONNECT {
        // Tunnelling through an L7 port would bypass routing; HTTP proxies refuse it too.
        let mut r = reply(conn, ResponseFlag::NoRoute, grpc);
        *r.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
        return r;
    }
    let Some(matched) = port.routes.find(&RequestHead::from_parts(&parts)) else {
        return reply(conn, ResponseFlag::NoRoute, grpc);
    };
    let rule = matched.rule;
    let prefix = matched.matched_prefix;
    if let Some(redirect) = rule.redirect() {
        let mut response = filters::redirect_response(redirect, prefix, &parts).map(|()| empty());
        filters::apply_response_filters(rule, response.headers_mut());
        return response;
    }
    let Some(backend) = rule
        .pick_backend()
        .and_then(|key| state.backends.get(key).cloned())
    else {
        return reply(conn, ResponseFlag::NoCluster, grpc);
    };
    let upgrade = headers::upgrade_protocol(&parts);
    headers::strip_hop_by_hop(&mut parts.headers);
    filters::apply_request_filters(rule, prefix, &mut parts);
    if let Some(protocol) = upgrade {
        return upgrade_request(conn, &backend, parts, body, protocol, meter).await;
    }
    let replay = rule.retry.is_some() || !rule.mirrors.is_empty();
    let mut body = match Prepared::new(body, replay).await {
        Ok(b) => b,
        // The client stopped sending its body; nobody is left to answer.
        Err(_) => return reply(conn, ResponseFlag::DownstreamConnectionTermination, grpc),
    };
    let upstream_h2 = conn.upstream_h2.unwrap_or(parts.version == Version::HTTP_2);
    for mirror in &rule.mirrors {
        mirror_request(conn, &state, mirror, &parts, &body, upstream_h2);
    }
    backend.budget().deposit();
    let attempts = attempts(
        conn,
        &backend,
        rule,
        &parts,
        &mut body,
        (upstream_h2, grpc),
        meter,
    );
    let mut response = match rule.timeouts.request {
        Some(limit) => match tokio::time::timeout(limit, attempts).await {
            Ok(r) => r,
            Err(_) => {
                HttpStats::bump(&conn.http.stats.timeouts);
                reply(conn, ResponseFlag::UpstreamRequestTimeout, grpc)
            }
        },
        None => attempts.await,
    };
    filters::apply_response_filters(rule, response.headers_mut());
    response
}

/// Sends the request, retrying per the rule's policy and the backend's budget.
async fn attempts(
    conn: &Connection,
    backend: &Arc<Backend>,
    rule: &CompiledRule,
    parts: &Parts,
    body: &mut Prepared,
    (upstream_h2, grpc): (bool, bool),
    meter: &mut RequestMeter,
) -> Response<RespBody> {
    let stats = &conn.http.stats;
    let policy = rule.retry.as_ref();
    let max_retries = policy.map_or(0, |p| p.attempts);
    let source = Source {
        identity: &conn.identity,
        origin: conn.origin,
        peer: &conn.source,
    };
    let mut retries = 0;
    let mut avoid = None;
    loop {
        let Some(pick) = backend.pick(avoid) else {
            return reply(conn, ResponseFlag::NoHealthyUpstream, grpc);
        };
        let Some(request_body) = body.take() else {
            return reply(conn, ResponseFlag::UpstreamConnectionTermination, grpc);
        };
        meter.attempt(backend.key(), pick.addr(), &pick.upstream().via);
        let request = upstream_request(parts, request_body, upstream_h2, pick.addr());
        let send = conn.http.upstreams.send(
            &conn.http.transport,
            &source,
            pick.upstream(),
            upstream_h2,
            request,
        );
        let result = match rule.timeouts.backend_request {
            Some(limit) => tokio::time::timeout(limit, send)
                .await
                .unwrap_or(Err(SendError::Timeout)),
            None => send.await,
        };
        let outcome = match &result {
            Ok(r) => Outcome::Response(r.status().as_u16()),
            Err(SendError::Refused(_)) => Outcome::Refused,
            Err(SendError::Connect(_)) => Outcome::ConnectFailure,
            Err(SendError::Request(_)) => Outcome::Reset,
            Err(SendError::Timeout) => Outcome::Timeout,
        };
        if backend.report(pick.addr(), &outcome) {
            HttpStats::bump(&stats.ejections);
            tracing::info!(endpoint = %pick.addr(), backend = %backend.key(), "endpoint ejected by outlier detection");
        }
        if let Err(e) = &result {
            tracing::debug!(endpoint = %pick.addr(), backend = %backend.key(), error = %e, "upstream attempt failed");
        }
        let retriable = policy.is_some_and(|p| match &outcome {
            Outcome::Response(status) => p.codes.contains(status),
            Outcome::ConnectFailure => p.connect_failure,
            Outcome::Reset | Outcome::Timeout => p.reset,
            Outcome::Refused => false,
        });
        if retriable && retries < max_retries && body.is_replayable() {
            if !backend.budget().withdraw() {
                HttpStats::bump(&stats.retries_budget_exhausted);
                let mut response = finish(conn, result, pick, grpc);
                flags::mark(&mut response, ResponseFlag::RetryBudgetExhausted);
                return response;
            }
            retries += 1;
            HttpStats::bump(&stats.retries);
            avoid = Some(pick.addr());
            drop(pick);
            let base = policy.map(|p| p.backoff).unwrap_or_default();
            tokio::time::sleep(budget::backoff(base, retries)).await;
            continue;
        }
        let exhausted = retriable && retries > 0;
        let mut response = finish(conn, result, pick, grpc);
        if exhausted && response.headers().get(flags::FLAGS_HEADER).is_none() {
            flags::mark(&mut response, ResponseFlag::UpstreamRetryLimitExceeded);
        }
        return response;
    }
}

/// An HTTP/1.1 upgrade (WebSocket): one attempt, no retries, on a connection of its own; after
/// a 101 both upgraded connections are relayed as bytes.
async fn upgrade_request(
    conn: &Connection,
    backend: &Arc<Backend>,
    mut parts: Parts,
    body: ClientBody,
    protocol: http::HeaderValue,
    meter: &mut RequestMeter,
) -> Response<RespBody> {
    let Some(client_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return reply(conn, ResponseFlag::NoRoute, false);
    };
    let Some(pick) = backend.pick(None) else {
        return reply(conn, ResponseFlag::NoHealthyUpstream, false);
    };
    let source = Source {
        identity: &conn.identity,
        origin: conn.origin,
        peer: &conn.source,
    };
    meter.attempt(backend.key(), pick.addr(), &pick.upstream().via);
    let mut request = upstream_request(&parts, boxed(body), false, pick.addr());
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    headers.insert(http::header::UPGRADE, protocol);
    let result = conn
        .http
        .upstreams
        .send_upgrade(&conn.http.transport, &source, pick.upstream(), request)
        .await;
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(endpoint = %pick.addr(), error = %e, "upgrade attempt failed");
            return finish(conn, Err(e), pick, false);
        }
    };
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return finish(conn, Ok(response), pick, false);
    }
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let endpoint = pick.addr();
    tokio::spawn(async move {
        // The endpoint stays counted as busy while the upgraded connection lives.
        let _pick = pick;
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let relayed =
                    crate::transport::relay(TokioIo::new(client), TokioIo::new(upstream)).await;
                tracing::debug!(%endpoint, ?relayed, "upgraded connection ended");
            }
            Err(e) => tracing::debug!(%endpoint, error = %e, "upgrade not completed"),
        }
    });
    response.map(|_| empty())
}

/// The client's answer for one attempt's result.
fn finish(
    conn: &Connection,
    result: Result<Response<Incoming>, SendError>,
    pick: Pick,
    grpc: bool,
) -> Response<RespBody> {
    match result {
        // The pick travels with the body so that least-request counts the request as active
        // until its response has been streamed.
        Ok(response) => response.map(|body| boxed(Tracked { body, _pick: pick })),
        Err(SendError::Refused(_)) => reply(conn, ResponseFlag::RbacDenied, grpc),
        Err(SendError::Connect(_)) => reply(conn, ResponseFlag::UpstreamConnectFailure, grpc),
        Err(SendError::Request(_)) => {
            reply(conn, ResponseFlag::UpstreamConnectionTermination, grpc)
        }
        Err(SendError::Timeout) => {
            HttpStats::bump(&conn.http.stats.timeouts);
            reply(conn, ResponseFlag::UpstreamRequestTimeout, grpc)
        }
    }
}

/// A copy of the client's request head for one attempt, targeted for the upstream version.
fn upstream_request(
    parts: &Parts,
    body: ReqBody,
    upstream_h2: bool,
    endpoint: SocketAddr,
) -> Request<ReqBody> {
    let mut uri = parts.uri.clone();
    let mut head_headers = parts.headers.clone();
    let mut version = parts.version;
    headers::set_upstream_target(
        &mut uri,
        &mut head_headers,
        &mut version,
        upstream_h2,
        &endpoint.to_string(),
    );
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = head_headers;
    *request.version_mut() = version;
    request
}

/// `Parts` is not `Clone` (its extensions may not be); the head fields are.
fn clone_head(parts: &Parts) -> Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// Sends a copy of the request to the mirror backend, fire and forget, for the configured
/// share of requests. Only buffered bodies can be copied; larger ones are not mirrored.
fn mirror_request(
    conn: &Connection,
    state: &State,
    mirror: &RequestMirror,
    parts: &Parts,
    body: &Prepared,
    upstream_h2: bool,
) {
    if mirror.denominator == 0 || rand::random_range(0..mirror.denominator) >= mirror.numerator {
        return;
    }
    let stats = &conn.http.stats;
    let key = BackendKey {
        namespace: mirror.backend.namespace.clone(),
        name: mirror.backend.name.clone(),
        port: mirror.backend.port,
    };
    let (Some(copy), Some(backend)) = (body.copy(), state.backends.get(&key).cloned()) else {
        HttpStats::bump(&stats.mirror_skipped);
        return;
    };
    HttpStats::bump(&stats.mirrored);
    let http = conn.http.clone();
    let identity = conn.identity.clone();
    let origin = conn.origin;
    let peer = conn.source.clone();
    let head = clone_head(parts);
    tokio::spawn(async move {
        let Some(pick) = backend.pick(None) else {
            return;
        };
        let source = Source {
            identity: &identity,
            origin,
            peer: &peer,
        };
        let request = upstream_request(&head, copy, upstream_h2, pick.addr());
        match http
            .upstreams
            .send(
                &http.transport,
                &source,
                pick.upstream(),
                upstream_h2,
                request,
            )
            .await
        {
            // The answer is discarded, but read, so that the connection can be reused.
            Ok(response) => drop(response.into_body().collect().await),
            Err(e) => tracing::debug!(backend = %key, error = %e, "mirrored request failed"),
        }
    });
}

/// A response body that keeps its endpoint counted as busy until the body is done.
struct Tracked {
    body: Incoming,
    _pick: Pick,
}

impl Body for Tracked {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
