//! mesh-agent's kernel programs. One module per attach point; shared maps and helpers in
//! `maps` and `common`. All programs attach to a node's mesh cgroup (sk_msg attaches to the
//! sockhash of that node).
#![no_std]
#![no_main]

mod common;
mod connect;
mod getpeername;
mod ingress;
mod maps;
mod sk_msg;
mod sock_ops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
