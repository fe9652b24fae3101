//! Seeded pseudo-random payloads for integrity checks.

use std::io;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// Data is generated in whole chunks of this size and only the last one is
/// cut short, so the stream for a seed does not depend on the total length
/// (a prefix of a longer stream is the shorter stream).
pub const CHUNK: usize = 1 << 20;

/// Calls `sink` with consecutive pieces of the first `total` bytes of the
/// stream for `seed`. SmallRng is a fast non-cryptographic generator; both
/// ends of a test run the same binary, so its output is reproducible here.
pub fn for_each_chunk(
    seed: u64,
    total: u64,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = total;
    while left > 0 {
        rng.fill_bytes(&mut buf);
        let n = left.min(CHUNK as u64) as usize;
        sink(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Lower-case hex SHA-256 of a finished hasher.
pub fn hex_digest(hasher: Sha256) -> String {
    format!("{:x}", hasher.finalize())
}

/// SHA-256 of the first `total` bytes of the stream for `seed`.
pub fn stream_sha256(seed: u64, total: u64) -> String {
    let mut hasher = Sha256::new();
    for_each_chunk(seed, total, |piece| {
        hasher.update(piece);
        Ok(())
    })
    .expect("hashing cannot fail");
    hex_digest(hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(seed: u64, total: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for_each_chunk(seed, total, |p| {
            out.extend_from_slice(p);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn stream_is_deterministic_and_prefix_stable() {
        let long = collect(7, 2 * CHUNK as u64 + 123);
        assert_eq!(long.len(), 2 * CHUNK + 123);
        assert_eq!(long, collect(7, 2 * CHUNK as u64 + 123));
        let short = collect(7, CHUNK as u64 + 5);
        assert_eq!(&long[..short.len()], &short[..]);
        assert_ne!(collect(8, 64), collect(7, 64));
        // Not trivially constant.
        assert!(long.iter().any(|&b| b != long[0]));
    }

    #[test]
    fn sha_matches_collected_bytes() {
        let n = CHUNK as u64 + 17;
        let expected = format!("{:x}", Sha256::digest(collect(3, n)));
        assert_eq!(stream_sha256(3, n), expected);
        assert_eq!(
            stream_sha256(3, 0),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
