//! Protocol detection for ports whose protocol is not declared: peek (without consuming) at
//! the client's first bytes. An HTTP/1.x request line or the HTTP/2 connection preface means
//! HTTP; other bytes mean opaque TCP.
//!
//! Protocols where the server speaks first (SMTP, MySQL, SSH banners...) send nothing from
//! the client, so silence is bounded by `http.detection_timeout` (default 100 ms) once per
//! connection, after which the connection is relayed as TCP. Linkerd waits 10 s there.
//! Declaring the port's protocol skips detection entirely.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::TcpStream,
    time::Instant,
};

/// The HTTP/2 client connection preface (RFC 9113 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Methods recognised in an HTTP/1.x request line (RFC 9110 9.3 and PATCH).
const METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];
/// Enough bytes to decide: the whole preface, longer than any method plus a space.
const DECISIVE: usize = H2_PREFACE.len();
/// Pause between peeks while the first bytes are a proper prefix of something HTTP; peeking
/// again without waiting would spin on the same bytes.
const REPEEK: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// Not HTTP, or the client said nothing in time, or closed.
    Tcp,
}

/// What the bytes so far say; `None` while they are a proper prefix of an HTTP start.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    if bytes.is_empty() {
        return None;
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    let mut undecided = false;
    for method in METHODS {
        let token_len = method.len() + 1;
        let n = bytes.len().min(token_len);
        let wanted = [method, b" "].concat();
        if bytes[..n] == wanted[..n] {
            if n == token_len {
                return Some(Detected::Http1);
            }
            undecided = true;
        }
    }
    if undecided { None } else { Some(Detected::Tcp) }
}

/// Waits (up to `timeout` in total) for enough of the client's first bytes to decide.
pub async fn sniff(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; DECISIVE];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Detected::Tcp,
            Ok(Ok(n)) => n,
        };
        if let Some(found) = classify(&buf[..n]) {
            return found;
        }
        if Instant::now() + REPEEK >= deadline {
            return Detected::Tcp;
        }
        tokio::time::sleep(REPEEK).await;
    }
}

/// Reads a stream's first bytes until they say which HTTP version it speaks (for a stream
/// whose client always speaks first, such as a tunnel stream from a source agent): the bytes
/// read, to be replayed, and the verdict (`None`: the stream ended first).
pub async fn read_start<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> std::io::Result<(Bytes, Option<Detected>)> {
    let mut start = BytesMut::with_capacity(DECISIVE);
    loop {
        let room = DECISIVE - start.len();
        if stream.read_buf(&mut (&mut start).limit(room)).await? == 0 {
            return Ok((start.freeze(), None));
        }
        if let Some(found) = classify(&start) {
            return Ok((start.freeze(), Some(found)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_request_lines_prefaces_and_other_bytes() {
        let cases: &[(&[u8], Option<Detected>)] = &[
            (b"GET / HTTP/1.1\r\n", Some(Detected::Http1)),
            (b"POST /x HTTP/1.0\r\n", Some(Detected::Http1)),
            (b"PATCH ", Some(Detected::Http1)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Detected::Http2)),
            (b"PRI * HTTP/2.0\r\n", None),
            (b"GE", None),
            (b"P", None),
            (b"GETX", Some(Detected::Tcp)),
            (b"\x16\x03\x01\x02\x00", Some(Detected::Tcp)),
            (b"SSH-2.0-OpenSSH\r\n", Some(Detected::Tcp)),
            (b"get / HTTP/1.1", Some(Detected::Tcp)),
            (b"", None),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                classify(bytes),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[tokio::test]
    async fn the_start_of_a_stream_is_read_until_it_decides() {
        for (sent, want) in [
            (
                &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04"[..],
                Some(Detected::Http2),
            ),
            (
                &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                Some(Detected::Http1),
            ),
            (&b"\x16\x03\x01"[..], Some(Detected::Tcp)),
            (&b"PRI * HT"[..], None),
        ] {
            let (mut client, mut server) = tokio::io::duplex(256);
            // In pieces: a verdict waits for enough bytes.
            for piece in sent.chunks(5) {
                tokio::io::AsyncWriteExt::write_all(&mut client, piece)
                    .await
                    .unwrap();
            }
            drop(client);
            let (start, found) = read_start(&mut server).await.unwrap();
            assert_eq!(found, want, "{:?}", String::from_utf8_lossy(sent));
            assert!(sent.starts_with(&start) && start.len() <= DECISIVE);
        }
    }

    #[tokio::test]
    async fn silence_and_close_are_tcp_and_http_is_found() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        // Server-first protocol: the client says nothing.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(
            sniff(&server, Duration::from_millis(50)).await,
            Detected::Tcp
        );

        // HTTP/1.1 sent in two pieces: the peek waits for the rest.
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        use tokio::io::AsyncWriteExt;
        client.write_all(b"GE").await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            client.write_all(b"T / HTTP/1.1\r\n\r\n").await.unwrap();
            client
        });
        assert_eq!(
            sniff(&server, Duration::from_secs(5)).await,
            Detected::Http1
        );
        // Peeking consumed nothing.
        let _client = writer.await.unwrap();
        let mut buf = [0u8; 3];
        let n = server.peek(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET");

        // Closed before sending anything.
        drop(TcpStream::connect(addr).await.unwrap());
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(sniff(&server, Duration::from_secs(5)).await, Detected::Tcp);
    }
}
