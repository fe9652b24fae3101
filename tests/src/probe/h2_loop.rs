//! `h2-loop`: one long-lived HTTP/2 (h2c prior knowledge) connection making a request every
//! interval, the way a gRPC channel or a keep-alive client behaves. When the server sends
//! GOAWAY it opens a new connection, as real clients do, and a request the old connection
//! handed back unsent goes on the new one. One JSON line per request
//! (`{"start_ms","ms","ok","status","connection"}`) and a summary line at the end
//! (`{"summary":true,"requests","failed","connections"}`).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;

use super::cli::H2LoopArgs;
use super::output::emit;

/// Returns whether every request succeeded.
pub fn run(args: &H2LoopArgs) -> Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run_loop(args))
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn run_loop(args: &H2LoopArgs) -> Result<bool> {
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let timeout = Duration::from_millis(args.timeout_ms);
    let uri = format!("http://{}{}", args.authority, args.path);
    let mut sender = connect(args.connect).await?;
    let mut connections = 1u64;
    let (mut requests, mut failed) = (0u64, 0u64);
    while Instant::now() < until {
        let start_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, async {
            let mut request = hyper::Request::get(&uri).body(Empty::<Bytes>::new())?;
            // At most one reconnect per request: after GOAWAY the connection is done.
            for _ in 0..2 {
                if sender.is_closed() || sender.ready().await.is_err() {
                    sender = connect(args.connect).await?;
                    connections += 1;
                }
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        response.into_body().collect().await?;
                        return Ok::<u16, anyhow::Error>(status);
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => {
                            request = unsent;
                            sender = connect(args.connect).await?;
                            connections += 1;
                        }
                        None => return Err(e.into_error().into()),
                    },
                }
            }
            anyhow::bail!("request handed back twice")
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
        requests += 1;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let line = match outcome {
            Ok(status) if status == 200 => {
                json!({"ok": true, "status": status, "start_ms": start_ms, "ms": ms, "connection": connections})
            }
            Ok(status) => {
                failed += 1;
                json!({"ok": false, "status": status, "start_ms": start_ms, "ms": ms, "connection": connections})
            }
            Err(e) => {
                failed += 1;
                json!({"ok": false, "error": format!("{e:#}"), "start_ms": start_ms, "ms": ms, "connection": connections})
            }
        };
        emit(&line);
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    emit(&json!({
        "summary": true,
        "requests": requests,
        "failed": failed,
        "connections": connections,
    }));
    Ok(failed == 0)
}
