//! Finds a pod's network namespace among the container runtime's named namespaces by the
//! pod's IP. containerd and CRI-O bind-mount every pod namespace under /var/run/netns
//! (`kubernetes.netns_dir`). Entering a bind-mounted namespace needs only CAP_SYS_ADMIN,
//! whereas opening `/proc/<pid>/ns/net` of a process owned by another user needs ptrace
//! access (CAP_SYS_PTRACE), which the DaemonSet does not grant.

use std::{
    collections::HashMap,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

/// Remembers the addresses of the namespaces it has looked into, by namespace inode; a
/// namespace with no address yet (the CNI plugin is still setting it up) is looked at again.
#[derive(Debug)]
pub struct NetnsFinder {
    dir: PathBuf,
    seen: Mutex<HashMap<u64, Vec<IpAddr>>>,
}

impl NetnsFinder {
    pub fn new(dir: impl Into<PathBuf>) -> NetnsFinder {
        NetnsFinder {
            dir: dir.into(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The namespace files in the directory holding one of `ips`, with their inodes. On a
    /// real node pod IPs are unique, so there is one; several mean stale or foreign
    /// namespaces reuse the IP (the caller tells them apart).
    pub fn find(&self, ips: &[IpAddr]) -> Vec<(PathBuf, u64)> {
        let wanted: Vec<IpAddr> = ips.iter().filter(|ip| !ip.is_loopback()).copied().collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = Vec::new();
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            // metadata() follows the bind mount to the namespace itself (an nsfs inode).
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let inode = meta.ino();
            present.push(inode);
            let addresses = match seen.get(&inode) {
                Some(known) if !known.is_empty() => known.clone(),
                _ => {
                    // Not a namespace (a stale file), or not enterable: skip it.
                    let Ok(addresses) = crate::netns::addresses_in(&path) else {
                        continue;
                    };
                    seen.insert(inode, addresses.clone());
                    addresses
                }
            };
            if addresses.iter().any(|a| wanted.contains(a)) {
                found.push((path, inode));
            }
        }
        // Forget namespaces that are gone, so a reused inode is looked at afresh.
        seen.retain(|inode, _| present.contains(inode));
        found
    }
}
