//! The inbound side: the mTLS tunnel listener on :15008 and the in-process path for
//! connections between workloads of this node. Both end in [`open_local`]: authorize the
//! source identity against the destination workload's policies, then connect to the workload.
//!
//! The listener accepts only TLS 1.3 with a client certificate that chains to the trust bundle
//! and carries a SPIFFE ID of our trust domain (see identity::tls). It speaks HTTP/2 and
//! serves only CONNECT to an address of a workload of this node, so it is never an open proxy.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use http_body_util::Empty;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, server::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use std::sync::atomic::AtomicU64;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::{
    identity::{PeerCert, SpiffeId},
    metrics::{labels::Security, tcp::Annotation},
    policy::authz,
    proxy::tunnel,
    runtime::Shared,
    state::peers::{Baggage, Peer},
};

/// A client that cannot finish the handshake in this time is dropped (slowloris).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default, Serialize)]
pub struct InboundStats {
    /// TCP connections accepted on the tunnel port.
    pub tls_accepted: AtomicU64,
    /// Handshakes that failed: wrong or missing certificate, TLS 1.2, plaintext, garbage.
    pub tls_failed: AtomicU64,
    /// Tunnel streams (CONNECT requests) received.
    pub streams: AtomicU64,
    /// Requests that were not a CONNECT or named no valid target.
    pub bad_requests: AtomicU64,
    /// Targets that are not a workload of this node.
    pub unknown_target: AtomicU64,
    pub authz_allowed: AtomicU64,
    pub authz_denied: AtomicU64,
    /// Connections to the local workload that failed.
    pub connect_failed: AtomicU64,
    /// Streams to a port declared http/http2/grpc, served as HTTP (l7::inbound).
    pub http_streams: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// Why a connection to a local workload was not made.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0} is not a workload of this node")]
    UnknownTarget(SocketAddr),
    #[error("denied by authorization policy ({0:?})")]
    Denied(authz::Decision),
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::UnknownTarget(_) => StatusCode::NOT_FOUND,
            Refusal::Denied(_) => StatusCode::FORBIDDEN,
            Refusal::Connect(..) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Authorizes `peer` for `target` and connects to the local workload, telling the kernel the
/// original client address (`origin`) so that address-based ingress rules judge the client,
/// not the agent.
pub async fn open_local(
    shared: &Shared,
    peer: &SpiffeId,
    source: &Peer,
    origin: IpAddr,
    target: SocketAddr,
) -> Result<TcpStream, Refusal> {
    let stats = &shared.inbound_stats;
    let state = shared.state();
    let Some(workload) = state.workload_by_ip(target.ip()) else {
        stats.unknown_target.fetch_add(1, Ordering::Relaxed);
        return Err(Refusal::UnknownTarget(target));
    };
    let decision = authz::evaluate(
        &state.config.authorization,
        workload,
        &authz::Request {
            peer,
            port: target.port(),
        },
    );
    if !decision.allowed() {
        stats.authz_denied.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, %target, workload = %workload.identity, ?decision, "connection denied");
        return Err(Refusal::Denied(decision));
    }
    stats.authz_allowed.fetch_add(1, Ordering::Relaxed);
    drop(state);
    connect_with_origin(shared, origin, target, source)
        .await
        .map_err(|e| {
            stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            Refusal::Connect(target, e)
        })
}

async fn connect_with_origin(
    shared: &Shared,
    origin: IpAddr,
    target: SocketAddr,
    source: &Peer,
) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    // The ingress program finds the origin by (agent port, workload address, workload port),
    // but binding to port 0 before connect() to learn the port is slow: such a bind cannot
    // share a port by 4-tuple, so with many sockets in TIME_WAIT each one scans the port
    // space. Instead the origin goes under the socket's cookie, and sock_ops moves it under
    // the source port at TCP_CONNECT, after connect() picked the port and before the SYN.
    let cookie = match crate::netns::socket_cookie(&socket) {
        Ok(cookie) => Some(cookie),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot read the socket cookie; the connection's origin is not recorded"
            );
            None
        }
    };
    if let Some(cookie) = cookie {
        shared.tcp_accounting.own_socket(cookie);
    }
    if let Some(cookie) = cookie
        && let Err(e) = shared.maps.register_pending_origin(cookie, origin)
    {
        tracing::warn!(
            error = format!("{e:#}"),
            "cannot record the connection's origin"
        );
    }
    // Start connect() by hand on the non-blocking socket (not TcpSocket::connect, which
    // consumes the socket): the source port is known as soon as connect() returns
    // EINPROGRESS, so the entry sock_ops published can be removed also when the connection
    // then fails.
    // SAFETY: the fd comes straight from the TcpSocket, which gives up its ownership.
    let fd = unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) };
    let std_stream = std::net::TcpStream::from(fd);
    let started = match nix::sys::socket::connect(
        std_stream.as_raw_fd(),
        &nix::sys::socket::SockaddrStorage::from(target),
    ) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(()),
        Err(e) => Err(std::io::Error::from(e)),
    };
    let local = std_stream.local_addr().ok();
    let port = local.map(|a| a.port()).unwrap_or(0);
    if let Some(local) = local {
        // The workload's end of this connection, as the kernel keys it: who the client is.
        let netns = crate::netns::netns_cookie(&std_stream).unwrap_or(0);
        shared.tcp_accounting.annotate(
            crate::metrics::tcp::sock_key(target, local, netns),
            Annotation::Inbound {
                source: source.clone(),
                security: Security::MutualTls,
            },
        );
    }
    let result = match started {
        Ok(()) => finish_connect(std_stream).await,
        Err(e) => Err(e),
    };
    if let Some(cookie) = cookie {
        shared.maps.remove_pending_origin(cookie);
    }
    if port != 0 {
        shared.maps.remove_agent_origin(port, target);
    }
    result
}

/// Waits for a non-blocking connect() to complete, as TcpSocket::connect does.
async fn finish_connect(std_stream: std::net::TcpStream) -> std::io::Result<TcpStream> {
    let stream = TcpStream::from_std(std_stream)?;
    stream.writable().await?;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    Ok(stream)
}

/// Binds the tunnel listener on the node's address when it is configured (peers dial exactly
/// that), else on every address of the node (dual-stack when IPv6 is on).
pub fn bind(address: Option<IpAddr>, port: u16) -> Result<std::net::TcpListener> {
    let listener = match address {
        Some(ip) => std::net::TcpListener::bind(SocketAddr::new(ip, port))
            .with_context(|| format!("cannot listen on tunnel address {ip}:{port}"))?,
        None => std::net::TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
            .or_else(|_| {
                std::net::TcpListener::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
            })
            .with_context(|| format!("cannot listen on tunnel port {port}"))?,
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

pub fn spawn_listener(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
) -> Result<()> {
    let listener = TcpListener::from_std(listener).context("register tunnel listener")?;
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel accept failed");
                    continue;
                }
            };
            shared
                .inbound_stats
                .tls_accepted
                .fetch_add(1, Ordering::Relaxed);
            let shared = shared.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                serve_session(tcp, peer, acceptor, shared).await;
            });
        }
    });
    Ok(())
}

async fn serve_session(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared
                .inbound_stats
                .tls_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, error = %e, "tunnel handshake refused");
            return;
        }
        Err(_) => {
            shared
                .inbound_stats
                .tls_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "tunnel handshake timed out");
            return;
        }
    };
    let Some(cert) = crate::identity::tls::peer_identity(tls.get_ref().1) else {
        // The verifier already demands a SPIFFE ID; this is a second line of defence.
        shared
            .inbound_stats
            .tls_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, "tunnel peer without a SPIFFE identity");
        return;
    };
    tracing::debug!(%peer, id = %cert.id, serial = %cert.serial, "tunnel session accepted");
    // The dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    shared.record_inbound_session(peer, &cert);
    let cert = Arc::new(cert);
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = service_shared.clone();
        let cert = cert.clone();
        async move { Ok::<_, std::convert::Infallible>(handle_stream(req, peer, &cert, shared).await) }
    });
    let result = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(tunnel::STREAM_WINDOW)
        .initial_connection_window_size(tunnel::CONNECTION_WINDOW)
        .max_frame_size(tunnel::MAX_FRAME)
        .max_send_buf_size(tunnel::SEND_BUFFER)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "tunnel session ended with an error");
    }
}

fn reply(status: StatusCode, reason: &str) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    if let Ok(v) = reason.parse() {
        response.headers_mut().insert("mesh-reason", v);
    }
    response
}

async fn handle_stream(
    mut req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    cert: &PeerCert,
    shared: Arc<Shared>,
) -> Response<Empty<Bytes>> {
    let stats = &shared.inbound_stats;
    stats.streams.fetch_add(1, Ordering::Relaxed);
    if req.method() != Method::CONNECT {
        stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        return reply(StatusCode::METHOD_NOT_ALLOWED, "only CONNECT is served");
    }
    let Some(target) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        return reply(StatusCode::BAD_REQUEST, "authority must be IP:PORT");
    };
    // Without a (valid) origin the kernel judges the connection by the tunnel peer's address.
    let origin = req
        .headers()
        .get(tunnel::ORIGIN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(tunnel::parse_forwarded_for)
        .unwrap_or(peer.ip());
    let source = {
        let state = shared.state();
        match req
            .headers()
            .get(tunnel::BAGGAGE_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some(b) => state.peers.from_baggage(&cert.id, &Baggage::parse(b)),
            None => state.peers.by_identity(&cert.id),
        }
    };
    // The client's agent labels its side of the metrics with the workload it reached.
    let workload: Option<http::HeaderValue> = shared
        .state()
        .peers
        .by_ip(target.ip())
        .and_then(Baggage::of)
        .and_then(|b| b.parse().ok());
    let upstream = match open_local(&shared, &cert.id, &source, origin, target).await {
        Ok(s) => s,
        Err(refusal) => {
            tracing::info!(%peer, id = %cert.id, %target, reason = %refusal, "tunnel stream refused");
            return reply(refusal.status(), &refusal.to_string());
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let id = cert.id.clone();
    // Declared HTTP ports: requests are served (and reported as the destination) one by one.
    let served = if shared.telemetry.destination_requests_enabled() {
        crate::l7::inbound::served_as(&shared.state().config, target)
    } else {
        None
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "CONNECT stream did not open");
                return;
            }
        };
        if let Some(served) = served {
            shared
                .inbound_stats
                .http_streams
                .fetch_add(1, Ordering::Relaxed);
            let delivery = crate::l7::inbound::Delivery {
                shared: shared.clone(),
                source: Arc::new(source),
                identity: id,
                origin,
                target,
                client: peer,
            };
            let tunnel = TokioIo::new(upgraded);
            return crate::l7::inbound::serve(tunnel, upstream, delivery, served).await;
        }
        match super::relay(TokioIo::new(upgraded), upstream).await {
            Ok((up, down)) => {
                shared
                    .inbound_stats
                    .bytes_in
                    .fetch_add(up, Ordering::Relaxed);
                shared
                    .inbound_stats
                    .bytes_out
                    .fetch_add(down, Ordering::Relaxed);
                tracing::debug!(%peer, %id, %target, up, down, "tunnel stream done");
            }
            Err(e) => tracing::debug!(%peer, %id, %target, error = %e, "tunnel stream reset"),
        }
    });
    let mut response = Response::new(Empty::new());
    if let Some(b) = workload {
        response.headers_mut().insert(tunnel::BAGGAGE_HEADER, b);
    }
    response
}
