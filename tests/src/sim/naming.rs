//! Pure naming and addressing rules of a simulation, kept free of side effects
//! so they can be unit-tested without root.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Result, bail, ensure};
use sha2::{Digest, Sha256};

/// Every netns, cgroup dir and temp dir of a simulation starts with this, so
/// leftovers of crashed runs can be found (see [`super::cleanup_stale`]).
/// Full prefix format: `mt-<tag>-<pid>-<counter>`, e.g. `mt-smoke-4242-0`.
pub const STALE_PREFIX: &str = "mt-";

/// Longest tag kept in the prefix; names must stay readable but short.
const MAX_TAG: usize = 8;
/// Longest netns name we create. The kernel allows more, but long names make
/// `ip netns list` unreadable; longer names are truncated and hashed.
const MAX_NETNS_NAME: usize = 48;
/// Longest user-supplied node/workload name.
const MAX_NAME: usize = 32;
/// A /30 per pod inside the node's /24 leaves room for 64 pods.
pub const MAX_PODS_PER_NODE: usize = 64;
/// Node IPs are 10.200.0.<i>, i in 1..=254.
pub const MAX_NODES: usize = 254;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A prefix unique within this machine: the pid separates concurrent test
/// processes, the counter separates simulations inside one process.
pub fn new_prefix(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format_prefix(tag, std::process::id(), n)
}

pub fn format_prefix(tag: &str, pid: u32, n: u32) -> String {
    let mut tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(MAX_TAG)
        .collect();
    if tag.is_empty() {
        tag.push('x');
    }
    format!("{STALE_PREFIX}{tag}-{pid}-{n}")
}

/// The pid that created a prefixed name (`mt-<tag>-<pid>-...`), used to tell
/// leftovers of dead runs from resources of live ones.
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(STALE_PREFIX)?
        .split('-')
        .nth(1)?
        .parse()
        .ok()
}

/// Node and workload names end up in netns names and cgroup paths, so they
/// must not contain '/' or whitespace.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    ensure!(!name.is_empty(), "{kind} name must not be empty");
    ensure!(
        name.len() <= MAX_NAME,
        "{kind} name {name:?} is longer than {MAX_NAME} characters"
    );
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '.' || *c == '-'))
    {
        bail!("{kind} name {name:?} contains {bad:?}; use [A-Za-z0-9_.-]");
    }
    ensure!(
        name != "." && name != "..",
        "{kind} name {name:?} is reserved"
    );
    Ok(())
}

/// Joins parts with '-' and keeps the result short: an over-long name keeps
/// its head and gets a hash of the full name so it stays unique.
pub fn netns_name(parts: &[&str]) -> String {
    let full = parts.join("-");
    if full.len() <= MAX_NETNS_NAME {
        return full;
    }
    let digest = Sha256::digest(full.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let keep = MAX_NETNS_NAME - hash.len() - 1;
    format!("{}-{hash}", &full[..keep])
}

pub fn node_ip(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, index)
}

/// The pod /24 of node `index`, routed to that node by every other node.
pub fn pod_subnet(index: u8) -> String {
    format!("10.1.{index}.0/24")
}

/// (node end, pod end) of pod `k` (0-based) on node `index`: a /30 each.
pub fn pod_ips(index: u8, k: usize) -> Result<(Ipv4Addr, Ipv4Addr)> {
    ensure!(
        k < MAX_PODS_PER_NODE,
        "node {index} already has {MAX_PODS_PER_NODE} pods"
    );
    let base = (4 * k) as u8;
    Ok((
        Ipv4Addr::new(10, 1, index, base + 1),
        Ipv4Addr::new(10, 1, index, base + 2),
    ))
}

/// Bridge-side veth of node `index`, in the bridge netns (max 15 chars).
pub fn bridge_port(index: u8) -> String {
    format!("n{index}")
}

/// Node-side veth of pod `k`, in the node netns (max 15 chars).
pub fn pod_port(k: usize) -> String {
    format!("p{k}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_sanitized_and_parsable() {
        let p = format_prefix("Sim Smoke-Test!", 4242, 7);
        assert_eq!(p, "mt-simsmoke-4242-7");
        assert_eq!(owner_pid(&p), Some(4242));
        assert_eq!(owner_pid(&format!("{p}-node1-pod")), Some(4242));
        assert_eq!(format_prefix("", 1, 0), "mt-x-1-0");
        assert_eq!(owner_pid("other-1-2"), None);
    }

    #[test]
    fn prefixes_are_unique() {
        assert_ne!(new_prefix("a"), new_prefix("a"));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("node", "node-1_a.b").is_ok());
        assert!(validate_name("node", "").is_err());
        assert!(validate_name("node", "a/b").is_err());
        assert!(validate_name("node", "..").is_err());
        assert!(validate_name("node", &"x".repeat(33)).is_err());
    }

    #[test]
    fn long_netns_names_are_shortened_uniquely() {
        let short = netns_name(&["mt-a-1-0", "node1", "pod"]);
        assert_eq!(short, "mt-a-1-0-node1-pod");
        let a = netns_name(&[
            "mt-longtag-123456-10",
            "node-with-name",
            "pod-aaaaaaaaaaaaaaaa",
        ]);
        let b = netns_name(&[
            "mt-longtag-123456-10",
            "node-with-name",
            "pod-aaaaaaaaaaaaaaab",
        ]);
        assert!(a.len() <= MAX_NETNS_NAME && b.len() <= MAX_NETNS_NAME);
        assert_ne!(a, b);
    }

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(node_ip(3), Ipv4Addr::new(10, 200, 0, 3));
        assert_eq!(pod_subnet(2), "10.1.2.0/24");
        let (n, p) = pod_ips(2, 0).unwrap();
        assert_eq!(
            (n, p),
            (Ipv4Addr::new(10, 1, 2, 1), Ipv4Addr::new(10, 1, 2, 2))
        );
        let (n, p) = pod_ips(2, 63).unwrap();
        assert_eq!(
            (n, p),
            (Ipv4Addr::new(10, 1, 2, 253), Ipv4Addr::new(10, 1, 2, 254))
        );
        assert!(pod_ips(2, 64).is_err());
        assert!(bridge_port(254).len() <= 15 && pod_port(63).len() <= 15);
    }
}
