//! Delivery to a workload of this node, for a tunnel stream from another node and for the
//! in-process path between workloads of this node alike: authorize the source identity
//! against the destination workload's policies, then connect to the workload, telling the
//! kernel the original client's address.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use hyper::StatusCode;
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};

use super::{
    Transport,
    sink::{Annotation, Security, sock_key},
};
use crate::{identity::SpiffeId, policy::authz, state::peers::Peer};

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
    pub fn status(&self) -> StatusCode {
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
    transport: &Transport,
    peer: &SpiffeId,
    source: &Peer,
    origin: IpAddr,
    target: SocketAddr,
) -> Result<TcpStream, Refusal> {
    let stats = &transport.inbound_stats;
    let state = transport.state();
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
    connect_with_origin(transport, origin, target, source)
        .await
        .map_err(|e| {
            stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            Refusal::Connect(target, e)
        })
}

async fn connect_with_origin(
    transport: &Transport,
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
        transport.sink.own_socket(cookie);
    }
    if let Some(cookie) = cookie
        && let Err(e) = transport.maps.register_pending_origin(cookie, origin)
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
        transport.sink.annotate(
            sock_key(target, local, netns),
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
        transport.maps.remove_pending_origin(cookie);
    }
    if port != 0 {
        transport.maps.remove_agent_origin(port, target);
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
