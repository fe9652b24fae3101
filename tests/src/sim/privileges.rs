//! Preconditions of the privileged tests. Tests call [`require_privileges`]
//! first and fail (never skip) when it errs, so a misconfigured runner cannot
//! produce a green run that tested nothing.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};

use super::cgroup::CGROUP_ROOT;

const BPFFS: &str = "/sys/fs/bpf";

/// Errs with every missing prerequisite listed: euid 0, cgroup2 at
/// `/sys/fs/cgroup/unified`, the `ip`/`nsenter`/`sysctl` tools, bpffs at
/// `/sys/fs/bpf` (mounted here if absent) and a working `bpf(BPF_PROG_LOAD)`.
pub fn require_privileges() -> Result<()> {
    let mut problems = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        problems.push("must run as root (euid 0)".to_string());
    }
    if let Err(e) = check_cgroup2() {
        problems.push(format!("{e:#}"));
    }
    for (tool, arg) in [
        ("ip", "-V"),
        ("nsenter", "--version"),
        ("sysctl", "--version"),
    ] {
        if let Err(e) = check_tool(tool, arg) {
            problems.push(format!("{e:#}"));
        }
    }
    // bpffs and BPF loading only make sense to probe as root; as non-root
    // they would just add noise to the one real problem.
    if problems.is_empty() {
        if let Err(e) = ensure_bpffs() {
            problems.push(format!("{e:#}"));
        }
        if let Err(e) = check_bpf_prog_load() {
            problems.push(format!("{e:#}"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "privileged mesh tests cannot run here:\n  - {}",
        problems.join("\n  - ")
    )
}

fn check_cgroup2() -> Result<()> {
    let fs = statfs(CGROUP_ROOT).with_context(|| format!("statfs {CGROUP_ROOT}"))?;
    if fs.filesystem_type() != CGROUP2_SUPER_MAGIC {
        bail!("{CGROUP_ROOT} is not a cgroup2 mount");
    }
    Ok(())
}

fn check_tool(tool: &str, arg: &str) -> Result<()> {
    let out = Command::new(tool)
        .arg(arg)
        .output()
        .with_context(|| format!("`{tool}` is not installed or not in PATH"))?;
    if !out.status.success() {
        bail!("`{tool} {arg}` failed: {}", out.status);
    }
    Ok(())
}

fn ensure_bpffs() -> Result<()> {
    let path = Path::new(BPFFS);
    if let Ok(fs) = statfs(path)
        && fs.filesystem_type() == BPF_FS_MAGIC
    {
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {BPFFS}"))?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mount -t bpf bpf {BPFFS}"))
}

/// The first fields of `union bpf_attr` used by BPF_PROG_LOAD; the kernel
/// zero-fills the rest when we pass a shorter size.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// Loads `r0 = 0; exit` as a socket filter: the cheapest proof that the
/// kernel lets us load BPF at all (no BTF, no maps, no attach needed).
fn check_bpf_prog_load() -> Result<()> {
    // mov64 r0, 0 (BPF_ALU64|BPF_MOV|BPF_K) ; exit (BPF_JMP|BPF_EXIT)
    let insns: [u64; 2] = [u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]), 0x95];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: attr points to a valid, fully initialised prefix of bpf_attr
    // whose pointers (insns, license) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        bail!("bpf(BPF_PROG_LOAD) of a trivial socket filter failed: {err}");
    }
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}
