//! `conn-rate`: new connections per second against an echo server.
//!
//! Each connection: connect, send `--size` bytes, read them back, half-close, read the
//! server's EOF, close. The latency of a connection is from the start of `connect` until the
//! echo is back (time to first byte, what an application waits for); the rate counts whole
//! cycles, close included. The client closes first, so its side ends in TIME_WAIT: at high
//! rates the caller wants `net.ipv4.tcp_tw_reuse=1` in the client's network namespace.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::cli::ConnRateArgs;
use super::output::emit;
use super::stats::summarize;

/// Succeeds when every connection echoed correctly.
pub fn run(args: &ConnRateArgs) -> Result<bool> {
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be a positive number"
    );
    ensure!(args.concurrency > 0, "--concurrency must be positive");
    ensure!(args.size > 0, "--size must be positive");
    let run = Run {
        addr: args.connect,
        size: args.size,
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        deadline: Instant::now() + Duration::from_secs_f64(args.seconds),
        limit: args.count.unwrap_or(u64::MAX),
        started: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        first_error: Mutex::new(None),
    };
    let start = Instant::now();
    let workers: Vec<Worker> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|_| scope.spawn(|| run.worker()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("conn-rate worker panicked"))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let first_error = run
        .first_error
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let result = summary(&workers, seconds, args.concurrency, first_error);
    let ok = result["errors"] == 0 && result["connections"].as_u64() > Some(0);
    emit(&result);
    Ok(ok)
}

struct Run {
    addr: SocketAddr,
    size: usize,
    timeout: Duration,
    deadline: Instant,
    limit: u64,
    /// Connections started by all workers, for `--count`.
    started: AtomicU64,
    /// Set on the first error: a broken path would otherwise produce a flood of them.
    stop: AtomicBool,
    first_error: Mutex<Option<String>>,
}

/// What one worker thread saw; its first sample is its first connection.
#[derive(Default)]
struct Worker {
    samples: Vec<Duration>,
    errors: u64,
}

impl Run {
    fn worker(&self) -> Worker {
        let mut w = Worker::default();
        let request = vec![0x5a_u8; self.size];
        let mut response = vec![0u8; self.size];
        while !self.stop.load(Ordering::Relaxed)
            && Instant::now() < self.deadline
            && self.started.fetch_add(1, Ordering::Relaxed) < self.limit
        {
            match self.once(&request, &mut response) {
                Ok(ttfb) => w.samples.push(ttfb),
                Err(e) => {
                    w.errors += 1;
                    self.stop.store(true, Ordering::Relaxed);
                    let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        w
    }

    /// One connection; returns the time until the echo was back.
    fn once(&self, request: &[u8], response: &mut [u8]) -> Result<Duration> {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&self.addr, self.timeout)
            .with_context(|| format!("connecting to {}", self.addr))?;
        s.set_nodelay(true).context("TCP_NODELAY")?;
        s.set_read_timeout(Some(self.timeout))
            .context("SO_RCVTIMEO")?;
        s.set_write_timeout(Some(self.timeout))
            .context("SO_SNDTIMEO")?;
        s.write_all(request).context("sending")?;
        s.read_exact(response).context("reading the echo")?;
        let ttfb = t.elapsed();
        ensure!(response == request, "echo differs from what was sent");
        s.shutdown(Shutdown::Write).context("shutdown(write)")?;
        // The echo server half-closes once it saw ours: a clean end of the whole path.
        let mut rest = [0u8; 64];
        loop {
            match s.read(&mut rest) {
                Ok(0) => break,
                Ok(n) => anyhow::bail!("{n} unexpected bytes after the echo"),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("waiting for the server's EOF"),
            }
        }
        Ok(ttfb)
    }
}

/// Rate and latency of all workers, plus `first_us`: the first connection of the first
/// worker (with `--concurrency 1`, the first connection of the run).
fn summary(workers: &[Worker], seconds: f64, concurrency: usize, error: Option<String>) -> Value {
    let all: Vec<Duration> = workers.iter().flat_map(|w| w.samples.clone()).collect();
    let connections = all.len() as u64;
    let mut v = summarize(&all);
    let fields = [
        ("connections", json!(connections)),
        (
            "errors",
            json!(workers.iter().map(|w| w.errors).sum::<u64>()),
        ),
        ("seconds", json!(seconds)),
        ("concurrency", json!(concurrency)),
        ("conn_per_s", json!(connections as f64 / seconds)),
        (
            "first_us",
            json!(
                workers
                    .first()
                    .and_then(|w| w.samples.first())
                    .map(|d| d.as_secs_f64() * 1e6)
            ),
        ),
        ("error", json!(error)),
    ];
    if let Value::Object(map) = &mut v {
        for (k, val) in fields {
            map.insert(k.to_string(), val);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || super::super::handlers::echo(s));
            }
        });
        addr
    }

    fn args(addr: SocketAddr, count: Option<u64>, concurrency: usize) -> ConnRateArgs {
        ConnRateArgs {
            connect: addr,
            seconds: 10.0,
            concurrency,
            count,
            size: 3,
            timeout_ms: 2000,
        }
    }

    #[test]
    fn counts_connections_against_an_echo_server() {
        let addr = echo_server();
        let run = Run {
            addr,
            size: 3,
            timeout: Duration::from_secs(2),
            deadline: Instant::now() + Duration::from_secs(10),
            limit: 20,
            started: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            first_error: Mutex::new(None),
        };
        let w = run.worker();
        assert_eq!((w.samples.len(), w.errors), (20, 0));
        let v = summary(&[w], 0.5, 1, None);
        assert_eq!(v["connections"], 20);
        assert_eq!(v["conn_per_s"], 40.0);
        assert!(v["first_us"].as_f64().unwrap() > 0.0);
        assert!(v["p99_us"].as_f64().unwrap() >= v["p50_us"].as_f64().unwrap());
    }

    #[test]
    fn count_is_shared_by_workers() {
        assert!(run(&args(echo_server(), Some(30), 3)).unwrap());
    }

    #[test]
    fn refused_connections_are_errors() {
        // Bind then drop: nothing listens on the port any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!run(&args(addr, Some(5), 2)).unwrap());
    }
}
