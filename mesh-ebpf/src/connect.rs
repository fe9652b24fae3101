//! cgroup/connect4 and cgroup/connect6: outbound L4 allow policy (a denied connect gets EPERM)
//! and transparent redirect of meshed destinations to the agent's outbound listener in the
//! caller's own network namespace.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
        bpf_sk_lookup_tcp, bpf_sk_release,
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use mesh_common::{OrigDst, ServiceKey, WORKLOAD_EGRESS_POLICY, WORKLOAD_STRICT, stat};

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
    match decide(&ctx, dst, port, AF_INET, Loopback::V4) {
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
    // A dual-stack socket dialling an IPv4-mapped address goes to the IPv4 loopback
    // listener; a native IPv6 destination goes to ::1.
    let mapped = words[0] == 0 && words[1] == 0 && words[2] == 0xffff_u32.to_be();
    let loopback = if mapped { Loopback::V4 } else { Loopback::V6 };
    match decide(&ctx, dst, port, AF_INET6, loopback) {
        Decision::Allow => ALLOW,
        Decision::Deny => DENY,
        Decision::Redirect(listener) => {
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

/// The loopback address a redirected connect goes to.
#[derive(Clone, Copy)]
enum Loopback {
    V4,
    V6,
}

#[inline(always)]
fn decide(
    ctx: &SockAddrContext,
    dst: [u8; 16],
    port: u16,
    family: u32,
    loopback: Loopback,
) -> Decision {
    let Some(cfg) = config() else {
        return Decision::Allow;
    };
    let cgroup = current_cgroup();
    // The agent's own upstream connections are never policed or redirected (no loops).
    if cfg.is_agent(cgroup) {
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
    let listener = *listener as u16;
    if !agent_listening(ctx, listener, loopback) {
        // No agent runs (stopped, crashed, not started yet): the connect fails at once with
        // ECONNREFUSED from the closed port, or, with `node.fail_mode: open`, goes direct.
        // A STRICT workload's traffic never leaves unencrypted.
        bump(stat::CONNECT_NO_AGENT, 1);
        let strict = matches!(workload, Some((_, w)) if w.flags & WORKLOAD_STRICT != 0);
        if cfg.fail_open != 0 && !strict {
            bump(stat::CONNECT_FAIL_OPEN, 1);
            return Decision::Allow;
        }
        return Decision::Redirect(listener);
    }
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
    Decision::Redirect(listener)
}

/// Whether a socket listens on `port` of the loopback address in the caller's network
/// namespace, i.e. whether an agent (or, during a handover, the agents sharing its listening
/// sockets) is there to take a redirected connection.
#[inline(always)]
fn agent_listening(ctx: &SockAddrContext, port: u16, loopback: Loopback) -> bool {
    // SAFETY: an all-zero tuple is a valid value of the plain-data union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = match loopback {
        Loopback::V4 => {
            let local = u32::from_ne_bytes([127, 0, 0, 1]);
            let v4 = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
            v4.saddr = local;
            v4.daddr = local;
            v4.dport = port.to_be();
            core::mem::size_of_val(v4)
        }
        Loopback::V6 => {
            let local = [0, 0, 0, 1_u32.to_be()];
            let v6 = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
            v6.saddr = local;
            v6.daddr = local;
            v6.dport = port.to_be();
            core::mem::size_of_val(v6)
        }
    };
    let sk = unsafe {
        bpf_sk_lookup_tcp(
            ctx.as_ptr(),
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    unsafe { bpf_sk_release(sk.cast()) };
    true
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
