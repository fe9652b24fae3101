//! The destination side of the L7 path for ports declared `http2` or `grpc` (the source agent
//! speaks HTTP/2 on the tunnel stream): the frames go to the workload and back as the bytes
//! they came as, and the agent watches them instead of serving the stream with an HTTP/2 server
//! and forwarding each request with an HTTP/2 client (two more HPACK encodings, request and
//! response objects, and four task hand-offs per request).
//!
//! Each direction splits its bytes at frame boundaries and hands the frames to h2's own frame
//! decoder (`h2::Codec`, reading from memory), which keeps the HPACK state and yields the
//! decoded header blocks: the request's method, authority, path and content type, the answer's
//! status and grpc-status. DATA lengths give the body sizes, END_STREAM and RST_STREAM the end
//! of each exchange. Every request is reported with `reporter="destination"` as with the
//! HTTP-server path (`inbound`, still used when the ports disagree on HTTP/1.1 or HTTP/2).
//!
//! Kept from that path: each new request is judged by the authorization in force. A refused
//! request (403 `RBAC`; CONNECT 405 `NR`) is answered by the agent with a header-only response
//! and a GOAWAY naming it as the last stream, and the connection winds down: its header block
//! never reaches the workload, so the workload's HPACK table would no longer match the
//! client's; the client's agent opens its next requests on a new tunnel stream, which the
//! authorization judges again. A workload that breaks the connection ends the tunnel stream,
//! as a direct connection would end; its unanswered requests are reported as 502 `UC`.
//!
//! The agent's own header blocks use only literal fields without indexing, which leave the
//! client's HPACK table as the workload's encoder left it.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll, Waker},
};

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use h2::frame::{Frame, GoAway, Reason, StreamId};
use http::{HeaderMap, HeaderValue, Method, StatusCode, uri::PathAndQuery};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, WriteHalf},
    net::TcpStream,
};

use super::{
    delivery::{Delivery, allowed_now},
    detect::H2_PREFACE,
    flags::{FLAGS_HEADER, ResponseFlag, local_reply},
};
use super::{meter::RequestMeter, target::RequestTarget};
use crate::routing::matcher::is_grpc;

const FRAME_HEADER: usize = 9;
const KIND_HEADERS: u8 = 0x1;
const KIND_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const READ_SIZE: usize = 64 * 1024;
/// SETTINGS_MAX_FRAME_SIZE's range (RFC 9113 6.5.2).
const MIN_FRAME_SIZE: usize = 16_384;
const MAX_FRAME_SIZE: usize = 16_777_215;
/// HPACK's default table size; a peer's SETTINGS may raise it.
const DEFAULT_TABLE_SIZE: usize = 4096;

/// Bytes handed to h2's frame decoder: it reads them as if from a socket. Empty means "no more
/// yet" (never end of stream), so the decoder waits for the next frame.
#[derive(Default)]
struct Tap {
    data: BytesMut,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.data.is_empty() {
            return Poll::Pending;
        }
        let n = self.data.len().min(buf.remaining());
        buf.put_slice(&self.data.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One direction's decoder.
struct Decoder {
    codec: h2::Codec<Tap, Bytes>,
}

/// The decoder lost track of the connection (it would have been a connection error for the
/// endpoint too).
struct Lost;

impl Decoder {
    fn new() -> Decoder {
        let mut codec = h2::Codec::new(Tap::default());
        // The endpoints enforce their own limits; the watcher accepts what they may accept.
        codec.set_max_recv_header_list_size(16 << 20);
        Decoder { codec }
    }

    /// Decodes one whole frame's bytes: `None` for frames that yield nothing on their own
    /// (the first frames of a header block, unknown kinds) and for stream errors, which the
    /// receiving endpoint answers by itself.
    fn decode(&mut self, frame: &[u8]) -> Result<Option<Frame>, Lost> {
        self.codec.get_mut().data.extend_from_slice(frame);
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut self.codec).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => Ok(Some(frame)),
            Poll::Ready(Some(Err(h2::proto::Error::Reset(..)))) => Ok(None),
            Poll::Ready(Some(Err(_)) | None) => Err(Lost),
            Poll::Pending => Ok(None),
        }
    }

    /// The peer's SETTINGS bound what this direction may send.
    fn apply(&mut self, settings: &h2::frame::Settings) {
        if let Some(size) = settings.max_frame_size() {
            // Out-of-range values are the receiving endpoint's to refuse.
            let size = (size as usize).clamp(MIN_FRAME_SIZE, MAX_FRAME_SIZE);
            self.codec
                .set_max_recv_frame_size(size.max(self.codec.max_recv_frame_size()));
        }
        if let Some(size) = settings.header_table_size() {
            self.codec
                .set_recv_header_table_size((size as usize).max(DEFAULT_TABLE_SIZE));
        }
    }
}

/// The length of the whole frame at the front of `buf`, when it is all there.
fn whole_frame(buf: &[u8]) -> Option<usize> {
    let head = buf.get(..FRAME_HEADER)?;
    let len = FRAME_HEADER
        + ((usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]));
    (buf.len() >= len).then_some(len)
}

fn stream_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff
}

/// One request between its HEADERS and its end.
struct Exchange {
    meter: RequestMeter,
    grpc: bool,
    /// The final status, once the answer's headers came (1xx do not count).
    status: Option<u16>,
    grpc_status: Option<u32>,
    response_bytes: u64,
}

/// What both directions share.
struct Shared {
    exchanges: HashMap<u32, Exchange>,
    /// The highest request stream seen, and whether the connection winds down (a request was
    /// refused): later streams are not passed on.
    highest: u32,
    winding_down: bool,
    /// SETTINGS each side sent, for the other direction's decoder.
    client_settings: Option<h2::frame::Settings>,
    workload_settings: Option<h2::frame::Settings>,
}

struct Watch<T> {
    delivery: Delivery,
    shared: Mutex<Shared>,
    tunnel_out: tokio::sync::Mutex<WriteHalf<T>>,
}

/// Serves the HTTP/2 connection of one tunnel stream until it ends. `first` is the connection
/// to the workload the inbound path made for the stream.
pub async fn serve<T>(tunnel: T, first: TcpStream, delivery: Delivery)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = delivery.target;
    let (tunnel_in, tunnel_out) = tokio::io::split(tunnel);
    let (workload_in, workload_out) = first.into_split();
    let watch = Watch {
        delivery,
        shared: Mutex::new(Shared {
            exchanges: HashMap::new(),
            highest: 0,
            winding_down: false,
            client_settings: None,
            workload_settings: None,
        }),
        tunnel_out: tokio::sync::Mutex::new(tunnel_out),
    };
    let (requests, answers) = tokio::join!(
        watch.requests(tunnel_in, workload_out),
        watch.answers(workload_in)
    );
    // Whatever is still open ended with the connection.
    watch.end_all();
    let _ = watch.tunnel_out.lock().await.shutdown().await;
    tracing::debug!(%target, ?requests, ?answers, "destination HTTP/2 connection ended");
}

/// How a direction ended.
#[derive(Debug)]
enum End {
    Closed,
    Broken,
    NotHttp2,
    WoundDown,
}

impl<T> Watch<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Client to workload: the preface, then frames; new requests are judged before their
    /// header block is passed on.
    async fn requests<R, W>(&self, mut from: R, mut to: W) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        while buf.len() < H2_PREFACE.len() {
            if !matches!(from.read_buf(&mut buf).await, Ok(n) if n > 0) {
                return End::Closed;
            }
        }
        if &buf[..H2_PREFACE.len()] != H2_PREFACE {
            return End::NotHttp2;
        }
        if to.write_all(&buf.split_to(H2_PREFACE.len())).await.is_err() {
            return End::Broken;
        }
        let mut decoder = Decoder::new();
        let mut out = BytesMut::new();
        // The header block being read: where it began in `out` (it is held until decoded),
        // whether it opens a new request, and whether that request is not passed on at all.
        let mut block_start: Option<usize> = None;
        let mut block_opens = false;
        let mut block_dropped = false;
        loop {
            while let Some(len) = whole_frame(&buf) {
                let frame = buf.split_to(len);
                let kind = frame[3];
                if let Some(s) = self.lock().workload_settings.take() {
                    decoder.apply(&s);
                }
                if kind == KIND_HEADERS && block_start.is_none() {
                    block_start = Some(out.len());
                    let mut shared = self.lock();
                    let id = stream_of(&frame);
                    block_opens = id > shared.highest;
                    if block_opens {
                        shared.highest = id;
                    }
                    block_dropped = block_opens && shared.winding_down;
                }
                let decoded = match decoder.decode(&frame) {
                    Ok(d) => d,
                    Err(Lost) => return End::Broken,
                };
                out.extend_from_slice(&frame);
                let Some(decoded) = decoded else {
                    let ends_block = (kind == KIND_HEADERS || kind == KIND_CONTINUATION)
                        && frame[4] & FLAG_END_HEADERS != 0;
                    if ends_block {
                        // A stream error: the workload answers it.
                        block_start = None;
                    }
                    continue;
                };
                match decoded {
                    Frame::Headers(headers) => {
                        let start = block_start.take().unwrap_or(out.len());
                        if block_dropped {
                            // The connection winds down: the client retries it elsewhere.
                            out.truncate(start);
                        } else if block_opens && let Some((flag, grpc)) = self.admit(headers) {
                            out.truncate(start);
                            if self.refuse(stream_of(&frame), flag, grpc).await.is_err() {
                                return End::Broken;
                            }
                        }
                        block_opens = false;
                        block_dropped = false;
                    }
                    Frame::Data(data) => {
                        let id = u32::from(data.stream_id());
                        if let Some(x) = self.lock().exchanges.get(&id) {
                            x.meter.request_bytes.fetch_add(
                                data.payload().len() as u64,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        }
                    }
                    Frame::Reset(reset) => {
                        // The client gave up: an answer under way is reported as far as it
                        // came; one that never started is not a request anybody saw answered.
                        let id = u32::from(reset.stream_id());
                        let gone = self.lock().exchanges.remove(&id);
                        if let Some(x) = gone
                            && x.status.is_some()
                        {
                            self.record(x, None);
                        }
                    }
                    Frame::Settings(s) if !s.is_ack() => {
                        self.lock().client_settings = Some(s);
                    }
                    _ => {}
                }
            }
            let ready = block_start.unwrap_or(out.len());
            if ready > 0 {
                let chunk = out.split_to(ready);
                if to.write_all(&chunk).await.is_err() {
                    return End::Broken;
                }
            }
            if self.wound_down() {
                let _ = to.shutdown().await;
                return End::WoundDown;
            }
            buf.reserve(READ_SIZE);
            match from.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => {
                    let _ = to.shutdown().await;
                    return End::Closed;
                }
            }
        }
    }

    /// Workload to client: frames as they come, watched for each answer's status, size and
    /// end.
    async fn answers<R>(&self, mut from: R) -> End
    where
        R: AsyncRead + Unpin,
    {
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        let mut decoder = Decoder::new();
        loop {
            let mut ready = 0;
            while let Some(len) = whole_frame(&buf[ready..]) {
                let frame = &buf[ready..ready + len];
                ready += len;
                if let Some(s) = self.lock().client_settings.take() {
                    decoder.apply(&s);
                }
                let decoded = match decoder.decode(frame) {
                    Ok(Some(d)) => d,
                    Ok(None) => continue,
                    Err(Lost) => {
                        self.broke();
                        return End::Broken;
                    }
                };
                self.answer(decoded);
            }
            if ready > 0 {
                let chunk = buf.split_to(ready);
                if self
                    .tunnel_out
                    .lock()
                    .await
                    .write_all(&chunk)
                    .await
                    .is_err()
                {
                    return End::Broken;
                }
            }
            buf.reserve(READ_SIZE);
            match from.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => {
                    self.broke();
                    return End::Closed;
                }
            }
        }
    }

    /// A new request: judged, and followed when admitted; the flag it is refused with if not.
    fn admit(&self, headers: h2::frame::Headers) -> Option<(ResponseFlag, bool)> {
        let id = u32::from(headers.stream_id());
        let (pseudo, fields) = headers.into_parts();
        let grpc = is_grpc(&fields);
        let method = pseudo.method.clone().unwrap_or(Method::GET);
        let target = RequestTarget::from_h1(
            method.clone(),
            pseudo.path.as_deref().and_then(|p| {
                PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(p.as_bytes())).ok()
            }),
            pseudo
                .authority
                .as_deref()
                .and_then(|a| HeaderValue::from_str(a).ok()),
        );
        let d = &self.delivery;
        let meter = RequestMeter::at_destination_h2(target, grpc, d.client, d.target);
        let refused = if method == Method::CONNECT {
            // As on the source side: an HTTP port does not tunnel.
            Some(ResponseFlag::NoRoute)
        } else if !allowed_now(d) {
            // The stream was authorized when it opened, but the source agent pools it for many
            // client connections: each request is judged by the policies in force now.
            Some(ResponseFlag::RbacDenied)
        } else {
            None
        };
        let exchange = Exchange {
            meter,
            grpc,
            status: None,
            grpc_status: None,
            response_bytes: 0,
        };
        match refused {
            None => {
                self.lock().exchanges.insert(id, exchange);
                None
            }
            Some(flag) => {
                self.record(exchange, Some(flag));
                Some((flag, grpc))
            }
        }
    }

    /// Answers refused stream `id` by itself and winds the connection down.
    async fn refuse(&self, id: u32, flag: ResponseFlag, grpc: bool) -> std::io::Result<()> {
        let reply = reply(flag, grpc);
        let mut frames = BytesMut::new();
        header_only(&mut frames, id, reply.status(), reply.headers());
        GoAway::new(StreamId::from(id), Reason::NO_ERROR).encode(&mut frames);
        self.lock().winding_down = true;
        let mut out = self.tunnel_out.lock().await;
        out.write_all(&frames).await?;
        out.flush().await
    }

    /// The connection winds down and nothing it let through is open any more.
    fn wound_down(&self) -> bool {
        let shared = self.lock();
        shared.winding_down && shared.exchanges.is_empty()
    }

    fn answer(&self, frame: Frame) {
        let mut shared = self.lock();
        let (id, done) = match frame {
            Frame::Headers(headers) => {
                let id = u32::from(headers.stream_id());
                let end = headers.is_end_stream();
                let Some(x) = shared.exchanges.get_mut(&id) else {
                    return;
                };
                let (pseudo, fields) = headers.into_parts();
                match (x.status, pseudo.status) {
                    // Informational answers come before the final one.
                    (None, Some(s)) if s.is_informational() => return,
                    (None, Some(s)) => x.status = Some(s.as_u16()),
                    _ => {}
                }
                if x.grpc
                    && let Some(code) = grpc_status(&fields)
                {
                    x.grpc_status = Some(code);
                }
                (id, end)
            }
            Frame::Data(data) => {
                let id = u32::from(data.stream_id());
                let Some(x) = shared.exchanges.get_mut(&id) else {
                    return;
                };
                x.response_bytes += data.payload().len() as u64;
                (id, data.is_end_stream())
            }
            Frame::Reset(reset) => (u32::from(reset.stream_id()), true),
            Frame::Settings(s) if !s.is_ack() => {
                shared.workload_settings = Some(s);
                return;
            }
            _ => return,
        };
        if !done {
            return;
        }
        let Some(x) = shared.exchanges.remove(&id) else {
            return;
        };
        drop(shared);
        // A reset before any answer is the workload breaking the request: 502 UC, as the
        // HTTP-server path reports it.
        let flag = x
            .status
            .is_none()
            .then_some(ResponseFlag::UpstreamConnectionTermination);
        self.record(x, flag);
    }

    /// The workload's side ended: requests without an answer are 502 UC, answers under way
    /// are reported as far as they came.
    fn broke(&self) {
        let open: Vec<Exchange> = self.lock().exchanges.drain().map(|(_, x)| x).collect();
        for x in open {
            let flag = x
                .status
                .is_none()
                .then_some(ResponseFlag::UpstreamConnectionTermination);
            self.record(x, flag);
        }
    }

    /// The connection is over: what is left is reported as in `broke`.
    fn end_all(&self) {
        self.broke();
    }

    /// Reports one request. Without an answer from the workload, the answer is the agent's
    /// own for `flag`, as `flags::local_reply` makes it.
    fn record(&self, x: Exchange, flag: Option<ResponseFlag>) {
        let d = &self.delivery;
        let (status, grpc_status) = match (x.status, flag) {
            (Some(s), _) => (s, x.grpc_status),
            (None, Some(f)) => {
                let reply = reply(f, x.grpc);
                let code = x.grpc.then(|| grpc_status(reply.headers())).flatten();
                (reply.status().as_u16(), code)
            }
            (None, None) => (0, None),
        };
        x.meter.record_relayed(
            &*d.requests,
            status,
            grpc_status,
            flag.map(ResponseFlag::code),
            x.response_bytes,
        );
    }
}

/// The agent's own answer for `flag` (CONNECT is answered 405, as on the HTTP-server path).
fn reply(flag: ResponseFlag, grpc: bool) -> http::Response<super::body::RespBody> {
    let mut reply = local_reply(flag, grpc);
    if flag == ResponseFlag::NoRoute {
        *reply.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    }
    reply
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A HEADERS frame ending stream `id`: the status and `headers` as literal fields without
/// indexing (RFC 7541 6.2.2), so that the client's HPACK table is left as it was.
fn header_only(out: &mut BytesMut, id: u32, status: StatusCode, headers: &HeaderMap) {
    let mut block = BytesMut::new();
    literal(&mut block, b":status", status.as_str().as_bytes());
    for (name, value) in headers {
        if name == FLAGS_HEADER
            || name == http::header::CONTENT_TYPE
            || name.as_str().starts_with("grpc-")
        {
            literal(&mut block, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    literal(&mut block, b"content-length", b"0");
    let len = block.len();
    out.put_u8((len >> 16) as u8);
    out.put_u8((len >> 8) as u8);
    out.put_u8(len as u8);
    out.put_u8(KIND_HEADERS);
    out.put_u8(FLAG_END_STREAM | FLAG_END_HEADERS);
    out.put_u32(id & 0x7fff_ffff);
    out.extend_from_slice(&block);
}

/// One literal field without indexing, new name, no Huffman coding.
fn literal(block: &mut BytesMut, name: &[u8], value: &[u8]) {
    block.put_u8(0x00);
    length(block, name.len());
    block.extend_from_slice(name);
    length(block, value.len());
    block.extend_from_slice(value);
}

/// An HPACK integer with a 7-bit prefix (the string length, Huffman bit clear).
fn length(block: &mut BytesMut, mut n: usize) {
    if n < 0x7f {
        block.put_u8(n as u8);
        return;
    }
    block.put_u8(0x7f);
    n -= 0x7f;
    while n >= 0x80 {
        block.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    block.put_u8(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's own header block decodes, with h2's decoder, to what it says.
    #[test]
    fn header_only_replies_decode() {
        let mut headers = HeaderMap::new();
        headers.insert(FLAGS_HEADER, HeaderValue::from_static("RBAC"));
        headers.insert("x-long", HeaderValue::from_str(&"v".repeat(300)).unwrap());
        let mut frame = BytesMut::new();
        header_only(&mut frame, 5, StatusCode::FORBIDDEN, &headers);
        assert_eq!(whole_frame(&frame), Some(frame.len()));
        let mut decoder = Decoder::new();
        let Ok(Some(Frame::Headers(h))) = decoder.decode(&frame) else {
            panic!("not decoded");
        };
        assert_eq!(u32::from(h.stream_id()), 5);
        assert!(h.is_end_stream());
        let (pseudo, fields) = h.into_parts();
        assert_eq!(pseudo.status, Some(StatusCode::FORBIDDEN));
        assert_eq!(fields[FLAGS_HEADER], "RBAC");
        assert_eq!(fields["content-length"], "0");
        assert!(
            fields.get("x-long").is_none(),
            "only the reply's own fields"
        );
        let mut long = BytesMut::new();
        length(&mut long, 300);
        assert_eq!(&long[..], &[0x7f, 0xad, 0x01]);
    }

    #[test]
    fn frames_are_split_at_their_boundaries() {
        let frame = [0, 0, 3, 0, 1, 0, 0, 0, 1, b'a', b'b', b'c', 0, 0];
        assert_eq!(whole_frame(&frame), Some(12));
        assert_eq!(whole_frame(&frame[..11]), None);
        assert_eq!(whole_frame(&frame[..5]), None);
        assert_eq!(stream_of(&frame), 1);
    }
}
