//! The `http:` section: how long protocol detection waits for a client's first bytes, the
//! limit of a request head, and the retry budget that bounds retries per backend service.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{MAX_DETECTION_TIMEOUT, MS};
use crate::config::checker::{Checker, ConfigError};
use crate::config::raw::Text;
use crate::config::scalars::serialize_duration;

/// Default of `http.detection_timeout`: how long the agent waits for the client's first bytes
/// on a port whose protocol is not declared before treating the connection as opaque TCP.
pub const DEFAULT_DETECTION_TIMEOUT: Duration = Duration::from_millis(100);
/// Default of `http.max_header_bytes` (request line and headers together, like Envoy's 60 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 60 * 1024;
/// Default of `http.retry_budget.percent`.
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
/// Default of `http.retry_budget.min_retries_per_second`.
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;

/// The top-level `http:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpSettings {
    /// See [`DEFAULT_DETECTION_TIMEOUT`].
    #[serde(serialize_with = "serialize_duration")]
    pub detection_timeout: Duration,
    /// Larger request heads get 431.
    pub max_header_bytes: usize,
    pub retry_budget: RetryBudget,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            detection_timeout: DEFAULT_DETECTION_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            retry_budget: RetryBudget::default(),
        }
    }
}

/// Retries may add at most `percent` of the requests of the last 10 seconds, plus
/// `min_retries_per_second`, per backend service (Linkerd's retry budget), so that retries
/// cannot storm a struggling service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryBudget {
    pub percent: u32,
    pub min_retries_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: DEFAULT_RETRY_BUDGET_PERCENT,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawHttp {
    #[serde(default)]
    detection_timeout: Option<Text>,
    #[serde(default)]
    max_header_bytes: Option<Text>,
    #[serde(default)]
    retry_budget: Option<RawRetryBudget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetryBudget {
    #[serde(default)]
    percent: Option<Text>,
    #[serde(default)]
    min_retries_per_second: Option<Text>,
}

impl Checker<'_> {
    pub(in crate::config) fn http_settings(
        &self,
        raw: &RawHttp,
    ) -> Result<HttpSettings, ConfigError> {
        let defaults = HttpSettings::default();
        let detection_timeout = match &raw.detection_timeout {
            Some(t) => self.keep(self.duration(t, "detection_timeout", MS, MAX_DETECTION_TIMEOUT)),
            None => Some(defaults.detection_timeout),
        };
        let max_header_bytes = match &raw.max_header_bytes {
            Some(n) => self.keep(self.number(n, "max_header_bytes", 1024, 1_048_576)),
            None => Some(defaults.max_header_bytes as u64),
        };
        let (percent, min_retries_per_second) = match &raw.retry_budget {
            Some(b) => (
                self.keep(self.opt_u32(
                    b.percent.as_ref(),
                    "retry_budget.percent",
                    1000,
                    defaults.retry_budget.percent,
                )),
                self.keep(self.opt_u32(
                    b.min_retries_per_second.as_ref(),
                    "retry_budget.min_retries_per_second",
                    100_000,
                    defaults.retry_budget.min_retries_per_second,
                )),
            ),
            None => (
                Some(defaults.retry_budget.percent),
                Some(defaults.retry_budget.min_retries_per_second),
            ),
        };
        match (
            detection_timeout,
            max_header_bytes,
            percent,
            min_retries_per_second,
        ) {
            (
                Some(detection_timeout),
                Some(max_header_bytes),
                Some(percent),
                Some(min_retries_per_second),
            ) => Ok(HttpSettings {
                detection_timeout,
                max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
                retry_budget: RetryBudget {
                    percent,
                    min_retries_per_second,
                },
            }),
            _ => Err(self.reported()),
        }
    }
}

#[cfg(test)]
mod tests;
