//! Pinned links: the cgroup programs stay attached when the agent exits, so that a stopped,
//! crashed or restarting agent never leaves the node without its L4 policy, ingress drops
//! and STRICT enforcement.
//!
//! Each program's link is pinned at `<pin dir>/links/<cgroup id>/<program name>`. A starting
//! agent that finds its link pinned swaps its own program into it with `BPF_LINK_UPDATE`: one
//! atomic replacement, so no connect ever runs without a program, nor through two (both
//! would count the same bytes in the shared maps). Links pinned for another cgroup (the
//! node's `cgroup` changed) are detached once the new ones are attached. Removing a pin
//! detaches its link (`mesh-agent uninstall`).
//!
//! aya 0.14 pins and opens links but keeps `BPF_LINK_UPDATE` to itself, hence the two raw
//! `bpf(2)` calls below.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::programs::links::FdLink;

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// Where the links of the programs attached to one cgroup are pinned.
pub fn cgroup_links_dir(pin_dir: &Path, cgroup_id: u64) -> PathBuf {
    links_root(pin_dir).join(cgroup_id.to_string())
}

fn links_root(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// How a program came to be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// Its pinned link now runs this agent's program (restart or upgrade).
    Replaced,
    /// A new link, now pinned (first start on the node, or after `uninstall`).
    New,
}

/// Attaches one program: swaps `program` into the link pinned at `pin` if there is one,
/// else calls `attach` and pins the link it returns.
pub fn attach_pinned(
    pin: &Path,
    program: BorrowedFd<'_>,
    attach: impl FnOnce() -> Result<FdLink>,
) -> Result<Attached> {
    if pin.exists() {
        let link = open_pinned(pin)?;
        update_link(link.as_fd(), program)
            .with_context(|| format!("cannot replace the program of link {}", pin.display()))?;
        return Ok(Attached::Replaced);
    }
    let link = attach()?;
    link.pin(pin)
        .with_context(|| format!("cannot pin link {}", pin.display()))?;
    Ok(Attached::New)
}

/// Detaches the links pinned for cgroups other than `keep` (the node's cgroup changed since
/// they were attached); returns how many went.
pub fn detach_other_cgroups(pin_dir: &Path, keep: u64) -> Result<usize> {
    let root = links_root(pin_dir);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(0);
    };
    let mut detached = 0;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy() == keep.to_string() {
            continue;
        }
        detached += count_pins(&entry.path());
        std::fs::remove_dir_all(entry.path())
            .with_context(|| format!("cannot remove stale links {}", entry.path().display()))?;
    }
    Ok(detached)
}

/// What `mesh-agent uninstall` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub links: usize,
    pub maps: usize,
}

/// Detaches every pinned link and removes every pinned map of a node: the programs are gone
/// once no agent holds them any more.
pub fn uninstall(pin_dir: &Path) -> Result<Removed> {
    if !pin_dir.exists() {
        return Ok(Removed::default());
    }
    let links = count_pins(&links_root(pin_dir));
    let maps = count_pins(pin_dir) - links;
    std::fs::remove_dir_all(pin_dir)
        .with_context(|| format!("cannot remove {}", pin_dir.display()))?;
    Ok(Removed { links, maps })
}

/// Pinned objects (files) below `dir`.
fn count_pins(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_pins(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// `BPF_OBJ_GET`: a new descriptor of the object pinned at `path`.
fn open_pinned(path: &Path) -> Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let name = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("pin path {} holds a NUL byte", path.display()))?;
    let attr = ObjGet {
        pathname: name.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &attr)
        .with_context(|| format!("cannot open pinned link {}", path.display()))?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_UPDATE` without `BPF_F_REPLACE`: the link runs `program` from now on, whatever
/// it ran before (Linux 5.7+ for cgroup links).
fn update_link(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &attr).map(drop)
}

/// One `bpf(2)` call with `attr` (a prefix of `union bpf_attr`: the kernel treats the bytes
/// it was not given as zero).
fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<i32> {
    // SAFETY: attr points at a live, initialised value of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_pinned_per_cgroup_below_the_pin_dir() {
        let dir = cgroup_links_dir(Path::new("/sys/fs/bpf/mesh-agent/node1"), 4242);
        assert_eq!(dir, Path::new("/sys/fs/bpf/mesh-agent/node1/links/4242"));
    }

    #[test]
    fn pins_are_counted_through_directories() {
        let dir = std::env::temp_dir().join(format!("mesh-links-{}", std::process::id()));
        let links = cgroup_links_dir(&dir, 7);
        std::fs::create_dir_all(&links).unwrap();
        for name in ["MESH_CONFIG", "MESH_STATS"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        std::fs::write(links.join("mesh_connect4"), b"").unwrap();
        std::fs::create_dir_all(cgroup_links_dir(&dir, 8)).unwrap();
        std::fs::write(cgroup_links_dir(&dir, 8).join("mesh_connect4"), b"").unwrap();
        assert_eq!(detach_other_cgroups(&dir, 7).unwrap(), 1);
        assert!(!cgroup_links_dir(&dir, 8).exists());
        assert_eq!(uninstall(&dir).unwrap(), Removed { links: 1, maps: 2 });
        assert!(!dir.exists());
        assert_eq!(uninstall(&dir).unwrap(), Removed::default());
    }

    #[test]
    fn opening_a_missing_pin_says_which() {
        let err = open_pinned(Path::new("/sys/fs/bpf/no-such-mesh-pin")).unwrap_err();
        assert!(
            format!("{err:#}").contains("/sys/fs/bpf/no-such-mesh-pin"),
            "{err:#}"
        );
    }
}
