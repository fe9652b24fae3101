//! The inbound side: the mTLS tunnel listener on :15008. Each CONNECT stream ends in
//! `transport::local::open_local` (as the in-process path between workloads of this node
//! does): authorize the source identity against the destination workload's policies, then
//! connect to the workload.
//!
//! The listener accepts only TLS 1.3 with a client certificate that chains to the trust bundle
//! and carries a SPIFFE ID of our trust domain (see identity::tls). It speaks HTTP/2 and
//! serves only CONNECT to an address of a workload of this node, so it is never an open proxy.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use http_body_util::Empty;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{
    ProxyPlane,
    connect::{ConnectRequest, read_connect},
};
use crate::{
    identity::PeerCert,
    state::peers::Baggage,
    transport::{local::open_local, relay, tunnel},
};

/// A client that cannot finish the handshake in this time is dropped (slowloris).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted tunnel session, as shown on /tunnels.
#[derive(Debug, Clone, Serialize)]
pub struct InboundSession {
    pub peer_address: SocketAddr,
    pub peer: String,
    pub peer_serial: String,
    pub accepted_unix: u64,
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
    plane: Arc<ProxyPlane>,
) -> Result<()> {
    let listener = TcpListener::from_std(listener).context("register tunnel listener")?;
    let acceptor = TlsAcceptor::from(tls);
    let drain = plane.transport.drain.clone();
    tokio::spawn(async move {
        loop {
            // After a handover the newer agent accepts from this socket.
            let accepted = tokio::select! {
                biased;
                _ = drain.started() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel accept failed");
                    continue;
                }
            };
            plane
                .transport
                .inbound_stats
                .tls_accepted
                .fetch_add(1, Ordering::Relaxed);
            let plane = plane.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                serve_session(tcp, peer, acceptor, plane).await;
            });
        }
    });
    Ok(())
}

async fn serve_session(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    plane: Arc<ProxyPlane>,
) {
    let _ = tcp.set_nodelay(true);
    let tcp = crate::transport::linger::LingeringClose::new(
        tcp,
        plane.transport.drain.clone(),
        "closing tunnel connection",
    );
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            plane
                .transport
                .inbound_stats
                .tls_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, error = %e, "tunnel handshake refused");
            return;
        }
        Err(_) => {
            plane
                .transport
                .inbound_stats
                .tls_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "tunnel handshake timed out");
            return;
        }
    };
    let Some(cert) = crate::identity::tls::peer_identity(tls.get_ref().1) else {
        // The verifier already demands a SPIFFE ID; this is a second line of defence.
        plane
            .transport
            .inbound_stats
            .tls_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, "tunnel peer without a SPIFFE identity");
        return;
    };
    tracing::debug!(%peer, id = %cert.id, serial = %cert.serial, "tunnel session accepted");
    // Carried until the session has closed: after GOAWAY it still writes out what its
    // streams queued, and a draining agent must not exit before.
    let _carried = plane.transport.drain.track("tunnel session (server)");
    // The dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    plane.record_inbound_session(peer, &cert);
    let cert = Arc::new(cert);
    let service_plane = plane.clone();
    let service = hyper::service::service_fn(move |req| {
        let plane = service_plane.clone();
        let cert = cert.clone();
        async move { Ok::<_, std::convert::Infallible>(handle_stream(req, peer, &cert, plane).await) }
    });
    let session = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(tunnel::STREAM_WINDOW)
        .initial_connection_window_size(tunnel::CONNECTION_WINDOW)
        .max_frame_size(tunnel::MAX_FRAME)
        .max_send_buf_size(tunnel::SEND_BUFFER)
        .max_concurrent_streams(tunnel::MAX_STREAMS)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(session);
    let drain = plane.transport.drain.clone();
    let result = tokio::select! {
        result = session.as_mut() => result,
        _ = drain.started() => {
            // GOAWAY: the peer opens new streams on a session with the newer agent, while
            // the streams it has run on here until they end.
            session.as_mut().graceful_shutdown();
            session.await
        }
    };
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
    plane: Arc<ProxyPlane>,
) -> Response<Empty<Bytes>> {
    let transport = plane.transport.clone();
    let stats = &transport.inbound_stats;
    stats.streams.fetch_add(1, Ordering::Relaxed);
    let read = read_connect(
        req.method(),
        req.uri(),
        req.headers(),
        peer,
        &cert.id,
        &transport.state().peers,
    );
    let ConnectRequest {
        target,
        origin,
        source,
    } = match read {
        Ok(request) => request,
        Err(bad) => {
            stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return reply(bad.status, bad.reason);
        }
    };
    // The client's agent labels its side of the metrics with the workload it reached.
    let workload: Option<http::HeaderValue> = transport
        .state()
        .peers
        .by_ip(target.ip())
        .and_then(Baggage::of)
        .and_then(|b| b.parse().ok());
    let upstream = match open_local(&transport, &cert.id, &source, origin, target).await {
        Ok(s) => s,
        Err(refusal) => {
            tracing::info!(%peer, id = %cert.id, %target, reason = %refusal, "tunnel stream refused");
            return reply(refusal.status(), &refusal.to_string());
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let id = cert.id.clone();
    // Declared HTTP ports: requests are served (and reported as the destination) one by one.
    let served = if transport.sink.follows_destination_requests() {
        crate::l7::inbound::served_as(&transport.state().config, target)
    } else {
        None
    };
    let carried = transport.drain.track("tunnel stream");
    tokio::spawn(async move {
        let _carried = carried;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "CONNECT stream did not open");
                return;
            }
        };
        if let Some(served) = served {
            transport
                .inbound_stats
                .http_streams
                .fetch_add(1, Ordering::Relaxed);
            let source = Arc::new(source);
            let delivery = crate::l7::inbound::Delivery {
                requests: plane.http.recorder(source.clone()),
                transport: transport.clone(),
                source,
                identity: id,
                origin,
                target,
                client: peer,
            };
            let tunnel = TokioIo::new(upgraded);
            return crate::l7::inbound::serve(tunnel, upstream, delivery, served).await;
        }
        let mut upstream = upstream;
        match relay(TokioIo::new(upgraded), &mut upstream).await {
            Ok((up, down)) => {
                transport
                    .inbound_stats
                    .bytes_in
                    .fetch_add(up, Ordering::Relaxed);
                transport
                    .inbound_stats
                    .bytes_out
                    .fetch_add(down, Ordering::Relaxed);
                tracing::debug!(%peer, %id, %target, up, down, "tunnel stream done");
            }
            Err(e) => {
                // The workload must see a broken stream as broken (RST), never as a clean
                // end that would pass a truncated stream off as complete.
                let _ = upstream.set_zero_linger();
                tracing::debug!(%peer, %id, %target, error = %e, "tunnel stream reset");
            }
        }
    });
    let mut response = Response::new(Empty::new());
    if let Some(b) = workload {
        response.headers_mut().insert(tunnel::BAGGAGE_HEADER, b);
    }
    response
}
