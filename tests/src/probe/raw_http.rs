//! `raw-http`: sends exact bytes (malformed or oversized requests that curl refuses to make)
//! and prints the response head as JSON:
//! `{"ok":true,"status":431,"status_line":"HTTP/1.1 431 ...","headers":{..},"body":".."}`, or
//! `{"ok":false,"error":..}` when no response head arrived.
//!
//! Bytes are written from a second thread while this one reads: a server that answers early
//! (431) and closes must not be missed because we were still blocked writing.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::cli::RawHttpArgs;
use super::output::{emit, failure};

/// Most body bytes kept in the output.
const BODY_LIMIT: usize = 4096;

/// Unescapes `\r`, `\n`, `\t`, `\\`, `\0` and `\xHH`; any other backslash stays as is.
pub fn unescape(text: &str) -> Result<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' || i + 1 == bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let next = bytes[i + 1];
        i += 2;
        match next {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = text.get(i..i + 2).context("\\x needs two hex digits")?;
                out.push(u8::from_str_radix(hex, 16).context("\\x needs two hex digits")?);
                i += 2;
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// A parsed response head, plus whatever body bytes came with it.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status_line: String,
    pub status: u16,
    pub headers: BTreeMap<String, Vec<String>>,
    /// Bytes after the head.
    pub rest: Vec<u8>,
}

/// Parses `buf` if it holds a complete head (through CRLFCRLF).
pub fn parse_head(buf: &[u8]) -> Option<ResponseHead> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?.to_string();
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers
                .entry(name.trim().to_ascii_lowercase())
                .or_default()
                .push(value.trim().to_string());
        }
    }
    Some(ResponseHead {
        status_line,
        status,
        headers,
        rest: buf[end + 4..].to_vec(),
    })
}

pub fn run(args: &RawHttpArgs) -> Result<bool> {
    let payload = match (&args.send, &args.send_file) {
        (Some(text), None) => unescape(text)?,
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        _ => bail!("exactly one of --send and --send-file"),
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let stream = match TcpStream::connect_timeout(&args.connect, timeout) {
        Ok(s) => s,
        Err(e) => {
            emit(&failure("connect", &e));
            return Ok(false);
        }
    };
    let mut writer = stream.try_clone().context("cloning the socket")?;
    writer.set_write_timeout(Some(timeout))?;
    let sender = std::thread::spawn(move || -> io::Result<()> {
        writer.write_all(&payload)?;
        writer.flush()
    });
    let (buf, read_error) = read_response(&stream, timeout);
    let _ = stream.shutdown(Shutdown::Both);
    let send_error = sender.join().ok().and_then(Result::err);
    let out = match parse_head(&buf) {
        Some(head) => {
            let mut body = head.rest;
            body.truncate(BODY_LIMIT);
            json!({
                "ok": true,
                "status": head.status,
                "status_line": head.status_line,
                "headers": head.headers,
                "body": String::from_utf8_lossy(&body),
                "send_error": send_error.map(|e| e.to_string()),
            })
        }
        None => json!({
            "ok": false,
            "error": "no response head",
            "received": String::from_utf8_lossy(&buf[..buf.len().min(BODY_LIMIT)]),
            "read_error": read_error.map(|e| e.to_string()),
            "send_error": send_error.map(|e| e.to_string()),
        }),
    };
    let ok = out["ok"] == Value::Bool(true);
    emit(&out);
    Ok(ok)
}

/// Reads until EOF, an error, the deadline, or a complete head followed by its
/// Content-Length body (so keep-alive servers do not make us wait for the timeout).
fn read_response(mut stream: &TcpStream, timeout: Duration) -> (Vec<u8>, Option<io::Error>) {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (buf, Some(io::Error::from(io::ErrorKind::TimedOut)));
        }
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return (buf, Some(e));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return (buf, None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (buf, Some(e)),
        }
        if let Some(head) = parse_head(&buf) {
            let length = head
                .headers
                .get("content-length")
                .and_then(|v| v.first())
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|l| head.rest.len() >= l) {
                return (buf, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_control_characters() {
        assert_eq!(
            unescape(r"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        assert_eq!(unescape(r"a\x00b\\c\q\").unwrap(), b"a\0b\\c\\q\\");
        assert_eq!(unescape(r"\t\0").unwrap(), b"\t\0");
        assert!(unescape(r"\x4").is_err());
        assert!(unescape(r"\xzz").is_err());
    }

    #[test]
    fn parses_a_response_head() {
        let raw = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nok";
        let head = parse_head(raw).unwrap();
        assert_eq!(head.status, 431);
        assert_eq!(
            head.status_line,
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        assert_eq!(head.headers["x-a"], ["1", "2"]);
        assert_eq!(head.rest, b"ok");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_none());
    }
}
