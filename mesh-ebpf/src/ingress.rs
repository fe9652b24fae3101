//! cgroup_skb/ingress: inbound L4 allow policy. For a workload with ingress rules, a TCP SYN
//! whose (source address, destination port) no rule allows is dropped before any socket sees
//! it, so the workload never accepts the connection. Only connection-opening SYNs are judged;
//! replies to the workload's own outbound connections are not.

use aya_ebpf::{
    helpers::bpf_skb_cgroup_id, macros::cgroup_skb, maps::lpm_trie::Key, programs::SkBuffContext,
};
use mesh_common::{WORKLOAD_INGRESS_POLICY, stat};

use crate::{
    common::{FULL_PREFIX, bump, policy_key},
    maps::{MESH_INGRESS_POLICY, MESH_WORKLOADS},
};

const PASS: i32 = 1;
const DROP: i32 = 0;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

#[cgroup_skb(ingress)]
pub fn mesh_ingress(ctx: SkBuffContext) -> i32 {
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let Some(workload) = (unsafe { MESH_WORKLOADS.get(cgroup) }) else {
        return PASS;
    };
    if workload.flags & WORKLOAD_INGRESS_POLICY == 0 {
        return PASS;
    }
    let Some((src, dst_port, tcp_flags)) = parse_tcp(&ctx) else {
        return PASS;
    };
    if tcp_flags & TCP_FLAG_SYN == 0 || tcp_flags & TCP_FLAG_ACK != 0 {
        return PASS;
    }
    let exact = Key::new(FULL_PREFIX, policy_key(cgroup, dst_port, src));
    let any_port = Key::new(FULL_PREFIX, policy_key(cgroup, 0, src));
    if MESH_INGRESS_POLICY.get(exact).is_some() || MESH_INGRESS_POLICY.get(any_port).is_some() {
        return PASS;
    }
    bump(stat::INGRESS_DENIED, 1);
    DROP
}

/// (source address, destination port, TCP flags) of a TCP packet; None for anything else.
#[inline(always)]
fn parse_tcp(ctx: &SkBuffContext) -> Option<([u8; 16], u16, u8)> {
    let proto = u32::from(u16::from_be(ctx.skb.protocol() as u16));
    let (src, l4) = if proto == ETH_P_IP {
        let vihl: u8 = ctx.load(0).ok()?;
        let ip_proto: u8 = ctx.load(9).ok()?;
        if ip_proto != 6 {
            return None;
        }
        let src: [u8; 4] = ctx.load(12).ok()?;
        (mesh_common::v4_mapped(src), usize::from(vihl & 0x0f) * 4)
    } else if proto == ETH_P_IPV6 {
        // Extension headers before TCP are rare on the node's own traffic; such packets pass.
        let next: u8 = ctx.load(6).ok()?;
        if next != 6 {
            return None;
        }
        let src: [u8; 16] = ctx.load(8).ok()?;
        (src, 40)
    } else {
        return None;
    };
    let dport: u16 = ctx.load(l4 + 2).ok()?;
    let flags: u8 = ctx.load(l4 + 13).ok()?;
    Some((src, u16::from_be(dport), flags))
}
