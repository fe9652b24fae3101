//! Where kubelet puts a pod's cgroup (cgroup v2), and a network namespace of the pod from a
//! process in it.
//!
//! kubelet (with `cgroupsPerQOS`, the default) nests pods under a QoS cgroup: Guaranteed
//! pods directly under `kubepods`, the others under `kubepods/burstable` or
//! `kubepods/besteffort`. The systemd driver spells each level as a slice whose name repeats
//! its ancestors' (`kubepods-burstable-pod<UID_>.slice`) with `-` in the UID turned into `_`.
//! Containers are child cgroups of the pod cgroup, which itself holds no process.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::config::CgroupDriver;

/// A pod's QoS class (`status.qosClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn parse(text: &str) -> Option<Qos> {
        match text {
            "Guaranteed" => Some(Qos::Guaranteed),
            "Burstable" => Some(Qos::Burstable),
            "BestEffort" => Some(Qos::BestEffort),
            _ => None,
        }
    }
}

/// The driver to use under `root`: `Auto` is systemd when `kubepods.slice` exists there.
pub fn resolve_driver(driver: CgroupDriver, root: &Path) -> CgroupDriver {
    match driver {
        CgroupDriver::Auto if root.join("kubepods.slice").is_dir() => CgroupDriver::Systemd,
        CgroupDriver::Auto => CgroupDriver::Cgroupfs,
        d => d,
    }
}

/// The pod cgroup kubelet creates for `uid` (pure; `Auto` is treated as cgroupfs, resolve it
/// first with [`resolve_driver`]).
pub fn pod_cgroup(root: &Path, driver: CgroupDriver, qos: Qos, uid: &str) -> PathBuf {
    match driver {
        CgroupDriver::Systemd => {
            let uid = uid.replace('-', "_");
            let base = root.join("kubepods.slice");
            match qos {
                Qos::Guaranteed => base.join(format!("kubepods-pod{uid}.slice")),
                Qos::Burstable => base
                    .join("kubepods-burstable.slice")
                    .join(format!("kubepods-burstable-pod{uid}.slice")),
                Qos::BestEffort => base
                    .join("kubepods-besteffort.slice")
                    .join(format!("kubepods-besteffort-pod{uid}.slice")),
            }
        }
        CgroupDriver::Cgroupfs | CgroupDriver::Auto => {
            let base = root.join("kubepods");
            let pod = format!("pod{uid}");
            match qos {
                Qos::Guaranteed => base.join(pod),
                Qos::Burstable => base.join("burstable").join(pod),
                Qos::BestEffort => base.join("besteffort").join(pod),
            }
        }
    }
}

/// The pod's cgroup directory if it exists: the computed path, else a directory named after
/// the pod UID within three levels under `kubepods[.slice]` (custom cgroup roots, kubelets
/// without QoS cgroups, a QoS class that was not reported).
pub fn find_pod_cgroup(
    root: &Path,
    driver: CgroupDriver,
    qos: Option<Qos>,
    uid: &str,
) -> Option<PathBuf> {
    let driver = resolve_driver(driver, root);
    if let Some(qos) = qos {
        let path = pod_cgroup(root, driver, qos, uid);
        if path.is_dir() {
            return Some(path);
        }
    }
    let names = [format!("pod{uid}"), format!("pod{}", uid.replace('-', "_"))];
    let mut level = vec![root.join("kubepods.slice"), root.join("kubepods")];
    for _ in 0..3 {
        let mut next = Vec::new();
        for dir in level {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                let name = name.to_string_lossy();
                // `pod<UID>` alone, or as the last part of a slice name.
                let hit = names.iter().any(|n| {
                    *name == **n
                        || name.ends_with(&format!("-{n}.slice"))
                        || name.ends_with(&format!("-{n}"))
                });
                if hit {
                    return Some(entry.path());
                }
                next.push(entry.path());
            }
        }
        level = next;
    }
    None
}

/// A process of the pod, from `cgroup.procs` of the pod cgroup or of any descendant
/// (container) cgroup: the one that started first, which is the pod sandbox (pause) process
/// that holds the pod's namespaces for the pod's whole life, so the path stays the same
/// when an application container restarts. Without readable start times (processes gone),
/// the first found, breadth first. `None` when no process runs there yet.
pub fn find_pid(pod_cgroup: &Path) -> io::Result<Option<u32>> {
    let mut found: Vec<u32> = Vec::new();
    let mut queue = std::collections::VecDeque::from([pod_cgroup.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(text) => {
                if let Some(pid) = text.lines().find_map(|l| l.trim().parse::<u32>().ok()) {
                    found.push(pid);
                }
            }
            // Not a cgroup (a test tree) or removed while we walk: look below it anyway.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut children: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        children.sort();
        queue.extend(children);
    }
    let oldest = found
        .iter()
        .filter_map(|pid| start_time(*pid).map(|t| (t, *pid)))
        .min()
        .map(|(_, pid)| pid);
    Ok(oldest.or_else(|| found.first().copied()))
}

/// When a process started (field 22 of /proc/PID/stat, in clock ticks since boot).
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and ')'; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The network namespace file of `pid`.
pub fn netns_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// Cgroup and network namespace of a pod, when both are there. The namespace is the
/// runtime's named namespace holding one of the pod's IPs (`finder`), which needs no access
/// to the pod's processes; failing that (a runtime that names no namespaces), the
/// namespace of the pod's sandbox process, which needs ptrace access to it.
pub fn locate(
    root: &Path,
    driver: CgroupDriver,
    qos: Option<Qos>,
    uid: &str,
    ips: &[std::net::IpAddr],
    finder: &super::netns_scan::NetnsFinder,
) -> Option<(PathBuf, PathBuf)> {
    let cgroup = find_pod_cgroup(root, driver, qos, uid)?;
    let mut named = finder.find(ips);
    if named.len() == 1 {
        return named.pop().map(|(path, _)| (cgroup, path));
    }
    let pid = find_pid(&cgroup).ok().flatten()?;
    let process_ns = netns_of(pid);
    // Several named namespaces hold the IP (stale ones, or other nodes' on one host as in
    // tests): the sandbox process's namespace tells which, when it can be read.
    if let Ok(inode) = crate::netns::namespace_inode(&process_ns)
        && let Some((path, _)) = named.into_iter().find(|(_, i)| *i == inode)
    {
        return Some((cgroup, path));
    }
    Some((cgroup, process_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "4115089e-088b-4fb1-8884-b3f163efa48c";

    #[test]
    fn paths_for_every_qos_and_driver() {
        let root = Path::new("/sys/fs/cgroup");
        let cases = [
            (
                CgroupDriver::Systemd,
                Qos::Guaranteed,
                "kubepods.slice/kubepods-pod4115089e_088b_4fb1_8884_b3f163efa48c.slice",
            ),
            (
                CgroupDriver::Systemd,
                Qos::Burstable,
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4115089e_088b_4fb1_8884_b3f163efa48c.slice",
            ),
            (
                CgroupDriver::Systemd,
                Qos::BestEffort,
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod4115089e_088b_4fb1_8884_b3f163efa48c.slice",
            ),
            (
                CgroupDriver::Cgroupfs,
                Qos::Guaranteed,
                "kubepods/pod4115089e-088b-4fb1-8884-b3f163efa48c",
            ),
            (
                CgroupDriver::Cgroupfs,
                Qos::Burstable,
                "kubepods/burstable/pod4115089e-088b-4fb1-8884-b3f163efa48c",
            ),
            (
                CgroupDriver::Cgroupfs,
                Qos::BestEffort,
                "kubepods/besteffort/pod4115089e-088b-4fb1-8884-b3f163efa48c",
            ),
        ];
        for (driver, qos, want) in cases {
            assert_eq!(
                pod_cgroup(root, driver, qos, UID),
                root.join(want),
                "{driver:?} {qos:?}"
            );
        }
        assert_eq!(Qos::parse("Burstable"), Some(Qos::Burstable));
        assert_eq!(Qos::parse("burstable"), None);
    }

    #[test]
    fn auto_detects_the_driver_from_the_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            resolve_driver(CgroupDriver::Auto, dir.path()),
            CgroupDriver::Cgroupfs
        );
        fs::create_dir(dir.path().join("kubepods.slice")).expect("mkdir");
        assert_eq!(
            resolve_driver(CgroupDriver::Auto, dir.path()),
            CgroupDriver::Systemd
        );
        // An explicit driver is kept.
        assert_eq!(
            resolve_driver(CgroupDriver::Cgroupfs, dir.path()),
            CgroupDriver::Cgroupfs
        );
        let pod = pod_cgroup(dir.path(), CgroupDriver::Systemd, Qos::Burstable, UID);
        assert_eq!(
            find_pod_cgroup(dir.path(), CgroupDriver::Auto, Some(Qos::Burstable), UID),
            None
        );
        fs::create_dir_all(&pod).expect("mkdir pod");
        assert_eq!(
            find_pod_cgroup(dir.path(), CgroupDriver::Auto, Some(Qos::Burstable), UID),
            Some(pod.clone())
        );
        // Wrong or unknown QoS: found by the UID search.
        assert_eq!(
            find_pod_cgroup(dir.path(), CgroupDriver::Auto, Some(Qos::Guaranteed), UID),
            Some(pod.clone())
        );
        assert_eq!(
            find_pod_cgroup(dir.path(), CgroupDriver::Auto, None, UID),
            Some(pod)
        );
    }

    #[test]
    fn pid_comes_from_a_container_cgroup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = dir
            .path()
            .join("kubepods/besteffort")
            .join(format!("pod{UID}"));
        fs::create_dir_all(pod.join("ctr-a")).expect("mkdir");
        fs::create_dir_all(pod.join("ctr-b")).expect("mkdir");
        fs::write(pod.join("cgroup.procs"), "").expect("procs");
        fs::write(pod.join("ctr-a/cgroup.procs"), "").expect("procs");
        assert_eq!(find_pid(&pod).expect("walk"), None);
        let no_named_namespaces =
            crate::k8s::netns_scan::NetnsFinder::new(dir.path().join("no-netns"));
        assert_eq!(
            locate(
                dir.path(),
                CgroupDriver::Auto,
                Some(Qos::BestEffort),
                UID,
                &[],
                &no_named_namespaces,
            ),
            None,
            "no process yet"
        );
        // Pids that do not exist here: no start times, so the first found.
        fs::write(pod.join("ctr-b/cgroup.procs"), "4000000000\n4000000001\n").expect("procs");
        assert_eq!(find_pid(&pod).expect("walk"), Some(4_000_000_000));
        assert_eq!(
            locate(
                dir.path(),
                CgroupDriver::Auto,
                Some(Qos::BestEffort),
                UID,
                &[],
                &no_named_namespaces,
            ),
            Some((pod.clone(), PathBuf::from("/proc/4000000000/ns/net")))
        );
        // Real processes: the one that started first wins (pid 1 started before this test).
        let me = std::process::id();
        fs::write(pod.join("ctr-a/cgroup.procs"), format!("{me}\n")).expect("procs");
        fs::write(pod.join("ctr-b/cgroup.procs"), "1\n").expect("procs");
        assert_eq!(find_pid(&pod).expect("walk"), Some(1));
    }

    #[test]
    fn start_time_reads_past_the_command_name() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(4_000_000_000), None);
    }
}
