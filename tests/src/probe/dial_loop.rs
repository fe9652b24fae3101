//! `dial-loop`: short echo connections one after the other, each reported as a JSON line
//! `{"start_ms":..,"ms":..,"ok":..,"errno":..,"stage":..}` (`start_ms`: Unix time in ms, so a
//! test can place every attempt before, during or after what it did to the mesh).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::cli::DialLoopArgs;
use super::output::{emit, failure};

const PAYLOAD: &[u8] = b"dial-loop ping\n";

/// Returns whether every attempt succeeded.
pub fn run(args: &DialLoopArgs) -> bool {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut all_ok = true;
    while Instant::now() < until {
        let start_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let started = Instant::now();
        let mut line = match attempt(args, timeout) {
            Ok(()) => json!({ "ok": true }),
            Err(failed) => failed,
        };
        all_ok &= line["ok"] == true;
        line["start_ms"] = Value::from(start_ms);
        line["ms"] = Value::from(started.elapsed().as_secs_f64() * 1000.0);
        emit(&line);
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
    all_ok
}

/// Connect, send the payload, half-close, read the echo to EOF and compare.
fn attempt(args: &DialLoopArgs, timeout: Duration) -> Result<(), Value> {
    let mut s =
        TcpStream::connect_timeout(&args.connect, timeout).map_err(|e| failure("connect", &e))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| failure("connect", &e))?;
    s.write_all(PAYLOAD).map_err(|e| failure("send", &e))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| failure("send", &e))?;
    let mut echo = Vec::new();
    s.read_to_end(&mut echo).map_err(|e| failure("recv", &e))?;
    if echo != PAYLOAD {
        return Err(json!({
            "ok": false,
            "stage": "echo",
            "errno": null,
            "error": format!("echo of {} bytes differs", echo.len()),
        }));
    }
    Ok(())
}
