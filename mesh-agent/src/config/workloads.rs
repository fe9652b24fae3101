//! The `workloads:` section: the pods (or any process groups) whose sockets the agent
//! manages, by cgroup and network namespace, with their IPs, egress and ingress rules,
//! service account, labels and peer authentication mode.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::checker::{Checker, ConfigError, PathChecks};
use super::raw::{Text, entries, null_as_empty, present};
use super::scalars::{DEFAULT_NAMESPACE, clean, label_key, label_value, line_of, quote};

/// The service account of workloads that do not name one.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Whether a workload accepts plaintext from outside the mesh (Istio's
/// PeerAuthentication modes). Written `PERMISSIVE` or `STRICT`, in any case.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PeerAuthMode {
    /// Both mTLS tunnel connections and plaintext are accepted.
    #[default]
    Permissive,
    /// Only mTLS tunnel connections are accepted.
    Strict,
}

/// A pod (or any process group) whose sockets the agent manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    /// cgroup v2 directory of the workload; unique across workloads.
    pub cgroup: PathBuf,
    /// Network namespace file; `None` means the host namespace.
    pub netns: Option<PathBuf>,
    pub ips: Vec<IpAddr>,
    /// `None`: egress unrestricted. `Some` (even empty): default-deny for TCP
    /// connects, allowing only the listed rules.
    pub egress: Option<Vec<EgressRule>>,
    /// `None`: ingress unrestricted. `Some` (even empty): inbound TCP SYNs are
    /// default-deny, allowing only the listed rules.
    pub ingress: Option<Vec<IngressRule>>,
    /// Service account of the workload's SPIFFE ID
    /// (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`).
    pub service_account: String,
    /// Kubernetes-style labels, matched by authorization policy selectors.
    pub labels: BTreeMap<String, String>,
    /// Whether plaintext from outside the mesh is accepted.
    pub mode: PeerAuthMode,
}

/// One allowed egress destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressRule {
    /// Destination network; host bits are cleared (`10.1.2.3/24` becomes
    /// `10.1.2.0/24`) so equal networks compare equal.
    pub to: IpNet,
    /// Allowed destination ports; empty means any port.
    pub ports: Vec<u16>,
}

/// One allowed ingress source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngressRule {
    /// Source network; host bits are cleared like [`EgressRule::to`].
    pub from: IpNet,
    /// Allowed local (destination) ports; empty means any port.
    pub ports: Vec<u16>,
}

/// `Some(value: None)` is a key present with a null value.
type RawRules<T> = Option<Spanned<Option<Vec<T>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkload {
    name: Text,
    #[serde(default)]
    namespace: Option<Text>,
    cgroup: Text,
    #[serde(default)]
    netns: Option<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    ips: Vec<Text>,
    #[serde(default, deserialize_with = "present")]
    egress: RawRules<RawEgressRule>,
    #[serde(default, deserialize_with = "present")]
    ingress: RawRules<RawIngressRule>,
    #[serde(default)]
    service_account: Option<Text>,
    #[serde(default, deserialize_with = "entries")]
    labels: Vec<(Text, Text)>,
    #[serde(default)]
    mode: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgressRule {
    to: Text,
    #[serde(default, deserialize_with = "null_as_empty")]
    ports: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngressRule {
    from: Text,
    #[serde(default, deserialize_with = "null_as_empty")]
    ports: Vec<Text>,
}

impl Checker<'_> {
    /// Each workload is checked on its own; the valid ones are returned.
    pub(super) fn workloads(&self, raws: Vec<RawWorkload>) -> Result<Vec<Workload>, ConfigError> {
        let mut seen = SeenWorkloads::default();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let workload = self.workload(raw, &mut seen);
            out.extend(self.keep(workload));
        }
        Ok(out)
    }

    /// One workload; its fields are independent, so each bad one is reported.
    fn workload(
        &self,
        raw: RawWorkload,
        seen: &mut SeenWorkloads,
    ) -> Result<Workload, ConfigError> {
        let before = self.errors_so_far();
        let name = self.keep(self.object_name(&raw.name, "workload name"));
        let namespace = self.keep(self.namespace(raw.namespace.as_ref()));
        // The id names this workload in other workloads' messages.
        let id = format!(
            "{}/{}",
            namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            raw.name.value
        );
        if let (Some(name), Some(namespace)) = (&name, &namespace)
            && let Some(first) = seen
                .names
                .insert((namespace.clone(), name.clone()), line_of(&raw.name))
        {
            self.keep::<()>(Err(self.err(
                raw.name.referenced,
                format!(
                    "duplicate workload {} (first defined at line {first})",
                    quote(&id)
                ),
            )));
        }

        let cgroup = self.keep(self.cgroup_dir(&raw.cgroup));
        if let Some(cgroup) = &cgroup {
            // Two workloads on one cgroup would make per-workload policy
            // ambiguous: the programs cannot tell their sockets apart.
            if let Some((other, line)) = seen.cgroups.get(cgroup) {
                self.keep::<()>(Err(self.err(
                    raw.cgroup.referenced,
                    format!(
                        "cgroup path {} is already used by workload {} (line {line})",
                        clean(&cgroup.display().to_string()),
                        quote(other)
                    ),
                )));
            } else {
                seen.cgroups
                    .insert(cgroup.clone(), (id.clone(), line_of(&raw.cgroup)));
            }
        }

        let netns = match &raw.netns {
            Some(p) => self.keep(self.netns_file(p)),
            None => None,
        };

        let ips = self.each(raw.ips.iter().map(|raw_ip| {
            let ip = self.ip(raw_ip)?;
            // Ingress policy is looked up by destination IP; an IP owned
            // by two workloads would apply one of them arbitrarily.
            if let Some((other, line)) = seen.ips.get(&ip) {
                return Err(self.err(
                    raw_ip.referenced,
                    format!(
                        "IP {ip} is already assigned to workload {} (line {line})",
                        quote(other)
                    ),
                ));
            }
            seen.ips.insert(ip, (id.clone(), line_of(raw_ip)));
            Ok(ip)
        }));
        let ips = self.keep(ips).unwrap_or_default();

        let egress = match self.keep(self.rules(raw.egress, "egress")).flatten() {
            Some(rules) => self.keep(self.each(rules.iter().map(|r| {
                let to = self.keep(self.cidr(&r.to));
                let ports = self.keep(self.ports(&r.ports));
                match (to, ports) {
                    (Some(to), Some(ports)) => Ok(EgressRule { to, ports }),
                    _ => Err(self.reported()),
                }
            }))),
            None => None,
        };
        let ingress = match self.keep(self.rules(raw.ingress, "ingress")).flatten() {
            Some(rules) => self.keep(self.each(rules.iter().map(|r| {
                let from = self.keep(self.cidr(&r.from));
                let ports = self.keep(self.ports(&r.ports));
                match (from, ports) {
                    (Some(from), Some(ports)) => Ok(IngressRule { from, ports }),
                    _ => Err(self.reported()),
                }
            }))),
            None => None,
        };

        let service_account = match &raw.service_account {
            Some(sa) => self.keep(self.object_name(sa, "service account")),
            None => Some(DEFAULT_SERVICE_ACCOUNT.to_owned()),
        };
        let labels = self.keep(self.labels(&raw.labels));
        let mode = match &raw.mode {
            Some(m) => self.keep(self.mode(m)),
            None => Some(PeerAuthMode::default()),
        };

        if self.errors_so_far() != before {
            return Err(self.reported());
        }
        match (name, namespace, cgroup, service_account, labels, mode) {
            (
                Some(name),
                Some(namespace),
                Some(cgroup),
                Some(service_account),
                Some(labels),
                Some(mode),
            ) => Ok(Workload {
                name,
                namespace,
                cgroup,
                netns,
                ips,
                egress,
                ingress,
                service_account,
                labels,
                mode,
            }),
            _ => Err(self.reported()),
        }
    }

    /// Unwraps a policy list, rejecting a key that is present but null.
    fn rules<T>(&self, raw: RawRules<T>, key: &str) -> Result<Option<Vec<T>>, ConfigError> {
        match raw {
            None => Ok(None),
            Some(Spanned {
                value: Some(rules), ..
            }) => Ok(Some(rules)),
            // An empty `egress:` is ambiguous: "nothing allowed" or "no
            // policy". Guessing either way is a security decision, so ask.
            Some(Spanned {
                value: None,
                referenced,
                ..
            }) => Err(self.err(
                referenced,
                format!(
                    "`{key}` has no value: write `{key}: []` to deny all, or remove the key to allow all"
                ),
            )),
        }
    }

    fn mode(&self, raw: &Text) -> Result<PeerAuthMode, ConfigError> {
        let v = raw.value.as_str();
        if v.eq_ignore_ascii_case("PERMISSIVE") {
            Ok(PeerAuthMode::Permissive)
        } else if v.eq_ignore_ascii_case("STRICT") {
            Ok(PeerAuthMode::Strict)
        } else {
            Err(self.err(
                raw.referenced,
                format!("invalid mode {}: expected PERMISSIVE or STRICT", quote(v)),
            ))
        }
    }

    /// Kubernetes label syntax, so that labels copied from pods work as is.
    pub(super) fn labels(
        &self,
        raws: &[(Text, Text)],
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let pairs = self.each(raws.iter().map(|(key, value)| {
            if let Err(why) = label_key(&key.value) {
                return Err(self.err(
                    key.referenced,
                    format!("invalid label key {}: {why}", quote(&key.value)),
                ));
            }
            if let Err(why) = label_value(&value.value) {
                return Err(self.err(
                    value.referenced,
                    format!(
                        "invalid value {} of label {}: {why}",
                        quote(&value.value),
                        quote(&key.value)
                    ),
                ));
            }
            Ok((key.value.clone(), value.value.clone()))
        }))?;
        Ok(pairs.into_iter().collect())
    }

    fn netns_file(&self, raw: &Text) -> Result<PathBuf, ConfigError> {
        let path = self.absolute(raw, "netns")?;
        if self.checks == PathChecks::Enabled {
            self.must_exist(raw, &path, "netns", |m| {
                m.is_dir()
                    .then_some("is a directory, not a network namespace file")
            })?;
        }
        Ok(path)
    }
}

/// What earlier workloads use, for duplicate checks; each entry remembers the
/// first definition, for "first defined at" / "(line N)".
#[derive(Default)]
struct SeenWorkloads {
    names: HashMap<(String, String), u64>,
    cgroups: HashMap<PathBuf, (String, u64)>,
    ips: HashMap<IpAddr, (String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixture::{Fixture, with_node};

    #[test]
    fn workload_identity_fields() {
        let fx = Fixture::new();
        let head = "workloads:\n  - name: w\n    cgroup: $D/pods/web\n";
        let e = fx.fails(
            &with_node(&format!("{head}    mode: DISABLE\n")),
            7,
            "invalid mode `DISABLE`: expected PERMISSIVE or STRICT",
        );
        assert_eq!(e.column(), Some(11));
        let cfg = fx
            .parse(&with_node(&format!("{head}    mode: Permissive\n")))
            .expect("any case");
        assert_eq!(cfg.workloads[0].mode, PeerAuthMode::Permissive);
        fx.fails(
            &with_node(&format!("{head}    service_account: a/b\n")),
            7,
            "invalid service account `a/b`",
        );
    }

    #[test]
    fn bad_labels() {
        let fx = Fixture::new();
        let labels = |body: &str| {
            with_node(&format!(
                "workloads:\n  - name: w\n    cgroup: $D/pods/web\n    labels:\n{body}"
            ))
        };
        let e = fx.fails(
            &labels("      app: web\n      -bad: x\n"),
            9,
            "invalid label key `-bad`: the name must be 1 to 63 characters",
        );
        assert_eq!(e.column(), Some(7));
        for bad in [
            "'a/b/c'",
            "'Example.com/app'",
            "'/app'",
            "'example.com/'",
            "'a b'",
            &"k".repeat(64),
        ] {
            fx.fails(
                &labels(&format!("      {bad}: x\n")),
                8,
                "invalid label key",
            );
        }
        fx.fails(
            &labels("      app: 'we b'\n"),
            8,
            "invalid value `we b` of label `app`: use at most 63 characters",
        );
        fx.fails(&labels("      app: web-\n"), 8, "invalid value `web-`");
        fx.fails(
            &labels(&format!("      app: {}\n", "v".repeat(64))),
            8,
            "invalid value",
        );
        fx.fails(&labels("      app: a\n      app: b\n"), 9, "duplicate");
        fx.fails(
            &with_node(
                "authorization:\n  - name: p\n    selector:\n      matchLabels: {'app!': web}\n",
            ),
            7,
            "invalid label key `app!`",
        );
        fx.fails(
            &with_node("authorization:\n  - name: p\n    selector:\n      matchExpressions: []\n"),
            7,
            "unknown field `matchExpressions`",
        );
        let cfg = fx
            .parse(&labels(&format!(
                "      {}/{}: ''\n",
                "d".repeat(253),
                "n".repeat(63)
            )))
            .expect("longest key");
        assert_eq!(cfg.workloads[0].labels.len(), 1);
    }

    #[test]
    fn null_policy_is_rejected() {
        let fx = Fixture::new();
        fx.fails(
            &with_node("workloads:\n  - name: w\n    cgroup: $D/pods/web\n    egress:\n"),
            7,
            "write `egress: []` to deny all",
        );
        fx.fails(
            &with_node("workloads:\n  - name: w\n    cgroup: $D/pods/web\n    ingress: ~\n"),
            7,
            "`ingress` has no value",
        );
    }
}
