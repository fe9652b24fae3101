//! `bulk`: one-way throughput against a sink server.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;

use super::cli::BulkArgs;
use super::output::emit;

const CHUNK: usize = 256 * 1024;

/// Succeeds when the sink counted exactly what was sent.
pub fn run(args: &BulkArgs) -> Result<bool> {
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be a positive number"
    );
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let mut s = TcpStream::connect_timeout(&args.connect, timeout)
        .with_context(|| format!("connecting to {}", args.connect))?;
    s.set_read_timeout(Some(timeout)).context("SO_RCVTIMEO")?;
    s.set_write_timeout(Some(timeout)).context("SO_SNDTIMEO")?;

    let chunk = vec![0xa5_u8; CHUNK];
    let duration = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        s.write_all(&chunk).context("sending")?;
        sent += CHUNK as u64;
    }
    s.shutdown(Shutdown::Write).context("shutdown(write)")?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .context("reading the sink's byte count")?;
    // Until the sink confirmed the count, i.e. everything was delivered.
    let seconds = start.elapsed().as_secs_f64();
    let bytes = u64::from_be_bytes(count);
    emit(&json!({
        "bytes": bytes,
        "sent": sent,
        "seconds": seconds,
        "gbit_per_s": bytes as f64 * 8.0 / seconds / 1e9,
    }));
    Ok(bytes == sent)
}
