//! `connect`: one connection attempt, optionally with a request.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};

use super::cli::ConnectArgs;
use super::output::{emit, failure};

/// Prints the outcome; returns whether everything succeeded. Failures are
/// reported as data (errno etc.), not as errors: tests expect some connects
/// to be refused.
pub fn run(args: &ConnectArgs) -> bool {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let mut s = match TcpStream::connect_timeout(&args.connect, timeout) {
        Ok(s) => s,
        Err(e) => {
            emit(&failure("connect", &e));
            return false;
        }
    };
    let endpoints = json!({
        "local": s.local_addr().map(|a| a.to_string()).ok(),
        "peer": s.peer_addr().map(|a| a.to_string()).ok(),
    });
    let mut out = json!({ "ok": true });
    if args.read_first {
        match read_line(&mut s, timeout) {
            Ok(banner) => out["banner"] = Value::from(banner),
            Err(e) => out = failure("banner", &e),
        }
    }
    if let Some(text) = args.send.as_ref().filter(|_| out["ok"] == true) {
        match exchange(&mut s, text, timeout) {
            Ok(reply) => out["reply"] = Value::from(reply),
            Err((stage, e)) => out = failure(stage, &e),
        }
    }
    out["local"] = endpoints["local"].clone();
    out["peer"] = endpoints["peer"].clone();
    let ok = out["ok"] == true;
    emit(&out);
    ok
}

/// Reads byte by byte up to and including the first newline (or EOF): nothing after the
/// banner is consumed.
fn read_line(s: &mut TcpStream, timeout: Duration) -> io::Result<String> {
    s.set_read_timeout(Some(timeout))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Sends `text`, half-closes, reads the reply to EOF.
fn exchange(
    s: &mut TcpStream,
    text: &str,
    timeout: Duration,
) -> Result<String, (&'static str, io::Error)> {
    s.set_write_timeout(Some(timeout))
        .map_err(|e| ("send", e))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| ("recv", e))?;
    s.write_all(text.as_bytes()).map_err(|e| ("send", e))?;
    s.shutdown(Shutdown::Write).map_err(|e| ("send", e))?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).map_err(|e| ("recv", e))?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}
