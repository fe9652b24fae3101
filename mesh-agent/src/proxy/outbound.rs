//! The outbound listener: accepts connections that connect4/6 redirected, recovers where they
//! were going, picks an endpoint and relays bytes both ways with half-close.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use anyhow::{Context, Result, anyhow};
use mesh_common::ClientKey;
use tokio::net::{TcpListener, TcpStream};

use crate::{
    ebpf::{bytes_to_ip, ip_to_bytes},
    runtime::Shared,
};

/// Relay buffer per direction: large enough that a bulk transfer is not syscall-bound.
const RELAY_BUFFER: usize = 256 * 1024;

/// One accept loop per listener (one listener per enrolled network namespace).
pub fn spawn_listener(listener: std::net::TcpListener, netns_cookie: u64, shared: Arc<Shared>) {
    tokio::spawn(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register outbound listener");
                return;
            }
        };
        loop {
            let (client, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            shared.proxy_stats.accepted.fetch_add(1, Ordering::Relaxed);
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(client, peer, netns_cookie, &shared).await {
                    shared.proxy_stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, error = format!("{e:#}"), "outbound connection failed");
                }
            });
        }
    });
}

async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    netns_cookie: u64,
    shared: &Shared,
) -> Result<()> {
    let key = ClientKey {
        netns_cookie,
        ip: ip_to_bytes(peer.ip()),
        port: peer.port(),
        _pad: [0; 6],
    };
    // Without a record the connection was not redirected by us (someone dialled :15001
    // directly); there is nowhere meaningful to send it.
    let orig = shared
        .maps
        .take_orig_dst(&key)
        .ok_or_else(|| anyhow!("no original destination recorded for {peer}"))?;
    let original = SocketAddr::new(bytes_to_ip(orig.ip), orig.port);
    let state = shared.state();
    let destination = state
        .destination(original)
        .ok_or_else(|| anyhow!("{original} is no longer a meshed destination"))?;
    let upstream_addr = destination
        .pick()
        .ok_or_else(|| anyhow!("service {} has no endpoints", destination.service))?;
    let source = shared.workload_name(orig.cgroup_id);
    let service = destination.service.clone();
    drop(state);

    let mut upstream = TcpStream::connect(upstream_addr)
        .await
        .with_context(|| format!("connect to {upstream_addr} for {original}"))?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    shared.proxy_stats.forwarded.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, %original, %upstream_addr, ?source, %service, "relaying");
    // copy_bidirectional shuts down each write side when the other side's read ends, which is
    // exactly TCP half-close semantics.
    let (up, down) = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await
    .with_context(|| format!("relay {peer} <-> {upstream_addr}"))?;
    shared.proxy_stats.bytes_up.fetch_add(up, Ordering::Relaxed);
    shared
        .proxy_stats
        .bytes_down
        .fetch_add(down, Ordering::Relaxed);
    tracing::debug!(%peer, %upstream_addr, up, down, "relay done");
    Ok(())
}
