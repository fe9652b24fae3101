//! The destination side of the L7 path: a tunnel stream to a workload port declared `http`,
//! `http2` or `grpc` is followed request by request so that every request is reported with
//! `reporter="destination"` (what Flagger, Kiali and Istio's dashboards query), without a
//! second HTTP stack: the bytes go to the workload and back as they came while a pass watches
//! them. `served_as` says which pass from the ports: all `http` go to `inbound_h1` (the
//! HTTP/1.1 framing pass), all `http2`/`grpc` to `inbound_h2` (the HTTP/2 frame pass); when
//! the ports naming the workload port disagree, the stream's first bytes decide (the HTTP/2
//! preface or not). No routing happens here: that was the source agent's job.
//!
//! Ports that are not declared (protocol detection) or declared `tcp` are relayed as bytes, so
//! requests to them are reported by the source agent only.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

pub use super::delivery::Delivery;
use super::{
    detect::{self, Detected},
    inbound_h1, inbound_h2,
    replay::Replay,
};
use crate::{
    config::{Config, PortProtocol, Protocol},
    state::canonical_ip,
};

/// How the destination agent serves a tunnel stream to a declared HTTP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Every port is `http`: the source agent speaks HTTP/1.1 (`inbound_h1`'s framing pass).
    Http1,
    /// Every port is `http2` or `grpc`: the source agent speaks HTTP/2 (`inbound_h2`).
    Http2,
    /// Both kinds: either may come, and the stream's first bytes say which.
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

/// Serves the requests of one tunnel stream until it ends. `first` is the connection to the
/// workload the inbound path made for the stream.
pub async fn serve<T>(mut tunnel: T, first: TcpStream, delivery: Delivery, served: Served)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match served {
        Served::Http1 => inbound_h1::serve(tunnel, first, delivery).await,
        Served::Http2 => inbound_h2::serve(tunnel, first, delivery).await,
        Served::Either => {
            // The source agent speaks first: the HTTP/2 preface, or an HTTP/1.1 request line.
            let (start, found) = match detect::read_start(&mut tunnel).await {
                Ok(read) => read,
                Err(e) => {
                    tracing::debug!(target = %delivery.target, error = %e, "tunnel stream ended before a request");
                    return;
                }
            };
            let tunnel = Replay::new(start, tunnel);
            match found {
                Some(Detected::Http2) => inbound_h2::serve(tunnel, first, delivery).await,
                // Anything else is answered as HTTP/1.1 would answer it (400 for a bad head).
                Some(Detected::Http1 | Detected::Tcp) => {
                    inbound_h1::serve(tunnel, first, delivery).await
                }
                None => {}
            }
        }
    }
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
