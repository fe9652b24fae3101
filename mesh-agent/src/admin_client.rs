//! Client side of the admin API, for CLI commands such as `mesh-agent flows`.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// GET `path` from the agent's admin server and return the body.
pub async fn get(admin: SocketAddr, path: &str) -> Result<Vec<u8>> {
    let stream = TcpStream::connect(admin).await.with_context(|| {
        format!("cannot reach the agent's admin server at {admin} (is mesh-agent running?)")
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", admin.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    if !status.is_success() {
        bail!(
            "admin server answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(body)
}
