//! Removal of leftovers from earlier runs that crashed before `Sim::drop`.

use std::path::Path;

use anyhow::{Result, ensure};

use super::{cgroup, naming, netns};

/// Deletes named netns and cgroup dirs (under `/sys/fs/cgroup/unified`) whose
/// names start with `prefix_pattern` and whose creating process is gone.
///
/// Our names are `mt-<tag>-<pid>-<n>...` (see [`naming::STALE_PREFIX`]); the
/// pid tells stale leftovers from resources of a simulation that is still
/// running, e.g. in a parallel test of this process, which are kept. The
/// pattern must start with `mt-` so a typo cannot delete foreign namespaces.
/// Per-sim temp dirs are kept on purpose: they hold logs of failed runs.
/// Returns what was removed.
pub fn cleanup_stale(prefix_pattern: &str) -> Result<Vec<String>> {
    ensure!(
        prefix_pattern.starts_with(naming::STALE_PREFIX),
        "cleanup pattern {prefix_pattern:?} must start with {:?}",
        naming::STALE_PREFIX
    );
    let is_stale = |name: &str| name.starts_with(prefix_pattern) && !owner_alive(name);
    let mut removed = Vec::new();
    let mut errors = Vec::new();

    // Processes first (via the cgroups), so namespaces are really freed.
    let cgroups: Vec<String> = std::fs::read_dir(cgroup::CGROUP_ROOT)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_stale(n))
                .collect()
        })
        .unwrap_or_default();
    for name in &cgroups {
        cgroup::kill_all(&Path::new(cgroup::CGROUP_ROOT).join(name));
    }
    for name in netns::list().into_iter().filter(|n| is_stale(n)) {
        match netns::del(&name) {
            Ok(()) => removed.push(format!("netns {name}")),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    for name in cgroups {
        match cgroup::destroy(&Path::new(cgroup::CGROUP_ROOT).join(&name)) {
            Ok(()) => removed.push(format!("cgroup {name}")),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    // Pinned maps of agents of a crashed run (the mesh pins under /sys/fs/bpf/<prefix>).
    let pins: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| is_stale(n))
                .collect()
        })
        .unwrap_or_default();
    for name in pins {
        match std::fs::remove_dir_all(Path::new("/sys/fs/bpf").join(&name)) {
            Ok(()) => removed.push(format!("pins {name}")),
            Err(e) => errors.push(format!("pins {name}: {e}")),
        }
    }
    ensure!(
        errors.is_empty(),
        "stale cleanup incomplete: {}",
        errors.join("; ")
    );
    Ok(removed)
}

fn owner_alive(name: &str) -> bool {
    match naming::owner_pid(name) {
        Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        // Not in our `mt-<tag>-<pid>-<n>` shape, so not ours: leave it alone.
        None => true,
    }
}
