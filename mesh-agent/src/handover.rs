//! Handing the node's listening sockets from a running agent to its successor, so that a
//! restart or an upgrade never has a moment where nobody listens.
//!
//! The running agent serves a unix SOCK_SEQPACKET socket at `<state dir>/<node>/handover.sock`.
//! A new agent of the same node connects to it at start ([`take_over`]): it says hello, gets
//! every listening socket (outbound listeners of every network namespace, the tunnel, admin
//! and metrics listeners) as SCM_RIGHTS batches with their names, and starts serving them
//! beside the old agent (both accept from the same queues, either serves a connection fully).
//! Once it is ready it says so ([`Incoming::complete`]); the old agent then stops accepting,
//! drains its connections and exits. If the new agent dies before it is ready, the old one
//! sees the socket close and carries on as if nothing happened.
//!
//! Messages are JSON, one per packet; sockets travel with the `sockets` messages.

use std::{
    collections::HashMap,
    io::{IoSlice, IoSliceMut},
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use nix::{
    errno::Errno,
    sys::{
        socket::{
            self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
            SockType, UnixAddr, sockopt,
        },
        time::TimeVal,
    },
};
use serde::{Deserialize, Serialize};

/// Raised when the message format changes; an agent refuses a successor that speaks
/// another version (the sockets then stay with the old agent).
pub const PROTOCOL_VERSION: u32 = 1;
/// Sockets per `sockets` message (the kernel's SCM_MAX_FD is 253).
const BATCH: usize = 200;
const MAX_MESSAGE: usize = 64 * 1024;
/// How long the new agent waits for each answer of the old one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old agent waits for its successor to become ready (it may have a slow
/// Kubernetes list to do first); past that the takeover is abandoned.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Message {
    Hello { version: u32, pid: u32 },
    Sockets { names: Vec<String>, last: bool },
    Refused { reason: String },
    Ready,
    Draining { connections: usize },
}

/// Where the node's handover socket lives.
pub fn socket_path(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join(node).join("handover.sock")
}

/// What the old agent gives away and how it is told to step back.
pub trait Outgoing: Send + Sync {
    /// Every listening socket, each under a name both agents agree on (duplicates: the old
    /// agent keeps its own until it has drained).
    fn sockets(&self) -> Vec<(String, OwnedFd)>;
    /// The successor is ready: stop accepting and drain. Returns the connections carried.
    fn hand_over(&self) -> usize;
}

/// The sockets received from the old agent, taken one by one by name.
pub struct Incoming {
    connection: OwnedFd,
    sockets: HashMap<String, OwnedFd>,
    /// The old agent's process id, for the log.
    pub previous_pid: u32,
}

impl Incoming {
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sockets.keys().cloned().collect();
        names.sort();
        names
    }

    /// The TCP listener named `name`, when it listens on `port` (and on `address`, when one
    /// is given). A socket that does not match the config stays unused: the old agent's
    /// config had another address, and this agent binds its own.
    pub fn tcp(
        &mut self,
        name: &str,
        address: Option<SocketAddr>,
        port: u16,
    ) -> Option<TcpListener> {
        let fd = self.sockets.remove(name)?;
        let listener = TcpListener::from(fd);
        let local = match listener.local_addr() {
            Ok(local) => local,
            Err(e) => {
                tracing::warn!(name, error = %e, "a handed-over socket is not a TCP listener");
                return None;
            }
        };
        let matches = local.port() == port && address.is_none_or(|a| a == local);
        if !matches {
            tracing::info!(name, %local, port, "the handed-over socket does not match the config; binding a new one");
            return None;
        }
        if let Err(e) = listener.set_nonblocking(true) {
            tracing::warn!(name, error = %e, "cannot make a handed-over socket non-blocking");
            return None;
        }
        Some(listener)
    }

    /// This agent serves everything now: tells the old one to drain. Sockets not taken are
    /// closed here (the old agent closes its copies when it exits). Returns how many
    /// connections the old agent still carries.
    pub fn complete(self) -> Result<usize> {
        if !self.sockets.is_empty() {
            tracing::info!(unused = ?self.names(), "handed-over sockets this config does not use");
        }
        send(&self.connection, &Message::Ready, &[])?;
        match receive(&self.connection)?.0 {
            Message::Draining { connections } => Ok(connections),
            Message::Refused { reason } => {
                bail!("the previous agent refused to step back: {reason}")
            }
            other => bail!("unexpected answer from the previous agent: {other:?}"),
        }
    }
}

/// Connects to the agent serving `path` and receives its sockets. None when no agent runs
/// there (no socket, or a stale one left by an agent that died); an error when one runs but
/// the handover failed (this agent must not then bind beside it).
pub fn take_over(path: &Path) -> Result<Option<Incoming>> {
    let connection = new_socket()?;
    let address =
        UnixAddr::new(path).with_context(|| format!("bad socket path {}", path.display()))?;
    match socket::connect(connection.as_raw_fd(), &address) {
        Ok(()) => {}
        Err(Errno::ENOENT | Errno::ECONNREFUSED) => return Ok(None),
        Err(e) => return Err(anyhow!(e).context(format!("cannot connect to {}", path.display()))),
    }
    set_timeout(&connection, ANSWER_TIMEOUT)?;
    send(
        &connection,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
        },
        &[],
    )?;
    let mut sockets = HashMap::new();
    loop {
        let (message, fds) = receive(&connection).context("no answer from the running agent")?;
        match message {
            Message::Sockets { names, last } => {
                if names.len() != fds.len() {
                    bail!(
                        "the running agent sent {} names for {} sockets",
                        names.len(),
                        fds.len()
                    );
                }
                sockets.extend(names.into_iter().zip(fds));
                if last {
                    break;
                }
            }
            Message::Refused { reason } => {
                bail!("the running agent refused the takeover: {reason}")
            }
            other => bail!("unexpected message from the running agent: {other:?}"),
        }
    }
    // Only for the log: which process is being replaced.
    let previous_pid = socket::getsockopt(&connection, sockopt::PeerCredentials)
        .map(|c| u32::try_from(c.pid()).unwrap_or(0))
        .unwrap_or(0);
    Ok(Some(Incoming {
        connection,
        sockets,
        previous_pid,
    }))
}

/// Serves the handover socket at `path` on a thread of its own, until one successor has
/// taken over. The socket is bound at a staging path and renamed into place, so a successor
/// never finds the path missing while this agent starts.
pub fn serve(path: &Path, outgoing: Arc<dyn Outgoing>) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
    create_private_dir(dir)?;
    let staging = dir.join(format!(".handover.{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = new_socket()?;
    let address = UnixAddr::new(&staging)
        .with_context(|| format!("bad socket path {} (too long?)", staging.display()))?;
    socket::bind(listener.as_raw_fd(), &address)
        .with_context(|| format!("cannot bind {}", staging.display()))?;
    socket::listen(&listener, Backlog::new(4).map_err(|e| anyhow!(e))?)
        .with_context(|| format!("cannot listen on {}", staging.display()))?;
    std::fs::rename(&staging, path)
        .with_context(|| format!("cannot move the handover socket to {}", path.display()))?;
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("handover".into())
        .spawn(move || accept_successors(listener, &path, outgoing.as_ref()))
        .context("cannot start the handover thread")?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    // Whoever connects gets the node's sockets: only root may.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))
}

fn accept_successors(listener: OwnedFd, path: &Path, outgoing: &dyn Outgoing) {
    loop {
        let connection = match socket::accept(listener.as_raw_fd()) {
            // SAFETY: accept returned a new descriptor that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "handover socket failed; no successor can take over");
                return;
            }
        };
        match give_over(&connection, outgoing) {
            Ok(connections) => {
                tracing::info!(connections, "a new agent took the node over; draining");
                return;
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "takeover abandoned; this agent keeps serving"
            ),
        }
    }
}

/// One successor's handover, from its hello to our `draining` answer.
fn give_over(connection: &OwnedFd, outgoing: &dyn Outgoing) -> Result<usize> {
    set_timeout(connection, ANSWER_TIMEOUT)?;
    let version = match receive(connection)?.0 {
        Message::Hello { version, pid } => {
            tracing::info!(pid, version, "a new agent asks to take the node over");
            version
        }
        other => bail!("expected hello, got {other:?}"),
    };
    if version != PROTOCOL_VERSION {
        let reason = format!("handover protocol {version}, this agent speaks {PROTOCOL_VERSION}");
        let _ = send(
            connection,
            &Message::Refused {
                reason: reason.clone(),
            },
            &[],
        );
        bail!(reason);
    }
    let sockets = outgoing.sockets();
    let total = sockets.len();
    let mut batches = sockets.chunks(BATCH).peekable();
    if batches.peek().is_none() {
        send(
            connection,
            &Message::Sockets {
                names: vec![],
                last: true,
            },
            &[],
        )?;
    }
    while let Some(batch) = batches.next() {
        let names = batch.iter().map(|(name, _)| name.clone()).collect();
        let fds: Vec<RawFd> = batch.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let last = batches.peek().is_none();
        send(connection, &Message::Sockets { names, last }, &fds)?;
    }
    tracing::info!(
        sockets = total,
        "listening sockets handed over; waiting for the new agent to be ready"
    );
    set_timeout(connection, READY_TIMEOUT)?;
    match receive(connection)
        .context("the new agent went away before it was ready")?
        .0
    {
        Message::Ready => {}
        other => bail!("expected ready, got {other:?}"),
    }
    let connections = outgoing.hand_over();
    send(connection, &Message::Draining { connections }, &[])?;
    Ok(connections)
}

fn new_socket() -> Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("cannot create a unix socket")
}

fn set_timeout(fd: &OwnedFd, timeout: Duration) -> Result<()> {
    let tv = TimeVal::new(
        i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(timeout.subsec_micros()),
    );
    socket::setsockopt(fd, sockopt::ReceiveTimeout, &tv).context("cannot set SO_RCVTIMEO")
}

fn send(fd: &OwnedFd, message: &Message, fds: &[RawFd]) -> Result<()> {
    let bytes = serde_json::to_vec(message).context("cannot encode a handover message")?;
    let iov = [IoSlice::new(&bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .context("cannot send a handover message")?;
    Ok(())
}

fn receive(fd: &OwnedFd) -> Result<(Message, Vec<OwnedFd>)> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; BATCH]);
    let (bytes, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = loop {
            match socket::recvmsg::<()>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => bail!("timed out waiting for the other agent"),
                other => break other.context("cannot receive a handover message")?,
            }
        };
        let mut fds = Vec::new();
        for cmsg in message
            .cmsgs()
            .context("handover message with too many sockets")?
        {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let truncated = message.flags.contains(MsgFlags::MSG_TRUNC);
        (message.bytes, fds, truncated)
    };
    if bytes == 0 {
        bail!("the other agent closed the handover socket");
    }
    if truncated {
        bail!("handover message longer than {MAX_MESSAGE} bytes");
    }
    let message = serde_json::from_slice(&buffer[..bytes]).context("malformed handover message")?;
    Ok((message, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Listeners {
        sockets: Vec<(String, TcpListener)>,
        handed_over: AtomicUsize,
    }

    impl Outgoing for Listeners {
        fn sockets(&self) -> Vec<(String, OwnedFd)> {
            self.sockets
                .iter()
                .map(|(name, l)| (name.clone(), OwnedFd::from(l.try_clone().unwrap())))
                .collect()
        }

        fn hand_over(&self) -> usize {
            self.handed_over.fetch_add(1, Ordering::SeqCst);
            7
        }
    }

    fn listeners(count: usize) -> Arc<Listeners> {
        Arc::new(Listeners {
            sockets: (0..count)
                .map(|i| {
                    (
                        format!("outbound/{i}/v4"),
                        TcpListener::bind("127.0.0.1:0").unwrap(),
                    )
                })
                .collect(),
            handed_over: AtomicUsize::new(0),
        })
    }

    #[test]
    fn no_agent_running_means_nothing_to_take() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "node1");
        assert!(take_over(&path).unwrap().is_none());
        // A stale socket file (an agent that died) is the same as none.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let stale = new_socket().unwrap();
        socket::bind(stale.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        drop(stale);
        assert!(take_over(&path).unwrap().is_none());
    }

    #[test]
    fn sockets_pass_in_batches_and_still_accept_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "node1");
        let old = listeners(BATCH + 5);
        serve(&path, old.clone()).unwrap();
        let mut incoming = take_over(&path).unwrap().expect("an agent runs");
        assert_eq!(incoming.names().len(), BATCH + 5);
        let (name, original) = &old.sockets[BATCH + 1];
        let port = original.local_addr().unwrap().port();
        // A socket that does not match the config stays unused.
        assert!(
            incoming
                .tcp(&old.sockets[0].0, None, port.wrapping_add(1))
                .is_none()
        );
        let taken = incoming.tcp(name, None, port).expect("the socket matches");
        // The same listening socket: a connection made to the old one is accepted here.
        let client = std::net::TcpStream::connect(original.local_addr().unwrap()).unwrap();
        taken.set_nonblocking(false).unwrap();
        let (accepted, peer) = taken.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        drop(accepted);
        assert_eq!(old.handed_over.load(Ordering::SeqCst), 0);
        assert_eq!(incoming.complete().unwrap(), 7);
        assert_eq!(old.handed_over.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_successor_that_dies_before_ready_leaves_the_old_agent_serving() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "node1");
        let old = listeners(2);
        serve(&path, old.clone()).unwrap();
        let incoming = take_over(&path).unwrap().expect("an agent runs");
        drop(incoming);
        // The old agent still serves the next successor.
        let second = take_over(&path).unwrap().expect("still serving");
        assert_eq!(second.names(), vec!["outbound/0/v4", "outbound/1/v4"]);
        assert_eq!(old.handed_over.load(Ordering::SeqCst), 0);
        second.complete().unwrap();
        assert_eq!(old.handed_over.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn another_protocol_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "node1");
        let old = listeners(1);
        serve(&path, old.clone()).unwrap();
        let connection = new_socket().unwrap();
        socket::connect(connection.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        set_timeout(&connection, ANSWER_TIMEOUT).unwrap();
        send(
            &connection,
            &Message::Hello {
                version: 99,
                pid: 1,
            },
            &[],
        )
        .unwrap();
        match receive(&connection).unwrap() {
            (Message::Refused { reason }, fds) => {
                assert!(reason.contains("99"), "{reason}");
                assert!(fds.is_empty());
            }
            other => panic!("expected a refusal, got {:?}", other.0),
        }
        assert_eq!(old.handed_over.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_state_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "node1");
        serve(&path, listeners(0)).unwrap();
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // Zero sockets is a valid handover too.
        let incoming = take_over(&path).unwrap().unwrap();
        assert!(incoming.names().is_empty());
    }
}
