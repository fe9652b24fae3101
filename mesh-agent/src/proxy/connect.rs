//! What a tunnel stream asks for: the CONNECT request a source agent sends, read into its
//! target, the original client's address and the client workload, before anything is opened.
//! Every header comes from another node's agent and is treated as untrusted input (it is
//! fuzzed: `fuzzing`).

use std::net::{IpAddr, SocketAddr};

use hyper::{HeaderMap, Method, StatusCode, Uri};

use crate::{
    identity::SpiffeId,
    state::peers::{Baggage, Peer, PeerIndex},
    transport::tunnel,
};

/// A CONNECT the inbound listener serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRequest {
    /// The workload address:port the stream is for.
    pub target: SocketAddr,
    /// The original client's address (`forwarded: for=`), else the tunnel peer's: the kernel
    /// judges the connection's address-based ingress rules by it.
    pub origin: IpAddr,
    /// The client workload, as the labels name it: from the `baggage` header where it agrees
    /// with the certificate, else from the certificate alone.
    pub source: Peer,
}

/// Why a stream is answered without being opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadConnect {
    pub status: StatusCode,
    pub reason: &'static str,
}

/// Reads a tunnel stream's request from `peer`, whose certificate says `identity`.
pub fn read_connect(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    peer: SocketAddr,
    identity: &SpiffeId,
    peers: &PeerIndex,
) -> Result<ConnectRequest, BadConnect> {
    if method != Method::CONNECT {
        return Err(BadConnect {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "only CONNECT is served",
        });
    }
    let target = uri
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .ok_or(BadConnect {
            status: StatusCode::BAD_REQUEST,
            reason: "authority must be IP:PORT",
        })?;
    // Without a (valid) origin the kernel judges the connection by the tunnel peer's address.
    let origin = headers
        .get(tunnel::ORIGIN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(tunnel::parse_forwarded_for)
        .unwrap_or(peer.ip());
    let source = match headers
        .get(tunnel::BAGGAGE_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some(b) => peers.from_baggage(identity, &Baggage::parse(b)),
        None => peers.by_identity(identity),
    };
    Ok(ConnectRequest {
        target,
        origin,
        source,
    })
}
