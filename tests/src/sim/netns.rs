//! Thin wrappers around `ip` and `nsenter` with errors that say which
//! command failed and what it printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The first `ip netns add` on a machine makes /run/netns a shared mount;
/// two of them racing can stack mounts. Tests of one process run in parallel
/// threads, so we serialise namespace creation within the process.
static NETNS_ADD: Mutex<()> = Mutex::new(());

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs a command and turns a non-zero exit into an error carrying stderr.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> Result<()> {
    run_checked(Command::new("ip").args(args))
}

/// `ip -n NETNS ARGS...`
pub fn ip_in(netns: &str, args: &[&str]) -> Result<()> {
    run_checked(Command::new("ip").arg("-n").arg(netns).args(args))
}

pub fn add(name: &str) -> Result<()> {
    let _guard = NETNS_ADD.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "add", name]).with_context(|| format!("creating netns {name}"))
}

pub fn del(name: &str) -> Result<()> {
    ip(&["netns", "del", name]).with_context(|| format!("deleting netns {name}"))
}

/// Names of all named network namespaces (entries of /var/run/netns).
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `sysctl -w KEY=VALUE` inside the namespace. nsenter (rather than
/// `ip netns exec`) avoids the extra mount namespace; /proc/sys/net always
/// reflects the caller's netns.
pub fn sysctl(netns_path: &Path, key: &str, value: &str) -> Result<()> {
    run_checked(
        Command::new("nsenter")
            .arg(format!("--net={}", netns_path.display()))
            .args(["--", "sysctl", "-qw", &format!("{key}={value}")]),
    )
}
