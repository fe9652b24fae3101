//! TCP readiness checks from inside a network namespace.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

/// Polls `connect(addr)` from `netns_path` until it succeeds or `timeout`
/// passes. The connect runs on a fresh thread that joins the netns and then
/// exits, so no other code ever runs in the wrong namespace. The thread stays
/// in the test process's cgroup, outside every node cgroup: this checks that
/// something listens, unaffected by mesh programs attached to node cgroups.
pub fn wait_for_tcp_in(netns_path: &Path, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let ns = File::open(netns_path)
        .with_context(|| format!("opening netns {}", netns_path.display()))?;
    let shown = netns_path.display().to_string();
    std::thread::Builder::new()
        .name("wait-for-tcp".into())
        .spawn(move || poll_connect(ns, addr, timeout))
        .context("spawning wait-for-tcp thread")?
        .join()
        .map_err(|_| anyhow!("wait-for-tcp thread panicked"))?
        .with_context(|| format!("waiting for {addr} to accept from netns {shown}"))
}

fn poll_connect(ns: File, addr: SocketAddr, timeout: Duration) -> Result<()> {
    setns(&ns, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left.clamp(Duration::from_millis(10), Duration::from_millis(500));
        let err = match TcpStream::connect_timeout(&addr, attempt) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!("no connection within {timeout:?}, last error: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
