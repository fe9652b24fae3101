//! Host-side library target of the eBPF crate. It is empty on purpose: the agent's build.rs
//! depends on this package so that cargo rebuilds the agent when the programs change; the
//! programs themselves are the `mesh-ebpf` binary built for bpfel-unknown-none.
#![no_std]
