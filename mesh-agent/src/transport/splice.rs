//! Zero-copy relay between two TCP sockets: once a direction carries bulk data it moves the
//! bytes socket -> pipe -> socket with splice(2), so they never cross into userspace.
//!
//! A direction starts as the userspace [`Direction`] copy (small buffer, cheap for
//! request/response and idle connections: no pipe, no extra descriptors); when its buffer has
//! grown to the largest size (the stream is bulk) and is empty, it switches to a pipe of its
//! own. The pipe is filled from the source only when empty and drained whole before the next
//! fill, so a splice into it that would block always means the *socket* has nothing to read
//! (a full pipe would say EAGAIN too, and clearing the socket's readiness on that would stall
//! the stream).

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    pin::Pin,
    task::{Context, Poll, ready},
};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::{
    io::{AsyncWrite, Interest},
    net::TcpStream,
};

use super::relay::{Direction, RELAY_BUFFER, both_directions};

/// What each pipe is asked to hold (the kernel default is 16 pages).
const PIPE_SIZE: usize = RELAY_BUFFER;

/// What a TCP relay moved, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// a→b and b→a bytes.
    pub up: u64,
    pub down: u64,
    /// Directions (0, 1 or 2) that switched to splice.
    pub spliced: u8,
}

/// Relays both ways between two TCP sockets until both have finished, as
/// [`super::relay::relay`] does (half-close carried, first error ends it).
pub async fn relay_tcp(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<Relayed> {
    let mut a_to_b = TcpDirection::Copy(Direction::new());
    let mut b_to_a = TcpDirection::Copy(Direction::new());
    let (up, down) = both_directions(|cx| (a_to_b.poll(cx, a, b), b_to_a.poll(cx, b, a))).await?;
    Ok(Relayed {
        up,
        down,
        spliced: u8::from(a_to_b.is_spliced()) + u8::from(b_to_a.is_spliced()),
    })
}

enum TcpDirection {
    Copy(Direction),
    Splice(Spliced),
}

impl TcpDirection {
    fn is_spliced(&self) -> bool {
        matches!(self, TcpDirection::Splice(_))
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut TcpStream,
        writer: &mut TcpStream,
    ) -> Poll<io::Result<u64>> {
        match self {
            TcpDirection::Copy(copy) => {
                let polled = copy.poll(cx, Pin::new(&mut *reader), Pin::new(&mut *writer));
                if polled.is_pending() && copy.is_bulk_and_empty() {
                    match Spliced::new(copy.copied()) {
                        Ok(spliced) => {
                            *self = TcpDirection::Splice(spliced);
                            return self.poll(cx, reader, writer);
                        }
                        // No pipe (descriptor limit): the copy carries on.
                        Err(e) => {
                            tracing::debug!(error = %e, "no pipe for splice: copying");
                            copy.keep_copying();
                        }
                    }
                }
                polled
            }
            TcpDirection::Splice(spliced) => spliced.poll(cx, reader, writer),
        }
    }
}

/// One direction moved with splice(2) through a pipe.
struct Spliced {
    pipe_read: OwnedFd,
    pipe_write: OwnedFd,
    /// Bytes in the pipe, not yet spliced out.
    in_pipe: usize,
    read_done: bool,
    shut_down: bool,
    copied: u64,
}

impl Spliced {
    fn new(copied: u64) -> io::Result<Spliced> {
        let (pipe_read, pipe_write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A larger pipe moves more per call; the default size works too.
        let _ = fcntl(&pipe_write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
        Ok(Spliced {
            pipe_read,
            pipe_write,
            in_pipe: 0,
            read_done: false,
            shut_down: false,
            copied,
        })
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut TcpStream,
        writer: &mut TcpStream,
    ) -> Poll<io::Result<u64>> {
        if self.shut_down {
            return Poll::Ready(Ok(self.copied));
        }
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        loop {
            if self.in_pipe == 0 && !self.read_done {
                ready!(reader.poll_read_ready(cx))?;
                // The pipe is empty, so WouldBlock can only be the socket's.
                match reader.try_io(Interest::READABLE, || {
                    splice(
                        reader.as_fd(),
                        None,
                        &self.pipe_write,
                        None,
                        PIPE_SIZE,
                        flags,
                    )
                    .map_err(io::Error::from)
                }) {
                    Ok(0) => self.read_done = true,
                    Ok(n) => self.in_pipe = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            while self.in_pipe > 0 {
                ready!(writer.poll_write_ready(cx))?;
                match writer.try_io(Interest::WRITABLE, || {
                    splice(
                        &self.pipe_read,
                        None,
                        writer.as_fd(),
                        None,
                        self.in_pipe,
                        flags,
                    )
                    .map_err(io::Error::from)
                }) {
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.copied += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.shut_down = true;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    fn pattern(n: usize, seed: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 31 + seed) ^ (i >> 9)) as u8).collect()
    }

    /// Real sockets both ways, enough bytes that both directions switch to splice, a
    /// half-close in the middle: every byte arrives in order and the counts match.
    #[tokio::test]
    async fn bulk_both_ways_switches_to_splice_and_loses_nothing() {
        let (mut app, mut agent_client) = pair().await;
        let (mut agent_upstream, mut server) = pair().await;
        let relay =
            tokio::spawn(async move { relay_tcp(&mut agent_client, &mut agent_upstream).await });

        let request = pattern(24 * 1024 * 1024 + 3, 1);
        let response = pattern(40 * 1024 * 1024 + 11, 2);
        let (mut app_read, mut app_write) = app.split();
        let sent = request.clone();
        let (got_response, got_request) = tokio::join!(
            async {
                let send = async {
                    app_write.write_all(&sent).await.unwrap();
                    app_write.shutdown().await.unwrap();
                };
                let mut got = Vec::new();
                let receive = app_read.read_to_end(&mut got);
                let (_, received) = tokio::join!(send, receive);
                received.unwrap();
                got
            },
            async {
                let (mut server_read, mut server_write) = server.split();
                let mut got = Vec::new();
                let receive = server_read.read_to_end(&mut got);
                let send = async {
                    server_write.write_all(&response).await.unwrap();
                    server_write.shutdown().await.unwrap();
                };
                let (received, _) = tokio::join!(receive, send);
                received.unwrap();
                got
            }
        );
        assert!(got_request == request, "request corrupted or short");
        assert!(got_response == response, "response corrupted or short");
        let relayed = relay.await.unwrap().unwrap();
        assert_eq!(
            relayed,
            Relayed {
                up: request.len() as u64,
                down: response.len() as u64,
                spliced: 2
            }
        );
    }

    /// A small exchange never leaves the userspace copy (no pipe for idle or
    /// request/response connections).
    #[tokio::test]
    async fn small_messages_stay_in_the_copy() {
        let (mut reader_peer, mut reader) = pair().await;
        let (mut writer, mut writer_peer) = pair().await;
        let mut direction = TcpDirection::Copy(Direction::new());
        for _ in 0..50 {
            reader_peer.write_all(&[7; 1000]).await.unwrap();
            let mut got = [0; 1000];
            let mut have = 0;
            while have < got.len() {
                let _ = poll_fn(|cx| {
                    let _ = direction.poll(cx, &mut reader, &mut writer);
                    Poll::Ready(())
                })
                .await;
                if let Ok(Ok(n)) = tokio::time::timeout(
                    std::time::Duration::from_millis(20),
                    writer_peer.read(&mut got[have..]),
                )
                .await
                {
                    have += n;
                }
            }
        }
        assert!(matches!(direction, TcpDirection::Copy(_)));
    }
}
