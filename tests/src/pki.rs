//! Fixture certificates for the mTLS tests, made with rcgen (ECDSA P-256, like the mesh's own):
//! workload leaves signed by the mesh CA (valid or expired), and a foreign self-signed CA with a
//! leaf of its own, to show that the tunnel listener trusts exactly the mesh CA.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate and its private key (PKCS#8), both PEM.
#[derive(Debug, Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
    /// Serial number as lowercase hex of its DER integer bytes (the agent's `/certs` and
    /// `/tunnels` form).
    pub serial: String,
}

/// Where [`CertKey::write`] put the files.
#[derive(Debug, Clone)]
pub struct PemFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertKey {
    /// Writes `<dir>/<name>.pem` and `<dir>/<name>-key.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<PemFiles> {
        let files = PemFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.cert, &self.cert_pem)
            .with_context(|| format!("writing {}", files.cert.display()))?;
        std::fs::write(&files.key, &self.key_pem)
            .with_context(|| format!("writing {}", files.key.display()))?;
        Ok(files)
    }
}

/// Validity window: `now + from .. now + to` (negative values reach into the past).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub from: Duration,
    pub to: Duration,
}

impl Validity {
    /// Valid from an hour ago for a day.
    pub fn current() -> Validity {
        Validity {
            from: Duration::hours(-1),
            to: Duration::hours(24),
        }
    }

    /// Expired: valid two days ago for one day.
    pub fn expired() -> Validity {
        Validity {
            from: Duration::days(-2),
            to: Duration::days(-1),
        }
    }
}

/// The mesh CA the agents created (`ca.pem`, `ca-key.pem` in `ca_dir`).
pub fn read_ca(ca_dir: &Path) -> Result<CertKey> {
    let read = |name: &str| {
        let path = ca_dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(CertKey {
        cert_pem: read("ca.pem")?,
        key_pem: read("ca-key.pem")?,
        serial: String::new(),
    })
}

/// A self-signed CA that has nothing to do with the mesh.
pub fn self_signed_ca(common_name: &str) -> Result<CertKey> {
    build_ca(common_name, None)
}

/// A self-signed CA valid only for `validity` (e.g. one that expires while the test runs).
pub fn ca_valid(common_name: &str, validity: Validity) -> Result<CertKey> {
    build_ca(common_name, Some(validity))
}

fn build_ca(common_name: &str, validity: Option<Validity>) -> Result<CertKey> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    if let Some(validity) = validity {
        let now = OffsetDateTime::now_utc();
        params.not_before = now + validity.from;
        params.not_after = now + validity.to;
    }
    let serial = random_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params.self_signed(&key)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: hex(&serial),
    })
}

/// A workload leaf for `spiffe_id` (URI SAN), EKU clientAuth + serverAuth, signed by `ca`.
pub fn leaf(ca: &CertKey, spiffe_id: &str, validity: Validity) -> Result<CertKey> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("parsing the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("parsing the CA cert")?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(spiffe_id);
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now + validity.from;
    params.not_after = now + validity.to;
    let serial = random_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: hex(&serial),
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// 16 random bytes with the first in 0x01..=0x7f: positive, minimal DER, so the hex of these
/// bytes is exactly how the agent prints the serial.
fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] = serial[0] % 0x7f + 1;
    serial
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_chains_to_its_ca_and_carries_the_spiffe_id() {
        let ca = self_signed_ca("test CA").unwrap();
        let leaf = leaf(
            &ca,
            "spiffe://cluster.local/ns/default/sa/x",
            Validity::expired(),
        )
        .unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        assert_eq!(leaf.serial.len(), 32);
        assert_ne!(leaf.serial, ca.serial);
    }
}
