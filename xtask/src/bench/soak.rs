//! `cargo xtask bench soak`: 10 000 idle meshed connections held across two nodes (RSS per
//! connection, descriptors given back), then 10 minutes of mixed traffic (new TCP
//! connections, HTTP/1.1, h2c, gRPC) with both agents' RSS and descriptors sampled; the logic is
//! `mesh_tests::soak`, which the CI test runs in a shortened form. `MESH_SOAK_IDLE` and
//! `MESH_SOAK_SECONDS` change the sizes.

use std::time::Duration;

use anyhow::{Context, Result};
use mesh_tests::soak::{SoakOptions, run as soak};
use serde_json::json;

use super::release_binaries;

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

pub fn run(json_out: bool) -> Result<()> {
    let options = SoakOptions {
        idle_connections: env_number("MESH_SOAK_IDLE", 10_000)? as usize,
        mixed: Duration::from_secs(env_number("MESH_SOAK_SECONDS", 600)?),
        sample_every: Duration::from_secs(10),
    };
    eprintln!(
        "soak bench: {} idle connections, then {} s of mixed traffic",
        options.idle_connections,
        options.mixed.as_secs()
    );
    let report = soak(release_binaries()?, &options)?;
    if json_out {
        for (n, node) in ["node1", "node2"].iter().enumerate() {
            let i = &report.idle;
            let m = &report.mixed;
            println!(
                "{}",
                json!({
                    "scenario": "soak", "node": node,
                    "idle_connections": i.connections, "idle_errors": i.errors,
                    "rss_kib_before": i.before[n].rss_kib, "rss_kib_held": i.held[n].rss_kib,
                    "rss_bytes_per_connection": i.per_connection_bytes(n),
                    "fds_before": i.before[n].fds, "fds_held": i.held[n].fds, "fds_after": i.after[n].fds,
                    "mixed_seconds": m.seconds, "rss_kib_warm": m.warm[n].rss_kib, "rss_kib_end": m.end[n].rss_kib,
                    "fds_warm": m.warm[n].fds, "fds_end": m.end[n].fds,
                    "tcp_failed": m.tcp_failed, "h1_failed": m.h1_failed, "h2c_failed": m.h2c_failed,
                    "grpc_calls": m.grpc_done, "grpc_failed": m.grpc_failed,
                })
            );
        }
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
