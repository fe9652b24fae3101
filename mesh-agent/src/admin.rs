//! Admin server on 127.0.0.1:15000: /flows, /flows/stream, /stats, /status, /config_dump,
//! /certs, /tunnels, /backends, /logging, /healthz/ready.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    sync::atomic::Ordering,
    task::{Context as TaskContext, Poll},
};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body, Bytes, Frame},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::{
    net::TcpListener,
    sync::{broadcast::error::RecvError, mpsc},
};

use crate::agent::Shared;

type AdminBody = BoxBody<Bytes, Infallible>;

/// Every path the admin server answers, listed on a 404.
const PATHS: [&str; 10] = [
    "/flows",
    "/flows/stream",
    "/stats",
    "/status",
    "/config_dump",
    "/certs",
    "/tunnels",
    "/backends",
    "/logging",
    "/healthz/ready",
];

/// Lines buffered between the broadcast subscription and the client's socket.
const STREAM_BUFFER: usize = 64;

/// Serves the admin API on `listener` (bound here, or handed over by the previous agent)
/// until a newer agent takes the node over.
pub fn spawn(listener: std::net::TcpListener, shared: Arc<Shared>) -> Result<()> {
    let listener = TcpListener::from_std(listener).context("cannot register the admin listener")?;
    let drain = shared.transport.drain.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = drain.started() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else {
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

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<AdminBody> {
    let body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn method_not_allowed(allowed: &str) -> Response<AdminBody> {
    let mut resp = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": format!("only {allowed} is supported here")}),
    );
    if let Ok(value) = allowed.replace(" and ", ", ").parse() {
        resp.headers_mut().insert(hyper::header::ALLOW, value);
    }
    resp
}

fn route(req: &Request<hyper::body::Incoming>, shared: &Arc<Shared>) -> Response<AdminBody> {
    let path = req.uri().path();
    if path == "/logging" {
        return logging(req.method(), req.uri().query(), shared);
    }
    if req.method() != Method::GET {
        return method_not_allowed("GET");
    }
    match path {
        "/flows/stream" => flow_stream(shared),
        "/status" => json_response(StatusCode::OK, crate::status::collect(shared)),
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
                "maps": shared.transport.maps.usage(),
                "proxy": {
                    "accepted": shared.proxy.stats.accepted.load(Ordering::Relaxed),
                    "forwarded": shared.proxy.stats.forwarded.load(Ordering::Relaxed),
                    "failed": shared.proxy.stats.failed.load(Ordering::Relaxed),
                    "bytes_up": shared.proxy.stats.bytes_up.load(Ordering::Relaxed),
                    "bytes_down": shared.proxy.stats.bytes_down.load(Ordering::Relaxed),
                    "spliced": shared.proxy.stats.spliced.load(Ordering::Relaxed),
                },
                "inbound": shared.transport.inbound_stats,
                "tunnel": shared.transport.tunnels.stats,
                "http": shared.http.stats,
                "http_upstream": shared.http.upstreams.stats,
                "identity": {"rotations": shared.transport.identity.rotations()},
                "programs": shared.programs,
                "listeners": shared.listeners(),
            }),
        ),
        "/certs" => json_response(
            StatusCode::OK,
            json!({
                "trust_domain": shared.transport.identity.trust_domain(),
                "certificates": shared.transport.identity.snapshot(),
                "trust_bundle": shared.transport.identity.bundle_info(),
            }),
        ),
        "/tunnels" => json_response(
            StatusCode::OK,
            json!({
                "outbound": shared.transport.tunnels.sessions(),
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
                json!({
                    "status": {
                        "ready": shared.ready.load(Ordering::Relaxed),
                        "config_source": shared.config_source,
                        "config_reloads": shared.config_reloads.success.load(Ordering::Relaxed),
                        "config_reload_failures": shared.config_reloads.failure.load(Ordering::Relaxed),
                        "last_reload_error": *shared.config_reloads.last_error.lock().unwrap_or_else(|p| p.into_inner()),
                        "source": if shared.kube.get().is_some() { "kubernetes" } else { "file" },
                        "kubernetes_synced": shared.kube.get().map(|k| k.applied()),
                        "rejected_objects": shared.kube.get().map(|k| k.rejected()).unwrap_or_default(),
                    },
                    "config": state.config,
                    "workloads": state.workloads,
                }),
            )
        }
        "/healthz/ready" => {
            let synced = shared.kube.get().is_none_or(|k| k.applied());
            if shared.ready.load(Ordering::Relaxed) && synced {
                json_response(StatusCode::OK, json!({"ready": true}))
            } else {
                json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false}))
            }
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "not found", "paths": PATHS}),
        ),
    }
}

/// `GET /logging`: the filter in force. `POST /logging?level=<filter>`: replace it (EnvFilter
/// syntax, URL-encoded); 400 with the parse error leaves the old one in force.
fn logging(method: &Method, query: Option<&str>, shared: &Shared) -> Response<AdminBody> {
    match *method {
        Method::GET => json_response(StatusCode::OK, json!({"filter": shared.log.current()})),
        Method::POST => {
            let level = query.and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "level")
                    .map(|(_, v)| v.into_owned())
            });
            let Some(level) = level else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({
                        "error": "missing ?level=<filter>, e.g. POST /logging?level=info,mesh_agent=debug",
                        "filter": shared.log.current(),
                    }),
                );
            };
            match shared.log.set(&level) {
                Ok(()) => {
                    let filter = shared.log.current();
                    tracing::info!(filter = %filter, "log filter changed");
                    json_response(StatusCode::OK, json!({"filter": filter}))
                }
                Err(e) => json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("{e:#}"), "filter": shared.log.current()}),
                ),
            }
        }
        _ => method_not_allowed("GET and POST"),
    }
}

/// A response body fed by a channel: each message is one chunk; the body ends when the sender
/// goes away. Dropping it (the client disconnected) closes the channel, which stops the sender.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// `GET /flows/stream`: newline-delimited JSON, one FlowEvent per line, for as long as the
/// client stays. A client that falls more than the broadcast capacity behind gets
/// `{"event":"lost","count":N}` in place of the events it missed.
fn flow_stream(shared: &Arc<Shared>) -> Response<AdminBody> {
    let mut events = shared.flow_events.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    tokio::spawn(async move {
        loop {
            let line = tokio::select! {
                // The client went away: hyper dropped the body.
                _ = tx.closed() => return,
                event = events.recv() => match event {
                    Ok(event) => serde_json::to_vec(&event).unwrap_or_default(),
                    Err(RecvError::Lagged(count)) => {
                        serde_json::to_vec(&json!({"event": "lost", "count": count}))
                            .unwrap_or_default()
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            let mut line = line;
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .header("cache-control", "no-cache")
        .body(ChannelBody { rx }.boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}
