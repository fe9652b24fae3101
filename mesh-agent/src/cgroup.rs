//! cgroup v2 helpers: ids as the kernel reports them from bpf_get_current_cgroup_id().

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// The id of a cgroup v2 directory is its inode number in the cgroup2 filesystem.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    let meta =
        fs::metadata(path).with_context(|| format!("cannot stat cgroup {}", path.display()))?;
    if !meta.is_dir() {
        bail!("cgroup path {} is not a directory", path.display());
    }
    Ok(meta.ino())
}

/// Where the cgroup v2 hierarchy is mounted (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
    for line in mounts.lines() {
        // mountinfo: ... mount_point ... - fstype source options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(mount_point) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(mount_point));
        }
    }
    bail!("cgroup v2 is not mounted (no cgroup2 entry in /proc/self/mountinfo)")
}

/// The cgroup v2 directory of this process.
pub fn own_cgroup() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("/proc/self/cgroup has no cgroup v2 entry")?;
    Ok(cgroup2_mount()?.join(relative.trim_start_matches('/')))
}

/// True when `path` is inside the cgroup2 mount (programs can only attach there).
pub fn is_cgroup2_dir(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_id_of_missing_dir_names_it() {
        let err = cgroup_id(Path::new("/nonexistent/cg")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/cg"));
    }
}
