//! The destination side of the L7 path: a tunnel stream to a workload port declared `http`,
//! `http2` or `grpc` is followed request by request so that every request is reported with
//! `reporter="destination"` (what Flagger, Kiali and Istio's dashboards query). `served_as`
//! picks how: ports that are all `http` go to `inbound_h1`'s framing pass, ports that are all
//! `http2`/`grpc` to `inbound_h2`'s frame pass; only a stream that may carry either is served
//! here as HTTP (hyper: HTTP/1.1 or h2c, as the source agent speaks). Requests go on to the workload unchanged except for hop-by-hop
//! headers, over the connection the inbound path already opened (more are opened through the
//! same authorization when the workload closes one). No routing happens here: that was the
//! source agent's job.
//!
//! Ports that are not declared (protocol detection) or declared `tcp` are relayed as bytes, so
//! requests to them are reported by the source agent only.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
    service::service_fn,
    upgrade::OnUpgrade,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpStream;

use super::{
    body::{Counted, ReqBody, RespBody, boxed, empty},
    flags::{ResponseFlag, local_reply},
    headers,
    matcher::is_grpc,
};
use crate::{
    config::{Config, PortProtocol, Protocol},
    identity::SpiffeId,
    metrics::{http::RequestMeter, labels::Peer, series_cache::SeriesCache},
    policy::authz,
    proxy::{
        inbound::{Refusal, open_local},
        tunnel::{CONNECTION_WINDOW, STREAM_WINDOW},
    },
    runtime::Shared,
    state::canonical_ip,
};

/// hyper refuses HTTP/1 read buffers below 8 KiB.
const MIN_H1_BUFFER: usize = 8192;

/// How the destination agent serves a tunnel stream to a declared HTTP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Every port is `http`: the source agent speaks HTTP/1.1 (`inbound_h1`'s framing pass).
    Http1,
    /// Every port is `http2` or `grpc`: the source agent speaks HTTP/2 (`inbound_h2`).
    Http2,
    /// Both kinds: either may come, so the HTTP server here serves the stream.
    Either,
}

/// How the destination agent serves `target` (a workload address of this node) as HTTP:
/// every service port that forwards to it (an endpoint of the service has the address and the
/// port's target port is the port) is declared `http`, `http2` or `grpc`, and there is at
/// least one. `None` (the stream stays opaque) when a `tcp` or undeclared port is among them.
pub fn served_as(config: &Config, target: SocketAddr) -> Option<Served> {
    let ip = canonical_ip(target.ip());
    let (mut h1, mut h2) = (false, false);
    let ports = config
        .services
        .iter()
        .filter(|s| s.endpoints.iter().any(|e| canonical_ip(e.ip) == ip))
        .flat_map(|s| &s.ports)
        .filter(|p| p.target_port == target.port());
    for port in ports {
        match port.protocol {
            PortProtocol::Declared(Protocol::Http) => h1 = true,
            PortProtocol::Declared(Protocol::Http2 | Protocol::Grpc) => h2 = true,
            _ => return None,
        }
    }
    match (h1, h2) {
        (true, false) => Some(Served::Http1),
        (false, true) => Some(Served::Http2),
        (true, true) => Some(Served::Either),
        (false, false) => None,
    }
}

/// One tunnel stream to a local workload, as the inbound path authorized it.
pub struct Delivery {
    pub shared: Arc<Shared>,
    /// The client workload, as the labels name it (from the baggage or the certificate).
    pub source: Arc<Peer>,
    /// The tunnel peer's identity: further connections to the workload are authorized as it.
    pub identity: SpiffeId,
    /// The client's address, for the workload's address-based ingress rules.
    pub origin: IpAddr,
    /// The workload address:port.
    pub target: SocketAddr,
    /// The tunnel peer, for the access log.
    pub client: SocketAddr,
}

/// Serves the HTTP requests of one tunnel stream until it ends. `first` is the connection to
/// the workload the inbound path made for the stream.
pub async fn serve<I>(io: I, first: TcpStream, delivery: Delivery)
where
    I: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let settings = delivery.shared.state().config.http.clone();
    let target = delivery.target;
    let local = Arc::new(Local {
        delivery,
        first: Mutex::new(Some(first)),
        h1: tokio::sync::Mutex::new(None),
        h2: tokio::sync::Mutex::new(None),
        series: Arc::default(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .half_close(true)
        // The peer is an authenticated agent whose pooled keep-alive connections may idle for
        // long; hyper's default 30 s header timer would close them while idle (racing the
        // next request). The workload's own idle policy applies, as with the byte relay.
        .header_read_timeout(None)
        // The workload's own Date (or none) goes back as it was.
        .auto_date_header(false)
        .max_buf_size(settings.max_header_bytes.max(MIN_H1_BUFFER));
    builder
        .http2()
        .timer(TokioTimer::new())
        .auto_date_header(false)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let service = service_fn(move |request| {
        let local = local.clone();
        async move { local.handle(request).await }
    });
    if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
        tracing::debug!(%target, error = %e, "destination HTTP connection ended with an error");
    }
}

/// The workload's connection broke before its answer: the tunnel stream's HTTP connection
/// (HTTP/1.1) or stream (HTTP/2) is reset, so the client's agent sees what it would have seen
/// without the destination's HTTP server.
#[derive(Debug)]
struct Broken;

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the workload's connection broke before its answer")
    }
}

impl std::error::Error for Broken {}

/// The connections to the workload of one tunnel stream.
struct Local {
    delivery: Delivery,
    /// The connection the inbound path opened, until the first request uses it.
    first: Mutex<Option<TcpStream>>,
    /// HTTP/1.1: the incoming connection is sequential, so is this one.
    h1: tokio::sync::Mutex<Option<http1::SendRequest<ReqBody>>>,
    /// HTTP/2: one connection, its sender cloned per request.
    h2: tokio::sync::Mutex<Option<http2::SendRequest<ReqBody>>>,
    /// The label sets this stream's requests were counted under.
    series: Arc<SeriesCache>,
}

impl Local {
    async fn handle(&self, request: Request<Incoming>) -> Result<Response<RespBody>, Broken> {
        let d = &self.delivery;
        let grpc = is_grpc(request.headers());
        let (mut parts, body) = request.into_parts();
        let meter = RequestMeter::at_destination(&parts, grpc, d.client, d.target);
        let response = if parts.method == Method::CONNECT {
            // As on the source side: an HTTP port does not tunnel.
            let mut r = local_reply(ResponseFlag::NoRoute, grpc);
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r
        } else if !allowed_now(d) {
            // The stream was authorized when it opened, but the source agent pools it for many
            // client connections: each request is judged by the policies in force now, so a
            // tightened policy applies to new requests at once.
            local_reply(ResponseFlag::RbacDenied, grpc)
        } else {
            let upgrade = headers::upgrade_protocol(&parts);
            let client_upgrade = upgrade
                .as_ref()
                .and_then(|_| parts.extensions.remove::<OnUpgrade>());
            headers::strip_hop_by_hop(&mut parts.headers);
            if let Some(protocol) = &upgrade {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(header::UPGRADE, protocol.clone());
            }
            let mut request = Request::new(boxed(Counted::new(body, meter.request_bytes.clone())));
            *request.method_mut() = parts.method;
            *request.uri_mut() = parts.uri;
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers;
            let h2 = parts.version == Version::HTTP_2;
            match self.send(request, h2).await {
                Ok(response) => self.answer(response, client_upgrade),
                Err(ResponseFlag::UpstreamConnectionTermination) => {
                    // The workload broke the connection without a (complete) answer: the
                    // client's side sees the same (its stream is reset) and answers by itself,
                    // as it would without this hop; reported here as the 502 UC it is.
                    let reply = local_reply(ResponseFlag::UpstreamConnectionTermination, grpc);
                    drop(meter.finish(
                        d.shared.clone(),
                        d.source.clone(),
                        self.series.clone(),
                        reply,
                    ));
                    return Err(Broken);
                }
                Err(flag) => local_reply(flag, grpc),
            }
        };
        Ok(meter.finish(
            d.shared.clone(),
            d.source.clone(),
            self.series.clone(),
            response,
        ))
    }

    /// The workload's answer for the client: hop-by-hop headers off, except on a 101, whose
    /// both sides are then relayed as bytes.
    fn answer(
        &self,
        mut response: Response<Incoming>,
        client_upgrade: Option<OnUpgrade>,
    ) -> Response<RespBody> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            headers::strip_hop_by_hop(response.headers_mut());
            return response.map(boxed);
        }
        let target = self.delivery.target;
        match client_upgrade {
            Some(client_upgrade) => {
                let workload_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    match tokio::try_join!(client_upgrade, workload_upgrade) {
                        Ok((client, workload)) => {
                            let relayed =
                                crate::proxy::relay(TokioIo::new(client), TokioIo::new(workload))
                                    .await;
                            tracing::debug!(%target, ?relayed, "upgraded connection ended");
                        }
                        Err(e) => tracing::debug!(%target, error = %e, "upgrade not completed"),
                    }
                });
                response.map(|_| empty())
            }
            // A 101 nobody asked for cannot be honoured.
            None => local_reply(ResponseFlag::UpstreamConnectionTermination, false),
        }
    }

    async fn send(
        &self,
        request: Request<ReqBody>,
        h2: bool,
    ) -> Result<Response<Incoming>, ResponseFlag> {
        let target = self.delivery.target;
        let result = if h2 {
            self.send_h2(request).await
        } else {
            self.send_h1(request).await
        };
        result.map_err(|(flag, why)| {
            tracing::debug!(%target, flag = flag.code(), %why, "request to the workload failed");
            flag
        })
    }

    async fn send_h1(
        &self,
        mut request: Request<ReqBody>,
    ) -> Result<Response<Incoming>, (ResponseFlag, String)> {
        let mut slot = self.h1.lock().await;
        let mut fresh = false;
        loop {
            let mut sender = match slot.take().filter(|s| !s.is_closed()) {
                Some(s) => s,
                None => {
                    fresh = true;
                    self.open_h1().await?
                }
            };
            // A kept-alive connection the workload closed hands the request back unsent; it
            // then goes on a new connection (once).
            let ready = sender.ready().await;
            let sent = match ready {
                Ok(()) => sender.try_send_request(request).await,
                Err(e) if !fresh => {
                    tracing::debug!(error = %e, "workload connection closed; reconnecting");
                    continue;
                }
                Err(e) => return Err((ResponseFlag::UpstreamConnectionTermination, e.to_string())),
            };
            match sent {
                Ok(response) => {
                    *slot = Some(sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    _ => {
                        return Err((
                            ResponseFlag::UpstreamConnectionTermination,
                            e.into_error().to_string(),
                        ));
                    }
                },
            }
        }
    }

    async fn send_h2(
        &self,
        request: Request<ReqBody>,
    ) -> Result<Response<Incoming>, (ResponseFlag, String)> {
        let mut sender = {
            let mut slot = self.h2.lock().await;
            match slot.as_ref().filter(|s| !s.is_closed()) {
                Some(s) => s.clone(),
                None => {
                    let s = self.open_h2().await?;
                    *slot = Some(s.clone());
                    s
                }
            }
        };
        let uc = |e: hyper::Error| (ResponseFlag::UpstreamConnectionTermination, e.to_string());
        sender.ready().await.map_err(uc)?;
        sender.send_request(request).await.map_err(uc)
    }

    /// The inbound path's connection for the first use, then new ones through the same
    /// authorization (a policy change since then applies).
    async fn connect(&self) -> Result<TcpStream, (ResponseFlag, String)> {
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tcp) = first {
            return Ok(tcp);
        }
        let d = &self.delivery;
        open_local(&d.shared, &d.identity, &d.source, d.origin, d.target)
            .await
            .map_err(|refusal| {
                let flag = match refusal {
                    Refusal::Denied(_) => ResponseFlag::RbacDenied,
                    _ => ResponseFlag::UpstreamConnectFailure,
                };
                (flag, refusal.to_string())
            })
    }

    async fn open_h1(&self) -> Result<http1::SendRequest<ReqBody>, (ResponseFlag, String)> {
        let tcp = self.connect().await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| (ResponseFlag::UpstreamConnectFailure, e.to_string()))?;
        let target = self.delivery.target;
        tokio::spawn(async move {
            // Upgrades: after a 101 hyper hands the connection over instead of closing it.
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(%target, error = %e, "workload HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn open_h2(&self) -> Result<http2::SendRequest<ReqBody>, (ResponseFlag, String)> {
        let tcp = self.connect().await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| (ResponseFlag::UpstreamConnectFailure, e.to_string()))?;
        let target = self.delivery.target;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%target, error = %e, "workload HTTP/2 connection ended");
            }
        });
        Ok(sender)
    }
}

/// Whether the tunnel peer may still reach the workload port under the running policies.
pub(super) fn allowed_now(d: &Delivery) -> bool {
    let state = d.shared.state();
    let Some(workload) = state.workload_by_ip(d.target.ip()) else {
        return false;
    };
    let decision = authz::evaluate(
        &state.config.authorization,
        workload,
        &authz::Request {
            peer: &d.identity,
            port: d.target.port(),
        },
    );
    if !decision.allowed() {
        d.shared
            .inbound_stats
            .authz_denied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(peer = %d.identity, target = %d.target, ?decision, "request denied on a pooled stream");
    }
    decision.allowed()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::{Endpoint, LoadBalancer, Service, ServicePort};

    fn port(target_port: u16, protocol: Option<Protocol>) -> ServicePort {
        ServicePort {
            port: 80,
            target_port,
            name: None,
            protocol: protocol.map_or(PortProtocol::Detect, PortProtocol::Declared),
        }
    }

    fn config(ports: Vec<ServicePort>) -> Config {
        let mut config = crate::config::embedded_default();
        config.services = vec![Service {
            name: "web".into(),
            namespace: "default".into(),
            vips: vec!["10.96.0.1".parse().unwrap()],
            ports,
            endpoints: vec![Endpoint {
                ip: "10.0.0.5".parse().unwrap(),
                node: Some("n1".into()),
                workload: None,
            }],
            load_balancer: LoadBalancer::default(),
            outlier_detection: None,
        }];
        config
    }

    #[test]
    fn only_declared_http_ports_are_served_as_http() {
        let target: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let served = |ports| served_as(&config(ports), target);
        assert_eq!(
            served(vec![port(8080, Some(Protocol::Http))]),
            Some(Served::Http1)
        );
        for protocol in [Protocol::Http2, Protocol::Grpc] {
            assert_eq!(
                served(vec![port(8080, Some(protocol))]),
                Some(Served::Http2),
                "{protocol:?}"
            );
        }
        assert_eq!(
            served(vec![
                port(8080, Some(Protocol::Http)),
                port(8080, Some(Protocol::Grpc))
            ]),
            Some(Served::Either)
        );
        assert_eq!(served(vec![port(8080, Some(Protocol::Tcp))]), None);
        assert_eq!(
            served(vec![port(8080, None)]),
            None,
            "undeclared ports are detected, not served"
        );
        let c = config(vec![port(9090, Some(Protocol::Http))]);
        assert_eq!(served_as(&c, target), None, "another target port");
        assert_eq!(
            served_as(&c, "10.0.0.6:9090".parse().unwrap()),
            None,
            "another address"
        );
        // Two service ports to the same target port that disagree: the stream stays opaque.
        assert_eq!(
            served(vec![
                port(8080, Some(Protocol::Http)),
                port(8080, Some(Protocol::Tcp)),
            ]),
            None
        );
    }
}
