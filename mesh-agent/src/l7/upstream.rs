//! Upstream HTTP connections, pooled per (source identity, certificate serial, endpoint,
//! HTTP version). Each connection rides whatever reaches the endpoint: a CONNECT stream on
//! the pooled mTLS tunnel session of the source identity (other nodes), the in-process
//! inbound path with authorization (this node), or plain TCP (outside the mesh). So many
//! requests share one tunnel stream (HTTP/2) or a few keep-alive streams (HTTP/1.1), and all
//! of them share one TLS session per destination node.
//!
//! The certificate serial is part of the key for the same reason as in the tunnel pool:
//! after a rotation new requests go over connections made with the new certificate.
//!
//! A connection on a tunnel stream remembers its session's health: once the session is
//! retired (the peer's agent handed its node over and said GOAWAY), the connection takes no
//! new requests, so that the old agent can finish and new requests reach the new one.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;

use super::body::ReqBody;
pub use crate::transport::dial::Source;
use crate::{
    state::Upstream,
    transport::{
        Transport,
        dial::{DialError, Io, dial},
        tunnel::{CONNECTION_WINDOW, STREAM_WINDOW, SessionHealth},
    },
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle HTTP/1.1 connections kept per key; more concurrent requests open more connections,
/// which are closed when they come back to a full pool.
const MAX_IDLE_H1: usize = 64;

/// Why an attempt got no response.
#[derive(Debug)]
pub enum SendError {
    /// The destination refused the connection by policy (403 from the destination agent).
    Refused(String),
    /// No connection could be made.
    Connect(anyhow::Error),
    /// The connection or stream failed after the request was (possibly) sent.
    Request(hyper::Error),
    /// The per-try timeout expired.
    Timeout,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Refused(why) => write!(f, "refused: {why}"),
            SendError::Connect(e) => write!(f, "connect: {e:#}"),
            SendError::Request(e) => write!(f, "request: {e}"),
            SendError::Timeout => f.write_str("per-try timeout"),
        }
    }
}

#[derive(Default, Serialize)]
pub struct UpstreamStats {
    /// Upstream HTTP connections opened (HTTP/1.1 and HTTP/2).
    pub connections_opened: AtomicU64,
    /// Requests sent on a pooled connection rather than a new one.
    pub requests_reused: AtomicU64,
    /// Connection attempts that failed or were refused.
    pub connect_failures: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: String,
    serial: String,
    endpoint: SocketAddr,
}

/// A pooled connection and, when it rides a tunnel stream, its session's health.
#[derive(Clone)]
struct Pooled<S> {
    sender: S,
    session: Option<SessionHealth>,
}

impl<S> Pooled<S> {
    /// Whether the connection may take another request.
    fn usable(&self, closed: impl Fn(&S) -> bool) -> bool {
        !closed(&self.sender) && !self.session.as_ref().is_some_and(SessionHealth::is_retired)
    }
}

/// The HTTP/2 connection of one key. Requests clone the open sender under a short std mutex;
/// only opening a connection waits on the async one.
#[derive(Default)]
struct H2Connection {
    sender: Mutex<Option<Pooled<http2::SendRequest<ReqBody>>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl H2Connection {
    fn open(&self) -> Option<http2::SendRequest<ReqBody>> {
        self.sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|p| p.usable(http2::SendRequest::is_closed))
            .map(|p| p.sender.clone())
    }
}

type H2Slot = Arc<H2Connection>;

#[derive(Default)]
pub struct UpstreamPool {
    h1: Mutex<HashMap<Key, Vec<Pooled<http1::SendRequest<ReqBody>>>>>,
    h2: Mutex<HashMap<Key, H2Slot>>,
    pub stats: UpstreamStats,
}

type BoxIo = TokioIo<Box<dyn Io>>;

impl UpstreamPool {
    /// Forgets every pooled connection (requests in flight finish on theirs): after an
    /// authorization change, new requests then open new tunnel streams, which the destination
    /// authorizes under the new policies. Returns how many were dropped.
    pub fn clear(&self) -> usize {
        let mut h1 = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = h1.values().map(Vec::len).sum::<usize>() + h2.len();
        h1.clear();
        h2.clear();
        dropped
    }

    /// Sends one request to `upstream` and returns the response head (the body streams).
    pub async fn send(
        &self,
        transport: &Transport,
        source: &Source<'_>,
        upstream: &Upstream,
        h2: bool,
        request: Request<ReqBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let serial = transport
            .identity
            .svid(source.identity)
            .map(|s| s.serial.clone())
            .map_err(SendError::Connect)?;
        let key = Key {
            source: source.identity.to_string(),
            serial,
            endpoint: upstream.addr,
        };
        if h2 {
            self.send_h2(transport, source, upstream, key, request)
                .await
        } else {
            self.send_h1(transport, source, upstream, key, request)
                .await
        }
    }

    async fn send_h1(
        &self,
        transport: &Transport,
        source: &Source<'_>,
        upstream: &Upstream,
        key: Key,
        request: Request<ReqBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut request = request;
        // A pooled connection may have been closed by the backend just now; hyper hands the
        // request back when it was not sent, and it then goes on a new connection.
        while let Some(mut pooled) = self.idle_h1(&key) {
            match pooled.sender.try_send_request(request).await {
                Ok(response) => {
                    self.stats.requests_reused.fetch_add(1, Ordering::Relaxed);
                    self.return_h1(key, pooled);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Request(e.into_error())),
                },
            }
        }
        let mut pooled = self.open_h1(transport, source, upstream, false).await?;
        let response = pooled
            .sender
            .send_request(request)
            .await
            .map_err(SendError::Request)?;
        // A draining agent pools nothing new: the connection closes after this response.
        if !transport.drain.is_draining() {
            self.return_h1(key, pooled);
        }
        Ok(response)
    }

    /// Sends an HTTP/1.1 upgrade request (WebSocket and the like) on a connection of its own:
    /// after a 101 the connection belongs to the upgraded protocol and never returns to the
    /// pool.
    pub async fn send_upgrade(
        &self,
        transport: &Transport,
        source: &Source<'_>,
        upstream: &Upstream,
        request: Request<ReqBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut pooled = self.open_h1(transport, source, upstream, true).await?;
        pooled
            .sender
            .send_request(request)
            .await
            .map_err(SendError::Request)
    }

    /// A new HTTP/1.1 connection to the endpoint, ready for a request. `upgrades`: the
    /// connection may switch protocols after a 101 (hyper then hands it over instead of
    /// closing it).
    async fn open_h1(
        &self,
        transport: &Transport,
        source: &Source<'_>,
        upstream: &Upstream,
        upgrades: bool,
    ) -> Result<Pooled<http1::SendRequest<ReqBody>>, SendError> {
        let (io, session) = self.connect(transport, source, upstream).await?;
        let (mut sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Request)?;
        let endpoint = upstream.addr;
        tokio::spawn(async move {
            let ended = if upgrades {
                connection.with_upgrades().await
            } else {
                connection.await
            };
            if let Err(e) = ended {
                tracing::debug!(%endpoint, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        sender.ready().await.map_err(SendError::Request)?;
        Ok(Pooled { sender, session })
    }

    /// An idle, ready connection of `key`; closed ones are dropped on the way. A connection
    /// whose previous response body is still streaming is not ready and stays pooled.
    fn idle_h1(&self, key: &Key) -> Option<Pooled<http1::SendRequest<ReqBody>>> {
        let mut pool = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let list = pool.get_mut(key)?;
        // Dropping a connection of a retired session closes its tunnel stream, which lets
        // the old agent finish its drain.
        list.retain(|p| p.usable(http1::SendRequest::is_closed));
        let ready = list.iter().position(|p| p.sender.is_ready())?;
        Some(list.swap_remove(ready))
    }

    fn return_h1(&self, key: Key, sender: Pooled<http1::SendRequest<ReqBody>>) {
        let mut pool = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let list = pool.entry(key).or_default();
        if list.len() < MAX_IDLE_H1 {
            list.push(sender);
        }
    }

    async fn send_h2(
        &self,
        transport: &Transport,
        source: &Source<'_>,
        upstream: &Upstream,
        key: Key,
        request: Request<ReqBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let slot = {
            let mut pool = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            match pool.get(&key) {
                Some(slot) => slot.clone(),
                None => {
                    // Connections of a rotated-away certificate get no new requests.
                    pool.retain(|k, _| {
                        k.source != key.source
                            || k.endpoint != key.endpoint
                            || k.serial == key.serial
                    });
                    pool.entry(key).or_default().clone()
                }
            }
        };
        let mut sender = match slot.open() {
            // The common case: clone the open connection's sender, no waiting.
            Some(s) => {
                self.stats.requests_reused.fetch_add(1, Ordering::Relaxed);
                s
            }
            None => {
                // Concurrent first requests share one connection instead of each opening one.
                let _connecting = slot.connecting.lock().await;
                match slot.open() {
                    Some(s) => s,
                    None => {
                        let pooled = self.connect_h2(transport, source, upstream).await?;
                        let sender = pooled.sender.clone();
                        // A draining agent pools nothing new (see send_h1).
                        if !transport.drain.is_draining() {
                            *slot.sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(pooled);
                        }
                        sender
                    }
                }
            }
        };
        sender.ready().await.map_err(SendError::Request)?;
        sender
            .send_request(request)
            .await
            .map_err(SendError::Request)
    }

    async fn connect_h2(
        &self,
        transport: &Transport,
        source: &Source<'_>,
        upstream: &Upstream,
    ) -> Result<Pooled<http2::SendRequest<ReqBody>>, SendError> {
        let (io, session) = self.connect(transport, source, upstream).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(io)
            .await
            .map_err(SendError::Request)?;
        let endpoint = upstream.addr;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%endpoint, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(Pooled { sender, session })
    }

    /// A byte stream to the endpoint, the way the L4 path would make it.
    async fn connect(
        &self,
        transport: &Transport,
        source: &Source<'_>,
        upstream: &Upstream,
    ) -> Result<(BoxIo, Option<SessionHealth>), SendError> {
        let io = connect_stream(transport, source, upstream).await;
        match &io {
            Ok(_) => self
                .stats
                .connections_opened
                .fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.connect_failures.fetch_add(1, Ordering::Relaxed),
        };
        io
    }
}

async fn connect_stream(
    transport: &Transport,
    source: &Source<'_>,
    upstream: &Upstream,
) -> Result<(BoxIo, Option<SessionHealth>), SendError> {
    match dial(transport, source, upstream, Some(CONNECT_TIMEOUT)).await {
        Ok(dialed) => Ok((TokioIo::new(dialed.io), dialed.session)),
        Err(DialError::Refused(reason)) => Err(SendError::Refused(reason)),
        Err(DialError::Failed(e)) => Err(SendError::Connect(e)),
    }
}
