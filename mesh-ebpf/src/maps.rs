//! Every map of the node. Names match `mesh_common::map_names`; the agent pins the ones that
//! must survive an agent restart (policy, services, connection state) under the node's bpffs dir.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use mesh_common::{
    AgentConfig, AgentOrigin, AgentOriginKey, ClientKey, ConnStats, OrigDst, PolicyKey,
    PolicyValue, ServiceKey, ServiceValue, SockKey, WorkloadValue, capacity,
};

#[map]
pub static MESH_CONFIG: Array<AgentConfig> = Array::pinned(1, 0);

#[map]
pub static MESH_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(capacity::SERVICES, 0);

/// Keyed by cgroup id.
#[map]
pub static MESH_WORKLOADS: HashMap<u64, WorkloadValue> = HashMap::pinned(capacity::WORKLOADS, 0);

/// Network namespaces (by netns cookie) in which the agent has an outbound listener; value is
/// the listener port. connect4/6 only redirect where the agent is listening.
#[map]
pub static MESH_LISTENERS: HashMap<u64, u32> = HashMap::pinned(capacity::LISTENERS, 0);

const LPM_NO_PREALLOC: u32 = 1; // BPF_F_NO_PREALLOC, required for LPM tries

#[map]
pub static MESH_EGRESS_POLICY: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::pinned(capacity::POLICY, LPM_NO_PREALLOC);

#[map]
pub static MESH_INGRESS_POLICY: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::pinned(capacity::POLICY, LPM_NO_PREALLOC);

/// Socket cookie of a redirected client socket -> where it was going (for getpeername and
/// for sock_ops to publish it under the client's address).
#[map]
pub static MESH_ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::pinned(capacity::ORIG_DST, 0);

/// (listener netns, client address) -> where it was going; read by the agent on accept.
#[map]
pub static MESH_ORIG_DST_BY_CLIENT: LruHashMap<ClientKey, OrigDst> =
    LruHashMap::pinned(capacity::ORIG_DST, 0);

/// Connections the agent is opening to a local workload on a client's behalf: (agent source
/// port, workload address) -> the client's address. Written by sock_ops at TCP_CONNECT (from
/// `MESH_PENDING_ORIGINS`), before the SYN leaves, and removed by the agent once connect()
/// returns; cgroup_skb/ingress judges such SYNs by the client's address.
/// LRU so that entries the agent failed to remove age out.
#[map]
pub static MESH_AGENT_ORIGINS: LruHashMap<AgentOriginKey, AgentOrigin> =
    LruHashMap::pinned(capacity::AGENT_ORIGINS, 0);

/// Socket cookie of an agent socket about to connect to a local workload -> the client's
/// address. Written by the agent before connect() (the source port is not known yet: the
/// kernel picks it in connect()); sock_ops moves it into `MESH_AGENT_ORIGINS` at TCP_CONNECT.
/// LRU so that entries neither side removed age out.
#[map]
pub static MESH_PENDING_ORIGINS: LruHashMap<u64, AgentOrigin> =
    LruHashMap::pinned(capacity::PENDING_ORIGINS, 0);

#[map]
pub static MESH_CONNS: LruHashMap<SockKey, ConnStats> = LruHashMap::pinned(capacity::CONNS, 0);

/// Established sockets of the node for the sk_msg fast path. Not pinned: it only holds live
/// sockets, and leaving it pinned would keep the sk_msg program attached after the agent exits.
#[map]
pub static MESH_SOCKS: SockHash<SockKey> = SockHash::with_max_entries(capacity::SOCKS, 0);

#[map]
pub static MESH_EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

#[map]
pub static MESH_STATS: PerCpuArray<u64> = PerCpuArray::pinned(capacity::STATS, 0);
