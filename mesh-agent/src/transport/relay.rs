//! Byte copying between two streams, with TCP half-close carried across.

use tokio::io::{AsyncRead, AsyncWrite};

/// Relay buffer per direction: large enough that a bulk transfer is not syscall-bound.
pub const RELAY_BUFFER: usize = 256 * 1024;

/// Copies both ways until both sides have finished; (a→b, b→a) bytes. copy_bidirectional
/// shuts down each write side when the other side's read ends, which is exactly TCP
/// half-close semantics (and END_STREAM on a tunnel stream).
pub async fn relay<A, B>(mut a: A, mut b: B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, RELAY_BUFFER, RELAY_BUFFER).await
}
