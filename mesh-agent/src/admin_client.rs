//! Client side of the admin API, for CLI commands such as `mesh-agent flows` and
//! `mesh-agent status`.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::{Method, StatusCode, body::Bytes, body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

async fn connect(admin: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(admin).await.with_context(|| {
        format!("cannot reach the agent's admin server at {admin} (is mesh-agent running?)")
    })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(admin: SocketAddr, method: Method, path: &str) -> Result<hyper::Response<Incoming>> {
    let mut sender = connect(admin).await?;
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin.to_string())
        .body(Empty::<Bytes>::new())?;
    sender
        .send_request(req)
        .await
        .with_context(|| format!("admin request {path} to {admin} failed"))
}

/// The admin server's error: its JSON `error` field when there is one, else the body.
fn failure(status: StatusCode, body: &[u8]) -> anyhow::Error {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    anyhow::anyhow!("admin server answered {status}: {message}")
}

async fn request(admin: SocketAddr, method: Method, path: &str) -> Result<Vec<u8>> {
    let resp = send(admin, method, path).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    if !status.is_success() {
        return Err(failure(status, &body));
    }
    Ok(body)
}

/// GET `path` from the agent's admin server and return the body.
pub async fn get(admin: SocketAddr, path: &str) -> Result<Vec<u8>> {
    request(admin, Method::GET, path).await
}

/// POST to `path` (parameters in the query) and return the body.
pub async fn post(admin: SocketAddr, path: &str) -> Result<Vec<u8>> {
    request(admin, Method::POST, path).await
}

/// GET a streaming `path` (newline-delimited); fails when the agent cannot be reached or
/// refuses. Read it with [`read_lines`].
pub async fn open_stream(admin: SocketAddr, path: &str) -> Result<Incoming> {
    let resp = send(admin, Method::GET, path).await?;
    let status = resp.status();
    let body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        return Err(failure(status, &bytes));
    }
    Ok(body)
}

/// Calls `on_line` with each complete line of `body` as it arrives, without the newline.
/// Returns when the server ends the stream (Ok) or the connection breaks (Err); either way
/// the caller learns that the agent went away.
pub async fn read_lines(
    mut body: Incoming,
    mut on_line: impl FnMut(&str) -> Result<()>,
) -> Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the admin stream broke")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            let line = line.trim_end_matches('\r');
            if !line.is_empty() {
                on_line(line)?;
            }
        }
    }
    if !pending.is_empty() {
        bail!("the admin stream ended in the middle of a line");
    }
    Ok(())
}
