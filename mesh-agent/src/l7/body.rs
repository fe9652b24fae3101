//! Body types of the L7 path, and the buffering that makes a request replayable for retries
//! and mirrors without holding large uploads in memory.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of requests sent upstream.
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;
/// Body of responses sent to the client.
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// Requests whose body is larger than this are streamed and not retried or mirrored (as
/// Envoy does when its per-request buffer limit is exceeded).
pub const REPLAY_LIMIT: usize = 256 * 1024;

pub fn full(data: impl Into<Bytes>) -> UnsyncBoxBody<Bytes, BoxError> {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> UnsyncBoxBody<Bytes, BoxError> {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn boxed<B>(body: B) -> UnsyncBoxBody<Bytes, BoxError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A request body as the retry loop sees it.
pub enum Prepared {
    /// Fully read (within [`REPLAY_LIMIT`]): can be sent any number of times.
    Replayable {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Can be sent once; no retry, no mirror.
    Once(ReqBody),
    /// The one-shot body was sent.
    Spent,
}

impl Prepared {
    /// Reads `body` into memory when the caller needs to replay it (retries or mirrors) and it
    /// fits in [`REPLAY_LIMIT`]; otherwise keeps it streaming. Frames already read when the
    /// limit is crossed are sent first, followed by the rest of the stream.
    pub async fn new<B>(body: B, replay_wanted: bool) -> Result<Prepared, B::Error>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if !replay_wanted {
            return Ok(Prepared::Once(boxed(body)));
        }
        if body.is_end_stream() {
            return Ok(Prepared::Replayable {
                data: Bytes::new(),
                trailers: None,
            });
        }
        if body.size_hint().lower() > REPLAY_LIMIT as u64 {
            return Ok(Prepared::Once(boxed(body)));
        }
        let mut body = body;
        let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
        let mut size = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(data) = frame.data_ref() {
                size += data.len();
            }
            read.push_back(frame);
            if size > REPLAY_LIMIT {
                return Ok(Prepared::Once(boxed(Prefixed { read, rest: body })));
            }
        }
        let mut data = bytes::BytesMut::with_capacity(size);
        let mut trailers = None;
        for frame in read {
            match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok(Prepared::Replayable {
            data: data.freeze(),
            trailers,
        })
    }

    /// A body for one attempt; `None` when a one-shot body was already sent.
    pub fn take(&mut self) -> Option<ReqBody> {
        match self {
            Prepared::Replayable { data, trailers } => Some(replay(data.clone(), trailers.clone())),
            Prepared::Spent => None,
            Prepared::Once(_) => match std::mem::replace(self, Prepared::Spent) {
                Prepared::Once(body) => Some(body),
                _ => None,
            },
        }
    }

    /// An extra copy of a buffered body (for a mirror); `None` for a one-shot body.
    pub fn copy(&self) -> Option<ReqBody> {
        match self {
            Prepared::Replayable { data, trailers } => Some(replay(data.clone(), trailers.clone())),
            _ => None,
        }
    }

    pub fn is_replayable(&self) -> bool {
        matches!(self, Prepared::Replayable { .. })
    }
}

/// A buffered body: its data, then its trailers (gRPC requests rarely have any, but they are
/// kept).
fn replay(data: Bytes, trailers: Option<HeaderMap>) -> ReqBody {
    let mut frames = VecDeque::new();
    if !data.is_empty() {
        frames.push_back(Frame::data(data));
    }
    if let Some(t) = trailers {
        frames.push_back(Frame::trailers(t));
    }
    boxed(Frames(frames))
}

/// The client's request body, counting the bytes it delivers (istio_request_bytes).
pub struct Counted<B> {
    inner: B,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

pub type ClientBody = Counted<Incoming>;

impl<B> Counted<B> {
    pub fn new(inner: B, bytes: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Counted<B> {
        Counted { inner, bytes }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Frames from memory.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// Frames already read, then the rest of the original body.
struct Prefixed<B> {
    read: VecDeque<Frame<Bytes>>,
    rest: B,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Prefixed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}
