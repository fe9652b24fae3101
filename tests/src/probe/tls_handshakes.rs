//! `tls-handshakes`: what rustls alone does on this machine, the baseline for the mesh's
//! session setup.
//!
//! Shaped like the mesh's tunnel handshake: TLS 1.3 only, the ring provider (with its default
//! key exchange groups), ECDSA P-256 certificates made here with rcgen (a CA, a server leaf and
//! a client leaf, each leaf with a SPIFFE URI SAN), mutual authentication with rustls' webpki
//! verifiers (chain and signature checks, what the agent's SPIFFE verifiers wrap), ALPN h2.
//! Every handshake is a full one: the client keeps no sessions and the server issues no
//! tickets and caches nothing. Client and server run in this process over loopback TCP, one
//! thread each per `--concurrency` slot, so the count covers both sides' work, as the mesh's
//! two agents together do for one session.
//!
//! A handshake counts once the client has read one byte the server wrote after its handshake
//! completed, i.e. after the server verified the client's certificate.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection,
    StreamOwned,
};
use serde_json::json;

use super::cli::TlsHandshakesArgs;
use super::output::emit;
use super::stats::summarize;

const SERVER_ID: &str = "spiffe://bench.local/ns/mesh-system/sa/mesh-agent";
const CLIENT_ID: &str = "spiffe://bench.local/ns/default/sa/client";
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: &TlsHandshakesArgs) -> Result<bool> {
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be a positive number"
    );
    ensure!(args.concurrency > 0, "--concurrency must be positive");
    let (client, server) = configs(Pki::new()?)?;
    let listener = TcpListener::bind(SocketAddr::new(LOOPBACK, 0)).context("binding loopback")?;
    let addr = listener.local_addr().context("getsockname")?;
    let server_errors = Arc::new(AtomicU64::new(0));
    // Server threads block in accept; they end with the process.
    for _ in 0..args.concurrency {
        let listener = listener.try_clone().context("cloning the listener")?;
        let (server, errors) = (server.clone(), server_errors.clone());
        std::thread::spawn(move || serve(&listener, &server, &errors));
    }

    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let results: Vec<Result<Vec<Duration>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|_| {
                scope.spawn(|| {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let t = Instant::now();
                        if let Err(e) = handshake(addr, &client) {
                            stop.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                        samples.push(t.elapsed());
                    }
                    Ok(samples)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("handshake worker panicked"))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    for r in results {
        samples.extend(r?);
    }
    let errors = server_errors.load(Ordering::Relaxed);
    ensure!(errors == 0, "{errors} server-side handshakes failed");
    let mut v = summarize(&samples);
    v["handshakes"] = json!(samples.len());
    v["seconds"] = json!(seconds);
    v["concurrency"] = json!(args.concurrency);
    v["handshakes_per_s"] = json!(samples.len() as f64 / seconds);
    emit(&v);
    Ok(!samples.is_empty())
}

/// One full handshake as the client; checks that it was a full TLS 1.3 handshake.
fn handshake(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<()> {
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).context("connecting over loopback")?;
    tcp.set_nodelay(true).context("TCP_NODELAY")?;
    tcp.set_read_timeout(Some(TIMEOUT)).context("SO_RCVTIMEO")?;
    let conn = ClientConnection::new(config.clone(), ServerName::IpAddress(LOOPBACK.into()))
        .context("client connection")?;
    let mut tls = StreamOwned::new(conn, tcp);
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte)
        .context("client handshake and reading the server's byte")?;
    let conn = &tls.conn;
    ensure!(
        conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
        "not TLS 1.3: {:?}",
        conn.protocol_version()
    );
    match conn.handshake_kind() {
        Some(HandshakeKind::Full) => Ok(()),
        other => bail!("expected a full handshake, got {other:?}"),
    }
}

fn serve(listener: &TcpListener, config: &Arc<ServerConfig>, errors: &AtomicU64) {
    loop {
        let Ok((tcp, _)) = listener.accept() else {
            continue;
        };
        let result = (|| -> Result<()> {
            tcp.set_nodelay(true)?;
            tcp.set_read_timeout(Some(TIMEOUT))?;
            let mut tls = StreamOwned::new(ServerConnection::new(config.clone())?, tcp);
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock)?;
            }
            tls.write_all(b"!")?;
            tls.flush()?;
            Ok(())
        })();
        if let Err(e) = result {
            errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("server handshake: {e:#}");
        }
    }
}

/// Freshly made certificates: the CA as the only root of both sides, and the two leaves.
struct Pki {
    roots: Arc<RootCertStore>,
    server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
}

impl Pki {
    fn new() -> Result<Pki> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = common_name("bench CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_cert.der().clone())
            .context("adding the CA to the roots")?;
        let issuer = Issuer::new(ca, ca_key);
        Ok(Pki {
            roots: Arc::new(roots),
            server: leaf(&issuer, SERVER_ID, true)?,
            client: leaf(&issuer, CLIENT_ID, false)?,
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client and server configs: TLS 1.3 only, no session resumption of any kind.
fn configs(pki: Pki) -> Result<(Arc<ClientConfig>, Arc<ServerConfig>)> {
    let verifier = WebPkiClientVerifier::builder_with_provider(pki.roots.clone(), provider())
        .build()
        .context("client certificate verifier")?;
    let (chain, key) = pki.server;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let (chain, key) = pki.client;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(pki.roots)
        .with_client_auth_cert(chain, key)?;
    client.resumption = rustls::client::Resumption::disabled();
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(client), Arc::new(server)))
}

/// A leaf with a SPIFFE URI SAN; the server's also carries 127.0.0.1, the name the client
/// checks (the agent checks the SPIFFE ID instead, which costs the same).
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    spiffe_id: &str,
    server: bool,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(spiffe_id);
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
    if server {
        params.subject_alt_names.push(SanType::IpAddress(LOOPBACK));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = params.signed_by(&key, issuer)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone()], key))
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_mutual_handshakes_over_loopback() {
        let args = TlsHandshakesArgs {
            seconds: 0.2,
            concurrency: 2,
        };
        assert!(run(&args).unwrap());
    }

    #[test]
    fn client_without_certificate_is_refused() {
        let pki = Pki::new().unwrap();
        let roots = pki.roots.clone();
        let (_, server) = configs(pki).unwrap();
        let listener = TcpListener::bind(SocketAddr::new(LOOPBACK, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let errors = Arc::new(AtomicU64::new(0));
        let server_errors = errors.clone();
        std::thread::spawn(move || serve(&listener, &server, &server_errors));

        // Trusts the server, but has no certificate to show.
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert!(handshake(addr, &Arc::new(client)).is_err());
        let deadline = Instant::now() + Duration::from_secs(5);
        while errors.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(errors.load(Ordering::Relaxed), 1);
    }
}
