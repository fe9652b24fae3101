//! The metrics endpoint (Istio's :15020, GET /metrics or /stats/prometheus) and the
//! readiness endpoint (:15021, GET /healthz/ready), each on its own listener so that a probe
//! never waits behind a large scrape.

use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Bytes, header, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::agent::Shared;
use crate::metrics::text;

/// How often live connections are read for their byte counts between scrapes, so that the
/// bookkeeping of connections and annotations stays bounded without a scraper.
const REFRESH_EVERY: Duration = Duration::from_secs(30);

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn serve<F, Fut>(listener: TcpListener, shared: Arc<Shared>, handler: F)
where
    F: Fn(Request<hyper::body::Incoming>, Arc<Shared>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let drain = shared.transport.drain.clone();
    loop {
        // After a handover the newer agent answers on this socket.
        let accepted = tokio::select! {
            biased;
            _ = drain.started() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let shared = shared.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let fut = handler(req, shared.clone());
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves both endpoints on their listeners (bound by the caller, so that a port in use
/// fails the start, or handed over by the previous agent).
pub fn spawn(
    metrics: std::net::TcpListener,
    readiness: std::net::TcpListener,
    shared: Arc<Shared>,
) -> Result<()> {
    let metrics_listener =
        TcpListener::from_std(metrics).context("cannot register the metrics listener")?;
    let readiness_listener =
        TcpListener::from_std(readiness).context("cannot register the readiness listener")?;
    tokio::spawn(serve(metrics_listener, shared.clone(), metrics_handler));
    tokio::spawn(serve(readiness_listener, shared.clone(), readiness_handler));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        loop {
            tick.tick().await;
            let shared = shared.clone();
            let _ = tokio::task::spawn_blocking(move || super::refresh(&shared)).await;
        }
    });
    Ok(())
}

async fn metrics_handler(
    req: Request<hyper::body::Incoming>,
    shared: Arc<Shared>,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    if !matches!(req.uri().path(), "/metrics" | "/stats/prometheus") {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".into(),
        );
    }
    let openmetrics = text::wants_openmetrics(
        req.headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let encoded = tokio::task::spawn_blocking(move || super::encode(&shared, openmetrics)).await;
    match encoded {
        Ok(Ok(body)) => respond(
            StatusCode::OK,
            if openmetrics {
                text::OPENMETRICS_CONTENT_TYPE
            } else {
                text::PROMETHEUS_CONTENT_TYPE
            },
            body,
        ),
        _ => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "cannot encode metrics\n".into(),
        ),
    }
}

async fn readiness_handler(
    req: Request<hyper::body::Incoming>,
    shared: Arc<Shared>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/healthz/ready" {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz/ready\n".into(),
        );
    }
    let problems = super::readiness_problems(&shared);
    if problems.is_empty() {
        respond(StatusCode::OK, "text/plain", "ready\n".into())
    } else {
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("not ready: {}\n", problems.join("; ")),
        )
    }
}
