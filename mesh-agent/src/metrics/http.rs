//! Istio's request metrics and the request access log, for the L7 path.
//!
//! A [`RequestMeter`] is made when a request arrives; routing fills in the backend, endpoint
//! and attempts; the response body is then wrapped so that the request is recorded when its
//! last byte has been sent (Istio's request duration runs to the end of the response), or
//! when the client goes away first. gRPC status comes from the response headers
//! (trailers-only answers) or from the trailers.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, Response, request::Parts};
use hyper::body::{Body, Frame, SizeHint};

use super::{
    labels::{
        Flags, GrpcStatus, Peer, Reporter, RequestLabels, RequestProtocol, Security, TrafficLabels,
    },
    records::{RequestRecord, RequestTarget},
    series_cache::{Facts, Resolved, SeriesCache, SeriesKey},
};
use crate::{
    l7::{body::RespBody, flags::FLAGS_HEADER},
    routing::BackendKey,
    runtime::Shared,
    state::{State, Via},
};

/// What is known about one request while it is routed.
pub struct RequestMeter {
    started: Instant,
    /// Source for the L7 path of the client's node; destination for a request observed where
    /// it is delivered to the workload.
    pub reporter: Reporter,
    /// Where the request is delivered (the destination agent): the endpoint is a workload of
    /// this node, and its service is the one that forwards to that endpoint.
    at_local_endpoint: bool,
    pub request_bytes: Arc<AtomicU64>,
    grpc: bool,
    client: SocketAddr,
    target: RequestTarget,
    version: &'static str,
    /// The service the client asked for (the VIP's), set by routing.
    pub service: Option<BackendKey>,
    /// Set by routing: the backend service picked, the endpoint of the last attempt, how it
    /// was reached, and the number of attempts.
    pub backend: Option<BackendKey>,
    pub endpoint: Option<SocketAddr>,
    pub security: Security,
    pub attempts: u32,
    /// The last attempt went to a workload of this node through the in-process inbound path:
    /// this agent also delivered the request, so it reports it as the destination too.
    delivered_locally: bool,
}

fn version_text(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

impl RequestMeter {
    pub fn new(
        parts: &Parts,
        grpc: bool,
        client: SocketAddr,
        service: Option<BackendKey>,
    ) -> RequestMeter {
        RequestMeter::with_target(
            RequestTarget::of(parts),
            version_text(parts.version),
            grpc,
            client,
            service,
        )
    }

    fn with_target(
        target: RequestTarget,
        version: &'static str,
        grpc: bool,
        client: SocketAddr,
        service: Option<BackendKey>,
    ) -> RequestMeter {
        RequestMeter {
            started: Instant::now(),
            reporter: Reporter::Source,
            at_local_endpoint: false,
            request_bytes: Arc::default(),
            grpc,
            client,
            target,
            version,
            service,
            backend: None,
            endpoint: None,
            security: Security::Unknown,
            attempts: 0,
            delivered_locally: false,
        }
    }

    /// A request seen where it is delivered: the destination agent serving a tunnel stream
    /// to `endpoint`, a workload of this node. One attempt, over mutual TLS.
    pub fn at_destination(
        parts: &Parts,
        grpc: bool,
        client: SocketAddr,
        endpoint: SocketAddr,
    ) -> RequestMeter {
        RequestMeter::new(parts, grpc, client, None).delivered_to(endpoint)
    }

    /// The same for an HTTP/1.x request the destination relays without parsing it into
    /// parts (`l7::inbound_h1`).
    pub fn at_destination_h1(
        target: RequestTarget,
        http10: bool,
        client: SocketAddr,
        endpoint: SocketAddr,
    ) -> RequestMeter {
        let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        RequestMeter::with_target(target, version, false, client, None).delivered_to(endpoint)
    }

    /// The same for an HTTP/2 request the destination relays as frames (`l7::inbound_h2`).
    pub fn at_destination_h2(
        target: RequestTarget,
        grpc: bool,
        client: SocketAddr,
        endpoint: SocketAddr,
    ) -> RequestMeter {
        RequestMeter::with_target(target, "HTTP/2", grpc, client, None).delivered_to(endpoint)
    }

    fn delivered_to(mut self, endpoint: SocketAddr) -> RequestMeter {
        self.reporter = Reporter::Destination;
        self.at_local_endpoint = true;
        self.endpoint = Some(endpoint);
        self.security = Security::MutualTls;
        self.attempts = 1;
        self
    }

    /// Records a request whose answer was relayed as bytes (`l7::inbound_h1`, `inbound_h2`):
    /// the status, the grpc-status, the flag of an answer the agent made itself, and the
    /// response body bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn record_relayed(
        self,
        shared: &Arc<Shared>,
        source: Arc<Peer>,
        cache: Arc<SeriesCache>,
        status: u16,
        grpc_status: Option<u32>,
        flags: Option<&'static str>,
        response_bytes: u64,
    ) {
        Pending {
            meter: self,
            shared: shared.clone(),
            source,
            cache,
            status,
            grpc_status,
            flags,
            response_bytes,
        }
        .record();
    }

    /// An attempt is being sent to `endpoint` of `backend`.
    pub fn attempt(&mut self, backend: &BackendKey, endpoint: SocketAddr, via: &Via) {
        if self.backend.as_ref() != Some(backend) {
            self.backend = Some(backend.clone());
        }
        self.endpoint = Some(endpoint);
        self.security = match via {
            Via::Tunnel { .. } | Via::Local => Security::MutualTls,
            Via::Direct => Security::Unknown,
        };
        self.delivered_locally = matches!(via, Via::Local);
        self.attempts += 1;
    }

    /// Wraps the response so that the request is recorded once the response is done.
    /// `cache` is the connection's (see `series_cache`).
    pub fn finish(
        self,
        shared: Arc<Shared>,
        source: Arc<Peer>,
        cache: Arc<SeriesCache>,
        response: Response<RespBody>,
    ) -> Response<RespBody> {
        let (parts, body) = response.into_parts();
        let grpc_status = self.grpc.then(|| grpc_status(&parts.headers)).flatten();
        let flags = parts
            .headers
            .get(FLAGS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(static_flag);
        let pending = Pending {
            meter: self,
            shared,
            source,
            cache,
            status: parts.status.as_u16(),
            grpc_status,
            flags,
            response_bytes: 0,
        };
        let body = Metered {
            inner: body,
            pending: Some(pending),
        };
        Response::from_parts(parts, crate::l7::body::boxed(body))
    }
}

/// The flag names are a fixed set; the label keeps them as static strings.
fn static_flag(text: &str) -> Option<&'static str> {
    crate::l7::flags::ResponseFlag::ALL
        .iter()
        .map(|f| f.code())
        .find(|name| *name == text)
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

struct Pending {
    meter: RequestMeter,
    shared: Arc<Shared>,
    source: Arc<Peer>,
    cache: Arc<SeriesCache>,
    status: u16,
    grpc_status: Option<u32>,
    flags: Option<&'static str>,
    response_bytes: u64,
}

impl Pending {
    fn record(self) {
        let shared = &self.shared;
        let istio = shared.telemetry.istio_enabled();
        let access =
            shared.telemetry.request_log_enabled() && crate::accesslog::AccessLog::filter_allows();
        if !istio && !access {
            return;
        }
        let m = &self.meter;
        let state = shared.state();
        let key = SeriesKey {
            facts: Facts {
                state: Arc::downgrade(&state),
                remote_generation: shared.tunnels.remote_generation(),
                istio,
                reporter: m.reporter,
                endpoint: m.endpoint,
                protocol: if m.grpc {
                    RequestProtocol::Grpc
                } else {
                    RequestProtocol::Http
                },
                security: m.security,
                status: self.status,
                grpc_status: self.grpc_status,
                flags: self.flags,
            },
            service: m.backend.as_ref().or(m.service.as_ref()),
        };
        let resolved = self
            .cache
            .get(&key, || resolve(shared, self.labels(&state, &key), istio));
        drop(state);
        let duration = m.started.elapsed();
        let request_bytes = m.request_bytes.load(Ordering::Relaxed);
        let emit = |resolved: &Resolved| {
            if let Some(series) = &resolved.series {
                series.record(duration, request_bytes, self.response_bytes);
            }
            if access {
                shared.access_log.request(RequestRecord {
                    labels: resolved.labels.clone(),
                    client: m.client,
                    target: m.target.clone(),
                    protocol: m.version,
                    duration,
                    request_bytes,
                    response_bytes: self.response_bytes,
                    upstream: m.endpoint,
                    attempts: m.attempts,
                });
            }
        };
        emit(&resolved);
        // Same node: no destination agent sees the request, this one delivered it.
        if m.reporter == Reporter::Source
            && m.delivered_locally
            && let Some(flags) = flags_at_destination(self.flags)
        {
            let mut key = key;
            key.facts.reporter = Reporter::Destination;
            key.facts.flags = flags;
            let at_destination = self.cache.get(&key, || {
                let mut labels = RequestLabels::clone(&resolved.labels);
                labels.traffic.reporter = Reporter::Destination;
                labels.traffic.response_flags = Flags(flags);
                resolve(shared, labels, istio)
            });
            emit(&at_destination);
        }
    }

    /// The label set of a request, from the model: the service and workloads it names.
    fn labels(&self, state: &State, key: &SeriesKey<'_>) -> RequestLabels {
        let m = &self.meter;
        let peers = &state.peers;
        let (service, destination) = match (m.at_local_endpoint, m.endpoint) {
            (true, Some(endpoint)) => (
                peers.service_of_endpoint(endpoint).cloned(),
                peers.by_ip(endpoint.ip()).cloned(),
            ),
            _ => (
                key.service
                    .as_ref()
                    .map(|k| peers.service(&k.name, &k.namespace)),
                m.endpoint.and_then(|e| {
                    peers.endpoint_workload(e.ip(), |ip| self.shared.tunnels.remote_workload(ip))
                }),
            ),
        };
        let mut traffic = TrafficLabels::new(
            m.reporter,
            &self.source,
            service.as_ref(),
            &destination.unwrap_or_default(),
            key.facts.protocol,
            m.security,
        );
        traffic.response_flags = Flags(self.flags);
        RequestLabels {
            traffic,
            response_code: self.status,
            grpc_response_status: GrpcStatus(self.grpc_status),
        }
    }
}

/// A label set and, when Istio metrics are on, its series (the registry lookup hashes the
/// whole label set: done once per connection and outcome, not per request).
fn resolve(shared: &Shared, labels: RequestLabels, istio: bool) -> Resolved {
    Resolved {
        series: istio.then(|| shared.istio.request_series(&labels)),
        labels: Arc::new(labels),
    }
}

/// What the destination side of a request delivered in process reports, from the flags of
/// the answer the client got: `None` when the request never reached the workload (refused,
/// no connection, timed out before an answer, or answered by the agent itself), else the
/// flags the delivery itself would carry. Retry marks (URX, RL) sit on the workload's own
/// answer and are the source's business; UC (the workload's connection broke mid-request)
/// is what a destination agent reports too.
fn flags_at_destination(flags: Option<&'static str>) -> Option<Option<&'static str>> {
    use crate::l7::flags::ResponseFlag;
    let Some(flag) = flags else {
        return Some(None);
    };
    let code = |f: ResponseFlag| f.code();
    if flag == code(ResponseFlag::UpstreamRetryLimitExceeded)
        || flag == code(ResponseFlag::RetryBudgetExhausted)
    {
        Some(None)
    } else if flag == code(ResponseFlag::UpstreamConnectionTermination) {
        Some(Some(flag))
    } else {
        None
    }
}

/// The response body on its way to the client; records the request at its end.
struct Metered {
    inner: RespBody,
    pending: Option<Pending>,
}

impl Body for Metered {
    type Data = Bytes;
    type Error = crate::l7::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(p) = self.pending.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        p.response_bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref()
                        && p.meter.grpc
                        && let Some(status) = grpc_status(trailers)
                    {
                        p.grpc_status = Some(status);
                    }
                }
                if self.inner.is_end_stream()
                    && let Some(p) = self.pending.take()
                {
                    p.record();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(p) = self.pending.take() {
                    p.record();
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // An empty body is never polled, and a client that goes away stops polling.
        if let Some(p) = self.pending.take() {
            p.record();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_is_read_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(14));
    }

    #[test]
    fn flags_map_to_their_static_names() {
        assert_eq!(static_flag("UH"), Some("UH"));
        assert_eq!(static_flag("NR"), Some("NR"));
        assert_eq!(static_flag("bogus"), None);
    }

    #[test]
    fn destination_side_of_local_delivery_reports_only_delivered_requests() {
        assert_eq!(flags_at_destination(None), Some(None));
        assert_eq!(flags_at_destination(Some("URX")), Some(None));
        assert_eq!(flags_at_destination(Some("RL")), Some(None));
        assert_eq!(flags_at_destination(Some("UC")), Some(Some("UC")));
        for never in ["UF", "RBAC", "UT", "UH", "NR", "NC", "DC"] {
            assert_eq!(flags_at_destination(Some(never)), None, "{never}");
        }
    }

    #[test]
    fn versions_are_named_like_envoy() {
        assert_eq!(version_text(http::Version::HTTP_11), "HTTP/1.1");
        assert_eq!(version_text(http::Version::HTTP_2), "HTTP/2");
    }
}
