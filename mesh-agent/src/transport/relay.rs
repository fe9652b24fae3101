//! Byte copying between two streams, with TCP half-close carried across.
//!
//! Each direction owns a buffer that starts small and doubles whenever a read fills it, up to
//! [`RELAY_BUFFER`]. An idle or request/response connection never holds more than a few KiB
//! (10 000 idle meshed connections with fixed 256 KiB buffers each held 2 x 256 KiB per
//! connection in both agents, the bulk of their memory), while a bulk stream reaches the large
//! buffer after a handful of reads and is not syscall-bound.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest relay buffer per direction: large enough that a bulk transfer is not
/// syscall-bound.
pub const RELAY_BUFFER: usize = 256 * 1024;
/// The buffer every direction starts with: holds a typical request or response whole.
pub const INITIAL_RELAY_BUFFER: usize = 2 * 1024;

/// Copies both ways until both sides have finished; (a→b, b→a) bytes. When one side's read
/// ends, the other side's write is shut down, which is exactly TCP half-close semantics (and
/// END_STREAM on a tunnel stream). The first error of either direction ends the relay.
pub async fn relay<A, B>(mut a: A, mut b: B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Direction::new();
    let mut b_to_a = Direction::new();
    both_directions(|cx| {
        (
            a_to_b.poll(cx, Pin::new(&mut a), Pin::new(&mut b)),
            b_to_a.poll(cx, Pin::new(&mut b), Pin::new(&mut a)),
        )
    })
    .await
}

/// Drives the two directions of a relay until both have finished, (forward, backward) bytes;
/// the first error of either ends it. Shared by the copy and the splice relay.
pub(super) async fn both_directions<F>(mut poll: F) -> io::Result<(u64, u64)>
where
    F: FnMut(&mut Context<'_>) -> (Poll<io::Result<u64>>, Poll<io::Result<u64>>),
{
    poll_fn(|cx| match poll(cx) {
        (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
        (Poll::Ready(Ok(up)), Poll::Ready(Ok(down))) => Poll::Ready(Ok((up, down))),
        _ => Poll::Pending,
    })
    .await
}

/// One direction of a relay: read into the buffer, write it all out, repeat; at end of input
/// flush and shut the writer down.
pub(super) struct Direction {
    buf: Vec<u8>,
    /// Bytes of `buf` already written out, and bytes read into it.
    written: usize,
    filled: usize,
    /// The last read filled the buffer: the next one gets a buffer twice the size.
    grow: bool,
    read_done: bool,
    /// Bytes were written since the last flush.
    unflushed: bool,
    shut_down: bool,
    copied: u64,
    /// Set when a switch to splice was tried and is not possible: stay a copy.
    copy_only: bool,
}

impl Direction {
    pub(super) fn new() -> Direction {
        Direction {
            buf: Vec::new(),
            written: 0,
            filled: 0,
            grow: false,
            read_done: false,
            unflushed: false,
            shut_down: false,
            copied: 0,
            copy_only: false,
        }
    }

    /// Bytes written out so far.
    pub(super) fn copied(&self) -> u64 {
        self.copied
    }

    /// The stream is bulk (the buffer has grown to its largest) and nothing is buffered: the
    /// moment another way of moving bytes (splice) can take over without reordering any.
    pub(super) fn is_bulk_and_empty(&self) -> bool {
        !self.copy_only
            && self.buf.len() == RELAY_BUFFER
            && self.written == self.filled
            && !self.read_done
            && !self.shut_down
    }

    pub(super) fn keep_copying(&mut self) {
        self.copy_only = true;
    }

    /// Makes the (empty) buffer ready for the next read: allocated small at the first poll, doubled after a read
    /// that filled it.
    fn prepare_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0; INITIAL_RELAY_BUFFER];
        } else if self.grow && self.buf.len() < RELAY_BUFFER {
            self.buf = vec![0; (self.buf.len() * 2).min(RELAY_BUFFER)];
        }
        self.grow = false;
    }

    pub(super) fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.shut_down {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            // Read while the buffer has room, also while a write is pending: the next bytes
            // are then ready the moment the writer takes more (reads and writes overlap).
            let mut read_pending = false;
            if !self.read_done && (self.written == self.filled || self.filled < self.buf.len()) {
                if self.written == self.filled {
                    self.written = 0;
                    self.filled = 0;
                    self.prepare_buffer();
                }
                let mut read = ReadBuf::new(&mut self.buf[self.filled..]);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Pending => read_pending = true,
                    Poll::Ready(result) => {
                        result?;
                        let n = read.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.filled += n;
                            self.grow = self.filled == self.buf.len();
                        }
                    }
                }
            }
            if self.written == self.filled && read_pending {
                // Nothing more to send for now: push out what was written.
                if self.unflushed {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
            while self.written < self.filled {
                match writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.written..self.filled])
                {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "relay: the destination accepted no bytes",
                        )));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.copied += n as u64;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        let can_read_more =
                            !self.read_done && !read_pending && self.filled < self.buf.len();
                        if can_read_more {
                            break;
                        }
                        return Poll::Pending;
                    }
                }
            }
            if self.read_done && self.written == self.filled {
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.shut_down = true;
                // The buffer is not needed any more; the other direction may run for long.
                self.buf = Vec::new();
                return Poll::Ready(Ok(self.copied));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// Bytes 0..n in a pattern that shows reordering or loss.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn copies_both_ways_and_carries_half_close() {
        let (mut app, agent_side) = duplex(64 * 1024);
        let (upstream_side, mut upstream) = duplex(64 * 1024);
        let relay = tokio::spawn(relay(agent_side, upstream_side));

        let request = pattern(3 * 1024 * 1024);
        let response = pattern(5 * 1024 * 1024 + 17);
        let sent = request.clone();
        let writer = tokio::spawn(async move {
            app.write_all(&sent).await.unwrap();
            // Half-close: the upstream must see end of input while it still answers.
            app.shutdown().await.unwrap();
            let mut got = Vec::new();
            app.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut got_request = Vec::new();
        upstream.read_to_end(&mut got_request).await.unwrap();
        assert_eq!(got_request, request);
        upstream.write_all(&response).await.unwrap();
        upstream.shutdown().await.unwrap();

        assert_eq!(writer.await.unwrap(), response);
        let (up, down) = relay.await.unwrap().unwrap();
        assert_eq!(up, request.len() as u64);
        assert_eq!(down, response.len() as u64);
    }

    #[tokio::test]
    async fn small_exchanges_keep_the_small_buffer_and_bulk_grows_it() {
        let mut direction = Direction::new();
        let (mut source, mut reader) = duplex(1024 * 1024);
        let (mut writer, mut sink) = duplex(1024 * 1024);

        source.write_all(&[1; 100]).await.unwrap();
        let _ = poll_fn(|cx| {
            let _ = direction.poll(cx, Pin::new(&mut reader), Pin::new(&mut writer));
            Poll::Ready(())
        })
        .await;
        assert_eq!(direction.buf.len(), INITIAL_RELAY_BUFFER);

        // A stream that keeps the buffer full doubles it up to the cap, never beyond.
        tokio::spawn(async move { tokio::io::copy(&mut sink, &mut tokio::io::sink()).await });
        for _ in 0..12 {
            source.write_all(&vec![2; RELAY_BUFFER]).await.unwrap();
            let _ = poll_fn(|cx| {
                let _ = direction.poll(cx, Pin::new(&mut reader), Pin::new(&mut writer));
                Poll::Ready(())
            })
            .await;
            tokio::task::yield_now().await;
        }
        assert_eq!(direction.buf.len(), RELAY_BUFFER);
    }

    #[tokio::test]
    async fn an_error_on_either_side_ends_the_relay() {
        let (app, agent_side) = duplex(1024);
        let (upstream_side, upstream) = duplex(1024);
        drop(upstream);
        let mut app = app;
        let relay = tokio::spawn(relay(agent_side, upstream_side));
        // Writing towards a closed upstream fails (BrokenPipe from the duplex).
        let _ = app.write_all(b"hello").await;
        let result = relay.await.unwrap();
        assert!(result.is_err(), "{result:?}");
    }
}
