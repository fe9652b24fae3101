//! The kernel side of the agent: probe, load, attach, pin, fill maps, read events.

mod addr;
mod events;
mod level;
mod links;
mod load;
mod maps;
mod probe;
mod stats;

pub use addr::{bytes_to_ip, ip_to_bytes};
pub use events::spawn_event_reader;
pub use level::cgroup_level;
pub use links::{Attached, Removed, uninstall};
pub use load::DataPath;
pub use maps::{Direction, MapContents, SharedMaps, WorkloadFlags};
pub use probe::require_root;
pub use stats::{ProgramRuns, ProgramStats};
