//! One tunnel stream to a workload of this node, as the inbound path authorized it, and the
//! check both destination passes (`inbound_h1`, `inbound_h2`) make before each request: the
//! stream is pooled by the source agent for many client connections, so each request is
//! judged by the policies in force when it comes.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::meter::RequestRecorder;
use crate::{identity::SpiffeId, policy::authz, state::peers::Peer, transport::Transport};

/// One tunnel stream to a local workload, as the inbound path authorized it.
pub struct Delivery {
    pub transport: Arc<Transport>,
    /// Where the stream's requests are recorded (as the destination).
    pub requests: Arc<dyn RequestRecorder>,
    /// The client workload, as the labels name it (from the baggage or the certificate).
    pub source: Arc<Peer>,
    /// The tunnel peer's identity: further connections to the workload are authorized as it.
    pub identity: SpiffeId,
    /// The client's address, for the workload's address-based ingress rules.
    pub origin: IpAddr,
    /// The workload address:port.
    pub target: SocketAddr,
    /// The tunnel peer, for the access log.
    pub client: SocketAddr,
}

/// Whether the tunnel peer may still reach the workload port under the running policies.
pub fn allowed_now(d: &Delivery) -> bool {
    let state = d.transport.state();
    let Some(workload) = state.workload_by_ip(d.target.ip()) else {
        return false;
    };
    let decision = authz::evaluate(
        &state.config.authorization,
        workload,
        &authz::Request {
            peer: &d.identity,
            port: d.target.port(),
        },
    );
    if !decision.allowed() {
        d.transport
            .inbound_stats
            .authz_denied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(peer = %d.identity, target = %d.target, ?decision, "request denied on a pooled stream");
    }
    decision.allowed()
}
