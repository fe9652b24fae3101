//! What one closed connection or one finished request looked like: the record the metrics
//! count and the access log prints, built once at the point where the outcome is known.
//!
//! Records own what they carry (shared label sets, the request's own buffers), so that the
//! access log can hand them to its writer thread without copying text on the request path.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use super::labels::{RequestLabels, TrafficLabels};
pub use crate::l7::target::RequestTarget;

/// A connection of a workload that closed, from the kernel's per-connection counters.
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    pub labels: Arc<TrafficLabels>,
    /// "outbound" for the client end (reporter source), "inbound" for the server end.
    pub direction: &'static str,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Client -> server payload bytes (Istio's "received" direction).
    pub request_bytes: u64,
    /// Server -> client payload bytes (Istio's "sent" direction).
    pub response_bytes: u64,
    pub duration: Duration,
    /// connect() was redirected to the agent (the connection is meshed).
    pub redirected: bool,
}

/// One HTTP request served by the L7 path, once its response has been sent in full (or the
/// client went away).
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub labels: Arc<RequestLabels>,
    /// The client's address as the agent saw it.
    pub client: SocketAddr,
    pub target: RequestTarget,
    /// "HTTP/1.1", "HTTP/2", ...
    pub protocol: &'static str,
    pub duration: Duration,
    /// Request body bytes received from the client.
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// The endpoint of the last attempt; `None` for local replies made before any attempt.
    pub upstream: Option<SocketAddr>,
    pub attempts: u32,
}
