//! The soak suite in its CI size (`cargo xtask bench soak` runs it full size: 10 000 idle
//! connections, 10 minutes of mixed traffic): 2 000 idle meshed connections held across two
//! nodes, then a minute of new TCP connections, HTTP/1.1, h2c and gRPC. Every connection and
//! request succeeds, and every descriptor the agents took for the idle connections is given
//! back; RSS figures are printed (the full-size run's note has them).

mod common;

use std::time::Duration;

use common::*;
use mesh_tests::soak::{SoakOptions, run};

#[test]
fn idle_connections_and_mixed_traffic_leak_nothing() {
    let bins = mesh_tests::mesh::Binaries::locate(PROBE).expect("binaries");
    let report = run(
        bins,
        &SoakOptions {
            idle_connections: 2_000,
            mixed: Duration::from_secs(60),
            sample_every: Duration::from_secs(5),
        },
    )
    .expect("soak");
    eprintln!("{}", report.render());
    let idle = &report.idle;
    assert_eq!(
        (idle.connections, idle.errors),
        (2_000, 0),
        "{}",
        report.render()
    );
    for n in 0..2 {
        // Each held connection holds descriptors in the agents (node1: the client's socket;
        // node2: the socket to the echo server)...
        assert!(
            idle.held[n].fds >= idle.before[n].fds + 1_900,
            "{}",
            report.render()
        );
        // ...and gives them back when it closes.
        assert!(
            idle.after[n].fds <= idle.before[n].fds + 16,
            "descriptors leaked after the idle connections closed:\n{}",
            report.render()
        );
    }
    let m = &report.mixed;
    assert!(m.tcp_connections >= 1_000, "{}", report.render());
    assert_eq!(m.tcp_failed, 0, "{}", report.render());
    assert_eq!((m.h1_failed, m.h2c_failed), (0, 0), "{}", report.render());
    assert!(m.h1_done >= 500 && m.h2c_done >= 500, "{}", report.render());
    assert_eq!(m.grpc_failed, 0, "{}", report.render());
    assert!(m.grpc_done >= 500, "{}", report.render());
    for n in 0..2 {
        assert!(
            m.end[n].fds <= m.warm[n].fds + 16,
            "descriptors grew during the mixed traffic:\n{}",
            report.render()
        );
    }
}
