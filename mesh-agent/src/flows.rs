//! The connection table: live connections (read from the kernel's per-connection map) and the
//! most recent closed ones (from ring-buffer events), as records for /flows and the CLI.

use std::{collections::VecDeque, net::SocketAddr, sync::Mutex};

use mesh_common::{CONN_ACTIVE, CONN_FAST_PATH, CONN_REDIRECTED, ConnEvent, ConnStats, SockKey};
use serde::{Deserialize, Serialize};

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

fn monotonic_ns() -> u64 {
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

/// A connection event for `mesh-agent flows --follow` (placeholder; helper B implements it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowEvent {
    pub time: String,
    pub event: String,
    #[serde(flatten)]
    pub flow: FlowRecord,
}

/// Fan-out of flow events to /flows/stream subscribers (placeholder; helper B implements it).
#[derive(Default)]
pub struct FlowEvents {}

impl FlowEvents {
    pub fn publish(&self, event: FlowEvent) {
        let _ = event;
    }
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
}
