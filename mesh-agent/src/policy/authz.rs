//! Authorization of inbound mesh connections with the semantics of Istio's
//! AuthorizationPolicy (L4 part): policies of the workload's namespace whose selector matches
//! its labels apply (policies in the root namespace `mesh-system` apply to every workload);
//! any matching DENY rule denies; if no ALLOW policy applies the connection is allowed;
//! otherwise some ALLOW rule must match. An ALLOW policy without rules allows nothing.

use serde::Serialize;

use crate::{
    config::{AuthorizationPolicy, AuthzAction, AuthzOperation, AuthzRule, AuthzSource},
    identity::SpiffeId,
    state::WorkloadState,
};

/// Policies in this namespace apply mesh-wide (Istio's root namespace, istio-system).
pub const ROOT_NAMESPACE: &str = "mesh-system";

/// The outcome, with the policy that decided it for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// No ALLOW policy selects the workload and no DENY rule matched.
    AllowNoPolicy,
    Allow {
        policy: String,
    },
    Deny {
        policy: String,
    },
    /// ALLOW policies select the workload but none of their rules matched.
    DenyNoAllowMatch,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::AllowNoPolicy | Decision::Allow { .. })
    }
}

/// What is known about an inbound connection when it is authorized.
pub struct Request<'a> {
    pub peer: &'a SpiffeId,
    pub port: u16,
}

pub fn evaluate(
    policies: &[AuthorizationPolicy],
    workload: &WorkloadState,
    request: &Request,
) -> Decision {
    let applicable = policies.iter().filter(|p| applies_to(p, workload));
    let mut any_allow_policy = false;
    let mut allowed_by = None;
    for policy in applicable {
        let matched = policy.rules.iter().any(|r| rule_matches(r, request));
        match policy.action {
            AuthzAction::Deny if matched => {
                return Decision::Deny {
                    policy: policy_name(policy),
                };
            }
            AuthzAction::Deny => {}
            AuthzAction::Allow => {
                any_allow_policy = true;
                if matched && allowed_by.is_none() {
                    allowed_by = Some(policy_name(policy));
                }
            }
        }
    }
    match (any_allow_policy, allowed_by) {
        (false, _) => Decision::AllowNoPolicy,
        (true, Some(policy)) => Decision::Allow { policy },
        (true, None) => Decision::DenyNoAllowMatch,
    }
}

fn policy_name(p: &AuthorizationPolicy) -> String {
    format!("{}/{}", p.namespace, p.name)
}

fn applies_to(policy: &AuthorizationPolicy, workload: &WorkloadState) -> bool {
    if policy.namespace != workload.namespace && policy.namespace != ROOT_NAMESPACE {
        return false;
    }
    match &policy.selector {
        None => true,
        Some(labels) => labels
            .iter()
            .all(|(k, v)| workload.labels.get(k).is_some_and(|have| have == v)),
    }
}

/// A rule matches when one of its sources (if any) and one of its operations (if any) match.
fn rule_matches(rule: &AuthzRule, request: &Request) -> bool {
    let from = rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, request));
    let to = rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, request));
    from && to
}

/// Every field that is set must hold.
fn source_matches(source: &AuthzSource, request: &Request) -> bool {
    let principal = request.peer.principal();
    let namespace = request.peer.namespace.as_str();
    let any = |patterns: &[String], value: &str| patterns.iter().any(|p| pattern_matches(p, value));
    (source.principals.is_empty() || any(&source.principals, &principal))
        && !any(&source.not_principals, &principal)
        && (source.namespaces.is_empty() || any(&source.namespaces, namespace))
        && !any(&source.not_namespaces, namespace)
}

fn operation_matches(op: &AuthzOperation, request: &Request) -> bool {
    (op.ports.is_empty() || op.ports.contains(&request.port))
        && !op.not_ports.contains(&request.port)
}

/// Istio's string match: exact, "*", "prefix*" or "*suffix".
fn pattern_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::PeerAuthMode;

    fn workload(namespace: &str, labels: &[(&str, &str)]) -> WorkloadState {
        WorkloadState {
            id: 1,
            name: "web".into(),
            namespace: namespace.into(),
            cgroup: "/x".into(),
            cgroup_id: 1,
            netns: None,
            ips: vec![],
            egress: None,
            ingress: None,
            service_account: "web".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mode: PeerAuthMode::Permissive,
            identity: id("default", "web"),
        }
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: "cluster.local".into(),
            namespace: ns.into(),
            service_account: sa.into(),
        }
    }

    fn policy(
        action: AuthzAction,
        selector: Option<&[(&str, &str)]>,
        rules: Vec<AuthzRule>,
    ) -> AuthorizationPolicy {
        AuthorizationPolicy {
            name: "p".into(),
            namespace: "default".into(),
            selector: selector.map(|s| {
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>()
            }),
            action,
            rules,
        }
    }

    fn from_principals(p: &[&str]) -> AuthzRule {
        AuthzRule {
            from: vec![AuthzSource {
                principals: p.iter().map(|s| s.to_string()).collect(),
                not_principals: vec![],
                namespaces: vec![],
                not_namespaces: vec![],
            }],
            to: vec![],
        }
    }

    fn ask(
        policies: &[AuthorizationPolicy],
        w: &WorkloadState,
        peer: &SpiffeId,
        port: u16,
    ) -> bool {
        evaluate(policies, w, &Request { peer, port }).allowed()
    }

    #[test]
    fn no_policy_allows_everyone() {
        let w = workload("default", &[]);
        assert_eq!(
            evaluate(
                &[],
                &w,
                &Request {
                    peer: &id("x", "y"),
                    port: 80
                }
            ),
            Decision::AllowNoPolicy
        );
    }

    #[test]
    fn allow_policy_makes_the_workload_default_deny() {
        let w = workload("default", &[("app", "web")]);
        let p = vec![policy(
            AuthzAction::Allow,
            Some(&[("app", "web")]),
            vec![from_principals(&["cluster.local/ns/default/sa/a"])],
        )];
        assert!(ask(&p, &w, &id("default", "a"), 8080));
        assert_eq!(
            evaluate(
                &p,
                &w,
                &Request {
                    peer: &id("default", "b"),
                    port: 8080
                }
            ),
            Decision::DenyNoAllowMatch
        );
    }

    #[test]
    fn selector_that_does_not_match_leaves_the_workload_open() {
        let w = workload("default", &[("app", "web")]);
        let p = vec![policy(AuthzAction::Allow, Some(&[("app", "db")]), vec![])];
        assert!(ask(&p, &w, &id("default", "b"), 8080));
        // Another namespace's policy never applies.
        let mut other = policy(AuthzAction::Allow, None, vec![]);
        other.namespace = "prod".into();
        assert!(ask(&[other], &w, &id("default", "b"), 8080));
    }

    #[test]
    fn root_namespace_policy_applies_everywhere() {
        let w = workload("default", &[]);
        let mut p = policy(AuthzAction::Deny, None, vec![from_principals(&["*"])]);
        p.namespace = ROOT_NAMESPACE.into();
        assert!(!ask(&[p], &w, &id("default", "a"), 80));
    }

    #[test]
    fn allow_without_rules_allows_nothing_and_empty_rule_allows_all() {
        let w = workload("default", &[]);
        assert!(!ask(
            &[policy(AuthzAction::Allow, None, vec![])],
            &w,
            &id("d", "a"),
            1
        ));
        let everything = AuthzRule {
            from: vec![],
            to: vec![],
        };
        assert!(ask(
            &[policy(AuthzAction::Allow, None, vec![everything])],
            &w,
            &id("d", "a"),
            1
        ));
    }

    #[test]
    fn deny_wins_over_allow() {
        let w = workload("default", &[]);
        let p = vec![
            policy(AuthzAction::Allow, None, vec![from_principals(&["*"])]),
            policy(
                AuthzAction::Deny,
                None,
                vec![from_principals(&["cluster.local/ns/default/sa/a"])],
            ),
        ];
        assert!(!ask(&p, &w, &id("default", "a"), 80));
        assert!(ask(&p, &w, &id("default", "b"), 80));
    }

    #[test]
    fn namespaces_ports_and_negations() {
        let w = workload("default", &[]);
        let rule = AuthzRule {
            from: vec![AuthzSource {
                principals: vec![],
                not_principals: vec!["*/sa/blocked".into()],
                namespaces: vec!["front*".into()],
                not_namespaces: vec![],
            }],
            to: vec![AuthzOperation {
                ports: vec![8080, 9090],
                not_ports: vec![9090],
            }],
        };
        let p = vec![policy(AuthzAction::Allow, None, vec![rule])];
        assert!(ask(&p, &w, &id("frontend", "a"), 8080));
        assert!(!ask(&p, &w, &id("frontend", "a"), 9090), "notPorts");
        assert!(!ask(&p, &w, &id("frontend", "a"), 80), "ports");
        assert!(!ask(&p, &w, &id("backend", "a"), 8080), "namespaces");
        assert!(
            !ask(&p, &w, &id("frontend", "blocked"), 8080),
            "notPrincipals"
        );
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches(
            "cluster.local/*",
            "cluster.local/ns/a/sa/b"
        ));
        assert!(pattern_matches("*/sa/b", "cluster.local/ns/a/sa/b"));
        assert!(!pattern_matches(
            "cluster.local/ns/a/sa/b",
            "cluster.local/ns/a/sa/bb"
        ));
    }
}
