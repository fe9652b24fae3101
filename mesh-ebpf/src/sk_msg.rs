//! sk_msg on the node's sockhash: a message between two sockets of the same node goes straight
//! into the peer socket's receive queue, skipping TCP/IP. Any failure falls back to the normal
//! path (SK_PASS): the fast path may be slow to start, it must never lose data.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    helpers::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::SkMsgContext,
};
use mesh_common::{CONN_FAST_PATH, stat};

use crate::{
    common::{AF_INET, AF_INET6, bump, config},
    ctx_u32,
    maps::{MESH_CONNS, MESH_SOCKS},
    read_tuple,
};

#[sk_msg]
pub fn mesh_sk_msg(ctx: SkMsgContext) -> u32 {
    let Some(cfg) = config() else {
        return SK_PASS;
    };
    if cfg.fast_path == 0 {
        return SK_PASS;
    }
    let msg = ctx.msg;
    let tuple = read_tuple!(msg);
    let size = u64::from(ctx_u32!((*msg).size));
    if tuple.family != AF_INET && tuple.family != AF_INET6 {
        return SK_PASS;
    }
    let own = tuple.sock_key(|| unsafe { bpf_get_netns_cookie(ctx.as_ptr()) });
    let mut peer = own.peer();
    if MESH_SOCKS.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS)) != i64::from(SK_PASS) {
        bump(stat::FAST_PATH_FALLBACK, 1);
        return SK_PASS;
    }
    bump(stat::FAST_PATH_MSGS, 1);
    bump(stat::FAST_PATH_BYTES, size);
    // These bytes never pass through TCP, so the socket's own counters will not see them.
    if let Some(stats) = MESH_CONNS.get_ptr_mut(own) {
        unsafe {
            (*stats).fast_bytes_sent += size;
            (*stats).flags |= CONN_FAST_PATH;
        }
    }
    if let Some(stats) = MESH_CONNS.get_ptr_mut(peer) {
        unsafe {
            (*stats).fast_bytes_received += size;
            (*stats).flags |= CONN_FAST_PATH;
        }
    }
    SK_PASS
}
