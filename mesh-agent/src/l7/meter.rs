//! What the L7 path knows about each request, and how it hands a finished one to telemetry.
//!
//! A [`RequestMeter`] is made when a request arrives; routing fills in the backend, endpoint
//! and attempts; the response body is then wrapped so that the request is recorded when its
//! last byte has been sent (Istio's request duration runs to the end of the response), or
//! when the client goes away first. gRPC status comes from the response headers
//! (trailers-only answers) or from the trailers. What a finished request is counted as (its
//! labels, its series, its access-log line) is telemetry's business, behind
//! [`RequestSink`]: the L7 path never imports it.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::AtomicU64},
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, Response, request::Parts};
use hyper::body::{Body, Frame, SizeHint};

use super::{body::RespBody, flags::FLAGS_HEADER, target::RequestTarget};
use crate::{
    routing::{BackendKey, Via},
    state::peers::Peer,
    transport::{Transport, sink::Security},
};

/// Which side of a request (or connection) reports it, as Istio's `reporter` label says.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reporter {
    #[default]
    Source,
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// A request whose response is done (or whose client went away).
pub struct FinishedRequest {
    pub meter: RequestMeter,
    pub status: u16,
    pub grpc_status: Option<u32>,
    /// The response flag of an answer the agent made itself (or of a broken one).
    pub flags: Option<&'static str>,
    pub response_bytes: u64,
}

/// Where the L7 path reports requests: telemetry implements it and the agent's wiring hands
/// it to the L7 path at construction.
pub trait RequestSink: Send + Sync {
    /// The recorder of the requests of one client connection (or one tunnel stream at the
    /// destination) from `source`: it may keep what it resolved for the connection's next
    /// requests.
    fn connection(
        self: Arc<Self>,
        transport: Arc<Transport>,
        source: Arc<Peer>,
    ) -> Arc<dyn RequestRecorder>;
}

/// Records the finished requests of one connection.
pub trait RequestRecorder: Send + Sync {
    fn record(&self, request: FinishedRequest);
}

/// What is known about one request while it is routed.
pub struct RequestMeter {
    pub started: Instant,
    /// Source for the L7 path of the client's node; destination for a request observed where
    /// it is delivered to the workload.
    pub reporter: Reporter,
    /// Where the request is delivered (the destination agent): the endpoint is a workload of
    /// this node, and its service is the one that forwards to that endpoint.
    pub at_local_endpoint: bool,
    pub request_bytes: Arc<AtomicU64>,
    pub grpc: bool,
    pub client: SocketAddr,
    pub target: RequestTarget,
    /// "HTTP/1.1", "HTTP/2", ...
    pub version: &'static str,
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
    pub delivered_locally: bool,
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
    pub fn record_relayed(
        self,
        recorder: &dyn RequestRecorder,
        status: u16,
        grpc_status: Option<u32>,
        flags: Option<&'static str>,
        response_bytes: u64,
    ) {
        recorder.record(FinishedRequest {
            meter: self,
            status,
            grpc_status,
            flags,
            response_bytes,
        });
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

    /// Wraps the response so that the request is recorded (by the connection's `recorder`)
    /// once the response is done.
    pub fn finish(
        self,
        recorder: Arc<dyn RequestRecorder>,
        response: Response<RespBody>,
    ) -> Response<RespBody> {
        let (parts, body) = response.into_parts();
        let grpc_status = self.grpc.then(|| grpc_status(&parts.headers)).flatten();
        let flags = parts
            .headers
            .get(FLAGS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(static_flag);
        let finished = FinishedRequest {
            meter: self,
            status: parts.status.as_u16(),
            grpc_status,
            flags,
            response_bytes: 0,
        };
        let body = Metered {
            inner: body,
            pending: Some((finished, recorder)),
        };
        Response::from_parts(parts, super::body::boxed(body))
    }
}

/// The flag names are a fixed set; the label keeps them as static strings.
fn static_flag(text: &str) -> Option<&'static str> {
    super::flags::ResponseFlag::ALL
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

/// The response body on its way to the client; records the request at its end.
struct Metered {
    inner: RespBody,
    pending: Option<(FinishedRequest, Arc<dyn RequestRecorder>)>,
}

impl Metered {
    /// Records the request, once.
    fn record(&mut self) {
        if let Some((finished, recorder)) = self.pending.take() {
            recorder.record(finished);
        }
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some((p, _)) = self.pending.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        p.response_bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref()
                        && p.meter.grpc
                        && let Some(status) = grpc_status(trailers)
                    {
                        p.grpc_status = Some(status);
                    }
                }
                if self.inner.is_end_stream() {
                    self.record();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.record(),
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
        self.record();
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
    fn versions_are_named_like_envoy() {
        assert_eq!(version_text(http::Version::HTTP_11), "HTTP/1.1");
        assert_eq!(version_text(http::Version::HTTP_2), "HTTP/2");
    }
}
