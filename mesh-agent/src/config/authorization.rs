//! The `authorization:` section: Istio-style AuthorizationPolicies (their L4 part) for
//! inbound mesh connections: the workloads a policy selects, whether it allows or denies, and
//! the peers (principals, namespaces) and ports its rules match. Policies read from the
//! Kubernetes API go through the same checks (`kubernetes::check_api_policy`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::checker::{Checker, ConfigError};
use super::raw::{Text, entries, null_as_empty};
use super::scalars::{line_of, quote};

/// An Istio-style AuthorizationPolicy (the L4 part) for inbound mesh
/// connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorizationPolicy {
    pub name: String,
    /// Unique together with `name`.
    pub namespace: String,
    /// matchLabels; None = every workload of the policy's namespace.
    pub selector: Option<BTreeMap<String, String>>,
    pub action: AuthzAction,
    pub rules: Vec<AuthzRule>,
}

/// What a policy does with the connections its rules match. Written `ALLOW`
/// or `DENY`, in any case.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AuthzAction {
    #[default]
    Allow,
    Deny,
}

/// Matches when one of `from` (or `from` is empty) and one of `to` (or `to`
/// is empty) match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthzRule {
    pub from: Vec<AuthzSource>,
    pub to: Vec<AuthzOperation>,
}

/// Who connects; every non-empty list must match. At least one list is
/// non-empty. Entries are exact values, `*`, `prefix*` or `*suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthzSource {
    /// Peer SPIFFE IDs without `spiffe://`: `<trust domain>/ns/<ns>/sa/<sa>`.
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    /// Peer namespaces.
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
}

/// Where the connection goes; every non-empty list must match. At least one
/// list is non-empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthzOperation {
    /// Destination (workload) ports.
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
}

/// Istio's AuthorizationPolicy spec (L4 part), hence the camelCase keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    name: Text,
    #[serde(default)]
    namespace: Option<Text>,
    #[serde(default)]
    selector: Option<RawSelector>,
    #[serde(default)]
    action: Option<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    rules: Vec<RawAuthzRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    #[serde(default, deserialize_with = "entries")]
    match_labels: Vec<(Text, Text)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthzRule {
    #[serde(default, deserialize_with = "null_as_empty")]
    from: Vec<RawFrom>,
    #[serde(default, deserialize_with = "null_as_empty")]
    to: Vec<RawTo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrom {
    /// `None`: present but null, reported like an empty source.
    source: Spanned<Option<RawSource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSource {
    #[serde(default, deserialize_with = "null_as_empty")]
    principals: Vec<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    not_principals: Vec<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    namespaces: Vec<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    not_namespaces: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTo {
    /// `None`: present but null, reported like an empty operation.
    operation: Spanned<Option<RawOperation>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOperation {
    #[serde(default, deserialize_with = "null_as_empty")]
    ports: Vec<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    not_ports: Vec<Text>,
}

impl Checker<'_> {
    /// Each policy is checked on its own; the valid ones are returned.
    pub(super) fn policies(
        &self,
        raws: Vec<RawPolicy>,
    ) -> Result<Vec<AuthorizationPolicy>, ConfigError> {
        let mut names: HashMap<(String, String), u64> = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let policy = self.policy(&raw, &mut names);
            out.extend(self.keep(policy));
        }
        Ok(out)
    }

    fn policy(
        &self,
        raw: &RawPolicy,
        names: &mut HashMap<(String, String), u64>,
    ) -> Result<AuthorizationPolicy, ConfigError> {
        let name = self.keep(self.object_name(&raw.name, "authorization policy name"));
        let namespace = self.keep(self.namespace(raw.namespace.as_ref()));
        if let (Some(name), Some(namespace)) = (&name, &namespace)
            && let Some(first) = names.insert((namespace.clone(), name.clone()), line_of(&raw.name))
        {
            self.keep::<()>(Err(self.err(
                raw.name.referenced,
                format!(
                    "duplicate authorization policy {} (first defined at line {first})",
                    quote(&format!("{namespace}/{name}"))
                ),
            )));
        }
        // An empty matchLabels selects every workload, like no selector:
        // one representation for both.
        let selector = match &raw.selector {
            Some(s) => self
                .keep(self.labels(&s.match_labels))
                .map(|m| Some(m).filter(|m| !m.is_empty())),
            None => Some(None),
        };
        let action = match &raw.action {
            Some(a) => self.keep(self.action(a)),
            None => Some(AuthzAction::default()),
        };
        let rules = self.keep(self.each(raw.rules.iter().map(|r| self.authz_rule(r))));
        match (name, namespace, selector, action, rules) {
            (Some(name), Some(namespace), Some(selector), Some(action), Some(rules)) => {
                Ok(AuthorizationPolicy {
                    name,
                    namespace,
                    selector,
                    action,
                    rules,
                })
            }
            _ => Err(self.reported()),
        }
    }

    fn action(&self, raw: &Text) -> Result<AuthzAction, ConfigError> {
        let v = raw.value.as_str();
        if v.eq_ignore_ascii_case("ALLOW") {
            Ok(AuthzAction::Allow)
        } else if v.eq_ignore_ascii_case("DENY") {
            Ok(AuthzAction::Deny)
        } else {
            Err(self.err(
                raw.referenced,
                format!("invalid action {}: expected ALLOW or DENY", quote(v)),
            ))
        }
    }

    fn authz_rule(&self, raw: &RawAuthzRule) -> Result<AuthzRule, ConfigError> {
        let from = self.keep(self.each(raw.from.iter().map(|f| {
            // An empty source would match every peer; like Istio, ask
            // for an explicit `*` instead.
            let source = f.source.value.as_ref().filter(|s| {
                !(s.principals.is_empty()
                    && s.not_principals.is_empty()
                    && s.namespaces.is_empty()
                    && s.not_namespaces.is_empty())
            });
            let Some(source) = source else {
                return Err(self.err(
                    f.source.referenced,
                    "empty `source`: set at least one of principals, notPrincipals, namespaces, notNamespaces".to_owned(),
                ));
            };
            let principals = self.keep(self.principals(&source.principals));
            let not_principals = self.keep(self.principals(&source.not_principals));
            let namespaces = self.keep(self.namespace_patterns(&source.namespaces));
            let not_namespaces = self.keep(self.namespace_patterns(&source.not_namespaces));
            match (principals, not_principals, namespaces, not_namespaces) {
                (Some(principals), Some(not_principals), Some(namespaces), Some(not_namespaces)) => {
                    Ok(AuthzSource {
                        principals,
                        not_principals,
                        namespaces,
                        not_namespaces,
                    })
                }
                _ => Err(self.reported()),
            }
        })));
        let to = self.keep(self.each(raw.to.iter().map(|t| {
            let operation = t
                .operation
                .value
                .as_ref()
                .filter(|o| !(o.ports.is_empty() && o.not_ports.is_empty()));
            let Some(operation) = operation else {
                return Err(self.err(
                    t.operation.referenced,
                    "empty `operation`: set at least one of ports, notPorts".to_owned(),
                ));
            };
            let ports = self.keep(self.ports(&operation.ports));
            let not_ports = self.keep(self.ports(&operation.not_ports));
            match (ports, not_ports) {
                (Some(ports), Some(not_ports)) => Ok(AuthzOperation { ports, not_ports }),
                _ => Err(self.reported()),
            }
        })));
        match (from, to) {
            (Some(from), Some(to)) => Ok(AuthzRule { from, to }),
            _ => Err(self.reported()),
        }
    }

    /// SPIFFE IDs as Istio writes principals: `TD/ns/NS/sa/SA`, with or
    /// without `spiffe://` (stored without), or a `*`, `prefix*` or
    /// `*suffix` pattern.
    fn principals(&self, raws: &[Text]) -> Result<Vec<String>, ConfigError> {
        self.each(raws.iter().map(|raw| {
                let v = raw.value.as_str();
                let id = v.strip_prefix("spiffe://").unwrap_or(v);
                let why = match pattern_problem(id) {
                    Some(why) => Some(why),
                    None if id.contains('*') => None,
                    None => {
                        let parts: Vec<&str> = id.split('/').collect();
                        let shaped = matches!(
                            parts.as_slice(),
                            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty()
                        );
                        (!shaped).then_some(
                            "expected TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT (spiffe:// optional), `*`, `prefix*` or `*suffix`",
                        )
                    }
                };
                match why {
                    Some(why) => Err(self.err(
                        raw.referenced,
                        format!("invalid principal {}: {why}", quote(v)),
                    )),
                    None => Ok(id.to_owned()),
                }
            }))
    }

    /// Namespace names, or a `*`, `prefix*` or `*suffix` pattern of them.
    fn namespace_patterns(&self, raws: &[Text]) -> Result<Vec<String>, ConfigError> {
        self.each(raws.iter().map(|raw| {
            let v = raw.value.as_str();
            let why = pattern_problem(v)
                .or_else(|| v.contains('/').then_some("a namespace contains no '/'"));
            match why {
                Some(why) => Err(self.err(
                    raw.referenced,
                    format!("invalid namespace {}: {why}", quote(v)),
                )),
                None => Ok(v.to_owned()),
            }
        }))
    }
}

/// Why `pattern` is not an Istio string match (exact, `*`, `prefix*` or
/// `*suffix`), if it is not one.
fn pattern_problem(pattern: &str) -> Option<&'static str> {
    if pattern.is_empty() {
        return Some("must not be empty");
    }
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("must not contain spaces or control characters");
    }
    let inner = pattern
        .strip_prefix('*')
        .or_else(|| pattern.strip_suffix('*'))
        .unwrap_or(pattern);
    if pattern != "*" && inner.contains('*') {
        return Some("'*' is allowed only alone, at the start or at the end");
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::config::fixture::{Fixture, with_node};

    #[test]
    fn bad_authorization_policies() {
        let fx = Fixture::new();
        let rule = |body: &str| {
            with_node(&format!(
                "authorization:\n  - name: p\n    rules:\n      - from:\n          - source:\n{body}"
            ))
        };
        let e = fx.fails(
            &rule("              principals: ['cluster.local/ns/*/sa/a']\n"),
            9,
            "invalid principal `cluster.local/ns/*/sa/a`: '*' is allowed only alone, at the start or at the end",
        );
        assert_eq!(e.column(), Some(28));
        // Every bad entry of a list is reported.
        let shown = fx
            .parse(&rule(
                "              principals: ['ns/x/sa/y', 'default/sa/web']\n",
            ))
            .expect_err("two bad principals")
            .to_string();
        let why = "expected TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT (spiffe:// optional), `*`, `prefix*` or `*suffix`";
        assert_eq!(
            shown,
            format!(
                "test.yaml:9:28: invalid principal `ns/x/sa/y`: {why}\ntest.yaml:9:41: invalid principal `default/sa/web`: {why}"
            )
        );
        fx.fails(
            &rule("              notPrincipals: ['']\n"),
            9,
            "invalid principal ``: must not be empty",
        );
        fx.fails(
            &rule("              principals: ['spiffe://']\n"),
            9,
            "must not be empty",
        );
        fx.fails(
            &rule("              principals: ['**']\n"),
            9,
            "'*' is allowed only",
        );
        fx.fails(
            &rule("              namespaces: ['a*b']\n"),
            9,
            "invalid namespace `a*b`: '*' is allowed only",
        );
        fx.fails(
            &rule("              notNamespaces: ['a/b']\n"),
            9,
            "invalid namespace `a/b`",
        );
        fx.fails(
            &rule("              ipBlocks: [10.0.0.0/8]\n"),
            9,
            "unknown field `ipBlocks`",
        );

        // Empty source items: no field, only empty lists, or null.
        let empty = "empty `source`: set at least one of principals, notPrincipals, namespaces, notNamespaces";
        let e = fx.fails(
            &with_node(
                "authorization:\n  - name: p\n    rules:\n      - from:\n          - source: {}\n",
            ),
            8,
            empty,
        );
        assert_eq!(e.column(), Some(21));
        // A block mapping is located at its first key.
        fx.fails(&rule("              principals: []\n"), 9, empty);
        fx.fails(
            &with_node(
                "authorization:\n  - name: p\n    rules:\n      - from:\n          - source:\n",
            ),
            8,
            empty,
        );
        fx.fails(
            &with_node(
                "authorization:\n  - name: p\n    rules:\n      - to:\n          - operation: {}\n",
            ),
            8,
            "empty `operation`: set at least one of ports, notPorts",
        );
        fx.fails(
            &with_node("authorization:\n  - name: p\n    rules:\n      - from:\n          - {}\n"),
            8,
            "missing field `source`",
        );

        let op = |body: &str| {
            with_node(&format!(
                "authorization:\n  - name: p\n    rules:\n      - to:\n          - operation:\n{body}"
            ))
        };
        let e = fx.fails(
            &op("              ports: ['8080', 'http']\n"),
            9,
            "invalid port `http`: expected a number in 1..=65535",
        );
        assert_eq!(e.column(), Some(31));
        fx.fails(
            &op("              notPorts: ['0']\n"),
            9,
            "port 0 is out of range",
        );
        fx.fails(
            &op("              notPorts: [65536]\n"),
            9,
            "port 65536 is out of range",
        );
        fx.fails(
            &op("              methods: [GET]\n"),
            9,
            "unknown field `methods`",
        );

        fx.fails(
            &with_node("authorization:\n  - name: p\n    action: AUDIT\n"),
            6,
            "invalid action `AUDIT`: expected ALLOW or DENY",
        );
        fx.fails(
            &with_node(
                "authorization:\n  - name: p\n  - name: q\n  - name: p\n    namespace: default\n",
            ),
            7,
            "duplicate authorization policy `default/p` (first defined at line 5)",
        );
        fx.fails(
            &with_node("authorization:\n  - name: 'a b'\n"),
            5,
            "invalid authorization policy name",
        );
    }
}
