//! The `telemetry:` section: where metrics and readiness are served, whether Istio metrics and
//! the access log are recorded, and the names that fill Istio's cluster and service labels.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::NodeConfig;
use super::checker::{Checker, ConfigError};
use super::raw::Text;
use super::scalars::quote;

/// Istio's defaults: metrics on 15020, readiness on 15021, on every address of the node so
/// that Prometheus and the kubelet reach them.
pub const DEFAULT_METRICS_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15020);
pub const DEFAULT_READINESS_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15021);
/// Istio's default cluster ID, which its dashboards and Kiali expect when nothing else is set.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Records waiting for the access-log writer by default: several seconds of a busy node's
/// requests, a few MiB of memory at most.
pub const DEFAULT_ACCESS_LOG_BUFFER: usize = 8192;
/// A million records: far more than a node's log writer falls behind by in a burst.
const MAX_ACCESS_LOG_BUFFER: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TelemetrySettings {
    /// GET /metrics (and /stats/prometheus): OpenMetrics or Prometheus text.
    pub metrics_address: SocketAddr,
    /// GET /healthz/ready.
    pub readiness_address: SocketAddr,
    /// Record Istio's standard metrics (istio_*). The agent's own mesh_agent_* metrics are
    /// always served.
    pub istio_metrics: bool,
    /// Which access-log lines are written (target `access`).
    pub access_log: AccessLogMode,
    /// Access-log records waiting for the writer thread; beyond that they are dropped and
    /// counted (mesh_agent_access_log_dropped_total), never waited for.
    pub access_log_buffer: usize,
    /// The destination agent serves tunnel streams to ports declared http/http2/grpc as HTTP
    /// to report their requests (reporter="destination", what Flagger and Kiali query); when
    /// false it relays their bytes, and requests are reported by the source only.
    pub destination_requests: bool,
    /// `source_cluster` / `destination_cluster`.
    pub cluster_id: String,
    /// Services are named `<name>.<namespace>.svc.<cluster_domain>` in `destination_service`.
    pub cluster_domain: String,
    /// Ask the kernel to count run time and runs of the BPF programs (BPF_ENABLE_STATS) while
    /// the agent runs; costs two clock reads per program run.
    pub program_stats: bool,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            metrics_address: DEFAULT_METRICS_ADDRESS,
            readiness_address: DEFAULT_READINESS_ADDRESS,
            istio_metrics: true,
            access_log: AccessLogMode::Connections,
            access_log_buffer: DEFAULT_ACCESS_LOG_BUFFER,
            destination_requests: true,
            cluster_id: DEFAULT_CLUSTER_ID.to_owned(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_owned(),
            program_stats: true,
        }
    }
}

/// What the access log writes. Connection lines cost one line per connection; request lines
/// one per HTTP request at each agent that reports it (two for a request between nodes), which
/// at a busy node is tens of MB/s of log: like Istio (whose access log is off by default) and
/// ztunnel (which logs connections), request lines are asked for, not the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogMode {
    Off,
    /// One line per closed connection.
    Connections,
    /// Connection lines and one line per HTTP request.
    All,
}

impl AccessLogMode {
    pub fn connections(self) -> bool {
        self != AccessLogMode::Off
    }

    pub fn requests(self) -> bool {
        self == AccessLogMode::All
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    #[serde(default)]
    metrics_address: Option<Text>,
    #[serde(default)]
    readiness_address: Option<Text>,
    #[serde(default)]
    istio_metrics: Option<bool>,
    #[serde(default)]
    /// A mode, or true (all) / false (off) as before modes existed; read as text so that
    /// errors keep their line.
    access_log: Option<Text>,
    #[serde(default)]
    access_log_buffer: Option<Text>,
    #[serde(default)]
    destination_requests: Option<bool>,
    #[serde(default)]
    cluster_id: Option<Text>,
    #[serde(default)]
    cluster_domain: Option<Text>,
    #[serde(default)]
    program_stats: Option<bool>,
}

impl Checker<'_> {
    /// `node` is None when `node:` has errors: the port clash checks are
    /// then skipped, as they would compare with values that are not there.
    pub(super) fn telemetry(
        &self,
        raw: &RawTelemetry,
        node: Option<&NodeConfig>,
    ) -> Result<TelemetrySettings, ConfigError> {
        let defaults = TelemetrySettings::default();
        let metrics_address = match &raw.metrics_address {
            Some(a) => self.keep(self.listen_address(a, "metrics_address")),
            None => Some(defaults.metrics_address),
        };
        let readiness_address = match &raw.readiness_address {
            Some(a) => self.keep(self.listen_address(a, "readiness_address")),
            None => Some(defaults.readiness_address),
        };
        if let (Some(node), Some(metrics_address), Some(readiness_address)) =
            (node, metrics_address, readiness_address)
        {
            self.keep(self.listener_clashes(raw, node, metrics_address, readiness_address));
        }
        let cluster_id = match &raw.cluster_id {
            Some(t) => self.keep(self.label_text(t, "cluster_id")),
            None => Some(defaults.cluster_id),
        };
        let cluster_domain = match &raw.cluster_domain {
            Some(t) => self.keep(self.domain(t)),
            None => Some(defaults.cluster_domain),
        };
        let access_log_buffer = match &raw.access_log_buffer {
            Some(n) => self
                .keep(self.number(n, "telemetry.access_log_buffer", 1, MAX_ACCESS_LOG_BUFFER))
                .map(|n| n as usize),
            None => Some(defaults.access_log_buffer),
        };
        let access_log = match &raw.access_log {
            Some(m) => self.keep(self.access_log_mode(m)),
            None => Some(defaults.access_log),
        };
        let (
            Some(metrics_address),
            Some(readiness_address),
            Some(cluster_id),
            Some(cluster_domain),
            Some(access_log_buffer),
            Some(access_log),
        ) = (
            metrics_address,
            readiness_address,
            cluster_id,
            cluster_domain,
            access_log_buffer,
            access_log,
        )
        else {
            return Err(self.reported());
        };
        Ok(TelemetrySettings {
            metrics_address,
            readiness_address,
            istio_metrics: raw.istio_metrics.unwrap_or(defaults.istio_metrics),
            access_log,
            access_log_buffer,
            destination_requests: raw
                .destination_requests
                .unwrap_or(defaults.destination_requests),
            cluster_id,
            cluster_domain,
            program_stats: raw.program_stats.unwrap_or(defaults.program_stats),
        })
    }

    fn access_log_mode(&self, raw: &Text) -> Result<AccessLogMode, ConfigError> {
        match raw.value.trim() {
            "off" | "false" => Ok(AccessLogMode::Off),
            "connections" => Ok(AccessLogMode::Connections),
            "all" | "true" => Ok(AccessLogMode::All),
            other => Err(self.err(
                raw.referenced,
                format!(
                    "invalid telemetry.access_log {}: expected off, connections or all (or true/false)",
                    quote(other)
                ),
            )),
        }
    }

    /// The telemetry listeners must not share a port with the node's.
    fn listener_clashes(
        &self,
        raw: &RawTelemetry,
        node: &NodeConfig,
        metrics_address: SocketAddr,
        readiness_address: SocketAddr,
    ) -> Result<(), ConfigError> {
        let ours = [
            ("node.outbound_port", node.outbound_port),
            ("node.tunnel_port", node.tunnel_port),
            ("node.admin", node.admin.port()),
        ];
        let listeners = [
            (
                "metrics_address",
                metrics_address,
                raw.metrics_address.as_ref(),
            ),
            (
                "readiness_address",
                readiness_address,
                raw.readiness_address.as_ref(),
            ),
        ];
        for (key, addr, written) in listeners {
            let clash = ours
                .iter()
                .find(|(_, port)| *port == addr.port())
                .map(|(other, _)| *other)
                .or(
                    (key == "readiness_address" && addr.port() == metrics_address.port())
                        .then_some("metrics_address"),
                );
            if let Some(other) = clash {
                let reason = format!(
                    "telemetry.{key} uses port {}, which `{other}` also uses",
                    addr.port()
                );
                return Err(match written {
                    Some(w) => self.err(w.referenced, reason),
                    // Both at their defaults: the clash comes from a node port set to 15020/15021.
                    None => ConfigError::Unlocated {
                        file: self.origin.to_owned(),
                        reason: format!("{reason}; set telemetry.{key} to another port"),
                    },
                });
            }
        }
        Ok(())
    }

    fn listen_address(&self, raw: &Text, key: &str) -> Result<SocketAddr, ConfigError> {
        raw.value.trim().parse().map_err(|_| {
            self.err(
                raw.referenced,
                format!(
                    "invalid telemetry.{key} {}: expected IP:PORT such as 0.0.0.0:15020 or [::]:15020",
                    quote(&raw.value)
                ),
            )
        })
    }

    /// A value that ends up in a Prometheus label: printable, no surprises.
    fn label_text(&self, raw: &Text, key: &str) -> Result<String, ConfigError> {
        let text = raw.value.trim();
        let ok = !text.is_empty()
            && text.len() <= 63
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if ok {
            Ok(text.to_owned())
        } else {
            Err(self.err(
                raw.referenced,
                format!(
                    "invalid telemetry.{key} {}: use 1 to 63 characters among letters, digits, '-', '_' and '.'",
                    quote(&raw.value)
                ),
            ))
        }
    }

    fn domain(&self, raw: &Text) -> Result<String, ConfigError> {
        let text = raw.value.trim();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if text.len() <= 253 && text.split('.').all(label_ok) {
            Ok(text.to_owned())
        } else {
            Err(self.err(
                raw.referenced,
                format!(
                    "invalid telemetry.cluster_domain {}: expected a DNS domain such as cluster.local",
                    quote(&raw.value)
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigErrors, parse_str};

    fn parse(telemetry: &str) -> Result<super::TelemetrySettings, ConfigErrors> {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = format!(
            "node:\n  name: n1\n  cgroup: {}\ntelemetry:\n{telemetry}",
            dir.path().display()
        );
        parse_str(&yaml, "t.yaml").map(|c| c.telemetry)
    }

    fn fails(telemetry: &str, line: Option<u64>, needle: &str) {
        let err = parse(telemetry).expect_err("must be rejected");
        assert_eq!(err.len(), 1, "one mistake, one error; got:\n{err}");
        assert_eq!(err.line(), line, "{err}");
        assert!(err.reason().contains(needle), "{needle:?} not in: {err}");
    }

    #[test]
    fn defaults_are_istios() {
        let t = parse("  istio_metrics: true\n").unwrap();
        assert_eq!(t, super::TelemetrySettings::default());
        assert_eq!(t.metrics_address.to_string(), "0.0.0.0:15020");
        assert_eq!(t.readiness_address.to_string(), "0.0.0.0:15021");
        assert_eq!(t.cluster_id, "Kubernetes");
        assert_eq!(t.cluster_domain, "cluster.local");
        assert_eq!(t.access_log, super::AccessLogMode::Connections);
        assert!(t.program_stats);
    }

    #[test]
    fn access_log_takes_a_mode_or_a_switch() {
        use super::AccessLogMode::*;
        for (written, mode) in [
            ("off", Off),
            ("connections", Connections),
            ("all", All),
            ("true", All),
            ("false", Off),
        ] {
            let t = parse(&format!("  access_log: {written}\n")).unwrap();
            assert_eq!(t.access_log, mode, "{written}");
        }
        assert!(All.requests() && All.connections());
        assert!(Connections.connections() && !Connections.requests());
        assert!(!Off.connections() && !Off.requests());
    }

    #[test]
    fn every_key_is_read() {
        let t = parse(
            "  metrics_address: 127.0.0.1:9464\n  readiness_address: '[::]:9465'\n  istio_metrics: false\n  access_log: false\n  access_log_buffer: 16\n  destination_requests: false\n  cluster_id: east-1\n  cluster_domain: corp.example\n  program_stats: false\n",
        )
        .unwrap();
        assert_eq!(t.metrics_address.to_string(), "127.0.0.1:9464");
        assert_eq!(t.readiness_address.to_string(), "[::]:9465");
        assert!(!t.istio_metrics && !t.program_stats);
        assert_eq!(t.access_log, super::AccessLogMode::Off);
        assert!(!t.destination_requests);
        assert_eq!(t.access_log_buffer, 16);
        assert_eq!(t.cluster_id, "east-1");
        assert_eq!(t.cluster_domain, "corp.example");
    }

    #[test]
    fn errors_name_the_line_and_reason() {
        fails("  metrics_address: 15020\n", Some(5), "expected IP:PORT");
        fails(
            "  metrics_address: 0.0.0.0:15008\n",
            Some(5),
            "`node.tunnel_port` also uses",
        );
        fails(
            "  readiness_address: 0.0.0.0:15020\n",
            Some(5),
            "`metrics_address` also uses",
        );
        fails(
            "  cluster_id: 'a b'\n",
            Some(5),
            "invalid telemetry.cluster_id",
        );
        fails(
            "  cluster_domain: Cluster.Local\n",
            Some(5),
            "expected a DNS domain",
        );
        fails("  metrics: true\n", Some(5), "unknown field `metrics`");
        fails(
            "  access_log_buffer: 0\n",
            Some(5),
            "telemetry.access_log_buffer 0 is out of range 1..=1048576",
        );
        fails(
            "  access_log: requests\n",
            Some(5),
            "expected off, connections or all",
        );
        fails(
            "  access_log_buffer: lots\n",
            Some(5),
            "expected a whole number",
        );
    }
}
