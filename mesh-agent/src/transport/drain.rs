//! Draining: when a newer agent takes the node over, this one stops accepting and keeps
//! carrying the connections it has until they end (or the drain timeout, decided above).
//!
//! [`Drain`] is the one flag and counter every accept loop and connection looks at: accept
//! loops end when it starts, HTTP/2 servers send GOAWAY, and each carried connection holds a
//! [`Carried`] guard so that the agent knows when the last one is gone.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    active: AtomicUsize,
    /// Woken when draining starts and whenever a carried connection ends.
    changed: Notify,
}

/// Shared by every task of the data path; cheap to clone.
#[derive(Clone, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

/// A connection this agent carries; dropping it ends the connection's claim on the agent.
pub struct Carried {
    inner: Arc<Inner>,
}

impl Drop for Carried {
    fn drop(&mut self) {
        self.inner.active.fetch_sub(1, Ordering::AcqRel);
        self.inner.changed.notify_waiters();
    }
}

impl Drain {
    /// Starts draining (idempotent).
    pub fn start(&self) {
        if !self.inner.draining.swap(true, Ordering::AcqRel) {
            self.inner.changed.notify_waiters();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Resolves once draining has started.
    pub async fn started(&self) {
        loop {
            let changed = self.inner.changed.notified();
            if self.is_draining() {
                return;
            }
            changed.await;
        }
    }

    /// Counts a connection as carried until the guard drops.
    pub fn track(&self) -> Carried {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        Carried {
            inner: self.inner.clone(),
        }
    }

    /// Connections carried now.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Resolves once no connection is carried any more.
    pub async fn idle(&self) {
        loop {
            let changed = self.inner.changed.notified();
            if self.active() == 0 {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn started_resolves_when_draining_begins() {
        let drain = Drain::default();
        assert!(!drain.is_draining());
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.started().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drain.start();
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("started() must resolve")
            .unwrap();
        assert!(drain.is_draining());
        // Once started, it stays started.
        drain.started().await;
    }

    #[tokio::test]
    async fn idle_waits_for_the_last_carried_connection() {
        let drain = Drain::default();
        let first = drain.track();
        let second = drain.track();
        assert_eq!(drain.active(), 2);
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.idle().await }
        });
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one connection is still carried");
        drop(second);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("idle() must resolve after the last guard drops")
            .unwrap();
        assert_eq!(drain.active(), 0);
    }
}
