//! Checks, before loading anything, that this kernel and process can run the data path, and
//! says exactly what is missing when it cannot.

use std::path::Path;

use anyhow::{Result, bail};
use aya::{maps::MapType, programs::ProgramType};

use crate::cgroup;

/// Everything the agent needs; the error lists every missing piece at once.
pub fn check(node_cgroup: &Path, bpffs: &Path) -> Result<()> {
    let mut missing = Vec::new();
    if !cgroup::is_cgroup2_dir(node_cgroup) {
        missing.push(format!(
            "node cgroup {} is not a cgroup v2 directory (programs attach to cgroup v2 only)",
            node_cgroup.display()
        ));
    }
    if !is_bpffs(bpffs) {
        missing.push(format!(
            "{} is not a bpffs mount (mount -t bpf bpf {})",
            bpffs.display(),
            bpffs.display()
        ));
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("kernel BTF (/sys/kernel/btf/vmlinux; CONFIG_DEBUG_INFO_BTF=y)".into());
    }
    let programs = [
        (
            ProgramType::CgroupSockAddr,
            "cgroup/connect4,6 and getpeername4,6 programs",
        ),
        (ProgramType::SockOps, "sock_ops programs"),
        (ProgramType::SkMsg, "sk_msg programs"),
        (ProgramType::CgroupSkb, "cgroup_skb programs"),
    ];
    for (ty, what) in programs {
        match aya::sys::is_program_supported(ty) {
            Ok(true) => {}
            Ok(false) => missing.push(format!("kernel support for {what}")),
            Err(e) => missing.push(format!("cannot probe {what}: {e} (is BPF allowed here?)")),
        }
    }
    let maps = [
        (MapType::RingBuf, "BPF ring buffer maps (Linux 5.8+)"),
        (MapType::SockHash, "sockhash maps"),
        (MapType::LpmTrie, "LPM trie maps"),
        (MapType::LruHash, "LRU hash maps"),
    ];
    for (ty, what) in maps {
        match aya::sys::is_map_supported(ty) {
            Ok(true) => {}
            Ok(false) => missing.push(format!("kernel support for {what}")),
            Err(e) => missing.push(format!("cannot probe {what}: {e} (is BPF allowed here?)")),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        bail!(
            "this host cannot run the mesh data path; missing: {}",
            missing.join("; ")
        )
    }
}

/// First check of all: without root nothing else can even be probed.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "mesh-agent must run as root (it needs CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and \
             CAP_PERFMON to load and attach eBPF programs); run it with sudo"
        );
    }
    Ok(())
}

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Mounts bpffs at `path` when nothing is mounted there yet (hosts without systemd do not).
pub fn ensure_bpffs(path: &Path) -> Result<()> {
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|e| {
        anyhow::anyhow!(
            "bpffs is not mounted at {} and the directory cannot be created to mount it: {e}",
            path.display()
        )
    })?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("cannot mount bpffs at {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "bpffs was not mounted: mounted it");
    Ok(())
}
