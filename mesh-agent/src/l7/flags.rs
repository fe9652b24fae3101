//! Response flags (Envoy's vocabulary, which Istio's `response_flags` label uses) and the
//! responses the agent generates itself.

use http::{HeaderValue, Response, StatusCode};

use super::body::{RespBody, full};

/// Header that carries the response flags of a response the agent generated or altered.
pub const FLAGS_HEADER: &str = "x-mesh-response-flags";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFlag {
    /// No route matched the request (404).
    NoRoute,
    /// The route's backend service is unknown or has no usable weight (500).
    NoCluster,
    /// No healthy endpoint: none at all, or all ejected (503).
    NoHealthyUpstream,
    /// No connection to the endpoint could be made (503).
    UpstreamConnectFailure,
    /// The upstream reset or closed the stream before a complete response head (502).
    UpstreamConnectionTermination,
    /// The request or the last attempt timed out (504).
    UpstreamRequestTimeout,
    /// Retries were exhausted; the last upstream answer is returned.
    UpstreamRetryLimitExceeded,
    /// The retry budget of the backend was spent; the failure is returned as it was.
    RetryBudgetExhausted,
    /// The destination's authorization refused the connection (403).
    RbacDenied,
    /// The client went away before the response.
    DownstreamConnectionTermination,
}

impl ResponseFlag {
    pub const ALL: [ResponseFlag; 10] = [
        ResponseFlag::NoRoute,
        ResponseFlag::NoCluster,
        ResponseFlag::NoHealthyUpstream,
        ResponseFlag::UpstreamConnectFailure,
        ResponseFlag::UpstreamConnectionTermination,
        ResponseFlag::UpstreamRequestTimeout,
        ResponseFlag::UpstreamRetryLimitExceeded,
        ResponseFlag::RetryBudgetExhausted,
        ResponseFlag::RbacDenied,
        ResponseFlag::DownstreamConnectionTermination,
    ];

    pub fn code(self) -> &'static str {
        match self {
            ResponseFlag::NoRoute => "NR",
            ResponseFlag::NoCluster => "NC",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamConnectFailure => "UF",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::UpstreamRetryLimitExceeded => "URX",
            ResponseFlag::RetryBudgetExhausted => "RL",
            ResponseFlag::RbacDenied => "RBAC",
            ResponseFlag::DownstreamConnectionTermination => "DC",
        }
    }

    /// The status of a response the agent generates for this flag.
    pub fn status(self) -> StatusCode {
        match self {
            ResponseFlag::NoRoute => StatusCode::NOT_FOUND,
            ResponseFlag::NoCluster => StatusCode::INTERNAL_SERVER_ERROR,
            ResponseFlag::NoHealthyUpstream
            | ResponseFlag::UpstreamConnectFailure
            | ResponseFlag::UpstreamRetryLimitExceeded
            | ResponseFlag::RetryBudgetExhausted => StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlag::UpstreamConnectionTermination => StatusCode::BAD_GATEWAY,
            ResponseFlag::UpstreamRequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            ResponseFlag::RbacDenied => StatusCode::FORBIDDEN,
            ResponseFlag::DownstreamConnectionTermination => StatusCode::BAD_REQUEST,
        }
    }

    pub(crate) fn text(self) -> &'static str {
        match self {
            ResponseFlag::NoRoute => "no route matched the request",
            ResponseFlag::NoCluster => "the route has no usable backend",
            ResponseFlag::NoHealthyUpstream => "no healthy upstream",
            ResponseFlag::UpstreamConnectFailure => "upstream connect error",
            ResponseFlag::UpstreamConnectionTermination => {
                "upstream reset the connection before responding"
            }
            ResponseFlag::UpstreamRequestTimeout => "upstream request timeout",
            ResponseFlag::UpstreamRetryLimitExceeded => "retries exhausted",
            ResponseFlag::RetryBudgetExhausted => "retry budget exhausted",
            ResponseFlag::RbacDenied => "access denied by the destination's authorization policy",
            ResponseFlag::DownstreamConnectionTermination => "client went away",
        }
    }
}

/// A response the agent answers by itself: the flag's status, the flag header and a one-line
/// body. gRPC clients get the matching grpc-status in headers (a trailers-only response), so
/// that they see UNAVAILABLE / DEADLINE_EXCEEDED instead of a bare HTTP error.
pub fn local_reply(flag: ResponseFlag, grpc: bool) -> Response<RespBody> {
    let status = flag.status();
    let (status, body, content_type) = if grpc {
        // gRPC over HTTP: a "trailers-only" answer is a 200 with grpc-status in the headers.
        (StatusCode::OK, full(""), "application/grpc")
    } else {
        (
            status,
            full(format!("{}\n", flag.text())),
            "text/plain; charset=utf-8",
        )
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(FLAGS_HEADER, HeaderValue::from_static(flag.code()));
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if grpc {
        headers.insert(
            "grpc-status",
            HeaderValue::from_static(grpc_status(flag.status())),
        );
        headers.insert("grpc-message", HeaderValue::from_static(flag.code()));
    }
    response
}

/// gRPC's mapping of HTTP statuses (doc/http-grpc-status-mapping.md).
fn grpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "13",
        401 => "16",
        403 => "7",
        404 => "12",
        429 | 502..=504 => "14",
        _ => "2",
    }
}

/// Adds a flag to a response that came from upstream (e.g. URX on the last failed attempt).
pub fn mark<B>(response: &mut Response<B>, flag: ResponseFlag) {
    response
        .headers_mut()
        .insert(FLAGS_HEADER, HeaderValue::from_static(flag.code()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_replies_carry_status_and_flag() {
        for (flag, status) in [
            (ResponseFlag::NoRoute, 404),
            (ResponseFlag::NoHealthyUpstream, 503),
            (ResponseFlag::UpstreamConnectFailure, 503),
            (ResponseFlag::UpstreamConnectionTermination, 502),
            (ResponseFlag::UpstreamRequestTimeout, 504),
            (ResponseFlag::RbacDenied, 403),
            (ResponseFlag::NoCluster, 500),
        ] {
            let r = local_reply(flag, false);
            assert_eq!(r.status().as_u16(), status, "{flag:?}");
            assert_eq!(r.headers()[FLAGS_HEADER], flag.code());
        }
    }

    #[test]
    fn grpc_local_replies_are_trailers_only() {
        let r = local_reply(ResponseFlag::UpstreamRequestTimeout, true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        let r = local_reply(ResponseFlag::NoRoute, true);
        assert_eq!(r.headers()["grpc-status"], "12");
    }
}
