//! mesh-agent: one agent per node of a sidecarless service mesh.
//!
//! The binary (`main.rs`) is a thin CLI over these modules; end-to-end tests and tools use the
//! library for shared types such as flow records and config.

pub mod admin;
pub mod admin_client;
pub mod agent;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod ebpf;
pub mod exporter;
pub mod flows;
pub mod handover;
pub mod identity;
pub mod k8s;
pub mod l7;
pub mod logging;
pub mod metrics;
pub mod netns;
pub mod planted;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod runtime;
#[cfg(test)]
mod seed_mutations;
pub mod state;
pub mod status;
pub mod transport;
