//! `transfer`: integrity check of a full-duplex stream through an echo server.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::cli::TransferArgs;
use super::datagen::{for_each_chunk, hex_digest};
use super::output::emit;

/// Prints the result; returns whether the echoed stream was intact. Only a
/// failed connect is an error; a broken stream is reported as data.
pub fn run(args: &TransferArgs) -> Result<bool> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let idle = Some(Duration::from_millis(args.idle_timeout_ms.max(1)));
    let stream = TcpStream::connect_timeout(&args.connect, timeout)
        .with_context(|| format!("connecting to {}", args.connect))?;
    stream.set_read_timeout(idle).context("SO_RCVTIMEO")?;
    stream.set_write_timeout(idle).context("SO_SNDTIMEO")?;
    let local = stream.local_addr().context("getsockname")?;
    let peer = stream.peer_addr().context("getpeername")?;
    let reader = stream.try_clone().context("cloning socket")?;

    let start = Instant::now();
    // Reading concurrently keeps the echo server from blocking on a full
    // send buffer, which would deadlock a send-then-read client.
    let longest_gap = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let gap = longest_gap.clone();
    let receiver = std::thread::spawn(move || hash_until_eof(reader, &gap));
    let sent = send_pattern(&stream, args.seed, args.bytes);
    if sent.is_err() {
        // Unblock the reader; the stream is broken anyway.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let received = receiver
        .join()
        .map_err(|_| anyhow!("receiver thread panicked"))?;
    let seconds = start.elapsed().as_secs_f64();

    let mut out = json!({
        "local": local.to_string(),
        "peer": peer.to_string(),
        "seconds": seconds,
    });
    record(&mut out, "sent", sent);
    record(&mut out, "received", received);
    // The longest the stream stood still (between two reads, once data flowed): what a
    // restart of the agents in the path costs a bulk stream.
    out["longest_stall_ms"] =
        Value::from(longest_gap.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0);
    let intact = out.get("sent_error").is_none()
        && out.get("received_error").is_none()
        && out["sent"] == out["received"]
        && out["sent_sha256"] == out["received_sha256"];
    out["intact"] = Value::from(intact);
    emit(&out);
    Ok(intact)
}

/// Sends the first `total` bytes of the stream for `seed`, then half-closes.
fn send_pattern(stream: &TcpStream, seed: u64, total: u64) -> io::Result<(u64, String)> {
    let mut writer = stream;
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    for_each_chunk(seed, total, |piece| {
        writer.write_all(piece)?;
        hasher.update(piece);
        sent += piece.len() as u64;
        Ok(())
    })?;
    stream.shutdown(Shutdown::Write)?;
    Ok((sent, hex_digest(hasher)))
}

/// Reads and hashes until EOF; `longest_gap` gets the longest wait between two reads that
/// returned data, in microseconds.
fn hash_until_eof(
    mut reader: TcpStream,
    longest_gap: &std::sync::atomic::AtomicU64,
) -> io::Result<(u64, String)> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut last: Option<Instant> = None;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        if let Some(last) = last {
            let gap = now.duration_since(last).as_micros() as u64;
            longest_gap.fetch_max(gap, std::sync::atomic::Ordering::Relaxed);
        }
        last = Some(now);
        hasher.update(&buf[..n]);
        received += n as u64;
    }
    Ok((received, hex_digest(hasher)))
}

/// Adds `<key>` and `<key>_sha256`, or `<key>_error` when that side failed.
fn record(out: &mut Value, key: &str, result: io::Result<(u64, String)>) {
    match result {
        Ok((n, sha)) => {
            out[key] = Value::from(n);
            out[format!("{key}_sha256")] = Value::from(sha);
        }
        Err(e) => out[format!("{key}_error")] = Value::from(e.to_string()),
    }
}
