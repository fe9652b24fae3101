//! The `node:` section: the node the agent runs on (its name, its cgroup and bpffs
//! directories), the agent's listeners on it (transparent outbound port, admin endpoint, mTLS
//! tunnel port), the sk_msg fast path, the node's address, what connects do while no agent
//! runs (`fail_mode`), and how a newer agent takes over from this one (`state_dir`,
//! `drain_timeout`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checker::{Checker, ConfigError};
use super::raw::Text;
use super::scalars::{
    DurationText, clean, format_duration, is_node_name, parse_duration, quote, serialize_duration,
};

/// Where BPF maps are pinned when `node.bpffs` is not set.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/mesh-agent";
/// The transparent-proxy listener port when `node.outbound_port` is not set.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// The admin/metrics endpoint when `node.admin` is not set. Loopback only, as
/// the endpoint has no authentication.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
/// The inbound mTLS tunnel listener port when `node.tunnel_port` is not set.
pub const DEFAULT_TUNNEL_PORT: u16 = 15008;
/// Where the handover socket lives when `node.state_dir` is not set.
pub const DEFAULT_STATE_DIR: &str = "/run/mesh-agent";
/// How long an agent that handed the node over keeps carrying its connections.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Units of `node.drain_timeout`, in milliseconds.
const DRAIN_TIMEOUT_UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1000), ("m", 60_000)];

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
    /// What a connect to a meshed destination does while no agent runs on the node.
    pub fail_mode: FailMode,
    /// Directory of the agent's runtime state: `<state_dir>/<name>/handover.sock`, where a
    /// newer agent of this node asks for the listening sockets.
    pub state_dir: PathBuf,
    /// After handing the node over, how long this agent keeps relaying the connections it
    /// carries before it exits anyway.
    #[serde(serialize_with = "serialize_duration")]
    pub drain_timeout: Duration,
}

/// What the kernel does with a connect to a meshed destination while no agent listens
/// (stopped, crashed, between two agents): the programs and policy stay attached either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refused at once (ECONNREFUSED): nothing leaves unencrypted or unpoliced by the mesh.
    #[default]
    Closed,
    /// Not redirected: the connection goes direct (plaintext), still under the kernel's L4
    /// policy, and counted (`connect_fail_open`). STRICT workloads stay closed.
    Open,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
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
    #[serde(default)]
    fail_mode: Option<Text>,
    #[serde(default)]
    state_dir: Option<Text>,
    #[serde(default)]
    drain_timeout: Option<Text>,
}

impl Checker<'_> {
    /// Records an error for every bad field and returns the node with the
    /// default in place of each bad value (the errors fail the whole check).
    pub(super) fn node(&self, raw: RawNode) -> Result<NodeConfig, ConfigError> {
        let name = raw.name.value.clone();
        if !is_node_name(&name) {
            self.keep::<()>(Err(self.err(
                raw.name.referenced,
                format!(
                    "invalid node name {}: use 1 to 63 characters among a-z, 0-9 and '-'",
                    quote(&name)
                ),
            )));
        }
        let cgroup = self.keep(self.cgroup_dir(&raw.cgroup)).unwrap_or_default();
        let bpffs = match &raw.bpffs {
            Some(p) => self.keep(self.absolute(p, "bpffs")),
            None => None,
        };
        let outbound_port = match &raw.outbound_port {
            Some(p) => self.keep(self.port(p)),
            None => Some(DEFAULT_OUTBOUND_PORT),
        };
        let admin = match &raw.admin {
            Some(a) => self.keep(self.admin(a)),
            None => Some(DEFAULT_ADMIN),
        };
        let address = match &raw.address {
            Some(a) => self.keep(self.node_address(a)),
            None => None,
        };
        let tunnel_port = match &raw.tunnel_port {
            Some(p) => self.keep(self.port(p)),
            None => Some(DEFAULT_TUNNEL_PORT),
        };
        let fail_mode = match &raw.fail_mode {
            Some(m) => self.keep(self.fail_mode(m)),
            None => Some(FailMode::default()),
        };
        let state_dir = match &raw.state_dir {
            Some(p) => self.keep(self.absolute(p, "state_dir")),
            None => None,
        };
        let drain_timeout = match &raw.drain_timeout {
            Some(d) => self.keep(self.drain_timeout(d)),
            None => None,
        };
        // The tunnel listener binds every address, so it would collide with
        // the other listeners of the agent on the same port. Only ports that
        // are valid themselves are compared.
        let clashes = [
            ("outbound_port", outbound_port, raw.outbound_port.as_ref()),
            ("admin", admin.map(|a| a.port()), raw.admin.as_ref()),
        ];
        for (key, port, other) in clashes {
            let (Some(port), Some(tunnel_port)) = (port, tunnel_port) else {
                continue;
            };
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
            self.keep::<()>(Err(err));
            // One clash is enough: with both, the tunnel port is the mistake.
            break;
        }
        Ok(NodeConfig {
            name,
            cgroup,
            bpffs: bpffs.unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS)),
            outbound_port: outbound_port.unwrap_or(DEFAULT_OUTBOUND_PORT),
            admin: admin.unwrap_or(DEFAULT_ADMIN),
            fast_path: raw.fast_path.unwrap_or(false),
            address,
            tunnel_port: tunnel_port.unwrap_or(DEFAULT_TUNNEL_PORT),
            fail_mode: fail_mode.unwrap_or_default(),
            state_dir: state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            drain_timeout: drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        })
    }

    /// A whole number and a unit (`500ms`, `60s`, `5m`), at most an hour.
    fn drain_timeout(&self, raw: &Text) -> Result<Duration, ConfigError> {
        let text = raw.value.trim();
        let too_long = || {
            self.err(
                raw.referenced,
                format!(
                    "drain_timeout {} is too long: the maximum is {}",
                    clean(text),
                    format_duration(&MAX_DRAIN_TIMEOUT)
                ),
            )
        };
        match parse_duration(text, DRAIN_TIMEOUT_UNITS) {
            DurationText::Valid(d) if d <= MAX_DRAIN_TIMEOUT => Ok(d),
            DurationText::Valid(_) | DurationText::TooLarge => Err(too_long()),
            DurationText::Invalid => Err(self.err(
                raw.referenced,
                format!(
                    "invalid drain_timeout {}: expected a whole number and a unit ms, s or m, such as 60s",
                    quote(&raw.value)
                ),
            )),
        }
    }

    fn fail_mode(&self, raw: &Text) -> Result<FailMode, ConfigError> {
        match raw.value.trim() {
            "closed" => Ok(FailMode::Closed),
            "open" => Ok(FailMode::Open),
            other => Err(self.err(
                raw.referenced,
                format!(
                    "invalid fail_mode {}: expected closed or open",
                    quote(other)
                ),
            )),
        }
    }

    /// An address other nodes can connect to.
    pub(super) fn node_address(&self, raw: &Text) -> Result<IpAddr, ConfigError> {
        let ip = self.ip(raw)?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(self.err(
                raw.referenced,
                format!("node address {ip} cannot be connected to; use the node's own IP address"),
            ));
        }
        Ok(ip)
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
}

#[cfg(test)]
mod tests {
    use crate::config::fixture::Fixture;

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
    fn fail_mode_is_closed_unless_open_is_written() {
        use super::FailMode;
        let fx = Fixture::new();
        let cfg = fx
            .parse("node:\n  name: n\n  cgroup: $D/node\n")
            .expect("default");
        assert_eq!(cfg.node.fail_mode, FailMode::Closed);
        let cfg = fx
            .parse("node:\n  name: n\n  cgroup: $D/node\n  fail_mode: open\n")
            .expect("open");
        assert_eq!(cfg.node.fail_mode, FailMode::Open);
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  fail_mode: OPEN-ish\n",
            4,
            "invalid fail_mode `OPEN-ish`: expected closed or open",
        );
    }

    #[test]
    fn drain_timeout_and_state_dir() {
        use std::time::Duration;
        let fx = Fixture::new();
        let cfg = fx
            .parse("node:\n  name: n\n  cgroup: $D/node\n")
            .expect("defaults");
        assert_eq!(cfg.node.drain_timeout, super::DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(
            cfg.node.state_dir,
            std::path::Path::new(super::DEFAULT_STATE_DIR)
        );
        let cfg = fx
            .parse("node:\n  name: n\n  cgroup: $D/node\n  drain_timeout: 1500ms\n  state_dir: /var/run/x\n")
            .expect("set");
        assert_eq!(cfg.node.drain_timeout, Duration::from_millis(1500));
        assert_eq!(cfg.node.state_dir, std::path::Path::new("/var/run/x"));
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  drain_timeout: 61m\n",
            4,
            "drain_timeout 61m is too long: the maximum is 1h",
        );
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  drain_timeout: soon\n",
            4,
            "invalid drain_timeout `soon`: expected a whole number and a unit ms, s or m",
        );
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  state_dir: run/here\n",
            4,
            "state_dir",
        );
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
}
