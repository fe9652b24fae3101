//! Values of the L7 keys: hostnames, header names and values, regular expressions, L7
//! durations (`100ms`, `2s`, `5m`, `1h`), optional numbers, and the limits of lists.

use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::{DURATION_UNITS, MAX_HEADER_VALUE_LEN, MAX_LONG_DURATION, MS};
use crate::config::checker::{Checker, ConfigError};
use crate::config::raw::Text;
use crate::config::scalars::{DurationText, clean, parse_duration, quote};

impl Checker<'_> {
    /// A lower-cased DNS name; `wildcard` allows a leading `*.`.
    pub(super) fn hostname(&self, raw: &Text, wildcard: bool) -> Result<String, ConfigError> {
        let host = raw.value.to_ascii_lowercase();
        let name = if wildcard {
            host.strip_prefix("*.").unwrap_or(&host)
        } else {
            &host
        };
        if host.len() <= 253 && is_dns_subdomain(name, 63) {
            return Ok(host);
        }
        let shape = if wildcard {
            "a DNS name such as web.example.com, optionally starting with `*.`"
        } else {
            "a DNS name such as web.example.com (no wildcard)"
        };
        Err(self.err(
            raw.referenced,
            format!("invalid hostname {}: expected {shape}", quote(&raw.value)),
        ))
    }

    /// A header name of HTTP token characters, lower-cased.
    pub(super) fn header_name(&self, raw: &Text) -> Result<String, ConfigError> {
        if is_token(&raw.value) {
            Ok(raw.value.to_ascii_lowercase())
        } else {
            Err(self.err(
                raw.referenced,
                format!("invalid header name {}: {TOKEN_RULE}", quote(&raw.value)),
            ))
        }
    }

    /// A header value the agent can send: no control characters other than tab.
    pub(super) fn header_value(&self, raw: &Text) -> Result<String, ConfigError> {
        let v = &raw.value;
        let why = if v.len() > MAX_HEADER_VALUE_LEN {
            Some("must be at most 4096 characters")
        } else if v.chars().any(|c| c.is_control() && c != '\t') {
            Some("must not contain control characters such as line breaks")
        } else {
            None
        };
        match why {
            Some(why) => Err(self.err(
                raw.referenced,
                format!("invalid header value {}: {why}", quote(v)),
            )),
            None => Ok(v.clone()),
        }
    }

    /// A regular expression that must compile, anchored as the matcher anchors it.
    pub(super) fn regex(&self, re: &str, at: Location, max_len: usize) -> Result<(), ConfigError> {
        let why = if re.len() > max_len {
            Some(format!("must be at most {max_len} characters"))
        } else {
            regex::Regex::new(re)
                .and_then(|_| regex::Regex::new(&format!("^(?:{re})$")))
                .err()
                .map(|e| {
                    // Syntax errors span several lines (the pattern, a caret, the reason);
                    // the reason is the last one.
                    let text = e.to_string();
                    let last = text.lines().last().unwrap_or_default().trim();
                    last.strip_prefix("error: ").unwrap_or(last).to_owned()
                })
        };
        match why {
            Some(why) => Err(self.err(
                at,
                format!("invalid regular expression {}: {}", quote(re), clean(&why)),
            )),
            None => Ok(()),
        }
    }

    /// An optional whole number in `0..=max` (at most `u32::MAX`), else `default`.
    pub(super) fn opt_u32(
        &self,
        raw: Option<&Text>,
        key: &str,
        max: u64,
        default: u32,
    ) -> Result<u32, ConfigError> {
        match raw {
            Some(raw) => Ok(u32::try_from(self.number(raw, key, 0, max)?).unwrap_or(u32::MAX)),
            None => Ok(default),
        }
    }

    /// A duration in `min..=max`: a whole number and a unit ms, s, m or h.
    pub(super) fn duration(
        &self,
        raw: &Text,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration_text(raw, key)?;
        match d {
            Some(d) if d >= min && d <= max => Ok(d),
            _ => Err(self.err(
                raw.referenced,
                format!(
                    "{key} {} is out of range {}..={}",
                    clean(raw.value.trim()),
                    show_duration(min),
                    show_duration(max)
                ),
            )),
        }
    }

    /// A route timeout: 1ms..=24h, or zero for none.
    pub(super) fn duration_or_zero(&self, raw: &Text, key: &str) -> Result<Duration, ConfigError> {
        match self.duration_text(raw, key)? {
            Some(d) if d.is_zero() || (MS..=MAX_LONG_DURATION).contains(&d) => Ok(d),
            _ => Err(self.err(
                raw.referenced,
                format!(
                    "{key} {} is out of range {}..={} (0s means no timeout)",
                    clean(raw.value.trim()),
                    show_duration(MS),
                    show_duration(MAX_LONG_DURATION)
                ),
            )),
        }
    }

    /// The duration written in `raw`; `None` when too large for any integer.
    fn duration_text(&self, raw: &Text, key: &str) -> Result<Option<Duration>, ConfigError> {
        match parse_duration(raw.value.trim(), DURATION_UNITS) {
            DurationText::Valid(d) => Ok(Some(d)),
            DurationText::TooLarge => Ok(None),
            DurationText::Invalid => Err(self.err(
                raw.referenced,
                format!(
                    "invalid {key} {}: expected a whole number and a unit ms, s, m or h, such as 100ms or 2s",
                    quote(&raw.value)
                ),
            )),
        }
    }

    /// Lists are limited; the first item over the limit is reported.
    pub(super) fn at_most<T>(
        &self,
        items: &[Spanned<T>],
        max: usize,
        what: &str,
        per: &str,
    ) -> Result<(), ConfigError> {
        match items.get(max) {
            Some(extra) => Err(self.err(
                extra.referenced,
                format!("too many {what}: at most {max} per {per}"),
            )),
            None => Ok(()),
        }
    }
}

/// Lower-case RFC 1123 labels (a-z, 0-9 and '-', starting and ending with a letter or digit,
/// at most `label_max` long) separated by '.', 253 characters at most.
pub(super) fn is_dns_subdomain(name: &str, label_max: usize) -> bool {
    let label = |l: &str| {
        let b = l.as_bytes();
        (1..=label_max).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b.first().is_some_and(|c| *c != b'-')
            && b.last().is_some_and(|c| *c != b'-')
    };
    (1..=253).contains(&name.len()) && name.split('.').all(label)
}

pub(super) const TOKEN_RULE: &str =
    "use 1 or more HTTP token characters (letters, digits and !#$%&'*+-.^_`|~)";

/// An HTTP token (RFC 9110): header names, and query parameter names by Gateway API's rule.
pub(super) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A duration as the bounds in messages show it: `1ms`, `60s`, `24h`.
pub(super) fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms <= 60_000 || !ms.is_multiple_of(60_000) {
        format!("{}s", ms / 1000)
    } else if ms <= 3_600_000 || !ms.is_multiple_of(3_600_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}h", ms / 3_600_000)
    }
}
