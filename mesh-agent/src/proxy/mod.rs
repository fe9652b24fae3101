//! The agent's listeners and what they do with each connection: the outbound listener takes
//! the connections connect4/6 redirected and relays them (L4) or hands them to the L7 path;
//! the inbound listener serves the mTLS tunnel from other nodes' agents and delivers its
//! streams to this node's workloads (L4, or through the L7 destination passes).

pub mod connect;
pub mod fuzzing;
pub mod inbound;
pub mod outbound;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use crate::{identity::PeerCert, l7::HttpPlane, transport::Transport};

/// How many accepted tunnel sessions /tunnels remembers.
const RECENT_INBOUND_SESSIONS: usize = 256;

/// What the listeners share: the transport and the L7 path they hand connections to, and
/// their own counters.
pub struct ProxyPlane {
    pub transport: Arc<Transport>,
    pub http: Arc<HttpPlane>,
    pub stats: outbound::ProxyStats,
    inbound_sessions: Mutex<VecDeque<inbound::InboundSession>>,
}

impl ProxyPlane {
    pub fn new(transport: Arc<Transport>, http: Arc<HttpPlane>) -> ProxyPlane {
        ProxyPlane {
            transport,
            http,
            stats: Default::default(),
            inbound_sessions: Default::default(),
        }
    }

    pub fn record_inbound_session(&self, peer_address: SocketAddr, cert: &PeerCert) {
        let mut recent = self
            .inbound_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_INBOUND_SESSIONS {
            recent.pop_front();
        }
        recent.push_back(inbound::InboundSession {
            peer_address,
            peer: cert.id.to_string(),
            peer_serial: cert.serial.clone(),
            accepted_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        });
    }

    /// The tunnel sessions accepted lately (for /tunnels).
    pub fn inbound_sessions(&self) -> Vec<inbound::InboundSession> {
        self.inbound_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
