//! L7 traffic management on redirected connections whose destination port speaks HTTP/1.1,
//! HTTP/2 or gRPC: protocol detection, request filters, timeouts and budgeted retries, over
//! the route tables and backends of the model (`routing`: Gateway API matching, weighted
//! backends, load balancing, outlier detection).
//!
//! The outbound side terminates HTTP (hyper), decides per request, and sends each request to
//! the chosen endpoint over pooled upstream connections that ride the mTLS tunnel (one
//! CONNECT stream per upstream connection, many requests per stream). The destination agent
//! serves a CONNECT stream to a port declared http/http2/grpc as HTTP too, without routing, to
//! report each request as its destination ([`inbound`]); other streams stay L4.

pub mod body;
pub mod delivery;
pub mod detect;
pub mod filters;
pub mod flags;
pub mod framing;
pub mod fuzzing;
pub mod headers;
pub mod inbound;
pub mod inbound_h1;
pub mod inbound_h2;
pub mod meter;
pub mod proxy;
pub mod replay;
pub mod stats;
pub mod target;
pub mod upstream;

use std::sync::Arc;

use crate::transport::Transport;

/// What the L7 path shares across connections: the transport under it, its upstream
/// connection pool, its counters, and where it reports requests.
pub struct HttpPlane {
    pub transport: Arc<Transport>,
    pub upstreams: upstream::UpstreamPool,
    pub stats: stats::HttpStats,
    pub requests: Arc<dyn meter::RequestSink>,
}

impl HttpPlane {
    pub fn new(transport: Arc<Transport>, requests: Arc<dyn meter::RequestSink>) -> HttpPlane {
        HttpPlane {
            transport,
            upstreams: Default::default(),
            stats: Default::default(),
            requests,
        }
    }

    /// The recorder of one client connection's requests from `source`.
    pub fn recorder(
        &self,
        source: Arc<crate::state::peers::Peer>,
    ) -> Arc<dyn meter::RequestRecorder> {
        self.requests
            .clone()
            .connection(self.transport.clone(), source)
    }
}
