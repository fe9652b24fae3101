//! A rule's `timeouts:` (the whole request, and each attempt to a backend) and `retry:`
//! (how many attempts, the backoff between them, which responses and failures are retried).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::scalars::show_duration;
use super::{DEFAULT_BACKOFF, MAX_BACKOFF, MAX_RETRY_ATTEMPTS, MS};
use crate::config::checker::{Checker, ConfigError};
use crate::config::raw::{Text, null_as_empty};
use crate::config::scalars::serialize_duration;

/// `timeouts:` of a rule; `0s` in the file (Gateway API's "no timeout") becomes `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteTimeouts {
    /// The whole request including retries; on expiry the client gets 504.
    pub request: Option<Duration>,
    /// Each attempt to a backend (the per-try timeout).
    pub backend_request: Option<Duration>,
}

/// `retry:` of a rule (Gateway API GEP-1731 fields, plus two extensions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt (Gateway API `attempts`; default 1).
    pub attempts: u32,
    /// Base of the exponential backoff with full jitter between attempts (default 25ms); the
    /// n-th retry waits a random time in [0, backoff * 2^(n-1)], capped at 10 * backoff.
    #[serde(serialize_with = "serialize_duration")]
    pub backoff: Duration,
    /// Response codes (400-599) that are retried (default: none).
    pub codes: Vec<u16>,
    /// Extension `connectFailure` (default true): retry when no connection could be made.
    pub connect_failure: bool,
    /// Extension `reset` (default true): retry when the backend reset or closed the stream
    /// before responding.
    pub reset: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTimeouts {
    #[serde(default)]
    request: Option<Text>,
    #[serde(default)]
    backend_request: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRetry {
    #[serde(default)]
    attempts: Option<Text>,
    #[serde(default)]
    backoff: Option<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    codes: Vec<Text>,
    #[serde(default)]
    connect_failure: Option<bool>,
    #[serde(default)]
    reset: Option<bool>,
}

impl Checker<'_> {
    pub(super) fn timeouts(&self, raw: Option<&RawTimeouts>) -> Result<RouteTimeouts, ConfigError> {
        let Some(raw) = raw else {
            return Ok(RouteTimeouts::default());
        };
        let timeout = |t: &Option<Text>, key: &str| match t {
            Some(t) => {
                let d = self.duration_or_zero(t, key)?;
                Ok::<_, ConfigError>(Some(d).filter(|d| !d.is_zero()))
            }
            None => Ok(None),
        };
        let request = timeout(&raw.request, "request")?;
        let backend_request = timeout(&raw.backend_request, "backendRequest")?;
        if let (Some(r), Some(b), Some(raw_b)) = (request, backend_request, &raw.backend_request)
            && b > r
        {
            return Err(self.err(
                raw_b.referenced,
                format!(
                    "backendRequest {} is longer than the request timeout {}",
                    show_duration(b),
                    show_duration(r)
                ),
            ));
        }
        Ok(RouteTimeouts {
            request,
            backend_request,
        })
    }

    pub(super) fn retry(&self, raw: Option<&RawRetry>) -> Result<Option<RetryPolicy>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let attempts = self.opt_u32(raw.attempts.as_ref(), "attempts", MAX_RETRY_ATTEMPTS, 1)?;
        let backoff = match &raw.backoff {
            Some(b) => self.duration(b, "backoff", MS, MAX_BACKOFF)?,
            None => DEFAULT_BACKOFF,
        };
        let mut codes: Vec<u16> = Vec::with_capacity(raw.codes.len());
        for raw_code in &raw.codes {
            let code = self.number(raw_code, "retry code", 400, 599)?;
            let code = u16::try_from(code).unwrap_or(u16::MAX);
            if codes.contains(&code) {
                return Err(self.err(raw_code.referenced, format!("duplicate retry code {code}")));
            }
            codes.push(code);
        }
        Ok(Some(RetryPolicy {
            attempts,
            backoff,
            codes,
            connect_failure: raw.connect_failure.unwrap_or(true),
            reset: raw.reset.unwrap_or(true),
        }))
    }
}

#[cfg(test)]
mod tests;
