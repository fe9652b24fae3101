//! The level of the node cgroup in the cgroup v2 hierarchy, as the kernel counts it (root = 0).
//!
//! The programs find the workload of a socket in a container cgroup by asking for its
//! ancestors at absolute levels (`bpf_get_current_ancestor_cgroup_id(level)`), so the agent
//! tells them where the node cgroup sits (`AgentConfig::node_cgroup_level`). The level is the
//! depth of the node cgroup below the hierarchy root: its path below the cgroup2 mount point,
//! plus the mount's own root within the hierarchy (a mount of a subtree, or the mount of a
//! process in a cgroup namespace, does not start at the real root).

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Level of the cgroup directory `path` (which must be inside a cgroup2 mount).
pub fn cgroup_level(path: &Path) -> Result<u32> {
    let path = path
        .canonicalize()
        .with_context(|| format!("cannot resolve cgroup path {}", path.display()))?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
    level_in(&mountinfo, &path, is_hierarchy_root)
}

/// Whether a cgroup2 directory is the root of the whole hierarchy: the kernel gives every
/// cgroup but the root a `cgroup.events` file. This settles the level of a mount that a
/// cgroup namespace shows with a "/.." root, as the host's cgroup2 mounted into a container
/// (the DaemonSet's hostPath) is shown.
fn is_hierarchy_root(dir: &Path) -> bool {
    dir.join("cgroup.procs").exists() && !dir.join("cgroup.events").exists()
}

/// `cgroup_level` against the text of a mountinfo file (for tests); `is_root` tells whether a
/// mount point is the hierarchy root.
fn level_in(mountinfo: &str, path: &Path, is_root: impl Fn(&Path) -> bool) -> Result<u32> {
    // The innermost cgroup2 mount holding `path` (a cgroup2 mount may sit below another).
    let mut best: Option<(PathBuf, String)> = None;
    for line in mountinfo.lines() {
        // mountinfo: id parent major:minor root mount_point options ... - fstype source ...
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mut fields = left.split_whitespace().skip(3);
        let (Some(root), Some(mount_point)) = (fields.next(), fields.next()) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape(mount_point));
        let deeper = best
            .as_ref()
            .is_none_or(|(m, _)| mount_point.components().count() > m.components().count());
        if path.starts_with(&mount_point) && deeper {
            best = Some((mount_point, unescape(root)));
        }
    }
    let Some((mount_point, root)) = best else {
        bail!(
            "{} is not inside a cgroup2 mount (no cgroup2 entry of /proc/self/mountinfo holds it)",
            path.display()
        );
    };
    let below_mount = path
        .strip_prefix(&mount_point)
        .map(|rest| rest.components().count())
        .unwrap_or(0);
    if is_root(&mount_point) {
        return u32::try_from(below_mount).context("cgroup level out of range");
    }
    // A cgroup namespace shows the root of a mount outside the namespace as "/.." paths: the
    // real level of a mount that is not the hierarchy root cannot be known from here.
    if Path::new(&root)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        bail!(
            "the cgroup2 mount {} has its root outside this process's cgroup namespace ({root}); \
             run the agent in the host cgroup namespace",
            mount_point.display()
        );
    }
    let below_root = Path::new(&root)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    u32::try_from(below_root + below_mount).context("cgroup level out of range")
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\'
            && let Some(d) = digits
            && d.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                d.iter()
                    .fold(0u8, |v, b| v.wrapping_mul(8).wrapping_add(b - b'0')),
            );
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn level_counts_below_the_mount() {
        let l = |p: &str| level_in(HYBRID, Path::new(p), not_root).unwrap();
        assert_eq!(l("/sys/fs/cgroup/unified"), 0);
        assert_eq!(l("/sys/fs/cgroup/unified/kubepods.slice"), 1);
        assert_eq!(l("/sys/fs/cgroup/unified/mt-x/node1"), 2);
    }

    #[test]
    fn mount_of_a_subtree_adds_its_root() {
        let info = "40 1 0:27 /kubepods.slice /host/pods rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            level_in(info, Path::new("/host/pods"), not_root).unwrap(),
            1
        );
        assert_eq!(
            level_in(info, Path::new("/host/pods/a/b"), not_root).unwrap(),
            3
        );
    }

    #[test]
    fn innermost_mount_wins_and_escapes_are_decoded() {
        let info = "\
31 1 0:27 / /cg rw - cgroup2 cgroup2 rw
32 31 0:27 /a\\040b /cg/x rw - cgroup2 cgroup2 rw
";
        assert_eq!(level_in(info, Path::new("/cg/x/y"), not_root).unwrap(), 2);
        assert_eq!(unescape("/a\\040b"), "/a b");
    }

    #[test]
    fn outside_a_mount_or_the_namespace_is_an_error() {
        let err = level_in(HYBRID, Path::new("/tmp/x"), not_root).unwrap_err();
        assert!(format!("{err:#}").contains("/tmp/x"), "{err:#}");
        let info = "31 1 0:27 /../.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let err = level_in(info, Path::new("/sys/fs/cgroup/x"), not_root).unwrap_err();
        assert!(format!("{err:#}").contains("cgroup namespace"), "{err:#}");
    }

    #[test]
    fn the_hierarchy_root_seen_from_a_cgroup_namespace_is_level_zero() {
        // The DaemonSet's hostPath of the host's cgroup2, read inside the pod's namespace.
        let info = "31 1 0:27 /../../.. /host/sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        let is_root = |p: &Path| p == Path::new("/host/sys/fs/cgroup");
        let l = |p: &str| level_in(info, Path::new(p), is_root).unwrap();
        assert_eq!(l("/host/sys/fs/cgroup"), 0);
        assert_eq!(l("/host/sys/fs/cgroup/kubepods.slice"), 1);
    }

    #[test]
    fn the_real_root_is_told_by_its_files() {
        let root = Path::new("/sys/fs/cgroup/unified");
        if root.join("cgroup.procs").exists() {
            assert!(is_hierarchy_root(root));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        assert!(is_hierarchy_root(dir.path()));
        std::fs::write(dir.path().join("cgroup.events"), "").unwrap();
        assert!(!is_hierarchy_root(dir.path()));
    }

    fn not_root(_: &Path) -> bool {
        false
    }
}
