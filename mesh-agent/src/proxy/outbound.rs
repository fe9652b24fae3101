//! The outbound listener: accepts connections that connect4/6 redirected, recovers where they
//! were going, picks an endpoint and relays bytes both ways with half-close.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Result, anyhow};
use mesh_common::ClientKey;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use super::ProxyPlane;
use crate::{
    config::{PortProtocol, Protocol},
    ebpf::{bytes_to_ip, ip_to_bytes},
    l7::{
        self,
        detect::{self, Detected},
        stats::HttpStats,
    },
    state::{Via, peers::Peer},
    transport::{
        Transport,
        dial::{Io, Source, dial},
        relay, relay_tcp,
        sink::{Annotation, Security, sock_key},
    },
};

/// What the outbound listeners counted (for /stats).
#[derive(Default, Serialize)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub forwarded: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Relay directions between two TCP sockets that carried bulk data and moved it with
    /// splice (zero-copy) from then on.
    pub spliced: AtomicU64,
}

/// One accept loop per listener (one listener per enrolled network namespace).
/// Serves redirected connections on `listener`; aborting the returned task closes it.
pub fn spawn_listener(
    listener: std::net::TcpListener,
    netns_cookie: u64,
    plane: Arc<ProxyPlane>,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register outbound listener");
                return;
            }
        };
        let drain = plane.transport.drain.clone();
        loop {
            // Once a newer agent has taken over, it accepts from this same socket; this
            // agent only finishes what it has.
            let accepted = tokio::select! {
                biased;
                _ = drain.started() => break,
                accepted = listener.accept() => accepted,
            };
            let (client, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            plane.stats.accepted.fetch_add(1, Ordering::Relaxed);
            let plane = plane.clone();
            let carried = drain.track("outbound connection");
            tokio::spawn(async move {
                let _carried = carried;
                if let Err(e) = handle(client, peer, netns_cookie, &plane).await {
                    plane.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, error = format!("{e:#}"), "outbound connection failed");
                }
            });
        }
    })
    .abort_handle()
}

async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    netns_cookie: u64,
    plane: &ProxyPlane,
) -> Result<()> {
    let transport = &*plane.transport;
    let key = ClientKey {
        netns_cookie,
        ip: ip_to_bytes(peer.ip()),
        port: peer.port(),
        _pad: [0; 6],
    };
    // Without a record the connection was not redirected by us (someone dialled :15001
    // directly); there is nowhere meaningful to send it.
    let orig = transport
        .maps
        .take_orig_dst(&key)
        .ok_or_else(|| anyhow!("no original destination recorded for {peer}"))?;
    let original = SocketAddr::new(bytes_to_ip(orig.ip), orig.port);
    let state = transport.state();
    let destination = state
        .destination(original)
        .ok_or_else(|| anyhow!("{original} is no longer a meshed destination"))?;
    let source = state.workload_by_cgroup(orig.cgroup_id);
    // Processes of the node that are not declared workloads speak as the node agent.
    let identity = source
        .map(|w| w.identity.clone())
        .unwrap_or_else(|| state.agent_identity());
    let source_peer = Arc::new(
        state
            .peers
            .by_cgroup(orig.cgroup_id)
            .cloned()
            .unwrap_or_default(),
    );
    // The client's socket as the kernel keys it, for the annotation of its metrics.
    let client_key = client
        .local_addr()
        .map(|listener| sock_key(peer, listener, netns_cookie))
        .ok();
    let l7 = destination
        .l7
        .as_ref()
        .map(|p| (p.protocol, state.config.http.detection_timeout));
    client.set_nodelay(true)?;
    if let Some((protocol, detection_timeout)) = l7 {
        let upstream_h2 = match protocol {
            PortProtocol::Declared(Protocol::Tcp) => None,
            PortProtocol::Declared(Protocol::Http) => Some(Some(false)),
            PortProtocol::Declared(Protocol::Http2 | Protocol::Grpc) => Some(Some(true)),
            PortProtocol::Detect => {
                let detected = detect::sniff(&client, detection_timeout).await;
                let stats = &plane.http.stats;
                if detected == Detected::Tcp {
                    HttpStats::bump(&stats.detected_tcp);
                    None
                } else {
                    HttpStats::bump(&stats.detected_http);
                    Some(None)
                }
            }
        };
        if let Some(upstream_h2) = upstream_h2 {
            // The upstream is a matter of each request; the connection stays with us.
            if let Some(key) = client_key {
                let service = destination
                    .l7
                    .as_ref()
                    .map(|p| state.peers.service(&p.service.name, &p.service.namespace));
                // Requests pick their own endpoints: the connection names only the service.
                transport.sink.annotate(
                    key,
                    Annotation::Outbound {
                        service,
                        destination: Peer::default(),
                        security: Security::MutualTls,
                    },
                );
            }
            let connection = l7::proxy::Connection {
                http: plane.http.clone(),
                requests: plane.http.recorder(source_peer.clone()),
                source: source_peer.clone(),
                origin: state.origin_address(source, original.is_ipv6()),
                identity,
                original,
                peer,
                upstream_h2,
            };
            drop(state);
            tracing::debug!(%peer, %original, "serving HTTP");
            l7::proxy::serve(client, connection).await;
            return Ok(());
        }
    }
    let upstream = destination
        .pick()
        .ok_or_else(|| anyhow!("service {} has no endpoints", destination.service))?
        .clone();
    let origin = state.origin_address(source, upstream.addr.is_ipv6());
    let service = destination.service.clone();
    // The service the client asked for (its VIP), else the endpoint's service.
    let labelled_service = destination
        .l7
        .as_ref()
        .map(|p| state.peers.service(&p.service.name, &p.service.namespace))
        .or_else(|| state.peers.service_of_endpoint(upstream.addr).cloned());
    let annotate = |transport: &Transport| {
        let Some(key) = client_key else {
            return;
        };
        let destination = transport
            .state()
            .peers
            .endpoint_workload(upstream.addr.ip(), |ip| {
                transport.tunnels.remote_workload(ip)
            })
            .unwrap_or_default();
        let security = match upstream.via {
            Via::Direct => Security::Unknown,
            Via::Local | Via::Tunnel { .. } => Security::MutualTls,
        };
        transport.sink.annotate(
            key,
            Annotation::Outbound {
                service: labelled_service.clone(),
                destination,
                security,
            },
        );
    };
    drop(state);
    annotate(transport);
    tracing::debug!(%peer, %original, upstream = %upstream.addr, via = ?upstream.via, %identity, %service, "relaying");

    let source = Source {
        identity: &identity,
        origin,
        peer: &source_peer,
    };
    // The kernel's SYN retries bound a direct connect, as they would without the mesh.
    let mut stream = match dial(transport, &source, &upstream, None).await {
        Ok(dialed) => dialed.io,
        Err(e) => {
            return refuse(
                client,
                anyhow!(e).context(format!("connect to {} for {original}", upstream.addr)),
            );
        }
    };
    if matches!(upstream.via, Via::Tunnel { .. }) {
        // The endpoint's agent has now said which workload it is.
        annotate(transport);
    }
    plane.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let mut client = client;
    // Direct and same-node upstreams are TCP sockets: bulk moves between them with splice.
    let relayed = match Io::as_tcp(&mut *stream) {
        Some(tcp) => relay_tcp(&mut client, tcp).await.map(|relayed| {
            plane
                .stats
                .spliced
                .fetch_add(u64::from(relayed.spliced), Ordering::Relaxed);
            (relayed.up, relayed.down)
        }),
        None => relay(&mut client, stream).await,
    };
    let (up, down) = match relayed {
        Ok(counts) => counts,
        // A broken upstream stream reaches the application as a reset, never as a clean
        // end that would pass a truncated stream off as complete.
        Err(e) => {
            return refuse(
                client,
                anyhow!(e).context(format!("relay {peer} <-> {}", upstream.addr)),
            );
        }
    };
    plane.stats.bytes_up.fetch_add(up, Ordering::Relaxed);
    plane.stats.bytes_down.fetch_add(down, Ordering::Relaxed);
    tracing::debug!(%peer, upstream = %upstream.addr, up, down, "relay done");
    Ok(())
}

/// The application already has an established connection (to us); a reset tells it the
/// destination refused, instead of a clean close that looks like an empty answer.
fn refuse(client: TcpStream, reason: anyhow::Error) -> Result<()> {
    let _ = client.set_zero_linger();
    drop(client);
    Err(reason)
}
