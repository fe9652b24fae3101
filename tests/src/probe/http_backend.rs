//! `http-backend`: an async HTTP server for the L7 tests. HTTP/1.1 and h2c (prior knowledge)
//! share one port (hyper-util's auto server). Every response names the backend in
//! `x-backend` and in the first line of its body, so a test knows who answered; a stats file
//! tells how many requests each backend really received.
//!
//! Paths: `/echo` (what the backend received, as JSON after the name line), `/status/CODE`,
//! `/delay/MS`, `/reset` (no response: HTTP/1 connection dropped, h2 stream reset),
//! `/upgrade` (101, then the upgraded bytes are answered once), anything else 200. Injected failures (`--fail-every`, `--fail-while-exists`) win over the path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};

use super::cli::HttpBackendArgs;
use super::output::emit;
use super::server::write_atomically;

/// What a request asks for, decided from its path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Echo,
    Status(u16),
    Delay(u64),
    Reset,
    Hello,
}

impl Action {
    pub fn from_path(path: &str) -> Action {
        if path == "/echo" || path.starts_with("/echo/") {
            return Action::Echo;
        }
        if path == "/reset" {
            return Action::Reset;
        }
        if let Some(code) = path.strip_prefix("/status/")
            && let Some(code) = code.parse().ok().filter(|c| (100..=999).contains(c))
        {
            return Action::Status(code);
        }
        if let Some(ms) = path.strip_prefix("/delay/")
            && let Ok(ms) = ms.parse()
        {
            return Action::Delay(ms);
        }
        Action::Hello
    }
}

/// Counters mirrored into the stats file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub connections: u64,
    /// Status code (or "reset") -> answered requests.
    pub by_status: BTreeMap<String, u64>,
}

impl Counts {
    pub fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "by_status": self.by_status,
            "connections": self.connections,
        })
    }
}

/// The shared state of one backend.
pub struct Backend {
    name: String,
    fail_every: Option<u64>,
    fail_while_exists: Option<PathBuf>,
    delay: Duration,
    stats_file: Option<PathBuf>,
    /// Also serialises writes of the stats file, so the last write carries the last counts.
    counts: Mutex<Counts>,
}

/// Returned by the service to get no response at all: hyper then drops an HTTP/1 connection
/// and resets an h2 stream.
#[derive(Debug)]
struct ResetRequested;

impl std::fmt::Display for ResetRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset requested by /reset")
    }
}

impl std::error::Error for ResetRequested {}

impl Backend {
    pub fn new(args: &HttpBackendArgs) -> Backend {
        Backend {
            name: args.name.clone(),
            fail_every: args.fail_every,
            fail_while_exists: args.fail_while_exists.clone(),
            delay: Duration::from_millis(args.delay_ms),
            stats_file: args.stats_file.clone(),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Applies `change` to the counters and rewrites the stats file; returns the new counts.
    fn update(&self, change: impl FnOnce(&mut Counts)) -> Counts {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut counts);
        if let Some(path) = &self.stats_file
            && let Err(e) = write_atomically(path, counts.to_json().to_string().as_bytes())
        {
            eprintln!("http-backend {}: {e:#}", self.name);
        }
        counts.clone()
    }

    fn connection(&self) {
        self.update(|c| c.connections += 1);
    }

    /// Counts the request and says whether an injected failure applies to it.
    fn arrival(&self) -> bool {
        let n = self.update(|c| c.requests += 1).requests;
        let every = self.fail_every.is_some_and(|every| n.is_multiple_of(every));
        let file = self.fail_while_exists.as_ref().is_some_and(|p| p.exists());
        every || file
    }

    fn answered(&self, status: &str) {
        self.update(|c| *c.by_status.entry(status.to_string()).or_default() += 1);
    }

    fn reply(&self, status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
        self.answered(status.as_str());
        Response::builder()
            .status(status)
            .header("x-backend", self.name.as_str())
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    }

    /// `/upgrade` with an `Upgrade` header: 101, then the upgraded connection is read to its
    /// end and answered with `upgraded NAME: <what was read>` before closing. Without the
    /// header: 400.
    fn upgrade(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(protocol) = req.headers().get(hyper::header::UPGRADE).cloned() else {
            return self.reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("{} needs an Upgrade header\n", self.name),
            );
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let name = self.name.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut data = Vec::new();
            if io.read_to_end(&mut data).await.is_ok() {
                let _ = io.write_all(format!("upgraded {name}: ").as_bytes()).await;
                let _ = io.write_all(&data).await;
                let _ = io.shutdown().await;
            }
        });
        self.answered("101");
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("x-backend", self.name.as_str())
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, protocol)
            .body(Full::new(Bytes::new()))
            .expect("valid response")
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, ResetRequested> {
        let fail = self.arrival();
        if req.uri().path() == "/upgrade" {
            return Ok(self.upgrade(req));
        }
        let (parts, body) = req.into_parts();
        // Read the whole request body (it counts in /echo); a client that goes away
        // mid-body just leaves us with what arrived.
        let body_bytes = match body.collect().await {
            Ok(b) => b.to_bytes().len(),
            Err(_) => 0,
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let name = &self.name;
        if fail {
            return Ok(self.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{name} injected failure\n"),
            ));
        }
        match Action::from_path(parts.uri.path()) {
            Action::Echo => {
                let echo = echo_json(&parts, body_bytes);
                Ok(self.reply(StatusCode::OK, "text/plain", format!("{name}\n{echo}\n")))
            }
            Action::Status(code) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                Ok(self.reply(status, "text/plain", format!("{name} status {code}\n")))
            }
            Action::Delay(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(self.reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("{name} delayed {ms}ms\n"),
                ))
            }
            Action::Reset => {
                self.answered("reset");
                Err(ResetRequested)
            }
            Action::Hello => Ok(self.reply(StatusCode::OK, "text/plain", format!("{name}\n"))),
        }
    }
}

/// Method, URI, version and every header (name -> values in order) of a request.
pub fn echo_json(parts: &hyper::http::request::Parts, body_bytes: usize) -> Value {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
    })
}

/// Binds, prints `{"listening":ADDR}` and serves forever.
pub fn run(args: &HttpBackendArgs) -> Result<()> {
    let backend = Arc::new(Backend::new(args));
    // Write the zero counts first so a test can read the file as soon as we listen.
    backend.update(|_| {});
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(serve(args.listen, backend))
}

async fn serve(listen: SocketAddr, backend: Arc<Backend>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr().context("getsockname")?;
    emit(&json!({ "listening": local.to_string(), "name": backend.name }));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept on {local}: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        backend.connection();
        let _ = stream.set_nodelay(true);
        let backend = backend.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| backend.clone().handle(req));
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_actions() {
        assert_eq!(Action::from_path("/echo"), Action::Echo);
        assert_eq!(Action::from_path("/echo/x"), Action::Echo);
        assert_eq!(Action::from_path("/status/503"), Action::Status(503));
        assert_eq!(Action::from_path("/status/42"), Action::Hello);
        assert_eq!(Action::from_path("/status/x"), Action::Hello);
        assert_eq!(Action::from_path("/delay/3000"), Action::Delay(3000));
        assert_eq!(Action::from_path("/reset"), Action::Reset);
        assert_eq!(Action::from_path("/"), Action::Hello);
        assert_eq!(Action::from_path("/echoes"), Action::Hello);
    }

    fn args(extra: &[&str]) -> HttpBackendArgs {
        use clap::Parser;
        let base = [
            "mesh-probe",
            "http-backend",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "b",
        ];
        let cli = super::super::Cli::try_parse_from(base.iter().chain(extra)).unwrap();
        match cli.command {
            super::super::Command::HttpBackend(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn fail_every_counts_all_requests_and_stats_are_written() {
        let dir = std::env::temp_dir().join(format!("mesh-probe-backend-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stats = dir.join("stats.json");
        let stats_arg = stats.display().to_string();
        let b = Backend::new(&args(&["--fail-every", "3", "--stats-file", &stats_arg]));
        let fails: Vec<bool> = (0..6).map(|_| b.arrival()).collect();
        assert_eq!(fails, [false, false, true, false, false, true]);
        b.connection();
        b.answered("200");
        b.answered("503");
        b.answered("200");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"requests": 6, "connections": 1, "by_status": {"200": 2, "503": 1}})
        );

        let flag = dir.join("fail");
        let flag_arg = flag.display().to_string();
        let b = Backend::new(&args(&["--fail-while-exists", &flag_arg]));
        assert!(!b.arrival());
        std::fs::write(&flag, "").unwrap();
        assert!(b.arrival());
        std::fs::remove_file(&flag).unwrap();
        assert!(!b.arrival());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A real server on loopback: HTTP/1.1 and h2c on the same port, /echo, /status, /reset,
    /// and it keeps serving afterwards.
    #[test]
    fn serves_http1_and_h2c_on_one_port() {
        use hyper_util::client::legacy::Client;
        use hyper_util::client::legacy::connect::HttpConnector;

        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let backend = Arc::new(Backend::new(&args(&[])));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            drop(listener);
            tokio::spawn(serve(addr, backend.clone()));
            // Wait for the listener.
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let h1: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http();
            for (client, version) in [(&h1, "HTTP/1.1"), (&h2, "HTTP/2.0")] {
                let get = |path: &str| {
                    Request::get(format!("http://{addr}{path}"))
                        .header("traceparent", "00-abc-def-01")
                        .body(Full::new(Bytes::new()))
                        .unwrap()
                };
                let resp = client.request(get("/echo")).await.unwrap();
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.headers()["x-backend"], "b");
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                let body = String::from_utf8(body.to_vec()).unwrap();
                let (name, echo) = body.split_once('\n').unwrap();
                assert_eq!(name, "b");
                let echo: Value = serde_json::from_str(echo.trim()).unwrap();
                assert_eq!(echo["version"], version);
                assert_eq!(echo["method"], "GET");
                assert_eq!(echo["headers"]["traceparent"], json!(["00-abc-def-01"]));

                let resp = client.request(get("/status/418")).await.unwrap();
                assert_eq!(resp.status(), 418);
                assert!(client.request(get("/reset")).await.is_err(), "{version}");
                let resp = client.request(get("/")).await.unwrap();
                assert_eq!(resp.status(), 200, "still serving after /reset");
            }
            let counts = backend.counts.lock().unwrap().clone();
            assert_eq!(counts.requests, 8);
            assert_eq!(counts.by_status["reset"], 2);
            assert_eq!(counts.by_status["200"], 4);
        });
    }
}
