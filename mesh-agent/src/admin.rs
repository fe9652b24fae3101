//! Admin server on 127.0.0.1:15000: /flows, /stats, /config_dump, /certs, /tunnels, /backends,
//! /healthz/ready.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, sync::atomic::Ordering};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::runtime::Shared;

pub async fn spawn(addr: SocketAddr, shared: Arc<Shared>) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind admin server on {addr}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(route(&req, &shared)) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn route(req: &Request<hyper::body::Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "only GET is supported"}),
        );
    }
    match req.uri().path() {
        "/flows" => {
            let filter = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("state="))
                    .map(str::to_string)
            });
            let flows: Vec<_> = shared
                .flows()
                .into_iter()
                .filter(|f| filter.as_ref().is_none_or(|s| &f.state == s))
                .collect();
            json_response(StatusCode::OK, json!(flows))
        }
        "/stats" => json_response(
            StatusCode::OK,
            json!({
                "kernel": shared.kernel_counters(),
                "maps": shared.maps.usage(),
                "proxy": {
                    "accepted": shared.proxy_stats.accepted.load(Ordering::Relaxed),
                    "forwarded": shared.proxy_stats.forwarded.load(Ordering::Relaxed),
                    "failed": shared.proxy_stats.failed.load(Ordering::Relaxed),
                    "bytes_up": shared.proxy_stats.bytes_up.load(Ordering::Relaxed),
                    "bytes_down": shared.proxy_stats.bytes_down.load(Ordering::Relaxed),
                },
                "inbound": shared.inbound_stats,
                "tunnel": shared.tunnels.stats,
                "http": shared.http_stats,
                "http_upstream": shared.upstreams.stats,
                "identity": {"rotations": shared.identity.rotations()},
                "programs": shared.programs,
                "listeners": shared.listeners,
            }),
        ),
        "/certs" => json_response(
            StatusCode::OK,
            json!({
                "trust_domain": shared.identity.trust_domain(),
                "certificates": shared.identity.snapshot(),
                "trust_bundle": shared.identity.bundle_info(),
            }),
        ),
        "/tunnels" => json_response(
            StatusCode::OK,
            json!({
                "outbound": shared.tunnels.sessions(),
                "inbound": shared.inbound_sessions(),
            }),
        ),
        "/backends" => {
            let state = shared.state();
            let mut keys: Vec<_> = state.backends.keys().collect();
            keys.sort();
            let backends: Vec<_> = keys
                .into_iter()
                .filter_map(|k| state.backends.get(k).map(|b| b.snapshot()))
                .collect();
            json_response(StatusCode::OK, json!(backends))
        }
        "/config_dump" => {
            let state = shared.state();
            json_response(
                StatusCode::OK,
                json!({"config": state.config, "workloads": state.workloads}),
            )
        }
        "/healthz/ready" => {
            if shared.ready.load(Ordering::Relaxed) {
                json_response(StatusCode::OK, json!({"ready": true}))
            } else {
                json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false}))
            }
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "not found", "paths": ["/flows", "/stats", "/config_dump", "/certs", "/tunnels", "/backends", "/healthz/ready"]}),
        ),
    }
}
