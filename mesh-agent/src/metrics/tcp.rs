//! Istio's TCP metrics from the kernel's per-connection counters.
//!
//! sock_ops counts every TCP connection of the meshed cgroup, redirected or not; its close
//! event carries the final payload byte counts. This module decides, once per connection,
//! which series the connection belongs to, counts it opened, adds its bytes as they grow
//! (read from the live map when Prometheus scrapes) and counts it closed from the event.
//!
//! The kernel knows the socket's addresses, its direction and (for a client) its cgroup. What
//! it cannot know the agent adds as annotations, keyed the way the kernel keys the socket:
//! - a redirected client socket (connected to the agent's outbound listener): the service
//!   and endpoint the agent chose, and whether the tunnel carried it (mutual TLS);
//! - a workload's server socket that the agent connected to on a client's behalf: the
//!   client's identity and workload.
//!
//! The agent's own sockets are not application traffic: they are recognised by socket
//! cookie (registered as the agent opens them), by the agent's cgroup, or by the agent's
//! listening ports.
//!
//! Reporters follow ztunnel: the client end is reported with reporter="source", the server
//! end with reporter="destination". Bytes follow Istio: "received" is client -> server,
//! "sent" is server -> client, whichever end is reporting.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mesh_common::{CONN_ACTIVE, CONN_REDIRECTED, ConnEvent, ConnStats, SockKey, is_loopback};

use super::{
    labels::{Peer, Reporter, RequestProtocol, Security, TrafficLabels},
    records::ConnectionRecord,
    registry::{IstioMetrics, TcpSeries},
};
use crate::transport::sink::Annotation;
use crate::{
    ebpf::{bytes_to_ip, ip_to_bytes},
    state::State,
};

/// A live connection without its annotation yet (the agent accepts or connects a moment
/// after the kernel sees the connection) is left for a later scan for this long.
const ANNOTATION_GRACE: Duration = Duration::from_secs(2);
/// Annotations and own-socket cookies whose connection never showed up are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// Ports the agent listens on, to tell its accepted sockets from a workload's.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentPorts {
    pub loopback: [u16; 2],
    pub any: [u16; 3],
}

impl AgentPorts {
    pub fn of(state: &State) -> AgentPorts {
        let t = &state.config.telemetry;
        AgentPorts {
            loopback: [state.node.outbound_port, state.node.admin.port()],
            any: [
                state.node.tunnel_port,
                t.metrics_address.port(),
                t.readiness_address.port(),
            ],
        }
    }

    fn is_agent(&self, local: SocketAddr) -> bool {
        self.any.contains(&local.port())
            || (local.ip().is_loopback() || is_mapped_loopback(local.ip()))
                && self.loopback.contains(&local.port())
    }
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    is_loopback(&ip_to_bytes(ip))
}

struct Tracked {
    /// `None`: not application traffic (the agent's own), kept so it is not judged again.
    series: Option<(Arc<TrafficLabels>, TcpSeries)>,
    request_bytes: u64,
    response_bytes: u64,
    /// Scans in a row that did not find it live (its close event may still be queued).
    missed: u8,
}

#[derive(Default)]
struct Inner {
    tracked: HashMap<u64, Tracked>,
    annotations: HashMap<SockKey, (Annotation, Instant)>,
    own: HashMap<u64, Instant>,
}

/// What judging a connection needs to look at.
struct View<'a> {
    metrics: &'a IstioMetrics,
    state: &'a State,
    ports: AgentPorts,
}

enum Verdict {
    Count(Box<TrafficLabels>),
    Ignore,
    Later,
}

/// Bytes of a connection in Istio's directions: (request, response).
fn directional_bytes(stats: &ConnStats) -> (u64, u64) {
    let sent = stats.tcp_bytes_acked + stats.fast_bytes_sent;
    let received = stats.tcp_bytes_received + stats.fast_bytes_received;
    if stats.flags & CONN_ACTIVE != 0 {
        (sent, received)
    } else {
        (received, sent)
    }
}

#[derive(Default)]
pub struct TcpAccounting {
    inner: Mutex<Inner>,
    agent_cgroup: std::sync::atomic::AtomicU64,
}

impl TcpAccounting {
    pub fn new(agent_cgroup: u64) -> TcpAccounting {
        TcpAccounting {
            inner: Mutex::default(),
            agent_cgroup: agent_cgroup.into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what the agent knows about the connection the kernel keys as `key`.
    pub fn annotate(&self, key: SockKey, annotation: Annotation) {
        self.lock()
            .annotations
            .insert(key, (annotation, Instant::now()));
    }

    /// A socket the agent opened itself (by SO_COOKIE): never application traffic.
    pub fn own_socket(&self, cookie: u64) {
        self.lock().own.insert(cookie, Instant::now());
    }

    pub fn tracked(&self) -> usize {
        self.lock().tracked.len()
    }

    fn judge(
        &self,
        inner: &mut Inner,
        view: &View<'_>,
        key: &SockKey,
        stats: &ConnStats,
        live: bool,
    ) -> Verdict {
        let (state, ports) = (view.state, &view.ports);
        if inner.own.contains_key(&stats.cookie) {
            return Verdict::Ignore;
        }
        let local = SocketAddr::new(bytes_to_ip(key.local_ip), key.local_port);
        let remote = SocketAddr::new(bytes_to_ip(key.remote_ip), key.remote_port);
        let peers = &state.peers;
        let young = live && mesh_age(stats) < ANNOTATION_GRACE;
        if stats.flags & CONN_ACTIVE != 0 {
            let agent = self.agent_cgroup.load(std::sync::atomic::Ordering::Relaxed);
            if stats.cgroup_id != 0 && stats.cgroup_id == agent {
                return Verdict::Ignore;
            }
            let source = peers
                .by_cgroup(stats.cgroup_id)
                .cloned()
                .unwrap_or_default();
            if stats.flags & CONN_REDIRECTED != 0 {
                return match inner.annotations.remove(key) {
                    Some((
                        Annotation::Outbound {
                            service,
                            destination,
                            security,
                        },
                        _,
                    )) => Verdict::Count(Box::new(TrafficLabels::new(
                        Reporter::Source,
                        &source,
                        service.as_ref(),
                        &destination,
                        RequestProtocol::Tcp,
                        security,
                    ))),
                    _ if live => Verdict::Later,
                    // The agent never took it (it failed before accepting).
                    _ => Verdict::Count(Box::new(TrafficLabels::new(
                        Reporter::Source,
                        &source,
                        None,
                        &Peer::default(),
                        RequestProtocol::Tcp,
                        Security::Unknown,
                    ))),
                };
            }
            // A tunnel connection of the agent whose SYN-ACK was handled in some other
            // process's context.
            let to_peer_agent = remote.port() == state.node.tunnel_port
                && state.config.nodes.iter().any(|n| n.address == remote.ip());
            if to_peer_agent {
                return Verdict::Ignore;
            }
            if young {
                // The agent registers its own sockets right after connect().
                return Verdict::Later;
            }
            let destination = peers.by_ip(remote.ip()).cloned().unwrap_or_default();
            return Verdict::Count(Box::new(TrafficLabels::new(
                Reporter::Source,
                &source,
                peers.service_of_endpoint(remote),
                &destination,
                RequestProtocol::Tcp,
                Security::Unknown,
            )));
        }
        let destination = peers.by_ip(local.ip()).cloned();
        if destination.is_none() && ports.is_agent(local) {
            return Verdict::Ignore;
        }
        let (source, security) = match inner.annotations.remove(key) {
            Some((Annotation::Inbound { source, security }, _)) => (source, security),
            _ if young => return Verdict::Later,
            _ => (
                peers.by_ip(remote.ip()).cloned().unwrap_or_default(),
                Security::Unknown,
            ),
        };
        Verdict::Count(Box::new(TrafficLabels::new(
            Reporter::Destination,
            &source,
            peers.service_of_endpoint(local),
            &destination.unwrap_or_default(),
            RequestProtocol::Tcp,
            security,
        )))
    }

    fn start(
        &self,
        inner: &mut Inner,
        view: &View<'_>,
        key: &SockKey,
        stats: &ConnStats,
        live: bool,
    ) -> Option<Tracked> {
        let metrics = view.metrics;
        let series = match self.judge(inner, view, key, stats, live) {
            Verdict::Later => return None,
            Verdict::Ignore => None,
            Verdict::Count(labels) => {
                let series = metrics.tcp(&labels);
                series.opened.inc();
                Some((Arc::new(*labels), series))
            }
        };
        Some(Tracked {
            series,
            request_bytes: 0,
            response_bytes: 0,
            missed: 0,
        })
    }

    /// Brings the byte counts of live connections up to date (before a scrape) and forgets
    /// what is stale.
    pub fn refresh(&self, metrics: &IstioMetrics, state: &State, live: &[(SockKey, ConnStats)]) {
        let view = View {
            metrics,
            state,
            ports: AgentPorts::of(state),
        };
        let mut inner = self.lock();
        let mut seen = HashSet::with_capacity(live.len());
        for (key, stats) in live {
            seen.insert(stats.cookie);
            let tracked = match inner.tracked.remove(&stats.cookie) {
                Some(t) => Some(t),
                None => self.start(&mut inner, &view, key, stats, true),
            };
            let Some(mut tracked) = tracked else {
                continue;
            };
            tracked.missed = 0;
            add_bytes(&mut tracked, stats);
            inner.tracked.insert(stats.cookie, tracked);
        }
        // A connection gone from the map without its close event (ring buffer overrun):
        // closed with the bytes last seen, on the second scan that misses it, as its event
        // may just be queued.
        let mut closed = Vec::new();
        for (cookie, t) in inner.tracked.iter_mut() {
            if !seen.contains(cookie) {
                t.missed += 1;
                if t.missed >= 2 {
                    closed.push(*cookie);
                }
            }
        }
        for cookie in closed {
            if let Some(t) = inner.tracked.remove(&cookie)
                && let Some((_, series)) = &t.series
            {
                series.closed.inc();
            }
        }
        let now = Instant::now();
        inner
            .annotations
            .retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
        inner
            .own
            .retain(|cookie, at| seen.contains(cookie) || now.duration_since(*at) < FORGET_AFTER);
    }

    /// Accounts a connection's close event; returns its labels for the access log when it is
    /// application traffic.
    pub fn close(
        &self,
        metrics: &IstioMetrics,
        state: &State,
        event: &ConnEvent,
        mut on_record: impl FnMut(ConnectionRecord),
    ) {
        let view = View {
            metrics,
            state,
            ports: AgentPorts::of(state),
        };
        let stats = &event.stats;
        let mut inner = self.lock();
        inner.own.remove(&stats.cookie);
        let tracked = match inner.tracked.remove(&stats.cookie) {
            Some(t) => Some(t),
            None => self.start(&mut inner, &view, &event.key, stats, false),
        };
        // An annotation that was never needed (the connection was judged without it).
        inner.annotations.remove(&event.key);
        drop(inner);
        let Some(mut tracked) = tracked else {
            return;
        };
        add_bytes(&mut tracked, stats);
        let Some((labels, series)) = &tracked.series else {
            return;
        };
        series.closed.inc();
        let local = SocketAddr::new(bytes_to_ip(event.key.local_ip), event.key.local_port);
        let remote = SocketAddr::new(bytes_to_ip(event.key.remote_ip), event.key.remote_port);
        on_record(ConnectionRecord {
            labels: labels.clone(),
            direction: if stats.flags & CONN_ACTIVE != 0 {
                "outbound"
            } else {
                "inbound"
            },
            local,
            remote,
            request_bytes: tracked.request_bytes,
            response_bytes: tracked.response_bytes,
            duration: Duration::from_nanos(event.end_ns.saturating_sub(stats.start_ns)),
            redirected: stats.flags & CONN_REDIRECTED != 0,
        });
    }
}

fn add_bytes(tracked: &mut Tracked, stats: &ConnStats) {
    let (request, response) = directional_bytes(stats);
    if let Some((_, series)) = &tracked.series {
        series
            .received
            .inc_by(request.saturating_sub(tracked.request_bytes));
        series
            .sent
            .inc_by(response.saturating_sub(tracked.response_bytes));
    }
    tracked.request_bytes = tracked.request_bytes.max(request);
    tracked.response_bytes = tracked.response_bytes.max(response);
}

/// Age of a live connection.
fn mesh_age(stats: &ConnStats) -> Duration {
    Duration::from_nanos(crate::flows::monotonic_ns().saturating_sub(stats.start_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_common::CONN_PASSIVE;

    #[test]
    fn bytes_follow_istio_directions_for_both_ends() {
        let client = ConnStats {
            tcp_bytes_acked: 100,
            tcp_bytes_received: 7,
            fast_bytes_sent: 1,
            flags: CONN_ACTIVE,
            ..Default::default()
        };
        assert_eq!(directional_bytes(&client), (101, 7));
        let server = ConnStats {
            tcp_bytes_acked: 7,
            tcp_bytes_received: 101,
            flags: CONN_PASSIVE,
            ..Default::default()
        };
        assert_eq!(directional_bytes(&server), (101, 7));
    }

    #[test]
    fn bytes_are_added_as_deltas() {
        let metrics = IstioMetrics::new();
        let series = metrics.tcp(&TrafficLabels::default());
        let mut t = Tracked {
            series: Some((Arc::new(TrafficLabels::default()), series.clone())),
            request_bytes: 0,
            response_bytes: 0,
            missed: 0,
        };
        let mut stats = ConnStats {
            tcp_bytes_acked: 10,
            tcp_bytes_received: 3,
            flags: CONN_ACTIVE,
            ..Default::default()
        };
        add_bytes(&mut t, &stats);
        stats.tcp_bytes_acked = 25;
        add_bytes(&mut t, &stats);
        add_bytes(&mut t, &stats);
        assert_eq!(series.received.get(), 25);
        assert_eq!(series.sent.get(), 3);
    }
}
