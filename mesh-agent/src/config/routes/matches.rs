//! The `matches:` of a rule: HTTPRoute path, header, query parameter and method matches, and
//! GRPCRoute method and header matches.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::scalars::{TOKEN_RULE, is_token};
use super::{MAX_HEADER_VALUE_LEN, MAX_PATH_LEN, MAX_VALUE_MATCHES, METHODS};
use crate::config::checker::{Checker, ConfigError};
use crate::config::raw::{Text, null_as_empty};
use crate::config::scalars::{line_of, quote};

/// `Exact` (case-sensitive) or `RegularExpression` (Rust `regex` syntax, RE2-like, matched
/// against the whole value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum StringMatch {
    Exact(String),
    RegularExpression(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    Exact(String),
    /// Matches on `/`-separated segment boundaries: `/foo` matches `/foo` and `/foo/bar`, not
    /// `/foobar`. A trailing `/` in the value is ignored.
    PathPrefix(String),
    RegularExpression(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// Lower-cased (header names are case-insensitive).
    pub name: String,
    pub value: StringMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryParamMatch {
    /// Case-sensitive, as in Gateway API.
    pub name: String,
    pub value: StringMatch,
}

/// One entry of `matches`: every present condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRouteMatch {
    /// Absent in the file means `PathPrefix /`; the checker fills that in.
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query_params: Vec<QueryParamMatch>,
    /// Upper-case method name (GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH).
    pub method: Option<String>,
}

/// GRPCRoute `method:`; at least one of service and method is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    pub regex: bool,
    pub service: Option<String>,
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcRouteMatch {
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(in crate::config) struct RawHttpMatch {
    #[serde(default)]
    path: Option<Spanned<RawPathMatch>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    headers: Vec<Spanned<RawValueMatch>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    query_params: Vec<Spanned<RawValueMatch>>,
    #[serde(default)]
    method: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPathMatch {
    #[serde(default, rename = "type")]
    kind: Option<Text>,
    #[serde(default)]
    value: Option<Text>,
}

/// A header or query parameter match.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawValueMatch {
    #[serde(default, rename = "type")]
    kind: Option<Text>,
    name: Text,
    value: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawGrpcMatch {
    #[serde(default)]
    pub(super) method: Option<Spanned<RawGrpcMethod>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub(super) headers: Vec<Spanned<RawValueMatch>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrpcMethod {
    #[serde(default, rename = "type")]
    kind: Option<Text>,
    #[serde(default)]
    service: Option<Text>,
    #[serde(default)]
    method: Option<Text>,
}

impl Checker<'_> {
    pub(super) fn http_match(
        &self,
        raw: &Spanned<RawHttpMatch>,
    ) -> Result<HttpRouteMatch, ConfigError> {
        let m = &raw.value;
        let path = match &m.path {
            Some(p) => self.path_match(p)?,
            None => PathMatch::PathPrefix("/".to_owned()),
        };
        let headers = self.header_matches(&m.headers)?;
        let query_params = self
            .value_matches(&m.query_params, ValueKind::QueryParam)?
            .into_iter()
            .map(|(name, value)| QueryParamMatch { name, value })
            .collect();
        let method = match &m.method {
            Some(raw) if METHODS.contains(&raw.value.as_str()) => Some(raw.value.clone()),
            Some(raw) => {
                return Err(self.err(
                    raw.referenced,
                    format!(
                        "invalid method {}: expected one of {}",
                        quote(&raw.value),
                        METHODS.join(", ")
                    ),
                ));
            }
            None => None,
        };
        Ok(HttpRouteMatch {
            path,
            headers,
            query_params,
            method,
        })
    }

    fn path_match(&self, raw: &Spanned<RawPathMatch>) -> Result<PathMatch, ConfigError> {
        let (value, at) = match &raw.value.value {
            Some(v) => (v.value.clone(), v.referenced),
            None => ("/".to_owned(), raw.referenced),
        };
        let kind = raw.value.kind.as_ref();
        match kind.map(|k| k.value.as_str()) {
            None | Some("PathPrefix") | Some("Exact") => {
                if let Some(why) = path_problem(&value) {
                    return Err(self.err(at, format!("invalid path {}: {why}", quote(&value))));
                }
                Ok(if kind.is_some_and(|k| k.value == "Exact") {
                    PathMatch::Exact(value)
                } else {
                    PathMatch::PathPrefix(value)
                })
            }
            Some("RegularExpression") => {
                self.regex(&value, at, MAX_PATH_LEN)?;
                Ok(PathMatch::RegularExpression(value))
            }
            Some(other) => Err(self.err(
                kind.map_or(raw.referenced, |k| k.referenced),
                format!(
                    "invalid path match type {}: expected Exact, PathPrefix or RegularExpression",
                    quote(other)
                ),
            )),
        }
    }

    pub(super) fn header_matches(
        &self,
        raws: &[Spanned<RawValueMatch>],
    ) -> Result<Vec<HeaderMatch>, ConfigError> {
        Ok(self
            .value_matches(raws, ValueKind::Header)?
            .into_iter()
            .map(|(name, value)| HeaderMatch { name, value })
            .collect())
    }

    /// Header or query parameter matches: names, types, values, no duplicate names.
    fn value_matches(
        &self,
        raws: &[Spanned<RawValueMatch>],
        what: ValueKind,
    ) -> Result<Vec<(String, StringMatch)>, ConfigError> {
        let (list, noun) = match what {
            ValueKind::Header => ("header matches", "header"),
            ValueKind::QueryParam => ("query parameter matches", "query parameter"),
        };
        self.at_most(raws, MAX_VALUE_MATCHES, list, "match")?;
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let m = &raw.value;
            let name = match what {
                ValueKind::Header => self.header_name(&m.name)?,
                ValueKind::QueryParam => {
                    if !is_token(&m.name.value) {
                        return Err(self.err(
                            m.name.referenced,
                            format!(
                                "invalid query parameter name {}: {TOKEN_RULE}",
                                quote(&m.name.value)
                            ),
                        ));
                    }
                    m.name.value.clone()
                }
            };
            if let Some(first) = seen.insert(name.clone(), line_of(&m.name)) {
                let case = match what {
                    ValueKind::Header => " (header names are case-insensitive)",
                    ValueKind::QueryParam => "",
                };
                return Err(self.err(
                    m.name.referenced,
                    format!(
                        "duplicate {noun} match {}{case} (first at line {first})",
                        quote(&name)
                    ),
                ));
            }
            let value = &m.value.value;
            if !(1..=MAX_HEADER_VALUE_LEN).contains(&value.len()) {
                return Err(self.err(
                    m.value.referenced,
                    format!(
                        "the value of a {noun} match must be 1 to {MAX_HEADER_VALUE_LEN} characters"
                    ),
                ));
            }
            let value = match m.kind.as_ref().map(|k| (k, k.value.as_str())) {
                None | Some((_, "Exact")) => StringMatch::Exact(value.clone()),
                Some((_, "RegularExpression")) => {
                    self.regex(value, m.value.referenced, MAX_HEADER_VALUE_LEN)?;
                    StringMatch::RegularExpression(value.clone())
                }
                Some((k, other)) => {
                    return Err(self.err(
                        k.referenced,
                        format!(
                            "invalid {noun} match type {}: expected Exact or RegularExpression",
                            quote(other)
                        ),
                    ));
                }
            };
            out.push((name, value));
        }
        Ok(out)
    }

    pub(super) fn grpc_method(
        &self,
        raw: &Spanned<RawGrpcMethod>,
    ) -> Result<GrpcMethodMatch, ConfigError> {
        let m = &raw.value;
        let regex = match m.kind.as_ref().map(|k| (k, k.value.as_str())) {
            None | Some((_, "Exact")) => false,
            Some((_, "RegularExpression")) => true,
            Some((k, other)) => {
                return Err(self.err(
                    k.referenced,
                    format!(
                        "invalid method match type {}: expected Exact or RegularExpression",
                        quote(other)
                    ),
                ));
            }
        };
        if m.service.is_none() && m.method.is_none() {
            return Err(self.err(
                raw.referenced,
                "a gRPC method match needs `service`, `method` or both".to_owned(),
            ));
        }
        if let Some(service) = &m.service {
            if regex {
                self.regex(&service.value, service.referenced, MAX_PATH_LEN)?;
            } else if !is_grpc_service(&service.value) {
                return Err(self.err(
                    service.referenced,
                    format!(
                        "invalid gRPC service {}: expected identifiers ([A-Za-z_][A-Za-z0-9_]*) separated by '.', such as helloworld.Greeter",
                        quote(&service.value)
                    ),
                ));
            }
        }
        if let Some(method) = &m.method {
            if regex {
                self.regex(&method.value, method.referenced, MAX_PATH_LEN)?;
            } else if !is_identifier(&method.value) {
                return Err(self.err(
                    method.referenced,
                    format!(
                        "invalid gRPC method {}: expected an identifier ([A-Za-z_][A-Za-z0-9_]*), such as SayHello",
                        quote(&method.value)
                    ),
                ));
            }
        }
        Ok(GrpcMethodMatch {
            regex,
            service: m.service.as_ref().map(|s| s.value.clone()),
            method: m.method.as_ref().map(|s| s.value.clone()),
        })
    }
}

#[derive(Clone, Copy)]
enum ValueKind {
    Header,
    QueryParam,
}

fn is_identifier(name: &str) -> bool {
    let b = name.as_bytes();
    b.first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn is_grpc_service(name: &str) -> bool {
    name.split('.').all(is_identifier)
}

/// Why `path` is not a path Gateway API accepts in a match or as a replacement, if it is not.
pub(super) fn path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("must start with '/'")
    } else if path.len() > MAX_PATH_LEN {
        Some("must be at most 1024 characters")
    } else if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain spaces or control characters")
    } else if path.contains("//") {
        Some("must not contain '//'")
    } else if path.contains("/./")
        || path.contains("/../")
        || path.ends_with("/.")
        || path.ends_with("/..")
    {
        Some("must not contain '.' or '..' segments")
    } else if path.to_ascii_lowercase().contains("%2f") {
        Some("must not contain an encoded '/' (%2f)")
    } else if path.contains('#') {
        Some("must not contain '#'")
    } else if path.contains('?') {
        Some("must not contain '?' (match query parameters with queryParams)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
