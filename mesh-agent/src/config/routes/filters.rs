//! The `filters:` of a rule: request and response header modifiers, URL rewrites, redirects
//! and request mirrors (GRPCRoute rules take the header modifiers and mirrors only).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use super::backends::BackendFields;
use super::matches::path_problem;
use super::{
    BackendRef, MAX_FILTERS, MAX_FRACTION, MAX_MODIFIED_HEADERS, REDIRECT_CODES, RouteKind, Scope,
};
use crate::config::checker::{Checker, ConfigError};
use crate::config::raw::{Text, null_as_empty};
use crate::config::scalars::{line_of, quote};

/// `RequestHeaderModifier` / `ResponseHeaderModifier`: names lower-cased.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Only valid on rules whose matches are all PathPrefix (Gateway API rule).
    ReplacePrefixMatch(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRedirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301, 302 (default, as in Gateway API), 303, 307 or 308.
    pub status_code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestMirror {
    /// `weight` is unused here.
    pub backend: BackendRef,
    /// Share of requests mirrored, as numerator / denominator: `percent: 10` is 10/100,
    /// `fraction: {numerator: 1, denominator: 1000}` is 1/1000; default 100/100.
    pub numerator: u32,
    pub denominator: u32,
}

/// Gateway API filters. GRPCRoute rules accept only the header modifiers and RequestMirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum HttpFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    #[serde(rename = "URLRewrite")]
    UrlRewrite(UrlRewrite),
    RequestRedirect(RequestRedirect),
    RequestMirror(RequestMirror),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawFilter {
    #[serde(rename = "type")]
    kind: Text,
    #[serde(default)]
    request_header_modifier: Option<Spanned<RawHeaderModifier>>,
    #[serde(default)]
    response_header_modifier: Option<Spanned<RawHeaderModifier>>,
    #[serde(default)]
    url_rewrite: Option<Spanned<RawUrlRewrite>>,
    #[serde(default)]
    request_redirect: Option<Spanned<RawRedirect>>,
    #[serde(default)]
    request_mirror: Option<Spanned<RawMirror>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderModifier {
    #[serde(default, deserialize_with = "null_as_empty")]
    set: Vec<Spanned<RawHeaderValue>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    add: Vec<Spanned<RawHeaderValue>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    remove: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderValue {
    name: Text,
    value: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUrlRewrite {
    #[serde(default)]
    hostname: Option<Text>,
    #[serde(default)]
    path: Option<Spanned<RawPathModifier>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPathModifier {
    #[serde(rename = "type")]
    kind: Text,
    #[serde(default)]
    replace_full_path: Option<Text>,
    #[serde(default)]
    replace_prefix_match: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRedirect {
    #[serde(default)]
    scheme: Option<Text>,
    #[serde(default)]
    hostname: Option<Text>,
    #[serde(default)]
    path: Option<Spanned<RawPathModifier>>,
    #[serde(default)]
    port: Option<Text>,
    #[serde(default)]
    status_code: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawMirror {
    backend_ref: Spanned<RawObjectRef>,
    #[serde(default)]
    percent: Option<Text>,
    #[serde(default)]
    fraction: Option<Spanned<RawFraction>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFraction {
    numerator: Text,
    #[serde(default)]
    denominator: Option<Text>,
}

/// Gateway API's BackendObjectReference (the mirror's `backendRef`: no weight).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObjectRef {
    name: Text,
    #[serde(default)]
    namespace: Option<Text>,
    #[serde(default)]
    kind: Option<Text>,
    #[serde(default)]
    group: Option<Text>,
    #[serde(default)]
    port: Option<Text>,
}

/// The filter types, with the key that holds each one's configuration.
const FILTER_TYPES: [(&str, &str); 5] = [
    ("RequestHeaderModifier", "requestHeaderModifier"),
    ("ResponseHeaderModifier", "responseHeaderModifier"),
    ("URLRewrite", "urlRewrite"),
    ("RequestRedirect", "requestRedirect"),
    ("RequestMirror", "requestMirror"),
];
const URL_REWRITE: usize = 2;
const REQUEST_REDIRECT: usize = 3;
const REQUEST_MIRROR: usize = 4;

impl Checker<'_> {
    /// A rule's filters, and whether one of them is a RequestRedirect. `all_prefix`: every
    /// match of the rule is a PathPrefix match (ReplacePrefixMatch needs it).
    pub(super) fn filters(
        &self,
        raws: &[Spanned<RawFilter>],
        kind: RouteKind,
        all_prefix: bool,
        scope: &Scope,
    ) -> Result<(Vec<HttpFilter>, bool), ConfigError> {
        self.at_most(raws, MAX_FILTERS, "filters", "rule")?;
        // Line of the first filter of each type, for "at most once" and exclusions.
        let mut first: [Option<u64>; 5] = [None; 5];
        let allowed: &[usize] = match kind {
            RouteKind::Http => &[0, 1, URL_REWRITE, REQUEST_REDIRECT, REQUEST_MIRROR],
            RouteKind::Grpc => &[0, 1, REQUEST_MIRROR],
        };
        let list = |indices: &[usize]| {
            let names: Vec<&str> = indices
                .iter()
                .filter_map(|&i| FILTER_TYPES.get(i).map(|t| t.0))
                .collect();
            match names.split_last() {
                Some((last, rest)) if !rest.is_empty() => {
                    format!("{} or {last}", rest.join(", "))
                }
                _ => names.join(""),
            }
        };
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let f = &raw.value;
            let index = FILTER_TYPES.iter().position(|(t, _)| *t == f.kind.value);
            let index = match index {
                Some(i) if allowed.contains(&i) => i,
                Some(_) => {
                    return Err(self.err(
                        f.kind.referenced,
                        format!(
                            "filter type {} is not supported on {} rules: expected {}",
                            quote(&f.kind.value),
                            kind.name(),
                            list(allowed)
                        ),
                    ));
                }
                None => {
                    return Err(self.err(
                        f.kind.referenced,
                        format!(
                            "invalid filter type {}: expected {}",
                            quote(&f.kind.value),
                            list(allowed)
                        ),
                    ));
                }
            };
            let (type_name, key) = FILTER_TYPES[index];
            let configs: [Option<Location>; 5] = [
                f.request_header_modifier.as_ref().map(|c| c.referenced),
                f.response_header_modifier.as_ref().map(|c| c.referenced),
                f.url_rewrite.as_ref().map(|c| c.referenced),
                f.request_redirect.as_ref().map(|c| c.referenced),
                f.request_mirror.as_ref().map(|c| c.referenced),
            ];
            if configs[index].is_none() {
                return Err(self.err(
                    f.kind.referenced,
                    format!("a filter of type {type_name} requires `{key}`"),
                ));
            }
            for (i, config) in configs.iter().enumerate() {
                if let Some(at) = config
                    && i != index
                {
                    return Err(self.err(
                        *at,
                        format!(
                            "`{}` does not belong in a filter of type {type_name}",
                            FILTER_TYPES[i].1
                        ),
                    ));
                }
            }
            if index != REQUEST_MIRROR
                && let Some(line) = first[index]
            {
                return Err(self.err(
                    f.kind.referenced,
                    format!("{type_name} may be used at most once per rule (first at line {line})"),
                ));
            }
            let other = match index {
                URL_REWRITE => Some(REQUEST_REDIRECT),
                REQUEST_REDIRECT => Some(URL_REWRITE),
                _ => None,
            };
            if let Some(other) = other
                && let Some(line) = first[other]
            {
                return Err(self.err(
                    f.kind.referenced,
                    format!(
                        "a rule cannot have both URLRewrite and RequestRedirect filters ({} at line {line})",
                        FILTER_TYPES[other].0
                    ),
                ));
            }
            if first[index].is_none() {
                first[index] = Some(line_of(&f.kind));
            }

            // Present, as checked above; the error keeps this free of panics.
            let missing = || {
                self.err(
                    f.kind.referenced,
                    format!("a filter of type {type_name} requires `{key}`"),
                )
            };
            let filter = match index {
                0 => HttpFilter::RequestHeaderModifier(self.header_modifier(
                    f.request_header_modifier.as_ref().ok_or_else(missing)?,
                    key,
                )?),
                1 => HttpFilter::ResponseHeaderModifier(self.header_modifier(
                    f.response_header_modifier.as_ref().ok_or_else(missing)?,
                    key,
                )?),
                URL_REWRITE => HttpFilter::UrlRewrite(self.url_rewrite(
                    &f.url_rewrite.as_ref().ok_or_else(missing)?.value,
                    all_prefix,
                )?),
                REQUEST_REDIRECT => HttpFilter::RequestRedirect(self.redirect(
                    &f.request_redirect.as_ref().ok_or_else(missing)?.value,
                    all_prefix,
                )?),
                _ => HttpFilter::RequestMirror(
                    self.mirror(&f.request_mirror.as_ref().ok_or_else(missing)?.value, scope)?,
                ),
            };
            out.push(filter);
        }
        Ok((out, first[REQUEST_REDIRECT].is_some()))
    }

    fn header_modifier(
        &self,
        raw: &Spanned<RawHeaderModifier>,
        key: &str,
    ) -> Result<HeaderModifier, ConfigError> {
        let m = &raw.value;
        self.at_most(&m.set, MAX_MODIFIED_HEADERS, "headers in `set`", key)?;
        self.at_most(&m.add, MAX_MODIFIED_HEADERS, "headers in `add`", key)?;
        self.at_most(&m.remove, MAX_MODIFIED_HEADERS, "headers in `remove`", key)?;
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut check = |raw: &Text| -> Result<String, ConfigError> {
            let name = self.header_name(raw)?;
            if let Some(first) = seen.insert(name.clone(), line_of(raw)) {
                return Err(self.err(
                    raw.referenced,
                    format!(
                        "header {} appears more than once in {key} (set, add and remove together; first at line {first})",
                        quote(&name)
                    ),
                ));
            }
            Ok(name)
        };
        let mut pairs = |list: &[Spanned<RawHeaderValue>]| {
            list.iter()
                .map(|h| {
                    let name = check(&h.value.name)?;
                    Ok((name, self.header_value(&h.value.value)?))
                })
                .collect::<Result<Vec<_>, ConfigError>>()
        };
        let set = pairs(&m.set)?;
        let add = pairs(&m.add)?;
        let remove = m
            .remove
            .iter()
            .map(&mut check)
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(HeaderModifier { set, add, remove })
    }

    fn url_rewrite(
        &self,
        raw: &RawUrlRewrite,
        all_prefix: bool,
    ) -> Result<UrlRewrite, ConfigError> {
        Ok(UrlRewrite {
            hostname: match &raw.hostname {
                Some(h) => Some(self.hostname(h, false)?),
                None => None,
            },
            path: match &raw.path {
                Some(p) => Some(self.path_modifier(p, all_prefix)?),
                None => None,
            },
        })
    }

    fn redirect(
        &self,
        raw: &RawRedirect,
        all_prefix: bool,
    ) -> Result<RequestRedirect, ConfigError> {
        let scheme = match &raw.scheme {
            Some(s) => {
                let lower = s.value.to_ascii_lowercase();
                if lower != "http" && lower != "https" {
                    return Err(self.err(
                        s.referenced,
                        format!("invalid scheme {}: expected http or https", quote(&s.value)),
                    ));
                }
                Some(lower)
            }
            None => None,
        };
        let status_code = match &raw.status_code {
            Some(c) => {
                let code = c.value.trim().parse::<u16>().ok();
                match code.filter(|c| REDIRECT_CODES.contains(c)) {
                    Some(code) => code,
                    None => {
                        return Err(self.err(
                            c.referenced,
                            format!(
                                "invalid redirect statusCode {}: expected 301, 302, 303, 307 or 308",
                                quote(&c.value)
                            ),
                        ));
                    }
                }
            }
            None => 302,
        };
        Ok(RequestRedirect {
            scheme,
            hostname: match &raw.hostname {
                Some(h) => Some(self.hostname(h, false)?),
                None => None,
            },
            path: match &raw.path {
                Some(p) => Some(self.path_modifier(p, all_prefix)?),
                None => None,
            },
            port: match &raw.port {
                Some(p) => Some(self.port(p)?),
                None => None,
            },
            status_code,
        })
    }

    fn path_modifier(
        &self,
        raw: &Spanned<RawPathModifier>,
        all_prefix: bool,
    ) -> Result<PathModifier, ConfigError> {
        let m = &raw.value;
        let (full, prefix) = (&m.replace_full_path, &m.replace_prefix_match);
        let (value, misplaced, key) = match m.kind.value.as_str() {
            "ReplaceFullPath" => (full, prefix, "replaceFullPath"),
            "ReplacePrefixMatch" => (prefix, full, "replacePrefixMatch"),
            other => {
                return Err(self.err(
                    m.kind.referenced,
                    format!(
                        "invalid path modifier type {}: expected ReplaceFullPath or ReplacePrefixMatch",
                        quote(other)
                    ),
                ));
            }
        };
        let kind = &m.kind.value;
        let Some(value) = value else {
            return Err(self.err(
                m.kind.referenced,
                format!("a path modifier of type {kind} requires `{key}`"),
            ));
        };
        if let Some(other) = misplaced {
            let other_key = if key == "replaceFullPath" {
                "replacePrefixMatch"
            } else {
                "replaceFullPath"
            };
            return Err(self.err(
                other.referenced,
                format!("`{other_key}` does not belong in a path modifier of type {kind}"),
            ));
        }
        if let Some(why) = path_problem(&value.value) {
            return Err(self.err(
                value.referenced,
                format!("invalid {key} {}: {why}", quote(&value.value)),
            ));
        }
        if key == "replaceFullPath" {
            return Ok(PathModifier::ReplaceFullPath(value.value.clone()));
        }
        if !all_prefix {
            return Err(self.err(
                m.kind.referenced,
                "ReplacePrefixMatch is only allowed when every match of the rule is a PathPrefix match".to_owned(),
            ));
        }
        Ok(PathModifier::ReplacePrefixMatch(value.value.clone()))
    }

    fn mirror(&self, raw: &RawMirror, scope: &Scope) -> Result<RequestMirror, ConfigError> {
        let r = &raw.backend_ref;
        let backend = self.backend(
            &BackendFields {
                at: r.referenced,
                name: &r.value.name,
                namespace: r.value.namespace.as_ref(),
                kind: r.value.kind.as_ref(),
                group: r.value.group.as_ref(),
                port: r.value.port.as_ref(),
            },
            1,
            scope,
        )?;
        let (numerator, denominator) = match (&raw.percent, &raw.fraction) {
            (Some(_), Some(f)) => {
                return Err(self.err(
                    f.referenced,
                    "set either `percent` or `fraction` in requestMirror, not both".to_owned(),
                ));
            }
            (Some(p), None) => (self.number(p, "percent", 0, 100)?, 100),
            (None, Some(f)) => {
                let max = MAX_FRACTION;
                let numerator = self.number(&f.value.numerator, "numerator", 0, max)?;
                let denominator = match &f.value.denominator {
                    Some(d) => self.number(d, "denominator", 1, max)?,
                    None => 100,
                };
                if numerator > denominator {
                    return Err(self.err(
                        f.value.numerator.referenced,
                        format!(
                            "fraction numerator {numerator} is larger than its denominator {denominator}"
                        ),
                    ));
                }
                (numerator, denominator)
            }
            (None, None) => (100, 100),
        };
        Ok(RequestMirror {
            backend,
            numerator: u32::try_from(numerator).unwrap_or(u32::MAX),
            denominator: u32::try_from(denominator).unwrap_or(u32::MAX),
        })
    }
}

#[cfg(test)]
mod tests;
