//! What the data path tells telemetry about the connections it makes: the facts (who a
//! connection is from or to, and how it is secured) and the trait telemetry implements to
//! receive them. The data path is handed an implementation at construction and never
//! imports telemetry.

use std::net::SocketAddr;

use mesh_common::{SockKey, is_loopback};

use crate::{
    ebpf::ip_to_bytes,
    state::peers::{Peer, ServiceRef},
};

/// How a connection between workloads is secured, as Istio's `connection_security_policy`
/// label says it: "mutual_tls" when the agent carried it over the mTLS tunnel (or on the
/// in-process path between two workloads of this node, whose identities the kernel's cgroups
/// vouch for); "unknown" otherwise.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Security {
    #[default]
    Unknown,
    MutualTls,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Unknown => "unknown",
            Security::MutualTls => "mutual_tls",
        }
    }
}

/// What the agent knows about a connection that the kernel does not.
#[derive(Debug, Clone)]
pub enum Annotation {
    /// A client socket redirected to the agent: where the agent sent it.
    Outbound {
        service: Option<ServiceRef>,
        destination: Peer,
        security: Security,
    },
    /// A workload's server socket the agent connected to for a client.
    Inbound { source: Peer, security: Security },
}

/// Where the data path reports the connections it makes and carries.
pub trait ConnectionSink: Send + Sync {
    /// A socket the agent opened itself (by SO_COOKIE): never application traffic.
    fn own_socket(&self, cookie: u64);
    /// What the agent knows about the connection the kernel keys as `key`.
    fn annotate(&self, key: SockKey, annotation: Annotation);
    /// Whether the destination agent follows tunnel streams to declared HTTP ports request by
    /// request (only when asked to and when something records the requests).
    fn follows_destination_requests(&self) -> bool;
}

/// The kernel's key of one end of a connection, from that end's point of view.
pub fn sock_key(local: SocketAddr, remote: SocketAddr, netns_cookie: u64) -> SockKey {
    let local_ip = ip_to_bytes(local.ip());
    let remote_ip = ip_to_bytes(remote.ip());
    // The kernel sets the namespace cookie only for loopback connections (see SockKey).
    let netns_cookie = if is_loopback(&local_ip) || is_loopback(&remote_ip) {
        netns_cookie
    } else {
        0
    };
    SockKey {
        netns_cookie,
        local_ip,
        remote_ip,
        local_port: local.port(),
        remote_port: remote.port(),
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use mesh_common::v4_mapped;

    use super::*;

    #[test]
    fn sock_key_sets_the_namespace_cookie_only_for_loopback() {
        let k = sock_key(
            "10.0.0.1:4000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
            77,
        );
        assert_eq!(k.netns_cookie, 0);
        assert_eq!(k.local_ip, v4_mapped([10, 0, 0, 1]));
        assert_eq!(k.remote_port, 80);
        let lo = sock_key(
            "127.0.0.1:4000".parse().unwrap(),
            "127.0.0.1:15001".parse().unwrap(),
            77,
        );
        assert_eq!(lo.netns_cookie, 77);
    }
}
