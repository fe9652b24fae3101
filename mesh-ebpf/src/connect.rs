//! cgroup/connect4 and cgroup/connect6: outbound L4 allow policy (a denied connect gets EPERM)
//! and transparent redirect of meshed destinations to the agent's outbound listener in the
//! caller's own network namespace.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use mesh_common::{OrigDst, ServiceKey, WORKLOAD_EGRESS_POLICY, stat};

use crate::{
    common::{
        AF_INET, AF_INET6, FULL_PREFIX, IPPROTO_TCP, bump, config, current_cgroup, mapped_v4,
        policy_key, v6_bytes, workload_of,
    },
    ctx_u32,
    maps::{MESH_EGRESS_POLICY, MESH_LISTENERS, MESH_ORIG_DST_BY_COOKIE, MESH_SERVICES},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

enum Decision {
    Allow,
    Deny,
    /// Rewrite to the agent's listener on this port.
    Redirect(u16),
}

#[cgroup_sock_addr(connect4)]
pub fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if ctx_u32!((*sa).protocol) != IPPROTO_TCP {
        return ALLOW;
    }
    let dst = mapped_v4(ctx_u32!((*sa).user_ip4));
    let port = u16::from_be(ctx_u32!((*sa).user_port) as u16);
    match decide(&ctx, dst, port, AF_INET) {
        Decision::Allow => ALLOW,
        Decision::Deny => DENY,
        Decision::Redirect(listener) => {
            unsafe {
                (*sa).user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
                (*sa).user_port = u32::from(listener.to_be());
            }
            ALLOW
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if ctx_u32!((*sa).protocol) != IPPROTO_TCP {
        return ALLOW;
    }
    let words = [
        ctx_u32!((*sa).user_ip6[0]),
        ctx_u32!((*sa).user_ip6[1]),
        ctx_u32!((*sa).user_ip6[2]),
        ctx_u32!((*sa).user_ip6[3]),
    ];
    let dst = v6_bytes(words);
    let port = u16::from_be(ctx_u32!((*sa).user_port) as u16);
    match decide(&ctx, dst, port, AF_INET6) {
        Decision::Allow => ALLOW,
        Decision::Deny => DENY,
        Decision::Redirect(listener) => {
            // A dual-stack socket dialling an IPv4-mapped address goes to the IPv4 loopback
            // listener; a native IPv6 destination goes to ::1.
            let mapped = words[0] == 0 && words[1] == 0 && words[2] == 0xffff_u32.to_be();
            unsafe {
                (*sa).user_ip6[0] = 0;
                (*sa).user_ip6[1] = 0;
                if mapped {
                    (*sa).user_ip6[2] = 0xffff_u32.to_be();
                    (*sa).user_ip6[3] = u32::from_ne_bytes([127, 0, 0, 1]);
                } else {
                    (*sa).user_ip6[2] = 0;
                    (*sa).user_ip6[3] = 1_u32.to_be();
                }
                (*sa).user_port = u32::from(listener.to_be());
            }
            ALLOW
        }
    }
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, dst: [u8; 16], port: u16, family: u32) -> Decision {
    let Some(cfg) = config() else {
        return Decision::Allow;
    };
    let cgroup = current_cgroup();
    // The agent's own upstream connections are never policed or redirected (no loops).
    if cgroup == cfg.agent_cgroup_id {
        return Decision::Allow;
    }
    let workload = workload_of(cgroup, |level| unsafe {
        bpf_get_current_ancestor_cgroup_id(level)
    });
    if let Some((workload_cgroup, workload)) = workload
        && workload.flags & WORKLOAD_EGRESS_POLICY != 0
        && !egress_allowed(workload_cgroup, port, dst)
    {
        bump(stat::CONNECT_DENIED, 1);
        return Decision::Deny;
    }
    // The agent attributes the connection by this id: the workload's cgroup, not the
    // container cgroup below it that the caller runs in.
    let source_cgroup = match workload {
        Some((workload_cgroup, _)) => workload_cgroup,
        None => cgroup,
    };
    let key = ServiceKey {
        ip: dst,
        port,
        _pad: 0,
    };
    if unsafe { MESH_SERVICES.get(key) }.is_none() {
        return Decision::Allow;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(listener) = (unsafe { MESH_LISTENERS.get(netns) }) else {
        // The agent does not listen in this namespace: the connection passes through
        // unredirected (still counted by sock_ops, still policed above).
        return Decision::Allow;
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OrigDst {
        ip: dst,
        port,
        family: family as u16,
        _pad: 0,
        cgroup_id: source_cgroup,
    };
    if MESH_ORIG_DST_BY_COOKIE.insert(cookie, orig, 0).is_err() {
        // Without the record the agent could not forward; better to leave it alone.
        return Decision::Allow;
    }
    bump(stat::CONNECT_REDIRECTED, 1);
    Decision::Redirect(*listener as u16)
}

#[inline(always)]
fn egress_allowed(cgroup: u64, port: u16, dst: [u8; 16]) -> bool {
    let exact = Key::new(FULL_PREFIX, policy_key(cgroup, port, dst));
    if MESH_EGRESS_POLICY.get(exact).is_some() {
        return true;
    }
    let any_port = Key::new(FULL_PREFIX, policy_key(cgroup, 0, dst));
    MESH_EGRESS_POLICY.get(any_port).is_some()
}
