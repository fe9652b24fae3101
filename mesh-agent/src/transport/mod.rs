//! The bottom of the userspace data path: how the agent reaches an endpoint (a direct TCP
//! connection, a workload of this node through [`local::open_local`], or a stream of the
//! mTLS tunnel to another node's agent), how bytes are relayed, and what is reported to
//! telemetry about it. Both the L4 proxy and the L7 path build on it.
//!
//! [`Transport`] is the data path's handle on the running agent: the model in force, the
//! kernel maps, the identities, the tunnel client pool and a [`sink::ConnectionSink`]
//! telemetry implements. The agent's wiring (`runtime`) makes one and hands it down.
//! [`drain::Drain`] tells every listener and connection when a newer agent has taken over.

pub mod dial;
pub mod drain;
pub mod linger;
pub mod local;
pub mod relay;
pub mod sink;
pub mod splice;
pub mod tunnel;

use std::{
    os::fd::AsRawFd,
    sync::{Arc, RwLock},
};

use crate::{ebpf::SharedMaps, identity::IdentityManager, state::State};

pub use relay::relay;
pub use splice::relay_tcp;

/// What every connection the data path carries needs from the running agent.
pub struct Transport {
    /// The model in force; replaced whole on a config change.
    model: RwLock<Arc<State>>,
    pub maps: SharedMaps,
    pub identity: Arc<IdentityManager>,
    pub tunnels: tunnel::TunnelPool,
    /// What the in-process delivery to this node's workloads (and the tunnel server in front
    /// of it) counted.
    pub inbound_stats: local::InboundStats,
    /// Where connections are reported (telemetry's TCP accounting).
    pub sink: Arc<dyn sink::ConnectionSink>,
    /// Set when a newer agent took the node over: accept loops end, connections finish.
    pub drain: drain::Drain,
}

impl Transport {
    pub fn new(
        state: Arc<State>,
        maps: SharedMaps,
        identity: Arc<IdentityManager>,
        sink: Arc<dyn sink::ConnectionSink>,
    ) -> Transport {
        let drain = drain::Drain::default();
        Transport {
            model: RwLock::new(state),
            maps,
            tunnels: tunnel::TunnelPool::new(identity.clone(), drain.clone()),
            identity,
            inbound_stats: Default::default(),
            sink,
            drain,
        }
    }

    /// The model in force.
    pub fn state(&self) -> Arc<State> {
        self.model
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Installs a new model.
    pub fn replace_state(&self, state: Arc<State>) {
        *self.model.write().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Marks a socket the agent opened itself; a failure to read its cookie only costs the
    /// accuracy of the TCP metrics, so it is logged at debug.
    pub fn own_stream(&self, socket: &impl AsRawFd) {
        match crate::netns::socket_cookie(socket) {
            Ok(cookie) => self.sink.own_socket(cookie),
            Err(e) => tracing::debug!(error = format!("{e:#}"), "no cookie for an agent socket"),
        }
    }
}
