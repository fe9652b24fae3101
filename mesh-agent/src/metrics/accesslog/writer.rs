//! The access log's writer: records are handed over to a bounded queue that one thread
//! drains every `FLUSH_INTERVAL`, formatting the batch and writing it to stderr in one call.
//! A request never waits for the log and never wakes the writer (submitting is a short lock
//! and a push, no system call): when the queue is full (the log's destination is slower than
//! the traffic, or stalled), the record is dropped and counted in
//! `mesh_agent_access_log_dropped_total`.
//!
//! The thread emits the lines as tracing events (target `access`), so the process log filter,
//! `--log-format` and the process log's writer apply to them as before.

use std::{
    io::Write,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::metrics::records::{ConnectionRecord, RequestRecord};

/// How long a line waits at most before it is written (Envoy buffers its access log for up
/// to 1 s by default).
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

enum Record {
    Connection(ConnectionRecord),
    Request(RequestRecord),
}

#[derive(Default)]
struct Queue {
    records: Vec<Record>,
    /// Records accepted so far, and how many of them the writer has written out.
    accepted: u64,
    done: u64,
    /// A `flush` is waiting: write now rather than at the next interval.
    hurry: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    /// Wakes the writer early (flush).
    wake: Condvar,
    /// Tells `flush` that a batch was written.
    written_out: Condvar,
    capacity: usize,
    dropped: AtomicU64,
    written: AtomicU64,
}

/// The handle the data path submits records to.
pub struct AccessLog {
    inner: Arc<Inner>,
}

impl AccessLog {
    /// Starts the writer thread with room for `capacity` records (at least 1).
    pub fn start(capacity: usize) -> Result<AccessLog> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            written_out: Condvar::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_batches(&writer))
            .context("starting the access-log writer thread")?;
        Ok(AccessLog { inner })
    }

    /// Whether the process log filter lets access lines through at all (`access=off` turns
    /// the records off before they are built).
    pub fn filter_allows() -> bool {
        tracing::enabled!(target: super::TARGET, tracing::Level::INFO)
    }

    pub fn connection(&self, record: ConnectionRecord) {
        self.submit(Record::Connection(record));
    }

    pub fn request(&self, record: RequestRecord) {
        self.submit(Record::Request(record));
    }

    fn submit(&self, record: Record) {
        let inner = &self.inner;
        let mut queue = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.records.len() >= inner.capacity {
            drop(queue);
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.records.push(record);
        queue.accepted += 1;
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Lines the writer thread has written.
    pub fn written(&self) -> u64 {
        self.inner.written.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until every record accepted so far has been written: at
    /// shutdown, so that the last connections' lines are not lost with the process.
    pub fn flush(&self, timeout: Duration) -> bool {
        let inner = &self.inner;
        let deadline = Instant::now() + timeout;
        let mut queue = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        let target = queue.accepted;
        queue.hurry = true;
        inner.wake.notify_one();
        while queue.done < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            queue = inner
                .written_out
                .wait_timeout(queue, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// The writer thread: every interval (or at once when a flush waits), takes what is queued,
/// formats it and writes it with one call.
fn write_batches(inner: &Inner) {
    let mut batch = Vec::new();
    loop {
        let upto = {
            let mut queue = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            if !queue.hurry {
                queue = inner
                    .wake
                    .wait_timeout(queue, FLUSH_INTERVAL)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            queue.hurry = false;
            std::mem::swap(&mut queue.records, &mut batch);
            queue.accepted
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let lines = crate::logging::collect(|| {
                for record in batch.drain(..) {
                    match record {
                        Record::Connection(r) => super::connection(&r),
                        Record::Request(r) => super::request(&r),
                    }
                }
            });
            if !lines.is_empty() {
                let _ = std::io::stderr().lock().write_all(&lines);
            }
            inner.written.fetch_add(n, Ordering::Relaxed);
        }
        let mut queue = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.done = upto;
        inner.written_out.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use super::*;
    use crate::{
        logging::{Capture, LogFormat, build},
        metrics::labels::TrafficLabels,
    };

    fn record(n: u64) -> ConnectionRecord {
        ConnectionRecord {
            labels: Arc::new(TrafficLabels::default()),
            direction: "outbound",
            local: "10.1.1.2:41000".parse().unwrap(),
            remote: "10.96.0.10:80".parse().unwrap(),
            request_bytes: n,
            response_bytes: 0,
            duration: Duration::from_millis(1),
            redirected: true,
        }
    }

    /// The writer thread writes through the global subscriber; these tests install one that
    /// captures (the only test in this crate that sets the global default).
    fn global_capture() -> Capture {
        static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let out = Capture::default();
                let (dispatch, _, _) = build("info", LogFormat::Json, out.clone(), false);
                tracing::dispatcher::set_global_default(dispatch).expect("global subscriber");
                out
            })
            .clone()
    }

    fn lines_with_bytes(out: &Capture) -> BTreeMap<u64, usize> {
        let mut seen = BTreeMap::new();
        for line in out.text().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["target"] == "access" {
                *seen
                    .entry(v["request_bytes"].as_u64().unwrap())
                    .or_default() += 1;
            }
        }
        seen
    }

    #[test]
    fn records_are_written_in_order_and_flush_waits_for_them() {
        let out = global_capture();
        let log = AccessLog::start(64).unwrap();
        for n in 1_000..1_050 {
            log.connection(record(n));
        }
        assert!(log.flush(Duration::from_secs(10)));
        let seen = lines_with_bytes(&out);
        let ours: Vec<u64> = seen
            .keys()
            .copied()
            .filter(|n| (1_000..1_050).contains(n))
            .collect();
        assert_eq!(ours, (1_000..1_050).collect::<Vec<_>>());
        assert_eq!(log.written(), 50);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let _out = global_capture();
        let log = AccessLog::start(1).unwrap();
        // Submitting never waits for the writer: far faster than formatting and writing, so
        // a queue of one overflows.
        for n in 0..20_000 {
            log.connection(record(n));
        }
        assert!(log.flush(Duration::from_secs(10)));
        assert!(
            log.dropped() > 0,
            "a queue of 1 kept up with 20,000 records"
        );
        assert_eq!(
            log.dropped() + log.written(),
            20_000,
            "every record is either written or counted as dropped"
        );
    }
}
