//! Per-connection behaviour of the servers.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// Big enough that an echo of bulk data is not limited by syscall count.
const BUF: usize = 256 * 1024;
/// Longest request head the HTTP server accepts.
const MAX_HEAD: usize = 64 * 1024;

/// `read` that retries on EINTR, which std does not do for us.
fn read_retry(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads the request head (up to CRLFCRLF, or EOF for clients that
/// half-close instead), answers with `body`, and closes gracefully.
pub fn http(mut s: TcpStream, body: &str) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = read_retry(&mut s, &mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(response.as_bytes())?;
    s.shutdown(Shutdown::Write)?;
    // Closing with unread input makes the kernel send RST, which can destroy
    // the response before the client reads it; drain briefly instead.
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    while matches!(read_retry(&mut s, &mut buf), Ok(n) if n > 0) {}
    Ok(())
}

/// Echoes until the peer half-closes, then half-closes too.
pub fn echo(mut s: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = read_retry(&mut s, &mut buf)?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])?;
    }
    s.shutdown(Shutdown::Write)
}

/// Counts and discards input; on EOF sends the count as 8 bytes big endian.
pub fn sink(mut s: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = read_retry(&mut s, &mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    s.write_all(&total.to_be_bytes())?;
    s.shutdown(Shutdown::Write)
}

/// Server-first protocol: sends `banner` and CRLF at once, then echoes like [`echo`].
pub fn banner(mut s: TcpStream, banner: &str) -> io::Result<()> {
    s.write_all(format!("{banner}\r\n").as_bytes())?;
    echo(s)
}
