//! Values that several sections share, checked the same way everywhere: ports, IP addresses,
//! CIDRs, whole numbers, durations, object names and namespaces, label keys and values, node
//! names, paths that must be absolute or exist; and how values from the file are shown in
//! messages.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serializer;
use serde_saphyr::Spanned;

use super::checker::{Checker, ConfigError, PathChecks};
pub(super) use super::checker::{clean, quote};
use super::raw::Text;

/// The namespace of workloads, services and authorization policies that do
/// not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Serializes a duration as a whole number of hours, minutes or seconds
/// (`24h`, `90m`, `10s`), the largest unit that represents it exactly.
pub(super) fn serialize_duration<S: Serializer>(
    d: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_duration(d))
}

pub(super) fn format_duration(d: &Duration) -> String {
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

impl Checker<'_> {
    /// Workload and service names: they are printed as `namespace/name` in
    /// logs and the admin API, so a '/' or whitespace would make those
    /// ambiguous.
    pub(super) fn object_name(&self, raw: &Text, what: &str) -> Result<String, ConfigError> {
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

    pub(super) fn namespace(&self, raw: Option<&Text>) -> Result<String, ConfigError> {
        match raw {
            Some(ns) => self.object_name(ns, "namespace"),
            None => Ok(DEFAULT_NAMESPACE.to_owned()),
        }
    }

    /// Relative paths would depend on the agent's working directory, which
    /// a service manager picks, so they are refused.
    pub(super) fn absolute(&self, raw: &Text, what: &str) -> Result<PathBuf, ConfigError> {
        let path = PathBuf::from(&raw.value);
        if !path.is_absolute() {
            return Err(self.err(
                raw.referenced,
                format!("{what} path {} must be absolute", quote(&raw.value)),
            ));
        }
        Ok(path)
    }

    pub(super) fn cgroup_dir(&self, raw: &Text) -> Result<PathBuf, ConfigError> {
        let path = self.absolute(raw, "cgroup")?;
        if self.checks == PathChecks::Enabled {
            self.must_exist(raw, &path, "cgroup", |m| {
                (!m.is_dir()).then_some("is not a directory")
            })?;
        }
        Ok(path)
    }

    /// Checks that `path` exists (following symlinks, as /proc/PID/ns/net is
    /// one) and that `wrong_kind` finds nothing wrong with it.
    pub(super) fn must_exist(
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

    pub(super) fn port(&self, raw: &Text) -> Result<u16, ConfigError> {
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

    pub(super) fn ports(&self, raws: &[Text]) -> Result<Vec<u16>, ConfigError> {
        self.each(raws.iter().map(|p| self.port(p)))
    }

    pub(super) fn ip(&self, raw: &Text) -> Result<IpAddr, ConfigError> {
        raw.value.trim().parse().map_err(|_| {
            self.err(
                raw.referenced,
                format!("invalid IP address {}", quote(&raw.value)),
            )
        })
    }

    /// A CIDR, or a bare IP meaning that single host (/32 or /128).
    pub(super) fn cidr(&self, raw: &Text) -> Result<IpNet, ConfigError> {
        parse_cidr(&raw.value).map_err(|why| {
            self.err(
                raw.referenced,
                format!("invalid CIDR {}: {why}", quote(&raw.value)),
            )
        })
    }

    /// A whole number in `min..=max`.
    pub(super) fn number(
        &self,
        raw: &Text,
        key: &str,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let text = raw.value.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.err(
                raw.referenced,
                format!(
                    "invalid {key} {}: expected a whole number in {min}..={max}",
                    quote(&raw.value)
                ),
            ));
        }
        match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.err(
                raw.referenced,
                format!("{key} {} is out of range {min}..={max}", clean(text)),
            )),
        }
    }
}

/// A duration written as a whole number and one of `units` (name, milliseconds).
pub(super) enum DurationText {
    Valid(Duration),
    /// A number too large for any integer type: a range problem, like for ports.
    TooLarge,
    Invalid,
}

pub(super) fn parse_duration(text: &str, units: &[(&str, u64)]) -> DurationText {
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

/// Kubernetes label key: an optional DNS subdomain prefix and '/', then a
/// name of 1 to 63 characters.
pub(super) fn label_key(key: &str) -> Result<(), &'static str> {
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
pub(super) fn label_value(value: &str) -> Result<(), &'static str> {
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

pub(super) fn is_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(super) fn line_of<T>(spanned: &Spanned<T>) -> u64 {
    spanned.referenced.line()
}

#[cfg(test)]
mod tests {
    use crate::config::fixture::{Fixture, with_node};

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
    fn control_characters_are_escaped() {
        let fx = Fixture::new();
        let e = fx.fails(
            "node:\n  name: \"a\\nb\\e[31m\"\n  cgroup: $D/node\n",
            2,
            "invalid node name",
        );
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }
}
