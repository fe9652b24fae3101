//! mesh-agent with a slowdown planted on purpose (a test build, never shipped): every L7
//! request burns `MESH_AGENT_PLANTED_DELAY_US` microseconds of CPU (default 1000). The
//! regression guard's own test (`cargo xtask test`, step `bench-guard`) runs
//! `cargo xtask bench compare http` with it and expects the comparison to fail.

#[path = "../main.rs"]
mod agent;

fn main() -> std::process::ExitCode {
    let us = std::env::var("MESH_AGENT_PLANTED_DELAY_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    mesh_agent::planted::enable(us);
    agent::main()
}
