//! Sockets opened inside another network namespace.
//!
//! The agent listens for redirected connections inside each enrolled pod's own network
//! namespace (ztunnel's in-pod model): a socket belongs to the namespace it was created in,
//! whatever thread later uses it, so a short-lived thread enters the pod namespace, binds,
//! and hands the socket back. This keeps 127.0.0.1:15001 unreachable from outside the pod and
//! tells the agent which pod a connection came from by which listener accepted it.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{Context, Result};
use nix::sched::{CloneFlags, setns};

/// Binds a TCP listener on `addr` inside the network namespace at `netns` (None = ours).
pub fn listen_in(netns: Option<&Path>, addr: SocketAddr) -> Result<TcpListener> {
    match netns {
        None => bind_listener(addr),
        Some(netns) => inside(netns, move || bind_listener(addr)),
    }
}

/// Runs `work` on a short-lived thread inside the network namespace at `netns`. The thread
/// is thrown away afterwards, so its namespace switch never leaks elsewhere.
fn inside<T: Send + 'static>(
    netns: &Path,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = File::open(netns)
        .with_context(|| format!("cannot open network namespace {}", netns.display()))?;
    let label = netns.display().to_string();
    std::thread::spawn(move || -> Result<T> {
        setns(&file, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("cannot enter network namespace {label}"))?;
        work()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

fn bind_listener(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The addresses of the interfaces inside the network namespace at `netns`.
pub fn addresses_in(netns: &Path) -> Result<Vec<std::net::IpAddr>> {
    let label = netns.display().to_string();
    inside(netns, move || {
        let addresses = nix::ifaddrs::getifaddrs()
            .with_context(|| format!("cannot list the addresses in {label}"))?
            .filter_map(|ifa| ifa.address)
            .filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|v4| std::net::IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
            })
            .collect();
        Ok(addresses)
    })
}

/// The inode number of a network namespace file (`/run/netns/x`, `/proc/<pid>/ns/net`): the
/// namespace's identity, whatever path names it.
pub fn namespace_inode(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot stat network namespace {}", path.display()))?;
    Ok(meta.ino())
}

/// The kernel's cookie of the network namespace a socket lives in (SO_NETNS_COOKIE), the same
/// value bpf_get_netns_cookie() returns to the programs.
pub fn netns_cookie(socket: &impl AsRawFd) -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    socket_option_u64(socket, SO_NETNS_COOKIE).context("getsockopt(SO_NETNS_COOKIE)")
}

/// The kernel's cookie of a socket (SO_COOKIE), the same value bpf_get_socket_cookie() returns
/// to the programs. Asking for it assigns it, so it is stable from then on.
pub fn socket_cookie(socket: &impl AsRawFd) -> Result<u64> {
    const SO_COOKIE: libc::c_int = 57;
    socket_option_u64(socket, SO_COOKIE).context("getsockopt(SO_COOKIE)")
}

/// A u64 SOL_SOCKET option (libc's getsockopt, for options nix has no wrapper for).
fn socket_option_u64(socket: &impl AsRawFd, option: libc::c_int) -> std::io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length for a u64 option.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value)
}
