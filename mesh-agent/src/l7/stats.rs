//! Counters of the L7 path, shown in the `http` section of the admin /stats.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[derive(Default, Serialize)]
pub struct HttpStats {
    /// Requests received from clients.
    pub requests: AtomicU64,
    pub responses_1xx: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_3xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    /// Responses the agent generated itself (no route, no healthy upstream, timeouts...).
    pub local_replies: AtomicU64,
    /// Attempts after the first.
    pub retries: AtomicU64,
    /// Retries not made because the backend's retry budget was spent.
    pub retries_budget_exhausted: AtomicU64,
    /// Requests that ran out of their request timeout or last per-try timeout.
    pub timeouts: AtomicU64,
    /// Endpoints ejected by outlier detection.
    pub ejections: AtomicU64,
    /// Requests copied to a mirror backend.
    pub mirrored: AtomicU64,
    /// Mirrors skipped because the request body was too large to copy.
    pub mirror_skipped: AtomicU64,
    /// Connections on undeclared ports found to be HTTP / not HTTP.
    pub detected_http: AtomicU64,
    pub detected_tcp: AtomicU64,
    /// Connections served by the L7 path.
    pub connections: AtomicU64,
}

impl HttpStats {
    pub fn count_status(&self, status: u16) {
        let counter = match status {
            100..=199 => &self.responses_1xx,
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            _ => &self.responses_5xx,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
