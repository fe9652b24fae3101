//! Helpers shared by the programs: counters, config, address conversion and policy lookup.

use aya_ebpf::helpers::bpf_get_current_cgroup_id;
use mesh_common::{
    ANCESTOR_LEVELS, AgentConfig, CONFIG_INDEX, POLICY_FIXED_BITS, PolicyKey, SockKey,
    WorkloadValue, is_loopback,
};

use crate::maps::{MESH_CONFIG, MESH_STATS, MESH_WORKLOADS};

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const IPPROTO_TCP: u32 = 6;

/// Reads a context field with one volatile load.
///
/// The verifier only accepts context loads of the form `*(ctx + constant)`. If the same field
/// is read on two paths, LLVM merges the paths and loads through a computed pointer, which the
/// verifier rejects. So every program reads each field it needs exactly once, unconditionally,
/// at its start (see `Tuple`), and volatile keeps LLVM from sinking those loads into branches.
#[macro_export]
macro_rules! ctx_u32 {
    ($place:expr) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($place)) }
    };
}

/// The addresses of a socket as the context exposes them, read once.
pub struct Tuple {
    pub family: u32,
    pub local_ip4: u32,
    pub remote_ip4: u32,
    pub local_ip6: [u32; 4],
    pub remote_ip6: [u32; 4],
    /// Host order.
    pub local_port: u16,
    /// Host order (converted from the context's network-order-in-upper-half form).
    pub remote_port: u16,
}

impl Tuple {
    pub fn local_ip(&self) -> [u8; 16] {
        if self.family == AF_INET {
            mapped_v4(self.local_ip4)
        } else {
            v6_bytes(self.local_ip6)
        }
    }

    pub fn remote_ip(&self) -> [u8; 16] {
        if self.family == AF_INET {
            mapped_v4(self.remote_ip4)
        } else {
            v6_bytes(self.remote_ip6)
        }
    }

    /// The node-wide key of this socket. Loopback addresses only mean something inside one
    /// network namespace, so only they carry the netns cookie (asked for lazily: it is a
    /// helper call, and most sockets do not need it).
    #[inline(always)]
    pub fn sock_key(&self, netns_cookie: impl FnOnce() -> u64) -> SockKey {
        let local_ip = self.local_ip();
        let remote_ip = self.remote_ip();
        let netns_cookie = if is_loopback(&local_ip) || is_loopback(&remote_ip) {
            netns_cookie()
        } else {
            0
        };
        SockKey {
            netns_cookie,
            local_ip,
            remote_ip,
            local_port: self.local_port,
            remote_port: self.remote_port,
            _pad: 0,
        }
    }
}

/// Reads the tuple fields of a sock_ops or sk_msg context (same field names in both).
#[macro_export]
macro_rules! read_tuple {
    ($ctx:expr) => {{
        let c = $ctx;
        $crate::common::Tuple {
            family: $crate::ctx_u32!((*c).family),
            local_ip4: $crate::ctx_u32!((*c).local_ip4),
            remote_ip4: $crate::ctx_u32!((*c).remote_ip4),
            local_ip6: [
                $crate::ctx_u32!((*c).local_ip6[0]),
                $crate::ctx_u32!((*c).local_ip6[1]),
                $crate::ctx_u32!((*c).local_ip6[2]),
                $crate::ctx_u32!((*c).local_ip6[3]),
            ],
            remote_ip6: [
                $crate::ctx_u32!((*c).remote_ip6[0]),
                $crate::ctx_u32!((*c).remote_ip6[1]),
                $crate::ctx_u32!((*c).remote_ip6[2]),
                $crate::ctx_u32!((*c).remote_ip6[3]),
            ],
            local_port: $crate::ctx_u32!((*c).local_port) as u16,
            // The network-order port sits in the upper 16 bits on little-endian hosts, so one
            // byte swap of the whole word yields the host-order port.
            remote_port: u32::from_be($crate::ctx_u32!((*c).remote_port)) as u16,
        }
    }};
}

#[inline(always)]
pub fn bump(index: u32, by: u64) {
    if let Some(p) = MESH_STATS.get_ptr_mut(index) {
        unsafe { *p += by };
    }
}

#[inline(always)]
pub fn config() -> Option<AgentConfig> {
    MESH_CONFIG.get(CONFIG_INDEX).copied()
}

#[inline(always)]
pub fn current_cgroup() -> u64 {
    unsafe { bpf_get_current_cgroup_id() }
}

/// The workload a socket belongs to, from the socket's own cgroup id (`own`): that cgroup if
/// it is a workload cgroup, else its nearest ancestor that is one, at most
/// [`ANCESTOR_LEVELS`] levels below the node cgroup. Returns the workload's cgroup id (the
/// key of `MESH_WORKLOADS`, of the policy maps and of what userspace attributes flows by)
/// and its entry.
///
/// On Kubernetes the workload is the pod cgroup and the processes live in container cgroups
/// below it, so the exact lookup misses for every pod process. `ancestor(level)` is the
/// program type's ancestor helper (`bpf_get_current_ancestor_cgroup_id` or
/// `bpf_skb_ancestor_cgroup_id`); it returns 0 for a level deeper than the cgroup itself.
///
/// Deepest level first: the nearest enclosing workload owns the process, so a workload
/// cgroup declared inside another workload's cgroup keeps its own processes (the exact lookup
/// is the deepest case of the same rule). Processes outside any workload (host processes, the
/// agent) cost at most `ANCESTOR_LEVELS` helper calls and hash lookups, only on a miss.
#[inline(always)]
pub fn workload_of(own: u64, ancestor: impl Fn(i32) -> u64) -> Option<(u64, WorkloadValue)> {
    if let Some(w) = unsafe { MESH_WORKLOADS.get(own) } {
        return Some((own, *w));
    }
    enclosing_workload(own, ancestor)
}

/// The ancestor half of [`workload_of`], for a caller that has done the exact lookup itself.
#[inline(always)]
pub fn enclosing_workload(own: u64, ancestor: impl Fn(i32) -> u64) -> Option<(u64, WorkloadValue)> {
    let node_level = config()?.node_cgroup_level;
    // A fixed trip count the verifier sees through (unrolled by LLVM).
    let mut step = 0;
    while step < ANCESTOR_LEVELS {
        let level = node_level + ANCESTOR_LEVELS - step;
        step += 1;
        let id = ancestor(level as i32);
        // 0: the socket's cgroup is shallower than `level`; `own`: already looked up.
        if id == 0 || id == own {
            continue;
        }
        if let Some(w) = unsafe { MESH_WORKLOADS.get(id) } {
            return Some((id, *w));
        }
    }
    None
}

/// A u32 holding an IPv4 address in network order (as the kernel gives it) -> mapped bytes.
#[inline(always)]
pub fn mapped_v4(ip_be: u32) -> [u8; 16] {
    mesh_common::v4_mapped(ip_be.to_ne_bytes())
}

/// Four u32 words of an IPv6 address in network order -> bytes.
#[inline(always)]
pub fn v6_bytes(w: [u32; 4]) -> [u8; 16] {
    let a = w[0].to_ne_bytes();
    let b = w[1].to_ne_bytes();
    let c = w[2].to_ne_bytes();
    let d = w[3].to_ne_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// Prefix length of an exact-address lookup key (all bits significant).
pub const FULL_PREFIX: u32 = POLICY_FIXED_BITS + 128;

#[inline(always)]
pub fn policy_key(cgroup_id: u64, port: u16, ip: [u8; 16]) -> PolicyKey {
    PolicyKey {
        cgroup_id,
        port_be: port.to_be(),
        _pad: 0,
        ip,
        _tail: 0,
    }
}
