//! The L7 keys of a `services:` entry: the protocol of each port (declared, else by Istio's
//! port-name convention, else detected per connection), `load_balancer`, and
//! `outlier_detection` (passive health checking of the endpoints).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::{MAX_LONG_DURATION, MS};
use crate::config::checker::{Checker, ConfigError};
use crate::config::raw::Text;
use crate::config::scalars::{quote, serialize_duration};

/// The application protocol of a service port.
///
/// Written `tcp`, `http`, `http2` or `grpc` (any case) under `protocol:`; when absent, Istio's
/// port-name convention applies (`http`, `http-web`, `grpc-api`, `http2`, `tcp-db`, ...), and
/// when that says nothing either the protocol is detected per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque bytes: the L4 relay.
    Tcp,
    /// HTTP/1.1 to the backend (clients may speak HTTP/1.1 or h2c).
    Http,
    /// HTTP/2 cleartext (prior knowledge) to the backend.
    Http2,
    /// gRPC: HTTP/2 to the backend, GRPCRoute rules apply.
    Grpc,
}

/// How a port's protocol was decided, as shown on /config_dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    /// Declared with `protocol:` or by the port name.
    Declared(Protocol),
    /// Sniffed per connection: an HTTP/1.x request line or the HTTP/2 preface means HTTP,
    /// anything else (or silence for `http.detection_timeout`) means TCP.
    Detect,
}

/// Endpoint selection within a backend service (`load_balancer:` on a service).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// `round_robin` (default).
    #[default]
    RoundRobin,
    /// `least_request`: the less loaded of two random endpoints (power of two choices).
    LeastRequest,
}

/// Passive health checking of a service's endpoints (`outlier_detection:` on a service), after
/// Istio's DestinationRule outlierDetection. Absent means endpoints are never ejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses or connect failures that eject an endpoint (default 5;
    /// 0 disables this trigger).
    pub consecutive_5xx_errors: u32,
    /// Consecutive 502/503/504 responses or connect failures that eject an endpoint
    /// (default 0 = disabled).
    pub consecutive_gateway_errors: u32,
    /// The first ejection lasts this long; the n-th lasts n times as long (default 30s).
    #[serde(serialize_with = "serialize_duration")]
    pub base_ejection_time: Duration,
    /// At most this percentage of a service's endpoints is ejected at once (default 10); one
    /// endpoint may always be ejected, as in Envoy.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawOutlierDetection {
    #[serde(default)]
    consecutive_5xx_errors: Option<Text>,
    #[serde(default)]
    consecutive_gateway_errors: Option<Text>,
    #[serde(default)]
    base_ejection_time: Option<Text>,
    #[serde(default)]
    max_ejection_percent: Option<Text>,
}

impl Checker<'_> {
    /// `protocol:`, else Istio's port-name convention, else detection.
    pub(in crate::config) fn port_protocol(
        &self,
        raw: Option<&Text>,
        name: Option<&str>,
    ) -> Result<PortProtocol, ConfigError> {
        if let Some(raw) = raw {
            return match protocol_named(&raw.value) {
                Some(p) => Ok(PortProtocol::Declared(p)),
                None => Err(self.err(
                    raw.referenced,
                    format!(
                        "invalid protocol {}: expected tcp, http, http2 or grpc",
                        quote(&raw.value)
                    ),
                )),
            };
        }
        // `http-web`, `grpc`, `tcp-db`: the part before the first '-'.
        let by_name = name
            .and_then(|n| n.split('-').next())
            .and_then(protocol_named);
        Ok(by_name.map_or(PortProtocol::Detect, PortProtocol::Declared))
    }

    pub(in crate::config) fn load_balancer(&self, raw: &Text) -> Result<LoadBalancer, ConfigError> {
        let v = raw.value.as_str();
        if v.eq_ignore_ascii_case("round_robin") {
            Ok(LoadBalancer::RoundRobin)
        } else if v.eq_ignore_ascii_case("least_request") {
            Ok(LoadBalancer::LeastRequest)
        } else {
            Err(self.err(
                raw.referenced,
                format!(
                    "invalid load_balancer {}: expected round_robin or least_request",
                    quote(v)
                ),
            ))
        }
    }

    pub(in crate::config) fn outlier_detection(
        &self,
        raw: &Spanned<Option<RawOutlierDetection>>,
    ) -> Result<OutlierDetection, ConfigError> {
        // Like `egress:`, a key with no value is ambiguous: defaults, or off?
        let Some(raw) = &raw.value else {
            return Err(self.err(
                raw.referenced,
                "`outlier_detection` has no value: write `outlier_detection: {}` for the defaults, or remove the key to never eject endpoints".to_owned(),
            ));
        };
        let defaults = OutlierDetection::default();
        let consecutive_5xx_errors = self.keep(self.opt_u32(
            raw.consecutive_5xx_errors.as_ref(),
            "consecutive_5xx_errors",
            1_000_000,
            defaults.consecutive_5xx_errors,
        ));
        let consecutive_gateway_errors = self.keep(self.opt_u32(
            raw.consecutive_gateway_errors.as_ref(),
            "consecutive_gateway_errors",
            1_000_000,
            defaults.consecutive_gateway_errors,
        ));
        let base_ejection_time = match &raw.base_ejection_time {
            Some(t) => self.keep(self.duration(t, "base_ejection_time", MS, MAX_LONG_DURATION)),
            None => Some(defaults.base_ejection_time),
        };
        let max_ejection_percent = self.keep(self.opt_u32(
            raw.max_ejection_percent.as_ref(),
            "max_ejection_percent",
            100,
            defaults.max_ejection_percent,
        ));
        match (
            consecutive_5xx_errors,
            consecutive_gateway_errors,
            base_ejection_time,
            max_ejection_percent,
        ) {
            (
                Some(consecutive_5xx_errors),
                Some(consecutive_gateway_errors),
                Some(base_ejection_time),
                Some(max_ejection_percent),
            ) => Ok(OutlierDetection {
                consecutive_5xx_errors,
                consecutive_gateway_errors,
                base_ejection_time,
                max_ejection_percent,
            }),
            _ => Err(self.reported()),
        }
    }
}

fn protocol_named(name: &str) -> Option<Protocol> {
    let known = [
        ("tcp", Protocol::Tcp),
        ("http", Protocol::Http),
        ("http2", Protocol::Http2),
        ("grpc", Protocol::Grpc),
    ];
    known
        .into_iter()
        .find(|(n, _)| name.eq_ignore_ascii_case(n))
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests;
