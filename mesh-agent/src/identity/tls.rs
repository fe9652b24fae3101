//! rustls configurations of the mTLS tunnel between node agents (HTTP/2 CONNECT on :15008).
//!
//! - Server (inbound): presents the agent's own identity, requires a client certificate that
//!   chains to the trust bundle and carries exactly one SPIFFE ID of our trust domain; that ID
//!   is the source principal for authorization ([`peer_identity`]).
//! - Client (outbound): presents the *source workload's* certificate, and accepts only a
//!   server whose certificate chains to the trust bundle and names the node-agent identity.
//!   SPIFFE certificates carry no DNS name or IP, so the usual hostname check is replaced by
//!   that identity check; the `ServerName` callers pass (the peer node's IP) is ignored.
//!
//! Certificates are resolved per handshake from the [`IdentityManager`], so rotation applies
//! to new connections without rebuilding configs. TLS 1.3 only, ALPN `h2`, no 0-RTT.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::CryptoProvider,
    server::{
        ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::warn;

use super::{IdentityManager, SpiffeId, agent_id, crypto_provider, hex};

/// The tunnel speaks HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// The identity a peer proved in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    pub id: SpiffeId,
    /// Lowercase hex.
    pub serial: String,
}

/// Config of the inbound tunnel listener: presents the current certificate of
/// `agent_id(trust_domain)`, requires and checks a client certificate.
pub fn server_config(mgr: Arc<IdentityManager>) -> Result<Arc<ServerConfig>> {
    let id = agent_id(mgr.trust_domain());
    server_config_for(mgr, id)
}

/// As [`server_config`], presenting `id` (tests use it to impersonate a non-agent server).
pub(crate) fn server_config_for(
    mgr: Arc<IdentityManager>,
    id: SpiffeId,
) -> Result<Arc<ServerConfig>> {
    // Fail now, not at the first handshake, if the certificate cannot be issued.
    mgr.svid(&id)?;
    let roots = mgr.roots();
    let trust_domain = mgr.trust_domain().to_owned();
    build_server_config(roots, trust_domain, Arc::new(ManagedCert { mgr, id }))
}

fn build_server_config(
    roots: Arc<RootCertStore>,
    trust_domain: String,
    certs: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>> {
    let provider = crypto_provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .context("building the client certificate verifier")?;
    let verifier = Arc::new(SpiffeClientVerifier {
        inner,
        trust_domain,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.max_early_data_size = 0;
    // No resumption: a resumed TLS 1.3 session carries the client identity of the original
    // handshake without presenting or re-checking a certificate, so a peer could keep an
    // identity past its certificate's expiry or rotation. Sessions are pooled anyway, so full
    // handshakes are rare.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Config of tunnel connections made on behalf of `source`: presents its current certificate
/// and accepts only a node agent of the trust domain as the server. One per source identity:
/// the certificate resolver is bound to that identity. Resumption is off (see
/// build_server_config), so every session proves the current certificate.
pub fn client_config(mgr: Arc<IdentityManager>, source: SpiffeId) -> Result<Arc<ClientConfig>> {
    mgr.svid(&source)?;
    let roots = mgr.roots();
    let expected = agent_id(mgr.trust_domain());
    build_client_config(roots, expected, Arc::new(ManagedCert { mgr, id: source }))
}

fn build_client_config(
    roots: Arc<RootCertStore>,
    expected_server: SpiffeId,
    certs: Arc<dyn ResolvesClientCert>,
) -> Result<Arc<ClientConfig>> {
    let provider = crypto_provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots,
        provider: provider.clone(),
        expected: expected_server,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(certs);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_early_data = false;
    // Every session presents the current certificate (see build_server_config).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The SPIFFE ID and serial of the peer's end-entity certificate, once the handshake is done.
/// `None` without a peer certificate or if it carries no valid SPIFFE ID (which the verifiers
/// above never let through).
pub fn peer_identity(conn: &CommonState) -> Option<PeerCert> {
    let der = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let id = SpiffeId::from_cert(&cert).ok()?;
    Some(PeerCert {
        id,
        serial: hex(cert.raw_serial()),
    })
}

/// Resolves, per handshake, the current certificate of one identity from the manager.
#[derive(Debug)]
struct ManagedCert {
    mgr: Arc<IdentityManager>,
    id: SpiffeId,
}

impl ManagedCert {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        match self.mgr.svid(&self.id) {
            Ok(svid) => Some(svid.certified_key.clone()),
            Err(e) => {
                warn!(spiffe_id = %self.id, "no certificate for the TLS handshake: {e:#}");
                None
            }
        }
    }
}

impl ResolvesServerCert for ManagedCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for ManagedCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A rejected peer certificate, with a message that says why (shows up in logs as the
/// handshake error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerIdentityError(String);

fn rejected(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        PeerIdentityError(message),
    ))))
}

/// The peer certificate's SPIFFE ID, or a handshake error naming the problem.
fn spiffe_id_of(end_entity: &CertificateDer<'_>, side: &str) -> Result<SpiffeId, rustls::Error> {
    SpiffeId::from_cert_der(end_entity)
        .map_err(|e| rejected(format!("{side} certificate has no valid SPIFFE ID: {e:#}")))
}

/// WebPKI chain validation (trust bundle, validity, clientAuth EKU), then: exactly one URI SAN
/// that is a SPIFFE ID of our trust domain.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = spiffe_id_of(end_entity, "client")?;
        if id.trust_domain != self.trust_domain {
            return Err(rejected(format!(
                "client certificate identity {id} is not in trust domain {}",
                self.trust_domain
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Chain validation to the trust bundle (validity, serverAuth EKU) without a hostname check,
/// then: the SPIFFE ID must be `expected` (the node-agent identity).
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: SpiffeId,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = spiffe_id_of(end_entity, "server")?;
        if id != self.expected {
            return Err(rejected(format!(
                "server certificate identity {id} is not the node agent identity {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::{Duration, SystemTime},
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::identity::{
        Svid,
        ca::tests::{TD, new_ca},
    };

    fn manager() -> (tempfile::TempDir, Arc<IdentityManager>) {
        let (dir, ca) = new_ca();
        (
            dir,
            Arc::new(IdentityManager::new(
                ca,
                TD.to_owned(),
                Duration::from_secs(3600),
            )),
        )
    }

    fn web() -> SpiffeId {
        SpiffeId::new(TD, "default", "web")
    }

    /// A resumed TLS 1.3 session keeps the client identity of its first handshake without a
    /// certificate being presented again, so neither side may offer resumption.
    #[test]
    fn no_session_resumption_on_either_side() {
        let (_dir, mgr) = manager();
        let server = server_config(mgr.clone()).unwrap();
        assert_eq!(server.send_tls13_tickets, 0);
        assert!(!server.session_storage.can_cache());
        let client = client_config(mgr, web()).unwrap();
        // The client's store is private; its Debug form names the storage in use.
        let resumption = format!("{:?}", client.resumption);
        assert!(
            resumption.contains("NoClientSessionStorage"),
            "client may resume: {resumption}"
        );
    }

    /// A client presenting a fixed certificate (or none).
    #[derive(Debug)]
    struct Fixed(Option<Arc<CertifiedKey>>);

    impl ResolvesClientCert for Fixed {
        fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            self.0.clone()
        }

        fn has_certs(&self) -> bool {
            self.0.is_some()
        }
    }

    fn client_with(mgr: &IdentityManager, cert: Option<&Svid>) -> Arc<ClientConfig> {
        build_client_config(
            mgr.roots(),
            agent_id(TD),
            Arc::new(Fixed(cert.map(|s| s.certified_key.clone()))),
        )
        .unwrap()
    }

    struct Outcome {
        server: Result<Option<PeerCert>, String>,
        client: Result<Option<PeerCert>, String>,
    }

    /// One handshake over an in-memory pipe, plus a ping/pong so that both sides see the
    /// other's verdict (in TLS 1.3 the client finishes before the server checks its
    /// certificate).
    async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server_side = async move {
            let mut tls = TlsAcceptor::from(server)
                .accept(server_io)
                .await
                .map_err(|e| e.to_string())?;
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
            assert_eq!(
                conn.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            let peer = peer_identity(conn);
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())?;
            Ok(peer)
        };
        let client_side = async move {
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)).into());
            let mut tls = TlsConnector::from(client)
                .connect(name, client_io)
                .await
                .map_err(|e| e.to_string())?;
            let peer = peer_identity(tls.get_ref().1);
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            assert_eq!(&buf, b"pong");
            Ok(peer)
        };
        let (server, client) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(server_side, client_side)
        })
        .await
        .expect("handshake hung");
        Outcome { server, client }
    }

    fn assert_rejected(outcome: &Outcome, needle: &str) {
        let err = outcome.server.as_ref().expect_err("server must reject");
        assert!(
            needle.split('|').any(|n| err.contains(n)),
            "server error {err:?} should mention {needle:?}"
        );
        assert!(
            outcome.client.is_err(),
            "client must not get through: {:?}",
            outcome.client
        );
    }

    #[tokio::test]
    async fn valid_client_certificate_is_accepted() {
        let (_dir, mgr) = manager();
        let server = server_config(mgr.clone()).unwrap();
        let client = client_config(mgr.clone(), web()).unwrap();
        let outcome = handshake(server, client).await;
        let seen_by_server = outcome
            .server
            .unwrap()
            .expect("server sees a peer identity");
        assert_eq!(seen_by_server.id, web());
        assert_eq!(seen_by_server.serial, mgr.svid(&web()).unwrap().serial);
        let seen_by_client = outcome
            .client
            .unwrap()
            .expect("client sees the server identity");
        assert_eq!(seen_by_client.id, agent_id(TD));
        assert_eq!(
            seen_by_client.serial,
            mgr.svid(&agent_id(TD)).unwrap().serial
        );
    }

    #[tokio::test]
    async fn new_handshakes_use_rotated_certificates() {
        let (_dir, mgr) = manager();
        let server = server_config(mgr.clone()).unwrap();
        let client = client_config(mgr.clone(), web()).unwrap();
        let first = handshake(server.clone(), client.clone()).await;
        let (first_server, first_client) = (
            first.server.unwrap().unwrap(),
            first.client.unwrap().unwrap(),
        );

        mgr.rotate(&mgr.svid(&web()).unwrap()).unwrap();
        mgr.rotate(&mgr.svid(&agent_id(TD)).unwrap()).unwrap();
        assert_eq!(mgr.rotations(), 2);

        // Same configs, no rebuild: the resolvers ask the manager per handshake. (A resumed
        // session would carry the old certificates; a fresh client config avoids the cache.)
        let fresh_client = client_config(mgr.clone(), web()).unwrap();
        let second = handshake(server, fresh_client).await;
        let (second_server, second_client) = (
            second.server.unwrap().unwrap(),
            second.client.unwrap().unwrap(),
        );
        assert_ne!(first_server.serial, second_server.serial);
        assert_eq!(second_server.serial, mgr.svid(&web()).unwrap().serial);
        assert_ne!(first_client.serial, second_client.serial);
        assert_eq!(
            second_client.serial,
            mgr.svid(&agent_id(TD)).unwrap().serial
        );
    }

    #[tokio::test]
    async fn client_certificate_of_another_ca_is_rejected() {
        let (_dir, mgr) = manager();
        let (_dir2, other_ca) = new_ca();
        let foreign = other_ca.issue(&web(), Duration::from_secs(3600)).unwrap();
        let outcome = handshake(
            server_config(mgr.clone()).unwrap(),
            client_with(&mgr, Some(&foreign)),
        )
        .await;
        // Both generated CAs are named "mesh-agent CA mesh.test": the chain fails on the signature.
        assert_rejected(&outcome, "UnknownIssuer|BadSignature");
    }

    #[tokio::test]
    async fn missing_client_certificate_is_rejected() {
        let (_dir, mgr) = manager();
        let outcome = handshake(server_config(mgr.clone()).unwrap(), client_with(&mgr, None)).await;
        assert_rejected(&outcome, "peer sent no certificates");
    }

    #[tokio::test]
    async fn client_of_another_trust_domain_is_rejected() {
        let (_dir, mgr) = manager();
        // Same CA, so the chain is fine; only the SPIFFE ID is wrong.
        let stranger = mgr
            .ca()
            .issue(
                &SpiffeId::new("other.domain", "default", "web"),
                Duration::from_secs(3600),
            )
            .unwrap();
        let outcome = handshake(
            server_config(mgr.clone()).unwrap(),
            client_with(&mgr, Some(&stranger)),
        )
        .await;
        assert_rejected(&outcome, "not in trust domain mesh.test");
    }

    #[tokio::test]
    async fn expired_client_certificate_is_rejected() {
        let (_dir, mgr) = manager();
        let now = SystemTime::now();
        let expired = mgr
            .ca()
            .issue_window(
                &web(),
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
                now - Duration::from_secs(7200),
            )
            .unwrap();
        let outcome = handshake(
            server_config(mgr.clone()).unwrap(),
            client_with(&mgr, Some(&expired)),
        )
        .await;
        assert_rejected(&outcome, "expired");
    }

    #[tokio::test]
    async fn client_certificate_without_spiffe_id_is_rejected() {
        let (dir, mgr) = manager();
        // A DNS-only client certificate signed by the mesh CA itself: the chain is valid, but
        // it carries no identity.
        let ca_key = rcgen::KeyPair::from_pem(
            &std::fs::read_to_string(dir.path().join("ca").join(crate::identity::ca::CA_KEY_FILE))
                .unwrap(),
        )
        .unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(mgr.ca().cert_der(), ca_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["web.example".to_owned()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let certified = CertifiedKey::from_der(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            &crypto_provider(),
        )
        .unwrap();
        let client = build_client_config(
            mgr.roots(),
            agent_id(TD),
            Arc::new(Fixed(Some(Arc::new(certified)))),
        )
        .unwrap();
        let outcome = handshake(server_config(mgr).unwrap(), client).await;
        assert_rejected(&outcome, "no valid SPIFFE ID");
    }

    #[tokio::test]
    async fn server_with_a_workload_identity_is_rejected_by_the_client() {
        let (_dir, mgr) = manager();
        let server = server_config_for(mgr.clone(), SpiffeId::new(TD, "default", "db")).unwrap();
        let client = client_config(mgr.clone(), web()).unwrap();
        let outcome = handshake(server, client).await;
        let err = outcome.client.expect_err("client must reject the server");
        assert!(
            err.contains(
                "is not the node agent identity spiffe://mesh.test/ns/mesh-system/sa/mesh-agent"
            ),
            "{err}"
        );
        assert!(outcome.server.is_err());
    }

    #[tokio::test]
    async fn server_of_another_ca_is_rejected_by_the_client() {
        let (_dir, mgr) = manager();
        let (_dir2, other_ca) = new_ca();
        let other = Arc::new(IdentityManager::new(
            other_ca,
            TD.to_owned(),
            Duration::from_secs(3600),
        ));
        let outcome = handshake(
            server_config(other).unwrap(),
            client_config(mgr, web()).unwrap(),
        )
        .await;
        let err = outcome.client.expect_err("client must reject the server");
        assert!(
            err.contains("UnknownIssuer") || err.contains("BadSignature"),
            "{err}"
        );
    }

    #[test]
    fn configs_offer_h2_without_early_data() {
        let (_dir, mgr) = manager();
        let server = server_config(mgr.clone()).unwrap();
        assert_eq!(server.max_early_data_size, 0);
        assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);
        let client = client_config(mgr.clone(), web()).unwrap();
        assert!(!client.enable_early_data);
        assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(client_config(mgr, SpiffeId::new("x", "a", "b")).is_err());
    }
}
