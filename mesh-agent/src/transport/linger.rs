//! A lingering close for the TCP connections the agent ends itself: those under tunnel
//! sessions and the applications' HTTP connections to the L7 proxy.
//!
//! When a session or an HTTP connection ends, its HTTP/2 (or HTTP/1.1) side has written
//! everything out, but the peer may still be sending (WINDOW_UPDATEs for the last DATA
//! frames, a PING, the next request racing a GOAWAY). Closing a socket with unread input
//! makes the kernel send RST instead of FIN, and an RST makes the peer's kernel throw away
//! what it received and the peer's application had not read yet: the last bytes of a stream,
//! or responses an HTTP client then counts as errors. This matters most when a draining agent
//! closes its connections right after the last stream. So the socket is shut down for writing
//! (FIN after the data) and read until the peer closes too (bounded), in a task of its own
//! that the drain waits for.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

use super::drain::Drain;

/// How long a closed session waits for the peer's FIN.
const LINGER: Duration = Duration::from_secs(2);

/// A TCP stream that closes with FIN after the peer has stopped sending.
pub struct LingeringClose {
    tcp: Option<TcpStream>,
    drain: Drain,
    /// What the drain's progress log calls the closing connection.
    kind: &'static str,
}

impl LingeringClose {
    pub fn new(tcp: TcpStream, drain: Drain, kind: &'static str) -> LingeringClose {
        LingeringClose {
            tcp: Some(tcp),
            drain,
            kind,
        }
    }

    fn closed() -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, "connection already closed")
    }
}

impl AsyncRead for LingeringClose {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_read(cx, buf),
            None => Poll::Ready(Err(Self::closed())),
        }
    }
}

impl AsyncWrite for LingeringClose {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_write(cx, buf),
            None => Poll::Ready(Err(Self::closed())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(Self::closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for LingeringClose {
    fn drop(&mut self) {
        let Some(mut tcp) = self.tcp.take() else {
            return;
        };
        // Outside a runtime (a test tearing down) there is nothing to linger in.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let carried = self.drain.track(self.kind);
        runtime.spawn(async move {
            let _carried = carried;
            let _ = tcp.shutdown().await;
            let mut discard = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                while let Ok(n) = tcp.read(&mut discard).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// The peer keeps sending after the last byte it was sent; a plain drop would answer
    /// with RST and the peer would lose the unread tail. With the lingering close the peer
    /// reads everything and then a clean EOF.
    #[tokio::test]
    async fn the_peer_reads_the_tail_and_a_clean_end_although_it_kept_sending() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let mut peer = TcpStream::connect(addr).await.unwrap();
            // Unread input on the closing side: what turns a close into RST.
            peer.write_all(&[7u8; 64 * 1024]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut got = Vec::new();
            let result = peer.read_to_end(&mut got).await;
            (result.map(|_| ()), got.len())
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let drain = Drain::default();
        let mut conn = LingeringClose::new(tcp, drain.clone(), "closing test connection");
        conn.write_all(&[1u8; 256 * 1024]).await.unwrap();
        drop(conn);
        let (result, len) = peer.await.unwrap();
        assert!(
            result.is_ok(),
            "the peer saw {result:?} instead of a clean end"
        );
        assert_eq!(len, 256 * 1024);
        // The lingering task counts as carried until it is done.
        tokio::time::timeout(Duration::from_secs(5), drain.idle())
            .await
            .expect("the lingering close ends");
    }
}
