//! L7 traffic management on redirected connections whose destination port speaks HTTP/1.1,
//! HTTP/2 or gRPC: protocol detection, Gateway API route matching and filters, weighted
//! backends, load balancing, outlier detection, timeouts and budgeted retries.
//!
//! The outbound side terminates HTTP (hyper), decides per request, and sends each request to
//! the chosen endpoint over pooled upstream connections that ride the mTLS tunnel (one
//! CONNECT stream per upstream connection, many requests per stream). The destination agent
//! serves a CONNECT stream to a port declared http/http2/grpc as HTTP too, without routing, to
//! report each request as its destination ([`inbound`]); other streams stay L4.

pub mod backend;
pub mod body;
pub mod budget;
pub mod detect;
pub mod filters;
pub mod flags;
pub mod framing;
pub mod headers;
pub mod inbound;
pub mod inbound_h1;
pub mod inbound_h2;
pub mod matcher;
pub mod proxy;
pub mod replay;
pub mod stats;
pub mod upstream;

use serde::Serialize;

/// A service port that requests can be sent to: the unit of load balancing, outlier
/// detection and retry budgets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BackendKey {
    pub namespace: String,
    pub name: String,
    /// The service port (endpoints are reached on its target port).
    pub port: u16,
}

impl std::fmt::Display for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}:{}", self.name, self.namespace, self.port)
    }
}
