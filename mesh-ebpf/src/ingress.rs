//! cgroup_skb/ingress: inbound L4 allow policy and STRICT mode, judged on connection-opening
//! TCP SYNs (SYN without ACK) before any socket sees them, so a refused connection is never
//! accepted. Other packets (replies to the workload's own outbound connections, data of
//! accepted connections) are not judged. Workloads with neither ingress rules nor STRICT are
//! not looked at beyond the workload lookup.
//!
//! Rules judge the original client address. A meshed connection reaches its workload from the
//! local agent (inbound tunnel, or a same-node meshed connection). Before it connects, the
//! agent records the client address under its socket's cookie in `MESH_PENDING_ORIGINS`;
//! sock_ops at TCP_CONNECT (source port chosen, SYN not yet sent) moves it to
//! `MESH_AGENT_ORIGINS` as (agent source port, workload address, workload port) -> client
//! address. A SYN that matches such an entry is judged by the client's address (counted as
//! `INGRESS_VIA_AGENT`), any other SYN by its own source address.
//!
//! STRICT (`WORKLOAD_STRICT`): a SYN without an agent-origin entry is plaintext from outside
//! the mesh and is dropped (`INGRESS_STRICT_DENIED`), except from a loopback source (the
//! workload talking to itself). SYNs that pass go on to the ingress rules, if the workload
//! has any.

use aya_ebpf::{
    helpers::{bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    maps::lpm_trie::Key,
    programs::SkBuffContext,
};
use mesh_common::{AgentOriginKey, WORKLOAD_INGRESS_POLICY, WORKLOAD_STRICT, is_loopback, stat};

use crate::{
    common::{FULL_PREFIX, bump, enclosing_workload, policy_key},
    ctx_u32,
    maps::{MESH_AGENT_ORIGINS, MESH_INGRESS_POLICY, MESH_WORKLOADS},
};

const PASS: i32 = 1;
const DROP: i32 = 0;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// The parts of a connection-opening SYN the judgement needs.
struct Syn {
    src: [u8; 16],
    dst: [u8; 16],
    /// Host order.
    src_port: u16,
    /// Host order.
    dst_port: u16,
}

#[cgroup_skb(ingress)]
pub fn mesh_ingress(ctx: SkBuffContext) -> i32 {
    // The only context field this program reads: once, unconditionally (see `ctx_u32!`).
    let protocol = ctx_u32!((*ctx.skb.skb).protocol);
    let skb = ctx.skb.skb;
    // The receiving socket's cgroup. Only SYNs are judged, so for a socket outside a workload
    // cgroup (on Kubernetes every pod socket: it is in a container cgroup below the pod
    // cgroup) the ancestor walk waits until the packet is known to be a SYN.
    let own = unsafe { bpf_skb_cgroup_id(skb) };
    let exact = unsafe { MESH_WORKLOADS.get(own) }.map(|w| w.flags);
    if let Some(flags) = exact
        && flags & (WORKLOAD_INGRESS_POLICY | WORKLOAD_STRICT) == 0
    {
        return PASS;
    }
    let proto = u32::from(u16::from_be(protocol as u16));
    let Some(syn) = parse_syn(&ctx, proto) else {
        return PASS;
    };
    let (cgroup, flags) = match exact {
        Some(flags) => (own, flags),
        None => match enclosing_workload(own, |level| unsafe {
            bpf_skb_ancestor_cgroup_id(skb, level)
        }) {
            Some((cgroup, workload)) => (cgroup, workload.flags),
            None => return PASS,
        },
    };
    if flags & (WORKLOAD_INGRESS_POLICY | WORKLOAD_STRICT) == 0 {
        return PASS;
    }
    judge(cgroup, flags, &syn)
}

/// PASS or DROP for a SYN to a workload with ingress rules and/or STRICT.
#[inline(never)]
fn judge(cgroup: u64, flags: u32, syn: &Syn) -> i32 {
    let origin_key = AgentOriginKey {
        agent_port: syn.src_port,
        workload_port: syn.dst_port,
        _pad: [0; 4],
        workload_ip: syn.dst,
    };
    let src = match unsafe { MESH_AGENT_ORIGINS.get(&origin_key) } {
        Some(origin) => {
            bump(stat::INGRESS_VIA_AGENT, 1);
            origin.src_ip
        }
        None => {
            if flags & WORKLOAD_STRICT != 0 && !is_loopback(&syn.src) {
                bump(stat::INGRESS_STRICT_DENIED, 1);
                return DROP;
            }
            syn.src
        }
    };
    if flags & WORKLOAD_INGRESS_POLICY == 0 {
        return PASS;
    }
    let exact = Key::new(FULL_PREFIX, policy_key(cgroup, syn.dst_port, src));
    let any_port = Key::new(FULL_PREFIX, policy_key(cgroup, 0, src));
    if MESH_INGRESS_POLICY.get(exact).is_some() || MESH_INGRESS_POLICY.get(any_port).is_some() {
        return PASS;
    }
    bump(stat::INGRESS_DENIED, 1);
    DROP
}

/// The addresses and ports of a TCP SYN without ACK; None for any other packet. `proto` is
/// the skb's ethertype (host order). The flags are checked before the addresses are read:
/// most packets are not SYNs, and this runs for every packet to a socket outside a workload
/// cgroup (see `mesh_ingress`).
#[inline(always)]
fn parse_syn(ctx: &SkBuffContext, proto: u32) -> Option<Syn> {
    let v4 = proto == ETH_P_IP;
    let l4 = if v4 {
        let vihl: u8 = ctx.load(0).ok()?;
        let ip_proto: u8 = ctx.load(9).ok()?;
        if ip_proto != IPPROTO_TCP {
            return None;
        }
        usize::from(vihl & 0x0f) * 4
    } else if proto == ETH_P_IPV6 {
        // Extension headers before TCP are rare on the node's own traffic; such packets pass.
        let next: u8 = ctx.load(6).ok()?;
        if next != IPPROTO_TCP {
            return None;
        }
        40
    } else {
        return None;
    };
    let tcp_flags: u8 = ctx.load(l4 + 13).ok()?;
    if tcp_flags & TCP_FLAG_SYN == 0 || tcp_flags & TCP_FLAG_ACK != 0 {
        return None;
    }
    let (src, dst) = if v4 {
        let src: [u8; 4] = ctx.load(12).ok()?;
        let dst: [u8; 4] = ctx.load(16).ok()?;
        (mesh_common::v4_mapped(src), mesh_common::v4_mapped(dst))
    } else {
        let src: [u8; 16] = ctx.load(8).ok()?;
        let dst: [u8; 16] = ctx.load(24).ok()?;
        (src, dst)
    };
    let ports: [u8; 4] = ctx.load(l4).ok()?;
    Some(Syn {
        src,
        dst,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
    })
}
