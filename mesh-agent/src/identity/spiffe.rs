//! SPIFFE IDs of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! This is the only identity shape the mesh issues and accepts (the Istio/Kubernetes shape), so
//! parsing is strict: anything else in a peer's certificate is rejected rather than guessed at,
//! which keeps authorization decisions (principal, namespace) unambiguous.

use std::{fmt, str::FromStr};

use anyhow::{Result, bail};

/// Namespace of the node agent's own identity.
pub const AGENT_NAMESPACE: &str = "mesh-system";
/// Service account of the node agent's own identity.
pub const AGENT_SERVICE_ACCOUNT: &str = "mesh-agent";

/// SPIFFE IDs longer than this are rejected (the SPIFFE spec's URI limit).
const MAX_LEN: usize = 2048;

/// A workload identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// The identity every node agent presents on its inbound tunnel listener (:15008), so that a
/// client can check it reached *an agent of the mesh* rather than some workload holding a
/// certificate of the same CA.
pub fn agent_id(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)
}

impl SpiffeId {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// Parses exactly `spiffe://td/ns/N/sa/SA`: lowercase scheme and trust domain, no port,
    /// user info, query or fragment, exactly those four path segments, none empty, `.` or `..`.
    pub fn parse(s: &str) -> Result<SpiffeId> {
        if s.len() > MAX_LEN {
            bail!("SPIFFE ID is longer than {MAX_LEN} bytes");
        }
        let Some(rest) = s.strip_prefix("spiffe://") else {
            bail!("SPIFFE ID {s:?} does not start with \"spiffe://\"");
        };
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        check_trust_domain(trust_domain).map_err(|e| anyhow::anyhow!("SPIFFE ID {s:?}: {e}"))?;
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => {
                for segment in [namespace, service_account] {
                    check_segment(segment).map_err(|e| anyhow::anyhow!("SPIFFE ID {s:?}: {e}"))?;
                }
                Ok(SpiffeId::new(trust_domain, *namespace, *service_account))
            }
            _ => {
                bail!("SPIFFE ID {s:?} does not have the path /ns/<namespace>/sa/<service-account>")
            }
        }
    }

    /// The Istio principal form `td/ns/N/sa/SA` (the SPIFFE ID without its scheme), as used in
    /// authorization policies and the `*_principal` metric labels.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl SpiffeId {
    /// The SPIFFE ID of a DER certificate: its subjectAltName must hold exactly one URI, and
    /// that URI must be a SPIFFE ID of our shape (X.509-SVID rule: one URI SAN, no guessing).
    pub fn from_cert_der(der: &[u8]) -> Result<SpiffeId> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("not a valid X.509 certificate: {e}"))?;
        SpiffeId::from_cert(&cert)
    }

    /// As [`SpiffeId::from_cert_der`], for an already parsed certificate.
    pub fn from_cert(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<SpiffeId> {
        use x509_parser::extensions::GeneralName;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| anyhow::anyhow!("invalid subjectAltName extension: {e}"))?
            .ok_or_else(|| anyhow::anyhow!("certificate has no subjectAltName (no SPIFFE ID)"))?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [uri] => SpiffeId::parse(uri),
            [] => bail!("certificate has no URI subjectAltName (no SPIFFE ID)"),
            _ => bail!(
                "certificate has {} URI subjectAltNames, a SPIFFE certificate has exactly one",
                uris.len()
            ),
        }
    }
}

fn check_trust_domain(td: &str) -> Result<()> {
    if td.is_empty() {
        bail!("empty trust domain");
    }
    if let Some(c) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        bail!("trust domain {td:?} contains {c:?} (allowed: a-z 0-9 . - _)");
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<()> {
    if segment.is_empty() {
        bail!("empty path segment");
    }
    if segment == "." || segment == ".." {
        bail!("path segment {segment:?} is not allowed");
    }
    if let Some(c) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        bail!("path segment {segment:?} contains {c:?} (allowed: A-Z a-z 0-9 . - _)");
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

impl FromStr for SpiffeId {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<SpiffeId> {
        SpiffeId::parse(s)
    }
}

/// Serialized as its URI string, the form operators see everywhere else.
impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = SpiffeId::new("cluster.local", "default", "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/web");
        assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(
            "spiffe://cluster.local/ns/default/sa/web"
                .parse::<SpiffeId>()
                .unwrap(),
            id
        );
    }

    #[test]
    fn agent_identity() {
        assert_eq!(
            agent_id("mesh.test").to_string(),
            "spiffe://mesh.test/ns/mesh-system/sa/mesh-agent"
        );
    }

    #[test]
    fn parse_is_strict() {
        for bad in [
            "",
            "spiffe://",
            "spiffe://td",
            "spiffe://td/",
            "spiffe:/td/ns/a/sa/b",
            "SPIFFE://td/ns/a/sa/b",
            "https://td/ns/a/sa/b",
            "spiffe://TD/ns/a/sa/b",
            "spiffe://td:8080/ns/a/sa/b",
            "spiffe://user@td/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns/a/sa/b/",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/ns/a/sa",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/a/sa/",
            "spiffe://td/ns/../sa/b",
            "spiffe://td/ns/./sa/b",
            "spiffe://td/sa/a/ns/b",
            "spiffe://td/ns/a/sa/b?x=1",
            "spiffe://td/ns/a/sa/b#f",
            "spiffe://td/ns/a%20/sa/b",
            "spiffe://td/NS/a/sa/b",
            " spiffe://td/ns/a/sa/b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("spiffe://td/ns/{}/sa/b", "a".repeat(MAX_LEN));
        assert!(SpiffeId::parse(&long).is_err());
    }

    #[test]
    fn parse_accepts_allowed_characters() {
        let id = SpiffeId::parse("spiffe://my-td.example_1/ns/Kube-System.x/sa/Svc_1").unwrap();
        assert_eq!(id.trust_domain, "my-td.example_1");
        assert_eq!(id.namespace, "Kube-System.x");
        assert_eq!(id.service_account, "Svc_1");
    }

    #[test]
    fn serializes_as_uri() {
        let id = SpiffeId::new("td", "ns1", "sa1");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://td/ns/ns1/sa/sa1\""
        );
    }
}
