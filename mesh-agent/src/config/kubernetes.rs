//! The `kubernetes:` section: present = the Kubernetes source is on (workloads, services,
//! policies and routes come from the API as well as from the file). Node-level: changing it
//! needs a restart.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::authorization::RawPolicy;
use super::checker::{Checker, ConfigError, PathChecks};
use super::raw::Text;
use super::scalars::{label_key, quote};

/// The label that enrols a namespace (value `enabled`) and opts a pod out (`disabled`).
pub const DEFAULT_ENROLLMENT_LABEL: &str = "mesh.example.io/mode";
/// Policies in this namespace apply to every workload of the mesh.
pub const DEFAULT_ROOT_NAMESPACE: &str = "mesh-system";
/// Where kubelet's cgroups live when the cgroup2 mount cannot be found (parsing a config
/// without a host, e.g. `config check` elsewhere).
pub const DEFAULT_KUBEPODS_ROOT: &str = "/sys/fs/cgroup";

/// The validated `kubernetes:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubernetesConfig {
    /// This node's Kubernetes name: only pods with `spec.nodeName` equal to it are workloads.
    pub node_name: String,
    /// A kubeconfig file; `None`: in-cluster service account, else `KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces labelled `<label>: enabled` are meshed; a pod labelled `disabled` is not.
    pub enrollment_label: String,
    /// Policies here apply to every workload.
    pub root_namespace: String,
    /// How kubelet names pod cgroups.
    pub cgroup_driver: CgroupDriver,
    /// The directory holding `kubepods.slice` (systemd) or `kubepods` (cgroupfs).
    pub kubepods_root: PathBuf,
    /// Where the container runtime bind-mounts pod network namespaces (containerd and
    /// CRI-O: /var/run/netns); a pod's is the one holding its IP.
    pub netns_dir: PathBuf,
}

/// Where containerd and CRI-O put pod network namespaces by default.
pub const DEFAULT_NETNS_DIR: &str = "/var/run/netns";

/// kubelet's cgroup driver, which decides the pod cgroup paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// `kubepods.slice` under the root -> systemd, else cgroupfs; decided per lookup.
    Auto,
    Systemd,
    Cgroupfs,
}

/// Reads an object from the API into the file's raw types: JSON is YAML, so the file's parser
/// and its messages apply unchanged.
pub(super) fn from_json<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    origin: &str,
) -> Result<T, ConfigError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ConfigError::Unlocated {
        file: origin.to_owned(),
        reason: format!("cannot render as JSON: {e}"),
    })?;
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(&text, options)
        .map_err(|e| ConfigError::from_yaml(origin, &e))
}

/// Checks one MeshAuthorizationPolicy read from the API, given as JSON `{name, namespace,
/// selector, action, rules}` (the CR's spec fields beside its name), with exactly the rules of
/// the file's `authorization:` entries. Only the error's reason is meaningful.
pub fn check_api_policy(
    policy: &serde_json::Value,
    origin: &str,
) -> Result<super::AuthorizationPolicy, ConfigError> {
    let raw: RawPolicy = from_json(policy, origin)?;
    let checker = Checker::new(origin, PathChecks::Skipped);
    let policies = checker.policies(vec![raw]);
    let mut policies = checker
        .finish(policies)
        .map_err(super::ConfigErrors::into_first)?;
    policies.pop().ok_or_else(|| ConfigError::Unlocated {
        file: origin.to_owned(),
        reason: "no policy".to_owned(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    #[serde(default)]
    node_name: Option<Text>,
    #[serde(default)]
    kubeconfig: Option<Text>,
    #[serde(default)]
    enrollment_label: Option<Text>,
    #[serde(default)]
    root_namespace: Option<Text>,
    #[serde(default)]
    cgroup_driver: Option<Text>,
    #[serde(default)]
    kubepods_root: Option<Text>,
    #[serde(default)]
    netns_dir: Option<Text>,
}

impl Checker<'_> {
    /// `node_name` is the node section's name when neither the key nor `NODE_NAME` is set.
    pub(super) fn kubernetes(
        &self,
        raw: &Spanned<Option<RawKubernetes>>,
        node_name: &str,
    ) -> Result<KubernetesConfig, ConfigError> {
        // `kubernetes:` with nothing under it turns the source on with every default.
        let empty = RawKubernetes {
            node_name: None,
            kubeconfig: None,
            enrollment_label: None,
            root_namespace: None,
            cgroup_driver: None,
            kubepods_root: None,
            netns_dir: None,
        };
        let k = raw.value.as_ref().unwrap_or(&empty);
        let node_name = match &k.node_name {
            Some(n) => self.kube_node_name(n)?,
            // The DaemonSet passes spec.nodeName as NODE_NAME.
            None => match std::env::var("NODE_NAME") {
                Ok(n) if !n.is_empty() => n,
                _ => node_name.to_owned(),
            },
        };
        let kubeconfig = match &k.kubeconfig {
            Some(p) => {
                let path = self.absolute(p, "kubeconfig")?;
                if self.checks == PathChecks::Enabled {
                    self.must_exist(p, &path, "kubeconfig", |m| {
                        m.is_dir()
                            .then_some("is a directory, not a kubeconfig file")
                    })?;
                }
                Some(path)
            }
            None => None,
        };
        let enrollment_label = match &k.enrollment_label {
            Some(l) => {
                label_key(&l.value).map_err(|why| {
                    self.err(
                        l.referenced,
                        format!("invalid enrollment_label {}: {why}", quote(&l.value)),
                    )
                })?;
                l.value.clone()
            }
            None => DEFAULT_ENROLLMENT_LABEL.to_owned(),
        };
        let root_namespace = match &k.root_namespace {
            Some(ns) => {
                if !is_dns_label(&ns.value) {
                    return Err(self.err(
                        ns.referenced,
                        format!(
                            "invalid root_namespace {}: use 1 to 63 characters among a-z, 0-9 and '-', starting and ending with a letter or digit",
                            quote(&ns.value)
                        ),
                    ));
                }
                ns.value.clone()
            }
            None => DEFAULT_ROOT_NAMESPACE.to_owned(),
        };
        let cgroup_driver = match &k.cgroup_driver {
            Some(d) => match d.value.to_ascii_lowercase().as_str() {
                "auto" => CgroupDriver::Auto,
                "systemd" => CgroupDriver::Systemd,
                "cgroupfs" => CgroupDriver::Cgroupfs,
                _ => {
                    return Err(self.err(
                        d.referenced,
                        format!(
                            "invalid cgroup_driver {}: expected auto, systemd or cgroupfs",
                            quote(&d.value)
                        ),
                    ));
                }
            },
            None => CgroupDriver::Auto,
        };
        let kubepods_root = match &k.kubepods_root {
            Some(p) => {
                let path = self.absolute(p, "kubepods_root")?;
                if self.checks == PathChecks::Enabled {
                    self.must_exist(p, &path, "kubepods_root", |m| {
                        (!m.is_dir()).then_some("is not a directory")
                    })?;
                }
                path
            }
            None => crate::cgroup::cgroup2_mount()
                .unwrap_or_else(|_| PathBuf::from(DEFAULT_KUBEPODS_ROOT)),
        };
        // Need not exist yet: the runtime creates it with the first pod.
        let netns_dir = match &k.netns_dir {
            Some(p) => self.absolute(p, "netns_dir")?,
            None => PathBuf::from(DEFAULT_NETNS_DIR),
        };
        Ok(KubernetesConfig {
            node_name,
            kubeconfig,
            enrollment_label,
            root_namespace,
            cgroup_driver,
            kubepods_root,
            netns_dir,
        })
    }

    /// Kubernetes node names are DNS subdomains.
    fn kube_node_name(&self, raw: &Text) -> Result<String, ConfigError> {
        let v = &raw.value;
        let ok = !v.is_empty() && v.len() <= 253 && v.split('.').all(is_dns_label);
        if !ok {
            let why = if v.is_empty() {
                "it is empty".to_owned()
            } else {
                "use lowercase DNS labels (a-z, 0-9, '-') separated by '.', at most 253 characters"
                    .to_owned()
            };
            return Err(self.err(
                raw.referenced,
                format!("invalid node_name {}: {why}", quote(v)),
            ));
        }
        Ok(v.clone())
    }
}

/// RFC 1123 label: what Kubernetes accepts as a namespace name.
fn is_dns_label(v: &str) -> bool {
    let b = v.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, parse_str};

    use super::*;

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("node")).expect("mkdir");
        std::fs::write(dir.path().join("kubeconfig"), b"").expect("kubeconfig");
        dir
    }

    fn parse(dir: &tempfile::TempDir, section: &str) -> Result<crate::config::Config, ConfigError> {
        let d = dir.path().display().to_string();
        let text = format!("node:\n  name: node1\n  cgroup: {d}/node\n{section}").replace("$D", &d);
        parse_str(&text, "test.yaml").map_err(crate::config::ConfigErrors::into_first)
    }

    fn fails(section: &str, line: u64, column: u64, needle: &str) {
        let dir = fixture();
        let err = parse(&dir, section).expect_err("expected an error");
        assert!(
            err.to_string()
                .starts_with(&format!("test.yaml:{line}:{column}: ")),
            "wrong position: {err}"
        );
        assert!(err.reason().contains(needle), "{needle:?} not in {err}");
    }

    #[test]
    fn absent_section_means_file_only() {
        let dir = fixture();
        assert_eq!(parse(&dir, "").expect("valid").kubernetes, None);
    }

    #[test]
    fn empty_section_takes_every_default() {
        let dir = fixture();
        let k = parse(&dir, "kubernetes:\n")
            .expect("valid")
            .kubernetes
            .expect("on");
        if std::env::var("NODE_NAME").is_err() {
            assert_eq!(k.node_name, "node1");
        }
        assert_eq!(k.kubeconfig, None);
        assert_eq!(k.enrollment_label, DEFAULT_ENROLLMENT_LABEL);
        assert_eq!(k.root_namespace, DEFAULT_ROOT_NAMESPACE);
        assert_eq!(k.cgroup_driver, CgroupDriver::Auto);
        assert!(k.kubepods_root.is_absolute());
    }

    #[test]
    fn every_key() {
        let dir = fixture();
        let k = parse(
            &dir,
            "kubernetes:\n  node_name: ip-10-0-0-1.ec2.internal\n  kubeconfig: $D/kubeconfig\n  enrollment_label: example.com/mesh\n  root_namespace: istio-system\n  cgroup_driver: Systemd\n  kubepods_root: $D/node\n",
        )
        .expect("valid")
        .kubernetes
        .expect("on");
        assert_eq!(k.node_name, "ip-10-0-0-1.ec2.internal");
        assert_eq!(k.kubeconfig, Some(dir.path().join("kubeconfig")));
        assert_eq!(k.enrollment_label, "example.com/mesh");
        assert_eq!(k.root_namespace, "istio-system");
        assert_eq!(k.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(k.kubepods_root, dir.path().join("node"));
        let json = serde_json::to_value(&k).expect("json");
        assert_eq!(json["cgroup_driver"], "systemd");
    }

    #[test]
    fn unknown_key() {
        fails(
            "kubernetes:\n  nodename: x\n",
            5,
            3,
            "unknown field `nodename`",
        );
    }

    #[test]
    fn bad_driver() {
        fails(
            "kubernetes:\n  cgroup_driver: docker\n",
            5,
            18,
            "invalid cgroup_driver `docker`: expected auto, systemd or cgroupfs",
        );
    }

    #[test]
    fn relative_paths() {
        fails(
            "kubernetes:\n  kubeconfig: kube/config\n",
            5,
            15,
            "kubeconfig path `kube/config` must be absolute",
        );
        fails(
            "kubernetes:\n  kubepods_root: sys/fs/cgroup\n",
            5,
            18,
            "kubepods_root path `sys/fs/cgroup` must be absolute",
        );
    }

    #[test]
    fn missing_paths() {
        fails(
            "kubernetes:\n  kubeconfig: /nonexistent/kubeconfig\n",
            5,
            15,
            "kubeconfig path /nonexistent/kubeconfig does not exist",
        );
        fails(
            "kubernetes:\n  kubepods_root: $D/kubeconfig\n",
            5,
            18,
            "is not a directory",
        );
        fails(
            "kubernetes:\n  kubeconfig: $D/node\n",
            5,
            15,
            "is a directory, not a kubeconfig file",
        );
    }

    #[test]
    fn empty_or_bad_names() {
        fails(
            "kubernetes:\n  node_name: ''\n",
            5,
            14,
            "invalid node_name ``: it is empty",
        );
        fails(
            "kubernetes:\n  node_name: Node_1\n",
            5,
            14,
            "invalid node_name `Node_1`",
        );
        fails(
            "kubernetes:\n  root_namespace: ''\n",
            5,
            19,
            "invalid root_namespace ``",
        );
        fails(
            "kubernetes:\n  root_namespace: Mesh\n",
            5,
            19,
            "invalid root_namespace `Mesh`",
        );
        fails(
            "kubernetes:\n  enrollment_label: 'bad label'\n",
            5,
            21,
            "invalid enrollment_label `bad label`",
        );
    }

    #[test]
    fn wrong_type() {
        fails("kubernetes: [a]\n", 4, 13, "");
    }
}
