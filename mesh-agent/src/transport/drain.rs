//! Draining: when a newer agent takes the node over, this one stops accepting and keeps
//! carrying the connections it has until they end (or the drain timeout, decided above).
//!
//! [`Drain`] is the one flag and counter every accept loop and connection looks at: accept
//! loops end when it starts, HTTP/2 servers send GOAWAY, and each carried connection holds a
//! [`Carried`] guard so that the agent knows when the last one is gone. Tunnel sessions count
//! too (their connection tasks run on [`TrackedExecutor`]): a relay is done when its last
//! bytes are queued, and the session still has to write them out before the agent may exit.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    active: AtomicUsize,
    /// Carried connections by kind, for the log of a drain that takes long.
    kinds: Mutex<BTreeMap<&'static str, usize>>,
    /// Woken once, when draining starts: every accept loop and HTTP connection waits here.
    started: Notify,
    /// Woken whenever a carried connection ends (and when draining starts): only the drain
    /// loop waits here. Kept apart from `started` so that the end of one connection does not
    /// wake every task of the agent.
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
    kind: &'static str,
}

impl Drop for Carried {
    fn drop(&mut self) {
        if let Some(n) = self
            .inner
            .kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(self.kind)
        {
            *n = n.saturating_sub(1);
        }
        self.inner.active.fetch_sub(1, Ordering::AcqRel);
        self.inner.changed.notify_waiters();
    }
}

impl Drain {
    /// Starts draining (idempotent).
    pub fn start(&self) {
        if !self.inner.draining.swap(true, Ordering::AcqRel) {
            self.inner.started.notify_waiters();
            self.inner.changed.notify_waiters();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Resolves once draining has started.
    pub async fn started(&self) {
        loop {
            let started = self.inner.started.notified();
            if self.is_draining() {
                return;
            }
            started.await;
        }
    }

    /// Counts a connection (or a task that must finish before exit) of `kind` as carried
    /// until the guard drops.
    pub fn track(&self, kind: &'static str) -> Carried {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        *self
            .inner
            .kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        Carried {
            inner: self.inner.clone(),
            kind,
        }
    }

    /// What is carried now, by kind (kinds with none left out).
    pub fn carried(&self) -> BTreeMap<&'static str, usize> {
        self.inner
            .kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (*k, *n))
            .collect()
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

/// A hyper executor whose tasks count as carried: the HTTP/2 connection tasks of the tunnel
/// client (which flush a stream's last bytes after the relay has handed them over) keep a
/// draining agent alive until they are done.
#[derive(Clone)]
pub struct TrackedExecutor {
    drain: Drain,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let carried = self.drain.track("tunnel session task");
        tokio::spawn(async move {
            let _carried = carried;
            future.await;
        });
    }
}

impl Drain {
    pub fn executor(&self) -> TrackedExecutor {
        TrackedExecutor {
            drain: self.clone(),
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
        let first = drain.track("a");
        let second = drain.track("b");
        assert_eq!(drain.active(), 2);
        assert_eq!(
            drain.carried().into_iter().collect::<Vec<_>>(),
            [("a", 1), ("b", 1)]
        );
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.idle().await }
        });
        drop(first);
        assert_eq!(drain.carried().into_iter().collect::<Vec<_>>(), [("b", 1)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one connection is still carried");
        drop(second);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("idle() must resolve after the last guard drops")
            .unwrap();
        assert_eq!(drain.active(), 0);
    }

    /// Counts how often the wrapped future is polled.
    struct CountPolls<F> {
        inner: std::pin::Pin<Box<F>>,
        polls: Arc<AtomicUsize>,
    }

    impl<F: std::future::Future> std::future::Future for CountPolls<F> {
        type Output = F::Output;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.inner.as_mut().poll(cx)
        }
    }

    /// Every accept loop and HTTP connection waits for `started()`; the end of a carried
    /// connection must not wake them all (with 10 000 connections, each close would cost
    /// 10 000 wake-ups).
    #[tokio::test]
    async fn a_connection_ending_does_not_wake_the_tasks_waiting_for_the_drain() {
        let drain = Drain::default();
        let polls = Arc::new(AtomicUsize::new(0));
        let waiter = tokio::spawn(CountPolls {
            inner: Box::pin({
                let drain = drain.clone();
                async move { drain.started().await }
            }),
            polls: polls.clone(),
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = polls.load(Ordering::Relaxed);
        for _ in 0..10 {
            drop(drain.track("connection"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            polls.load(Ordering::Relaxed),
            before,
            "woken by a connection's end"
        );
        drain.start();
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("started() resolves")
            .unwrap();
    }
}
