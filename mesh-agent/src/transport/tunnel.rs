//! The client side of the mTLS tunnel between node agents (HBONE-style): HTTP/2 CONNECT over
//! TLS 1.3 to the destination node's :15008, the target endpoint as the request authority.
//!
//! Connections are pooled per (source identity, destination node, certificate serial): many
//! application connections share one TLS session as HTTP/2 streams, which saves a handshake
//! per connection. The serial is part of the key so that after a rotation new streams open a
//! new session presenting the new certificate, while streams on the old session run on
//! undisturbed until they end.
//!
//! When the peer's agent hands its node over to a newer agent, its sessions send GOAWAY: a
//! CONNECT that finds its session going away is handed back unsent and opened once more on a
//! new session (with the newer agent), and the old session is marked retired
//! ([`SessionHealth`]) so that HTTP connections pooled on its streams take no new requests.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use crate::state::peers::Baggage;
use anyhow::{Context, Result, anyhow};
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode, body::Bytes, client::conn::http2};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::identity::{IdentityManager, SpiffeId, tls};

/// Header that carries the original client address to the destination agent, which uses it
/// for the kernel's address-based ingress rules (the source identity is in the certificate).
/// Carries the source workload's metadata (W3C baggage, the keys ztunnel uses).
pub const BAGGAGE_HEADER: &str = "baggage";
pub const ORIGIN_HEADER: &str = "forwarded";

/// HTTP/2 flow-control windows: large enough that one stream can fill a fast link without
/// waiting for WINDOW_UPDATEs (the defaults, 64 KiB, cap a stream at ~1 window per RTT).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub const MAX_FRAME: u32 = 256 * 1024;
pub const SEND_BUFFER: usize = 1024 * 1024;
/// Streams one tunnel session may carry at once: every meshed connection from one source
/// identity to one node is a stream of the same session, so hyper's default (200) would make
/// the 201st concurrent connection wait for another to end. An idle stream costs a few
/// hundred bytes of HTTP/2 state.
pub const MAX_STREAMS: u32 = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The destination agent answered the CONNECT with a refusal (403: authorization, 404: not a
/// workload of that node); callers tell it apart from a failure to reach the agent.
#[derive(Debug, thiserror::Error)]
#[error("agent at {node} refused CONNECT {target}: {status} {reason}")]
pub struct ConnectRefused {
    pub node: SocketAddr,
    pub target: SocketAddr,
    pub status: StatusCode,
    pub reason: String,
}

#[derive(Default, Serialize)]
pub struct TunnelClientStats {
    /// TLS sessions opened to other nodes.
    pub sessions_opened: AtomicU64,
    /// CONNECT streams opened (one per proxied connection).
    pub streams_opened: AtomicU64,
    /// Sessions that failed to establish (TCP, TLS or HTTP/2).
    pub session_failures: AtomicU64,
    /// CONNECT requests the destination agent refused (authorization, unknown target).
    pub streams_refused: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: String,
    node: SocketAddr,
    serial: String,
}

/// One pooled session, as shown on /tunnels.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub source: String,
    pub node: SocketAddr,
    pub local_serial: String,
    pub peer: Option<String>,
    pub peer_serial: Option<String>,
    pub opened_unix: u64,
}

struct Session {
    sender: http2::SendRequest<Empty<Bytes>>,
    info: SessionInfo,
    health: SessionHealth,
}

/// Whether a session still takes new streams. A stream's holder (an HTTP/1.1 or HTTP/2
/// connection pooled on it) checks it before reusing the stream for another request.
#[derive(Clone, Debug, Default)]
pub struct SessionHealth {
    retired: Arc<std::sync::atomic::AtomicBool>,
}

impl SessionHealth {
    /// The peer said GOAWAY (its agent is handing over) or the session closed.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }
}

/// Why one attempt to open a stream failed.
enum OpenError {
    /// The session is going away (GOAWAY) or gone; the request was not sent.
    SessionGone(SessionHealth, anyhow::Error),
    Other(anyhow::Error),
}

/// A tunnelled stream and the health of the session it runs on.
pub type Stream = (TokioIo<hyper::upgrade::Upgraded>, SessionHealth);

pub struct TunnelPool {
    identity: Arc<IdentityManager>,
    /// One slot per key; the async mutex makes concurrent first connections share one session
    /// instead of each opening its own.
    slots: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<Option<Session>>>>>,
    configs: Mutex<HashMap<String, Arc<rustls::ClientConfig>>>,
    /// What the destination agents said about the workloads behind endpoint addresses (the
    /// `baggage` of their CONNECT answers), for the metric labels of the client side.
    remote_workloads: Mutex<HashMap<IpAddr, Baggage>>,
    /// Bumped whenever `remote_workloads` changes, so that label sets resolved from it can
    /// tell they are stale (see `metrics::series_cache`).
    remote_generation: std::sync::atomic::AtomicU64,
    pub stats: TunnelClientStats,
    /// Session tasks count as carried connections while the agent drains.
    drain: super::drain::Drain,
}

/// Endpoint workloads remembered from CONNECT answers; the map starts over when it is full
/// (pods come and go, answers refill it).
const REMOTE_WORKLOADS_KEPT: usize = 65_536;

impl TunnelPool {
    pub fn new(identity: Arc<IdentityManager>, drain: super::drain::Drain) -> TunnelPool {
        TunnelPool {
            drain,
            identity,
            slots: Mutex::new(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
            remote_workloads: Mutex::new(HashMap::new()),
            remote_generation: Default::default(),
            stats: TunnelClientStats::default(),
        }
    }

    /// The workload behind `ip` as its node's agent described it, if a stream went there.
    pub fn remote_workload(&self, ip: IpAddr) -> Option<Baggage> {
        self.remote_workloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&crate::state::canonical_ip(ip))
            .cloned()
    }

    /// Changes with every change of what destination agents said about their workloads.
    pub fn remote_generation(&self) -> u64 {
        self.remote_generation.load(Ordering::Acquire)
    }

    /// Opens a tunnelled stream to `target` through the agent at `node`, as `source`.
    pub async fn open(
        &self,
        source: &SpiffeId,
        node: SocketAddr,
        target: SocketAddr,
        origin: IpAddr,
        baggage: Option<&str>,
    ) -> Result<Stream> {
        let mut retried = false;
        loop {
            match self.open_once(source, node, target, origin, baggage).await {
                Ok(stream) => return Ok(stream),
                Err(OpenError::Other(e)) => return Err(e),
                Err(OpenError::SessionGone(health, e)) => {
                    health.retire();
                    if retried {
                        return Err(e);
                    }
                    // The peer's agent is handing over: once more, on a new session.
                    retried = true;
                    tracing::debug!(%node, error = format!("{e:#}"), "tunnel session going away; opening a new one");
                }
            }
        }
    }

    async fn open_once(
        &self,
        source: &SpiffeId,
        node: SocketAddr,
        target: SocketAddr,
        origin: IpAddr,
        baggage: Option<&str>,
    ) -> Result<Stream, OpenError> {
        let svid = self.identity.svid(source).map_err(OpenError::Other)?;
        let key = PoolKey {
            source: source.to_string(),
            node,
            serial: svid.serial.clone(),
        };
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            // Sessions of a rotated-away certificate get no new streams; drop their slots
            // (their open streams keep the connection alive until they finish).
            slots.retain(|k, _| {
                k.source != key.source || k.serial == key.serial || k.node != key.node
            });
            slots.entry(key.clone()).or_default().clone()
        };
        let (mut sender, health) = {
            let mut guard = slot.lock().await;
            let reusable = guard.as_ref().is_some_and(|s| {
                !s.sender.is_closed() && s.sender.is_ready() && !s.health.is_retired()
            });
            if !reusable {
                if let Some(old) = guard.as_ref() {
                    old.health.retire();
                }
                *guard = Some(
                    self.connect(source, node, &svid.serial)
                        .await
                        .inspect_err(|_| {
                            self.stats.session_failures.fetch_add(1, Ordering::Relaxed);
                        })
                        .map_err(OpenError::Other)?,
                );
            }
            let session = guard
                .as_ref()
                .map(|s| (s.sender.clone(), s.health.clone()))
                .ok_or_else(|| OpenError::Other(anyhow!("no session")))?;
            // A draining agent keeps no session for later: once its streams end, it closes.
            if self.drain.is_draining() {
                *guard = None;
            }
            session
        };
        if let Err(e) = sender.ready().await {
            return Err(OpenError::SessionGone(
                health,
                anyhow!(e).context(format!("tunnel session to {node} closed")),
            ));
        }
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .header(ORIGIN_HEADER, forwarded_for(origin));
        // The source workload's name for the destination's metrics (ztunnel's baggage).
        if let Some(b) = baggage.and_then(|b| http::HeaderValue::from_str(b).ok()) {
            request = request.header(BAGGAGE_HEADER, b);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .context("build CONNECT request")
            .map_err(OpenError::Other)?;
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => {
                // Handed back unsent, or refused unprocessed by a peer going away: the
                // session stopped taking streams (GOAWAY), and the CONNECT may go again.
                let unsent = e.take_message().is_some();
                let error = e.into_error();
                let unsent = unsent || never_processed(&error);
                let error = anyhow!(error).context(format!("CONNECT {target} via {node}"));
                return Err(if unsent {
                    OpenError::SessionGone(health, error)
                } else {
                    OpenError::Other(error)
                });
            }
        };
        if response.status() != StatusCode::OK {
            self.stats.streams_refused.fetch_add(1, Ordering::Relaxed);
            let reason = response
                .headers()
                .get("mesh-reason")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            return Err(OpenError::Other(
                ConnectRefused {
                    node,
                    target,
                    status: response.status(),
                    reason,
                }
                .into(),
            ));
        }
        self.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = response
            .headers()
            .get(BAGGAGE_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            let mut known = self
                .remote_workloads
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if known.len() >= REMOTE_WORKLOADS_KEPT {
                known.clear();
            }
            let baggage = Baggage::parse(b);
            let ip = crate::state::canonical_ip(target.ip());
            if known.get(&ip) != Some(&baggage) {
                known.insert(ip, baggage);
                self.remote_generation.fetch_add(1, Ordering::AcqRel);
            }
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .with_context(|| format!("CONNECT {target} via {node}: no stream"))
            .map_err(OpenError::Other)?;
        Ok((TokioIo::new(upgraded), health))
    }

    /// Builds the client configs of these identities now, so that the first connection of a
    /// workload does not pay for it.
    pub fn prepare(&self, sources: &[SpiffeId]) -> Result<()> {
        for source in sources {
            self.client_config(source)?;
        }
        Ok(())
    }

    fn client_config(&self, source: &SpiffeId) -> Result<Arc<rustls::ClientConfig>> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = configs.get(&source.to_string()) {
            return Ok(c.clone());
        }
        let config = tls::client_config(self.identity.clone(), source.clone())?;
        configs.insert(source.to_string(), config.clone());
        Ok(config)
    }

    async fn connect(&self, source: &SpiffeId, node: SocketAddr, serial: &str) -> Result<Session> {
        let config = self.client_config(source)?;
        let started = std::time::Instant::now();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(node))
            .await
            .map_err(|_| anyhow!("connect to tunnel {node}: timed out"))?
            .with_context(|| format!("connect to tunnel {node}"))?;
        tcp.set_nodelay(true)?;
        let tcp = super::linger::LingeringClose::new(
            tcp,
            self.drain.clone(),
            "closing tunnel connection",
        );
        let tcp_us = started.elapsed().as_micros();
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TlsConnector::from(config).connect(ServerName::IpAddress(node.ip().into()), tcp),
        )
        .await
        .map_err(|_| anyhow!("TLS handshake with {node}: timed out"))?
        .with_context(|| format!("TLS handshake with {node}"))?;
        let tls_us = started.elapsed().as_micros();
        let peer = tls::peer_identity(tls.get_ref().1);
        let (sender, connection) = http2::Builder::new(self.drain.executor())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buf_size(SEND_BUFFER)
            .keep_alive_interval(Duration::from_secs(30))
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(TokioIo::new(tls))
            .await
            .with_context(|| format!("HTTP/2 handshake with {node}"))?;
        let carried = self.drain.track("tunnel session (client)");
        tokio::spawn(async move {
            let _carried = carried;
            if let Err(e) = connection.await {
                tracing::debug!(%node, error = %e, "tunnel session ended");
            }
        });
        self.stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            %node,
            %source,
            serial,
            tcp_us,
            tls_us,
            total_us = started.elapsed().as_micros(),
            "tunnel session opened"
        );
        Ok(Session {
            sender,
            health: SessionHealth::default(),
            info: SessionInfo {
                source: source.to_string(),
                node,
                local_serial: serial.to_owned(),
                peer: peer.as_ref().map(|p| p.id.to_string()),
                peer_serial: peer.map(|p| p.serial),
                opened_unix: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            },
        })
    }

    /// The agent is draining: no session takes new streams, and the pool lets go of them,
    /// so each closes (after writing out what its streams queued) once its streams end.
    pub fn retire_all(&self) -> usize {
        let slots: Vec<_> =
            std::mem::take(&mut *self.slots.lock().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .collect();
        let count = slots.len();
        for slot in slots {
            // A slot being connected right now is left to its opener, which sees the drain.
            if let Ok(mut guard) = slot.try_lock()
                && let Some(session) = guard.take()
            {
                session.health.retire();
            }
        }
        count
    }

    /// Pooled sessions that are still open.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let slots: Vec<_> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter_map(|slot| {
                let guard = slot.try_lock().ok()?;
                guard
                    .as_ref()
                    .filter(|s| !s.sender.is_closed())
                    .map(|s| s.info.clone())
            })
            .collect()
    }
}

/// Whether the peer said it did not process the stream: REFUSED_STREAM, or a GOAWAY whose
/// last stream id is below it (RFC 9113 8.7: such requests can be retried).
fn never_processed(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        source = e.source();
    }
    false
}

/// RFC 7239 `for=` value; IPv6 addresses are quoted and bracketed.
pub fn forwarded_for(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}

/// Parses what [`forwarded_for`] writes.
pub fn parse_forwarded_for(value: &str) -> Option<IpAddr> {
    let v = value.trim().strip_prefix("for=")?;
    let v = v.trim_matches('"');
    let v = v
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(v);
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trip() {
        for ip in ["10.1.2.3", "fd00::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_forwarded_for(&forwarded_for(ip)), Some(ip));
        }
        assert_eq!(parse_forwarded_for("for=nonsense"), None);
        assert_eq!(parse_forwarded_for("by=1.2.3.4"), None);
    }
}
