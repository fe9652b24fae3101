//! The destination side of the L7 path for ports declared `http` (the source agent speaks
//! HTTP/1.1 on the tunnel stream): a framing pass instead of a second HTTP stack. Messages go
//! to the workload and back as the bytes they came as; httparse reads each head (method,
//! target, status) and the body framing (Content-Length, chunked, or until close) says where
//! each request and response ends. Every request is still reported with
//! `reporter="destination"`, its status, body sizes and duration, without parsing headers into
//! maps, re-encoding the messages, or the tasks and buffers of an HTTP server and client per
//! stream (what serving the stream with hyper and forwarding it with hyper's client cost).
//!
//! Kept from the HTTP-server path (`inbound`, still used for HTTP/2): each request is judged
//! by the authorization in force (403 `RBAC`, then the stream closes); CONNECT is refused
//! (405); after a 101 the stream is relayed as bytes; a workload that breaks its connection
//! before its answer is complete is reported as 502 `UC` and the stream is dropped (the source
//! sees what it would see without this hop); a workload connection closed between requests is
//! replaced by a new one through the same authorization.

use std::os::fd::AsRawFd;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, uri::PathAndQuery};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    delivery::Delivery,
    flags::{FLAGS_HEADER, ResponseFlag},
    framing::{self, ChunkedScanner, Framing, FramingError, HeadFacts},
};
use super::{meter::RequestMeter, target::RequestTarget};

/// Headers per message; more is refused (431), as hyper's default limit does.
const MAX_HEADERS: usize = 100;
/// Reads are at most this much at a time.
const READ_SIZE: usize = 16 * 1024;

/// One side of the stream: the socket and what was read from it but not relayed yet.
struct Side<S> {
    io: S,
    buf: BytesMut,
}

impl<S: AsyncRead + Unpin> Side<S> {
    fn new(io: S) -> Side<S> {
        Side {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
        }
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        self.buf.reserve(READ_SIZE);
        Ok(self.io.read_buf(&mut self.buf).await? > 0)
    }
}

/// The parts of a request head the rest of the exchange needs.
struct RequestHead {
    /// The head's bytes, as they go to the workload.
    bytes: Bytes,
    method: Method,
    target: RequestTarget,
    facts: HeadFacts,
    http10: bool,
}

enum HeadError {
    /// The stream ended (between requests, or within a head the source gave up on).
    Closed,
    Malformed,
    TooLarge,
    Io,
}

/// Reads one request head from the tunnel; `limit` caps its size.
async fn read_request<S: AsyncRead + Unpin>(
    side: &mut Side<S>,
    limit: usize,
) -> Result<RequestHead, HeadError> {
    loop {
        if let Some(head) = parse_request(&mut side.buf)? {
            return Ok(head);
        }
        if side.buf.len() > limit {
            return Err(HeadError::TooLarge);
        }
        match side.fill().await {
            Ok(true) => {}
            Ok(false) => return Err(HeadError::Closed),
            Err(_) => return Err(HeadError::Io),
        }
    }
}

/// A complete request head at the front of `buf`, split off it; `None` when more is needed.
fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let facts = framing::facts(req.headers).map_err(|_| HeadError::Malformed)?;
    let method = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(HeadError::Malformed)?;
    let http10 = req.version == Some(0);
    // Offsets of the target and Host value in the head, so that they can be shared out of its
    // bytes once split off (no copy).
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let path = req.path.map(|p| span(p.as_bytes()));
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| span(h.value));
    let bytes = buf.split_to(len).freeze();
    let slice = |(at, n): (usize, usize)| bytes.slice(at..at + n);
    let target = RequestTarget::from_h1(
        method.clone(),
        path.map(slice)
            .and_then(|p| PathAndQuery::from_maybe_shared(p).ok()),
        host.map(slice)
            .and_then(|h| HeaderValue::from_maybe_shared(h).ok()),
    );
    Ok(Some(RequestHead {
        bytes,
        method,
        target,
        facts,
        http10,
    }))
}

/// A response head at the front of the workload's buffer.
struct ResponseHead {
    bytes: Bytes,
    status: u16,
    facts: HeadFacts,
    http10: bool,
}

fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(FramingError::Chunk),
    };
    let facts = framing::facts(resp.headers)?;
    let status = resp.code.ok_or(FramingError::Chunk)?;
    let http10 = resp.version == Some(0);
    Ok(Some(ResponseHead {
        bytes: buf.split_to(len).freeze(),
        status,
        facts,
        http10,
    }))
}

/// Which side failed while a body was relayed.
#[derive(Debug)]
enum BodyError {
    /// Reading the sender failed or it ended early.
    From,
    /// Writing to the receiver failed.
    To,
    Framing,
}

/// Relays one body from `from` to `to` as framed; returns its data bytes.
async fn relay_body<R, W>(
    from: &mut Side<R>,
    to: &mut W,
    framing: Framing,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        Framing::Length(mut left) => {
            let total = left;
            while left > 0 {
                if from.buf.is_empty() && !from.fill().await.map_err(|_| BodyError::From)? {
                    return Err(BodyError::From);
                }
                let take = from
                    .buf
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                to.write_all(&from.buf[..take])
                    .await
                    .map_err(|_| BodyError::To)?;
                from.buf.advance(take);
                left -= take as u64;
            }
            Ok(total)
        }
        Framing::Chunked => {
            let mut scanner = ChunkedScanner::default();
            while !scanner.done() {
                if from.buf.is_empty() && !from.fill().await.map_err(|_| BodyError::From)? {
                    return Err(BodyError::From);
                }
                let n = scanner.scan(&from.buf).map_err(|_| BodyError::Framing)?;
                to.write_all(&from.buf[..n])
                    .await
                    .map_err(|_| BodyError::To)?;
                from.buf.advance(n);
            }
            Ok(scanner.data_bytes)
        }
        Framing::UntilClose => {
            let mut total = 0;
            loop {
                if !from.buf.is_empty() {
                    total += from.buf.len() as u64;
                    to.write_all(&from.buf).await.map_err(|_| BodyError::To)?;
                    from.buf.clear();
                }
                if !from.fill().await.map_err(|_| BodyError::From)? {
                    return Ok(total);
                }
            }
        }
    }
}

/// Bodies up to this size that are already read go out in one write with their head.
const COALESCE: usize = 64 * 1024;

/// Writes a message head and relays its body: in one write when the whole body is already
/// buffered and small (on the tunnel, one write is one HTTP/2 DATA frame the source agent
/// reads at once), else the head and then the body as it comes.
async fn relay_message<R, W>(
    head: &[u8],
    from: &mut Side<R>,
    to: &mut W,
    framing: Framing,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Framing::Length(n) = framing
        && let Ok(n) = usize::try_from(n)
        && n <= COALESCE
        && from.buf.len() >= n
    {
        let mut message = Vec::with_capacity(head.len() + n);
        message.extend_from_slice(head);
        message.extend_from_slice(&from.buf[..n]);
        to.write_all(&message).await.map_err(|_| BodyError::To)?;
        from.buf.advance(n);
        return Ok(n as u64);
    }
    to.write_all(head).await.map_err(|_| BodyError::To)?;
    relay_body(from, to, framing).await
}

/// An answer of the agent's own, as HTTP/1.1 bytes (the same status, flag header and text as
/// `flags::local_reply`).
fn local_reply(flag: ResponseFlag, status: StatusCode, close: bool) -> Vec<u8> {
    let body = format!("{}\n", flag.text());
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n{FLAGS_HEADER}: {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        flag.code(),
        body.len()
    );
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// Whether a kept connection to the workload is still usable: not closed by the workload, and
/// nothing unasked for waiting on it. Asked before every request, so it costs no syscall in
/// the usual case: tokio clears a socket's read readiness when a read comes back short (as
/// the read that ended the last answer did) and sets it again only when the kernel reports
/// new data or the workload's FIN; only then is the socket peeked at.
fn still_open(tcp: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if tcp.poll_read_ready(&mut cx).is_pending() {
        return true;
    }
    let mut byte = [0u8; 1];
    // A peek that finds nothing (WouldBlock) clears the readiness again.
    let peeked = tcp.try_io(tokio::io::Interest::READABLE, || {
        // SAFETY: a one-byte peek into a local buffer on a socket we own.
        let n = unsafe {
            libc::recv(
                tcp.as_raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n)
        }
    });
    matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// What became of one exchange.
enum Next {
    /// Another request may follow on the stream.
    Continue,
    /// The stream is done (closed by either side, or switched to bytes).
    End,
}

struct Stream<T> {
    tunnel: Side<T>,
    workload: Option<Side<TcpStream>>,
    /// The connection the inbound path opened, until the first request uses it.
    first: Option<TcpStream>,
    delivery: Delivery,
}

/// Serves the HTTP/1.1 requests of one tunnel stream until it ends.
pub async fn serve<T>(tunnel: T, first: TcpStream, delivery: Delivery)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = delivery
        .transport
        .state()
        .config
        .http
        .max_header_bytes
        .max(8192);
    let mut stream = Stream {
        tunnel: Side::new(tunnel),
        workload: None,
        first: Some(first),
        delivery,
    };
    loop {
        let head = match read_request(&mut stream.tunnel, limit).await {
            Ok(head) => head,
            Err(HeadError::Closed | HeadError::Io) => break,
            Err(e) => {
                // Hyper's answers to a head it cannot read: 431 for too large, else 400.
                let status = if matches!(e, HeadError::TooLarge) {
                    "431 Request Header Fields Too Large"
                } else {
                    "400 Bad Request"
                };
                let reply =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.tunnel.io.write_all(reply.as_bytes()).await;
                let _ = stream.tunnel.io.shutdown().await;
                break;
            }
        };
        match stream.exchange(head).await {
            Next::Continue => {}
            Next::End => break,
        }
    }
}

impl<T> Stream<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn meter(&self, head: &RequestHead) -> RequestMeter {
        let d = &self.delivery;
        RequestMeter::at_destination_h1(head.target.clone(), head.http10, d.client, d.target)
    }

    fn record(&self, meter: RequestMeter, status: u16, flag: Option<ResponseFlag>, bytes: u64) {
        let d = &self.delivery;
        meter.record_relayed(
            &*d.requests,
            status,
            None,
            flag.map(ResponseFlag::code),
            bytes,
        );
    }

    /// Answers by itself (after reading the request's body away), and records it.
    async fn reply(
        &mut self,
        meter: RequestMeter,
        body: Framing,
        flag: ResponseFlag,
        status: StatusCode,
    ) -> Next {
        let close = flag == ResponseFlag::RbacDenied;
        if relay_body(&mut self.tunnel, &mut tokio::io::sink(), body)
            .await
            .is_err()
        {
            return Next::End;
        }
        let sent = self
            .tunnel
            .io
            .write_all(&local_reply(flag, status, close))
            .await
            .and(self.tunnel.io.flush().await);
        self.record(meter, status.as_u16(), Some(flag), 0);
        if sent.is_err() || close {
            let _ = self.tunnel.io.shutdown().await;
            return Next::End;
        }
        Next::Continue
    }

    /// A usable connection to the workload: the kept one if the workload has not closed it,
    /// the inbound path's first one, else a new one through the same authorization.
    async fn workload(&mut self) -> Result<(), ResponseFlag> {
        if self
            .workload
            .as_ref()
            .is_some_and(|w| w.buf.is_empty() && still_open(&w.io))
        {
            return Ok(());
        }
        self.workload = None;
        let tcp = match self.first.take() {
            Some(tcp) => tcp,
            None => {
                let d = &self.delivery;
                crate::transport::local::open_local(
                    &d.transport,
                    &d.identity,
                    &d.source,
                    d.origin,
                    d.target,
                )
                .await
                .map_err(|refusal| {
                    tracing::debug!(target = %d.target, %refusal, "no connection to the workload");
                    match refusal {
                        crate::transport::local::Refusal::Denied(_) => ResponseFlag::RbacDenied,
                        _ => ResponseFlag::UpstreamConnectFailure,
                    }
                })?
            }
        };
        self.workload = Some(Side::new(tcp));
        Ok(())
    }

    async fn exchange(&mut self, head: RequestHead) -> Next {
        let meter = self.meter(&head);
        let body = match framing::request_body(&head.facts) {
            Ok(body) => body,
            Err(_) => {
                let reply =
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = self.tunnel.io.write_all(reply).await;
                let _ = self.tunnel.io.shutdown().await;
                return Next::End;
            }
        };
        if head.method == Method::CONNECT {
            // As on the source side: an HTTP port does not tunnel.
            let flag = ResponseFlag::NoRoute;
            return self
                .reply(meter, body, flag, StatusCode::METHOD_NOT_ALLOWED)
                .await;
        }
        // The stream was authorized when it opened, but the source agent pools it for many
        // client connections: each request is judged by the policies in force now.
        if !super::delivery::allowed_now(&self.delivery) {
            let flag = ResponseFlag::RbacDenied;
            return self.reply(meter, body, flag, flag.status()).await;
        }
        if let Err(flag) = self.workload().await {
            return self.reply(meter, body, flag, flag.status()).await;
        }
        let Some(workload) = self.workload.as_mut() else {
            return Next::End;
        };
        // The request, as it came.
        let sent = relay_message(&head.bytes, &mut self.tunnel, &mut workload.io, body).await;
        let request_bytes = match sent {
            Ok(n) => n,
            Err(BodyError::From | BodyError::Framing) => return Next::End,
            Err(BodyError::To) => return self.broken(meter),
        };
        meter
            .request_bytes
            .store(request_bytes, std::sync::atomic::Ordering::Relaxed);
        if workload.io.flush().await.is_err() {
            return self.broken(meter);
        }
        self.answer(meter, &head).await
    }

    /// Relays the workload's answer (informational heads first) and records the request.
    async fn answer(&mut self, meter: RequestMeter, request: &RequestHead) -> Next {
        let Some(workload) = self.workload.as_mut() else {
            return Next::End;
        };
        let response = loop {
            let head = loop {
                match parse_response(&mut workload.buf) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(_) => return self.broken(meter),
                }
                match workload.fill().await {
                    Ok(true) => {}
                    _ => return self.broken(meter),
                }
            };
            // 1xx heads other than 101 come before the real answer.
            if (100..200).contains(&head.status) && head.status != 101 {
                if self.tunnel.io.write_all(&head.bytes).await.is_err() {
                    return Next::End;
                }
                continue;
            }
            break head;
        };
        if response.status == 101 {
            if self.tunnel.io.write_all(&response.bytes).await.is_err() {
                return Next::End;
            }
            self.record(meter, 101, None, 0);
            self.upgrade().await;
            return Next::End;
        }
        let framing = framing::response_body(
            &response.facts,
            request.method == Method::HEAD,
            response.status,
        );
        let Some(workload) = self.workload.as_mut() else {
            return Next::End;
        };
        let relayed = relay_message(&response.bytes, workload, &mut self.tunnel.io, framing).await;
        let response_bytes = match relayed {
            Ok(n) => n,
            Err(BodyError::To) => return Next::End,
            Err(BodyError::From | BodyError::Framing) => return self.broken(meter),
        };
        if self.tunnel.io.flush().await.is_err() {
            return Next::End;
        }
        self.record(meter, response.status, None, response_bytes);
        // Either end asked to close (or HTTP/1.0 without keep-alive, or a body that ends with
        // the connection): the stream ends with this exchange, as it would end between the
        // source and the workload.
        let closes = |f: &HeadFacts, http10: bool| f.close || (http10 && !f.keep_alive);
        if closes(&request.facts, request.http10)
            || closes(&response.facts, response.http10)
            || framing == Framing::UntilClose
        {
            let _ = self.tunnel.io.shutdown().await;
            return Next::End;
        }
        Next::Continue
    }

    /// The workload's connection broke before its answer was complete: reported as the 502 UC
    /// the source also sees, and the stream is dropped (reset) rather than answered.
    fn broken(&mut self, meter: RequestMeter) -> Next {
        let flag = ResponseFlag::UpstreamConnectionTermination;
        self.record(meter, flag.status().as_u16(), Some(flag), 0);
        Next::End
    }

    /// After a 101: both sides as bytes, what each had buffered first.
    async fn upgrade(&mut self) {
        let Some(mut workload) = self.workload.take() else {
            return;
        };
        let target = self.delivery.target;
        let early = async {
            if !self.tunnel.buf.is_empty() {
                workload.io.write_all(&self.tunnel.buf).await?;
            }
            if !workload.buf.is_empty() {
                self.tunnel.io.write_all(&workload.buf).await?;
            }
            std::io::Result::Ok(())
        };
        if early.await.is_err() {
            return;
        }
        let relayed = crate::transport::relay(&mut self.tunnel.io, &mut workload.io).await;
        tracing::debug!(%target, ?relayed, "upgraded connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_split_off_with_its_target() {
        let mut buf = BytesMut::from(
            &b"POST /api/items?page=2 HTTP/1.1\r\nHost: web.shop:80\r\nContent-Length: 3\r\n\r\nabcGET"[..],
        );
        let Ok(Some(head)) = parse_request(&mut buf) else {
            panic!("not parsed")
        };
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.target.path(), "/api/items?page=2");
        assert_eq!(head.target.authority(), "web.shop:80");
        assert_eq!(framing::request_body(&head.facts), Ok(Framing::Length(3)));
        assert!(!head.http10);
        assert!(head.bytes.ends_with(b"\r\n\r\n"));
        assert_eq!(&buf[..], b"abcGET");
        // The next head is not complete yet.
        assert!(matches!(
            parse_request(&mut buf),
            Err(HeadError::Malformed) | Ok(None)
        ));
    }

    #[test]
    fn a_partial_head_waits_and_garbage_is_malformed() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a"[..]);
        assert!(matches!(parse_request(&mut buf), Ok(None)));
        let mut buf = BytesMut::from(&b"\x00\x01 nonsense\r\n\r\n"[..]);
        assert!(matches!(parse_request(&mut buf), Err(HeadError::Malformed)));
    }

    #[test]
    fn local_replies_carry_the_flag_and_close_when_asked() {
        let flag = ResponseFlag::RbacDenied;
        let text = String::from_utf8(local_reply(flag, flag.status(), true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.contains("x-mesh-response-flags: RBAC\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }

    async fn relayed(input: &[u8], framing: Framing) -> (Result<u64, BodyError>, Vec<u8>, Vec<u8>) {
        let mut from = Side::new(input);
        let mut out = Vec::new();
        let r = relay_body(&mut from, &mut out, framing).await;
        (r, out, from.buf.to_vec())
    }

    #[tokio::test]
    async fn bodies_are_relayed_exactly_as_framed() {
        let (r, out, _) = relayed(b"hello world", Framing::Length(5)).await;
        assert_eq!(r.unwrap(), 5);
        assert_eq!(out, b"hello");
        let (r, out, left) = relayed(b"3\r\nabc\r\n0\r\n\r\nrest", Framing::Chunked).await;
        assert_eq!(r.unwrap(), 3);
        assert_eq!(out, b"3\r\nabc\r\n0\r\n\r\n");
        assert!(left.is_empty() || left == b"rest");
        let (r, out, _) = relayed(b"to the end", Framing::UntilClose).await;
        assert_eq!(r.unwrap(), 10);
        assert_eq!(out, b"to the end");
        let (r, _, _) = relayed(b"shor", Framing::Length(5)).await;
        assert!(matches!(r, Err(BodyError::From)));
        let (r, _, _) = relayed(b"3\r\nab", Framing::Chunked).await;
        assert!(matches!(r, Err(BodyError::From)));
    }

    #[tokio::test]
    async fn a_kept_workload_connection_is_usable_until_it_speaks_or_closes() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut kept = Side::new(TcpStream::connect(addr).await.unwrap());
        let (mut workload, _) = listener.accept().await.unwrap();
        assert!(still_open(&kept.io), "idle");
        // An answer read to its end (a short read) leaves nothing to look at.
        workload.write_all(b"answer").await.unwrap();
        assert!(kept.fill().await.unwrap());
        assert!(still_open(&kept.io), "after an answer");
        assert!(still_open(&kept.io), "asked twice");
        // Bytes nobody asked for.
        workload.write_all(b"x").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!still_open(&kept.io), "unasked-for bytes");
        // Closed by the workload.
        let mut other = Side::new(TcpStream::connect(addr).await.unwrap());
        let (workload, _) = listener.accept().await.unwrap();
        assert!(still_open(&other.io));
        drop(workload);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!still_open(&other.io), "closed");
        let _ = other.fill().await;
    }
}
