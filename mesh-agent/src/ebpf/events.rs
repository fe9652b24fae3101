//! Drains connection-close events from the ring buffer and hands each to `on_close` (the agent
//! wires it to the closed-flow table, the live flow stream and the TCP metrics: the kernel
//! side knows nothing of them).

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use mesh_common::ConnEvent;
use tokio::io::unix::AsyncFd;

pub fn spawn_event_reader(
    ring: RingBuf<MapData>,
    on_close: impl Fn(&ConnEvent) + Send + 'static,
) -> Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open and unchanged for as long as
    // it lives, and it lives inside the AsyncFd.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("cannot watch the ring buffer: {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                tracing::error!("ring buffer poll failed; connection events stop");
                return;
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() < std::mem::size_of::<ConnEvent>() {
                    continue;
                }
                // SAFETY: the program writes exactly one ConnEvent per record; read_unaligned
                // copes with the ring's 8-byte alignment.
                let event: ConnEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ConnEvent>()) };
                on_close(&event);
            }
            guard.clear_ready();
        }
    });
    Ok(())
}
