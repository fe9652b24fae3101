//! sock_ops: connection lifecycle for every TCP socket of the node's cgroup.
//!
//! - TCP_CONNECT: a redirected client socket now has its source port; publish its original
//!   destination under (netns, client address) so the agent can find it on accept. An agent
//!   socket connecting to a local workload on a client's behalf (entry in
//!   `MESH_PENDING_ORIGINS` under its cookie) publishes the client's address under (its
//!   source port, workload address) for cgroup_skb/ingress, before the SYN leaves.
//! - ACTIVE/PASSIVE_ESTABLISHED: start the per-connection record, ask for state and RTT
//!   callbacks, and add the socket to the fast-path sockhash.
//! - RTT: refresh the live counters (what `mesh-agent flows` shows for open connections).
//! - STATE -> TCP_CLOSE: final counters to the ring buffer, then forget the connection.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE, bpf_sock_ops,
    },
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
        bpf_ktime_get_ns,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_common::{
    AgentOrigin, AgentOriginKey, CONN_ACTIVE, CONN_PASSIVE, CONN_REDIRECTED, ClientKey, ConnEvent,
    ConnStats, FIN_RECEIVED, FIN_SENT, SockKey, stat,
};

use crate::{
    common::{AF_INET, AF_INET6, Tuple, bump, config, current_cgroup, workload_of},
    ctx_u32,
    maps::{
        MESH_AGENT_ORIGINS, MESH_CONNS, MESH_EVENTS, MESH_ORIG_DST_BY_CLIENT,
        MESH_ORIG_DST_BY_COOKIE, MESH_PENDING_ORIGINS, MESH_SOCKS,
    },
    read_tuple,
};

/// TCP counters of the socket, read once per program run.
struct Counters {
    bytes_acked: u64,
    bytes_received: u64,
    snd_una: u32,
    snd_nxt: u32,
    segs_in: u32,
    segs_out: u32,
    total_retrans: u32,
    srtt_us: u32,
}

#[sock_ops]
pub fn mesh_sock_ops(ctx: SockOpsContext) -> u32 {
    let ops: *mut bpf_sock_ops = ctx.ops;
    let op = ctx_u32!((*ops).op);
    let old_state = ctx_u32!((*ops).__bindgen_anon_1.args[0]);
    let new_state = ctx_u32!((*ops).__bindgen_anon_1.args[1]);
    // Each handler is its own BPF function with its own stack frame, and reads the context
    // fields it needs exactly once.
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx, CONN_ACTIVE),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_established(&ctx, CONN_PASSIVE),
        BPF_SOCK_OPS_RTT_CB => on_counters(&ctx, None),
        BPF_SOCK_OPS_STATE_CB if new_state == BPF_TCP_CLOSE => on_counters(&ctx, Some(old_state)),
        BPF_SOCK_OPS_STATE_CB => on_state(&ctx, new_state),
        _ => {}
    }
    1
}

const TCP_FIN_WAIT1: u32 = 4;
const TCP_FIN_WAIT2: u32 = 5;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

/// A state change short of close: remember FINs, whose sequence number the kernel's byte
/// counters include and which the payload counters must leave out.
#[inline(never)]
fn on_state(ctx: &SockOpsContext, new_state: u32) {
    let bit = match new_state {
        TCP_FIN_WAIT1 | TCP_LAST_ACK => FIN_SENT,
        TCP_CLOSE_WAIT | TCP_CLOSING => FIN_RECEIVED,
        _ => return,
    };
    let tuple = read_tuple!(ctx.ops);
    if tuple.family != AF_INET && tuple.family != AF_INET6 {
        return;
    }
    let key = sock_key(ctx, &tuple);
    if let Some(stats) = MESH_CONNS.get_ptr_mut(key) {
        unsafe { (*stats).fin_flags |= bit };
    }
}

/// RTT sample (refresh live counters) or close (final counters to the ring buffer).
/// `closed_from` is the state the socket left when it closed.
#[inline(never)]
fn on_counters(ctx: &SockOpsContext, closed_from: Option<u32>) {
    let tuple = read_tuple!(ctx.ops);
    if tuple.family != AF_INET && tuple.family != AF_INET6 {
        return;
    }
    let counters = read_counters(ctx.ops);
    let key = sock_key(ctx, &tuple);
    let Some(stats) = MESH_CONNS.get_ptr_mut(key) else {
        // Every socket that gets these callbacks had its entry inserted when it was
        // established (that is where the callbacks are switched on): a close without one
        // means the LRU evicted it. Its counters are gone; the loss itself must show.
        if closed_from.is_some() {
            bump(stat::CONNS_EVICTED, 1);
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = MESH_ORIG_DST_BY_COOKIE.remove(cookie);
        }
        return;
    };
    if let Some(old) = closed_from {
        // Leaving FIN_WAIT1/2 for CLOSE is the move into TIME_WAIT, which the peer's FIN
        // causes. (An RST in those states lands here too and is then off by one byte.)
        if old == TCP_FIN_WAIT1 || old == TCP_FIN_WAIT2 {
            unsafe { (*stats).fin_flags |= FIN_RECEIVED };
        }
    }
    store_counters(stats, &counters);
    if closed_from.is_some() {
        on_close(ctx, &key, stats);
    }
}

#[inline(always)]
fn read_counters(ops: *mut bpf_sock_ops) -> Counters {
    Counters {
        bytes_acked: unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ops).bytes_acked)) },
        bytes_received: unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).bytes_received))
        },
        snd_una: ctx_u32!((*ops).snd_una),
        snd_nxt: ctx_u32!((*ops).snd_nxt),
        segs_in: ctx_u32!((*ops).segs_in),
        segs_out: ctx_u32!((*ops).segs_out),
        total_retrans: ctx_u32!((*ops).total_retrans),
        // The context's srtt_us is the kernel's smoothed RTT scaled by 8.
        srtt_us: ctx_u32!((*ops).srtt_us) >> 3,
    }
}

#[inline(always)]
fn store_counters(stats: *mut ConnStats, c: &Counters) {
    unsafe {
        let fin = (*stats).fin_flags;
        // Our FIN is the last sequence number: it is acknowledged once snd_una reaches snd_nxt.
        let fin_acked = u64::from(fin & FIN_SENT != 0 && c.snd_una == c.snd_nxt);
        let fin_received = u64::from(fin & FIN_RECEIVED != 0);
        (*stats).tcp_bytes_acked = c
            .bytes_acked
            .saturating_sub((*stats).base_bytes_acked)
            .saturating_sub(fin_acked);
        (*stats).tcp_bytes_received = c
            .bytes_received
            .saturating_sub((*stats).base_bytes_received)
            .saturating_sub(fin_received);
        (*stats).segs_in = c.segs_in;
        (*stats).segs_out = c.segs_out;
        (*stats).total_retrans = c.total_retrans;
        (*stats).srtt_us = c.srtt_us;
    }
}

#[inline(always)]
fn sock_key(ctx: &SockOpsContext, tuple: &Tuple) -> SockKey {
    tuple.sock_key(|| unsafe { bpf_get_netns_cookie(ctx.as_ptr()) })
}

// A separate BPF function: each op handler gets its own 512-byte stack frame.
#[inline(never)]
fn on_connect(ctx: &SockOpsContext) {
    let tuple = read_tuple!(ctx.ops);
    if tuple.family != AF_INET && tuple.family != AF_INET6 {
        return;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The agent's sockets are never redirected, so a socket is either an agent connection to
    // a local workload (pending origin) or possibly a redirected client, never both.
    if let Some(origin) = unsafe { MESH_PENDING_ORIGINS.get(cookie) } {
        publish_agent_origin(cookie, &tuple, *origin);
        return;
    }
    let Some(orig) = (unsafe { MESH_ORIG_DST_BY_COOKIE.get(cookie) }) else {
        return;
    };
    let orig = *orig;
    let key = ClientKey {
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        ip: tuple.local_ip(),
        port: tuple.local_port,
        _pad: [0; 6],
    };
    if MESH_ORIG_DST_BY_CLIENT.insert(key, orig, 0).is_err() {
        bump(stat::ORIG_DST_MISSING, 1);
    }
}

/// The agent is connecting to a local workload on a client's behalf: the kernel has just
/// chosen the source port and the SYN has not left yet, so key the client's address by
/// (agent port, workload address, workload port) for cgroup_skb/ingress to find.
#[inline(always)]
fn publish_agent_origin(cookie: u64, tuple: &Tuple, origin: AgentOrigin) {
    let key = AgentOriginKey {
        agent_port: tuple.local_port,
        workload_port: tuple.remote_port,
        _pad: [0; 4],
        // IPv4-mapped for AF_INET; an AF_INET6 socket dialling a v4-mapped address already
        // holds it in that form, which is also what the ingress program sees.
        workload_ip: tuple.remote_ip(),
    };
    let _ = MESH_AGENT_ORIGINS.insert(&key, &origin, 0);
    let _ = MESH_PENDING_ORIGINS.remove(cookie);
}

// A separate BPF function: each op handler gets its own 512-byte stack frame.
#[inline(never)]
fn on_established(ctx: &SockOpsContext, direction: u32) {
    let tuple = read_tuple!(ctx.ops);
    if tuple.family != AF_INET && tuple.family != AF_INET6 {
        return;
    }
    let tuple = &tuple;
    let _ = ctx.set_cb_flags((BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG) as i32);
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let mut flags = direction;
    let mut cgroup_id = 0;
    if let Some(orig) = unsafe { MESH_ORIG_DST_BY_COOKIE.get(cookie) } {
        flags |= CONN_REDIRECTED;
        cgroup_id = orig.cgroup_id;
    } else if direction == CONN_ACTIVE {
        // The SYN-ACK is usually processed while the connect() caller is current (loopback and
        // veth deliver synchronously), which attributes passthrough connections well enough.
        // Recorded as the workload's cgroup (the pod's, not its container's) when the caller
        // belongs to one, so that userspace finds the workload by this id.
        let own = current_cgroup();
        cgroup_id = match workload_of(own, |level| unsafe {
            bpf_get_current_ancestor_cgroup_id(level)
        }) {
            Some((workload_cgroup, _)) => workload_cgroup,
            None => own,
        };
    }
    // The SYN is already counted in bytes_acked of an active opener: the baseline removes it.
    let base = read_counters(ctx.ops);
    let stats = ConnStats {
        cookie,
        start_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id,
        flags,
        family: tuple.family,
        base_bytes_acked: base.bytes_acked,
        base_bytes_received: base.bytes_received,
        ..ConnStats::default()
    };
    let mut key = sock_key(ctx, tuple);
    let _ = MESH_CONNS.insert(key, stats, 0);
    bump(stat::CONNS_OPENED, 1);
    if let Some(cfg) = config()
        && cfg.fast_path != 0
    {
        let _ = MESH_SOCKS.update(&mut key, unsafe { &mut *ctx.ops }, BPF_ANY as u64);
    }
}

#[inline(always)]
fn on_close(ctx: &SockOpsContext, key: &SockKey, stats: *mut ConnStats) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = MESH_ORIG_DST_BY_COOKIE.remove(cookie);
    bump(stat::CONNS_CLOSED, 1);
    match MESH_EVENTS.reserve::<ConnEvent>(0) {
        Some(mut entry) => {
            // Filled in place: a ConnEvent on the stack would not fit next to the key.
            let event: *mut ConnEvent = entry.as_mut_ptr();
            unsafe {
                (*event).key = *key;
                core::ptr::copy_nonoverlapping(stats, core::ptr::addr_of_mut!((*event).stats), 1);
                (*event).end_ns = bpf_ktime_get_ns();
            }
            entry.submit(0);
        }
        None => bump(stat::EVENTS_LOST, 1),
    }
    let _ = MESH_CONNS.remove(key);
}
