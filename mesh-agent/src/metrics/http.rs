//! Istio's request metrics and the request access log, for the requests the L7 path
//! reports (`l7::meter`): each client connection (and each tunnel stream at the destination)
//! gets a [`ConnectionRequests`] recorder that resolves a finished request's labels (cached
//! per connection, see `series_cache`), counts it in its series and hands its access-log line
//! to the writer.

use std::sync::{Arc, atomic::Ordering};

use super::{
    Telemetry,
    labels::{Flags, GrpcStatus, Peer, Reporter, RequestLabels, RequestProtocol, TrafficLabels},
    records::RequestRecord,
    series_cache::{Facts, Resolved, SeriesCache, SeriesKey},
};
use crate::{
    l7::meter::{FinishedRequest, RequestRecorder, RequestSink},
    state::State,
    transport::Transport,
};

impl RequestSink for Telemetry {
    fn connection(
        self: Arc<Self>,
        transport: Arc<Transport>,
        source: Arc<Peer>,
    ) -> Arc<dyn RequestRecorder> {
        Arc::new(ConnectionRequests {
            telemetry: self,
            transport,
            source,
            cache: SeriesCache::default(),
        })
    }
}

/// The recorder of one connection's requests.
pub struct ConnectionRequests {
    telemetry: Arc<Telemetry>,
    /// For the model in force and what destination agents said about their workloads.
    transport: Arc<Transport>,
    source: Arc<Peer>,
    /// The label sets this connection's requests were counted under.
    cache: SeriesCache,
}

impl RequestRecorder for ConnectionRequests {
    fn record(&self, request: FinishedRequest) {
        let telemetry = &*self.telemetry;
        let istio = telemetry.switches.istio_enabled();
        let access = telemetry.switches.request_log_enabled()
            && super::accesslog::AccessLog::filter_allows();
        if !istio && !access {
            return;
        }
        let m = &request.meter;
        let state = self.transport.state();
        let key = SeriesKey {
            facts: Facts {
                state: Arc::downgrade(&state),
                remote_generation: self.transport.tunnels.remote_generation(),
                istio,
                reporter: m.reporter,
                endpoint: m.endpoint,
                protocol: if m.grpc {
                    RequestProtocol::Grpc
                } else {
                    RequestProtocol::Http
                },
                security: m.security,
                status: request.status,
                grpc_status: request.grpc_status,
                flags: request.flags,
            },
            service: m.backend.as_ref().or(m.service.as_ref()),
        };
        let resolved = self.cache.get(&key, || {
            telemetry.resolve(self.labels(&request, &state, &key), istio)
        });
        drop(state);
        let duration = m.started.elapsed();
        let request_bytes = m.request_bytes.load(Ordering::Relaxed);
        let emit = |resolved: &Resolved| {
            if let Some(series) = &resolved.series {
                series.record(duration, request_bytes, request.response_bytes);
            }
            if access {
                telemetry.access_log.request(RequestRecord {
                    labels: resolved.labels.clone(),
                    client: m.client,
                    target: m.target.clone(),
                    protocol: m.version,
                    duration,
                    request_bytes,
                    response_bytes: request.response_bytes,
                    upstream: m.endpoint,
                    attempts: m.attempts,
                });
            }
        };
        emit(&resolved);
        // Same node: no destination agent sees the request, this one delivered it.
        if m.reporter == Reporter::Source
            && m.delivered_locally
            && let Some(flags) = flags_at_destination(request.flags)
        {
            let mut key = key;
            key.facts.reporter = Reporter::Destination;
            key.facts.flags = flags;
            let at_destination = self.cache.get(&key, || {
                let mut labels = RequestLabels::clone(&resolved.labels);
                labels.traffic.reporter = Reporter::Destination;
                labels.traffic.response_flags = Flags(flags);
                telemetry.resolve(labels, istio)
            });
            emit(&at_destination);
        }
    }
}

impl ConnectionRequests {
    /// The label set of a request, from the model: the service and workloads it names.
    fn labels(
        &self,
        request: &FinishedRequest,
        state: &State,
        key: &SeriesKey<'_>,
    ) -> RequestLabels {
        let m = &request.meter;
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
                    peers.endpoint_workload(e.ip(), |ip| self.transport.tunnels.remote_workload(ip))
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
        traffic.response_flags = Flags(request.flags);
        RequestLabels {
            traffic,
            response_code: request.status,
            grpc_response_status: GrpcStatus(request.grpc_status),
        }
    }
}

/// A label set and, when Istio metrics are on, its series (the registry lookup hashes the
/// whole label set: done once per connection and outcome, not per request).
impl Telemetry {
    fn resolve(&self, labels: RequestLabels, istio: bool) -> Resolved {
        Resolved {
            series: istio.then(|| self.istio.request_series(&labels)),
            labels: Arc::new(labels),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
