//! `rr`: request/response latency on one persistent connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::cli::RrArgs;
use super::output::emit;
use super::stats::summarize;

pub fn run(args: &RrArgs) -> Result<bool> {
    ensure!(args.size > 0, "--size must be positive");
    ensure!(args.count > 0, "--count must be positive");
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let mut s = TcpStream::connect_timeout(&args.connect, timeout)
        .with_context(|| format!("connecting to {}", args.connect))?;
    // Without NODELAY, Nagle + delayed ACK would dominate small-message RTTs.
    s.set_nodelay(true).context("TCP_NODELAY")?;
    s.set_read_timeout(Some(timeout)).context("SO_RCVTIMEO")?;
    s.set_write_timeout(Some(timeout)).context("SO_SNDTIMEO")?;

    let request = vec![0x5a_u8; args.size];
    let mut response = vec![0u8; args.size];
    let mut samples = Vec::with_capacity(args.count);
    for i in 0..args.warmup + args.count {
        let t = Instant::now();
        s.write_all(&request)
            .with_context(|| format!("sending request {i}"))?;
        s.read_exact(&mut response)
            .with_context(|| format!("reading response {i}"))?;
        if i >= args.warmup {
            samples.push(t.elapsed());
        }
    }
    emit(&summarize(&samples));
    Ok(true)
}
