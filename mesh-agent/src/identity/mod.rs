//! Workload identity: SPIFFE IDs, the node's CA, short-lived X.509 SVIDs and the mTLS
//! configurations of the inbound tunnel (:15008) and its clients.
//!
//! Shape, from the bottom up:
//! - [`spiffe`]: the `spiffe://td/ns/N/sa/SA` identity and its strict parser;
//! - [`ca`]: the CA (generated on first run and persisted, or operator-provided) and the trust
//!   bundle; signs leaf certificates;
//! - [`svid`]: one issued certificate with its key, as rustls wants it;
//! - [`manager`]: the per-node cache of current certificates and their rotation task;
//! - [`tls`]: rustls server/client configs that ask the manager for the *current* certificate
//!   on every handshake (so rotation never touches established connections) and check the
//!   peer's SPIFFE ID on top of chain validation.
//!
//! Crypto is rustls with the `ring` provider, TLS 1.3 only. The provider is passed explicitly to
//! every builder instead of being installed process-wide, so nothing else in the process can
//! change what the mesh negotiates.

pub mod ca;
pub mod manager;
pub mod spiffe;
pub mod svid;
pub mod tls;

use std::{
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use rustls::crypto::CryptoProvider;

pub use ca::{Ca, RootInfo};
pub use manager::{CertInfo, IdentityManager};
pub use spiffe::{AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, SpiffeId, agent_id};
pub use svid::Svid;
pub use tls::{PeerCert, client_config, peer_identity, server_config};

/// The one crypto provider of the mesh's TLS: ring, built once.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// RFC 3339 in UTC with whole seconds (certificate times have no fractions).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Same, from Unix seconds (as x509-parser reports validity).
pub(crate) fn rfc3339_unix(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string()),
        Err(_) => format!("@{secs}"),
    }
}

/// Lowercase hex, the form serial numbers are shown and compared in.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `SystemTime` of Unix seconds (certificate validity), saturating before the epoch.
pub(crate) fn system_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}
