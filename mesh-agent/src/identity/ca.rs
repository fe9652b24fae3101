//! The node's certificate authority and the trust bundle.
//!
//! Two sources (config `identity.ca`):
//! - `generate`: on a bare host the agent creates its own CA on first run and keeps it in
//!   `dir` (`ca.pem`, `ca-key.pem`, mode 0600, directory 0700) so a restarted agent keeps
//!   issuing certificates its peers already trust. Nodes of one mesh must share that
//!   directory's content (copy it) or use `files`.
//! - `files`: an operator-provided CA certificate and key (PEM; key PKCS#8 or SEC1).
//!
//! Everything is checked at load time and every error names the file and the reason, because
//! these messages are what an operator sees when the agent refuses to start.
//!
//! The trust bundle is the CA certificate plus every certificate of the configured
//! `trust_bundle` files (for CA rotation: old and new roots side by side).

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer,
    pem::{self, PemObject, SectionKind},
};
use serde::Serialize;
use tracing::{info, warn};
use x509_parser::certificate::X509Certificate;

use super::{SpiffeId, Svid, crypto_provider, hex, rfc3339_unix, system_time};
use crate::config::{CaSource, IdentityConfig};

/// File names inside a `generate` CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// A generated CA lives 10 years: replacing it means re-distributing trust to every node.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Certificates are back-dated by this much so a peer whose clock is slightly behind accepts
/// them.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// One certificate of the trust bundle, as shown by the admin `/certs` endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootInfo {
    pub subject: String,
    /// Lowercase hex.
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
}

/// The signing CA plus the set of roots peers are validated against.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    /// Leaf certificates never outlive the CA.
    not_after: SystemTime,
    /// The CA certificate first, then the other trusted roots, without duplicates.
    bundle: Vec<CertificateDer<'static>>,
    bundle_info: Vec<RootInfo>,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for Ca {
    /// Without the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("roots", &self.bundle_info)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads (or, for `generate`, creates on first run) the CA and the trust bundle.
    pub fn load(config: &IdentityConfig) -> Result<Ca> {
        let (ca_cert, key, extra) = match &config.ca {
            CaSource::Generate { dir } => load_or_generate(dir, &config.trust_domain)?,
            CaSource::Files { cert, key } => load_files(cert, key)?,
        };
        let mut bundle = Bundle::default();
        let ca = parse_x509(&ca_cert).expect("checked by load_files");
        let not_after = system_time(ca.validity().not_after.timestamp());
        bundle.add(ca_cert.clone(), &ca).map_err(|e| {
            anyhow!(
                "CA certificate {}: not usable as a trust anchor: {e}",
                ca.subject()
            )
        })?;
        for (path, der) in &extra {
            bundle.add_checked("CA certificate", path, der.clone())?;
        }
        for path in &config.trust_bundle {
            let pem = read_file("trust bundle", path)?;
            for der in parse_certs("trust bundle", path, &pem)? {
                bundle.add_checked("trust bundle", path, der)?;
            }
        }
        let issuer = Issuer::from_ca_cert_der(&ca_cert, key)
            .map_err(|e| anyhow!("CA certificate cannot be used for signing: {e}"))?;
        Ok(Ca {
            issuer,
            cert_der: ca_cert,
            not_after,
            bundle: bundle.certs,
            bundle_info: bundle.info,
            roots: Arc::new(bundle.roots),
        })
    }

    /// The roots peer certificates must chain to.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The trust bundle as concatenated PEM (what a workload or operator would trust).
    pub fn bundle_pem(&self) -> String {
        self.bundle
            .iter()
            .map(|der| {
                let b64 = base64_lines(der);
                format!("-----BEGIN CERTIFICATE-----\n{b64}-----END CERTIFICATE-----\n")
            })
            .collect()
    }

    /// Subject, serial and expiry of every root, the CA first.
    pub fn bundle_info(&self) -> Vec<RootInfo> {
        self.bundle_info.clone()
    }

    /// The signing CA's certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a leaf certificate for `id`, valid from one clock-skew margin ago for
    /// `lifetime` (never past the CA's own expiry).
    pub fn issue(&self, id: &SpiffeId, lifetime: Duration) -> Result<Svid> {
        let now = SystemTime::now();
        if now >= self.not_after {
            bail!(
                "cannot issue a certificate for {id}: the CA certificate expired at {}",
                super::rfc3339(self.not_after)
            );
        }
        let not_after = (now + lifetime).min(self.not_after);
        self.issue_window(id, now - CLOCK_SKEW, not_after, now)
    }

    /// The signing itself; `pub(crate)` so tests can mint certificates with odd validity
    /// windows (expired ones).
    pub(crate) fn issue_window(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
        issued_at: SystemTime,
    ) -> Result<Svid> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating a certificate key")?;
        let mut params = CertificateParams::default();
        // No subject: the identity is the URI SAN (X.509-SVID); rcgen then marks the SAN
        // extension critical as RFC 5280 requires.
        params.distinguished_name = DistinguishedName::new();
        let uri = id
            .to_string()
            .try_into()
            .map_err(|e| anyhow!("SPIFFE ID {id} is not a valid URI SAN: {e}"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        // Both: the same certificate authenticates a workload as a tunnel client and the agent
        // as the tunnel server.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing the certificate of {id}"))?;

        let parsed = parse_x509(cert.der()).context("parsing the certificate just issued")?;
        let serial = hex(parsed.raw_serial());
        let not_before = system_time(parsed.validity().not_before.timestamp());
        let not_after = system_time(parsed.validity().not_after.timestamp());
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified_key = rustls::sign::CertifiedKey::from_der(
            vec![cert.der().clone()],
            key_der,
            &crypto_provider(),
        )
        .with_context(|| format!("loading the certificate of {id} into rustls"))?;
        Ok(Svid {
            id: id.clone(),
            serial,
            not_before,
            not_after,
            issued_at,
            cert_pem: cert.pem(),
            certified_key: Arc::new(certified_key),
        })
    }
}

/// The trust bundle being assembled: certificates, their root store, what `/certs` shows.
struct Bundle {
    certs: Vec<CertificateDer<'static>>,
    info: Vec<RootInfo>,
    roots: RootCertStore,
}

impl Default for Bundle {
    fn default() -> Self {
        Bundle {
            certs: Vec::new(),
            info: Vec::new(),
            roots: RootCertStore::empty(),
        }
    }
}

impl Bundle {
    fn add(
        &mut self,
        der: CertificateDer<'static>,
        cert: &X509Certificate<'_>,
    ) -> Result<(), rustls::Error> {
        if self.certs.contains(&der) {
            return Ok(());
        }
        self.roots.add(der.clone())?;
        self.info.push(RootInfo {
            subject: cert.subject().to_string(),
            serial: hex(cert.raw_serial()),
            not_after: rfc3339_unix(cert.validity().not_after.timestamp()),
        });
        self.certs.push(der);
        Ok(())
    }

    /// Adds a root from a file: it must be a CA certificate. An expired root is skipped with a
    /// warning (webpki does not check trust anchors' validity, so keeping it would still trust
    /// what it signed).
    fn add_checked(&mut self, what: &str, path: &Path, der: CertificateDer<'static>) -> Result<()> {
        let cert = parse_x509(&der).expect("checked by parse_certs");
        check_ca(what, path, &cert)?;
        if expired(&cert) {
            warn!(
                path = %path.display(),
                subject = %cert.subject(),
                not_after = %rfc3339_unix(cert.validity().not_after.timestamp()),
                "ignoring expired certificate of the trust bundle"
            );
            return Ok(());
        }
        self.add(der.clone(), &cert).map_err(|e| {
            anyhow!(
                "{what} {}: {} is not usable as a trust anchor: {e}",
                path.display(),
                cert.subject()
            )
        })
    }
}

type Loaded = (
    CertificateDer<'static>,
    KeyPair,
    Vec<(std::path::PathBuf, CertificateDer<'static>)>,
);

/// `generate`: reuse `dir/ca.pem` + `dir/ca-key.pem`, or create both when neither exists.
fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Loaded> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    match (exists(&cert_path)?, exists(&key_path)?) {
        (true, true) => {
            if let Ok(meta) = fs::metadata(&key_path)
                && meta.permissions().mode() & 0o077 != 0
            {
                warn!(
                    path = %key_path.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "CA key is readable by group or others; it should be mode 0600"
                );
            }
            load_files(&cert_path, &key_path)
        }
        (false, false) => {
            generate(dir, &cert_path, &key_path, trust_domain)?;
            load_files(&cert_path, &key_path)
        }
        (true, false) | (false, true) => {
            let (present, missing) = if exists(&cert_path)? {
                (&cert_path, &key_path)
            } else {
                (&key_path, &cert_path)
            };
            bail!(
                "CA directory {}: {} exists but {} does not; restore the missing file, or remove \
                 both to generate a new CA (certificates of the old CA will then be rejected)",
                dir.display(),
                present.display(),
                missing.display()
            )
        }
    }
}

fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => bail!("{}: cannot access: {e}", path.display()),
    }
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path, trust_domain: &str) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow!("CA directory {}: cannot create: {e}", dir.display()))?;
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("mesh-agent CA {trust_domain}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + CA_LIFETIME).into();
    params.serial_number = Some(random_serial()?);
    let cert = params
        .self_signed(&key)
        .context("self-signing the CA certificate")?;
    // Key first: a crash between the two leaves "key without certificate", which load reports.
    write_private(key_path, &key.serialize_pem())?;
    write_private(cert_path, &cert.pem())?;
    info!(dir = %dir.display(), trust_domain, "generated a new CA");
    Ok(())
}

/// Writes a new file with mode 0600 from its creation (never world-readable, not even briefly),
/// through a temporary name so a crash never leaves a truncated file under the real name.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("pem.tmp");
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => bail!("{}: cannot remove stale file: {e}", tmp.display()),
    }
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))
}

/// `files` (and the second half of `generate`): the CA certificate, its key, and any further
/// certificates of the certificate file (trusted as well).
fn load_files(cert_path: &Path, key_path: &Path) -> Result<Loaded> {
    const WHAT: &str = "CA certificate";
    let pem = read_file(WHAT, cert_path)?;
    let mut certs = parse_certs(WHAT, cert_path, &pem)?;
    let ca_der = certs.remove(0);
    let ca = parse_x509(&ca_der).expect("checked by parse_certs");
    check_ca(WHAT, cert_path, &ca)?;
    if expired(&ca) {
        bail!(
            "{WHAT} {}: expired at {}",
            cert_path.display(),
            rfc3339_unix(ca.validity().not_after.timestamp())
        );
    }

    let key = parse_key(key_path, &read_file("CA key", key_path)?)?;
    if key.subject_public_key_info() != ca.public_key().raw {
        bail!(
            "CA key {} does not match the public key of CA certificate {}",
            key_path.display(),
            cert_path.display()
        );
    }
    let extra = certs
        .into_iter()
        .map(|der| (cert_path.to_path_buf(), der))
        .collect();
    Ok((ca_der, key, extra))
}

/// Reads a whole file, with errors that say which file and what is wrong with it.
fn read_file(what: &str, path: &Path) -> Result<Vec<u8>> {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("{what} {}: file does not exist", path.display())
        }
        Err(e) => bail!("{what} {}: cannot access: {e}", path.display()),
        Ok(meta) if meta.is_dir() => {
            bail!(
                "{what} {}: is a directory, expected a PEM file",
                path.display()
            )
        }
        Ok(_) => {}
    }
    fs::read(path).map_err(|e| anyhow!("{what} {}: cannot read: {e}", path.display()))
}

/// Every `CERTIFICATE` block of a PEM file; at least one, each a valid X.509 certificate.
fn parse_certs(what: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let mut certs = Vec::new();
    let mut sections = 0;
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) =
            item.map_err(|e| anyhow!("{what} {}: not a valid PEM file: {e}", path.display()))?;
        sections += 1;
        if kind == SectionKind::Certificate {
            certs.push(CertificateDer::from(der));
        }
    }
    if certs.is_empty() {
        if sections == 0 {
            bail!(
                "{what} {}: not a PEM file (no \"-----BEGIN CERTIFICATE-----\" block)",
                path.display()
            );
        }
        bail!(
            "{what} {}: no certificate in file (it has {sections} PEM block(s) of other types)",
            path.display()
        );
    }
    for (i, der) in certs.iter().enumerate() {
        parse_x509(der).map_err(|e| {
            anyhow!(
                "{what} {}: certificate #{} is not a valid X.509 certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(certs)
}

/// A PKCS#8 or SEC1 private key that ring can sign with.
fn parse_key(path: &Path, pem: &[u8]) -> Result<KeyPair> {
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => anyhow!(
            "CA key {}: not a PEM private key (expected a \"PRIVATE KEY\" (PKCS#8) or \
             \"EC PRIVATE KEY\" (SEC1) block)",
            path.display()
        ),
        e => anyhow!("CA key {}: not a valid PEM file: {e}", path.display()),
    })?;
    let unparseable = |e: rcgen::Error| {
        anyhow!(
            "CA key {}: cannot parse the private key ({e}); supported: ECDSA P-256/P-384, \
             Ed25519 or RSA in PKCS#8, ECDSA in SEC1",
            path.display()
        )
    };
    match key {
        PrivateKeyDer::Pkcs8(pkcs8) => KeyPair::try_from(&pkcs8).map_err(unparseable),
        PrivateKeyDer::Sec1(sec1) => sec1_to_keypair(sec1.secret_sec1_der()).map_err(unparseable),
        PrivateKeyDer::Pkcs1(_) => bail!(
            "CA key {}: RSA keys in PKCS#1 (\"RSA PRIVATE KEY\") form are not supported; convert \
             with `openssl pkcs8 -topk8 -nocrypt`",
            path.display()
        ),
        _ => bail!("CA key {}: unsupported private key format", path.display()),
    }
}

/// ring reads only PKCS#8, so a SEC1 `EC PRIVATE KEY` is wrapped in a PKCS#8 envelope. The
/// curve is found by trying P-256 and P-384 (ring checks the key against the curve).
fn sec1_to_keypair(sec1: &[u8]) -> Result<KeyPair, rcgen::Error> {
    // id-ecPublicKey (1.2.840.10045.2.1)
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    // prime256v1 (1.2.840.10045.3.1.7), secp384r1 (1.3.132.0.34)
    const CURVES: [&[u8]; 2] = [
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
    ];
    let mut last = rcgen::Error::CouldNotParseKeyPair;
    for curve in CURVES {
        let algorithm = der_tlv(0x30, &[EC_PUBLIC_KEY, curve].concat());
        let pkcs8 = der_tlv(
            0x30,
            &[&[0x02, 0x01, 0x00][..], &algorithm, &der_tlv(0x04, sec1)].concat(),
        );
        match KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8)) {
            Ok(key) => return Ok(key),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One DER tag-length-value.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn parse_x509<'a>(der: &'a [u8]) -> Result<X509Certificate<'a>> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| anyhow!("{e}"))
}

fn check_ca(what: &str, path: &Path, cert: &X509Certificate<'_>) -> Result<()> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => bail!(
            "{what} {}: {} is not a CA certificate (basicConstraints CA:TRUE is missing)",
            path.display(),
            cert.subject()
        ),
        Err(e) => bail!(
            "{what} {}: invalid basicConstraints extension: {e}",
            path.display()
        ),
    }
    if let Ok(Some(ku)) = cert.key_usage()
        && !ku.value.key_cert_sign()
    {
        bail!(
            "{what} {}: {} may not sign certificates (keyUsage lacks keyCertSign)",
            path.display(),
            cert.subject()
        );
    }
    Ok(())
}

fn expired(cert: &X509Certificate<'_>) -> bool {
    system_time(cert.validity().not_after.timestamp()) <= SystemTime::now()
}

/// 16 random bytes, positive and without a leading zero byte (so every serial has the same
/// length and its hex form is stable).
fn random_serial() -> Result<SerialNumber> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow!("the system random number generator failed"))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Base64 in 64-column lines, each ending with a newline (PEM body).
fn base64_lines(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 1);
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[path = "ca_tests.rs"]
pub(crate) mod tests;
