//! Telemetry: Istio's standard metrics (TCP from the kernel's per-connection counters, HTTP
//! from the L7 path), the agent's own health metrics, and the records the access log prints.

pub mod labels;
pub mod records;
