//! cgroup v2 directory handling: creation, killing everything inside a
//! subtree, and bottom-up removal.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The cgroup2 mount on this VM (`/sys/fs/cgroup` itself is a v1 tmpfs).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";

pub fn create(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating cgroup {}", path.display()))
}

/// All cgroup dirs of the subtree, children before parents, so removing them
/// in this order never hits a non-empty directory.
pub fn subtree_bottom_up(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect(root, &mut out);
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect(&entry.path(), out);
            }
        }
    }
    if dir.is_dir() {
        out.push(dir.to_path_buf());
    }
}

/// Every pid in the subtree's `cgroup.procs` files.
pub fn pids(root: &Path) -> Vec<i32> {
    subtree_bottom_up(root)
        .iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// SIGKILLs everything in the subtree. `cgroup.kill` (Linux 5.14+) also gets
/// processes that fork while we read `cgroup.procs`; the explicit pass covers
/// kernels without it.
pub fn kill_all(root: &Path) {
    let _ = fs::write(root.join("cgroup.kill"), "1");
    for pid in pids(root) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Kills and removes the subtree. Killed processes take a moment to leave
/// their cgroup, so removal is retried for up to ~2 s.
pub fn destroy(root: &Path) -> Result<()> {
    let mut last_err = None;
    for _ in 0..100 {
        if !root.exists() {
            return Ok(());
        }
        kill_all(root);
        for dir in subtree_bottom_up(root) {
            if let Err(e) = fs::remove_dir(&dir) {
                last_err = Some((dir, e));
            }
        }
        if !root.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match last_err {
        Some((dir, e)) => bail!("removing cgroup {}: {e}", dir.display()),
        None => bail!("removing cgroup {}: still present", root.display()),
    }
}
