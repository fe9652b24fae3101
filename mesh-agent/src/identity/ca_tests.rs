use std::path::PathBuf;

use x509_parser::extensions::GeneralName;

use super::*;

pub(crate) const TD: &str = "mesh.test";

pub(crate) fn config(ca: CaSource) -> IdentityConfig {
    IdentityConfig {
        trust_domain: TD.to_owned(),
        ca,
        trust_bundle: Vec::new(),
        cert_lifetime: Duration::from_secs(3600),
    }
}

/// A freshly generated CA in its own temporary directory.
pub(crate) fn new_ca() -> (tempfile::TempDir, Ca) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load(&config(CaSource::Generate {
        dir: dir.path().join("ca"),
    }))
    .unwrap();
    (dir, ca)
}

fn load_err(config: &IdentityConfig) -> String {
    format!("{:#}", Ca::load(config).expect_err("load should fail"))
}

fn files(cert: &Path, key: &Path) -> IdentityConfig {
    config(CaSource::Files {
        cert: cert.to_owned(),
        key: key.to_owned(),
    })
}

/// Writes a CA made by rcgen with the given parameters; returns (cert path, key path).
fn write_ca(dir: &Path, name: &str, params: CertificateParams) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

#[test]
fn generate_persists_with_private_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state/ca");
    let cfg = config(CaSource::Generate { dir: dir.clone() });
    let first = Ca::load(&cfg).unwrap();
    for file in [CA_CERT_FILE, CA_KEY_FILE] {
        let mode = fs::metadata(dir.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file} mode {mode:o}");
    }
    let dir_mode = fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700, "dir mode {dir_mode:o}");
    assert!(!dir.join("ca.pem.tmp").exists());

    let ca = parse_x509(first.cert_der()).unwrap();
    assert_eq!(ca.subject().to_string(), format!("CN=mesh-agent CA {TD}"));
    assert!(ca.is_ca());
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let life = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
    assert!(life >= 10 * 365 * 24 * 3600, "CA lifetime {life}s");

    let second = Ca::load(&cfg).unwrap();
    assert_eq!(first.cert_der(), second.cert_der(), "the CA must be reused");
    // The reloaded key signs certificates that chain to the first CA.
    let svid = second
        .issue(&SpiffeId::new(TD, "ns", "sa"), Duration::from_secs(60))
        .unwrap();
    let cert = ParsedCertificateOwned::new(&svid);
    cert.verify(&first.roots());
}

#[test]
fn generate_with_one_file_missing_fails() {
    let (tmp, _ca) = new_ca();
    let dir = tmp.path().join("ca");
    let cfg = config(CaSource::Generate { dir: dir.clone() });

    let key = fs::read(dir.join(CA_KEY_FILE)).unwrap();
    fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
    let err = load_err(&cfg);
    assert!(
        err.contains("ca.pem exists but") && err.contains("ca-key.pem does not"),
        "{err}"
    );
    assert!(err.contains(&dir.display().to_string()), "{err}");

    fs::write(dir.join(CA_KEY_FILE), key).unwrap();
    fs::remove_file(dir.join(CA_CERT_FILE)).unwrap();
    let err = load_err(&cfg);
    assert!(
        err.contains("ca-key.pem exists but") && err.contains("ca.pem does not"),
        "{err}"
    );
    // Nothing was regenerated behind the operator's back.
    assert!(!dir.join(CA_CERT_FILE).exists());
}

#[test]
fn files_source_loads_pkcs8_and_sec1_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = write_ca(tmp.path(), "op", ca_params());
    let ca = Ca::load(&files(&cert, &key)).unwrap();
    assert_eq!(ca.bundle_info().len(), 1);

    // SEC1 ("EC PRIVATE KEY") form of the same key, as `openssl ecparam -genkey` writes.
    let pkcs8 = PrivatePkcs8KeyDer::from_pem_file(&key).unwrap();
    let sec1 = pkcs8_p256_to_sec1(pkcs8.secret_pkcs8_der());
    let sec1_pem = format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}-----END EC PRIVATE KEY-----\n",
        base64_lines(&sec1)
    );
    let sec1_path = tmp.path().join("sec1.pem");
    fs::write(&sec1_path, sec1_pem).unwrap();
    let ca2 = Ca::load(&files(&cert, &sec1_path)).unwrap();
    assert_eq!(ca.cert_der(), ca2.cert_der());
    ca2.issue(&SpiffeId::new(TD, "a", "b"), Duration::from_secs(60))
        .unwrap();
}

/// Made with `openssl ecparam -genkey -noout` (SEC1 with curve parameters and public key)
/// and `openssl req -x509 -days 36500`: what an operator's own CA typically looks like.
const OPENSSL_P256_CA: &str = "\
-----BEGIN CERTIFICATE-----
MIIBmjCCAUGgAwIBAgIUdsD2zl1Ewvb9eZKVbCRxH1hrylIwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPb3BlbnNzbCB0ZXN0IENBMCAXDTI2MTEyMzE5NTkzMloYDzIx
MjYxMDMwMTk1OTMyWjAaMRgwFgYDVQQDDA9vcGVuc3NsIHRlc3QgQ0EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAATkLJNJxdWKGmSXHaxjAeyJ6NJx3nkI4/okI+p0
Ayy5dEHZksn0Si7WBzOuxDhh1YoKa+8TWsJgce2WIC6D6EmOo2MwYTAdBgNVHQ4E
FgQUHNj8vnBIqbrtR+nJrIfCg9JjJsEwHwYDVR0jBBgwFoAUHNj8vnBIqbrtR+nJ
rIfCg9JjJsEwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwCgYIKoZI
zj0EAwIDRwAwRAIgQDBJYt0Eqb6SlZzfEyRfX238nx0hw9evhUZVgmHbo2ACIBrj
+71ai5Uaqi39H2hCgTGbnTmTT2aHH07N/OUSyQCC
-----END CERTIFICATE-----
";
const OPENSSL_P256_KEY: &str = "\
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIMbNRLZc1jb8JONNUE5P4C14yXFAGjFLkabwGdQ+s/qRoAoGCCqGSM49
AwEHoUQDQgAE5CyTScXVihpklx2sYwHsiejScd55COP6JCPqdAMsuXRB2ZLJ9Eou
1gczrsQ4YdWKCmvvE1rCYHHtliAug+hJjg==
-----END EC PRIVATE KEY-----
";
const OPENSSL_P384_CA: &str = "\
-----BEGIN CERTIFICATE-----
MIIB1zCCAV6gAwIBAgIUdLkJzmeiopwEqnLSjvCv3DpXgAQwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPb3BlbnNzbCBwMzg0IENBMCAXDTI2MTEyMzE5NTkzMloYDzIx
MjYxMDMwMTk1OTMyWjAaMRgwFgYDVQQDDA9vcGVuc3NsIHAzODQgQ0EwdjAQBgcq
hkjOPQIBBgUrgQQAIgNiAASNNaFd7toe7mTLGlYOnERoXlsdnJX55c/1ZChuMVkG
vSkShxnjuo94reYyfp+xnLQwo5c/IvFHQ/nUJNImWopZo80XhuGM9FvwzDxDlf1F
atAlYxpbtowCWM8KPRNNaJ+jYzBhMB0GA1UdDgQWBBQgGSWgPZvoOy5xIe2nFixM
yELPWzAfBgNVHSMEGDAWgBQgGSWgPZvoOy5xIe2nFixMyELPWzAPBgNVHRMBAf8E
BTADAQH/MA4GA1UdDwEB/wQEAwIBBjAKBggqhkjOPQQDAgNnADBkAjAqDbPPrtWB
uInNJp3B+LJ2OmyOrhDNw8+P5CvieneNagevu5v6yI6aqYNGcOJqaMwCMHGm2Kt/
4FPFa6iV7L9EfBefF2mgODIqWMSisXBdQtvEE1zp15Mo0aiDY+DjDEzUKA==
-----END CERTIFICATE-----
";
const OPENSSL_P384_KEY: &str = "\
-----BEGIN EC PRIVATE KEY-----
MIGkAgEBBDD3EURGk3FMtpKf/sI8KEWA/RfzgAVcPZK12b8bamhsDR1wpdFiwl+l
Ao4Mfc7EMQKgBwYFK4EEACKhZANiAASNNaFd7toe7mTLGlYOnERoXlsdnJX55c/1
ZChuMVkGvSkShxnjuo94reYyfp+xnLQwo5c/IvFHQ/nUJNImWopZo80XhuGM9Fvw
zDxDlf1FatAlYxpbtowCWM8KPRNNaJ8=
-----END EC PRIVATE KEY-----
";

#[test]
fn files_source_loads_openssl_sec1_keys() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, cert_pem, key_pem) in [
        ("p256", OPENSSL_P256_CA, OPENSSL_P256_KEY),
        ("p384", OPENSSL_P384_CA, OPENSSL_P384_KEY),
    ] {
        let cert = tmp.path().join(format!("{name}.pem"));
        let key = tmp.path().join(format!("{name}-key.pem"));
        fs::write(&cert, cert_pem).unwrap();
        fs::write(&key, key_pem).unwrap();
        let ca = Ca::load(&files(&cert, &key)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let svid = ca
            .issue(&SpiffeId::new(TD, "a", "b"), Duration::from_secs(60))
            .unwrap();
        ParsedCertificateOwned::new(&svid).verify(&ca.roots());
    }
    // The P-256 key does not belong to the P-384 CA.
    let err = load_err(&files(
        &tmp.path().join("p384.pem"),
        &tmp.path().join("p256-key.pem"),
    ));
    assert!(err.contains("does not match"), "{err}");

    let rsa = tmp.path().join("rsa.pem");
    fs::write(
        &rsa,
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = load_err(&files(&tmp.path().join("p256.pem"), &rsa));
    assert!(
        err.contains(&rsa.display().to_string()) && err.contains("PKCS#1"),
        "{err}"
    );
}

/// ring's PKCS#8 for P-256 is the RFC 5958 envelope around a SEC1 ECPrivateKey: the SEC1
/// bytes are the OCTET STRING at the end.
fn pkcs8_p256_to_sec1(pkcs8: &[u8]) -> Vec<u8> {
    // SEQUENCE { INTEGER 0, SEQUENCE { 2 OIDs }, OCTET STRING sec1 }
    let (_, body) = der_read(pkcs8, 0x30);
    let (rest, _) = der_read(body, 0x02);
    let (rest, _) = der_read(rest, 0x30);
    let (_, sec1) = der_read(rest, 0x04);
    sec1.to_vec()
}

fn der_read(input: &[u8], tag: u8) -> (&[u8], &[u8]) {
    assert_eq!(input[0], tag);
    let (len, header) = match input[1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (input[2] as usize, 3),
        0x82 => (((input[2] as usize) << 8) | input[3] as usize, 4),
        n => panic!("length form {n:#x}"),
    };
    (&input[header + len..], &input[header..header + len])
}

#[test]
fn files_source_errors_name_the_path_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = write_ca(tmp.path(), "good", ca_params());
    let missing = tmp.path().join("nope.pem");

    let err = load_err(&files(&missing, &key));
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("does not exist"), "{err}");

    let err = load_err(&files(&cert, &missing));
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );

    let err = load_err(&files(tmp.path(), &key));
    assert!(err.contains(&tmp.path().display().to_string()), "{err}");
    assert!(err.contains("is a directory"), "{err}");

    let garbage = tmp.path().join("garbage.pem");
    fs::write(&garbage, "hello, this is not a certificate\n").unwrap();
    let err = load_err(&files(&garbage, &key));
    assert!(
        err.contains(&garbage.display().to_string()) && err.contains("not a PEM file"),
        "{err}"
    );
    let err = load_err(&files(&cert, &garbage));
    assert!(err.contains(&garbage.display().to_string()), "{err}");
    assert!(err.contains("not a PEM private key"), "{err}");

    // A PEM file with only a key, given as the certificate.
    let err = load_err(&files(&key, &key));
    assert!(
        err.contains(&key.display().to_string()) && err.contains("no certificate in file"),
        "{err}"
    );

    // Broken base64 inside a certificate block.
    let broken = tmp.path().join("broken.pem");
    fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = load_err(&files(&broken, &key));
    assert!(err.contains(&broken.display().to_string()), "{err}");

    // A key of another CA.
    let (_, other_key) = write_ca(tmp.path(), "other", ca_params());
    let err = load_err(&files(&cert, &other_key));
    assert!(err.contains(&other_key.display().to_string()), "{err}");
    assert!(err.contains(&cert.display().to_string()), "{err}");
    assert!(err.contains("does not match"), "{err}");

    // A key block that is not a key.
    let bad_key = tmp.path().join("bad-key.pem");
    fs::write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = load_err(&files(&cert, &bad_key));
    assert!(
        err.contains(&bad_key.display().to_string()) && err.contains("cannot parse"),
        "{err}"
    );
}

#[test]
fn files_source_rejects_non_ca_and_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.is_ca = IsCa::ExplicitNoCa;
    let (cert, key) = write_ca(tmp.path(), "leaf", leaf);
    let err = load_err(&files(&cert, &key));
    assert!(
        err.contains(&cert.display().to_string()) && err.contains("not a CA certificate"),
        "{err}"
    );

    let (cert, key) = write_ca(tmp.path(), "nobc", CertificateParams::default());
    let err = load_err(&files(&cert, &key));
    assert!(err.contains("not a CA certificate"), "{err}");

    let mut expired = ca_params();
    expired.not_before = rcgen::date_time_ymd(2000, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let (cert, key) = write_ca(tmp.path(), "expired", expired);
    let err = load_err(&files(&cert, &key));
    assert!(err.contains(&cert.display().to_string()), "{err}");
    assert!(err.contains("expired at 2001-01-01"), "{err}");
}

#[test]
fn trust_bundle_adds_roots_and_reports_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = write_ca(tmp.path(), "main", ca_params());
    let (other_a, _) = write_ca(tmp.path(), "a", ca_params());
    let (other_b, _) = write_ca(tmp.path(), "b", ca_params());
    let both = tmp.path().join("both.pem");
    fs::write(
        &both,
        [
            fs::read_to_string(&other_a).unwrap(),
            fs::read_to_string(&other_b).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let mut cfg = files(&cert, &key);
    // The CA itself listed again is not duplicated.
    cfg.trust_bundle = vec![both.clone(), cert.clone()];
    let ca = Ca::load(&cfg).unwrap();
    assert_eq!(ca.bundle_info().len(), 3);
    assert_eq!(ca.roots().len(), 3);
    let pem = ca.bundle_pem();
    let parsed: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(parsed, ca.bundle, "bundle_pem must round-trip");
    assert_eq!(&parsed[0], ca.cert_der());
    for info in ca.bundle_info() {
        assert_eq!(info.serial.len() % 2, 0);
        assert!(info.not_after.ends_with('Z'), "{info:?}");
    }

    let missing = tmp.path().join("missing-bundle.pem");
    cfg.trust_bundle = vec![both.clone(), missing.clone()];
    let err = load_err(&cfg);
    assert!(err.starts_with("trust bundle"), "{err}");
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );

    let text = tmp.path().join("text.pem");
    fs::write(&text, "not pem").unwrap();
    cfg.trust_bundle = vec![text.clone()];
    let err = load_err(&cfg);
    assert!(
        err.contains(&text.display().to_string()) && err.contains("not a PEM file"),
        "{err}"
    );

    let mut leaf = CertificateParams::default();
    leaf.is_ca = IsCa::ExplicitNoCa;
    let (leaf, _) = write_ca(tmp.path(), "leaf", leaf);
    cfg.trust_bundle = vec![leaf.clone()];
    let err = load_err(&cfg);
    assert!(
        err.contains(&leaf.display().to_string()) && err.contains("not a CA"),
        "{err}"
    );

    // Expired roots are skipped (with a warning), not trusted.
    let mut expired = ca_params();
    expired.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let (expired, _) = write_ca(tmp.path(), "expired", expired);
    cfg.trust_bundle = vec![expired];
    assert_eq!(Ca::load(&cfg).unwrap().roots().len(), 1);
}

#[test]
fn issued_certificate_is_a_spiffe_svid() {
    let (_tmp, ca) = new_ca();
    let id = SpiffeId::new(TD, "default", "web");
    let lifetime = Duration::from_secs(3600);
    let before = SystemTime::now();
    let svid = ca.issue(&id, lifetime).unwrap();
    let after = SystemTime::now();

    let der = svid.certified_key.cert[0].clone();
    assert_eq!(svid.certified_key.cert.len(), 1, "chain = [leaf]");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();

    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "empty subject => critical SAN");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://mesh.test/ns/default/sa/web")]
    );
    assert_eq!(SpiffeId::from_cert_der(&der).unwrap(), id);
    assert!(cert.subject().iter().next().is_none(), "no subject needed");
    assert!(!cert.is_ca());

    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign());

    let unix = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert!(
        nb >= unix(before) - 61 && nb <= unix(after) - 59,
        "not_before {nb}"
    );
    assert!(
        na >= unix(before) + 3599 && na <= unix(after) + 3600,
        "not_after {na}"
    );
    assert_eq!(system_time(nb), svid.not_before);
    assert_eq!(system_time(na), svid.not_after);

    assert_eq!(svid.serial.len(), 32, "16-byte serial: {}", svid.serial);
    assert!(
        svid.serial
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(svid.serial, hex(cert.raw_serial()));
    assert!(cert.raw_serial()[0] < 0x80, "positive");
    let other = ca.issue(&id, lifetime).unwrap();
    assert_ne!(other.serial, svid.serial);

    assert!(svid.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let rotate = svid.rotate_at().duration_since(svid.issued_at).unwrap();
    let life = svid.not_after.duration_since(svid.issued_at).unwrap();
    assert_eq!(rotate, life * 2 / 3);

    ParsedCertificateOwned::new(&svid).verify(&ca.roots());
    let (_tmp2, other_ca) = new_ca();
    ParsedCertificateOwned::new(&svid).verify_fails(&other_ca.roots());
}

#[test]
fn issue_never_outlives_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let mut params = ca_params();
    let soon = SystemTime::now() + Duration::from_secs(600);
    params.not_after = soon.into();
    let (cert, key) = write_ca(tmp.path(), "short", params);
    let ca = Ca::load(&files(&cert, &key)).unwrap();
    let svid = ca
        .issue(&SpiffeId::new(TD, "a", "b"), Duration::from_secs(86400))
        .unwrap();
    assert!(svid.not_after <= soon);
}

/// Chain validation of an issued certificate with webpki, as the TLS verifiers do it.
struct ParsedCertificateOwned(CertificateDer<'static>);

impl ParsedCertificateOwned {
    fn new(svid: &Svid) -> Self {
        Self(svid.certified_key.cert[0].clone())
    }

    fn check(&self, roots: &RootCertStore) -> Result<(), rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(&self.0)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            &[],
            rustls_pki_types::UnixTime::now(),
            crypto_provider().signature_verification_algorithms.all,
        )
    }

    fn verify(&self, roots: &RootCertStore) {
        self.check(roots).expect("chain validates");
    }

    fn verify_fails(&self, roots: &RootCertStore) {
        let err = self.check(roots).expect_err("chain must not validate");
        // Two generated CAs of one trust domain share their subject name, so webpki finds
        // the "issuer" and then fails on the signature.
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature
                )
            ),
            "{err:?}"
        );
    }
}

use rustls::CertificateError;
