//! The connection table: live connections (read from the kernel's per-connection map) and the
//! most recent closed ones (from ring-buffer events), as records for /flows and the CLI.

use std::{
    collections::{HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use mesh_common::{CONN_ACTIVE, CONN_FAST_PATH, CONN_REDIRECTED, ConnEvent, ConnStats, SockKey};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::ebpf::bytes_to_ip;

/// How many closed connections are kept for inspection.
const CLOSED_KEPT: usize = 16_384;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowRecord {
    pub state: String,
    pub direction: String,
    pub local: String,
    pub remote: String,
    pub workload: Option<String>,
    pub redirected: bool,
    pub fast_path: bool,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    pub retransmits: u32,
    pub srtt_us: u32,
    pub duration_ms: u64,
    pub cookie: u64,
    pub netns_cookie: u64,
    pub cgroup_id: u64,
}

fn addr(ip: [u8; 16], port: u16) -> String {
    SocketAddr::new(bytes_to_ip(ip), port).to_string()
}

/// Now, by the clock bpf_ktime_get_ns() reads (the kernel's connection timestamps).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns() reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl FlowRecord {
    pub fn from_kernel(
        key: &SockKey,
        stats: &ConnStats,
        end_ns: Option<u64>,
        workload: Option<String>,
    ) -> FlowRecord {
        let end = end_ns.unwrap_or_else(monotonic_ns);
        FlowRecord {
            state: if end_ns.is_some() { "closed" } else { "open" }.into(),
            direction: if stats.flags & CONN_ACTIVE != 0 {
                "outbound"
            } else {
                "inbound"
            }
            .into(),
            local: addr(key.local_ip, key.local_port),
            remote: addr(key.remote_ip, key.remote_port),
            workload,
            redirected: stats.flags & CONN_REDIRECTED != 0,
            fast_path: stats.flags & CONN_FAST_PATH != 0,
            bytes_sent: stats.tcp_bytes_acked + stats.fast_bytes_sent,
            bytes_received: stats.tcp_bytes_received + stats.fast_bytes_received,
            segs_in: stats.segs_in,
            segs_out: stats.segs_out,
            retransmits: stats.total_retrans,
            srtt_us: stats.srtt_us,
            duration_ms: end.saturating_sub(stats.start_ns) / 1_000_000,
            cookie: stats.cookie,
            netns_cookie: key.netns_cookie,
            cgroup_id: stats.cgroup_id,
        }
    }
}

/// Closed connections, newest last.
#[derive(Default)]
pub struct ClosedFlows {
    records: Mutex<VecDeque<FlowRecord>>,
}

impl ClosedFlows {
    pub fn push(&self, event: &ConnEvent, workload: Option<String>) {
        let record =
            FlowRecord::from_kernel(&event.key, &event.stats, Some(event.end_ns), workload);
        if let Ok(mut records) = self.records.lock() {
            if records.len() == CLOSED_KEPT {
                records.pop_front();
            }
            records.push_back(record);
        }
    }

    pub fn snapshot(&self) -> Vec<FlowRecord> {
        self.records
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// How many events a slow /flows/stream subscriber may fall behind before it loses some.
pub const EVENT_CAPACITY: usize = 4096;

/// How often the live-connection map is read for new connections while someone follows.
pub const OPEN_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A connection event for `mesh-agent flows --follow` and /flows/stream: "open" when the agent
/// first sees a live connection, "close" when the kernel reports it closed (with its final
/// counters).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowEvent {
    /// RFC 3339, UTC.
    pub time: String,
    /// "open" or "close".
    pub event: String,
    #[serde(flatten)]
    pub flow: FlowRecord,
}

impl FlowEvent {
    /// An event stamped with the current time.
    pub fn now(event: &str, flow: FlowRecord) -> FlowEvent {
        FlowEvent {
            time: rfc3339_now(),
            event: event.to_string(),
            flow,
        }
    }
}

pub fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Fan-out of flow events to /flows/stream subscribers. Nothing is built or sent while
/// nobody listens.
pub struct FlowEvents {
    tx: broadcast::Sender<FlowEvent>,
}

impl Default for FlowEvents {
    fn default() -> FlowEvents {
        FlowEvents {
            tx: broadcast::channel(EVENT_CAPACITY).0,
        }
    }
}

impl FlowEvents {
    pub fn publish(&self, event: FlowEvent) {
        // An error only means that nobody listens.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FlowEvent> {
        self.tx.subscribe()
    }

    /// How many /flows/stream clients are connected.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A "close" event for a ring-buffer record, built only when someone listens.
    pub fn publish_closed(&self, event: &ConnEvent, workload: Option<&str>) {
        if self.subscribers() == 0 {
            return;
        }
        let record = FlowRecord::from_kernel(
            &event.key,
            &event.stats,
            Some(event.end_ns),
            workload.map(str::to_string),
        );
        self.publish(FlowEvent::now("close", record));
    }
}

/// Remembers which live connections have been announced as "open".
#[derive(Default)]
struct OpenTracker {
    seen: HashSet<u64>,
}

impl OpenTracker {
    /// The cookies of `live` not announced before; forgets cookies that are no longer live.
    fn new_cookies<'a>(&mut self, live: impl IntoIterator<Item = &'a u64>) -> Vec<u64> {
        let mut current = HashSet::new();
        let mut fresh = Vec::new();
        for &cookie in live {
            if current.insert(cookie) && !self.seen.contains(&cookie) {
                fresh.push(cookie);
            }
        }
        self.seen = current;
        fresh
    }

    fn clear(&mut self) {
        self.seen = HashSet::new();
    }
}

/// What the open-connection poller reads: the kernel's live connections, the names of the
/// workloads they belong to, and the stream it publishes to.
pub trait OpenFlows: Send + Sync + 'static {
    fn flow_events(&self) -> &FlowEvents;
    fn live_connections(&self) -> Vec<(mesh_common::SockKey, mesh_common::ConnStats)>;
    fn workload_name(&self, cgroup_id: u64) -> Option<String>;
}

/// Publishes "open" for connections that appear in the kernel's live-connection map, every
/// [`OPEN_POLL_INTERVAL`], but only while at least one client follows /flows/stream, so an idle
/// agent does no work. Connections that open and close between two polls only get "close".
pub fn spawn_open_poller(source: Arc<dyn OpenFlows>) {
    tokio::spawn(async move {
        let mut tracker = OpenTracker::default();
        let mut tick = tokio::time::interval(OPEN_POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let flow_events = source.flow_events();
            if flow_events.subscribers() == 0 {
                tracker.clear();
                continue;
            }
            // A map walk is a few syscalls per live connection: cheap enough to do inline.
            let live = source.live_connections();
            let fresh: HashSet<u64> = tracker
                .new_cookies(live.iter().map(|(_, s)| &s.cookie))
                .into_iter()
                .collect();
            let events = live
                .iter()
                .filter(|(_, s)| fresh.contains(&s.cookie))
                .map(|(k, s)| {
                    let workload = source.workload_name(s.cgroup_id);
                    FlowEvent::now("open", FlowRecord::from_kernel(k, s, None, workload))
                });
            for event in events {
                flow_events.publish(event);
            }
        }
    });
}

/// Renders records as an aligned table for the terminal.
pub fn render_table(records: &[FlowRecord]) -> String {
    let mut out = format!(
        "{:<7} {:<8} {:<22} {:<22} {:<18} {:>12} {:>12} {:>7} {:>8} {:>5} {}\n",
        "STATE",
        "DIR",
        "LOCAL",
        "REMOTE",
        "WORKLOAD",
        "SENT",
        "RECEIVED",
        "RETRANS",
        "SRTT_US",
        "FAST",
        "REDIRECTED"
    );
    for r in records {
        out.push_str(&format!(
            "{:<7} {:<8} {:<22} {:<22} {:<18} {:>12} {:>12} {:>7} {:>8} {:>5} {}\n",
            r.state,
            r.direction,
            r.local,
            r.remote,
            r.workload.as_deref().unwrap_or("-"),
            r.bytes_sent,
            r.bytes_received,
            r.retransmits,
            r.srtt_us,
            if r.fast_path { "yes" } else { "no" },
            if r.redirected { "yes" } else { "no" },
        ));
    }
    out
}

const EVENT_COLUMNS: [&str; 13] = [
    "TIME",
    "EVENT",
    "DIR",
    "LOCAL",
    "REMOTE",
    "WORKLOAD",
    "SENT",
    "RECEIVED",
    "RETRANS",
    "SRTT_US",
    "DURATION_MS",
    "FAST",
    "REDIRECTED",
];

fn event_line(cols: [&str; 13]) -> String {
    format!(
        "{:<12} {:<5} {:<8} {:<22} {:<22} {:<18} {:>12} {:>12} {:>7} {:>8} {:>11} {:>4} {}\n",
        cols[0],
        cols[1],
        cols[2],
        cols[3],
        cols[4],
        cols[5],
        cols[6],
        cols[7],
        cols[8],
        cols[9],
        cols[10],
        cols[11],
        cols[12]
    )
}

/// The header of `mesh-agent flows --follow`.
pub fn render_event_header() -> String {
    event_line(EVENT_COLUMNS)
}

/// One line of `mesh-agent flows --follow`; the time is shown as the UTC time of day.
pub fn render_event(e: &FlowEvent) -> String {
    let time = e
        .time
        .split_once('T')
        .map(|(_, t)| t.trim_end_matches('Z'))
        .unwrap_or(&e.time);
    let time: String = time.chars().take(12).collect();
    let r = &e.flow;
    event_line([
        &time,
        &e.event,
        &r.direction,
        &r.local,
        &r.remote,
        r.workload.as_deref().unwrap_or("-"),
        &r.bytes_sent.to_string(),
        &r.bytes_received.to_string(),
        &r.retransmits.to_string(),
        &r.srtt_us.to_string(),
        &r.duration_ms.to_string(),
        if r.fast_path { "yes" } else { "no" },
        if r.redirected { "yes" } else { "no" },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_common::v4_mapped;

    #[test]
    fn record_adds_fast_path_bytes_to_tcp_bytes() {
        let key = SockKey {
            netns_cookie: 0,
            local_ip: v4_mapped([10, 0, 0, 1]),
            remote_ip: v4_mapped([10, 0, 0, 2]),
            local_port: 4000,
            remote_port: 80,
            _pad: 0,
        };
        let stats = ConnStats {
            tcp_bytes_acked: 10,
            fast_bytes_sent: 5,
            tcp_bytes_received: 7,
            fast_bytes_received: 1,
            flags: CONN_ACTIVE | CONN_FAST_PATH,
            start_ns: 0,
            ..Default::default()
        };
        let r = FlowRecord::from_kernel(&key, &stats, Some(2_000_000), None);
        assert_eq!(r.bytes_sent, 15);
        assert_eq!(r.bytes_received, 8);
        assert_eq!(r.local, "10.0.0.1:4000");
        assert_eq!(r.direction, "outbound");
        assert!(r.fast_path);
        assert_eq!(r.duration_ms, 2);
        assert_eq!(r.state, "closed");
    }

    fn sample_record() -> FlowRecord {
        let key = SockKey {
            netns_cookie: 9,
            local_ip: v4_mapped([127, 0, 0, 1]),
            remote_ip: v4_mapped([127, 0, 0, 1]),
            local_port: 41000,
            remote_port: 15001,
            _pad: 0,
        };
        let stats = ConnStats {
            tcp_bytes_acked: 78,
            tcp_bytes_received: 1024,
            flags: CONN_ACTIVE | CONN_REDIRECTED,
            cookie: 77,
            ..Default::default()
        };
        FlowRecord::from_kernel(&key, &stats, Some(3_000_000), Some("default/client".into()))
    }

    #[test]
    fn events_serialize_flat_with_time_and_kind() {
        let event = FlowEvent::now("close", sample_record());
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], "close");
        assert_eq!(json["local"], "127.0.0.1:41000");
        assert_eq!(json["bytes_sent"], 78);
        assert_eq!(json["cookie"], 77);
        assert!(json.get("flow").is_none(), "{json}");
        let time = json["time"].as_str().unwrap();
        assert!(
            time.len() >= 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        let back: FlowEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[tokio::test]
    async fn subscribers_receive_published_events() {
        let events = FlowEvents::default();
        assert_eq!(events.subscribers(), 0);
        // Nobody listens: publishing is a no-op, not an error.
        events.publish(FlowEvent::now("open", sample_record()));
        let mut rx = events.subscribe();
        assert_eq!(events.subscribers(), 1);
        events.publish(FlowEvent::now("open", sample_record()));
        let got = rx.recv().await.unwrap();
        assert_eq!(got.event, "open");
        assert_eq!(got.flow.cookie, 77);
        drop(rx);
        assert_eq!(events.subscribers(), 0);
    }

    #[tokio::test]
    async fn a_slow_subscriber_learns_how_many_events_it_lost() {
        let events = FlowEvents::default();
        let mut rx = events.subscribe();
        for _ in 0..EVENT_CAPACITY + 5 {
            events.publish(FlowEvent::now("open", sample_record()));
        }
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 5),
            other => panic!("expected a lag, got {other:?}"),
        }
    }

    #[test]
    fn open_tracker_announces_each_live_cookie_once() {
        let mut t = OpenTracker::default();
        assert_eq!(t.new_cookies(&[1, 2]), vec![1, 2]);
        assert_eq!(t.new_cookies(&[1, 2, 3]), vec![3]);
        // 1 closed: forgotten; should the cookie come back it is new again.
        assert_eq!(t.new_cookies(&[2, 3]), Vec::<u64>::new());
        assert_eq!(t.new_cookies(&[1, 2, 3]), vec![1]);
        t.clear();
        assert_eq!(t.new_cookies(&[2]), vec![2]);
    }

    #[test]
    fn event_lines_align_with_the_header() {
        let mut event = FlowEvent::now("open", sample_record());
        event.time = "2026-11-03T10:20:30.123456789Z".into();
        let header = render_event_header();
        let line = render_event(&event);
        assert!(header.starts_with("TIME         EVENT DIR"), "{header}");
        assert!(line.starts_with("10:20:30.123 open  outbound"), "{line}");
        let col = |s: &str, name: &str| s.find(name).unwrap();
        assert_eq!(col(&header, "LOCAL"), col(&line, "127.0.0.1:41000"));
        assert!(line.trim_end().ends_with("yes"), "{line}");
    }
}
