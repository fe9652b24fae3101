//! The agent's YAML configuration: parsing and validation.
//!
//! Parsing happens in two layers. Private `Raw*` structs mirror the YAML and
//! keep `serde_saphyr::Spanned` wrappers on every value that is validated
//! after deserialization (paths that must exist, duplicates, addresses), so
//! that every error can name the exact line and column of the offending
//! value. The raw tree is then checked and converted into the plain public
//! types, which carry no span information and can be serialized as JSON.
//!
//! Scalars such as ports, IPs and CIDRs are deserialized as strings and parsed
//! here rather than through their serde impls: that gives one consistent,
//! readable message per kind of mistake (for example "prefix length 33 is
//! longer than 32" instead of "invalid IP address syntax"), and lets a bare IP
//! stand for a host route in `to:` / `from:`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_saphyr::{Location, MessageFormatter, Spanned, UserMessageFormatter};

pub mod kubernetes;
mod route_checks;
#[cfg(test)]
mod route_tests;
pub mod routes;
pub mod telemetry;
pub use kubernetes::check_api_policy;
pub use kubernetes::{CgroupDriver, KubernetesConfig};
use route_checks::{RawGrpcRoute, RawHttp, RawHttpRoute, RawOutlierDetection};
pub use route_checks::{check_api_grpc_route, check_api_http_route};
pub use routes::{
    BackendRef, GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, GrpcRouteRule, HeaderMatch,
    HeaderModifier, HttpFilter, HttpRoute, HttpRouteMatch, HttpRouteRule, HttpSettings,
    LoadBalancer, OutlierDetection, ParentRef, PathMatch, PathModifier, PortProtocol, Protocol,
    QueryParamMatch, RequestMirror, RequestRedirect, RetryBudget, RetryPolicy, RouteTimeouts,
    StringMatch, UrlRewrite,
};
use telemetry::RawTelemetry;
pub use telemetry::TelemetrySettings;

/// Where BPF maps are pinned when `node.bpffs` is not set.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/mesh-agent";
/// The transparent-proxy listener port when `node.outbound_port` is not set.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// The admin/metrics endpoint when `node.admin` is not set. Loopback only, as
/// the endpoint has no authentication.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
/// The namespace of workloads, services and authorization policies that do
/// not name one.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The inbound mTLS tunnel listener port when `node.tunnel_port` is not set.
pub const DEFAULT_TUNNEL_PORT: u16 = 15008;
/// Where the agent creates (and then reuses) its CA when `identity.ca` is not
/// set.
pub const DEFAULT_CA_DIR: &str = "/var/lib/mesh-agent/ca";
/// The SPIFFE trust domain when `identity.trust_domain` is not set.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Lifetime of issued workload certificates when `identity.cert_lifetime` is
/// not set.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The service account of workloads that do not name one.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Bounds of `identity.cert_lifetime`: below 2s a certificate could expire
/// before it is used; beyond a year rotation no longer limits exposure.
const MIN_CERT_LIFETIME: Duration = Duration::from_secs(2);
const MAX_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// The configuration compiled into the binary, used when no file is given.
const EMBEDDED_DEFAULT: &str = include_str!("default-config.yaml");

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub node: NodeConfig,
    pub nodes: Vec<PeerNode>,
    pub identity: IdentityConfig,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub authorization: Vec<AuthorizationPolicy>,
    /// The `http:` section (protocol detection, header limit, retry budget).
    pub http: HttpSettings,
    /// Gateway API HTTPRoutes attached to services (`http_routes:`).
    pub http_routes: Vec<HttpRoute>,
    /// Gateway API GRPCRoutes attached to services (`grpc_routes:`).
    pub grpc_routes: Vec<GrpcRoute>,
    /// The `telemetry:` section (metrics and readiness endpoints, access log, label names).
    pub telemetry: TelemetrySettings,
    /// The `kubernetes:` section; `None`: the file is the only source.
    pub kubernetes: Option<KubernetesConfig>,
}

/// Settings of the node the agent runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeConfig {
    /// `[a-z0-9-]{1,63}`; also the last component of the pin directory.
    pub name: String,
    /// cgroup v2 directory the node-wide programs attach to.
    pub cgroup: PathBuf,
    /// bpffs directory under which `<name>/` holds the pinned maps.
    pub bpffs: PathBuf,
    /// Port of the agent's transparent outbound listener.
    pub outbound_port: u16,
    /// Admin/metrics HTTP endpoint; always a loopback address.
    pub admin: SocketAddr,
    /// Whether the sk_msg same-node fast path is enabled.
    pub fast_path: bool,
    /// This node's address, where peers reach its tunnel listener; also the source address
    /// reported for processes that are not declared workloads. Optional.
    pub address: Option<IpAddr>,
    /// Port of the inbound mTLS tunnel listener (default 15008), on `address` when set, else
    /// on all addresses.
    pub tunnel_port: u16,
}

impl NodeConfig {
    /// Directory where this node's maps are pinned: `<bpffs>/<name>`.
    ///
    /// The node name is validated to `[a-z0-9-]{1,63}`, so it is always a
    /// single plain path component and cannot escape `bpffs`.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join(&self.name)
    }
}

/// Another node of the mesh (top-level `nodes:` list), by the name endpoints refer to.
///
/// The list may also name this node, with this node's address, so that one
/// list can be shared by every node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerNode {
    /// `[a-z0-9-]{1,63}`, unique in the list.
    pub name: String,
    /// Where that node's tunnel listener is reached (on `node.tunnel_port`);
    /// unique in the list.
    pub address: IpAddr,
}

/// Workload identities: the SPIFFE trust domain and the CA that signs the
/// certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityConfig {
    /// Trust domain of the SPIFFE IDs, without `spiffe://`: 1 to 255
    /// characters among a-z, 0-9, '.', '-' and '_'.
    pub trust_domain: String,
    pub ca: CaSource,
    /// Extra PEM files of trusted roots (for CA rotation), beyond the CA's own
    /// certificate.
    pub trust_bundle: Vec<PathBuf>,
    /// Lifetime of issued certificates, 2s..=365d; serialized as a string
    /// such as `24h` or `10s`.
    #[serde(serialize_with = "serialize_duration")]
    pub cert_lifetime: Duration,
}

impl Default for IdentityConfig {
    /// The values used when the `identity` section is absent.
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            ca: CaSource::Generate {
                dir: PathBuf::from(DEFAULT_CA_DIR),
            },
            trust_bundle: Vec::new(),
            cert_lifetime: DEFAULT_CERT_LIFETIME,
        }
    }
}

/// Where the CA certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaSource {
    /// Created on first run in `dir` (ca.pem, ca-key.pem mode 0600) and reused after.
    Generate { dir: PathBuf },
    /// Operator-provided PEM files; must exist (PathChecks). Content is checked at agent start, not here.
    Files { cert: PathBuf, key: PathBuf },
}

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

/// A load-balanced service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Virtual IPs; may be empty for endpoint-only meshing.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
    /// Endpoint selection for L7 requests (L4 connections are round robin).
    pub load_balancer: LoadBalancer,
    /// `None`: endpoints are never ejected.
    pub outlier_detection: Option<OutlierDetection>,
}

/// A service port and the endpoint port it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub port: u16,
    /// Defaults to `port`.
    pub target_port: u16,
    pub name: Option<String>,
    pub protocol: PortProtocol,
}

/// A backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// The node hosting the endpoint: `Some` is this node's name or a name
    /// listed under `nodes` (reached through that node's mTLS tunnel, or
    /// in process for this node); `None` means the endpoint is outside the
    /// mesh and is reached over plain TCP.
    pub node: Option<String>,
    /// Informational: the workload backing the endpoint.
    pub workload: Option<String>,
}

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

/// Serializes a duration as a whole number of hours, minutes or seconds
/// (`24h`, `90m`, `10s`), the largest unit that represents it exactly.
pub(crate) fn serialize_duration<S: Serializer>(
    d: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_duration(d))
}

fn format_duration(d: &Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}ms", d.as_millis())
    } else if secs != 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs != 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// Why a configuration could not be loaded.
///
/// Display is `FILE: cannot read: ERROR` for I/O failures,
/// `FILE:LINE:COLUMN: REASON` for problems in the content and `FILE: REASON`
/// in the rare case where the parser knows no position.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: {reason}")]
    Read {
        file: String,
        /// `cannot read: <error>`, kept precomputed so that `reason()` can
        /// borrow it like for the other variants.
        reason: String,
        /// Not a `#[source]`: its text is already part of the message, and
        /// error reporters that print the chain would repeat it.
        error: std::io::Error,
    },
    /// The content is invalid at a known position.
    #[error("{file}:{line}:{column}: {reason}")]
    Invalid {
        file: String,
        line: u64,
        column: u64,
        reason: String,
    },
    /// The content is invalid but the parser could not say where.
    #[error("{file}: {reason}")]
    Unlocated { file: String, reason: String },
}

// Accessors beyond `line` and `reason` are there for callers that present
// errors differently (editors, JSON output); the binary may not use them all.
#[allow(dead_code)]
impl ConfigError {
    /// The file (or origin name) the error is about.
    pub fn file(&self) -> &str {
        match self {
            Self::Read { file, .. } | Self::Invalid { file, .. } | Self::Unlocated { file, .. } => {
                file
            }
        }
    }

    /// 1-based line of the offending value, when the error comes from the
    /// content.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::Invalid { line, .. } => Some(*line),
            Self::Read { .. } | Self::Unlocated { .. } => None,
        }
    }

    /// 1-based column of the offending value, when the error comes from the
    /// content.
    pub fn column(&self) -> Option<u64> {
        match self {
            Self::Invalid { column, .. } => Some(*column),
            Self::Read { .. } | Self::Unlocated { .. } => None,
        }
    }

    /// The message without the `FILE:LINE:COLUMN: ` prefix.
    pub fn reason(&self) -> &str {
        match self {
            Self::Read { reason, .. }
            | Self::Invalid { reason, .. }
            | Self::Unlocated { reason, .. } => reason,
        }
    }

    fn read(path: &Path, error: std::io::Error) -> Self {
        Self::Read {
            file: path.display().to_string(),
            reason: format!("cannot read: {error}"),
            error,
        }
    }

    fn at(file: &str, loc: Location, reason: String) -> Self {
        // Line 0 is the parser's "unknown location"; printing `FILE:0:0:`
        // would send the user looking for a line that does not exist.
        if loc.line() == 0 {
            Self::Unlocated {
                file: file.to_owned(),
                reason,
            }
        } else {
            Self::Invalid {
                file: file.to_owned(),
                line: loc.line(),
                column: loc.column(),
                reason,
            }
        }
    }

    fn from_yaml(file: &str, err: &serde_saphyr::Error) -> Self {
        // The user-facing formatter omits the developer hints of the default
        // one (e.g. "set DuplicateKeyPolicy in Options"), which mean nothing
        // to someone editing a config file. It is called on the innermost
        // error because rendering entry points would append "at line X" and
        // snippets themselves, while we print the position as FILE:LINE:COL.
        let reason = clean(&UserMessageFormatter.format_message(innermost(err)));
        match err.location() {
            Some(loc) => Self::at(file, loc, reason),
            None => Self::Unlocated {
                file: file.to_owned(),
                reason,
            },
        }
    }
}

/// Strips the alias and snippet wrappers that only add rendering context.
fn innermost(mut err: &serde_saphyr::Error) -> &serde_saphyr::Error {
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = err
    {
        err = error;
    }
    err
}

/// Reads, parses and validates the configuration file at `path`, including
/// that the cgroup and netns paths it names exist.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError::read(path, e))?;
    let origin = path.display().to_string();
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => return Err(not_utf8(&origin, &bytes, e.valid_up_to())),
    };
    parse(text, &origin, PathChecks::Enabled)
}

/// Same as [`load_file`]; the entry point of the `config check` command.
pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
    load_file(path)
}

/// Parses and validates `text`; `origin` names the source in messages.
/// Paths named by the configuration must exist, as for [`load_file`].
pub fn parse_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    parse(text, origin, PathChecks::Enabled)
}

/// The configuration compiled into the binary: a bare-host node with no
/// peers, no workloads, no services and no authorization policies, whose CA
/// is generated in [`DEFAULT_CA_DIR`].
///
/// Paths are not checked for existence, because the binary may run on a
/// host where the default cgroup mount differs; the agent reports that when
/// it attaches. Should the embedded file ever fail to parse (a unit test
/// proves it does not), the same values are built in code instead of
/// panicking.
pub fn embedded_default() -> Config {
    parse(
        EMBEDDED_DEFAULT,
        "<embedded default-config.yaml>",
        PathChecks::Skipped,
    )
    .unwrap_or_else(|_| builtin_default())
}

/// The values of `default-config.yaml`, kept in sync by a unit test.
fn builtin_default() -> Config {
    Config {
        node: NodeConfig {
            name: "local".to_owned(),
            cgroup: PathBuf::from("/sys/fs/cgroup/unified"),
            bpffs: PathBuf::from(DEFAULT_BPFFS),
            outbound_port: DEFAULT_OUTBOUND_PORT,
            admin: DEFAULT_ADMIN,
            fast_path: false,
            address: None,
            tunnel_port: DEFAULT_TUNNEL_PORT,
        },
        nodes: Vec::new(),
        identity: IdentityConfig::default(),
        workloads: Vec::new(),
        services: Vec::new(),
        authorization: Vec::new(),
        http: HttpSettings::default(),
        http_routes: Vec::new(),
        grpc_routes: Vec::new(),
        telemetry: TelemetrySettings::default(),
        kubernetes: None,
    }
}

/// Whether paths that must exist are checked against the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathChecks {
    Enabled,
    Skipped,
}

fn parse(text: &str, origin: &str, checks: PathChecks) -> Result<Config, ConfigError> {
    let mut options = serde_saphyr::Options::default();
    // Snippets are rendered by the library's own Display, which we do not
    // use; skip the work of capturing them.
    options.with_snippet = false;

    // A first pass only looks at the shape of the document. It reads the
    // whole stream, so YAML syntax errors are reported before any schema
    // error (the typed pass stops at the first unknown key, which may come
    // before a syntax error), and an empty or non-mapping document gets a
    // message that says what was expected instead of "expected mapping
    // start" or "unexpected end of file".
    let shape: Spanned<Shape> = serde_saphyr::from_str_with_options(text, options.clone())
        .map_err(|e| ConfigError::from_yaml(origin, &e))?;
    let found = match shape.value {
        Shape::Mapping => None,
        Shape::Empty => Some("the file is empty"),
        Shape::Sequence => Some("found a list"),
        Shape::Scalar => Some("found a single value"),
    };
    if let Some(found) = found {
        return Err(ConfigError::at(
            origin,
            shape.referenced,
            format!("{found}; expected a mapping with a `node` section at the top level"),
        ));
    }

    let raw: RawConfig = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| ConfigError::from_yaml(origin, &e))?;
    Checker { origin, checks }.config(raw)
}

/// Reports invalid UTF-8 at the line and column where it starts.
fn not_utf8(origin: &str, bytes: &[u8], valid_up_to: usize) -> ConfigError {
    let valid = bytes
        .get(..valid_up_to)
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("");
    let line = valid.matches('\n').count() as u64 + 1;
    let line_start = valid.rfind('\n').map_or(0, |i| i + 1);
    let column = valid.get(line_start..).map_or(0, |s| s.chars().count()) as u64 + 1;
    ConfigError::Invalid {
        file: origin.to_owned(),
        line,
        column,
        reason: "the file is not valid UTF-8".to_owned(),
    }
}

/// Top-level kind of a YAML document, for the first parsing pass.
enum Shape {
    Mapping,
    Sequence,
    Scalar,
    Empty,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;

        impl<'de> de::Visitor<'de> for ShapeVisitor {
            type Value = Shape;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a YAML document")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                // Drained so that the parser sees (and checks) the whole document.
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Shape::Mapping)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Shape::Sequence)
            }

            fn visit_unit<E>(self) -> Result<Shape, E> {
                Ok(Shape::Empty)
            }

            fn visit_none<E>(self) -> Result<Shape, E> {
                Ok(Shape::Empty)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
                d.deserialize_any(self)
            }

            fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_i128<E>(self, _: i128) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_u128<E>(self, _: u128) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_bytes<E>(self, _: &[u8]) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
        }

        deserializer.deserialize_any(ShapeVisitor)
    }
}

// ---------------------------------------------------------------------------
// Raw, span-carrying mirror of the YAML.

/// Turns an explicit `null` (e.g. `workloads:` with every entry commented
/// out) into an empty list instead of a type error.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Distinguishes a present key from an absent one even when its value is
/// `null`: plain `Option` would read `egress:` (null) as "absent", silently
/// turning an intended deny-all policy into allow-all.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

type Text = Spanned<String>;

/// A YAML mapping as its entries in file order, spans kept on keys and
/// values; an explicit `null` is an empty mapping.
fn entries<'de, D>(deserializer: D) -> Result<Vec<(Text, Text)>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Entries(Vec<(Text, Text)>);

    impl<'de> Deserialize<'de> for Entries {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct EntriesVisitor;

            impl<'de> de::Visitor<'de> for EntriesVisitor {
                type Value = Entries;

                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a mapping of names to values")
                }

                fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = map.next_entry::<Text, Text>()? {
                        out.push(entry);
                    }
                    Ok(Entries(out))
                }
            }

            deserializer.deserialize_map(EntriesVisitor)
        }
    }

    Ok(Option::<Entries>::deserialize(deserializer)?.map_or_else(Vec::new, |e| e.0))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default, deserialize_with = "null_as_empty")]
    nodes: Vec<RawPeerNode>,
    #[serde(default)]
    identity: Option<RawIdentity>,
    #[serde(default, deserialize_with = "null_as_empty")]
    workloads: Vec<RawWorkload>,
    #[serde(default, deserialize_with = "null_as_empty")]
    services: Vec<RawService>,
    #[serde(default, deserialize_with = "null_as_empty")]
    authorization: Vec<RawPolicy>,
    /// `null` is the defaults, like an absent section.
    #[serde(default)]
    http: Option<RawHttp>,
    #[serde(default, deserialize_with = "null_as_empty")]
    http_routes: Vec<Spanned<RawHttpRoute>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    grpc_routes: Vec<Spanned<RawGrpcRoute>>,
    /// `null` is the defaults, like an absent section.
    #[serde(default)]
    telemetry: Option<RawTelemetry>,
    /// Present (even null) = the Kubernetes source is on.
    #[serde(default, deserialize_with = "present")]
    kubernetes: Option<Spanned<Option<kubernetes::RawKubernetes>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Text,
    cgroup: Text,
    #[serde(default)]
    bpffs: Option<Text>,
    #[serde(default)]
    outbound_port: Option<Text>,
    #[serde(default)]
    admin: Option<Text>,
    #[serde(default)]
    fast_path: Option<bool>,
    #[serde(default)]
    address: Option<Text>,
    #[serde(default)]
    tunnel_port: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeerNode {
    name: Text,
    address: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default)]
    trust_domain: Option<Text>,
    #[serde(default)]
    ca: Option<Spanned<RawCa>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    trust_bundle: Vec<Text>,
    #[serde(default)]
    cert_lifetime: Option<Text>,
}

/// Either `dir` or both `cert` and `key`; checked after deserialization so
/// that the message can say which combination is wrong.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    #[serde(default)]
    dir: Option<Text>,
    #[serde(default)]
    cert: Option<Text>,
    #[serde(default)]
    key: Option<Text>,
}

/// `Some(value: None)` is a key present with a null value.
type RawRules<T> = Option<Spanned<Option<Vec<T>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Text,
    #[serde(default)]
    namespace: Option<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    vips: Vec<Text>,
    #[serde(default, deserialize_with = "null_as_empty")]
    ports: Vec<RawServicePort>,
    #[serde(default, deserialize_with = "null_as_empty")]
    endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    load_balancer: Option<Text>,
    /// `Some(value: None)` is a key present with a null value, which is refused as ambiguous.
    #[serde(default, deserialize_with = "present")]
    outlier_detection: Option<Spanned<Option<RawOutlierDetection>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServicePort {
    port: Text,
    #[serde(default)]
    target_port: Option<Text>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    protocol: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    ip: Text,
    #[serde(default)]
    node: Option<Text>,
    #[serde(default)]
    workload: Option<String>,
}

/// Istio's AuthorizationPolicy spec (L4 part), hence the camelCase keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
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

// ---------------------------------------------------------------------------
// Validation and conversion.

struct Checker<'a> {
    origin: &'a str,
    checks: PathChecks,
}

impl Checker<'_> {
    fn err(&self, loc: Location, reason: String) -> ConfigError {
        ConfigError::at(self.origin, loc, reason)
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let node = self.node(raw.node)?;
        let nodes = self.peer_nodes(raw.nodes, &node)?;
        let identity = match raw.identity {
            Some(identity) => self.identity(identity)?,
            None => IdentityConfig::default(),
        };
        let workloads = self.workloads(raw.workloads)?;
        let services = self.services(raw.services, &node, &nodes)?;
        let authorization = self.policies(raw.authorization)?;
        let http = match &raw.http {
            Some(http) => self.http_settings(http)?,
            None => HttpSettings::default(),
        };
        let http_routes = self.http_routes(&raw.http_routes, &services)?;
        let grpc_routes = self.grpc_routes(&raw.grpc_routes, &services)?;
        let telemetry = match &raw.telemetry {
            Some(t) => self.telemetry(t, &node)?,
            None => TelemetrySettings::default(),
        };
        let kubernetes = match &raw.kubernetes {
            Some(k) => Some(self.kubernetes(k, &node.name)?),
            None => None,
        };
        Ok(Config {
            node,
            nodes,
            identity,
            workloads,
            services,
            authorization,
            http,
            http_routes,
            grpc_routes,
            telemetry,
            kubernetes,
        })
    }

    fn node(&self, raw: RawNode) -> Result<NodeConfig, ConfigError> {
        let name = raw.name.value.clone();
        if !is_node_name(&name) {
            return Err(self.err(
                raw.name.referenced,
                format!(
                    "invalid node name {}: use 1 to 63 characters among a-z, 0-9 and '-'",
                    quote(&name)
                ),
            ));
        }
        let cgroup = self.cgroup_dir(&raw.cgroup)?;
        let bpffs = match &raw.bpffs {
            Some(p) => self.absolute(p, "bpffs")?,
            None => PathBuf::from(DEFAULT_BPFFS),
        };
        let outbound_port = match &raw.outbound_port {
            Some(p) => self.port(p)?,
            None => DEFAULT_OUTBOUND_PORT,
        };
        let admin = match &raw.admin {
            Some(a) => self.admin(a)?,
            None => DEFAULT_ADMIN,
        };
        let address = match &raw.address {
            Some(a) => Some(self.node_address(a)?),
            None => None,
        };
        let tunnel_port = match &raw.tunnel_port {
            Some(p) => self.port(p)?,
            None => DEFAULT_TUNNEL_PORT,
        };
        // The tunnel listener binds every address, so it would collide with
        // the other listeners of the agent on the same port.
        let clashes = [
            ("outbound_port", outbound_port, raw.outbound_port.as_ref()),
            ("admin", admin.port(), raw.admin.as_ref()),
        ];
        for (key, port, other) in clashes {
            if port != tunnel_port {
                continue;
            }
            // Point at whichever of the two is written in the file.
            let err = match (&raw.tunnel_port, other) {
                (Some(t), _) => self.err(
                    t.referenced,
                    format!("tunnel_port {tunnel_port} is also the port of `{key}`"),
                ),
                (None, Some(o)) => self.err(
                    o.referenced,
                    format!(
                        "`{key}` uses port {port}, the default tunnel_port; choose another port or set tunnel_port"
                    ),
                ),
                // Both defaults: they differ, so this cannot happen.
                (None, None) => self.err(
                    raw.name.referenced,
                    format!("tunnel_port {tunnel_port} is also the port of `{key}`"),
                ),
            };
            return Err(err);
        }
        Ok(NodeConfig {
            name,
            cgroup,
            bpffs,
            outbound_port,
            admin,
            fast_path: raw.fast_path.unwrap_or(false),
            address,
            tunnel_port,
        })
    }

    /// An address other nodes can connect to.
    fn node_address(&self, raw: &Text) -> Result<IpAddr, ConfigError> {
        let ip = self.ip(raw)?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(self.err(
                raw.referenced,
                format!("node address {ip} cannot be connected to; use the node's own IP address"),
            ));
        }
        Ok(ip)
    }

    fn peer_nodes(
        &self,
        raws: Vec<RawPeerNode>,
        node: &NodeConfig,
    ) -> Result<Vec<PeerNode>, ConfigError> {
        let mut names: HashMap<String, u64> = HashMap::new();
        let mut addresses: HashMap<IpAddr, (String, u64)> = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let name = raw.name.value.clone();
            if !is_node_name(&name) {
                return Err(self.err(
                    raw.name.referenced,
                    format!(
                        "invalid node name {}: use 1 to 63 characters among a-z, 0-9 and '-'",
                        quote(&name)
                    ),
                ));
            }
            if let Some(first) = names.insert(name.clone(), line_of(&raw.name)) {
                return Err(self.err(
                    raw.name.referenced,
                    format!(
                        "duplicate node {} (first defined at line {first})",
                        quote(&name)
                    ),
                ));
            }
            let address = self.node_address(&raw.address)?;
            // Listing this node is allowed, so that every node can share one
            // list, but only with this node's own address: anything else
            // would send this node's endpoints somewhere else.
            if name == node.name && node.address != Some(address) {
                let why = match node.address {
                    Some(own) => format!("node.address is {own}"),
                    None => "node.address is not set".to_owned(),
                };
                return Err(self.err(
                    raw.name.referenced,
                    format!(
                        "node {} is this node; it may be listed under nodes only with this node's address ({why})",
                        quote(&name)
                    ),
                ));
            }
            if name != node.name && node.address == Some(address) {
                return Err(self.err(
                    raw.address.referenced,
                    format!(
                        "address {address} of node {} is this node's address (node.address)",
                        quote(&name)
                    ),
                ));
            }
            if let Some((other, line)) = addresses.get(&address) {
                return Err(self.err(
                    raw.address.referenced,
                    format!(
                        "address {address} is already used by node {} (line {line})",
                        quote(other)
                    ),
                ));
            }
            addresses.insert(address, (name.clone(), line_of(&raw.address)));
            out.push(PeerNode { name, address });
        }
        Ok(out)
    }

    fn identity(&self, raw: RawIdentity) -> Result<IdentityConfig, ConfigError> {
        let trust_domain = match &raw.trust_domain {
            Some(td) => self.trust_domain(td)?,
            None => DEFAULT_TRUST_DOMAIN.to_owned(),
        };
        let ca = match &raw.ca {
            Some(ca) => self.ca(ca)?,
            None => CaSource::Generate {
                dir: PathBuf::from(DEFAULT_CA_DIR),
            },
        };
        let trust_bundle = raw
            .trust_bundle
            .iter()
            .map(|p| self.pem_file(p, "trust_bundle"))
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let cert_lifetime = match &raw.cert_lifetime {
            Some(l) => self.cert_lifetime(l)?,
            None => DEFAULT_CERT_LIFETIME,
        };
        Ok(IdentityConfig {
            trust_domain,
            ca,
            trust_bundle,
            cert_lifetime,
        })
    }

    fn trust_domain(&self, raw: &Text) -> Result<String, ConfigError> {
        let v = &raw.value;
        let why = if v.to_ascii_lowercase().starts_with("spiffe://") {
            Some("write it without the `spiffe://` prefix")
        } else if !(1..=255).contains(&v.len())
            || !v.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            })
        {
            Some("use 1 to 255 characters among a-z, 0-9, '.', '-' and '_'")
        } else {
            None
        };
        match why {
            Some(why) => Err(self.err(
                raw.referenced,
                format!("invalid trust domain {}: {why}", quote(v)),
            )),
            None => Ok(v.clone()),
        }
    }

    fn ca(&self, raw: &Spanned<RawCa>) -> Result<CaSource, ConfigError> {
        let RawCa { dir, cert, key } = &raw.value;
        match (dir, cert, key) {
            (Some(dir), None, None) => {
                // Created on first run, so it need not exist; but something
                // else in its place would only fail when the agent starts.
                let path = self.absolute(dir, "ca.dir")?;
                if self.checks == PathChecks::Enabled && path.exists() {
                    self.must_exist(dir, &path, "ca.dir", |m| {
                        (!m.is_dir()).then_some("is not a directory")
                    })?;
                }
                Ok(CaSource::Generate { dir: path })
            }
            (None, Some(cert), Some(key)) => Ok(CaSource::Files {
                cert: self.pem_file(cert, "ca.cert")?,
                key: self.pem_file(key, "ca.key")?,
            }),
            (Some(_), Some(other), _) | (Some(_), None, Some(other)) => Err(self.err(
                other.referenced,
                "`ca` takes either `dir` (a CA generated by the agent) or `cert` and `key` (a CA you provide), not both".to_owned(),
            )),
            (None, Some(cert), None) => Err(self.err(
                cert.referenced,
                "`ca.cert` needs `ca.key`: give both files of the CA, or `dir` alone".to_owned(),
            )),
            (None, None, Some(key)) => Err(self.err(
                key.referenced,
                "`ca.key` needs `ca.cert`: give both files of the CA, or `dir` alone".to_owned(),
            )),
            (None, None, None) => Err(self.err(
                raw.referenced,
                "`ca` is empty: set `dir` (a CA generated by the agent) or `cert` and `key` (a CA you provide)".to_owned(),
            )),
        }
    }

    /// A PEM file that must exist; its content is read when the agent starts.
    fn pem_file(&self, raw: &Text, what: &str) -> Result<PathBuf, ConfigError> {
        let path = self.absolute(raw, what)?;
        if self.checks == PathChecks::Enabled {
            self.must_exist(raw, &path, what, |m| {
                m.is_dir().then_some("is a directory, not a PEM file")
            })?;
        }
        Ok(path)
    }

    /// A whole number and a unit: `10s`, `90m`, `24h`, `1d`.
    fn cert_lifetime(&self, raw: &Text) -> Result<Duration, ConfigError> {
        let text = raw.value.trim();
        let d = match parse_duration(text, CERT_LIFETIME_UNITS) {
            DurationText::Valid(d) => Some(d),
            DurationText::TooLarge => None,
            DurationText::Invalid => {
                return Err(self.err(
                    raw.referenced,
                    format!(
                        "invalid cert_lifetime {}: expected a whole number and a unit s, m, h or d, such as 90m or 24h",
                        quote(&raw.value)
                    ),
                ));
            }
        };
        match d {
            Some(d) if d < MIN_CERT_LIFETIME => Err(self.err(
                raw.referenced,
                format!(
                    "cert_lifetime {} is too short: the minimum is {}",
                    clean(text),
                    format_duration(&MIN_CERT_LIFETIME)
                ),
            )),
            Some(d) if d <= MAX_CERT_LIFETIME => Ok(d),
            _ => Err(self.err(
                raw.referenced,
                format!(
                    "cert_lifetime {} is too long: the maximum is 365d",
                    clean(text)
                ),
            )),
        }
    }

    fn admin(&self, raw: &Text) -> Result<SocketAddr, ConfigError> {
        let addr: SocketAddr = raw.value.trim().parse().map_err(|_| {
            self.err(
                raw.referenced,
                format!(
                    "invalid admin address {}: expected IP:PORT such as 127.0.0.1:15000 or [::1]:15000",
                    quote(&raw.value)
                ),
            )
        })?;
        // The admin endpoint has no authentication; exposing it beyond the
        // host would let anyone read and change the agent's state.
        if !addr.ip().is_loopback() {
            return Err(self.err(
                raw.referenced,
                format!("admin address {addr} is not a loopback address (use 127.0.0.1 or ::1)"),
            ));
        }
        Ok(addr)
    }

    fn workloads(&self, raws: Vec<RawWorkload>) -> Result<Vec<Workload>, ConfigError> {
        // Each map remembers the first definition, for "first defined at".
        let mut names: HashMap<(String, String), u64> = HashMap::new();
        let mut cgroups: HashMap<PathBuf, (String, u64)> = HashMap::new();
        let mut ips: HashMap<IpAddr, (String, u64)> = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let name = self.object_name(&raw.name, "workload name")?;
            let namespace = self.namespace(raw.namespace.as_ref())?;
            let id = format!("{namespace}/{name}");
            if let Some(first) = names.insert((namespace.clone(), name.clone()), line_of(&raw.name))
            {
                return Err(self.err(
                    raw.name.referenced,
                    format!(
                        "duplicate workload {} (first defined at line {first})",
                        quote(&id)
                    ),
                ));
            }

            let cgroup = self.cgroup_dir(&raw.cgroup)?;
            // Two workloads on one cgroup would make per-workload policy
            // ambiguous: the programs cannot tell their sockets apart.
            if let Some((other, line)) = cgroups.get(&cgroup) {
                return Err(self.err(
                    raw.cgroup.referenced,
                    format!(
                        "cgroup path {} is already used by workload {} (line {line})",
                        clean(&cgroup.display().to_string()),
                        quote(other)
                    ),
                ));
            }
            cgroups.insert(cgroup.clone(), (id.clone(), line_of(&raw.cgroup)));

            let netns = match &raw.netns {
                Some(p) => Some(self.netns_file(p)?),
                None => None,
            };

            let mut workload_ips = Vec::with_capacity(raw.ips.len());
            for raw_ip in &raw.ips {
                let ip = self.ip(raw_ip)?;
                // Ingress policy is looked up by destination IP; an IP owned
                // by two workloads would apply one of them arbitrarily.
                if let Some((other, line)) = ips.get(&ip) {
                    return Err(self.err(
                        raw_ip.referenced,
                        format!(
                            "IP {ip} is already assigned to workload {} (line {line})",
                            quote(other)
                        ),
                    ));
                }
                ips.insert(ip, (id.clone(), line_of(raw_ip)));
                workload_ips.push(ip);
            }

            let egress = match self.rules(raw.egress, "egress")? {
                Some(rules) => Some(
                    rules
                        .iter()
                        .map(|r| {
                            Ok(EgressRule {
                                to: self.cidr(&r.to)?,
                                ports: self.ports(&r.ports)?,
                            })
                        })
                        .collect::<Result<Vec<_>, ConfigError>>()?,
                ),
                None => None,
            };
            let ingress = match self.rules(raw.ingress, "ingress")? {
                Some(rules) => Some(
                    rules
                        .iter()
                        .map(|r| {
                            Ok(IngressRule {
                                from: self.cidr(&r.from)?,
                                ports: self.ports(&r.ports)?,
                            })
                        })
                        .collect::<Result<Vec<_>, ConfigError>>()?,
                ),
                None => None,
            };

            let service_account = match &raw.service_account {
                Some(sa) => self.object_name(sa, "service account")?,
                None => DEFAULT_SERVICE_ACCOUNT.to_owned(),
            };
            let labels = self.labels(&raw.labels)?;
            let mode = match &raw.mode {
                Some(m) => self.mode(m)?,
                None => PeerAuthMode::default(),
            };

            out.push(Workload {
                name,
                namespace,
                cgroup,
                netns,
                ips: workload_ips,
                egress,
                ingress,
                service_account,
                labels,
                mode,
            });
        }
        Ok(out)
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
    fn labels(&self, raws: &[(Text, Text)]) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut out = BTreeMap::new();
        for (key, value) in raws {
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
            out.insert(key.value.clone(), value.value.clone());
        }
        Ok(out)
    }

    fn services(
        &self,
        raws: Vec<RawService>,
        node: &NodeConfig,
        peers: &[PeerNode],
    ) -> Result<Vec<Service>, ConfigError> {
        let mut names: HashMap<(String, String), u64> = HashMap::new();
        let mut frontends: HashMap<(IpAddr, u16), (String, u64)> = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let name = self.object_name(&raw.name, "service name")?;
            let namespace = self.namespace(raw.namespace.as_ref())?;
            let id = format!("{namespace}/{name}");
            if let Some(first) = names.insert((namespace.clone(), name.clone()), line_of(&raw.name))
            {
                return Err(self.err(
                    raw.name.referenced,
                    format!(
                        "duplicate service {} (first defined at line {first})",
                        quote(&id)
                    ),
                ));
            }

            let mut ports: Vec<ServicePort> = Vec::with_capacity(raw.ports.len());
            let mut port_lines: HashMap<u16, u64> = HashMap::new();
            for raw_port in &raw.ports {
                let port = self.port(&raw_port.port)?;
                if let Some(first) = port_lines.insert(port, line_of(&raw_port.port)) {
                    return Err(self.err(
                        raw_port.port.referenced,
                        format!("duplicate service port {port} (first defined at line {first})"),
                    ));
                }
                let target_port = match &raw_port.target_port {
                    Some(t) => self.port(t)?,
                    None => port,
                };
                ports.push(ServicePort {
                    port,
                    target_port,
                    name: raw_port.name.clone(),
                    protocol: self
                        .port_protocol(raw_port.protocol.as_ref(), raw_port.name.as_deref())?,
                });
            }

            let mut vips = Vec::with_capacity(raw.vips.len());
            for raw_vip in &raw.vips {
                let vip = self.ip(raw_vip)?;
                // A (VIP, port) frontend maps to exactly one backend set in
                // the datapath; two services cannot share it.
                for port in &ports {
                    if let Some((other, line)) = frontends.get(&(vip, port.port)) {
                        return Err(self.err(
                            raw_vip.referenced,
                            format!(
                                "VIP {vip} port {} is already used by service {} (line {line})",
                                port.port,
                                quote(other)
                            ),
                        ));
                    }
                }
                for port in &ports {
                    frontends.insert((vip, port.port), (id.clone(), line_of(raw_vip)));
                }
                vips.push(vip);
            }

            let endpoints = raw
                .endpoints
                .iter()
                .map(|e| {
                    Ok(Endpoint {
                        ip: self.ip(&e.ip)?,
                        node: match &e.node {
                            Some(n) => Some(self.endpoint_node(n, node, peers)?),
                            None => None,
                        },
                        workload: e.workload.clone(),
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;

            out.push(Service {
                name,
                namespace,
                vips,
                ports,
                endpoints,
                load_balancer: match &raw.load_balancer {
                    Some(lb) => self.load_balancer(lb)?,
                    None => LoadBalancer::default(),
                },
                outlier_detection: match &raw.outlier_detection {
                    Some(od) => Some(self.outlier_detection(od)?),
                    None => None,
                },
            });
        }
        Ok(out)
    }

    /// The node of an endpoint decides how it is reached (in process or
    /// through that node's tunnel), so a name the agent cannot resolve to an
    /// address is an error rather than a silent plain-TCP fallback.
    fn endpoint_node(
        &self,
        raw: &Text,
        node: &NodeConfig,
        peers: &[PeerNode],
    ) -> Result<String, ConfigError> {
        let name = &raw.value;
        if *name == node.name || peers.iter().any(|p| p.name == *name) {
            return Ok(name.clone());
        }
        Err(self.err(
            raw.referenced,
            format!(
                "endpoint node {} is neither this node ({}) nor listed under nodes",
                quote(name),
                quote(&node.name)
            ),
        ))
    }

    fn policies(&self, raws: Vec<RawPolicy>) -> Result<Vec<AuthorizationPolicy>, ConfigError> {
        let mut names: HashMap<(String, String), u64> = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let name = self.object_name(&raw.name, "authorization policy name")?;
            let namespace = self.namespace(raw.namespace.as_ref())?;
            if let Some(first) = names.insert((namespace.clone(), name.clone()), line_of(&raw.name))
            {
                return Err(self.err(
                    raw.name.referenced,
                    format!(
                        "duplicate authorization policy {} (first defined at line {first})",
                        quote(&format!("{namespace}/{name}"))
                    ),
                ));
            }
            // An empty matchLabels selects every workload, like no selector:
            // one representation for both.
            let selector = match &raw.selector {
                Some(s) => Some(self.labels(&s.match_labels)?).filter(|m| !m.is_empty()),
                None => None,
            };
            let action = match &raw.action {
                Some(a) => self.action(a)?,
                None => AuthzAction::default(),
            };
            let rules = raw
                .rules
                .iter()
                .map(|r| self.authz_rule(r))
                .collect::<Result<Vec<_>, ConfigError>>()?;
            out.push(AuthorizationPolicy {
                name,
                namespace,
                selector,
                action,
                rules,
            });
        }
        Ok(out)
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
        let from = raw
            .from
            .iter()
            .map(|f| {
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
                Ok(AuthzSource {
                    principals: self.principals(&source.principals)?,
                    not_principals: self.principals(&source.not_principals)?,
                    namespaces: self.namespace_patterns(&source.namespaces)?,
                    not_namespaces: self.namespace_patterns(&source.not_namespaces)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let to = raw
            .to
            .iter()
            .map(|t| {
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
                Ok(AuthzOperation {
                    ports: self.ports(&operation.ports)?,
                    not_ports: self.ports(&operation.not_ports)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(AuthzRule { from, to })
    }

    /// SPIFFE IDs as Istio writes principals: `TD/ns/NS/sa/SA`, with or
    /// without `spiffe://` (stored without), or a `*`, `prefix*` or
    /// `*suffix` pattern.
    fn principals(&self, raws: &[Text]) -> Result<Vec<String>, ConfigError> {
        raws.iter()
            .map(|raw| {
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
            })
            .collect()
    }

    /// Namespace names, or a `*`, `prefix*` or `*suffix` pattern of them.
    fn namespace_patterns(&self, raws: &[Text]) -> Result<Vec<String>, ConfigError> {
        raws.iter()
            .map(|raw| {
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
            })
            .collect()
    }

    /// Workload and service names: they are printed as `namespace/name` in
    /// logs and the admin API, so a '/' or whitespace would make those
    /// ambiguous.
    fn object_name(&self, raw: &Text, what: &str) -> Result<String, ConfigError> {
        let v = &raw.value;
        if v.is_empty()
            || v.chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        {
            return Err(self.err(
                raw.referenced,
                format!(
                    "invalid {what} {}: must be non-empty without '/', spaces or control characters",
                    quote(v)
                ),
            ));
        }
        Ok(v.clone())
    }

    fn namespace(&self, raw: Option<&Text>) -> Result<String, ConfigError> {
        match raw {
            Some(ns) => self.object_name(ns, "namespace"),
            None => Ok(DEFAULT_NAMESPACE.to_owned()),
        }
    }

    /// Relative paths would depend on the agent's working directory, which
    /// a service manager picks, so they are refused.
    fn absolute(&self, raw: &Text, what: &str) -> Result<PathBuf, ConfigError> {
        let path = PathBuf::from(&raw.value);
        if !path.is_absolute() {
            return Err(self.err(
                raw.referenced,
                format!("{what} path {} must be absolute", quote(&raw.value)),
            ));
        }
        Ok(path)
    }

    fn cgroup_dir(&self, raw: &Text) -> Result<PathBuf, ConfigError> {
        let path = self.absolute(raw, "cgroup")?;
        if self.checks == PathChecks::Enabled {
            self.must_exist(raw, &path, "cgroup", |m| {
                (!m.is_dir()).then_some("is not a directory")
            })?;
        }
        Ok(path)
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

    /// Checks that `path` exists (following symlinks, as /proc/PID/ns/net is
    /// one) and that `wrong_kind` finds nothing wrong with it.
    fn must_exist(
        &self,
        raw: &Text,
        path: &Path,
        what: &str,
        wrong_kind: impl Fn(&std::fs::Metadata) -> Option<&'static str>,
    ) -> Result<(), ConfigError> {
        let shown = clean(&path.display().to_string());
        let problem = match std::fs::metadata(path) {
            Ok(meta) => wrong_kind(&meta).map(str::to_owned),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist".to_owned()),
            Err(e) => Some(format!("cannot be accessed: {e}")),
        };
        match problem {
            Some(problem) => {
                Err(self.err(raw.referenced, format!("{what} path {shown} {problem}")))
            }
            None => Ok(()),
        }
    }

    fn port(&self, raw: &Text) -> Result<u16, ConfigError> {
        let text = raw.value.trim();
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        match text.parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            // A number, even one too large for any integer type, is a range
            // problem rather than a syntax one.
            _ if digits => Err(self.err(
                raw.referenced,
                format!("port {} is out of range 1..=65535", clean(text)),
            )),
            _ => Err(self.err(
                raw.referenced,
                format!(
                    "invalid port {}: expected a number in 1..=65535",
                    quote(&raw.value)
                ),
            )),
        }
    }

    fn ports(&self, raws: &[Text]) -> Result<Vec<u16>, ConfigError> {
        raws.iter().map(|p| self.port(p)).collect()
    }

    fn ip(&self, raw: &Text) -> Result<IpAddr, ConfigError> {
        raw.value.trim().parse().map_err(|_| {
            self.err(
                raw.referenced,
                format!("invalid IP address {}", quote(&raw.value)),
            )
        })
    }

    /// A CIDR, or a bare IP meaning that single host (/32 or /128).
    fn cidr(&self, raw: &Text) -> Result<IpNet, ConfigError> {
        parse_cidr(&raw.value).map_err(|why| {
            self.err(
                raw.referenced,
                format!("invalid CIDR {}: {why}", quote(&raw.value)),
            )
        })
    }
}

/// Units of `identity.cert_lifetime`, in milliseconds.
const CERT_LIFETIME_UNITS: &[(&str, u64)] = &[
    ("s", 1000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// A duration written as a whole number and one of `units` (name, milliseconds).
enum DurationText {
    Valid(Duration),
    /// A number too large for any integer type: a range problem, like for ports.
    TooLarge,
    Invalid,
}

fn parse_duration(text: &str, units: &[(&str, u64)]) -> DurationText {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let Some(&(_, unit_ms)) = units.iter().find(|(name, _)| *name == unit) else {
        return DurationText::Invalid;
    };
    if digits.is_empty() {
        return DurationText::Invalid;
    }
    match digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
    {
        Some(ms) => DurationText::Valid(Duration::from_millis(ms)),
        None => DurationText::TooLarge,
    }
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let Some((addr, len)) = text.split_once('/') else {
        return text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| "expected an IP address or ADDRESS/PREFIX_LENGTH".to_owned());
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{} is not an IP address", quote(addr)))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .map_err(|_| format!("prefix length {} is not a number", quote(len)))?;
    if len > max {
        return Err(format!("prefix length {len} is longer than {max}"));
    }
    IpNet::new(addr, len)
        .map(|net| net.trunc())
        .map_err(|e| e.to_string())
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

/// Kubernetes label key: an optional DNS subdomain prefix and '/', then a
/// name of 1 to 63 characters.
fn label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let dns_label = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if prefix.len() > 253 || !prefix.split('.').all(dns_label) {
            return Err(
                "the prefix before '/' must be a DNS subdomain such as example.com (lowercase, at most 253 characters)",
            );
        }
    }
    if name.is_empty() || !is_label_name(name) {
        return Err(
            "the name must be 1 to 63 characters among A-Z, a-z, 0-9, '-', '_' and '.' (at most one '/' after an optional DNS prefix), starting and ending with a letter or digit",
        );
    }
    Ok(())
}

/// Kubernetes label value: empty, or like the name part of a key.
fn label_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(
            "use at most 63 characters among A-Z, a-z, 0-9, '-', '_' and '.', starting and ending with a letter or digit",
        )
    }
}

fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn is_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn line_of<T>(spanned: &Spanned<T>) -> u64 {
    spanned.referenced.line()
}

/// Escapes control characters so that a value from the file cannot break
/// the one-line `FILE:LINE:COLUMN: REASON` format or inject terminal codes.
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            // Writing to a String cannot fail.
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A value from the file, as shown in messages.
fn quote(text: &str) -> String {
    format!("`{}`", clean(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// Directories and files the path checks need: `$D` in a test config is
    /// replaced by the fixture's root.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            for sub in ["node", "pods/web", "pods/api"] {
                std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
            }
            std::fs::write(dir.path().join("netns-web"), b"").expect("netns file");
            // Content is not checked by the config: empty files will do.
            for pem in ["ca.pem", "ca-key.pem", "old-root.pem"] {
                std::fs::write(dir.path().join(pem), b"").expect("pem file");
            }
            Self { dir }
        }

        fn root(&self) -> String {
            self.dir.path().display().to_string()
        }

        fn text(&self, yaml: &str) -> String {
            yaml.replace("$D", &self.root())
        }

        fn parse(&self, yaml: &str) -> Result<Config, ConfigError> {
            parse_str(&self.text(yaml), "test.yaml")
        }

        /// Parses `yaml`, expecting an error at `line` whose reason contains
        /// `needle`; returns the error for further checks.
        fn fails(&self, yaml: &str, line: u64, needle: &str) -> ConfigError {
            let err = match self.parse(yaml) {
                Ok(cfg) => panic!("expected an error, got {cfg:?}"),
                Err(e) => e,
            };
            assert_eq!(err.line(), Some(line), "wrong line for: {err}");
            assert!(err.reason().contains(needle), "{needle:?} not in: {err}");
            let prefix = format!("test.yaml:{line}:");
            assert!(err.to_string().starts_with(&prefix), "bad format: {err}");
            err
        }
    }

    const NODE: &str = "node:\n  name: node1\n  cgroup: $D/node\n";

    fn with_node(rest: &str) -> String {
        format!("{NODE}{rest}")
    }

    #[test]
    fn embedded_default_parses_and_matches_builtin() {
        let parsed = parse(EMBEDDED_DEFAULT, "default-config.yaml", PathChecks::Skipped)
            .expect("embedded default-config.yaml must parse");
        assert_eq!(parsed, builtin_default());
        assert_eq!(embedded_default(), builtin_default());
    }

    /// The commented-out examples of the embedded file, un-commented, are a
    /// valid configuration that sets every documented key.
    #[test]
    fn embedded_default_examples_are_valid() {
        let mut text = String::new();
        for line in EMBEDDED_DEFAULT.lines() {
            // Example lines are `#` plus an indentation of two or more
            // spaces; prose comments have one space after the `#`.
            let line = match line.strip_prefix('#') {
                Some(rest) if rest.starts_with("  ") => rest,
                _ => line,
            };
            let mut line = line.replace("  # address:", "  address:");
            // `workloads: []` and the like become `workloads:`, followed by
            // the example items.
            if !line.starts_with(' ') && line.ends_with(": []") {
                line.truncate(line.len() - " []".len());
            }
            text.push_str(&line);
            text.push('\n');
        }
        let cfg =
            parse(&text, "examples", PathChecks::Skipped).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(cfg.node.address.is_some());
        assert_eq!(cfg.nodes.len(), 1);
        let web = &cfg.workloads[0];
        assert_eq!(web.service_account, "web");
        assert!(!web.labels.is_empty());
        assert!(web.egress.is_some() && web.ingress.is_some());
        assert_eq!(cfg.services[0].endpoints[0].node.as_deref(), Some("node2"));
        let policy = &cfg.authorization[0];
        assert!(policy.selector.is_some());
        let source = &policy.rules[0].from[0];
        assert!(!source.principals.is_empty() && !source.not_principals.is_empty());
        assert!(!source.namespaces.is_empty() && !source.not_namespaces.is_empty());
        let operation = &policy.rules[0].to[0];
        assert!(!operation.ports.is_empty() && !operation.not_ports.is_empty());
    }

    /// The example shipped in deploy/ is valid (its paths exist only on a
    /// real host, so they are not checked).
    #[test]
    fn deploy_example_is_valid() {
        let text = include_str!("../../deploy/config/example.yaml");
        let cfg =
            parse(text, "example.yaml", PathChecks::Skipped).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.nodes.len(), 2);
        assert!(cfg.workloads.iter().any(|w| w.mode == PeerAuthMode::Strict));
        assert_eq!(cfg.authorization[0].action, AuthzAction::Allow);
    }

    #[test]
    fn full_example_with_defaults() {
        let fx = Fixture::new();
        let yaml = "\
node:
  name: node1
  cgroup: $D/node
  admin: '[::1]:9000'
  fast_path: false
nodes:
  - name: node2
    address: 10.200.0.2
workloads:
  - name: web
    cgroup: $D/pods/web
    netns: $D/netns-web
    ips: [10.1.1.2, 'fd00::2']
    egress:
      - to: 10.96.0.0/16
        ports: [80, 443]
      - to: 10.1.2.3
      - to: 10.9.9.9/8
    ingress: []
  - name: web
    namespace: other
    cgroup: $D/pods/api
services:
  - name: web
    vips: [10.96.0.10]
    ports:
      - port: 80
        target_port: 8080
        name: http
      - port: 443
    endpoints:
      - ip: 10.1.2.2
        node: node2
        workload: web
  - name: headless
    namespace: kube-system
";
        let cfg = fx.parse(yaml).expect("valid config");
        let node = &cfg.node;
        assert_eq!(node.name, "node1");
        assert_eq!(node.bpffs, PathBuf::from(DEFAULT_BPFFS));
        assert_eq!(
            node.pin_dir(),
            PathBuf::from("/sys/fs/bpf/mesh-agent/node1")
        );
        assert_eq!(node.outbound_port, 15001);
        assert_eq!(node.admin, "[::1]:9000".parse().expect("addr"));
        assert!(!node.fast_path);

        let web = &cfg.workloads[0];
        assert_eq!(web.namespace, "default");
        assert_eq!(web.netns, Some(fx.dir.path().join("netns-web")));
        assert_eq!(web.ips.len(), 2);
        let egress = web.egress.as_ref().expect("egress present");
        assert_eq!(egress[0].to, "10.96.0.0/16".parse::<IpNet>().expect("net"));
        assert_eq!(egress[0].ports, vec![80, 443]);
        assert_eq!(egress[1].to, "10.1.2.3/32".parse::<IpNet>().expect("net"));
        assert!(egress[1].ports.is_empty());
        assert_eq!(egress[2].to, "10.0.0.0/8".parse::<IpNet>().expect("net"));
        assert_eq!(web.ingress, Some(Vec::new()));
        assert_eq!(cfg.workloads[1].namespace, "other");
        assert_eq!(cfg.workloads[1].egress, None);
        assert_eq!(cfg.workloads[1].ingress, None);

        let svc = &cfg.services[0];
        assert_eq!(svc.namespace, "default");
        assert_eq!(svc.ports[0].target_port, 8080);
        assert_eq!(svc.ports[0].name.as_deref(), Some("http"));
        assert_eq!(svc.ports[1].target_port, 443);
        assert_eq!(svc.endpoints[0].node.as_deref(), Some("node2"));
        assert!(cfg.services[1].vips.is_empty());

        let json = serde_json::to_value(&cfg).expect("serializable");
        assert_eq!(json["node"]["admin"], "[::1]:9000");
        assert_eq!(json["workloads"][0]["egress"][0]["to"], "10.96.0.0/16");
    }

    #[test]
    fn null_lists_are_empty() {
        let fx = Fixture::new();
        let cfg = fx
            .parse(&with_node("workloads:\nservices:\n"))
            .expect("valid");
        assert!(cfg.workloads.is_empty() && cfg.services.is_empty());
    }

    #[test]
    fn unknown_fields_everywhere() {
        let fx = Fixture::new();
        fx.fails(&with_node("extra: 1\n"), 4, "unknown field `extra`");
        let e = fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  cgrop: /x\n",
            4,
            "unknown field `cgrop`, expected one of",
        );
        assert_eq!(e.column(), Some(3));
        fx.fails(
            &with_node("workloads:\n  - name: w\n    cgroup: $D/pods/web\n    color: red\n"),
            7,
            "unknown field `color`",
        );
        fx.fails(
            &with_node(
                "workloads:\n  - name: w\n    cgroup: $D/pods/web\n    egress:\n      - to: 10.0.0.0/8\n        port: 80\n",
            ),
            9,
            "unknown field `port`",
        );
        fx.fails(
            &with_node(
                "services:\n  - name: s\n    ports:\n      - port: 80\n        targetPort: 81\n",
            ),
            8,
            "unknown field `targetPort`",
        );
        fx.fails(
            &with_node(
                "services:\n  - name: s\n    endpoints:\n      - ip: 10.0.0.1\n        zone: a\n",
            ),
            8,
            "unknown field `zone`",
        );
    }

    #[test]
    fn bad_cidrs() {
        let fx = Fixture::new();
        let head = "workloads:\n  - name: w\n    cgroup: $D/pods/web\n";
        fx.fails(
            &with_node(&format!("{head}    egress:\n      - to: 10.0.0.0/33\n")),
            8,
            "invalid CIDR `10.0.0.0/33`: prefix length 33 is longer than 32",
        );
        fx.fails(
            &with_node(&format!("{head}    ingress:\n      - from: banana\n")),
            8,
            "invalid CIDR `banana`",
        );
        fx.fails(
            &with_node(&format!("{head}    ingress:\n      - from: 10.0.0.0/x\n")),
            8,
            "prefix length `x` is not a number",
        );
        fx.fails(
            &with_node(&format!("{head}    egress:\n      - to: 'fd00::/129'\n")),
            8,
            "longer than 128",
        );
    }

    #[test]
    fn bad_ips() {
        let fx = Fixture::new();
        fx.fails(
            &with_node("workloads:\n  - name: w\n    cgroup: $D/pods/web\n    ips: [10.0.0.1, 10.0.0.256]\n"),
            7,
            "invalid IP address `10.0.0.256`",
        );
        fx.fails(
            &with_node("services:\n  - name: s\n    vips: [nope]\n"),
            6,
            "invalid IP address `nope`",
        );
        fx.fails(
            &with_node("services:\n  - name: s\n    endpoints:\n      - ip: 1.2.3\n"),
            7,
            "invalid IP address `1.2.3`",
        );
    }

    #[test]
    fn bad_ports() {
        let fx = Fixture::new();
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  outbound_port: 0\n",
            4,
            "port 0 is out of range 1..=65535",
        );
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  outbound_port: 65536\n",
            4,
            "port 65536 is out of range",
        );
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  outbound_port: http\n",
            4,
            "invalid port `http`",
        );
        fx.fails(
            &with_node(
                "workloads:\n  - name: w\n    cgroup: $D/pods/web\n    egress:\n      - to: 10.0.0.0/8\n        ports: [80, 0]\n",
            ),
            9,
            "port 0 is out of range",
        );
        fx.fails(
            &with_node(
                "services:\n  - name: s\n    ports:\n      - port: 99999999999999999999999\n",
            ),
            7,
            "out of range",
        );
        fx.fails(
            &with_node("services:\n  - name: s\n    ports:\n      - port: 80\n        target_port: 70000\n"),
            8,
            "port 70000 is out of range",
        );
    }

    #[test]
    fn missing_required_fields() {
        let fx = Fixture::new();
        fx.fails("node:\n  cgroup: $D/node\n", 2, "missing field `name`");
        fx.fails("node:\n  name: n\n", 2, "missing field `cgroup`");
        fx.fails("workloads: []\n", 1, "missing field `node`");
        fx.fails(
            &with_node("workloads:\n  - name: w\n  - name: v\n    cgroup: $D/pods/web\n"),
            5,
            "missing field `cgroup`",
        );
        fx.fails(
            &with_node("services:\n  - name: s\n    endpoints:\n      - node: n2\n"),
            7,
            "missing field `ip`",
        );
        fx.fails(
            &with_node("workloads:\n  - name: w\n    cgroup: $D/pods/web\n    egress:\n      - ports: [80]\n"),
            8,
            "missing field `to`",
        );
    }

    #[test]
    fn missing_paths() {
        let fx = Fixture::new();
        let e = fx.fails(
            "node:\n  name: n\n  cgroup: $D/nope/cg\n",
            3,
            "cgroup path ",
        );
        let expected = format!("cgroup path {}/nope/cg does not exist", fx.root());
        assert_eq!(e.reason(), expected);
        assert_eq!(e.column(), Some(11));

        let e = fx.fails(
            &with_node("workloads:\n  - name: w\n    cgroup: $D/pods/gone\n"),
            6,
            "does not exist",
        );
        assert_eq!(
            e.reason(),
            format!("cgroup path {}/pods/gone does not exist", fx.root())
        );

        fx.fails(
            &with_node("workloads:\n  - name: w\n    cgroup: $D/netns-web\n"),
            6,
            "is not a directory",
        );
        let e = fx.fails(
            &with_node(
                "workloads:\n  - name: w\n    cgroup: $D/pods/web\n    netns: $D/netns-gone\n",
            ),
            7,
            "netns path ",
        );
        assert_eq!(
            e.reason(),
            format!("netns path {}/netns-gone does not exist", fx.root())
        );
        fx.fails(
            "node:\n  name: n\n  cgroup: relative/dir\n",
            3,
            "must be absolute",
        );
    }

    #[test]
    fn skipped_path_checks_still_validate_the_rest() {
        let text = "node:\n  name: n\n  cgroup: /does/not/exist\n";
        assert!(parse(text, "t", PathChecks::Skipped).is_ok());
        assert!(parse_str(text, "t").is_err());
        let bad = "node:\n  name: N\n  cgroup: /does/not/exist\n";
        assert!(parse(bad, "t", PathChecks::Skipped).is_err());
    }

    #[test]
    fn duplicates() {
        let fx = Fixture::new();
        fx.fails(
            &with_node(
                "workloads:\n  - name: web\n    cgroup: $D/pods/web\n  - name: web\n    namespace: default\n    cgroup: $D/pods/api\n",
            ),
            7,
            "duplicate workload `default/web` (first defined at line 5)",
        );
        fx.fails(
            &with_node(
                "workloads:\n  - name: web\n    cgroup: $D/pods/web\n  - name: api\n    cgroup: $D/pods/web/\n",
            ),
            8,
            "is already used by workload `default/web` (line 6)",
        );
        fx.fails(
            &with_node(
                "workloads:\n  - name: a\n    cgroup: $D/pods/web\n    ips: [10.0.0.1]\n  - name: b\n    cgroup: $D/pods/api\n    ips: [10.0.0.1]\n",
            ),
            10,
            "IP 10.0.0.1 is already assigned to workload `default/a`",
        );
        fx.fails(
            &with_node("services:\n  - name: s\n  - name: s\n"),
            6,
            "duplicate service `default/s`",
        );
        fx.fails(
            &with_node("services:\n  - name: s\n    ports:\n      - port: 80\n      - port: 80\n"),
            8,
            "duplicate service port 80",
        );
        fx.fails(
            &with_node(
                "services:\n  - name: a\n    vips: [10.96.0.1]\n    ports: [{port: 80}]\n  - name: b\n    vips: [10.96.0.1]\n    ports: [{port: 80}]\n",
            ),
            9,
            "VIP 10.96.0.1 port 80 is already used by service `default/a`",
        );
        fx.parse(&with_node(
            "services:\n  - name: a\n    vips: [10.96.0.1]\n    ports: [{port: 80}]\n  - name: b\n    vips: [10.96.0.1]\n    ports: [{port: 81}]\n",
        ))
        .expect("different ports on one VIP are fine");
    }

    #[test]
    fn admin_address() {
        let fx = Fixture::new();
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  admin: 0.0.0.0:15000\n",
            4,
            "admin address 0.0.0.0:15000 is not a loopback address",
        );
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  admin: localhost:15000\n",
            4,
            "invalid admin address `localhost:15000`",
        );
        let cfg = fx
            .parse("node:\n  name: n\n  cgroup: $D/node\n  admin: 127.0.0.2:1\n")
            .expect("loopback");
        assert_eq!(cfg.node.admin.port(), 1);
    }

    #[test]
    fn node_names() {
        let fx = Fixture::new();
        for bad in ["Node1", "a_b", "''", "a/b", &"a".repeat(64)] {
            fx.fails(
                &format!("node:\n  cgroup: $D/node\n  name: {bad}\n"),
                3,
                "invalid node name",
            );
        }
        fx.parse(&format!(
            "node:\n  cgroup: $D/node\n  name: {}\n",
            "a".repeat(63)
        ))
        .expect("63 characters");
    }

    #[test]
    fn object_names() {
        let fx = Fixture::new();
        fx.fails(
            &with_node("workloads:\n  - name: ''\n    cgroup: $D/pods/web\n"),
            5,
            "invalid workload name",
        );
        fx.fails(
            &with_node("services:\n  - name: s\n    namespace: a/b\n"),
            6,
            "invalid namespace `a/b`",
        );
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

    #[test]
    fn empty_and_non_mapping_documents() {
        let fx = Fixture::new();
        fx.fails("", 1, "the file is empty");
        fx.fails("# nothing here\n", 2, "the file is empty");
        fx.fails("~\n", 1, "the file is empty");
        fx.fails(
            "- node\n",
            1,
            "found a list; expected a mapping with a `node` section",
        );
        fx.fails("hello\n", 1, "found a single value");
        fx.fails("node:\n", 1, "expected mapping");
    }

    #[test]
    fn yaml_syntax_errors() {
        let fx = Fixture::new();
        fx.fails("node:\n  name: \"n\n  cgroup: x\n", 2, "quote");
        fx.fails("node: {name: n\n", 1, "unclosed bracket");
        // The syntax error on line 2 wins over the unknown key on line 1.
        fx.fails("bogus: 1\nnode: [a\n", 2, "unclosed bracket");
        fx.fails(
            "node:\n  name: a\n  name: b\n  cgroup: $D/node\n",
            3,
            "duplicate",
        );
        fx.fails("node:\n\tname: x\n", 2, "tab");
        fx.fails("a: 1\n---\nb: 2\n", 3, "multiple");
    }

    #[test]
    fn control_characters_are_escaped() {
        let fx = Fixture::new();
        let e = fx.fails(
            "node:\n  name: \"a\\nb\\e[31m\"\n  cgroup: /x\n",
            2,
            "invalid node name",
        );
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }

    #[test]
    fn load_file_reports_path_and_position() {
        let fx = Fixture::new();
        let path = fx.dir.path().join("config.yaml");
        std::fs::write(&path, fx.text(&with_node("fast_path: true\n"))).expect("write");
        let err = load_file(&path).expect_err("fast_path is a node key");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:4:1: unknown field `fast_path`, expected one of node, nodes, identity, workloads, services, authorization, http, http_routes, grpc_routes, telemetry",
                path.display()
            )
        );
        assert_eq!(err.file(), path.display().to_string());

        std::fs::write(&path, fx.text(NODE)).expect("write");
        let cfg = check_file(&path).expect("valid");
        assert_eq!(cfg.node.name, "node1");
    }

    #[test]
    fn load_file_read_errors() {
        let fx = Fixture::new();
        let path = fx.dir.path().join("missing.yaml");
        let err = load_file(&path).expect_err("missing file");
        assert_eq!(err.line(), None);
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("{}: cannot read: ", path.display())),
            "{shown}"
        );
        assert!(err.reason().starts_with("cannot read: "));
        assert!(matches!(err, ConfigError::Read { .. }));

        let err = load_file(fx.dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn load_file_rejects_invalid_utf8() {
        let mut file = tempfile::NamedTempFile::new().expect("tempfile");
        file.write_all(b"node:\n  name: a\xffb\n").expect("write");
        let err = load_file(file.path()).expect_err("invalid UTF-8");
        assert_eq!(err.line(), Some(2));
        assert_eq!(err.column(), Some(10));
        assert!(err.reason().contains("not valid UTF-8"));
    }

    #[test]
    fn new_sections_full_example() {
        let fx = Fixture::new();
        let yaml = "\
node:
  name: node1
  cgroup: $D/node
  address: 10.200.0.1
  tunnel_port: 15009
nodes:
  - name: node1
    address: 10.200.0.1
  - name: node2
    address: 'fd00::2'
identity:
  trust_domain: mesh.example_1
  ca:
    cert: $D/ca.pem
    key: $D/ca-key.pem
  trust_bundle: [$D/old-root.pem]
  cert_lifetime: 90m
workloads:
  - name: web
    cgroup: $D/pods/web
    service_account: web-sa
    labels: {app: web, example.com/version: v1.2_3, empty: ''}
    mode: strict
  - name: api
    cgroup: $D/pods/api
services:
  - name: web
    ports: [{port: 80}]
    endpoints:
      - ip: 10.1.1.2
        node: node1
      - ip: 10.1.2.2
        node: node2
      - ip: 192.0.2.7
authorization:
  - name: allow-a
    selector:
      matchLabels: {app: web}
    action: ALLOW
    rules:
      - from:
          - source:
              principals: ['cluster.local/ns/default/sa/a', 'spiffe://td/ns/x/sa/*']
              notPrincipals: ['*/sa/legacy']
              namespaces: [default, 'team-*']
              notNamespaces: ['*']
        to:
          - operation:
              ports: ['8080', 9090]
              notPorts: ['22']
      - {}
  - name: deny-all
    namespace: mesh-system
    selector: {matchLabels: {}}
    action: Deny
  - name: allow-a
    namespace: other
";
        let cfg = fx.parse(yaml).expect("valid config");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");

        assert_eq!(cfg.node.address, Some(ip("10.200.0.1")));
        assert_eq!(cfg.node.tunnel_port, 15009);
        assert_eq!(
            cfg.nodes,
            vec![
                PeerNode {
                    name: "node1".to_owned(),
                    address: ip("10.200.0.1"),
                },
                PeerNode {
                    name: "node2".to_owned(),
                    address: ip("fd00::2"),
                },
            ]
        );

        let root = fx.dir.path();
        assert_eq!(
            cfg.identity,
            IdentityConfig {
                trust_domain: "mesh.example_1".to_owned(),
                ca: CaSource::Files {
                    cert: root.join("ca.pem"),
                    key: root.join("ca-key.pem"),
                },
                trust_bundle: vec![root.join("old-root.pem")],
                cert_lifetime: Duration::from_secs(90 * 60),
            }
        );

        let web = &cfg.workloads[0];
        assert_eq!(web.service_account, "web-sa");
        let labels: Vec<(&str, &str)> = web
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("app", "web"),
                ("empty", ""),
                ("example.com/version", "v1.2_3")
            ]
        );
        assert_eq!(web.mode, PeerAuthMode::Strict);
        let api = &cfg.workloads[1];
        assert_eq!(api.service_account, "default");
        assert!(api.labels.is_empty());
        assert_eq!(api.mode, PeerAuthMode::Permissive);

        let nodes: Vec<Option<&str>> = cfg.services[0]
            .endpoints
            .iter()
            .map(|e| e.node.as_deref())
            .collect();
        assert_eq!(nodes, [Some("node1"), Some("node2"), None]);

        let string = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            cfg.authorization[0],
            AuthorizationPolicy {
                name: "allow-a".to_owned(),
                namespace: "default".to_owned(),
                selector: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                action: AuthzAction::Allow,
                rules: vec![
                    AuthzRule {
                        from: vec![AuthzSource {
                            principals: string(&["cluster.local/ns/default/sa/a", "td/ns/x/sa/*"]),
                            not_principals: string(&["*/sa/legacy"]),
                            namespaces: string(&["default", "team-*"]),
                            not_namespaces: string(&["*"]),
                        }],
                        to: vec![AuthzOperation {
                            ports: vec![8080, 9090],
                            not_ports: vec![22],
                        }],
                    },
                    AuthzRule {
                        from: Vec::new(),
                        to: Vec::new(),
                    },
                ],
            }
        );
        let deny = &cfg.authorization[1];
        assert_eq!(deny.namespace, "mesh-system");
        assert_eq!(deny.selector, None, "empty matchLabels selects everything");
        assert_eq!(deny.action, AuthzAction::Deny);
        assert!(deny.rules.is_empty());
        assert_eq!(cfg.authorization[2].namespace, "other");

        let json = serde_json::to_value(&cfg).expect("serializable");
        assert_eq!(json["identity"]["cert_lifetime"], "90m");
        assert_eq!(
            json["identity"]["ca"]["files"]["cert"],
            root.join("ca.pem").display().to_string()
        );
        assert_eq!(json["workloads"][0]["mode"], "STRICT");
        assert_eq!(json["authorization"][1]["action"], "DENY");
        assert_eq!(json["node"]["address"], "10.200.0.1");
    }

    #[test]
    fn identity_defaults() {
        let fx = Fixture::new();
        let cfg = fx.parse(NODE).expect("valid");
        assert_eq!(cfg.identity, IdentityConfig::default());
        assert_eq!(
            cfg.identity.ca,
            CaSource::Generate {
                dir: PathBuf::from("/var/lib/mesh-agent/ca")
            }
        );
        assert_eq!(cfg.identity.trust_domain, "cluster.local");
        assert_eq!(cfg.identity.cert_lifetime, Duration::from_secs(86_400));
        assert_eq!(cfg.node.tunnel_port, 15008);
        assert_eq!(cfg.node.address, None);
        assert!(cfg.nodes.is_empty() && cfg.authorization.is_empty());

        // Each field alone; the CA directory need not exist.
        let cfg = fx
            .parse(&with_node(
                "identity:\n  ca:\n    dir: $D/not-yet/ca\n  cert_lifetime: 1d\n",
            ))
            .expect("valid");
        assert_eq!(cfg.identity.trust_domain, "cluster.local");
        assert_eq!(
            cfg.identity.ca,
            CaSource::Generate {
                dir: fx.dir.path().join("not-yet/ca")
            }
        );
        assert_eq!(cfg.identity.cert_lifetime, Duration::from_secs(86_400));
        let json = serde_json::to_value(&cfg).expect("serializable");
        assert_eq!(json["identity"]["cert_lifetime"], "24h");
        assert!(json["identity"]["ca"]["generate"]["dir"].is_string());

        let cfg = fx
            .parse(&with_node("identity:\nnodes:\nauthorization:\n"))
            .expect("null sections are defaults");
        assert_eq!(cfg.identity, IdentityConfig::default());
    }

    #[test]
    fn cert_lifetimes() {
        let fx = Fixture::new();
        let lifetime = |v: &str| format!("{NODE}identity:\n  cert_lifetime: {v}\n");
        for (text, secs) in [
            ("2s", 2),
            ("10s", 10),
            ("90m", 5400),
            ("1d", 86_400),
            ("365d", 31_536_000),
        ] {
            let cfg = fx.parse(&lifetime(text)).expect(text);
            assert_eq!(
                cfg.identity.cert_lifetime,
                Duration::from_secs(secs),
                "{text}"
            );
        }
        let e = fx.fails(
            &lifetime("24"),
            5,
            "invalid cert_lifetime `24`: expected a whole number and a unit s, m, h or d",
        );
        assert_eq!(e.column(), Some(18));
        for bad in ["1.5h", "h", "24 hours", "-1h", "24H", "''"] {
            fx.fails(&lifetime(bad), 5, "invalid cert_lifetime");
        }
        fx.fails(
            &lifetime("1s"),
            5,
            "cert_lifetime 1s is too short: the minimum is 2s",
        );
        fx.fails(&lifetime("0d"), 5, "too short");
        fx.fails(
            &lifetime("366d"),
            5,
            "cert_lifetime 366d is too long: the maximum is 365d",
        );
        fx.fails(&lifetime("99999999999999999999999s"), 5, "too long");
        fx.fails(&lifetime("9999999999999999d"), 5, "too long");
    }

    #[test]
    fn ca_sources() {
        let fx = Fixture::new();
        let ca = |body: &str| format!("{NODE}identity:\n  ca:\n{body}");
        fx.fails(
            &ca("    dir: $D/ca\n    cert: $D/ca.pem\n"),
            7,
            "`ca` takes either `dir` (a CA generated by the agent) or `cert` and `key` (a CA you provide), not both",
        );
        fx.fails(
            &ca("    dir: $D/ca\n    key: $D/ca-key.pem\n"),
            7,
            "not both",
        );
        fx.fails(&ca("    cert: $D/ca.pem\n"), 6, "`ca.cert` needs `ca.key`");
        fx.fails(
            &ca("    key: $D/ca-key.pem\n"),
            6,
            "`ca.key` needs `ca.cert`",
        );
        fx.fails(
            &format!("{NODE}identity:\n  ca: {{}}\n"),
            5,
            "`ca` is empty: set `dir`",
        );
        let e = fx.fails(
            &ca("    cert: $D/ca.pem\n    key: $D/gone.pem\n"),
            7,
            "ca.key path ",
        );
        assert_eq!(
            e.reason(),
            format!("ca.key path {}/gone.pem does not exist", fx.root())
        );
        fx.fails(
            &ca("    cert: $D/node\n    key: $D/ca-key.pem\n"),
            6,
            "ca.cert path ",
        );
        fx.fails(&ca("    dir: relative\n"), 6, "must be absolute");
        fx.fails(&ca("    dir: $D/ca.pem\n"), 6, "ca.dir path ");
        fx.fails(&ca("    path: /x\n"), 6, "unknown field `path`");
        fx.fails(
            &format!("{NODE}identity:\n  trust_bundle: [$D/ca.pem, $D/nope.pem]\n"),
            5,
            "trust_bundle path ",
        );

        let text =
            format!("{NODE}identity:\n  ca:\n    cert: /nope/ca.pem\n    key: /nope/key.pem\n")
                .replace("$D", "/nope");
        assert!(
            parse(&text, "t", PathChecks::Skipped).is_ok(),
            "CA files are checked only with path checks"
        );
    }

    #[test]
    fn trust_domains() {
        let fx = Fixture::new();
        let td = |v: &str| format!("{NODE}identity:\n  trust_domain: {v}\n");
        fx.fails(
            &td("Cluster.Local"),
            5,
            "invalid trust domain `Cluster.Local`: use 1 to 255 characters among a-z, 0-9, '.', '-' and '_'",
        );
        fx.fails(
            &td("spiffe://cluster.local"),
            5,
            "invalid trust domain `spiffe://cluster.local`: write it without the `spiffe://` prefix",
        );
        for bad in ["a/b", "''", "'a b'", &"a".repeat(256)] {
            fx.fails(&td(bad), 5, "invalid trust domain");
        }
        let cfg = fx.parse(&td(&"a".repeat(255))).expect("255 characters");
        assert_eq!(cfg.identity.trust_domain.len(), 255);
    }

    #[test]
    fn peer_nodes() {
        let fx = Fixture::new();
        let with_address = "node:\n  name: node1\n  cgroup: $D/node\n  address: 10.0.0.1\n";
        fx.fails(
            &with_node(
                "nodes:\n  - name: node2\n    address: 10.0.0.2\n  - name: node2\n    address: 10.0.0.3\n",
            ),
            7,
            "duplicate node `node2` (first defined at line 5)",
        );
        fx.fails(
            &with_node(
                "nodes:\n  - name: node2\n    address: 10.0.0.2\n  - name: node3\n    address: 10.0.0.2\n",
            ),
            8,
            "address 10.0.0.2 is already used by node `node2` (line 6)",
        );
        fx.fails(
            &with_node("nodes:\n  - name: Node2\n    address: 10.0.0.2\n"),
            5,
            "invalid node name `Node2`",
        );
        fx.fails(
            &with_node("nodes:\n  - name: node2\n    address: node2.local\n"),
            6,
            "invalid IP address `node2.local`",
        );
        fx.fails(
            &with_node("nodes:\n  - name: node2\n    address: 0.0.0.0\n"),
            6,
            "node address 0.0.0.0 cannot be connected to",
        );
        fx.fails(
            &with_node("nodes:\n  - name: node2\n"),
            5,
            "missing field `address`",
        );
        // This node may be listed, with its own address only.
        fx.fails(
            &with_node("nodes:\n  - name: node1\n    address: 10.0.0.1\n"),
            5,
            "node `node1` is this node; it may be listed under nodes only with this node's address (node.address is not set)",
        );
        fx.fails(
            &format!("{with_address}nodes:\n  - name: node1\n    address: 10.0.0.9\n"),
            6,
            "(node.address is 10.0.0.1)",
        );
        fx.fails(
            &format!("{with_address}nodes:\n  - name: node2\n    address: 10.0.0.1\n"),
            7,
            "address 10.0.0.1 of node `node2` is this node's address",
        );
        let cfg = fx
            .parse(&format!(
                "{with_address}nodes:\n  - name: node1\n    address: 10.0.0.1\n"
            ))
            .expect("this node with its own address");
        assert_eq!(cfg.nodes.len(), 1);
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  address: 10.0.0.256\n",
            4,
            "invalid IP address `10.0.0.256`",
        );
    }

    #[test]
    fn tunnel_port() {
        let fx = Fixture::new();
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  tunnel_port: 0\n",
            4,
            "port 0 is out of range",
        );
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  tunnel_port: 15001\n",
            4,
            "tunnel_port 15001 is also the port of `outbound_port`",
        );
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  admin: 127.0.0.1:9\n  tunnel_port: 9\n",
            5,
            "tunnel_port 9 is also the port of `admin`",
        );
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  admin: 127.0.0.1:15008\n",
            4,
            "`admin` uses port 15008, the default tunnel_port; choose another port or set tunnel_port",
        );
    }

    #[test]
    fn unknown_endpoint_node() {
        let fx = Fixture::new();
        let e = fx.fails(
            &with_node(
                "nodes:\n  - name: node2\n    address: 10.0.0.2\nservices:\n  - name: s\n    endpoints:\n      - ip: 10.1.0.1\n        node: node3\n",
            ),
            11,
            "endpoint node `node3` is neither this node (`node1`) nor listed under nodes",
        );
        assert_eq!(e.column(), Some(15));
    }

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
        fx.fails(
            &rule("              principals: ['ns/x/sa/y', 'default/sa/web']\n"),
            9,
            "invalid principal `ns/x/sa/y`: expected TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT",
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

    #[test]
    fn garbage_input_never_panics() {
        let inputs = [
            "\u{0}",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            "&a [*a]",
            "node: *unknown",
            "? [a]\n: b",
            "node: !!binary AAAA",
            "node:\n  name: n\n  cgroup: /\n  fast_path: maybe\n",
            "\u{feff}node: {}",
        ];
        for input in inputs {
            assert!(parse_str(input, "t").is_err(), "{input:?} should fail");
        }
        let deep = "[".repeat(100_000);
        assert!(parse_str(&deep, "t").is_err());
    }
}
