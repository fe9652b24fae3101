//! cgroup/getpeername4 and 6: a redirected application sees the address it dialled, not the
//! agent's listener.

use aya_ebpf::{
    EbpfContext, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};

use crate::{common::AF_INET, maps::MESH_ORIG_DST_BY_COOKIE};

#[cgroup_sock_addr(getpeername4)]
pub fn mesh_getpeername4(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(orig) = unsafe { MESH_ORIG_DST_BY_COOKIE.get(cookie) }
        && u32::from(orig.family) == AF_INET
    {
        let ip = orig.ip;
        unsafe {
            (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
            (*ctx.sock_addr).user_port = u32::from(orig.port.to_be());
        }
    }
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn mesh_getpeername6(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(orig) = unsafe { MESH_ORIG_DST_BY_COOKIE.get(cookie) }
        && u32::from(orig.family) != AF_INET
    {
        let ip = orig.ip;
        unsafe {
            let sa = ctx.sock_addr;
            (*sa).user_ip6[0] = u32::from_ne_bytes([ip[0], ip[1], ip[2], ip[3]]);
            (*sa).user_ip6[1] = u32::from_ne_bytes([ip[4], ip[5], ip[6], ip[7]]);
            (*sa).user_ip6[2] = u32::from_ne_bytes([ip[8], ip[9], ip[10], ip[11]]);
            (*sa).user_ip6[3] = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
            (*sa).user_port = u32::from(orig.port.to_be());
        }
    }
    1
}
