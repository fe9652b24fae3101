//! What one closed connection or one finished request looked like: the record the metrics
//! count and the access log prints, built once at the point where the outcome is known.

use std::{net::SocketAddr, time::Duration};

use super::labels::{RequestLabels, TrafficLabels};

/// A connection of a workload that closed, from the kernel's per-connection counters.
#[derive(Debug, Clone)]
pub struct ConnectionRecord<'a> {
    pub labels: &'a TrafficLabels,
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
pub struct RequestRecord<'a> {
    pub labels: &'a RequestLabels,
    /// The client's address as the agent saw it.
    pub client: SocketAddr,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
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
