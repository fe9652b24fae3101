//! The kernel/user boundary of mesh-agent: map keys, map values, event records and constants.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding (explicit `_pad` fields instead, so
//! that hash-map keys are fully initialised on both sides) and is shared verbatim by the eBPF
//! programs (`mesh-ebpf`) and the agent (`mesh-agent`, with the `user` feature).
//!
//! Addresses are 16 bytes in network order; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`) so
//! that one set of maps serves connect4 and connect6. Ports are host order unless a field says
//! otherwise.
#![no_std]

/// Port of the agent's outbound listener in every enrolled network namespace.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;

/// Map names, shared so that the agent looks up exactly what the programs define.
pub mod map_names {
    pub const CONFIG: &str = "MESH_CONFIG";
    pub const SERVICES: &str = "MESH_SERVICES";
    pub const WORKLOADS: &str = "MESH_WORKLOADS";
    pub const LISTENERS: &str = "MESH_LISTENERS";
    pub const EGRESS_POLICY: &str = "MESH_EGRESS_POLICY";
    pub const INGRESS_POLICY: &str = "MESH_INGRESS_POLICY";
    pub const ORIG_DST_BY_COOKIE: &str = "MESH_ORIG_DST_BY_COOKIE";
    pub const ORIG_DST_BY_CLIENT: &str = "MESH_ORIG_DST_BY_CLIENT";
    pub const AGENT_ORIGINS: &str = "MESH_AGENT_ORIGINS";
    pub const PENDING_ORIGINS: &str = "MESH_PENDING_ORIGINS";
    pub const CONNS: &str = "MESH_CONNS";
    pub const SOCKS: &str = "MESH_SOCKS";
    pub const EVENTS: &str = "MESH_EVENTS";
    pub const STATS: &str = "MESH_STATS";
}

/// Program names (the Rust function names in mesh-ebpf).
pub mod program_names {
    pub const CONNECT4: &str = "mesh_connect4";
    pub const CONNECT6: &str = "mesh_connect6";
    pub const GETPEERNAME4: &str = "mesh_getpeername4";
    pub const GETPEERNAME6: &str = "mesh_getpeername6";
    pub const SOCK_OPS: &str = "mesh_sock_ops";
    pub const SK_MSG: &str = "mesh_sk_msg";
    pub const INGRESS: &str = "mesh_ingress";
}

/// Capacities of the maps; the agent reports usage against these.
pub mod capacity {
    pub const SERVICES: u32 = 65_536;
    pub const WORKLOADS: u32 = 16_384;
    pub const LISTENERS: u32 = 16_384;
    pub const POLICY: u32 = 65_536;
    pub const ORIG_DST: u32 = 262_144;
    pub const AGENT_ORIGINS: u32 = 16_384;
    pub const PENDING_ORIGINS: u32 = 16_384;
    pub const CONNS: u32 = 262_144;
    pub const SOCKS: u32 = 262_144;
    /// Slots of the per-CPU counter array: more than `stat::COUNT`, so that a counter added
    /// at the next index keeps the pinned layout (an older agent reading the same pins just
    /// does not know the new slot).
    pub const STATS: u32 = 64;
    pub const EVENTS_BYTES: u32 = 4 * 1024 * 1024;
}

/// Index of the single entry of the `CONFIG` array.
pub const CONFIG_INDEX: u32 = 0;

/// Version of the layout of the pinned maps (their key and value types and what they mean).
/// The programs stay attached, and the maps pinned, across agent restarts and upgrades: a new
/// agent adopts them only when the pinned `CONFIG` entry carries this same version, and
/// refuses to start otherwise (a different layout would be misread). Bump it with any change
/// to a pinned map's types or meaning.
/// Version 3: the counter array has spare slots (`capacity::STATS`) and counts closes whose
/// connection entry the LRU had evicted.
pub const PIN_LAYOUT_VERSION: u32 = 3;

/// Node-wide settings the programs need.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentConfig {
    /// cgroup id of the agent itself: its sockets are never redirected or policed.
    pub agent_cgroup_id: u64,
    /// cgroup id of the agent this one took over from (0 when none), exempt like the agent's
    /// own: during a handover the old agent still dials upstreams for the connections it
    /// drains, and on Kubernetes the new agent runs in another pod cgroup.
    pub previous_agent_cgroup_id: u64,
    /// Outbound listener port (host order).
    pub outbound_port: u16,
    /// 1 when the sk_msg same-node fast path may redirect.
    pub fast_path: u8,
    /// 1 when a connect to a meshed destination goes direct (unredirected) while no agent
    /// listens (`node.fail_mode: open`); 0 when it is refused.
    pub fail_open: u8,
    /// Level of the node cgroup (the one the programs attach to) in the cgroup v2 hierarchy:
    /// 0 for the root, 1 for a direct child, and so on, as the kernel counts levels for
    /// `bpf_get_current_ancestor_cgroup_id`. A socket whose own cgroup is not a workload is
    /// matched to the nearest workload among its ancestors at levels
    /// `node_cgroup_level + 1 ..= node_cgroup_level + ANCESTOR_LEVELS` (on Kubernetes the
    /// processes run in container cgroups below the pod cgroup that is the workload).
    pub node_cgroup_level: u32,
    /// [`PIN_LAYOUT_VERSION`] of the agent that wrote this entry.
    pub layout_version: u32,
    pub _pad: u32,
}

impl AgentConfig {
    /// Whether a socket of `cgroup` belongs to an agent (this one or the one it replaces).
    #[inline(always)]
    pub fn is_agent(&self, cgroup: u64) -> bool {
        cgroup == self.agent_cgroup_id
            || (self.previous_agent_cgroup_id != 0 && cgroup == self.previous_agent_cgroup_id)
    }
}

/// How many levels below the node cgroup the programs look for a workload cgroup that is an
/// ancestor of a socket's cgroup. Three covers a pod cgroup with the programs attached at the
/// cgroup root or at `kubepods[.slice]`: Guaranteed pods sit one level below `kubepods`,
/// Burstable and BestEffort pods two (under their QoS cgroup).
pub const ANCESTOR_LEVELS: u32 = 3;

/// A meshed destination: a service VIP or an endpoint address, with a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub ip: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub service_id: u32,
    pub flags: u32,
}

/// Set on a workload that has egress rules: connects not allowed by a rule fail with EPERM.
pub const WORKLOAD_EGRESS_POLICY: u32 = 1;
/// Set on a workload that has ingress rules: SYNs not allowed by a rule are dropped. Rules judge
/// the original client address: the [`AgentOrigin`] of a connection the agent opened on a
/// client's behalf, else the packet's source address.
pub const WORKLOAD_INGRESS_POLICY: u32 = 2;

/// Set on a workload whose peer authentication mode is STRICT: a TCP SYN that the agent did not
/// open on a client's behalf (no [`AgentOriginKey`] entry), i.e. plaintext from outside the
/// mesh, is dropped. Loopback sources (the workload talking to itself) are exempt.
pub const WORKLOAD_STRICT: u32 = 4;

/// Value of the workload map, keyed by the workload's cgroup id (u64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadValue {
    pub workload_id: u32,
    pub flags: u32,
}

/// Data part of the LPM-trie key of both policy maps.
///
/// Matching is by prefix over the bytes in order, so the exact parts come first:
/// `cgroup_id` (64 bits) and `port` + `_pad` (32 bits) always match in full, then `ip` matches
/// the rule's prefix. Prefix length = [`POLICY_FIXED_BITS`] + prefix of `ip` in the 128-bit form.
/// `port` 0 means "any port"; lookups try the exact port first, then 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub cgroup_id: u64,
    /// Network order, so that the key bytes read the same on every host.
    pub port_be: u16,
    pub _pad: u16,
    pub ip: [u8; 16],
    pub _tail: u32,
}

/// Bits of [`PolicyKey`] before `ip`.
pub const POLICY_FIXED_BITS: u32 = 96;

/// Policy map value: the index of the rule that matched (for debugging and counters).
pub type PolicyValue = u32;

/// Where a redirected connection was going.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub ip: [u8; 16],
    pub port: u16,
    /// AF_INET or AF_INET6 as the application used it.
    pub family: u16,
    pub _pad: u32,
    /// cgroup id of the process that called connect(): the source workload.
    pub cgroup_id: u64,
}

/// How the agent finds the original destination of an accepted socket: the network namespace
/// of its listener and the peer address it sees. sock_ops writes it at TCP_CONNECT time, when
/// the client's source port is known and before the SYN leaves, so it is always there when
/// the agent accepts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub netns_cookie: u64,
    pub ip: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}

/// A connection the agent is opening to a local workload on behalf of a client (inbound tunnel
/// or same-node meshed connection). The agent does not bind first (bind-before-connect scans
/// the port space when many sockets sit in TIME_WAIT): it records the client address under its
/// socket's cookie in the pending-origins map (u64 cookie -> [`AgentOrigin`]) and connects;
/// sock_ops at TCP_CONNECT, once the kernel has chosen the source port and before the SYN
/// leaves, moves the entry here. The agent deletes it once connect() returns.
/// cgroup_skb/ingress looks it up for every SYN to a workload:
/// (TCP source port, destination address, destination port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AgentOriginKey {
    /// The agent socket's local port (host order).
    pub agent_port: u16,
    /// The workload's port (host order).
    pub workload_port: u16,
    pub _pad: [u8; 4],
    /// The workload address the agent connects to (IPv4-mapped for IPv4).
    pub workload_ip: [u8; 16],
}

/// Who the agent's connection to a workload is really from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentOrigin {
    /// The original client's address (IPv4-mapped for IPv4): ingress rules judge this one
    /// instead of the agent's source address.
    pub src_ip: [u8; 16],
    /// Reserved, 0.
    pub flags: u32,
    pub _pad: u32,
}

/// Identifies one end of a TCP connection on a node. Loopback addresses are only unique within
/// a network namespace, so `netns_cookie` is set for them and 0 otherwise; that lets the
/// fast path pair sockets across pod namespaces (pod IPs are unique on a node).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub netns_cookie: u64,
    pub local_ip: [u8; 16],
    pub remote_ip: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u32,
}

impl SockKey {
    /// The key of the other end of the same connection.
    pub const fn peer(&self) -> SockKey {
        SockKey {
            netns_cookie: self.netns_cookie,
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
            _pad: 0,
        }
    }
}

/// Connection flags in [`ConnStats::flags`] and [`ConnEvent::flags`].
pub const CONN_ACTIVE: u32 = 1;
pub const CONN_PASSIVE: u32 = 2;
/// connect4/6 rewrote this connection to the agent.
pub const CONN_REDIRECTED: u32 = 4;
/// At least one message went over the sk_msg fast path.
pub const CONN_FAST_PATH: u32 = 8;

/// Live per-connection counters (LRU hash keyed by [`SockKey`]).
///
/// TCP counters are copied from the socket on every RTT sample and at close; bytes moved by the
/// sk_msg fast path bypass TCP and are added by the sk_msg program.
///
/// The kernel's bytes_acked/bytes_received count sequence space, which includes the SYN and
/// FIN flags. `tcp_bytes_*` here are payload bytes only: the value at ESTABLISHED is the
/// baseline (`base_*`), and a FIN that was acknowledged / received is taken off at close.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub cookie: u64,
    pub start_ns: u64,
    pub cgroup_id: u64,
    /// Payload bytes sent and acknowledged by the peer (TCP path).
    pub tcp_bytes_acked: u64,
    /// Payload bytes received (TCP path).
    pub tcp_bytes_received: u64,
    pub base_bytes_acked: u64,
    pub base_bytes_received: u64,
    pub fast_bytes_sent: u64,
    pub fast_bytes_received: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    pub total_retrans: u32,
    pub srtt_us: u32,
    pub flags: u32,
    pub family: u32,
    /// FIN_* bits below, tracked from state transitions.
    pub fin_flags: u32,
    pub _pad: u32,
}

/// This end sent a FIN (entered FIN_WAIT1 or LAST_ACK).
pub const FIN_SENT: u32 = 1;
/// The peer's FIN arrived (entered CLOSE_WAIT or CLOSING, or TIME_WAIT).
pub const FIN_RECEIVED: u32 = 2;

/// Emitted on the ring buffer when a connection reaches TCP_CLOSE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    pub key: SockKey,
    pub stats: ConnStats,
    pub end_ns: u64,
}

/// Indices of the per-CPU `STATS` array.
pub mod stat {
    pub const CONNECT_REDIRECTED: u32 = 0;
    pub const CONNECT_DENIED: u32 = 1;
    pub const INGRESS_DENIED: u32 = 2;
    pub const FAST_PATH_MSGS: u32 = 3;
    pub const FAST_PATH_BYTES: u32 = 4;
    pub const FAST_PATH_FALLBACK: u32 = 5;
    pub const EVENTS_LOST: u32 = 6;
    pub const CONNS_OPENED: u32 = 7;
    pub const CONNS_CLOSED: u32 = 8;
    pub const ORIG_DST_MISSING: u32 = 9;
    /// SYNs to a workload that the agent opened on a client's behalf (judged by the origin).
    pub const INGRESS_VIA_AGENT: u32 = 10;
    /// SYNs dropped because the workload is STRICT and the connection is not from the agent.
    pub const INGRESS_STRICT_DENIED: u32 = 11;
    /// Connects to a meshed destination while no agent listened in the caller's namespace.
    pub const CONNECT_NO_AGENT: u32 = 12;
    /// Of those, the ones that went direct (`node.fail_mode: open`); the rest were refused.
    pub const CONNECT_FAIL_OPEN: u32 = 13;
    /// Connections that closed without an entry in the connection map: the LRU evicted it
    /// while they were open (the node held more connections than the map), so their counters
    /// and close event are lost.
    pub const CONNS_EVICTED: u32 = 14;
    pub const COUNT: u32 = 15;
    pub const NAMES: [&str; COUNT as usize] = [
        "connect_redirected",
        "connect_denied",
        "ingress_denied",
        "fast_path_msgs",
        "fast_path_bytes",
        "fast_path_fallback",
        "events_lost",
        "conns_opened",
        "conns_closed",
        "orig_dst_missing",
        "ingress_via_agent",
        "ingress_strict_denied",
        "connect_no_agent",
        "connect_fail_open",
        "conns_evicted",
    ];
}

/// IPv4 address (network order bytes) as IPv4-mapped IPv6.
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// True for 127.0.0.0/8 (mapped) and ::1: addresses that only mean something inside one netns.
pub const fn is_loopback(ip: &[u8; 16]) -> bool {
    let mapped = ip[0] == 0
        && ip[1] == 0
        && ip[2] == 0
        && ip[3] == 0
        && ip[4] == 0
        && ip[5] == 0
        && ip[6] == 0
        && ip[7] == 0
        && ip[8] == 0
        && ip[9] == 0
        && ip[10] == 0xff
        && ip[11] == 0xff;
    if mapped {
        return ip[12] == 127;
    }
    let mut i = 0;
    while i < 15 {
        if ip[i] != 0 {
            return false;
        }
        i += 1;
    }
    ip[15] == 1
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all types are repr(C), Copy, contain only integers and arrays of integers and
    // have no implicit padding, so any byte pattern is a valid value.
    unsafe impl aya::Pod for AgentConfig {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for WorkloadValue {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for ClientKey {}
    unsafe impl aya::Pod for AgentOriginKey {}
    unsafe impl aya::Pod for AgentOrigin {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for ConnStats {}
    unsafe impl aya::Pod for ConnEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<AgentConfig>(), 32);
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<PolicyKey>(), 32);
        assert_eq!(size_of::<OrigDst>(), 32);
        assert_eq!(size_of::<ClientKey>(), 32);
        assert_eq!(size_of::<AgentOriginKey>(), 24);
        assert_eq!(size_of::<AgentOrigin>(), 24);
        assert_eq!(size_of::<SockKey>(), 48);
        assert_eq!(size_of::<ConnStats>(), 104);
        assert_eq!(size_of::<ConnEvent>(), 48 + 104 + 8);
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback(&v4_mapped([127, 0, 0, 1])));
        assert!(is_loopback(&v4_mapped([127, 9, 9, 9])));
        assert!(!is_loopback(&v4_mapped([10, 0, 0, 1])));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert!(is_loopback(&v6));
        v6[0] = 0xfe;
        assert!(!is_loopback(&v6));
    }

    #[test]
    fn peer_swaps_ends() {
        let k = SockKey {
            netns_cookie: 7,
            local_ip: v4_mapped([10, 0, 0, 1]),
            remote_ip: v4_mapped([10, 0, 0, 2]),
            local_port: 1000,
            remote_port: 80,
            _pad: 0,
        };
        let p = k.peer();
        assert_eq!(p.local_ip, k.remote_ip);
        assert_eq!(p.local_port, 80);
        assert_eq!(p.remote_port, 1000);
        assert_eq!(p.peer(), k);
    }
}
