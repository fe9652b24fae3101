//! Opening a byte stream to an endpoint the way its `Via` says: plain TCP to an endpoint
//! outside the mesh, the in-process delivery to a workload of this node, or a stream of the
//! mTLS tunnel to the agent of the endpoint's node. The L4 relay and the L7 upstream pool
//! both open their connections here.

use std::{net::IpAddr, time::Duration};

use hyper::StatusCode;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{
    Transport,
    local::{Refusal, open_local},
    tunnel::{ConnectRefused, SessionHealth},
};
use crate::{
    identity::SpiffeId,
    routing::{Upstream, Via},
    state::peers::{Baggage, Peer},
};

/// Anything a connection to an endpoint can be.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The plain TCP socket behind it, if it is one: two TCP sockets relay with splice.
    fn as_tcp(&mut self) -> Option<&mut TcpStream>;
}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {
    fn as_tcp(&mut self) -> Option<&mut TcpStream> {
        (self as &mut dyn std::any::Any).downcast_mut::<TcpStream>()
    }
}

/// An opened stream, and for a tunnel stream the health of its session (a connection pooled
/// on the stream stops taking requests once the session is retired).
pub struct Dialed {
    pub io: Box<dyn Io>,
    pub session: Option<SessionHealth>,
}

impl Dialed {
    fn plain(io: Box<dyn Io>) -> Dialed {
        Dialed { io, session: None }
    }
}

/// Who is sending, from where.
pub struct Source<'a> {
    pub identity: &'a SpiffeId,
    /// The client's address, for the destination's address-based ingress rules.
    pub origin: IpAddr,
    /// The client workload, for the destination's metrics.
    pub peer: &'a Peer,
}

/// Why no stream was opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The destination refused by policy (this node's, or 403 from the destination agent).
    #[error("{0}")]
    Refused(String),
    /// The endpoint (or its agent) could not be reached.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// Opens a stream to `upstream` for `source`. `direct_timeout` bounds the TCP connect to an
/// endpoint outside the mesh (None: the kernel's own SYN retries bound it); the tunnel's
/// session and stream set-up have their own bounds.
pub async fn dial(
    transport: &Transport,
    source: &Source<'_>,
    upstream: &Upstream,
    direct_timeout: Option<Duration>,
) -> Result<Dialed, DialError> {
    let addr = upstream.addr;
    match &upstream.via {
        Via::Direct => {
            let connect = TcpStream::connect(addr);
            let tcp = match direct_timeout {
                Some(limit) => tokio::time::timeout(limit, connect).await.map_err(|_| {
                    DialError::Failed(anyhow::anyhow!("connect to {addr}: timed out"))
                })?,
                None => connect.await,
            }
            .map_err(|e| DialError::Failed(anyhow::anyhow!("connect to {addr}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            transport.own_stream(&tcp);
            Ok(Dialed::plain(Box::new(tcp)))
        }
        Via::Local => {
            match open_local(transport, source.identity, source.peer, source.origin, addr).await {
                Ok(tcp) => Ok(Dialed::plain(Box::new(tcp))),
                Err(Refusal::Denied(d)) => Err(DialError::Refused(format!("{addr}: {d:?}"))),
                Err(e) => Err(DialError::Failed(anyhow::anyhow!(e))),
            }
        }
        Via::Tunnel { node, tunnel } => {
            let opened = transport
                .tunnels
                .open(
                    source.identity,
                    *tunnel,
                    addr,
                    source.origin,
                    Baggage::of(source.peer).as_deref(),
                )
                .await;
            match opened {
                Ok((stream, session)) => Ok(Dialed {
                    io: Box::new(stream),
                    session: Some(session),
                }),
                Err(e) => Err(match e.downcast_ref::<ConnectRefused>() {
                    Some(r) if r.status == StatusCode::FORBIDDEN => {
                        DialError::Refused(r.to_string())
                    }
                    _ => DialError::Failed(e.context(format!("tunnel to {addr} on {node}"))),
                }),
            }
        }
    }
}

#[cfg(test)]
mod io_tests {
    use super::*;

    /// A boxed TCP socket is found behind `dyn Io` (the relay then splices); anything else is
    /// not.
    #[tokio::test]
    async fn a_boxed_tcp_socket_is_seen_as_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut boxed: Box<dyn Io> = Box::new(tcp);
        assert!(Io::as_tcp(&mut *boxed).is_some());
        let mut other: Box<dyn Io> = Box::new(tokio::io::duplex(16).0);
        assert!(Io::as_tcp(&mut *other).is_none());
    }
}
