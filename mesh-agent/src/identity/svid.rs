//! An X.509 SVID: one issued leaf certificate and its private key, ready for rustls.
//!
//! Svids are immutable; rotation replaces the whole `Arc<Svid>` in the manager, so a handshake
//! that already picked a certificate keeps a consistent cert/key pair.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::SpiffeId;

/// One issued workload (or agent) certificate.
pub struct Svid {
    pub id: SpiffeId,
    /// Serial number, lowercase hex of the DER integer's bytes (as `peer_identity` reports it).
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the agent issued it; rotation is scheduled from here, not from `not_before`, which
    /// is back-dated for clock skew.
    pub issued_at: SystemTime,
    pub cert_pem: String,
    /// Chain = `[leaf]` only: the CA is a trust anchor of every peer, so it is not sent.
    pub certified_key: Arc<rustls::sign::CertifiedKey>,
}

impl Svid {
    /// Two thirds into the certificate's life as issued: early enough that a missed tick or a
    /// slow CA never lets a certificate in use expire, late enough not to churn.
    pub fn rotate_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.issued_at)
            .unwrap_or(Duration::ZERO);
        self.issued_at + life * 2 / 3
    }

    /// Whether the certificate is past its `not_after` at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

impl std::fmt::Debug for Svid {
    /// Without the key: Debug output ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id.to_string())
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("issued_at", &self.issued_at)
            .finish_non_exhaustive()
    }
}
